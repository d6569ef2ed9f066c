"""The ``vae-deblend`` command line.

``vae-deblend simulate blends|patch ...`` makes datasets; ``vae-deblend bench`` runs every deblender on the
same test blends; ``vae-deblend demo`` runs the main job on the embedded defaults.  Heavy modules are
imported inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# The names of `sim.blend.BLEND_PRESETS` (spelled out so that ``--help`` needs no GalSim import).
BLEND_PRESET_NAMES = ("paper", "training", "anchor", "wide")


def _add_common_simulation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, required=True, help="number of blends (or patches)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--survey", default="lsst", choices=("lsst", "euclid", "lsst+euclid"),
                        help="bands: LSST ugrizy, Euclid VIS/Y/J/H, or both (default lsst)")
    parser.add_argument("--psf-model", default="paper", choices=("paper", "surveycodex"),
                        help="PSFs of Arcelin et al. 2021 or surveycodex's per-band seeing")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--catalog", default=None,
                        help="CatSim- or COSMOS-format FITS catalogue to draw galaxies from")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="processes (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae-deblend", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser("simulate", help="simulate blends or coadd patches with GalSim")
    kinds = simulate.add_subparsers(dest="kind", required=True)
    blends = kinds.add_parser("blends", help="blended stamps with truth, in HDF5 shards")
    _add_common_simulation_arguments(blends)
    blends.add_argument("--split", default="train", choices=("train", "validation", "test"),
                        help="galaxy split: train, validation and test galaxies never overlap")
    blends.add_argument("--preset", default="paper", choices=tuple(BLEND_PRESET_NAMES),
                        help="blend configuration preset (sim.blend.BLEND_PRESETS; default paper)")
    blends.add_argument("--stamp-size", type=int, default=None, help="stamp side in pixels (odd)")
    blends.add_argument("--max-galaxies", type=int, default=None, help="galaxies per blend, at most")
    blends.add_argument("--shard-size", type=int, default=1000, help="blends per shard, at most")
    blends.add_argument("--no-gallery", action="store_true", help="skip the gallery PNG")
    blends.add_argument("--resume", action="store_true",
                        help="keep the shards of this run already in --out, make the missing ones")

    patch = kinds.add_parser("patch", help="whole coadd patches with truth catalogues")
    _add_common_simulation_arguments(patch)
    patch.add_argument("--size", type=int, default=1000, help="patch side in LSST pixels (default 1000)")

    train = commands.add_parser("train", help="train the VAE, then the deblender")
    train_kinds = train.add_subparsers(dest="kind", required=True)
    for kind in ("vae", "deblender"):
        t = train_kinds.add_parser(kind, help=f"train the {kind}")
        t.add_argument("--train", default=["runs/train"], nargs="+",
                       help="folders of training blend shards (several: all their shards)")
        t.add_argument("--val", default="runs/val", help="folder of validation blend shards")
        t.add_argument("--out", default=f"runs/{kind}", help="output folder (checkpoints, weights, curves)")
        t.add_argument("--preset", default="small", choices=("small", "paper"), help="network preset")
        t.add_argument("--likelihood", default="normalized", choices=("normalized", "gaussian", "bce"))
        t.add_argument("--normalization", default="asinh", choices=("asinh", "paper"))
        t.add_argument("--kl-weight", type=float, default=0.01)
        t.add_argument("--batch-size", type=int, default=64)
        t.add_argument("--lr", type=float, default=3e-4)
        t.add_argument("--epoch-size", type=int, default=20000, help="samples per epoch")
        t.add_argument("--max-epochs", type=int, default=100)
        t.add_argument("--patience", type=int, default=4, help="epochs without improvement before stopping")
        t.add_argument("--max-minutes", type=float, default=60.0, help="time budget of this run")
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--no-bf16", action="store_true", help="no bfloat16 autocast on the CPU")
        t.add_argument("--conditioned", action="store_true",
                       help="PSF- and noise-aware networks (model v3): each stamp's PSF and variance are "
                       "inputs")
        t.add_argument("--augment", action="store_true",
                       help="random quarter turns and flips of every training stamp")
        t.add_argument("--resume", action="store_true", help="continue from out/checkpoint.pt")
        t.add_argument("--no-progress", action="store_true")
        if kind == "deblender":
            t.add_argument("--vae", default="runs/vae", help="folder of the trained VAE")
            t.add_argument("--init-encoder", default="",
                           help="a trained deblender's .safetensors to start the encoder from (fine-tuning)")
            t.add_argument("--neighbour-jitter", type=float, default=0.0,
                           help="pixels of noise on the neighbour peaks' positions in the neighbour map")
        t.add_argument("--colour-jitter", type=float, default=0.0,
                       help="magnitudes of random per-band factors on the galaxies (colours beyond the "
                       "templates)")
        t.add_argument("--clip-grad-norm", type=float, default=0.0,
                       help="clip the gradient's norm to this before each step (0: no clipping)")
        t.add_argument("--flux-weight", type=float, default=0.0,
                       help="weight of a linear flux term beside the likelihood (0: none)")
        t.add_argument("--flux-huber", type=float, default=0.0,
                       help="the flux term grows linearly beyond this many flux errors (0: plain chi^2)")
        t.add_argument("--init-from", default="",
                       help="a bundle to start from (its VAE, or its deblender's encoder), with a fresh "
                       "optimiser: continuing a training whose checkpoint is gone")
        if kind == "vae":
            t.add_argument("--amplitude-reference", type=float, default=0.0,
                           help="conditioned VAE: stamps with a brighter core (summed-band flux of the "
                           "central 9x9 pixels in units of the full-depth noise sigma) are divided down to "
                           "it and the models multiplied back (0: off)")

    r = train_kinds.add_parser("refiner", help="train the learned refinement of a bundle's codes")
    r.add_argument("--train", default=["runs/refine/train"], nargs="+",
                   help="folders of training blend shards")
    r.add_argument("--val", default=["runs/refine/val"], nargs="+",
                   help="folders of validation blend shards")
    r.add_argument("--weights", default="lsst", help="the bundle the refiner is trained for")
    r.add_argument("--out", default="runs/refiner",
                   help="output folder (captured inputs, checkpoint, refiner)")
    r.add_argument("--steps", type=int, default=2, help="refinement steps unrolled in training")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--max-epochs", type=int, default=30)
    r.add_argument("--patience", type=int, default=4)
    r.add_argument("--max-minutes", type=float, default=60.0, help="time budget of this run")
    r.add_argument("--flux-weight", type=float, default=1.0, help="weight of the bounded flux term")
    r.add_argument("--flux-huber", type=float, default=3.0, help="pseudo-Huber scale of the flux term")
    r.add_argument("--max-train", type=int, default=100_000, help="training blends captured, at most")
    r.add_argument("--max-val", type=int, default=1000, help="validation blends captured, at most")
    r.add_argument("--relative", action="store_true",
                   help="score each galaxy's loss relative to its encoder models' (every galaxy weighs the same)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--resume", action="store_true", help="continue from out/checkpoint.pt")
    r.add_argument("--no-progress", action="store_true")

    bundle = commands.add_parser("bundle", help="write shipped weights from a trained VAE and deblender")
    bundle.add_argument("--vae", default="runs/vae")
    bundle.add_argument("--deblender", default="runs/deblender")
    bundle.add_argument("--out", default="weights/lsst.safetensors")
    bundle.add_argument("--latent-data", default="",
                        help="blend shards whose central galaxies give the latent spread stored with the "
                             "weights (default: the VAE's training data)")
    bundle.add_argument("--latent-samples", type=int, default=30000, help="galaxies for the latent spread")
    bundle.add_argument("--seed", type=int, default=0, help="seed of the noise for the latent spread")

    evaluate = commands.add_parser("evaluate", help="score the deblender on simulated test blends")
    evaluate.add_argument("--weights", default="lsst", help="shipped weights name or .safetensors path")
    evaluate.add_argument("--suite", default=None, choices=("shift",),
                          help="run a suite of sets instead of one preset: 'shift' (evaluate.suite: catalogue "
                               "galaxies, shifted priors, PSFs, depths, crowded blends)")
    evaluate.add_argument("--n", type=int, default=None, help="test blends (default 2000; suite: 200 per set)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--preset", default="paper", choices=tuple(BLEND_PRESET_NAMES),
                          help="how the test blends are built (sim.blend.BLEND_PRESETS)")
    evaluate.add_argument("--catalog", default=None, help="CatSim-format FITS catalogue (its test split)")
    evaluate.add_argument("--iterations", type=int, default=2, help="deblending passes")
    evaluate.add_argument("--no-refine", action="store_true", help="no centroid refinement")
    evaluate.add_argument("--fit-steps", type=int, default=0,
                          help="Adam steps of the joint latent fit of each blend (0: none)")
    evaluate.add_argument("--fit-lr", type=float, default=0.1, help="learning rate of the latent fit")
    evaluate.add_argument("--fit-prior", type=float, default=1.0, help="weight of the latent prior")
    evaluate.add_argument("--fit-amplitude-sigma", type=float, default=0.3,
                          help="free per-band amplitudes in the fit, with this prior width on their log")
    evaluate.add_argument("--fit-flux-prior", type=float, default=1.0,
                          help="width of the prior on each galaxy's flux around the encoder's, in units of "
                               "its own flux noise and --fit-flux-fraction of its flux in quadrature "
                               "(0: the plain fit)")
    evaluate.add_argument("--fit-flux-fraction", type=float, default=0.03,
                          help="the part of the flux prior's width proportional to the encoder's flux")
    evaluate.add_argument("--no-fit-accept", action="store_true",
                          help="keep every fitted model (no per-galaxy chi-square acceptance test)")
    evaluate.add_argument("--refine-steps", type=int, default=0,
                          help="steps of the learned refinement (0: none; suite: vae-refine's, default 2)")
    evaluate.add_argument("--refiner", default=None,
                          help="refiner file (default: the weights' own NAME.refiner.safetensors)")
    evaluate.add_argument("--no-neighbour-map", action="store_true",
                          help="do not give the network the other peaks' positions")
    evaluate.add_argument("--deblenders", default="vae,vae-fit,scarlet,none",
                          help="suite: comma-separated, from vae, vae-fit, vae-refine, scarlet, sep, none")
    evaluate.add_argument("--sets", default=None, help="suite: comma-separated sets (default: all)")
    evaluate.add_argument("--fit-n", type=int, default=None,
                          help="suite: blends per set for vae-fit, the first ones (default: all --n)")
    evaluate.add_argument("--catalogs", default=None,
                          help="suite: folder of the catalogues (default ../shared/data/catalogs)")
    evaluate.add_argument("--threads", type=int, default=1, help="suite: torch and JAX threads (default 1)")
    evaluate.add_argument("--out", type=Path, required=True)
    evaluate.add_argument("--no-progress", action="store_true")

    bench = commands.add_parser("bench", help="every deblender on the same test blends, in one run")
    bench.add_argument("--n", type=int, default=1000, help="test blends (default 1000)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--deblenders", default=",".join(("vae", "vae-fit", "scarlet", "sep", "none")),
                       help="comma-separated, from vae, vae-fit, vae-refine, scarlet, sep, none")
    bench.add_argument("--preset", default="anchor", choices=tuple(BLEND_PRESET_NAMES),
                       help="how the test blends are built (sim.blend.BLEND_PRESETS; default anchor)")
    bench.add_argument("--catalog", default=None, help="CatSim-format FITS catalogue (its test split)")
    bench.add_argument("--psf-fwhm", type=float, default=None,
                       help="every band's PSF FWHM, arcsec, instead of the preset's (a PSF shift)")
    bench.add_argument("--peaks", default="true", choices=("true", "detected"),
                       help="true centres, or the pipeline's detected peaks matched to the truth")
    bench.add_argument("--shear", action="store_true", help="measure the shear response (m, c) too")
    bench.add_argument("--split", default="test", choices=("test", "validation"),
                       help="the galaxies' split: test for figures, validation for choosing settings")
    bench.add_argument("--iterations", type=int, default=2, help="passes of the VAE deblenders")
    bench.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                       help="arithmetic of the VAE deblenders' networks")
    bench.add_argument("--shear-g", type=float, default=0.02, help="applied shear on each component")
    bench.add_argument("--weights", default="lsst", help="shipped weights name or .safetensors path")
    bench.add_argument("--fit-steps", type=int, default=60, help="latent-fit steps of vae-fit")
    bench.add_argument("--refine-steps", type=int, default=2, help="learned-refinement steps of vae-refine")
    bench.add_argument("--refiner", default=None,
                       help="vae-refine's refiner file (default: the weights' own NAME.refiner.safetensors)")
    bench.add_argument("--threads", type=int, default=1, help="torch and JAX threads (default 1)")
    bench.add_argument("--out", type=Path, required=True)
    bench.add_argument("--no-progress", action="store_true")

    demo = commands.add_parser("demo", help="the main job on the embedded defaults")
    demo.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    demo.add_argument("--n", type=int, default=500, help="blends to simulate for the gallery (default 500)")
    demo.add_argument("--size", type=int, default=1000, help="patch side in pixels (default 1000)")
    demo.add_argument("--weights", default="lsst", help="shipped weights name or .safetensors path")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def simulate_blends(args: argparse.Namespace) -> dict:
    """``vae-deblend simulate blends``: shards, ``summary.json`` and ``gallery.png`` in ``--out``."""
    import dataclasses

    from .sim.blend import BlendConfig
    from .sim.dataset import write_blends

    start = time.perf_counter()
    overrides = {"survey": args.survey, "psf_model": args.psf_model}
    if args.stamp_size:
        overrides["stamp_size"] = args.stamp_size
    if args.max_galaxies:
        overrides["max_galaxies"] = args.max_galaxies
    config = BlendConfig.preset(getattr(args, "preset", "paper"), **overrides)
    paths = write_blends(args.out, args.n, args.seed, config=config, split=args.split, jobs=args.jobs,
                         shard_size=args.shard_size, catalog_path=args.catalog,
                         progress=not args.no_progress, resume=getattr(args, "resume", False))
    seconds = time.perf_counter() - start
    summary = {"n": args.n, "seed": args.seed, "split": args.split, "jobs": args.jobs,
               "catalog": args.catalog, "shards": [p.name for p in paths], "seconds": round(seconds, 2),
               "blends_per_second": round(args.n / seconds, 1), "config": dataclasses.asdict(config),
               "resumed": bool(getattr(args, "resume", False))}
    if not args.no_gallery:
        summary["gallery"] = str(_gallery(args.out, args.out / "gallery.png"))
    _write_json(args.out / "summary.json", summary)
    print(f"{args.n} blends in {seconds:.1f} s ({args.n / seconds:.0f}/s) -> {args.out}")
    return summary


def _gallery(shard_dir: Path, path: Path, n_show: int = 8) -> Path:
    from .sim.dataset import BlendDataset
    from .sim.plots import plot_blend_gallery

    data = BlendDataset(shard_dir)
    n_show = min(n_show, data.sizes[0])
    batch = data.read(0, n_show)
    truth = batch["truth"]
    per_blend = []
    for offset, k in zip(batch["galaxy_offset"], batch["n_galaxies"]):
        per_blend.append({key: truth[key][offset:offset + k] for key in ("x", "y", "mag", "blendedness")})
    noise = (batch["variance"][0] ** 0.5)
    return plot_blend_gallery(batch["image"], batch["central"], per_blend, data.bands, noise, path, n_show)


def simulate_patches(args: argparse.Namespace) -> dict:
    """``vae-deblend simulate patch``: ``patch-SEED.h5`` files with PNGs and a ``summary.json``."""
    from .sim.blend import CatalogGalaxies
    from .sim.patch import PatchConfig, make_patch, write_patch
    from .sim.plots import plot_patch

    source = None
    if args.catalog:
        from .sim.catalog_io import read_catalog

        source = CatalogGalaxies(read_catalog(args.catalog))
    config = PatchConfig(survey=args.survey, psf_model=args.psf_model, size=args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"patches": []}
    for seed in range(args.seed, args.seed + args.n):
        start = time.perf_counter()
        patch = make_patch(config, seed, source=source, progress=not args.no_progress)
        path = write_patch(patch, args.out / f"patch-{seed}.h5")
        seconds = time.perf_counter() - start
        if args.size <= 2000:
            ref = patch.band(config.reference_band)
            cube = [b.image for b in patch.bands if b.image.shape == ref.image.shape]
            names = [b.name for b in patch.bands if b.image.shape == ref.image.shape]
            noise = [float(b.variance.mean()) ** 0.5 for b in patch.bands if b.image.shape == ref.image.shape]
            plot_patch(cube, names, noise, patch.truth["x"], patch.truth["y"], args.out / f"patch-{seed}.png",
                       title=f"patch seed {seed}: {len(patch.truth)} galaxies")
        summary["patches"].append({"path": path.name, "seed": seed, "n_galaxies": len(patch.truth),
                                   "seconds": round(seconds, 2)})
        print(f"patch {seed}: {len(patch.truth)} galaxies in {seconds:.1f} s -> {path}")
    _write_json(args.out / "summary.json", summary)
    return summary


def demo(args: argparse.Namespace) -> dict:
    """The main job: simulate a coadd patch, deblend it with ``pipetask run`` and the shipped weights,
    score it against the truth; also a gallery of simulated blends."""
    from .pipe.standalone.demo import run_demo

    simulate_blends(argparse.Namespace(
        n=args.n, seed=args.seed, survey="lsst", psf_model="paper", out=args.out / "blends", catalog=None,
        jobs=os.cpu_count(), no_progress=True, split="test", stamp_size=None, max_galaxies=None,
        shard_size=1000, no_gallery=False, preset="paper"))
    return run_demo(args.out, size=args.size, seed=args.seed, weights=args.weights, jobs=os.cpu_count() or 1)


def train_refiner(args: argparse.Namespace) -> dict:
    """``vae-deblend train refiner``."""
    from .deblend.refine import RefinerTrainConfig, train_refiner

    config = RefinerTrainConfig(
        train=tuple(args.train), val=tuple(args.val), weights=args.weights, out=str(args.out),
        steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, max_epochs=args.max_epochs, patience=args.patience,
        max_minutes=args.max_minutes, seed=args.seed, flux_weight=args.flux_weight,
        flux_huber=args.flux_huber, max_train=args.max_train, max_val=args.max_val, relative=args.relative)
    command = "vae-deblend " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("vae-deblend") else ""
    summary = train_refiner(config, resume=args.resume, command=command, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in summary.items() if k != "best_state"}, indent=2))
    return summary


def train_model(args: argparse.Namespace) -> dict:
    """``vae-deblend train vae|deblender``."""
    if args.kind == "refiner":
        return train_refiner(args)
    from .model.training import TrainConfig, train

    config = TrainConfig(
        kind=args.kind, train_dir=args.train[0] if len(args.train) == 1 else args.train, val_dir=args.val,
        out_dir=args.out, preset=args.preset,
        likelihood=args.likelihood, normalization=args.normalization, kl_weight=args.kl_weight,
        batch_size=args.batch_size, lr=args.lr, epoch_size=args.epoch_size, max_epochs=args.max_epochs,
        patience=args.patience, max_minutes=args.max_minutes, seed=args.seed, bf16=not args.no_bf16,
        vae_weights=getattr(args, "vae", ""), init_encoder=getattr(args, "init_encoder", ""),
        conditioned=args.conditioned, augment=args.augment,
        neighbour_jitter=getattr(args, "neighbour_jitter", 0.0), colour_jitter=args.colour_jitter,
        amplitude_reference=getattr(args, "amplitude_reference", 0.0), clip_grad_norm=args.clip_grad_norm,
        flux_weight=args.flux_weight, flux_huber=args.flux_huber, init_from=args.init_from)
    command = "vae-deblend " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("vae-deblend") else ""
    summary = train(config, resume=args.resume, command=command, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return summary


def bundle_weights(args: argparse.Namespace) -> None:
    """``vae-deblend bundle``: the shipped safetensors file from two training runs."""
    from .model.weights import load_model, save_bundle

    vae, norm, vae_meta = load_model(Path(args.vae) / "best.safetensors", kind="vae")
    deblender, _, deb_meta = load_model(Path(args.deblender) / "best.safetensors", kind="deblender",
                                        normalization=norm)
    extra = {"vae_training_command": vae_meta.get("training_command", ""),
             "deblender_training_command": deb_meta.get("training_command", ""),
             "vae_train_config": vae_meta.get("train_config", ""),
             "deblender_train_config": deb_meta.get("train_config", "")}
    # Where the training blends came from: their seeds and sizes, from the shards' summaries.
    for name, meta in (("vae", vae_meta), ("deblender", deb_meta)):
        train_config = json.loads(meta.get("train_config") or "{}")
        for split in ("train", "val"):
            summary = Path(train_config.get(f"{split}_dir", "")) / "summary.json"
            if summary.exists():
                info = json.loads(summary.read_text())
                keys = ("n", "seed", "split", "config")
                extra[f"{name}_{split}_data"] = json.dumps({k: info[k] for k in keys if k in info})
                extra.setdefault("data_seed", str(info.get("seed")))
    for key in ("data_config", "trained_over"):
        if deb_meta.get(key):
            extra[key] = deb_meta[key]
    latent_data = args.latent_data or json.loads(vae_meta.get("train_config") or "{}").get("train_dir")
    if latent_data:
        from .model.latents import latent_spread
        from .sim.dataset import BlendDataset

        dataset = BlendDataset(latent_data)
        spread = latent_spread(vae, norm, dataset, n=args.latent_samples, seed=args.seed, progress=True)
        # Six decimals, never zero (a collapsed dimension would otherwise make the fit's scale invalid).
        extra["latent_spread"] = json.dumps([max(round(float(v), 6), 1e-6) for v in spread])
        extra["latent_spread_data"] = json.dumps({"data": latent_data, "n": min(args.latent_samples,
                                                                                 len(dataset)),
                                                  "seed": args.seed})
    else:
        print("no data for the latent spread: the latent fit will step in unit latent coordinates")
    extra["bundle_command"] = ("vae-deblend " + " ".join(sys.argv[1:])
                               if sys.argv[0].endswith("vae-deblend") else "")
    path = save_bundle(args.out, vae, deblender, norm, vae_meta["likelihood"], extra=extra)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def evaluate_weights(args: argparse.Namespace) -> dict:
    """``vae-deblend evaluate``: ``metrics.json`` and plots in ``--out``."""
    from .deblend.field import DeblendConfig
    from .evaluate import evaluate

    if args.suite:
        return evaluate_suite(args)
    metrics = evaluate(args.weights, args.n or 2000, args.seed, args.out, preset=args.preset,
                       catalog_path=args.catalog, progress=not args.no_progress,
                       deblend_config=DeblendConfig(iterations=args.iterations,
                                                    refine_centroids=not args.no_refine,
                                                    use_neighbour_map=not args.no_neighbour_map,
                                                    fit_steps=args.fit_steps,
                                                    refine_steps=args.refine_steps,
                                                    fit_learning_rate=args.fit_lr,
                                                    fit_prior_weight=args.fit_prior,
                                                    fit_amplitude_sigma=args.fit_amplitude_sigma,
                                                    fit_flux_prior=args.fit_flux_prior,
                                                    fit_flux_fraction=args.fit_flux_fraction,
                                                    fit_accept=not args.no_fit_accept))
    rows = [("VAE deblender", metrics), ("no deblending", metrics["baseline"]),
            ("VAE on isolated (bound)", metrics["isolated_bound"])]
    print(f"{metrics['n']} '{args.preset}' test blends, central galaxy, r band")
    print(f"{'':26s} {'med|df/f|':>9s} {'mean|df/f|':>10s} {'med dmag':>9s} {'med dg1':>8s} {'med dg2':>8s} "
          f"{'med|dg|':>8s} {'rms|dg|':>8s}")
    for name, m in rows:
        print(f"{name:26s} {m['flux_rel_abs_err_median']:9.4f} {m['flux_rel_abs_err_mean']:10.4f} "
              f"{m['mag_err_median']:9.4f} {m['e1_err_median']:8.4f} {m['e2_err_median']:8.4f} "
              f"{m['e_abs_err_median']:8.4f} {m['e_abs_err_rms']:8.4f}")
    print(f"deblending: {metrics['deblend_ms_per_blend']:.2f} ms per blend on {metrics['device']}")
    return metrics


def evaluate_suite(args: argparse.Namespace) -> dict:
    """``vae-deblend evaluate --suite shift``: ``suite.json``, ``suite.md`` and plots in ``--out``."""
    from .evaluate.suite import SUITE_SETS, SuiteConfig, run_suite

    config = SuiteConfig(n=args.n or 200, seed=args.seed, deblenders=tuple(args.deblenders.split(",")),
                         sets=tuple(args.sets.split(",")) if args.sets else tuple(SUITE_SETS),
                         fit_n=args.fit_n, weights=args.weights, fit_steps=args.fit_steps or 60,
                         refine_steps=args.refine_steps or 2, refiner=args.refiner,
                         threads=args.threads, catalogs=args.catalogs)
    suite = run_suite(config, args.out, progress=not args.no_progress)
    print((args.out / "suite.md").read_text(), end="")
    print(f"wrote {args.out / 'suite.json'}, {args.out / 'suite.md'}, {args.out / 'suite.png'}, "
          f"{args.out / 'suite_bins.png'}")
    return suite


def bench_deblenders(args: argparse.Namespace) -> dict:
    """``vae-deblend bench``: ``bench.json``, ``bench.md`` and ``bench.png`` in ``--out``."""
    from .evaluate.bench import BenchConfig, run_bench

    config = BenchConfig(n=args.n, seed=args.seed, deblenders=tuple(args.deblenders.split(",")),
                         preset=args.preset, catalog=args.catalog, psf_fwhm=args.psf_fwhm,
                         peaks=args.peaks, shear=args.shear,
                         shear_g=args.shear_g, weights=args.weights, fit_steps=args.fit_steps,
                         refine_steps=args.refine_steps, refiner=args.refiner, threads=args.threads,
                         split=args.split, iterations=args.iterations, precision=args.precision)
    result = run_bench(config, args.out, progress=not args.no_progress)
    print((args.out / "bench.md").read_text(), end="")
    print(f"wrote {args.out / 'bench.json'}, {args.out / 'bench.md'}, {args.out / 'bench.png'}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "simulate" and args.kind == "blends":
        simulate_blends(args)
    elif args.command == "simulate" and args.kind == "patch":
        simulate_patches(args)
    elif args.command == "train":
        train_model(args)
    elif args.command == "evaluate":
        evaluate_weights(args)
    elif args.command == "bench":
        bench_deblenders(args)
    elif args.command == "bundle":
        bundle_weights(args)
    elif args.command == "demo":
        demo(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

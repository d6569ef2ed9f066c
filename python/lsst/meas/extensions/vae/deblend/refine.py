"""Training of the learned refinement (`model.refiner`): blends through the deblending core, then the
refiner's unrolled steps through the frozen decoder to the noiseless truth.

What the refiner sees is what `deblend_field` gives it: the blends of a dataset are deblended with the
trained weights (true peaks, every pass of the default setting), and at the point where the field would
refine, each central galaxy's stamp of its parent's pixels minus the other galaxies' models, its code,
amplitude factor and model are recorded (`capture`), with its noiseless image cut at the same centre.  The
refiner is then trained on those, ``steps`` steps unrolled (the other galaxies' models held where they
were), on the likelihood of the normalised models against the truth and a bounded flux term
(`model.training.model_flux_loss`), averaged over the steps.  Checkpoints after every epoch; ``resume``
continues a stopped run.
"""

from __future__ import annotations

__all__ = ["RefinerTrainConfig", "capture", "train_refiner", "refiner_loss"]

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..model.networks import neighbour_maps
from ..model.refiner import Refiner, RefinerConfig
from ..model.training import _atomic_torch_save, _atomic_write_text, _plot_curves, model_flux_loss
from ..model.weights import save_refiner
from ..sim.dataset import BlendDataset
from .field import DeblendConfig, cut_stamp, deblend_field
from .network import VaeDeblender


@dataclasses.dataclass(frozen=True)
class RefinerTrainConfig:
    """Options of `train_refiner`.

    Attributes
    ----------
    train : `tuple` [`str`]
        Folders of training blend shards.
    val : `tuple` [`str`]
        Folders of validation blend shards (the best epoch is chosen on them).
    weights : `str`
        The bundle whose decoder the refiner is trained for.
    out : `str`
        Output folder: captured inputs (one file per data folder), checkpoint, history,
        ``best.refiner.safetensors``.
    steps : `int`
        Refinement steps unrolled in training (and recommended at inference).
    filters, dense : see `RefinerConfig`.
    batch_size, lr, max_epochs, patience, max_minutes, seed : training.
    flux_weight, flux_huber : weight and pseudo-Huber scale of the flux term.
    max_train, max_val : `int`
        Blends captured from each (at most).
    relative : `bool`
        Score each galaxy's loss relative to its encoder models' loss (the mean of the ratios): every
        galaxy weighs the same, whatever its brightness and size, instead of the bright ones dominating.
    """

    train: tuple[str, ...] = ("runs/refine/train",)
    val: tuple[str, ...] = ("runs/refine/val",)
    weights: str = "lsst"
    out: str = "runs/refiner"
    steps: int = 2
    filters: tuple[int, ...] = (16, 32, 64)
    dense: int = 128
    batch_size: int = 32
    lr: float = 1e-3
    max_epochs: int = 30
    patience: int = 4
    max_minutes: float = 60.0
    seed: int = 0
    flux_weight: float = 1.0
    flux_huber: float = 3.0
    max_train: int = 100_000
    max_val: int = 1000
    relative: bool = False


class _Recorder:
    """A deblender whose ``refine`` records its inputs and changes nothing: what the field hands the
    refiner at its first step."""

    def __init__(self, net: VaeDeblender) -> None:
        self._net = net
        self.record: dict[str, np.ndarray] = {}

    def __getattr__(self, name: str):
        return getattr(self._net, name)

    def __call__(self, *args, **kwargs):
        return self._net(*args, **kwargs)

    def refine(self, stamps, neighbours, codes, factors, log_amplitude, models, variance, psf=None):
        self.record = {"stamps": stamps, "neighbours": neighbours, "codes": codes, "factors": factors,
                       "models": models,
                       "variance": np.broadcast_to(variance, (len(stamps), stamps.shape[1]))}
        if psf is not None:
            self.record["psf"] = psf
        return codes, log_amplitude, models


def capture(data: BlendDataset, net: VaeDeblender, n_max: int, progress: bool = True
            ) -> dict[str, np.ndarray]:
    """The refiner's inputs of every blend's central galaxy, as `deblend_field` gives them (true peaks,
    the default passes), with its noiseless image cut at the same centre (``truth``).

    Galaxies larger than the stamp are not binned here (no refinement of binned galaxies); a blend whose
    central galaxy the field does not refine (off the image) is left out.
    """
    recorder = _Recorder(net)
    # Without binning: the blends are single stamps whose footprint (the whole image) reaches the border,
    # where an untrained network's wide models would send every galaxy to a binned stamp.
    config = DeblendConfig(refine_steps=1, conserve_flux=False, keep_conserved_images=False, bin_large=False)
    rows: dict[str, list] = {}
    total = min(n_max, len(data))
    with tqdm(total=total, desc="capture", unit="blend", disable=not progress) as bar:
        for start, stop in data.shard_ranges:
            if bar.n >= total:
                break
            batch = data.read(start, min(stop, start + total - bar.n))
            x, y = batch["truth"]["x"], batch["truth"]["y"]
            for b in range(len(batch["image"])):
                o, count = batch["galaxy_offset"][b], batch["n_galaxies"][b]
                peaks = np.stack([x[o:o + count], y[o:o + count]], axis=1)
                recorder.record = {}
                children, _ = deblend_field(batch["image"][b], peaks, recorder, net.stamp_size, config=config,
                                            variance=batch["variance"][b], psf=batch["psf"][b])
                bar.update(1)
                refined = [i for i, c in enumerate(children) if not c.outside_image and c.binned == 1]
                if not recorder.record or not refined or refined[0] != 0:
                    continue
                for key, value in recorder.record.items():
                    rows.setdefault(key, []).append(np.asarray(value[0]))
                truth = cut_stamp(batch["truth_images"][b][0], children[0].center, net.stamp_size)[0]
                rows.setdefault("truth", []).append(truth.astype(np.float32))
    return {key: np.stack(value).astype(np.float32) for key, value in rows.items()}


def _captured(out: Path, folders, net: VaeDeblender, n_max: int, progress: bool) -> dict[str, np.ndarray]:
    """The captured inputs of the blends in ``folders`` (at most ``n_max`` in all), one file per folder in
    ``out`` (named after the folder and the weights' digest), captured once: a resumed run, or a run
    with more folders, reads back what was captured before."""
    parts = []
    for folder in folders:
        left = n_max - sum(len(p["codes"]) for p in parts)
        if left <= 0:
            break
        name = f"capture-{Path(folder).resolve().name}-{net.metadata['sha256'][:12]}.npz"
        path = out / name
        if not path.exists():
            arrays = capture(BlendDataset(folder), net, left, progress)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(path)
        with np.load(path) as f:
            parts.append({key: f[key] for key in f.files})
    keys = parts[0].keys()
    return {key: np.concatenate([p[key] for p in parts])[:n_max] for key in keys}


def _tensors(arrays: dict[str, np.ndarray], index: np.ndarray, stamp_size: int) -> dict[str, torch.Tensor]:
    out = {key: torch.from_numpy(np.ascontiguousarray(value[index])) for key, value in arrays.items()
           if key != "neighbours"}
    out["maps"] = torch.from_numpy(neighbour_maps(arrays["neighbours"][index], stamp_size))
    return out


def _unrolled(net: VaeDeblender, refiner: Refiner, batch: dict[str, torch.Tensor], steps: int):
    """The models after each of ``steps`` refinement steps from the encoder's (the stamps held fixed)."""
    z, models = batch["codes"], batch["models"]
    amplitude = torch.zeros(models.shape[:2])
    for _ in range(steps):
        z, amplitude, models = net.refine_step(refiner, batch["stamps"], batch["maps"], z, amplitude, models,
                                               batch["variance"], batch["factors"], batch.get("psf"))
        yield models


def _loss_and_models(net: VaeDeblender, refiner: Refiner, batch: dict[str, torch.Tensor], steps: int,
                     flux_weight: float, flux_huber: float, relative: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """`refiner_loss` and the models of the last step (the encoder's with ``steps`` 0)."""

    def score(models: torch.Tensor) -> torch.Tensor:
        """Each galaxy's loss: `model.training`'s normalised likelihood and flux term, per stamp."""
        loss = 0.5 * ((net.norm.forward(models) - net.norm.forward(batch["truth"])) ** 2).sum(dim=(1, 2, 3))
        if flux_weight > 0:
            loss = loss + flux_weight * model_flux_loss(models, batch["truth"], batch["variance"], flux_huber,
                                                        per_stamp=True)
        return loss

    models = batch["models"]
    start = score(models).detach() if relative else None

    def scaled(loss: torch.Tensor) -> torch.Tensor:
        return (loss / start.clamp_min(1e-6)).mean() if relative else loss.mean()

    if steps == 0:
        return scaled(score(models)), models
    total = 0.0
    for models in _unrolled(net, refiner, batch, steps):
        total = total + scaled(score(models))
    return total / steps, models


def refiner_loss(net: VaeDeblender, refiner: Refiner, batch: dict[str, torch.Tensor], steps: int,
                 flux_weight: float, flux_huber: float, relative: bool = False) -> torch.Tensor:
    """The refiner's training loss on a batch: ``steps`` steps unrolled, each step's models scored against
    the truth (normalised likelihood plus the flux term), averaged over the steps; with ``steps`` 0, the
    loss of the encoder's models; with ``relative``, each galaxy's loss over its encoder models' loss."""
    return _loss_and_models(net, refiner, batch, steps, flux_weight, flux_huber, relative)[0]


def _evaluate(net: VaeDeblender, refiner: Refiner, arrays: dict[str, np.ndarray], config: RefinerTrainConfig
              ) -> dict[str, float]:
    """Validation: the mean loss of the refined models (``config.steps`` steps) and of the encoder's, and
    the median df/f and abs(df/f) of both models' stamp fluxes in the reference band (r where there is
    one)."""
    count = len(arrays["codes"])
    band = net.bands.index("r") if "r" in net.bands else len(net.bands) // 2
    losses = {"refined": 0.0, "encoder": 0.0}
    errors: dict[str, list] = {"refined": [], "encoder": []}
    with torch.no_grad():
        for lo in range(0, count, 256):
            index = np.arange(lo, min(count, lo + 256))
            batch = _tensors(arrays, index, net.stamp_size)
            truth = batch["truth"][:, band].sum(dim=(1, 2))
            for name, n_steps in (("refined", config.steps), ("encoder", 0)):
                loss, models = _loss_and_models(net, refiner, batch, n_steps, config.flux_weight,
                                                config.flux_huber, config.relative)
                losses[name] += loss.item() * len(index)
                errors[name].append(((models[:, band].sum(dim=(1, 2)) - truth) / truth).numpy())
    out = {}
    for name in losses:
        rel = np.concatenate(errors[name])
        out.update({f"val_loss_{name}": losses[name] / count, f"val_flux_bias_{name}": float(np.median(rel)),
                    f"val_flux_abs_{name}": float(np.median(np.abs(rel)))})
    return out


def train_refiner(config: RefinerTrainConfig, resume: bool = False, command: str = "",
                  progress: bool = True) -> dict:
    """Train a refiner for ``config.weights`` (CPU; checkpoints after every epoch, ``resume`` continues).

    Returns
    -------
    state : `dict`
        ``history`` (per epoch: train and validation loss, the encoder's validation loss, seconds),
        ``best_epoch``, ``best_val``, ``path`` of the best refiner.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    net = VaeDeblender(config.weights, device="cpu")
    train_arrays = _captured(out, config.train, net, config.max_train, progress)
    val_arrays = _captured(out, config.val, net, config.max_val, progress)
    net = VaeDeblender(config.weights, device="cpu", deterministic=False)  # training: no fixed chunks
    refiner = Refiner(RefinerConfig(bands=net.bands, stamp_size=net.stamp_size,
                                    latent=net.vae.config.latent, filters=tuple(config.filters),
                                    dense=config.dense, conditioned=net.conditioned))
    optimizer = torch.optim.Adam(refiner.parameters(), lr=config.lr)
    checkpoint = out / "checkpoint.pt"
    state = {"epoch": 0, "history": [], "best_val": float("inf"), "best_epoch": 0, "bad_epochs": 0,
             "seconds": 0.0, "best_state": None}
    if resume and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True)  # tensors, numbers and lists: no pickle
        refiner.load_state_dict(saved["refiner"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
    n = len(train_arrays["codes"])
    size = net.stamp_size
    while state["epoch"] < config.max_epochs and not (
            state["epoch"] > 0 and (state["bad_epochs"] >= config.patience
                                    or state["seconds"] > 60 * config.max_minutes)):
        start = time.perf_counter()
        rng = np.random.default_rng(config.seed + state["epoch"])
        order = rng.permutation(n)
        refiner.train()
        losses = []
        for lo in tqdm(range(0, n - config.batch_size + 1, config.batch_size),
                       desc=f"epoch {state['epoch'] + 1}", unit="batch", disable=not progress):
            batch = _tensors(train_arrays, order[lo:lo + config.batch_size], size)
            optimizer.zero_grad(set_to_none=True)
            loss = refiner_loss(net, refiner, batch, config.steps, config.flux_weight, config.flux_huber,
                                config.relative)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(refiner.parameters(), 10.0)
            optimizer.step()
            losses.append(loss.item())
        refiner.eval()
        scores = _evaluate(net, refiner, val_arrays, config)
        val = scores["val_loss_refined"]
        state["epoch"] += 1
        state["seconds"] += time.perf_counter() - start
        state["history"].append({"epoch": state["epoch"], "train_loss": float(np.mean(losses)),
                                 "val_loss": val, "val_loss_encoder": scores["val_loss_encoder"], **scores,
                                 "seconds": state["seconds"]})
        if val < state["best_val"]:
            state.update(best_val=val, best_epoch=state["epoch"], bad_epochs=0,
                         best_state={k: v.clone() for k, v in refiner.state_dict().items()})
        else:
            state["bad_epochs"] += 1
        _atomic_torch_save({"refiner": refiner.state_dict(), "optimizer": optimizer.state_dict(),
                            "state": state}, checkpoint)
        _plot_curves(state["history"], out / "loss_curves.png", "refiner",
                     ylabel="loss per galaxy (likelihood + flux)")
        _atomic_write_text(json.dumps(state["history"], indent=1) + "\n", out / "history.json")
        print(f"epoch {state['epoch']}: train {np.mean(losses):.2f}, validation {val:.2f} (encoder "
              f"{scores['val_loss_encoder']:.2f}); models' median df/f "
              f"{scores['val_flux_bias_refined']:+.3f} (encoder {scores['val_flux_bias_encoder']:+.3f}), "
              f"median abs(df/f) "
              f"{scores['val_flux_abs_refined']:.3f} ({scores['val_flux_abs_encoder']:.3f})", flush=True)
    best = Refiner(refiner.config)
    best.load_state_dict(state["best_state"] or refiner.state_dict())
    path = save_refiner(out / "best.refiner.safetensors", best, net.metadata, extra={
        "command": command, "steps": config.steps, "epoch": state["best_epoch"],
        "val_loss": state["best_val"], "val_loss_encoder": state["history"][-1]["val_loss_encoder"],
        "train_blends": len(train_arrays["codes"]), "train_config": json.dumps(dataclasses.asdict(config)),
        "seconds": round(state["seconds"], 1)})
    return {**state, "path": str(path)}

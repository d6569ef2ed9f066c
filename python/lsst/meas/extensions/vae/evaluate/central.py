"""Scoring the deblender on simulated test blends (``vae-deblend evaluate``).

Test blends are simulated from the *test* split (galaxies never used in training), or from an external
catalogue's test split.  Every blend goes through the whole-field core (`deblend.deblend_field`) with the
true peak positions of all its galaxies, as scarlet gets them in the anchor comparison; the central
galaxy's model is scored against its noiseless isolated image, with the same PSF, in the r band:

- flux: model flux against the in-stamp truth flux, ``df/f`` and ``dmag = -2.5 log10(f_model / f_true)``;
  the flux-conserved (re-distributed) child flux is scored separately;
- shape: reduced shear g from HSM adaptive moments of the model minus that of the truth image;
- binned by r-band SNR and by blendedness; next to a no-deblending baseline measured in the same run
  (2.5" aperture flux and HSM shape on the blend itself) and to the VAE's own reconstruction of the
  isolated central galaxy (the bound for any deblender built on this decoder).
"""

from __future__ import annotations

__all__ = ["evaluate", "score", "central_metrics", "tile_field", "isolated_reconstructions"]

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..deblend.field import DeblendConfig, cut_stamp, deblend_field, paste_stamp
from ..deblend.network import VaeDeblender
from ..sim.blend import BlendConfig, BlendMaker, CatalogGalaxies
from ..measure.shape import hsm_shape
from ..measure.stats import BLENDEDNESS_BINS, SNR_BINS, binned, summary

_APERTURE_ARCSEC = 2.5


def tile_field(images: list[np.ndarray], peaks: list[np.ndarray], gap: int,
               footprints: list[np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    """Lay equal-sized stamps side by side (``gap`` empty pixels apart) in one field, one parent each.

    Parameters
    ----------
    images : `list` [`numpy.ndarray` (bands, s, s)]
    peaks : `list` [`numpy.ndarray` (n_k, 2)]
        Peaks (x, y) of each stamp, in its own pixels.
    gap : `int`
    footprints : `list` [`numpy.ndarray` (s, s) of `bool`], optional
        Each stamp's footprint; the whole stamp by default.

    Returns
    -------
    field, peaks, parents, labels, origins
        The field (bands, h, w), all peaks in field pixels, each peak's parent label (k + 1), the label
        image, and each stamp's (x0, y0).
    """
    size = images[0].shape[-1]
    per_row = int(np.ceil(np.sqrt(len(images))))
    step = size + gap
    rows = int(np.ceil(len(images) / per_row))
    field = np.zeros((images[0].shape[0], rows * step, per_row * step), dtype=np.float32)
    labels = np.zeros(field.shape[1:], dtype=np.int32)
    all_peaks, parents, origins = [], [], []
    for k, image in enumerate(images):
        x0, y0 = (k % per_row) * step, (k // per_row) * step
        field[:, y0:y0 + size, x0:x0 + size] = image
        own = k + 1 if footprints is None else np.where(footprints[k], k + 1, 0)
        labels[y0:y0 + size, x0:x0 + size] = own
        all_peaks.append(np.asarray(peaks[k], dtype=np.float64) + [x0, y0])
        parents.append(np.full(len(peaks[k]), k + 1))
        origins.append((x0, y0))
    return field, np.concatenate(all_peaks), np.concatenate(parents), labels, origins


def central_metrics(model_r: np.ndarray, truth_r: np.ndarray, center: tuple[float, float]) -> dict:
    """Flux and shape errors of one model against its truth image (same grid, one band)."""
    f_true = float(truth_r.sum())
    f_model = float(model_r.sum())
    shape_model = hsm_shape(model_r, center=center)
    shape_true = hsm_shape(truth_r, center=center)
    return {"df": (f_model - f_true) / f_true,
            "dmag": -2.5 * np.log10(f_model / f_true) if f_model > 0 else np.nan,
            "dg1": shape_model.g1 - shape_true.g1, "dg2": shape_model.g2 - shape_true.g2}


def score(metrics: dict[str, np.ndarray]) -> dict:
    """Headline figures from per-galaxy ``df``, ``dmag``, ``dg1``, ``dg2`` arrays."""
    dg = np.hypot(metrics["dg1"], metrics["dg2"])
    ok = np.isfinite(dg)
    adf = np.abs(metrics["df"])
    return {
        "n": int(len(metrics["df"])),
        "e1_err_median": float(np.nanmedian(metrics["dg1"])),
        "e2_err_median": float(np.nanmedian(metrics["dg2"])),
        "e_abs_err_median": float(np.median(dg[ok])),
        "e_abs_err_rms": float(np.sqrt(np.mean(dg[ok] ** 2))),
        "e_err_rms": float(np.sqrt(np.mean(np.concatenate([metrics["dg1"][ok], metrics["dg2"][ok]]) ** 2))),
        "hsm_failures": int((~ok).sum()),
        "mag_err_median": float(np.nanmedian(metrics["dmag"])),
        "mag_err_nmad": summary(metrics["dmag"])["nmad"],
        "flux_rel_abs_err_mean": float(np.mean(adf)),
        "flux_rel_abs_err_median": float(np.median(adf)),
        "flux_rel_err_median": float(np.median(metrics["df"])),
    }


def _baseline(blend, r: int, scale: float) -> dict:
    """No deblending: 2.5" aperture flux and HSM shape measured on the noisy blend."""
    size = blend.image.shape[-1]
    x, y = blend.truth["x"][0], blend.truth["y"][0]
    yy, xx = np.mgrid[:size, :size]
    aperture = (xx - x) ** 2 + (yy - y) ** 2 <= (_APERTURE_ARCSEC / scale) ** 2
    truth = blend.truth_images[0, r]
    f_true = float(truth.sum())
    f_ap = float(blend.image[r][aperture].sum())
    s_blend, s_true = hsm_shape(blend.image[r], center=(x, y)), hsm_shape(truth, center=(x, y))
    return {"df": (f_ap - f_true) / f_true, "dmag": -2.5 * np.log10(f_ap / f_true) if f_ap > 0 else np.nan,
            "dg1": s_blend.g1 - s_true.g1, "dg2": s_blend.g2 - s_true.g2}


@torch.no_grad()
def isolated_reconstructions(deblender: VaeDeblender, images: np.ndarray, centers: np.ndarray,
                             variances: np.ndarray, rng: np.random.Generator, batch: int = 256,
                             psf: np.ndarray | None = None) -> np.ndarray:
    """The VAE itself on each galaxy alone (its noiseless image plus fresh noise): the reconstruction
    bound of any deblender built on this decoder.

    Parameters
    ----------
    deblender : `VaeDeblender`
        Its VAE (encoder mean, then decoder) reconstructs each galaxy.
    images : `numpy.ndarray` (n, bands, h, w)
        Noiseless image of each galaxy alone, on its blend's grid.
    centers : `numpy.ndarray` (n, 2) of `int`
        Pixel (x, y) each galaxy's stamp is cut around (zero-padded beyond the grid, as the deblender's
        stamps are).
    variances : `numpy.ndarray` (n, bands)
        Noise variance per pixel added to each image.
    rng : `numpy.random.Generator`
        Draws the noise.
    batch : `int`
        Stamps per network call.
    psf : `numpy.ndarray` (n, bands, p, p) or (bands, p, p), optional
        The PSF images of each galaxy (or of all), for PSF-aware weights.

    Returns
    -------
    models : `numpy.ndarray` (n, bands, h, w), float32
        Each reconstruction placed back on its image's grid, electrons.
    """
    sigma = np.sqrt(np.asarray(variances, dtype=np.float64))[:, :, None, None]
    noisy = (images + rng.standard_normal(images.shape) * sigma).astype(np.float32)
    size = deblender.stamp_size
    stamps = np.stack([cut_stamp(noisy[k], tuple(centers[k]), size)[0] for k in range(len(images))])
    models = np.zeros_like(noisy)
    if psf is not None:
        psf = np.broadcast_to(psf, (len(images),) + np.shape(psf)[-3:])
    for lo in range(0, len(stamps), batch):
        hi = min(len(stamps), lo + batch)
        decoded = deblender.reconstruct(stamps[lo:hi], None if psf is None else psf[lo:hi],
                                        np.asarray(variances, dtype=np.float32)[lo:hi])
        for k, model in enumerate(decoded, start=lo):
            paste_stamp(models[k], model, tuple(centers[k]))
    return models


def _isolated_bound(deblender: VaeDeblender, blends: list, r: int, rng: np.random.Generator) -> dict:
    """`isolated_reconstructions` of every blend's central galaxy, scored."""
    central = np.stack([b.truth_images[0] for b in blends])
    centers = np.rint([(b.truth["x"][0], b.truth["y"][0]) for b in blends]).astype(np.int64)
    psf = np.stack([b.psf for b in blends]) if blends and blends[0].psf is not None else None
    variances = np.stack([b.variance for b in blends])
    models = isolated_reconstructions(deblender, central, centers, variances, rng, psf=psf)
    rows = [central_metrics(models[k, r], central[k, r], (b.truth["x"][0], b.truth["y"][0]))
            for k, b in enumerate(blends)]
    return {key: np.array([row[key] for row in rows]) for key in rows[0]}


def evaluate(weights: str, n: int, seed: int, out_dir: str | Path, preset: str = "paper",
             catalog_path: str | None = None, deblend_config: DeblendConfig = DeblendConfig(),
             chunk: int = 400, progress: bool = True) -> dict:
    """Simulate ``n`` test blends, deblend them, and write ``metrics.json`` and plots to ``out_dir``.

    Returns
    -------
    metrics : `dict`
        What ``metrics.json`` holds: the headline figures of the central galaxies (`score`), the same
        for the baseline, the isolated bound and the flux-conserved fluxes, binned tables, timing.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deblender = VaeDeblender(weights)
    blend_config = BlendConfig.preset(preset, stamp_size=deblender.stamp_size)
    source = None
    if catalog_path:
        from ..sim.catalog_io import read_catalog, select_split

        source = CatalogGalaxies(select_split(read_catalog(catalog_path), "test"))
    maker = BlendMaker(blend_config, source)
    if tuple(maker.survey.band_names) != tuple(deblender.bands):
        raise ValueError(f"The weights' bands {deblender.bands} differ from the blends' "
                         f"{maker.survey.band_names}.")
    r = maker.survey.band_names.index("r")
    scale = maker.survey.band("r").pixel_scale
    rng = np.random.default_rng([seed, 4242])

    keys = ("df", "dmag", "dg1", "dg2")
    results = {name: {k: [] for k in keys} for name in ("vae", "conserved", "baseline", "isolated")}
    snr, blendedness, n_galaxies, examples = [], [], [], []
    seconds = 0.0
    for lo in tqdm(range(0, n, chunk), desc="evaluate", unit="chunk", disable=not progress):
        blends = [maker.make(seed, i, split="test") for i in range(lo, min(n, lo + chunk))]
        field, peaks, parents, labels, origins = tile_field(
            [b.image for b in blends], [np.stack([b.truth["x"], b.truth["y"]], axis=1) for b in blends],
            gap=deblender.stamp_size // 2 + 1)
        start = time.perf_counter()
        children, _ = deblend_field(field, peaks, deblender, deblender.stamp_size, parents=parents,
                                    footprints=labels, config=deblend_config,
                                    variance=blends[0].variance)
        seconds += time.perf_counter() - start
        first = 0
        for k, blend in enumerate(blends):
            child = children[first]  # the central galaxy is every blend's first
            first += len(blend.truth["x"])
            x0, y0 = origins[k]
            size = blend.image.shape[-1]
            placed = np.zeros((size, size), dtype=np.float32)
            paste_stamp(placed, child.model[r], (child.center[0] - x0, child.center[1] - y0))
            truth = blend.truth_images[0, r]
            center = (blend.truth["x"][0], blend.truth["y"][0])
            m = central_metrics(placed, truth, center)
            for key in keys:
                results["vae"][key].append(m[key])
            f_true = float(truth.sum())
            results["conserved"]["df"].append((child.flux_conserved[r] - f_true) / f_true)
            results["conserved"]["dmag"].append(-2.5 * np.log10(child.flux_conserved[r] / f_true)
                                                if child.flux_conserved[r] > 0 else np.nan)
            results["conserved"]["dg1"].append(np.nan)
            results["conserved"]["dg2"].append(np.nan)
            b = _baseline(blend, r, scale)
            for key in keys:
                results["baseline"][key].append(b[key])
            snr.append(blend.truth["snr_band"][0, r])
            blendedness.append(blend.truth["blendedness"][0])
            n_galaxies.append(len(blend.truth["x"]))
            if len(examples) < 12:
                examples.append((blend.image[r], truth, placed, center))
        iso = _isolated_bound(deblender, blends, r, rng)
        for key in keys:
            results["isolated"][key].extend(iso[key])
    arrays = {name: {k: np.array(v, dtype=float) for k, v in res.items()} for name, res in results.items()}
    snr, blendedness = np.array(snr), np.array(blendedness)

    vae = arrays["vae"]
    metrics = score(vae)
    metrics.update({
        "preset": preset, "seed": seed, "weights": str(weights), "catalog": catalog_path,
        "device": str(deblender.device), "deblend_ms_per_blend": 1e3 * seconds / n,
        "baseline": score(arrays["baseline"]), "isolated_bound": score(arrays["isolated"]),
        "conserved_flux": {k: v for k, v in score({**arrays["conserved"], "dg1": vae["dg1"],
                                                   "dg2": vae["dg2"]}).items() if "flux" in k or "mag" in k},
        "worst_flux_rel_err": [float(v) for v in np.sort(np.abs(vae["df"]))[-5:]],
    })
    binned_values = {"df": vae["df"], "abs_df": np.abs(vae["df"]), "dmag": vae["dmag"], "dg1": vae["dg1"],
                     "dg2": vae["dg2"], "abs_dg": np.hypot(vae["dg1"], vae["dg2"]),
                     "baseline_abs_df": np.abs(arrays["baseline"]["df"]),
                     "baseline_abs_dg": np.hypot(arrays["baseline"]["dg1"], arrays["baseline"]["dg2"])}
    metrics["by_snr"] = binned(binned_values, snr, SNR_BINS)
    metrics["by_blendedness"] = binned(binned_values, blendedness, BLENDEDNESS_BINS)
    metrics["by_n_galaxies"] = binned(binned_values, np.array(n_galaxies, dtype=float), (1, 2, 3, 4, 5))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float) + "\n")
    np.savez(out / "per_galaxy.npz", snr=snr, blendedness=blendedness, n_galaxies=np.array(n_galaxies),
             **{f"{name}_{k}": v for name, res in arrays.items() for k, v in res.items()})
    from .plots import plot_binned, plot_examples

    plot_binned(metrics, out / "binned.png")
    plot_examples(examples, out / "examples.png")
    return metrics


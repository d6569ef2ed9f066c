"""Every deblender on the same blends, in one run (``vae-deblend bench``).

Each blend is simulated once (test split: galaxies never used in training) and given to every deblender in
turn, one blend per call, so that all of them run under the same machine load; the time of a call covers
all the sources of the blend.  The VAE is also timed on the same blends laid side by side,
``BATCH_BLENDS`` per call (``seconds_per_blend_batched``), as the pipeline task batches a patch's
parents.  Every galaxy of every blend is scored in r against its noiseless isolated image (same PSF):

- flux: ``df/f`` of the output's r flux against the truth's in-stamp flux, ``dmag``, and the catastrophic
  fraction ``abs(df/f) > 1``;
- shape: reduced shear g from HSM adaptive moments of the output minus that of the truth, started at the
  output's peak; an output whose moments fail is counted (``hsm_failures``), not scored;
- binned by blendedness, SNR and r magnitude; the central galaxy (the one the blend was drawn around)
  separately.

Deblenders (``--deblenders``), each given the same peaks and the same detection footprint:

- ``vae``: the network, encoder only (the pipeline's default); ``vae-fit``: with the latent fit;
  ``vae-refine``: with the learned refinement (`model.refiner`);
- ``scarlet``: scarlet2, configured as DRP's scarlet_lite (`lsst.meas.extensions.vae.compare.scarlet`);
- ``sep``: every footprint pixel goes to its nearest peak (no model): a floor;
- ``none``: no deblending: a 2.5" aperture flux and HSM on the blend itself: the other floor.

For the deblenders with models, the row named after the deblender scores what the pipeline measures, the
flux-conserved images (the observed pixels re-distributed by the models, as scarlet's DRP task writes
them); the row ``<name>:model`` scores the models themselves.

With ``--peaks detected`` the peaks are the pipeline's own detection (`measure.detection.detect`) and each
truth galaxy is matched one to one to a detected peak within ``MATCH_RADIUS`` pixels, closest pairs first
(`measure.matching.match_to_truth`): missed and spurious objects are counted and only matched galaxies
are scored.  With ``--peaks true`` (default) every
deblender gets the true centres, as in the anchor comparison of docs/method.md.

With ``--shear`` the shear response is measured too (`shear_response`).
"""

from __future__ import annotations

__all__ = ["DEBLENDERS", "BenchConfig", "Scene", "run_bench", "metrics_table", "shear_response",
           "MATCH_RADIUS", "STAT_KEYS"]

import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..deblend.field import DeblendConfig, add_at, deblend_field
from ..measure.detection import detect, psf_sigma
from ..measure.matching import match_to_truth
from ..measure.shape import hsm_shape
from ..measure.stats import BLENDEDNESS_BINS, SNR_BINS
from ..sim.blend import Blend, BlendConfig, BlendMaker, CatalogGalaxies
from .central import isolated_reconstructions, tile_field

DEBLENDERS = ("vae", "vae-fit", "vae-refine", "scarlet", "sep", "none")
# Matching detected peaks to true centres, pixels (0.4" at LSST's 0.2" pixels; as the pipeline's
# compareToTruth and the demo).
MATCH_RADIUS = 2.0
APERTURE_ARCSEC = 2.5
MAG_BINS = (16.0, 21.0, 22.0, 23.0, 24.0, 25.0, 26.0, 28.0)
PSF_SIZE = 41
# Blends per call of the batched timing (the VAE on many parents at once, as the pipeline runs it).
BATCH_BLENDS = 100
# The statistics of every row, for all galaxies, the central ones and every bin.
STAT_KEYS = ("n", "flux_rel_abs_err_median", "flux_rel_abs_err_mean", "flux_rel_abs_err_p90",
             "flux_rel_err_median", "catastrophic_fraction", "e_abs_err_median", "e_abs_err_p90", "e_err_rms",
             "e_abs_err_rms", "e1_err_median", "e2_err_median", "mag_err_median", "hsm_failures")

# A deblender: scene -> {output name: (images (n_peaks, bands, h, w) on the blend grid, r fluxes (n_peaks,)
# or None for the images' sums)}.
Deblender = Callable[["Scene"], dict[str, tuple[np.ndarray, np.ndarray | None]]]


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What ``vae-deblend bench`` runs.

    Attributes
    ----------
    n : `int`
        Blends.
    seed : `int`
        Seed of the test blends (and of the bootstrap).
    deblenders : `tuple` [`str`, ...]
        Any of `DEBLENDERS`.
    preset : `str`
        Blend preset (`sim.blend.BLEND_PRESETS`).
    catalog : `str`, optional
        CatSim-format FITS catalogue whose test split the galaxies are drawn from.
    psf_fwhm : `float`, optional
        Every band's PSF FWHM, arcsec, instead of the preset's (a shift away from the training PSFs).
    peaks : `str`
        ``true`` (true centres) or ``detected`` (the pipeline's detection).
    shear : `bool`
        Measure the shear response too.
    shear_g : `float`
        The applied shear, +-g on each component.
    weights : `str`
        The VAE's weights.
    fit_steps : `int`
        Steps of ``vae-fit``'s latent fit.
    refine_steps : `int`
        Steps of ``vae-refine``'s learned refinement (`model.refiner`).
    refiner : `str`, optional
        ``vae-refine``'s refiner file; the weights' own (``NAME.refiner.safetensors``) when not given.
    threads : `int`
        Threads of torch and JAX (1: the per-core cost).
    warmup : `int`
        Blends each deblender runs before the timed ones (compilation, caches), not scored.
    bootstrap : `int`
        Bootstrap resamplings of the blends for the shear errors.
    isolated_bound : `bool`
        Also score the VAE on every galaxy alone (`central.isolated_reconstructions`, row
        ``vae:isolated``): the bound of any deblender built on its decoder.
    split : `str`
        The galaxies' split: ``test`` for figures to report, ``validation`` for choosing settings (so that
        no choice is made on the blends the figures come from).
    iterations : `int`
        Passes of the VAE deblenders over the peaks (`DeblendConfig.iterations`).
    precision : `str`
        Arithmetic of the VAE deblenders' networks (`deblend.network.PRECISIONS`).
    """

    n: int = 1000
    seed: int = 0
    deblenders: tuple[str, ...] = DEBLENDERS
    preset: str = "anchor"
    catalog: str | None = None
    psf_fwhm: float | None = None
    peaks: str = "true"
    shear: bool = False
    shear_g: float = 0.02
    weights: str = "lsst"
    fit_steps: int = 60
    refine_steps: int = 2
    refiner: str | None = None
    threads: int = 1
    warmup: int = 3
    bootstrap: int = 1000
    isolated_bound: bool = False
    split: str = "test"
    iterations: int = 2
    precision: str = "float32"

    def __post_init__(self) -> None:
        unknown = set(self.deblenders) - set(DEBLENDERS)
        if unknown:
            raise ValueError(f"Unknown deblender(s) {sorted(unknown)}; choose from {DEBLENDERS}.")
        if self.peaks not in ("true", "detected"):
            raise ValueError(f"peaks must be 'true' or 'detected', got {self.peaks!r}.")
        if self.n < 1:
            raise ValueError("n must be at least 1.")
        if self.split not in ("test", "validation"):
            raise ValueError(f"split must be 'test' or 'validation', got {self.split!r}.")


@dataclasses.dataclass
class Scene:
    """One blend as every deblender sees it.

    Attributes
    ----------
    image : `numpy.ndarray` (bands, h, w)
        The noisy blend, electrons.
    variance : `numpy.ndarray` (bands,)
        Noise variance per pixel of each band.
    psfs : `numpy.ndarray` (bands, PSF_SIZE, PSF_SIZE)
        The PSF of each band, each summing to 1.
    peaks : `numpy.ndarray` (n, 2)
        Peak positions (x, y), pixels.
    footprint : `numpy.ndarray` (h, w) of `bool`
        The detection footprint (every detected region of the stamp).
    r : `int`
        Index of the r band.
    pixel_scale : `float`
        arcsec per pixel in r.
    """

    image: np.ndarray
    variance: np.ndarray
    psfs: np.ndarray
    peaks: np.ndarray
    footprint: np.ndarray
    r: int
    pixel_scale: float


def _detect(blend: Blend, psfs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's detection on one blend (detect task defaults): footprint mask and peaks (x, y)."""
    variances = np.broadcast_to(blend.variance[:, None, None], blend.image.shape)
    grow = 2.0 * max(psf_sigma(p) for p in psfs)  # the detect task's nSigmaToGrow x PSF sigma
    found = detect(blend.image, variances, psfs, grow_radius=grow)
    return found.labels > 0, found.peaks.astype(np.float64)


def _match(truth_xy: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Index of the detected peak matched to each truth galaxy (-1: missed), closest pairs first."""
    truth_of_peak = match_to_truth(peaks[:, 0], peaks[:, 1], truth_xy[:, 0], truth_xy[:, 1], MATCH_RADIUS)
    matched = np.full(len(truth_xy), -1, dtype=np.int64)
    matched[truth_of_peak[truth_of_peak >= 0]] = np.flatnonzero(truth_of_peak >= 0)
    return matched


def _on_grid(stamps: list[np.ndarray], origins: list[tuple[int, int]], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros((len(stamps),) + shape, dtype=np.float32)
    for k, (stamp, origin) in enumerate(zip(stamps, origins)):
        add_at(out[k], stamp, origin)
    return out


def vae_deblender(weights: str, fit_steps: int = 0, refine_steps: int = 0, refiner: str | None = None,
                  iterations: int = 2, precision: str = "float32") -> Deblender:
    """The VAE through the whole-field core, the blend as one parent on its detection footprint."""
    from ..deblend.network import VaeDeblender, load_deblender

    if refine_steps:
        net = VaeDeblender(weights, refiner=refiner, precision=precision)
    else:
        net = load_deblender(weights, precision=precision)
    config = DeblendConfig(iterations=iterations, fit_steps=fit_steps, refine_steps=refine_steps)

    def run(scene: Scene) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        children, parents = deblend_field(scene.image, scene.peaks, net, net.stamp_size,
                                          footprints=scene.footprint.astype(np.int32), config=config,
                                          variance=scene.variance, psf=scene.psfs)
        shape = scene.image.shape
        models = _on_grid([c.model for c in children], [c.origin for c in children], shape)
        parent = parents[0]
        x0, y0 = parent.bbox[:2]
        conserved = _on_grid(list(parent.conserved), [(x0, y0)] * len(children), shape)
        return {"conserved": (conserved, None), "model": (models, None)}

    def batched(scenes: list[Scene]) -> float:
        """Seconds to deblend ``scenes`` laid side by side in one field, one parent each (as the
        pipeline's task batches the parents of a patch)."""
        field, peaks, parents, labels, _ = tile_field(
            [sc.image for sc in scenes], [sc.peaks for sc in scenes], net.stamp_size // 2 + 1,
            [sc.footprint for sc in scenes])
        psf = np.concatenate([np.broadcast_to(sc.psfs, (len(sc.peaks),) + sc.psfs.shape) for sc in scenes])
        start = time.perf_counter()
        deblend_field(field, peaks, net, net.stamp_size, parents=parents, footprints=labels, config=config,
                      variance=scenes[0].variance, psf=psf)
        return time.perf_counter() - start

    run.net = net
    run.stamp_size = net.stamp_size
    run.bands = net.bands
    run.batched = batched
    return run


def scarlet_deblender() -> Deblender:
    """scarlet2 as DRP's scarlet_lite (`compare.scarlet`)."""
    from ..compare.scarlet import scarlet_deblend

    def run(scene: Scene) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        result = scarlet_deblend(scene.image, scene.variance, scene.psfs, scene.peaks,
                                 footprint=scene.footprint)
        return {"conserved": (result.conserved, None), "model": (result.models, None)}

    return run


def sep_deblender(scene: Scene) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Every footprint pixel to its nearest peak: the no-model floor."""
    h, w = scene.image.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    d = (xx[None] - scene.peaks[:, 0, None, None]) ** 2 + (yy[None] - scene.peaks[:, 1, None, None]) ** 2
    nearest = np.argmin(d, axis=0)
    owns = (nearest[None] == np.arange(len(scene.peaks))[:, None, None]) & scene.footprint[None]
    return {"pixels": ((scene.image[None] * owns[:, None]).astype(np.float32), None)}


def no_deblender(scene: Scene) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """No deblending: the blend itself for shapes, a 2.5" aperture around each peak for the flux."""
    h, w = scene.image.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    radius = APERTURE_ARCSEC / scene.pixel_scale
    inside = ((xx[None] - scene.peaks[:, 0, None, None]) ** 2
              + (yy[None] - scene.peaks[:, 1, None, None]) ** 2) <= radius**2
    flux = (scene.image[scene.r][None] * inside).sum(axis=(1, 2))
    images = np.broadcast_to(scene.image, (len(scene.peaks),) + scene.image.shape)
    return {"blend": (images, flux)}


# The row a deblender's primary output is scored under; other outputs are scored as "<name>:<output>".
_PRIMARY = {"conserved", "pixels", "blend"}
# The row of the VAE on every galaxy alone (``BenchConfig.isolated_bound``).
ISOLATED_ROW = "vae:isolated"


def _make_deblenders(config: BenchConfig) -> dict[str, Deblender]:
    out: dict[str, Deblender] = {}
    for name in config.deblenders:
        options = {"iterations": config.iterations, "precision": config.precision}
        if name == "vae":
            out[name] = vae_deblender(config.weights, **options)
        elif name == "vae-fit":
            out[name] = vae_deblender(config.weights, fit_steps=config.fit_steps, **options)
        elif name == "vae-refine":
            out[name] = vae_deblender(config.weights, refine_steps=config.refine_steps,
                                      refiner=config.refiner, **options)
        elif name == "scarlet":
            out[name] = scarlet_deblender()
        elif name == "sep":
            out[name] = sep_deblender
        elif name == "none":
            out[name] = no_deblender
    return out


def _row_name(deblender: str, output: str) -> str:
    return deblender if output in _PRIMARY else f"{deblender}:{output}"


def _shapes(images: np.ndarray, fluxes: np.ndarray | None, peaks: np.ndarray, r: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """r flux, g1 and g2 (NaN where HSM fails) of each output image."""
    flux = images[:, r].sum(axis=(1, 2), dtype=np.float64) if fluxes is None else np.asarray(fluxes, float)
    g = np.full((len(images), 2), np.nan)
    for k in range(len(images)):
        shape = hsm_shape(images[k, r], center=tuple(peaks[k]))
        if not shape.failed:
            g[k] = shape.g1, shape.g2
    return flux, g[:, 0], g[:, 1]


def stats(df: np.ndarray, dg1: np.ndarray, dg2: np.ndarray) -> dict:
    """`STAT_KEYS` of per-galaxy relative flux errors and shear errors (NaN: HSM failed)."""
    df = np.asarray(df, dtype=float)
    n = len(df)
    if n == 0:
        return {key: (0 if key in ("n", "hsm_failures") else float("nan")) for key in STAT_KEYS}
    adf = np.abs(df)
    dg = np.hypot(dg1, dg2)
    ok = np.isfinite(dg)
    ratio = 1.0 + df
    dmag = np.where(ratio > 0, -2.5 * np.log10(np.where(ratio > 0, ratio, 1.0)), np.nan)
    nan = float("nan")
    return {
        "n": int(n),
        "flux_rel_abs_err_median": float(np.median(adf)),
        "flux_rel_abs_err_mean": float(np.mean(adf)),
        "flux_rel_abs_err_p90": float(np.percentile(adf, 90)),
        "flux_rel_err_median": float(np.median(df)),
        "catastrophic_fraction": float(np.mean(adf > 1.0)),
        "e_abs_err_median": float(np.median(dg[ok])) if ok.any() else nan,
        "e_abs_err_p90": float(np.percentile(dg[ok], 90)) if ok.any() else nan,
        "e_err_rms": float(np.sqrt(np.mean(np.concatenate([dg1[ok], dg2[ok]]) ** 2))) if ok.any() else nan,
        "e_abs_err_rms": float(np.sqrt(np.mean(dg[ok] ** 2))) if ok.any() else nan,
        "e1_err_median": float(np.median(dg1[ok])) if ok.any() else nan,
        "e2_err_median": float(np.median(dg2[ok])) if ok.any() else nan,
        "mag_err_median": float(np.nanmedian(dmag)) if np.isfinite(dmag).any() else nan,
        "hsm_failures": int((~ok).sum()),
    }


def _binned(df, dg1, dg2, by: np.ndarray, edges: tuple[float, ...]) -> list[dict]:
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (by >= lo) & ((by < hi) if hi != edges[-1] else (by <= hi))
        rows.append({"lo": float(lo), "hi": float(hi), **stats(df[inside], dg1[inside], dg2[inside])})
    return rows


def _scene(blend: Blend, maker: BlendMaker, psfs: np.ndarray, peaks_mode: str,
           detection: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Scene, np.ndarray]:
    """The scene of a blend and the peak matched to each truth galaxy (-1: missed)."""
    r = maker.survey.band_names.index("r")
    footprint, detected = detection if detection is not None else _detect(blend, psfs)
    truth_xy = np.stack([blend.truth["x"], blend.truth["y"]], axis=1)
    if peaks_mode == "true":
        peaks, matched = truth_xy, np.arange(len(truth_xy))
    else:
        peaks = detected
        matched = _match(truth_xy, peaks)
    scene = Scene(image=blend.image, variance=blend.variance, psfs=psfs, peaks=peaks, footprint=footprint,
                  r=r, pixel_scale=maker.survey.bands[r].pixel_scale)
    return scene, matched


def _blend_psfs(blend: Blend, survey_psfs: np.ndarray) -> np.ndarray:
    """A blend's own PSF images (drawn per blend where its configuration draws conditions; the survey's
    otherwise), else the survey's."""
    return survey_psfs if blend.psf is None else np.asarray(blend.psf, dtype=np.float32)


def _maker(config: BenchConfig, bands: tuple[str, ...] | None, stamp_size: int) -> BlendMaker:
    source = None
    if config.catalog:
        from ..sim.catalog_io import read_catalog, select_split

        source = CatalogGalaxies(select_split(read_catalog(config.catalog), config.split))
    overrides = {} if config.psf_fwhm is None else {"psf_fwhm": config.psf_fwhm}
    maker = BlendMaker(BlendConfig.preset(config.preset, stamp_size=stamp_size, **overrides), source)
    if bands is not None and tuple(maker.survey.band_names) != tuple(bands):
        raise ValueError(f"The weights' bands {bands} differ from the blends' {maker.survey.band_names}.")
    return maker


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    # JAX reads its thread settings once, when it is first imported (scarlet2).
    if threads == 1 and "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if "multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                                       "intra_op_parallelism_threads=1").strip()


def run_bench(config: BenchConfig, out_dir: str | Path, progress: bool = True,
              maker: BlendMaker | None = None, title: str | None = None,
              extra: dict[str, Deblender] | None = None) -> dict:
    """Run every deblender of ``config`` on the same blends; write ``bench.json``, ``bench.md`` and plots.

    Parameters
    ----------
    config : `BenchConfig`
    out_dir : `str` or `pathlib.Path`
    progress : `bool`
        Show a progress bar.
    maker : `BlendMaker`, optional
        Makes the test blends, instead of the one of ``config``'s preset, catalogue and PSF (the shift
        suite's sets, `evaluate.suite`); its bands and stamp size must be the weights'.
    title : `str`, optional
        What the blends are, for the tables (``config``'s preset by default).
    extra : `dict` [`str`, callable], optional
        More deblenders by row name, built by the caller (e.g. `vae_deblender` with another network, as
        bench/bench_decoder_diet.py does), run after ``config``'s on the same blends.

    Returns
    -------
    result : `dict`
        What ``bench.json`` holds: ``config``, ``machine``, ``detection`` (peaks found, missed, spurious)
        and ``deblenders``: one entry per row, each with ``seconds_per_blend_median`` and ``_mean``,
        ``measured_on``, ``all`` and ``central`` (`STAT_KEYS`), ``by_blendedness``, ``by_snr`` and
        ``by_mag``, and with ``--shear`` its ``shear`` response (`shear_response`); ``blends``, the
        blend configuration and galaxy source the blends were made with.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _set_threads(config.threads)
    deblenders = _make_deblenders(config)
    deblenders.update(extra or {})
    vae = next((d for d in deblenders.values() if hasattr(d, "net")), None)
    if vae is None:
        from ..deblend.network import load_deblender

        net = load_deblender(config.weights)
    else:
        net = vae.net
    if maker is None:
        maker = _maker(config, net.bands, net.stamp_size)
    elif tuple(maker.survey.band_names) != tuple(net.bands) or maker.config.stamp_size != net.stamp_size:
        raise ValueError(f"The blends' bands {maker.survey.band_names} and stamp size "
                         f"{maker.config.stamp_size} differ from the weights' ({net.bands}, "
                         f"{net.stamp_size}).")
    psfs = np.stack([band.psf_image(PSF_SIZE) for band in maker.survey.bands])
    r = maker.survey.band_names.index("r")

    # Warm-up blends of another stream (the other split), neither timed nor scored.
    warmup_split = "validation" if config.split == "test" else "test"
    for i in range(config.warmup):
        blend = maker.make(config.seed, i, split=warmup_split)
        scene, _ = _scene(blend, maker, _blend_psfs(blend, psfs), config.peaks)
        for run in deblenders.values():
            run(scene)

    batch: list[Scene] = []
    batched_seconds = {name: 0.0 for name, run in deblenders.items() if hasattr(run, "batched")}
    per_row: dict[str, dict[str, list]] = {}
    seconds: dict[str, list[float]] = {name: [] for name in deblenders}
    if config.isolated_bound:
        seconds[ISOLATED_ROW] = []
    truth_rows: dict[str, list] = {k: [] for k in ("blend", "central", "snr", "blendedness", "mag")}
    counts = {"truth": 0, "detected": 0, "matched": 0, "missed": 0, "spurious": 0}
    shear_data = _ShearData(config.shear_g) if config.shear else None
    for i in tqdm(range(config.n), desc="bench", unit="blend", disable=not progress):
        blend = maker.make(config.seed, i, split=config.split)
        blend_psfs = _blend_psfs(blend, psfs)
        detection = _detect(blend, blend_psfs)
        scene, matched = _scene(blend, maker, blend_psfs, config.peaks, detection)
        good = matched >= 0
        counts["truth"] += len(matched)
        counts["detected"] += len(scene.peaks)
        counts["matched"] += int(good.sum())
        counts["missed"] += int((~good).sum())
        counts["spurious"] += len(scene.peaks) - int(good.sum())
        f_true = blend.truth_images[good, r].sum(axis=(1, 2), dtype=np.float64)
        truth_rows["blend"].extend([i] * int(good.sum()))
        truth_rows["central"].extend(blend.truth["is_central"][good])
        truth_rows["snr"].extend(blend.truth["snr_band"][good, r])
        truth_rows["blendedness"].extend(blend.truth["blendedness"][good])
        truth_rows["mag"].extend(blend.truth["mag"][good, r])
        g_true = np.stack([blend.truth["g1"][good], blend.truth["g2"][good]], axis=1)
        g_true[blend.truth["hsm_failed"][good]] = np.nan
        rows_of_blend: list[tuple[str, str, np.ndarray, np.ndarray | None, np.ndarray]] = []
        for name, run in deblenders.items():
            start = time.perf_counter()
            outputs = run(scene)
            seconds[name].append(time.perf_counter() - start)
            index = matched[good]
            rows_of_blend += [(name, output, images[index], None if fluxes is None else fluxes[index],
                               scene.peaks[index]) for output, (images, fluxes) in outputs.items()]
        if config.isolated_bound:
            start = time.perf_counter()
            centers = np.rint(np.stack([blend.truth["x"], blend.truth["y"]], axis=1)[good]).astype(np.int64)
            alone = isolated_reconstructions(net, blend.truth_images[good], centers,
                                             np.broadcast_to(blend.variance, (len(centers), len(net.bands))),
                                             np.random.default_rng([config.seed, 4242, i]), psf=blend.psf)
            seconds[ISOLATED_ROW].append(time.perf_counter() - start)
            rows_of_blend.append((ISOLATED_ROW, "isolated", alone, None, centers.astype(np.float64)))
        for name, output, images, fluxes, peaks in rows_of_blend:
            flux, g1, g2 = _shapes(images, fluxes, peaks, r)
            row = per_row.setdefault(name if name == ISOLATED_ROW else _row_name(name, output),
                                     {"df": [], "dg1": [], "dg2": [], "deblender": name, "output": output})
            row["df"].extend((flux - f_true) / f_true)
            row["dg1"].extend(g1 - g_true[:, 0])
            row["dg2"].extend(g2 - g_true[:, 1])
        if shear_data is not None:
            shear_data.add(i, maker, config, blend, scene, deblenders, blend_psfs)
        batch.append(scene)
        if len(batch) == BATCH_BLENDS or i == config.n - 1:
            for name in batched_seconds:
                batched_seconds[name] += deblenders[name].batched(batch)
            batch = []

    truth = {k: np.asarray(v) for k, v in truth_rows.items()}
    central = truth["central"].astype(bool)
    result = {
        "title": title or config.preset,
        "config": {**dataclasses.asdict(config), "deblenders": list(config.deblenders) + list(extra or {})},
        "blends": {**dataclasses.asdict(maker.config),
                   "galaxies": getattr(maker.source, "description", type(maker.source).__name__)},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "threads": config.threads},
        "detection": {**counts, "match_radius_px": MATCH_RADIUS, "peaks": config.peaks},
        "n_blends": config.n, "n_galaxies": int(len(central)), "deblenders": {},
    }
    for row_name, row in per_row.items():
        df, dg1, dg2 = (np.asarray(row[k], dtype=float) for k in ("df", "dg1", "dg2"))
        t = np.asarray(seconds[row["deblender"]])
        entry = {
            "deblender": row["deblender"], "measured_on": row["output"],
            "seconds_per_blend_median": float(np.median(t)), "seconds_per_blend_mean": float(np.mean(t)),
            "seconds_per_blend_p90": float(np.percentile(t, 90)),
            "seconds_per_blend_batched": (batched_seconds[row["deblender"]] / config.n
                                          if row["deblender"] in batched_seconds else None),
            "all": stats(df, dg1, dg2), "central": stats(df[central], dg1[central], dg2[central]),
            "by_blendedness": _binned(df, dg1, dg2, truth["blendedness"], BLENDEDNESS_BINS),
            "by_snr": _binned(df, dg1, dg2, truth["snr"], SNR_BINS),
            "by_mag": _binned(df, dg1, dg2, truth["mag"], MAG_BINS),
        }
        if shear_data is not None and row["deblender"] != ISOLATED_ROW:
            entry["shear"] = shear_data.response(row["deblender"], row["output"], config)
        result["deblenders"][row_name] = entry
    if shear_data is not None:
        result["shear_noise_only"] = shear_data.response(None, "noise", config)
    (out / "bench.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    (out / "bench.md").write_text(metrics_table(result))
    np.savez(out / "per_galaxy.npz", **{f"{name}_{k}": np.asarray(row[k], dtype=float)
                                        for name, row in per_row.items() for k in ("df", "dg1", "dg2")},
             **truth)
    from .plots import plot_bench

    plot_bench(result, out / "bench.png")
    return result


def _fmt(x: float, digits: int = 3) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def metrics_table(result: dict) -> str:
    """The markdown tables of a bench result: all galaxies, central galaxies, and the shear response."""
    cfg = result["config"]
    det = result["detection"]
    psf = f", PSF FWHM {cfg['psf_fwhm']}\"" if cfg.get("psf_fwhm") else ""
    title = result.get("title", cfg["preset"])
    lines = [f"# Bench: {result['n_blends']} blends ({title}{psf}, seed {cfg['seed']}, "
             f"{'catalogue ' + str(cfg['catalog']) if cfg['catalog'] else 'built-in generator'}, "
             f"{cfg['peaks']} peaks), {result['n_galaxies']} galaxies scored", ""]
    if cfg["peaks"] == "detected":
        lines += [f"Detection: {det['detected']} peaks for {det['truth']} galaxies; {det['missed']} missed, "
                  f"{det['spurious']} spurious (match radius {det['match_radius_px']} px).", ""]
    for subset in ("all", "central"):
        lines += [f"## {subset} galaxies", "",
                  "| row | ms/blend median | abs(df/f) median / mean / p90 | df/f median | abs(df/f) > 1 "
                  "| abs(dg) median / p90 | dg RMS | dmag median | HSM failures |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, e in result["deblenders"].items():
            s = e[subset]
            lines.append(f"| {name} | {1e3 * e['seconds_per_blend_median']:.2f} | "
                         f"{_fmt(s['flux_rel_abs_err_median'])} / {_fmt(s['flux_rel_abs_err_mean'])} / "
                         f"{_fmt(s['flux_rel_abs_err_p90'])} | {_fmt(s['flux_rel_err_median'])} | "
                         f"{100 * s['catastrophic_fraction']:.1f} % | {_fmt(s['e_abs_err_median'])} / "
                         f"{_fmt(s['e_abs_err_p90'])} | {_fmt(s['e_err_rms'])} | {_fmt(s['mag_err_median'])} "
                         f"| {s['hsm_failures']} of {s['n']} |")
        lines.append("")
    batched = [(name, e["seconds_per_blend_batched"]) for name, e in result["deblenders"].items()
               if e.get("seconds_per_blend_batched") and ":" not in name]
    if batched:
        times = ", ".join(f"{name} {1e3 * t:.2f} ms per blend" for name, t in batched)
        lines += [f"The same blends {BATCH_BLENDS} per call (one parent each, as the pipeline batches a "
                  f"patch's parents): {times}.", ""]
    if "shear_noise_only" in result:
        lines += [f"## Shear response (g = +-{cfg['shear_g']} on each component, same noise)", "",
                  "| row | m | c1 | c2 | m (r < 24) | galaxies used |", "|---|---|---|---|---|---|"]
        rows = [("noise only (isolated truth + the blend's noise)", result["shear_noise_only"])]
        rows += [(name, e["shear"]) for name, e in result["deblenders"].items() if "shear" in e]
        for name, s in rows:
            lines.append(f"| {name} | {s['m']:+.4f} +- {s['m_err']:.4f} | {s['c']:+.5f} +- {s['c_err']:.5f} "
                         f"| {s['c2']:+.5f} +- {s['c2_err']:.5f} | {s['m_bright']:+.4f} +- "
                         f"{s['m_bright_err']:.4f} | {s['n_used']} of {s['n']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


# --- shear response -------------------------------------------------------------------------------------

_SHEARS = ((1, 0), (-1, 0), (0, 1), (0, -1))


class _ShearData:
    """HSM shapes of every output of every galaxy under the four shears (+g1, -g1, +g2, -g2)."""

    def __init__(self, g: float) -> None:
        self.g = g
        self.blend: list[int] = []
        self.mag: list[float] = []
        self.iso: list[np.ndarray] = []            # (n, 4, 2) per blend
        self.noise: list[np.ndarray] = []
        self.out: dict[tuple[str, str], list[np.ndarray]] = {}

    def add(self, index: int, maker: BlendMaker, config: BenchConfig, blend: Blend, scene: Scene,
            deblenders: dict[str, Deblender], psfs: np.ndarray) -> None:
        n = len(blend.truth["x"])
        r = scene.r
        truth_xy = np.stack([blend.truth["x"], blend.truth["y"]], axis=1)
        noise = blend.image - blend.noiseless
        iso = np.full((n, 4, 2), np.nan)
        noisy = np.full((n, 4, 2), np.nan)
        out = {}
        for s, (a, b) in enumerate(_SHEARS):
            sheared = maker.make(config.seed, index, split=config.split, shear=(a * self.g, b * self.g))
            # The unsheared blend's footprint and peaks: the shear alone changes between the four.
            view = dataclasses.replace(scene, image=sheared.image, peaks=truth_xy)
            for k in range(n):
                iso[k, s] = _g(sheared.truth_images[k, r], truth_xy[k])
                noisy[k, s] = _g(sheared.truth_images[k, r] + noise[r], truth_xy[k])
            for name, run in deblenders.items():
                for output, (images, _) in run(view).items():
                    shapes = out.setdefault((name, output), np.full((n, 4, 2), np.nan))
                    for k in range(n):
                        shapes[k, s] = _g(images[k, r], truth_xy[k])
        self.blend.extend([index] * n)
        self.mag.extend(blend.truth["mag"][:, r])
        self.iso.append(iso)
        self.noise.append(noisy)
        for key, shapes in out.items():
            self.out.setdefault(key, []).append(shapes)

    def response(self, deblender: str | None, output: str, config: BenchConfig) -> dict:
        iso = np.concatenate(self.iso)
        shapes = np.concatenate(self.noise if deblender is None else self.out[(deblender, output)])
        return shear_response(shapes, iso, self.g, np.asarray(self.blend), np.asarray(self.mag),
                              n_boot=config.bootstrap, seed=config.seed)


def _g(image: np.ndarray, center: np.ndarray) -> tuple[float, float]:
    shape = hsm_shape(image, center=tuple(center))
    return (np.nan, np.nan) if shape.failed else (shape.g1, shape.g2)


def shear_response(shapes: np.ndarray, isolated: np.ndarray, g: float, blend: np.ndarray, mag: np.ndarray,
                   n_boot: int = 1000, seed: int = 0, bright_mag: float = 24.0) -> dict:
    """Multiplicative and additive shear bias of measured shapes against the isolated truth's.

    Parameters
    ----------
    shapes, isolated : `numpy.ndarray` (n, 4, 2)
        (g1, g2) of each galaxy under the shears (+g, 0), (-g, 0), (0, +g), (0, -g): measured on the
        deblender's output, and on the noiseless isolated galaxy.  NaN where HSM failed; a galaxy is used
        only where all eight of its values and the isolated ones are finite.
    g : `float`
    blend : `numpy.ndarray` (n,)
        Blend of each galaxy: the bootstrap resamples blends, whose galaxies are not independent.
    mag : `numpy.ndarray` (n,)
        r magnitude, for the bright subset.

    Returns
    -------
    response : `dict`
        ``m`` = R / R_isolated - 1 over both components (R: the mean response, (e(+g) - e(-g)) / 2g, of
        e1 to g1 and of e2 to g2), ``m1``, ``m2``; ``c`` (= ``c1``) and ``c2``: the mean shape at zero
        shear less (1 + m) times the isolated galaxies', in shear units (divided by R_isolated); each with
        its bootstrap error ``*_err``; ``m_bright`` for r < ``bright_mag``; ``n`` and ``n_used``.
    """
    ok = np.isfinite(shapes).all(axis=(1, 2)) & np.isfinite(isolated).all(axis=(1, 2))
    r1 = (shapes[:, 0, 0] - shapes[:, 1, 0]) / (2 * g)
    r2 = (shapes[:, 2, 1] - shapes[:, 3, 1]) / (2 * g)
    r1_iso = (isolated[:, 0, 0] - isolated[:, 1, 0]) / (2 * g)
    r2_iso = (isolated[:, 2, 1] - isolated[:, 3, 1]) / (2 * g)
    # Shapes at zero shear (the mean of each +-g pair).
    e1, e2 = (shapes[:, 0, 0] + shapes[:, 1, 0]) / 2, (shapes[:, 2, 1] + shapes[:, 3, 1]) / 2
    e1_iso, e2_iso = (isolated[:, 0, 0] + isolated[:, 1, 0]) / 2, (isolated[:, 2, 1] + isolated[:, 3, 1]) / 2
    bright = mag < bright_mag

    def estimate(rows: np.ndarray) -> np.ndarray:
        """(m, m1, m2, c1, c2) over galaxy indices ``rows`` (repeated indices count again).  c is what is
        left of the mean shape once the isolated shapes scaled by (1 + m) are taken out, in shear units."""
        s1, s2, i1, i2 = r1[rows].sum(), r2[rows].sum(), r1_iso[rows].sum(), r2_iso[rows].sum()
        m1, m2 = s1 / i1 - 1, s2 / i2 - 1
        c1 = (e1[rows].sum() - (1 + m1) * e1_iso[rows].sum()) / i1
        c2 = (e2[rows].sum() - (1 + m2) * e2_iso[rows].sum()) / i2
        return np.array([(s1 + s2) / (i1 + i2) - 1, m1, m2, c1, c2])

    nan = float("nan")
    keys = ("m", "m1", "m2", "c", "c2")
    used = np.flatnonzero(ok)
    result = {k: nan for k in keys} | {f"{k}_err": nan for k in keys}
    result |= {"c1": nan, "c1_err": nan, "m_bright": nan, "m_bright_err": nan, "R": nan, "R_isolated": nan,
               "n": int(len(ok)), "n_used": int(len(used)), "g": g}
    if len(used) < 2:
        return result
    result |= {k: float(v) for k, v in zip(keys, estimate(used))}
    if (ok & bright).sum() >= 2:
        result["m_bright"] = float(estimate(np.flatnonzero(ok & bright))[0])
    # Errors: bootstrap over blends, whose galaxies are not independent.
    blends, members = np.unique(blend, return_inverse=True)
    rng = np.random.default_rng([seed, 977])
    boots, boots_bright = [], []
    for _ in range(n_boot):
        weight = np.bincount(rng.integers(0, len(blends), len(blends)), minlength=len(blends))[members]
        rows = np.repeat(np.arange(len(ok)), weight * ok)
        if len(rows) >= 2:
            boots.append(estimate(rows))
        rows = rows[bright[rows]]
        if len(rows) >= 2:
            boots_bright.append(estimate(rows)[0])
    if boots:
        result |= {f"{k}_err": float(v) for k, v in zip(keys, np.std(np.array(boots), axis=0))}
    if boots_bright:
        result["m_bright_err"] = float(np.std(boots_bright))
    result |= {"c1": result["c"], "c1_err": result["c_err"],
               "R_isolated": float((r1_iso[ok].mean() + r2_iso[ok].mean()) / 2),
               "R": float((r1[ok].mean() + r2[ok].mean()) / 2)}
    return result

"""scarlet on arrays: a scarlet2 deblender configured as close to Rubin DRP's scarlet_lite as scarlet2 allows.

`scarlet_deblend` takes a multi-band image, its variance, the per-band PSF images and the peaks of one
blend and returns every source's model convolved to the observed PSF, the image's flux re-distributed by
those models (scarlet_lite's ``conserve_flux``, meas_extensions_scarlet's flux weights), the number of
iterations, whether the fit converged, and a per-source failure flag.  No Rubin types; scarlet2 and JAX are
imported inside this module only (the rest of the package imports without them).

What scarlet2 provides and what is done here (docs/comparison.md, choice by choice):

- scarlet2's `Frame` with a narrow Gaussian model PSF (``model_psf_sigma`` 0.8 px, DRP's
  ``modelPsfSigma``), its `Observation` with the observed PSF images and inverse-variance weights, its
  `ConvolutionRenderer` (the difference kernel between the two PSFs, in Fourier space), its `Scene` of
  factorised `Source` models (spectrum x morphology) and its likelihood.
- The optimiser is scarlet_lite's (proximal Adam, "adaprox": Adam steps on the gradient of chi^2/2, then a
  projection of each morphology onto monotonic, positive, background-thresholded images, normalised to a
  peak of 1) rather than scarlet2's `Scene.fit` (Adam on unconstrained parameters through a bijection, no
  proximal operators, hence no monotonicity).  It runs as one jitted `jax.lax.while_loop`, so a fit is a
  single compiled call, not 300 Python round trips.
- Initialisation is scarlet_lite's factorised chi^2 initialisation with one component per source: the
  morphology is the chi^2-weighted detection image ``sum_b I_b / sigma_b^2`` made symmetric about the
  peak, masked to the pixels a non-increasing path from the peak reaches, trimmed at
  ``initial_bg_thresh`` x its noise and normalised (the model PSF when nothing is left); all spectra are
  then fitted jointly by least squares to the image (``fit_spectra``).
- Every source's model lives on the whole blend grid (its box is the frame's) and the monotonic projection
  acts in a ``box_size`` window about its peak (zero outside, as scarlet_lite's box).  So the static
  structure of a scene depends only on (number of sources, bands, H, W): scenes of the same shape reuse one
  compiled fit, and the number of sources is padded to a power of two with inactive sources (zero
  spectrum) so that blends of 3 and 4 galaxies share one.  scarlet2's own boxes, placed at each peak, are
  static and would recompile for every blend (scarlet2 issue "jit recompiles for every new scene").
"""

from __future__ import annotations

__all__ = ["ScarletConfig", "ScarletResult", "scarlet_deblend"]

import dataclasses
import functools
import logging
import math
import os
import warnings
from typing import Any

import numpy as np

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ScarletConfig:
    """Settings of `scarlet_deblend` (defaults: meas_extensions_scarlet's ``ScarletDeblendConfig``).

    Attributes
    ----------
    max_iter : `int`
        Most optimiser iterations (DRP ``maxIter`` 300).
    min_iter : `int`
        Fewest iterations before convergence may stop the fit (DRP ``minIter`` 5).
    e_rel : `float`
        Stop when the loss changes by less than ``e_rel`` x the loss between two iterations (DRP
        ``relativeError`` 1e-3, scarlet_lite's criterion).
    model_psf_sigma : `float`
        Sigma of the Gaussian model-frame PSF, pixels (DRP ``modelPsfSigma`` 0.8).
    monotonic : `bool`
        Project each morphology onto a radially monotonic one about its peak (DRP: always).
    conserve_flux : `bool`
        Compute ``conserved`` (the image re-distributed by the models); zeros when off.
    bg_thresh : `float`
        During the fit, morphology pixels whose model is below ``bg_thresh`` x the background RMS in every
        band are set to zero (DRP ``backgroundThresh`` 1.0; scarlet_lite's sparsity).
    initial_bg_thresh : `float`
        The same threshold for the initial morphology, in units of the detection image's noise (DRP
        ``initialBackgroundThresh`` 1.0).
    box_size : `int`
        Side of the window about each peak in which a morphology may be non-zero (odd, pixels).
        scarlet_lite grows its boxes as sources need; here the window is fixed so that scenes of one shape
        share a compiled fit.
    morph_step : `float`
        Adam step of the morphologies (scarlet_lite's ``default_adaprox_parameterization``: 1e-2).
    spectrum_step : `float`
        Adam step of each spectrum relative to its norm, at least the band's noise RMS (scarlet_lite: 1e-2).
    floor : `float`
        Smallest value of a spectrum and of a morphology's peak pixel (scarlet_lite's ``floor``), which
        keeps a source from vanishing and its gradient from dying.
    pad_sources : `bool`
        Pad the number of sources to a power of two (inactive sources) so blends with different numbers of
        galaxies share a compiled fit.
    """

    max_iter: int = 300
    min_iter: int = 5
    e_rel: float = 1e-3
    model_psf_sigma: float = 0.8
    monotonic: bool = True
    conserve_flux: bool = True
    bg_thresh: float = 1.0
    initial_bg_thresh: float = 1.0
    box_size: int = 41
    morph_step: float = 1e-2
    spectrum_step: float = 1e-2
    floor: float = 1e-20
    pad_sources: bool = True

    def __post_init__(self) -> None:
        if self.box_size < 3 or self.box_size % 2 == 0:
            raise ValueError(f"box_size must be odd and at least 3, got {self.box_size}.")
        if self.max_iter < 1 or self.min_iter < 0:
            raise ValueError(f"max_iter must be positive and min_iter >= 0, got {self.max_iter}, "
                             f"{self.min_iter}.")
        if self.model_psf_sigma <= 0:
            raise ValueError(f"model_psf_sigma must be positive, got {self.model_psf_sigma}.")


@dataclasses.dataclass
class ScarletResult:
    """The outcome of `scarlet_deblend`.

    Attributes
    ----------
    models : `numpy.ndarray` (n_sources, bands, H, W), float32
        Each source's model convolved to the observed PSF, image units, on the input grid (zero for a
        failed source).
    conserved : `numpy.ndarray` (n_sources, bands, H, W), float32
        The image's flux re-distributed in proportion to the models, zero outside the footprint (and
        where no model has flux).
    iterations : `int`
        Optimiser iterations run.
    converged : `bool`
        The relative change of the loss fell below ``e_rel`` before ``max_iter``.
    failed : `numpy.ndarray` (n_sources,), bool
        Sources that could not be modelled: a peak off the image or not finite, or a model that is not
        finite; their ``models`` and ``conserved`` rows are zero.
    """

    models: np.ndarray
    conserved: np.ndarray
    iterations: int
    converged: bool
    failed: np.ndarray


def _import_jax() -> tuple[Any, Any, Any, Any]:
    """jax, jax.numpy, equinox and scarlet2, imported on first use, on the CPU and without noise."""
    # JAX would look for accelerators (and warn when it finds none); this deblender runs on the CPU, and a
    # caller who wants otherwise sets JAX_PLATFORMS before importing.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import scarlet2

    # scarlet2 runs its validation checks (and prints their results) on every Observation, Scene and fit
    # unless told otherwise; the checks are for interactive use.
    scarlet2.set_validation(False)
    return jax, jnp, eqx, scarlet2


@functools.lru_cache(maxsize=8)
def _ring_tables(size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each square ring r = 1..size//2 about the centre of a ``size`` x ``size`` window: the flat
    indices of its pixels, of their up to 3 neighbours on ring r - 1, and the neighbours' weights.

    A neighbour's weight is the cosine of the angle between the step to it and the direction to the centre
    (zero when it points away), normalised per pixel: the weighted monotonicity of scarlet_lite, where a
    pixel may not exceed the weighted mean of its neighbours nearer the centre.  Rings are processed in
    order, so each ring sees the already-projected ring inside it.
    """
    half = size // 2
    tables = []
    for r in range(1, half + 1):
        pix, nbs, wts = [], [], []
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if max(abs(dy), abs(dx)) != r:
                    continue
                to_centre = -np.array([dy, dx], dtype=float) / math.hypot(dy, dx)
                cand, w = [], []
                for ny in (-1, 0, 1):
                    for nx in (-1, 0, 1):
                        qy, qx = dy + ny, dx + nx
                        if (ny, nx) == (0, 0) or max(abs(qy), abs(qx)) != r - 1:
                            continue
                        cos = float(np.dot([ny, nx], to_centre) / math.hypot(ny, nx))
                        if cos > 0:
                            cand.append((qy + half) * size + qx + half)
                            w.append(cos)
                w = np.array(w) / np.sum(w)
                cand += [cand[0]] * (3 - len(cand))
                w = np.concatenate([w, np.zeros(3 - len(w))])
                pix.append((dy + half) * size + dx + half)
                nbs.append(cand)
                wts.append(w)
        tables.append((np.array(pix), np.array(nbs), np.array(wts, dtype=np.float32)))
    return tables


@functools.lru_cache(maxsize=None)
def _compiled(box_size: int, monotonic: bool) -> dict[str, Any]:
    """The jitted pieces for one window size (built once per process; JAX caches each shape)."""
    jax, jnp, eqx, _ = _import_jax()
    tables = _ring_tables(box_size)
    half = box_size // 2

    def project_window(window: Any) -> Any:
        flat = window.ravel()
        if monotonic:
            for pix, nbs, wts in tables:
                ref = jnp.sum(flat[nbs] * wts, axis=1)
                flat = flat.at[pix].set(jnp.minimum(flat[pix], ref))
        return flat.reshape(window.shape)

    def project(morph: Any, center: Any) -> Any:
        """Monotonic about ``center`` (y, x) in a box_size window, zero outside (one source)."""
        padded = jnp.pad(morph, half)
        window = jax.lax.dynamic_slice(padded, (center[0], center[1]), (box_size, box_size))
        window = project_window(window)
        out = jax.lax.dynamic_update_slice(jnp.zeros_like(padded), window, (center[0], center[1]))
        return out[half:-half, half:-half]

    def prox_morph(morph, spectrum, center, bg_rms, bg_thresh, floor):
        morph = project(morph, center)
        model = spectrum[:, None, None] * morph[None]
        faint = jnp.all(model < (bg_rms * bg_thresh)[:, None, None], axis=0)
        morph = jnp.where(faint | (morph < 0) | ~jnp.isfinite(morph), 0.0, morph)
        morph = morph.at[center[0], center[1]].max(floor)
        return morph / jnp.max(morph)

    def render_sources(scene, obs, spectra, morphs):
        """Each source's model convolved to the observed PSF (n, bands, H, W)."""
        del scene
        return jax.vmap(lambda s, m: obs.render(s[:, None, None] * m[None]))(spectra, morphs)

    def set_scene(scene, spectra, morphs):
        n = len(scene.sources)
        return eqx.tree_at(lambda s: [src.spectrum for src in s.sources] + [src.morphology for src in s.sources],
                           scene, replace=[spectra[k] for k in range(n)] + [morphs[k] for k in range(n)])

    @eqx.filter_jit
    def fit(scene, obs, spectra, morphs, centers, active, bg_rms, spectrum_min, steps, max_iter, min_iter,
            e_rel, bg_thresh, floor):
        """scarlet_lite's adaprox: Adam steps on chi^2/2, then the proximal projections."""
        log_norm = obs.N / 2 * jnp.log(2 * jnp.pi)

        def loss_fn(values):
            s, m = values
            s = s * active[:, None]
            model = set_scene(scene, s, m)()  # scarlet2's Scene: sum of spectrum x morphology
            return -(obs.log_likelihood(model) + log_norm)  # chi^2 / 2 (scarlet2's likelihood)

        b1, b2, eps = 0.9, 0.999, 1e-8
        morph_step, spectrum_step = steps

        def body(state):
            it, values, mom, vel, loss_prev, loss, _ = state
            loss_now, grads = jax.value_and_grad(loss_fn)(values)
            s, m = values
            t = (it + 1).astype(jnp.float32)
            mom = jax.tree.map(lambda a, g: b1 * a + (1 - b1) * g, mom, grads)
            vel = jax.tree.map(lambda a, g: b2 * a + (1 - b2) * g * g, vel, grads)
            mhat = jax.tree.map(lambda a: a / (1 - b1 ** t), mom)
            vhat = jax.tree.map(lambda a: a / (1 - b2 ** t), vel)
            # Step sizes as scarlet_lite's: morphology 1e-2 (peak normalised to 1); spectrum 1e-2 of its
            # norm, at least the noise RMS of the band.
            s_step = jnp.maximum(spectrum_step * jnp.linalg.norm(s, axis=1, keepdims=True), spectrum_min)
            s = s - s_step * mhat[0] / (jnp.sqrt(vhat[0]) + eps)
            m = m - morph_step * mhat[1] / (jnp.sqrt(vhat[1]) + eps)
            s = jnp.where(jnp.isfinite(s), jnp.maximum(s, floor), floor)
            m = jax.vmap(prox_morph, in_axes=(0, 0, 0, None, None, None))(m, s, centers, bg_rms, bg_thresh,
                                                                         floor)
            done = (it + 1 > min_iter) & (jnp.abs(loss_now - loss) < e_rel * jnp.abs(loss_now))
            return it + 1, (s, m), mom, vel, loss, loss_now, done

        def cond(state):
            it, *_, done = state
            return (it < max_iter) & ~done

        values = (spectra, morphs)
        zeros = jax.tree.map(jnp.zeros_like, values)
        state = (jnp.int32(0), values, zeros, zeros, jnp.float32(jnp.inf), jnp.float32(jnp.inf),
                 jnp.bool_(False))
        it, (s, m), _, _, _, loss, done = jax.lax.while_loop(cond, body, state)
        s = s * active[:, None]
        return it, done, s, m, render_sources(scene, obs, s, m), loss

    @eqx.filter_jit
    def render(obs, spectra, morphs):
        return render_sources(None, obs, spectra, morphs)

    return {"fit": fit, "render": render}


@functools.lru_cache(maxsize=64)
def _grid_wcs(height: int, width: int) -> Any:
    """One WCS object per grid shape, shared by every frame and observation of that shape.

    scarlet2 gives each `Frame` a new default WCS, and equinox's jit treats that (non-array) object as
    static: a new one per blend would recompile the fit for every blend.  The model and observed frames
    share the pixel grid, so any tangent-plane WCS of the right shape will do.
    """
    import astropy.wcs

    wcs = astropy.wcs.WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [width // 2 + 1, height // 2 + 1]
    wcs.pixel_shape = (width, height)
    return wcs


def _padded_count(n: int, pad: bool) -> int:
    return max(1, 1 << (n - 1).bit_length()) if pad else max(n, 1)


def scarlet_deblend(image: np.ndarray, variance: np.ndarray, psfs: np.ndarray, peaks: np.ndarray,
                    footprint: np.ndarray | None = None, config: ScarletConfig = ScarletConfig()
                    ) -> ScarletResult:
    """Deblend one blend with scarlet2, configured as DRP's scarlet_lite.

    Parameters
    ----------
    image : `numpy.ndarray` (bands, H, W)
        Background-subtracted image.
    variance : `numpy.ndarray` (bands, H, W) or (bands,)
        Its variance (per pixel, or one value per band).  Pixels with no positive finite variance, or
        whose image value is not finite, get no weight.
    psfs : `numpy.ndarray` (bands, h, w)
        Observed PSF of each band, odd size, each summing to 1.
    peaks : `numpy.ndarray` (n, 2)
        (x, y) pixel positions of the sources, 0-based.
    footprint : `numpy.ndarray` (H, W) of bool, optional
        Pixels of the blend (the fit sees no others, as DRP fits a parent on its footprint); `None`: all.
    config : `ScarletConfig`
        Settings (DRP's defaults).

    Returns
    -------
    result : `ScarletResult`
        Models, re-distributed flux, iterations, convergence and per-source failures.  Never raises for
        a source that cannot be modelled: it is flagged in ``failed``.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be (bands, H, W), not {image.shape}.")
    bands, height, width = image.shape
    variance = np.asarray(variance, dtype=np.float32)
    if variance.ndim == 1:
        variance = np.broadcast_to(variance[:, None, None], image.shape)
    if variance.shape != image.shape:
        raise ValueError(f"variance must be (bands,) or {image.shape}, not {variance.shape}.")
    psfs = np.asarray(psfs, dtype=np.float32)
    if psfs.ndim != 3 or len(psfs) != bands or psfs.shape[1] % 2 == 0 or psfs.shape[2] % 2 == 0:
        raise ValueError(f"psfs must be (bands, h, w) with odd h and w, not {psfs.shape}.")
    peaks = np.asarray(peaks, dtype=np.float64).reshape(-1, 2)
    n = len(peaks)
    footprint = np.ones((height, width), bool) if footprint is None else np.asarray(footprint, bool)
    if footprint.shape != (height, width):
        raise ValueError(f"footprint must be {(height, width)}, not {footprint.shape}.")

    empty = np.zeros((n, bands, height, width), np.float32)
    failed = ~np.all(np.isfinite(peaks), axis=1)
    xy = np.where(np.isfinite(peaks), np.round(peaks), -1).astype(np.int64)
    failed |= (xy[:, 0] < 0) | (xy[:, 0] >= width) | (xy[:, 1] < 0) | (xy[:, 1] >= height)
    good = np.flatnonzero(~failed)
    if len(good) == 0:
        return ScarletResult(empty, empty.copy(), 0, False, np.ones(n, bool))

    usable = np.isfinite(image) & np.isfinite(variance) & (variance > 0)
    weights = np.where(usable & footprint[None], 1.0 / np.where(usable, variance, 1.0), 0.0).astype(np.float32)
    data = np.where(usable, image, 0.0).astype(np.float32)
    # The background RMS of each band (scarlet_lite's noise_rms): the median over the blend's usable pixels.
    band_var = np.array([np.median(variance[b][usable[b]]) if usable[b].any() else np.inf for b in range(bands)])
    if not np.all(np.isfinite(band_var)):
        _log.warning("A band has no usable pixel: the blend is not deblended.")
        return ScarletResult(empty, empty.copy(), 0, False, np.ones(n, bool))
    bg_rms = np.sqrt(band_var).astype(np.float32)

    try:
        result = _fit(data, weights, psfs, xy[good], bg_rms, band_var, config)
    except Exception as error:  # noqa: BLE001 - a failed fit flags the sources, never stops the caller
        _log.warning("scarlet2 fit of a blend with %d sources failed: %s: %s", n, type(error).__name__, error)
        return ScarletResult(empty, empty.copy(), 0, False, np.ones(n, bool))
    iterations, converged, models_good = result

    models = empty
    models[good] = models_good
    bad = ~np.all(np.isfinite(models.reshape(n, -1)), axis=1)
    failed |= bad
    models[failed] = 0.0
    conserved = np.zeros_like(models)
    if config.conserve_flux:
        total = models.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where((total > 0) & footprint[None], np.where(usable, image, 0.0) / total, 0.0)
        conserved = (models * ratio[None]).astype(np.float32)
    return ScarletResult(models, conserved, iterations, converged, failed)


def _fit(data: np.ndarray, weights: np.ndarray, psfs: np.ndarray, xy: np.ndarray, bg_rms: np.ndarray,
         band_var: np.ndarray, config: ScarletConfig) -> tuple[int, bool, np.ndarray]:
    """Initialise and fit the sources at ``xy`` (all on the image); their observed-PSF models."""
    jax, jnp, eqx, scarlet2 = _import_jax()
    funcs = _compiled(config.box_size, config.monotonic)
    bands, height, width = data.shape
    n = len(xy)
    n_pad = _padded_count(n, config.pad_sources)
    centers = np.full((n_pad, 2), [height // 2, width // 2], dtype=np.int32)
    centers[:n] = xy[:, ::-1]
    active = np.zeros(n_pad, np.float32)
    active[:n] = 1.0

    channels = list(range(bands))
    frame = scarlet2.Frame(scarlet2.Box((bands, height, width)), psf=scarlet2.GaussianPSF(config.model_psf_sigma),
                           wcs=_grid_wcs(height, width), channels=channels)
    obs = scarlet2.Observation(data, weights, psf=scarlet2.ArrayPSF(jnp.asarray(psfs)),
                               wcs=_grid_wcs(height, width), channels=channels)
    obs.match(frame)

    # scarlet_lite's chi^2 detection image and its noise; each source starts from it, made symmetric
    # about its peak (which removes most of the neighbours), then masked to the pixels reachable from the
    # peak by a non-increasing path, trimmed at the threshold and normalised (scarlet_lite's sparse
    # initialisation); a source with nothing above the threshold starts as the model PSF.
    detect = np.sum(data / band_var[:, None, None], axis=0).astype(np.float32)
    threshold = config.initial_bg_thresh * float(np.sqrt(np.sum(1.0 / band_var)))
    tables = _ring_tables(config.box_size)
    model_psf = np.asarray(frame.psf())
    morphs = np.zeros((n_pad, height, width), np.float32)
    for k in range(n_pad):
        y, x = centers[k]
        morph = _monotonic_mask(_symmetric(detect, (y, x)), (y, x), config.box_size, tables) if k < n else None
        if morph is not None:
            morph[morph < threshold] = 0.0
        if morph is None or not morph.max() > 0:
            morph = _placed(model_psf, (y, x), (height, width))
        morphs[k] = morph / morph.max()
    # Joint least-squares spectra of the convolved initial morphologies (scarlet_lite's multifit_spectra).
    unit = np.asarray(funcs["render"](obs, jnp.ones((n_pad, bands), jnp.float32), jnp.asarray(morphs)))
    spectra = np.zeros((n_pad, bands), np.float32)
    for b in range(bands):
        a = unit[:n, b].reshape(n, -1).T
        spectra[:n, b] = np.linalg.lstsq(a, data[b].ravel(), rcond=None)[0]
    spectra = np.maximum(spectra, config.floor)
    spectra[n:] = 0.0

    # scarlet2 probes every attribute of a new source for astropy units, which trips numpy's deprecation
    # of dtype=array on JAX arrays: a warning about scarlet2's internals that a user cannot act on.
    with warnings.catch_warnings(), scarlet2.Scene(frame) as scene:
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="scarlet2")
        for k in range(n_pad):
            # Every source spans the frame (centre at the frame's centre): boxes are then the same for
            # every blend of this shape and the compiled fit is reused; the peak enters as data.
            scarlet2.Source(jnp.array([height // 2, width // 2]), jnp.asarray(spectra[k]), jnp.asarray(morphs[k]))
    it, done, _, _, models, _ = funcs["fit"](
        scene, obs, jnp.asarray(spectra), jnp.asarray(morphs), jnp.asarray(centers), jnp.asarray(active),
        # DRP gives adaprox a tenth of the noise RMS as the smallest spectrum step.
        jnp.asarray(bg_rms), jnp.asarray(bg_rms / 10), (jnp.float32(config.morph_step),
                                                     jnp.float32(config.spectrum_step)),
        jnp.int32(config.max_iter), jnp.int32(config.min_iter), jnp.float32(config.e_rel),
        jnp.float32(config.bg_thresh), jnp.float32(config.floor))
    return int(it), bool(done), np.asarray(models, dtype=np.float32)[:n]


def _placed(stamp: np.ndarray, center: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """``stamp`` (odd sides) centred at pixel ``center`` (y, x) of a zero image of ``shape``."""
    out = np.zeros(shape, np.float32)
    hy, hx = stamp.shape[0] // 2, stamp.shape[1] // 2
    y, x = center
    y0, y1, x0, x1 = max(y - hy, 0), min(y + hy + 1, shape[0]), max(x - hx, 0), min(x + hx + 1, shape[1])
    out[y0:y1, x0:x1] = stamp[y0 - y + hy: y1 - y + hy, x0 - x + hx: x1 - x + hx]
    return out / out.max()


def _symmetric(image: np.ndarray, center: tuple[int, int]) -> np.ndarray:
    """Each pixel the smaller of itself and its mirror image through ``center`` (zero where the mirror is
    off the image): scarlet_lite's uncentred symmetry, which removes light that is not the source's."""
    y, x = center
    height, width = image.shape
    yy, xx = np.mgrid[:height, :width]
    my, mx = 2 * y - yy, 2 * x - xx
    inside = (my >= 0) & (my < height) & (mx >= 0) & (mx < width)
    mirror = np.where(inside, image[np.clip(my, 0, height - 1), np.clip(mx, 0, width - 1)], 0.0)
    return np.minimum(image, mirror).astype(np.float32)


def _monotonic_mask(image: np.ndarray, center: tuple[int, int], size: int,
                    tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """The pixels of ``image`` in a ``size`` window about ``center`` that a non-increasing path from the
    centre reaches (scarlet_lite's ``prox_monotonic_mask``); all others zero."""
    half = size // 2
    y, x = center
    padded = np.pad(image, half)
    window = padded[y: y + size, x: x + size].ravel().copy()
    keep = np.zeros(window.size, bool)
    keep[half * size + half] = window[half * size + half] > 0
    for pix, nbs, wts in tables:
        ok = (wts > 0) & keep[nbs] & (window[nbs] >= window[pix][:, None])
        keep[pix] = ok.any(axis=1)
    window[~keep] = 0.0
    out = np.zeros_like(padded)
    out[y: y + size, x: x + size] = window.reshape(size, size)
    return out[half:-half, half:-half]

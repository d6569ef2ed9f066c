"""Joint fit of every galaxy of a parent in the decoder's latent space (maximum a posteriori).

The encoder gives each galaxy a latent code from a stamp that still holds the imperfectly subtracted
light of its neighbours.  Here the codes of all galaxies of a parent are moved together, through the
frozen decoder, to maximise

    log p(data | z_1..z_n) + log p(z_1..z_n)
    = -1/2 sum_pixels (data - sum_k decode(z_k))^2 / variance  -  w/2 sum_k |z_k|^2,

a Gaussian likelihood with the known noise variance and the VAE's standard-normal prior (weight ``w``),
starting from the encoder's codes (as MADNESS does, Biswas et al. 2025, with a flow prior instead).  Unlike
the stamp-by-stamp encoder the fit sees the whole parent at once, so the models must add up to the data
where the galaxies overlap.  Optionally each galaxy also gets a free amplitude per band, with a log-normal
prior: the latent space does not hold every galaxy's exact flux.  Pure torch on arrays; parents are
fitted in batches on padded canvases.

The steps are taken in units of the spread of real galaxies' codes along each latent dimension
(``latent_scale``, stored with the weights): with a small KL weight those spreads range from 0.3 to 4, and
Adam's steps, alike in every coordinate, would otherwise leave the broad directions nearly where the
encoder put them.  Along those directions the likelihood of a faint neighbour next to a bright galaxy is
flat, and the neighbour kept the extra light the encoder gave it (docs/benchmarks.md, the paper set).
"""

from __future__ import annotations

__all__ = ["fit_latents", "estimate_variance", "median_variance", "FIT_STEPS_DEFAULT"]

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

if TYPE_CHECKING:
    import torch

# The pipeline tasks' default number of Adam steps (see docs/benchmarks.md for what it buys and costs).
FIT_STEPS_DEFAULT = 0

# latents (n, latent) -> models (n, bands, s, s) in electrons, differentiable (torch tensors; torch is
# imported when a fit runs, so that the Rubin task's module imports without it)
Decoder = Callable[[Any], Any]


def estimate_variance(image: np.ndarray, footprints: np.ndarray | None, bad: np.ndarray | None
                      ) -> np.ndarray:
    """Per-band noise variance from the pixels outside every footprint (robust: from the NMAD).

    Pixels that are exactly zero in every band (no data, padding) are left out.
    """
    has_data = np.any(image != 0, axis=0)
    if bad is not None:
        has_data &= ~bad
    sky = has_data if footprints is None else has_data & (footprints == 0)
    if sky.sum() < 100:  # too few sky pixels: use them all (an over-estimate where galaxies dominate)
        sky = has_data
    if sky.sum() < 2:
        raise ValueError("No pixels to estimate the noise variance from: pass the variance.")
    values = image[:, sky]
    nmad = 1.4826 * np.median(np.abs(values - np.median(values, axis=1, keepdims=True)), axis=1)
    return np.maximum(nmad, 1e-12) ** 2


def median_variance(variance: np.ndarray, bad: np.ndarray | None = None) -> np.ndarray | None:
    """Per-band median of variance planes (bands, h, w) over good pixels with a finite, positive value;
    `None` when a band has none (the caller then estimates it from the image)."""
    good = np.isfinite(variance) & (variance > 0)
    if bad is not None:
        good &= ~bad[None]
    if not good.reshape(len(variance), -1).any(axis=1).all():
        return None
    return np.array([np.median(v[g]) for v, g in zip(variance, good)], dtype=np.float64)


def _batches(sizes: np.ndarray, counts: np.ndarray, max_pixels: int, max_galaxies: int) -> list[np.ndarray]:
    """Parents grouped by canvas size so that padding wastes little: each batch's padded canvases hold
    at most ``max_pixels`` pixels and ``max_galaxies`` galaxies (a larger parent is a batch alone)."""
    order = np.lexsort((sizes[:, 1], sizes[:, 0]))
    batches, current, height, width, galaxies = [], [], 0, 0, 0
    for p in order:
        h, w = max(height, sizes[p, 0]), max(width, sizes[p, 1])
        if current and ((len(current) + 1) * h * w > max_pixels or galaxies + counts[p] > max_galaxies):
            batches.append(np.array(current))
            current, h, w, galaxies = [], sizes[p, 0], sizes[p, 1], 0
        current.append(p)
        height, width, galaxies = h, w, galaxies + counts[p]
    if current:
        batches.append(np.array(current))
    return batches


def fit_latents(image: np.ndarray, inverse_variance: np.ndarray, bad: np.ndarray | None,
                centers: np.ndarray, labels: np.ndarray, latents: np.ndarray, start: np.ndarray,
                decode: Decoder,
                stamp_size: int, steps: int = 60, learning_rate: float = 0.1, prior_weight: float = 1.0,
                amplitude_sigma: float = 0.0, latent_scale: np.ndarray | None = None,
                device: torch.device | str = "cpu", max_pixels: int = 2_000_000, max_galaxies: int = 512,
                progress: bool = False, footprints: np.ndarray | None = None,
                psf: np.ndarray | None = None, factors: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Fit the latent codes of every parent's galaxies jointly to the image.

    Parameters
    ----------
    image : `numpy.ndarray` (bands, h, w)
        The observed image; each parent's galaxies are fitted to it alone.
    inverse_variance : `numpy.ndarray` (bands,)
        Inverse noise variance per band.
    bad : `numpy.ndarray` (h, w) of `bool`, optional
        Pixels left out of the fit (masked); pixels outside the image are left out too.
    centers : `numpy.ndarray` (n, 2) of `int`
        Stamp centre (x, y) of every galaxy.
    labels : `numpy.ndarray` (n,)
        Parent of every galaxy; galaxies of one parent are fitted together.
    latents : `numpy.ndarray` (n, latent)
        Starting codes (the encoder's).
    start : `numpy.ndarray` (n, bands, s, s)
        The starting models (kept for a parent whose fit diverges), centred on ``centers``.
    decode : callable
        Latent codes to models in electrons, differentiable (the frozen decoder).
    stamp_size : `int`
    steps : `int`
        Adam steps.
    learning_rate : `float`
    prior_weight : `float`
        Weight of the standard-normal prior on the codes.
    amplitude_sigma : `float`
        If > 0, every galaxy also gets a free amplitude per band (a factor on its decoded model), with a
        Gaussian prior of this width on its logarithm.
    latent_scale : `numpy.ndarray` (latent,), optional
        Step scale of every latent dimension: the codes are ``latents + latent_scale * u`` and Adam moves
        ``u`` (the prior stays on the codes).  Unit when not given.
    device : `torch.device` or `str`
    max_pixels, max_galaxies : `int`
        Size of a batch of parents (padded canvas pixels per band, galaxies).
    progress : `bool`
        Show a progress bar over the batches.
    footprints : `numpy.ndarray` (h, w) of `int`, optional
        Parent label of every pixel: pixels of other parents' footprints are left out of each parent's
        fit (all pixels count when not given).
    psf : `numpy.ndarray` (n, bands, p, p), optional
        Each galaxy's PSF images, for a PSF-aware decoder: ``decode(z, psf)``.
    factors : `numpy.ndarray` (n,), optional
        Each galaxy's amplitude factor (weights that divide bright stamps down, `VaeDeblender.encode`):
        ``decode(z, psf, factors)``.

    Returns
    -------
    latents : `numpy.ndarray` (n, latent), float32
    models : `numpy.ndarray` (n, bands, s, s), float32
        Their decoded models, electrons.
    """
    import torch

    n = len(centers)
    fitted = np.asarray(latents, dtype=np.float32).copy()
    bands, height, width = image.shape
    models = np.zeros((n, bands, stamp_size, stamp_size), dtype=np.float32)
    if n == 0 or steps <= 0:
        return fitted, np.asarray(start, dtype=np.float32).copy()
    good = np.ones((height, width), dtype=np.float32) if bad is None else (~bad).astype(np.float32)
    inverse_variance = np.asarray(inverse_variance, dtype=np.float32)[:, None, None]
    half = stamp_size // 2
    scale = torch.ones(fitted.shape[1]) if latent_scale is None else torch.as_tensor(
        np.asarray(latent_scale, dtype=np.float32))
    if scale.shape != (fitted.shape[1],) or not bool(torch.all(scale > 0)):
        raise ValueError(f"latent_scale must hold {fitted.shape[1]} positive values.")
    scale = scale.to(device)
    centers = np.asarray(centers, dtype=np.int64)
    unique, inverse = np.unique(labels, return_inverse=True)
    low = np.full((len(unique), 2), np.iinfo(np.int64).max)
    high = np.full((len(unique), 2), np.iinfo(np.int64).min)
    np.minimum.at(low, inverse, centers - half)
    np.maximum.at(high, inverse, centers - half + stamp_size)
    sizes = (high - low)[:, ::-1]  # (h, w) of every parent's canvas: the union of its stamps
    counts = np.bincount(inverse, minlength=len(unique))
    for batch in tqdm(_batches(sizes, counts, max_pixels, max_galaxies), desc="fit", unit="batch",
                      disable=not progress):
        h, w = sizes[batch].max(axis=0)
        data = np.zeros((len(batch), bands, h, w), dtype=np.float32)
        inv_var = np.zeros_like(data)
        for k, p in enumerate(batch):
            x0, y0 = low[p]
            xs = slice(max(x0, 0), min(x0 + sizes[p, 1], width))
            ys = slice(max(y0, 0), min(y0 + sizes[p, 0], height))
            cx = slice(xs.start - x0, xs.stop - x0)
            cy = slice(ys.start - y0, ys.stop - y0)
            data[k, :, cy, cx] = image[:, ys, xs]
            weight = good[ys, xs]
            if footprints is not None:
                weight = weight * np.isin(footprints[ys, xs], (0, unique[p]))
            inv_var[k, :, cy, cx] = weight * inverse_variance
        slot = np.full(len(unique), -1)
        slot[batch] = np.arange(len(batch))
        members = np.flatnonzero(np.isin(inverse, batch))
        offsets = centers[members] - half - low[inverse[members]]
        base = ((slot[inverse[members]] * bands) * h + offsets[:, 1]) * w + offsets[:, 0]
        within = ((np.arange(bands)[:, None, None] * h + np.arange(stamp_size)[None, :, None]) * w
                  + np.arange(stamp_size)[None, None, :])
        index = torch.from_numpy((base[:, None, None, None] + within[None]).reshape(-1)).to(device)
        data_t = torch.from_numpy(data).to(device).reshape(-1)
        inv_var_t = torch.from_numpy(inv_var).to(device).reshape(-1)
        z_start = torch.from_numpy(fitted[members]).to(device)
        step = torch.zeros_like(z_start, requires_grad=True)
        log_amplitude = torch.zeros((len(members), bands, 1, 1), device=device, requires_grad=True)
        free = amplitude_sigma > 0
        optimizer = torch.optim.Adam([step, log_amplitude] if free else [step], lr=learning_rate)

        psf_t = None if psf is None else torch.from_numpy(np.ascontiguousarray(psf[members],
                                                                                dtype=np.float32)).to(device)

        factors_t = None if factors is None else torch.from_numpy(
            np.asarray(factors, dtype=np.float32)[members]).to(device)

        def render(z: torch.Tensor) -> torch.Tensor:
            if factors_t is not None:
                model = decode(z, psf_t, factors_t)
            else:
                model = decode(z) if psf_t is None else decode(z, psf_t)
            return model * torch.exp(log_amplitude) if free else model

        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            z = z_start + scale * step
            canvas = torch.zeros_like(data_t).index_add(0, index, render(z).reshape(-1))
            loss = 0.5 * ((data_t - canvas) ** 2 * inv_var_t).sum() + 0.5 * prior_weight * (z**2).sum()
            if free:
                loss = loss + 0.5 * ((log_amplitude / amplitude_sigma) ** 2).sum()
            if not torch.isfinite(loss):
                break
            loss.backward()
            optimizer.step()
        z = (z_start + scale * step).detach()
        if torch.isfinite(loss) and torch.isfinite(z).all():
            fitted[members] = z.cpu().numpy()
            with torch.no_grad():
                models[members] = render(z).cpu().numpy()
        else:  # a diverged fit keeps the encoder's models
            models[members] = start[members]
    return fitted, models

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

A fit that cannot steal (issue 10).  The same flat directions let a faint galaxy next to a bright one take
the light its neighbour's imperfect model leaves, or the neighbour's own light where the two overlap: the
summed chi-square falls a little while the faint galaxy's flux doubles.  Two guards, both on by default:

- a flux prior: each galaxy's model flux in every band is held, with a Gaussian prior, around the
  encoder's flux, with a width of ``flux_prior`` times the galaxy's own flux noise (`flux_noise`: the
  noise of a flux measured with its own profile, from the variance of the pixels its model covers) and a
  fraction ``flux_fraction`` of the encoder's flux, in quadrature.  A faint galaxy's width is its noise:
  its flux cannot wander far from what the encoder saw in its own pixels; a bright one's is
  ``flux_fraction`` of its flux, many times its noise, and its pixels still correct the encoder's flux
  errors (several per cent on bright galaxies, far above their noise; a prior of the noise alone would
  halve those corrections);
- an acceptance test at the end (`accept_fit`): every galaxy's share of the chi-square (`chi2_shares`) is
  compared with its share at the encoder's start; a galaxy whose share got worse, or whose light rose in
  the pixels where a neighbour whose share got worse held the light, gets its encoder model back, until
  no galaxy's share is worse than at the start.
"""

from __future__ import annotations

__all__ = ["fit_latents", "estimate_variance", "median_variance", "flux_noise", "chi2_shares",
           "accept_fit", "FIT_STEPS_DEFAULT", "SIGNIFICANT_SIGMA"]

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

if TYPE_CHECKING:
    import torch

# The pipeline tasks' default number of Adam steps (see docs/benchmarks.md for what it buys and costs).
FIT_STEPS_DEFAULT = 0

# A model pixel counts towards its galaxy's share of the chi-square where it is above this many times the
# pixel's noise sigma: the pixels the galaxy can explain, not the far wings every decoded model has.
SIGNIFICANT_SIGMA = 0.1
# Relative slack of the acceptance test: the shares of the start and of a configuration that reverts every
# galaxy around one are the same sums in another order (GPU atomics), not exactly the same floats.
SHARE_TOLERANCE = 1e-4

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


def flux_noise(models: torch.Tensor, inverse_variance: torch.Tensor) -> torch.Tensor:
    """Every galaxy's flux noise in every band: that of a flux fitted with its own profile.

    ``sigma^2 = N_eff / <1/var>``, with ``N_eff = (sum |m|)^2 / sum m^2`` the number of pixels the profile
    covers and ``<1/var>`` the inverse variance averaged over them (weighted by ``|m|``): the sum of the
    variance over the galaxy's model-weighted pixels.  A model that is zero everywhere covers the whole
    stamp; a galaxy whose pixels are all masked has an infinite noise (no prior).

    Parameters
    ----------
    models : `torch.Tensor` (n, bands, s, s)
        The models, electrons.
    inverse_variance : `torch.Tensor` (n, bands, s, s)
        Inverse variance of every model pixel (0 where masked or outside the image).

    Returns
    -------
    sigma : `torch.Tensor` (n, bands)
        Flux noise, electrons (``inf`` where no pixel has data).
    """
    import torch

    light = models.abs()
    total = light.sum(dim=(2, 3))
    square = (models**2).sum(dim=(2, 3))
    tiny = torch.finfo(models.dtype).tiny
    n_eff = torch.where(square > 0, total**2 / square.clamp_min(tiny),
                        torch.full_like(total, models.shape[-1] * models.shape[-2]))
    mean_ivar = torch.where(total > 0, (light * inverse_variance).sum(dim=(2, 3)) / total.clamp_min(tiny),
                            inverse_variance.mean(dim=(2, 3)))
    return torch.where(mean_ivar > 0, torch.sqrt(n_eff / mean_ivar.clamp_min(tiny)),
                       torch.full_like(total, float("inf")))


def chi2_shares(models: torch.Tensor, data: torch.Tensor, inverse_variance: torch.Tensor,
                index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every galaxy's share of its parent's chi-square, and where it holds the light.

    The share of galaxy k is ``sum_p f_k(p) (data - model)^2(p) / var(p)`` over the pixels where its model
    is significant (above `SIGNIFICANT_SIGMA` times the noise), with ``f_k(p)`` its fraction of the summed
    positive models in pixel p: the chi-square each pixel has, split among the galaxies that explain it.

    Parameters
    ----------
    models : `torch.Tensor` (n, bands, s, s)
        The models of every galaxy of the batch, electrons.
    data, inverse_variance : `torch.Tensor` (canvas pixels,)
        The batch's padded canvases, flattened.
    index : `torch.Tensor` (n * bands * s * s,)
        Canvas pixel of every model pixel.

    Returns
    -------
    shares : `torch.Tensor` (n,)
        Chi-square shares, summed over bands.
    holds : `torch.Tensor` (n, bands, s, s) of `bool`
        The significant pixels where the galaxy holds more than half of the summed positive models.
    """
    import torch

    flat = models.reshape(-1)
    canvas = torch.zeros_like(data).index_add(0, index, flat)
    positive = models.clamp_min(0)
    summed = torch.zeros_like(data).index_add(0, index, positive.reshape(-1))[index].reshape(models.shape)
    chi2 = ((data - canvas) ** 2 * inverse_variance)[index].reshape(models.shape)
    ivar = inverse_variance[index].reshape(models.shape)
    significant = (positive**2 * ivar > SIGNIFICANT_SIGMA**2) & (summed > 0)
    fraction = torch.where(significant, positive / summed.clamp_min(torch.finfo(models.dtype).tiny), 0.0)
    return (fraction * chi2).sum(dim=(1, 2, 3)), significant & (fraction > 0.5)


def _light_in(models: np.ndarray, masks: np.ndarray, offsets: np.ndarray, groups: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """``light[k, j]``: the sum of galaxy k's model over the pixels of ``masks[j]``; ``touches[k, j]``:
    whether k's model is non-zero on any of them (galaxies of one group, whose stamps overlap)."""
    n, _, size, _ = models.shape
    light = np.zeros((n, n))
    touches = np.zeros((n, n), dtype=bool)
    for j in range(n):
        for k in np.flatnonzero(groups == groups[j]):
            dx, dy = offsets[k] - offsets[j]
            if k == j or abs(dx) >= size or abs(dy) >= size:
                continue
            # j's stamp pixel (y, x) is k's pixel (y - dy, x - dx)
            ys, xs = slice(max(dy, 0), size + min(dy, 0)), slice(max(dx, 0), size + min(dx, 0))
            ks, kx = slice(max(-dy, 0), size + min(-dy, 0)), slice(max(-dx, 0), size + min(-dx, 0))
            mask = masks[j][:, ys, xs]
            part = models[k][:, ks, kx]
            light[k, j] = float(part[mask].sum(dtype=np.float64))
            touches[k, j] = bool(np.any(part[mask] != 0))
    return light, touches


def accept_fit(fitted: torch.Tensor, start: torch.Tensor, data: torch.Tensor, inverse_variance: torch.Tensor,
               index: torch.Tensor, offsets: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Which galaxies keep their fitted model: the fit may lower every galaxy's share of the chi-square
    (`chi2_shares`) or leave it alone, never raise it.

    Starting with every fitted model kept, each round finds the galaxies whose share is worse than at the
    start (all encoder models) and gives the encoder model back to: such a galaxy itself, if it still has
    its fitted model; every galaxy whose light rose in the pixels where that galaxy held the light at the
    start (it took its neighbour's light); and, for a galaxy already given back whose share is still worse
    with no such taker, every galaxy whose model touches its pixels.  The rounds stop when no kept model
    is to be given back: then no galaxy's share is worse than at the start (with every model around a
    galaxy given back, its share is that of the start).

    Parameters
    ----------
    fitted, start : `torch.Tensor` (n, bands, s, s)
        The fitted and the starting (encoder's) models of every galaxy of the batch.
    data, inverse_variance : `torch.Tensor` (canvas pixels,)
        The batch's padded canvases, flattened.
    index : `torch.Tensor` (n * bands * s * s,)
        Canvas pixel of every model pixel.
    offsets : `numpy.ndarray` (n, 2) of `int`
        Every stamp's (x, y) lower-left corner on its canvas.
    groups : `numpy.ndarray` (n,)
        Canvas (parent) of every galaxy.

    Returns
    -------
    keep : `numpy.ndarray` (n,) of `bool`
        The galaxies that keep their fitted model.
    """
    import torch

    with torch.no_grad():
        share_start, holds = chi2_shares(start, data, inverse_variance, index)
        holds = holds.cpu().numpy()
        fitted_np, start_np = fitted.cpu().numpy(), start.cpu().numpy()
        light_fit, touches_fit = _light_in(fitted_np, holds, offsets, groups)
        light_start, touches_start = _light_in(start_np, holds, offsets, groups)
        took = light_fit > light_start  # took[k, j]: k's light rose where j held the light
        touches = touches_fit | touches_start
        limit = share_start * (1 + SHARE_TOLERANCE) + SHARE_TOLERANCE
        keep = np.ones(len(fitted), dtype=bool)
        while keep.any():
            kept = torch.from_numpy(keep).to(fitted.device)[:, None, None, None]
            current = torch.where(kept, fitted, start)
            share, _ = chi2_shares(current, data, inverse_variance, index)
            worse = (share > limit).cpu().numpy()
            back = worse & keep
            for j in np.flatnonzero(worse):
                takers = keep & took[:, j]
                back |= takers
                if not keep[j] and not takers.any():
                    back |= keep & touches[:, j]
            if not back.any():
                break
            keep &= ~back
    return keep


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
                psf: np.ndarray | None = None, factors: np.ndarray | None = None,
                flux_prior: float = 0.0, flux_fraction: float = 0.03, accept: bool = False
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
    flux_prior : `float`
        If > 0, a Gaussian prior on every galaxy's model flux in every band around its flux in ``start``,
        of this many widths ``hypot(flux_noise, flux_fraction * start flux)`` (`flux_noise` of its
        ``start`` model).
    flux_fraction : `float`
        The part of the flux prior's width proportional to the start flux.
    accept : `bool`
        Give the ``start`` model (and code) back to every galaxy the acceptance test rejects
        (`accept_fit`): then the fit lowers every galaxy's share of its parent's chi-square or leaves it
        alone.

    Returns
    -------
    latents : `numpy.ndarray` (n, latent), float32
    models : `numpy.ndarray` (n, bands, s, s), float32
        Their decoded models, electrons (``start`` for the galaxies the acceptance test rejects).
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
        start_t = torch.from_numpy(np.ascontiguousarray(start[members], dtype=np.float32)).to(device)
        if flux_prior > 0:
            # The encoder's flux, and how far the galaxy's own pixels (its flux noise) and the encoder's
            # relative accuracy let it move.
            flux_start = start_t.sum(dim=(2, 3))
            flux_sigma = flux_prior * torch.hypot(
                flux_noise(start_t, inv_var_t[index].reshape(start_t.shape)), flux_fraction * flux_start)
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
            model = render(z)
            canvas = torch.zeros_like(data_t).index_add(0, index, model.reshape(-1))
            loss = 0.5 * ((data_t - canvas) ** 2 * inv_var_t).sum() + 0.5 * prior_weight * (z**2).sum()
            if free:
                loss = loss + 0.5 * ((log_amplitude / amplitude_sigma) ** 2).sum()
            if flux_prior > 0:
                loss = loss + 0.5 * (((model.sum(dim=(2, 3)) - flux_start) / flux_sigma) ** 2).sum()
            if not torch.isfinite(loss):
                break
            loss.backward()
            optimizer.step()
        z = (z_start + scale * step).detach()
        if torch.isfinite(loss) and torch.isfinite(z).all():
            with torch.no_grad():
                model = render(z)
            if accept:
                keep = accept_fit(model, start_t, data_t, inv_var_t, index, offsets, slot[inverse[members]])
                keep_t = torch.from_numpy(keep).to(device)
                z = torch.where(keep_t[:, None], z, z_start)
                model = torch.where(keep_t[:, None, None, None], model, start_t)
            fitted[members] = z.cpu().numpy()
            models[members] = model.cpu().numpy()
        else:  # a diverged fit keeps the encoder's models
            models[members] = start[members]
    return fitted, models

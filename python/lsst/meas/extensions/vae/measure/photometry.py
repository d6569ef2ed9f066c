"""Fluxes, magnitudes, signal-to-noise ratio and blendedness, as defined in docs/method.md.

- SNR of galaxy k in a band: ``sqrt(sum(S_k**2 / variance))`` over pixels, S_k its noiseless image;
  over all bands, the quadrature sum of the per-band values.
- Blendedness of galaxy k in a band: ``1 - <S_k, S_k> / <S_all, S_k>``, S_all the noiseless sum of every
  galaxy (0 for an isolated galaxy, towards 1 when neighbours dominate its pixels).
"""

from __future__ import annotations

__all__ = ["snr", "blendedness", "flux_to_mag"]

import numpy as np


def snr(images: np.ndarray, variance: np.ndarray | float) -> np.ndarray:
    """Per-band SNR of noiseless images.

    Parameters
    ----------
    images : `numpy.ndarray`, shape (..., bands, h, w)
        Noiseless images.
    variance : `numpy.ndarray` or `float`
        Noise variance, broadcastable to ``images`` (e.g. shape (bands, 1, 1) for a constant per band).

    Returns
    -------
    snr : `numpy.ndarray`, shape (..., bands)
    """
    return np.sqrt(np.sum(np.asarray(images, dtype=np.float64) ** 2 / variance, axis=(-2, -1)))


def blendedness(images: np.ndarray) -> np.ndarray:
    """Blendedness of each of a set of noiseless images of one scene.

    Parameters
    ----------
    images : `numpy.ndarray`, shape (n, ..., h, w)
        Noiseless isolated images of the n galaxies of one scene, on the same pixel grid.

    Returns
    -------
    blendedness : `numpy.ndarray`, shape (n, ...)
        NaN where a galaxy has no flux in the stamp.
    """
    images = np.asarray(images, dtype=np.float64)
    total = images.sum(axis=0)
    self_product = np.sum(images * images, axis=(-2, -1))
    cross = np.sum(total[None] * images, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(cross > 0, 1.0 - self_product / cross, np.nan)


def flux_to_mag(flux: np.ndarray, zeropoint: np.ndarray | float) -> np.ndarray:
    """AB magnitude ``zeropoint - 2.5 log10(flux)``; NaN for non-positive flux."""
    flux = np.asarray(flux, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, zeropoint - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)

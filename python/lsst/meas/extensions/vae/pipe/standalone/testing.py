"""Test helpers of the standalone pipeline: small synthetic scenes, a numpy stamp model and tiny random
network weights, so that tests need neither the shipped weights nor GalSim patches."""

from __future__ import annotations

__all__ = ["GaussianStampModel", "gaussian_psf", "synthetic_coadds", "make_test_weights", "LSST_BANDS"]

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .coadd import Coadd

LSST_BANDS = ("u", "g", "r", "i", "z", "y")


class GaussianStampModel:
    """A stand-in for `VaeDeblender`: a round Gaussian (``sigma`` pixels) at the stamp centre whose peak
    is the stamp's central pixel in each band.

    Parameters
    ----------
    bands : sequence of `str`
    stamp_size : `int`
    sigma : `float`
    fail_above : `float`, optional
        Raise `ValueError` when a stamp's central pixel exceeds this in any band (to exercise failure
        handling).
    nan_above : `float`, optional
        Return NaN models for stamps whose central pixel exceeds this in any band.
    """

    def __init__(self, bands: Sequence[str] = LSST_BANDS, stamp_size: int = 31, sigma: float = 2.0,
                 fail_above: float | None = None, nan_above: float | None = None) -> None:
        self.bands = tuple(bands)
        self.stamp_size = stamp_size
        self.metadata = {"sha256": "gaussian-test-model"}
        grid = np.arange(stamp_size) - stamp_size // 2
        self.profile = np.exp(-(grid[None, :] ** 2 + grid[:, None] ** 2) / (2 * sigma**2)).astype(np.float32)
        self.fail_above = fail_above
        self.nan_above = nan_above
        self.calls = 0

    def __call__(self, stamps: np.ndarray, neighbours: np.ndarray, n_samples: int = 0
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        self.calls += 1
        c = self.stamp_size // 2
        center = stamps[:, :, c, c].max(axis=1)
        if self.fail_above is not None and np.any(center > self.fail_above):
            raise ValueError("a stamp is too bright for this model")
        peak = np.clip(stamps[:, :, c, c], 0, None)
        models = peak[:, :, None, None] * self.profile[None, None]
        if self.nan_above is not None:
            models[center > self.nan_above] = np.nan
        flux_std = np.zeros(peak.shape, dtype=np.float32) if n_samples else None
        return models.astype(np.float32), flux_std


def gaussian_psf(sigma: float = 1.5, size: int = 15) -> np.ndarray:
    """A unit-sum round Gaussian PSF image."""
    grid = np.arange(size) - size // 2
    psf = np.exp(-(grid[None, :] ** 2 + grid[:, None] ** 2) / (2 * sigma**2))
    return psf / psf.sum()


def synthetic_coadds(sources: Sequence[tuple[float, float, float, float]], shape: tuple[int, int] = (96, 96),
                     bands: Sequence[str] = LSST_BANDS, noise: float = 1.0, seed: int = 0,
                     xy0: tuple[int, int] = (0, 0), zeropoint: float = 28.0) -> list[Coadd]:
    """Coadds of round Gaussian galaxies with white noise.

    Parameters
    ----------
    sources : sequence of (x, y, flux, sigma)
        Positions in patch pixels (``xy0`` included), flux in electrons in every band, size in pixels.
    shape : `tuple` [`int`, `int`]
        (h, w).
    bands : sequence of `str`
    noise : `float`
        Noise sigma per pixel.
    seed : `int`
    xy0 : `tuple` [`int`, `int`]
    zeropoint : `float`
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    truth = np.zeros(shape)
    for x, y, flux, sigma in sources:
        truth += flux / (2 * np.pi * sigma**2) * np.exp(-((xx + xy0[0] - x) ** 2 + (yy + xy0[1] - y) ** 2)
                                                         / (2 * sigma**2))
    coadds = []
    for band in bands:
        image = truth + rng.normal(0.0, noise, shape)
        coadds.append(Coadd(image=image, variance=np.full(shape, noise**2),
                            mask=np.zeros(shape, dtype=np.int32), psf=gaussian_psf(),
                            bbox=(xy0[0], xy0[1], xy0[0] + w, xy0[1] + h), band=band, zeropoint=zeropoint,
                            pixel_scale=0.2))
    return coadds


def make_test_weights(path: str | Path, bands: Sequence[str] = LSST_BANDS, stamp_size: int = 31,
                      seed: int = 0) -> Path:
    """Write a tiny randomly initialised weights bundle (same format as the shipped weights)."""
    import torch

    from ...model.networks import VAE, Deblender, NetworkConfig
    from ...model.normalization import Normalization
    from ...model.weights import save_bundle

    torch.manual_seed(seed)
    config = NetworkConfig(bands=tuple(bands), stamp_size=stamp_size, filters=(4, 8), dense=16, latent=4)
    vae = VAE(config)
    deblender = Deblender(config)
    deblender.init_from_vae(vae)
    norm = Normalization.asinh(np.full(len(bands), 10.0))
    return save_bundle(path, vae.eval(), deblender.eval(), norm, likelihood="normalized",
                       extra={"purpose": "tests only: random weights"})

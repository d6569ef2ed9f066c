"""Test helpers of the pipelines: small scenes of simulated galaxies placed where a test needs them, and a
wrapper that injects faults into a real stamp model (to exercise failure handling around it).

The scenes are rendered as `lsst.meas.extensions.vae.sim.patch.make_patch` renders a patch (galaxies of
the simulation's population, drawn by GalSim with the survey's PSF, full-depth sky noise, electrons), but
at chosen positions, so that a test can rely on which galaxies are isolated and which are blended.
"""

from __future__ import annotations

__all__ = ["simulated_coadds", "FaultyModel", "gaussian_psf", "LSST_BANDS"]

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.table import Table

from .coadd import Coadd

LSST_BANDS = ("u", "g", "r", "i", "z", "y")


def gaussian_psf(sigma: float = 1.5, size: int = 15) -> np.ndarray:
    """A unit-sum round Gaussian PSF image."""
    grid = np.arange(size) - size // 2
    psf = np.exp(-(grid[None, :] ** 2 + grid[:, None] ** 2) / (2 * sigma**2))
    return psf / psf.sum()


def simulated_coadds(positions: Sequence[tuple[float, float]], shape: tuple[int, int] = (128, 128), *,
                     xy0: tuple[int, int] = (0, 0), seed: int = 0,
                     mag_range: tuple[float, float] = (20.5, 22.5), survey: str = "lsst",
                     psf_size: int = 41) -> tuple[list[Coadd], Table]:
    """Coadds of simulated galaxies at the given positions, with the truth.

    Parameters
    ----------
    positions : sequence of (x, y)
        Galaxy centres in patch pixels (``xy0`` included; pixel centres at integers).
    shape : `tuple` [`int`, `int`]
        (h, w) of the coadds.
    xy0 : `tuple` [`int`, `int`]
        Patch position of the first pixel.
    seed : `int`
        Seed of the galaxies (`~lsst.meas.extensions.vae.sim.catalog.generate_catalog`, ``test`` split)
        and of the noise.
    mag_range : `tuple` [`float`, `float`]
        r-band magnitude range of the galaxies.
    survey : `str`
        A survey whose bands share one pixel grid (``lsst``).
    psf_size : `int`
        Side of the PSF images.

    Returns
    -------
    coadds : `list` [`Coadd`]
        One per band, in survey order.
    truth : `astropy.table.Table`
        Per galaxy (in the order of ``positions``): ``x``, ``y`` (patch pixels), ``flux_<band>``
        (electrons), ``mag_r``, ``hlr`` (arcsec), and ``g1``, ``g2``, ``hsm_sigma`` (HSM on the noiseless,
        isolated r image).
    """
    from ...measure.shape import hsm_shape
    from ...sim.catalog import generate_catalog
    from ...sim.render import StampRenderer
    from ...surveys import get_survey

    sky = get_survey(survey)
    scales = {b.pixel_scale for b in sky.bands}
    if len(scales) != 1:
        raise ValueError(f"Survey {survey!r} has bands on several pixel grids.")
    scale = scales.pop()
    h, w = shape
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    n = len(positions)
    galaxies = generate_catalog(max(n, 1), seed, split="test", mag_min=mag_range[0],
                                mag_max=mag_range[1])[:n]
    images = np.zeros((len(sky.bands), h, w), dtype=np.float32)
    ref = sky.band_names.index("r")
    shapes = np.full((n, 3), np.nan)
    max_fwhm = max(b.psf_fwhm for b in sky.bands)
    renderers: dict[int, StampRenderer] = {}
    for g in range(n):
        one = galaxies[g]
        extent = 6.0 * max(one.disk_hlr[0], one.bulge_hlr[0]) + 2.0 * max_fwhm  # arcsec
        size = int(min(max(2 * math.ceil(extent / scale) + 1, 25), 257))
        renderer = renderers.setdefault(size, StampRenderer(sky, size))
        px, py = positions[g, 0] - xy0[0], positions[g, 1] - xy0[1]
        ix, iy = int(round(px)), int(round(py))
        stamp = renderer.render(one, np.array([(px - ix) * scale]), np.array([(py - iy) * scale]))[0]
        shape_r = hsm_shape(stamp[ref], center=(px - ix + size // 2, py - iy + size // 2))
        shapes[g] = (shape_r.g1, shape_r.g2, shape_r.sigma)
        x0, y0 = ix - size // 2, iy - size // 2
        sx0, sy0 = max(-x0, 0), max(-y0, 0)
        sx1, sy1 = min(w - x0, size), min(h - y0, size)
        if sx0 < sx1 and sy0 < sy1:
            images[:, y0 + sy0:y0 + sy1, x0 + sx0:x0 + sx1] += stamp[:, sy0:sy1, sx0:sx1]

    rng = np.random.default_rng([seed, 104729])
    truth = Table()
    truth["x"], truth["y"] = positions[:, 0], positions[:, 1]
    fluxes = StampRenderer(sky, 25).band_fluxes(galaxies) if n else np.zeros((0, len(sky.bands)))
    for b, band in enumerate(sky.bands):
        truth[f"flux_{band.name}"] = fluxes[:, b]
    truth["mag_r"] = galaxies.band_mag("r") if n else np.zeros(0)
    truth["hlr"] = galaxies.hlr if n else np.zeros(0)
    truth["g1"], truth["g2"], truth["hsm_sigma"] = shapes[:, 0], shapes[:, 1], shapes[:, 2]

    coadds = []
    for b, band in enumerate(sky.bands):
        variance = band.sky_level
        noise = rng.standard_normal((h, w), dtype=np.float32) * np.float32(math.sqrt(variance))
        coadds.append(Coadd(image=images[b] + noise, variance=np.full((h, w), variance, dtype=np.float32),
                            mask=np.zeros((h, w), dtype=np.int32), psf=band.psf_image(psf_size),
                            bbox=(xy0[0], xy0[1], xy0[0] + w, xy0[1] + h), band=band.name,
                            zeropoint=band.magnitude_zeropoint, pixel_scale=band.pixel_scale))
    return coadds, truth


class FaultyModel:
    """A real stamp model (e.g. `VaeDeblender`) that fails on chosen stamps and delegates the rest.

    A stamp is chosen when a pixel within ``radius`` pixels of its centre exceeds ``above`` in any band
    (e.g. a spike added to the image at one galaxy).  Every call goes to the wrapped model; then, if
    ``mode`` is ``raise``, a chosen stamp in the batch raises `ValueError`; if ``nan``, the models of the
    chosen stamps are replaced by NaN.  The learned refinement's steps (``refine``) fail alike; ``encode``
    is passed through.

    Parameters
    ----------
    model : callable
        The real model, with ``bands`` and ``stamp_size``.
    above : `float`
        Pixel value that marks a stamp.
    mode : `str`
        ``raise`` or ``nan``.
    radius : `int`
        Half side of the central box searched (covers the centroid refinement's shift).
    """

    def __init__(self, model: Any, above: float, mode: str = "raise", radius: int = 3) -> None:
        if mode not in ("raise", "nan"):
            raise ValueError(f"Unknown mode {mode!r}.")
        self.model = model
        self.above = above
        self.mode = mode
        self.radius = radius
        self.calls = 0
        self.chosen = 0

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.model.bands)

    @property
    def stamp_size(self) -> int:
        return int(self.model.stamp_size)

    @property
    def metadata(self) -> dict:
        return getattr(self.model, "metadata", {})

    @property
    def conditioned(self) -> bool:
        """Whether the real model takes each stamp's PSF and variance (they are passed through)."""
        return bool(getattr(self.model, "conditioned", False))

    def _chosen(self, stamps: np.ndarray) -> np.ndarray:
        """Which stamps are chosen; raises in ``raise`` mode when any is."""
        self.calls += 1
        c, r = self.stamp_size // 2, self.radius
        central = stamps[:, :, c - r:c + r + 1, c - r:c + r + 1].reshape(len(stamps), -1)
        chosen = (central > self.above).any(axis=1) if len(stamps) else np.zeros(0, dtype=bool)
        self.chosen += int(chosen.sum())
        if self.mode == "raise" and chosen.any():
            raise ValueError(f"{int(chosen.sum())} stamps are too bright for this model")
        return chosen

    def _spoiled(self, models: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        if self.mode == "nan" and chosen.any():
            models = models.copy()
            models[chosen] = np.nan
        return models

    def __call__(self, stamps: np.ndarray, neighbours: np.ndarray, n_samples: int = 0, **kwargs: Any
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        chosen = self._chosen(stamps)
        models, flux_std = self.model(stamps, neighbours, n_samples, **kwargs)
        return self._spoiled(models, chosen), flux_std

    @property
    def refiner(self) -> Any:
        """The real model's learned refinement network."""
        return self.model.refiner

    def encode(self, stamps: np.ndarray, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """The real model's codes (the learned refinement starts from them)."""
        return self.model.encode(stamps, *args, **kwargs)

    def refine(self, stamps: np.ndarray, *args: Any, **kwargs: Any
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The real model's refinement step, failing on the chosen stamps like `__call__`."""
        chosen = self._chosen(stamps)
        codes, log_amplitude, models = self.model.refine(stamps, *args, **kwargs)
        return codes, log_amplitude, self._spoiled(models, chosen)

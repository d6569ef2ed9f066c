"""Whole simulated coadd patches: per band image, variance, mask and PSF, with the truth catalogue.

Galaxies are placed uniformly at the LSST 10-year density of the generator's population (galaxy counts
of `catalog.cumulative_counts`, r <= ``mag_max``), each rendered alone by `StampRenderer` in a stamp
sized to its light and added to the image; then background noise at full depth is added.  Every band
covers the same sky at its own pixel scale (Euclid VIS at 0.1 arcsec has twice LSST's pixels per side).

Truth per galaxy: position (reference-band pixels, 0-based, x along columns), per-band flux (electrons)
and AB magnitude, shape from HSM on its noiseless isolated r image, SNR per band and over all bands, and
blendedness in r against the noiseless patch.  A patch is a pure function of (config, seed).
"""

from __future__ import annotations

__all__ = ["PatchConfig", "PatchBand", "Patch", "make_patch", "write_patch", "read_patch", "MASK_PLANES"]

import dataclasses
import json
import math
from pathlib import Path

import h5py
import numpy as np
from astropy.table import Table
from tqdm import tqdm

from ..geometry import overlap_slices
from ..measure.photometry import snr as snr_of
from ..measure.shape import hsm_shape
from ..surveys import Survey, get_survey
from .blend import GalaxySource, GeneratedGalaxies
from .catalog import cumulative_counts, galaxy_fraction_in_range, split_ident_offset
from .render import StampRenderer

# Mask bits, named as in afw's default mask planes.
MASK_PLANES = {"BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5, "NO_DATA": 8}

_STAMP_SIZES = (25, 33, 49, 65, 97, 129, 193, 257)


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    """How a patch is made.

    Attributes
    ----------
    survey, psf_model : `str`
        See `get_survey`.
    size : `int`
        Side of the patch in reference-band (LSST, 0.2 arcsec) pixels.
    mag_min, mag_max : `float`
        r-band magnitude range of the galaxies.
    density_scale : `float`
        Multiplies the galaxy density (1 = LSST 10-year counts).
    psf_size : `int`
        Side of the PSF images, pixels (odd).
    reference_band : `str`
        Band of the truth shapes, blendedness and reference pixel grid.
    """

    survey: str = "lsst"
    psf_model: str = "paper"
    size: int = 1000
    mag_min: float = 18.0
    mag_max: float = 27.5
    density_scale: float = 1.0
    psf_size: int = 41
    reference_band: str = "r"

    def get_survey(self) -> Survey:
        return get_survey(self.survey, self.psf_model)

    @property
    def reference_scale(self) -> float:
        return self.get_survey().band(self.reference_band).pixel_scale

    @property
    def area_arcmin2(self) -> float:
        return (self.size * self.reference_scale / 60.0) ** 2

    def expected_galaxies(self) -> float:
        """Mean number of galaxies in the patch."""
        i_lo, i_hi = self.mag_min - 1.0, self.mag_max + 1.5
        in_range = galaxy_fraction_in_range(self.mag_min, self.mag_max)
        return (cumulative_counts(i_hi) - cumulative_counts(i_lo)) * in_range * self.area_arcmin2 \
            * self.density_scale


@dataclasses.dataclass
class PatchBand:
    """One band of a patch (arrays in electrons, background subtracted)."""

    name: str
    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: np.ndarray
    pixel_scale: float
    zeropoint: float  # AB magnitude of one electron


@dataclasses.dataclass
class Patch:
    """A simulated coadd patch: bands in survey order and the truth catalogue."""

    config: PatchConfig
    seed: int
    bands: list[PatchBand]
    truth: Table

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    def band(self, name: str) -> PatchBand:
        return self.bands[self.band_names.index(name)]


def _stamp_size(extent_pixels: float) -> int:
    for size in _STAMP_SIZES:
        if size >= 2 * extent_pixels + 1:
            return size
    return _STAMP_SIZES[-1]


def _add_stamp(image: np.ndarray, stamp: np.ndarray, x0: int, y0: int) -> None:
    """Add ``stamp`` to ``image`` with its lower-left pixel at (x0, y0), clipped to the image."""
    in_image, in_stamp = overlap_slices(image.shape, stamp.shape, x0, y0)
    image[in_image] += stamp[in_stamp]


def make_patch(config: PatchConfig, seed: int, source: GalaxySource | None = None,
               progress: bool = True) -> Patch:
    """Simulate one patch.

    Parameters
    ----------
    config : `PatchConfig`
    seed : `int`
    source : `GalaxySource`, optional
        Galaxies (the built-in generator by default).
    progress : `bool`
        Show a progress bar over galaxies.
    """
    survey = config.get_survey()
    source = source or GeneratedGalaxies()
    rng = np.random.default_rng([seed, 7919])
    n = int(rng.poisson(config.expected_galaxies()))
    galaxies = source.draw(rng, n, config.mag_min, config.mag_max)
    if isinstance(source, GeneratedGalaxies):
        galaxies.ident = split_ident_offset("patch") + (seed % 1000) * 10**8 + np.arange(n)
    ref_scale = config.reference_scale
    side_arcsec = config.size * ref_scale
    # Galaxy centres in arcsec from the patch's lower-left corner (pixel 0 centre at 0.5 ref pixel).
    pos = rng.uniform(0.0, side_arcsec, (n, 2))

    scales = sorted({b.pixel_scale for b in survey.bands})
    groups = {s: [i for i, b in enumerate(survey.bands) if b.pixel_scale == s] for s in scales}
    images = [np.zeros((round(side_arcsec / b.pixel_scale),) * 2, dtype=np.float32) for b in survey.bands]
    renderers: dict[tuple[float, int], StampRenderer] = {}
    ref = survey.band_names.index(config.reference_band)
    max_fwhm = max(b.psf_fwhm for b in survey.bands)
    ref_stamps = []
    hsm = np.full((n, 3), np.nan)
    snr_band = np.zeros((n, len(survey.bands)))
    variance = np.array([b.sky_level for b in survey.bands])

    for g in tqdm(range(n), desc="render patch galaxies", unit="gal", disable=not progress):
        one = galaxies[g]
        extent = (6.0 * max(one.disk_hlr[0], one.bulge_hlr[0]) + 2.0 * max_fwhm)
        for scale, band_idx in groups.items():
            size = _stamp_size(extent / scale)
            key = (scale, size)
            if key not in renderers:
                sub = Survey(name=survey.name, bands=tuple(survey.bands[i] for i in band_idx))
                renderers[key] = StampRenderer(sub, size)
            # Pixel (i, j) covers [i, i + 1) * scale: the centre of pixel i is at (i + 0.5) * scale.
            px, py = pos[g] / scale - 0.5
            ix, iy = int(round(px)), int(round(py))
            stamps = renderers[key].render(one, np.array([(px - ix) * scale]),
                                           np.array([(py - iy) * scale]))[0]
            for k, b in enumerate(band_idx):
                _add_stamp(images[b], stamps[k], ix - size // 2, iy - size // 2)
                snr_band[g, b] = snr_of(stamps[k][None], variance[b])[0]
                if b == ref:
                    ref_stamps.append((stamps[k], ix - size // 2, iy - size // 2))
                    shape = hsm_shape(stamps[k], center=(px - ix + size // 2, py - iy + size // 2))
                    hsm[g] = (shape.g1, shape.g2, shape.sigma)

    # Blendedness in the reference band against the noiseless patch: 1 - <S_k, S_k> / <S_all, S_k>.
    blend = np.full(n, np.nan)
    noiseless_ref = images[ref]
    for g, (stamp, x0, y0) in enumerate(ref_stamps):
        in_image, in_stamp = overlap_slices(noiseless_ref.shape, stamp.shape, x0, y0)
        own = stamp[in_stamp]
        cross = float(np.sum(noiseless_ref[in_image] * own))
        if cross > 0:
            blend[g] = 1.0 - float(np.sum(own * own)) / cross

    bands = []
    for b, band in enumerate(survey.bands):
        noise = rng.standard_normal(images[b].shape, dtype=np.float32) * np.float32(math.sqrt(variance[b]))
        bands.append(PatchBand(
            name=band.name, image=images[b] + noise,
            variance=np.full(images[b].shape, variance[b], dtype=np.float32),
            mask=np.zeros(images[b].shape, dtype=np.int32), psf=band.psf_image(config.psf_size),
            pixel_scale=band.pixel_scale, zeropoint=band.magnitude_zeropoint))

    truth = Table()
    truth["ident"] = galaxies.ident.astype(np.int64)
    truth["x"] = pos[:, 0] / ref_scale - 0.5
    truth["y"] = pos[:, 1] / ref_scale - 0.5
    truth["redshift"] = galaxies.redshift
    truth["hlr"] = galaxies.hlr
    flux = StampRenderer(survey, _STAMP_SIZES[0]).band_fluxes(galaxies)
    for b, band in enumerate(survey.bands):
        truth[f"flux_{band.name}"] = flux[:, b]
        truth[f"mag_{band.name}"] = band.electrons_to_mag(flux[:, b])
    truth["g1"], truth["g2"], truth["hsm_sigma"] = hsm[:, 0], hsm[:, 1], hsm[:, 2]
    for b, band in enumerate(survey.bands):
        truth[f"snr_{band.name}"] = snr_band[:, b]
    truth["snr"] = np.sqrt(np.sum(snr_band**2, axis=1))
    truth["blendedness"] = blend
    return Patch(config=config, seed=seed, bands=bands, truth=truth)


def write_patch(patch: Patch, path: str | Path) -> Path:
    """Write a patch to one HDF5 file (a group per band, and the truth table)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["config"] = json.dumps(dataclasses.asdict(patch.config))
        f.attrs["seed"] = patch.seed
        f.attrs["bands"] = json.dumps(patch.band_names)
        f.attrs["mask_planes"] = json.dumps(MASK_PLANES)
        for band in patch.bands:
            group = f.create_group(f"bands/{band.name}")
            group.attrs["pixel_scale"] = band.pixel_scale
            group.attrs["zeropoint"] = band.zeropoint
            for name in ("image", "variance", "mask", "psf"):
                group.create_dataset(name, data=getattr(band, name))
        f.create_dataset("truth", data=patch.truth.as_array())
    tmp.replace(path)
    return path


def read_patch(path: str | Path) -> Patch:
    """Read a patch written by `write_patch`."""
    with h5py.File(path, "r") as f:
        config = PatchConfig(**json.loads(f.attrs["config"]))
        bands = []
        for name in json.loads(f.attrs["bands"]):
            group = f[f"bands/{name}"]
            bands.append(PatchBand(name=name, image=group["image"][()], variance=group["variance"][()],
                                   mask=group["mask"][()], psf=group["psf"][()],
                                   pixel_scale=float(group.attrs["pixel_scale"]),
                                   zeropoint=float(group.attrs["zeropoint"])))
        truth = Table(f["truth"][()])
        return Patch(config=config, seed=int(f.attrs["seed"]), bands=bands, truth=truth)

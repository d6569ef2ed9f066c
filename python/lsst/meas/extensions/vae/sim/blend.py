"""Blended stamps as in Arcelin et al. (2021), with the truth of every galaxy.

A blend holds 1 to ``max_galaxies`` galaxies.  The brightest (in r) sits at the stamp centre, shifted by
up to ``max_shift`` arcsec in x and y; the others are placed uniformly in radius and angle in an annulus
around it.  The noisy image adds Gaussian background noise at the survey's full depth.

Every blend is a pure function of (config, seed, split, index): it draws from its own random stream, so
blends reproduce one by one, whatever the order or the number of processes that make them.
"""

from __future__ import annotations

__all__ = ["BlendConfig", "Blend", "BlendMaker", "GalaxySource", "GeneratedGalaxies", "CatalogGalaxies",
           "TRUTH_SCALAR_FIELDS", "TRUTH_BAND_FIELDS", "BLEND_PRESETS"]

import dataclasses
from typing import Protocol

import numpy as np

from ..measure.photometry import blendedness, snr
from ..measure.shape import hsm_shapes
from ..surveys import Survey, get_survey
from .catalog import SPLITS, GalaxyCatalog, _draw, draw_wide, split_ident_offset
from .conditions import FULL_DEPTH_YEARS, Conditions, binned_survey, survey_conditions
from .render import StampRenderer

# Default stamp side, pixels: see docs/benchmarks.md ("Choosing the stamp size").
DEFAULT_STAMP_SIZE = 59
# Noiseless pixels below this fraction of the band's noise sigma are set to zero.
TRUTH_FLOOR = 1e-3


@dataclasses.dataclass(frozen=True)
class BlendConfig:
    """How blends are made.

    Attributes
    ----------
    survey : `str`
        ``lsst``, ``euclid`` or ``lsst+euclid`` (see `get_survey`).
    psf_model : `str`
        ``paper`` or ``surveycodex``.
    stamp_size : `int`
        Odd stamp side, pixels.
    min_galaxies, max_galaxies : `int`
        The number of galaxies is uniform in [min, max].
    max_shift : `float`
        The central galaxy is shifted uniformly by up to this many arcsec in x and in y.
    annulus : `tuple` [`float`, `float`]
        Inner and outer radius (arcsec) of the neighbours' distances from the central galaxy.
    mag_min, mag_max : `float`
        r-band magnitude range of every galaxy.
    central_mag_max : `float`
        The central galaxy is at least this bright in r.
    central_brightest : `bool`
        Put the brightest galaxy at the centre (the paper); otherwise the galaxy drawn as central stays
        there, whatever its neighbours' brightness (as for stamps cut around every detected peak).
    bright_neighbour_fraction : `float`
        Fraction of neighbours drawn like the central galaxy (r <= ``central_mag_max``) instead of from
        the whole population: heavier blends with bright neighbours.
    disk_hlr_range : `tuple` [`float`, `float`], optional
        Keep only galaxies whose disk half-light radius (arcsec) is in this range.
    psf_fwhm : `float`, optional
        Override the FWHM (arcsec) of every band's PSF.
    reference_band : `str`
        Band of the truth shapes.
    population : `str`
        Galaxies of the built-in source: ``generator`` (the sky's published distributions) or ``wide``
        (the wide training population, `catalog.draw_wide`).
    psf_fwhm_range : `tuple` [`float`, `float`], optional
        Draw each blend's PSF (`conditions.Conditions.draw`): the reference band's FWHM in this range
        (arcsec; ``(x, x)`` fixes it).  None: the survey's PSFs.
    psf_chromatic, psf_band_scatter, psf_moffat_fraction, psf_e_max : `float`
        The other laws of a drawn PSF (`conditions.Conditions.draw`); used with ``psf_fwhm_range``.
    years : `tuple` [`float`, `float`]
        Depth range, years (log-uniform per blend; 10 is the survey's full depth).
    binned_fraction : `float`
        Fraction of blends drawn on binned pixels (`conditions.BINNING_FACTORS`, 3 x 3 and 5 x 5); their
        truth positions are in binned pixels.
    """

    survey: str = "lsst"
    psf_model: str = "paper"
    stamp_size: int = DEFAULT_STAMP_SIZE
    min_galaxies: int = 1
    max_galaxies: int = 4
    max_shift: float = 0.1
    annulus: tuple[float, float] = (0.325, 1.5)
    mag_min: float = 18.0
    mag_max: float = 27.5
    central_mag_max: float = 25.3
    central_brightest: bool = True
    bright_neighbour_fraction: float = 0.0
    disk_hlr_range: tuple[float, float] | None = None
    psf_fwhm: float | None = None
    reference_band: str = "r"
    population: str = "generator"
    psf_fwhm_range: tuple[float, float] | None = None
    psf_chromatic: float = 0.0
    psf_band_scatter: float = 0.0
    psf_moffat_fraction: float = 0.0
    psf_e_max: float = 0.0
    years: tuple[float, float] = (FULL_DEPTH_YEARS, FULL_DEPTH_YEARS)
    binned_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_galaxies <= self.max_galaxies:
            raise ValueError(f"Need 1 <= min_galaxies <= max_galaxies, got {self.min_galaxies}, "
                             f"{self.max_galaxies}.")
        if not 0 <= self.annulus[0] <= self.annulus[1]:
            raise ValueError(f"annulus must be (inner, outer) with 0 <= inner <= outer, got {self.annulus}.")
        if self.central_mag_max < self.mag_min:
            raise ValueError("central_mag_max must be fainter than mag_min.")
        if not 0.0 <= self.bright_neighbour_fraction <= 1.0:
            raise ValueError("bright_neighbour_fraction must be in [0, 1].")
        if self.population not in ("generator", "wide"):
            raise ValueError(f"population must be 'generator' or 'wide', got {self.population!r}.")
        if self.psf_fwhm_range is not None and not 0 < self.psf_fwhm_range[0] <= self.psf_fwhm_range[1]:
            raise ValueError(f"psf_fwhm_range must be (low, high) with 0 < low <= high, got "
                             f"{self.psf_fwhm_range}.")
        if not 0.0 <= self.binned_fraction <= 1.0:
            raise ValueError("binned_fraction must be in [0, 1].")
        if not 0 < self.years[0] <= self.years[1]:
            raise ValueError(f"years must be (low, high) with 0 < low <= high, got {self.years}.")
        if self.psf_fwhm_range is None and (self.psf_chromatic or self.psf_band_scatter
                                            or self.psf_moffat_fraction or self.psf_e_max):
            raise ValueError("The PSF laws (psf_chromatic, ...) need psf_fwhm_range.")

    @property
    def draws_conditions(self) -> bool:
        """Whether each blend draws its own PSFs and depth (else the survey's, at full depth)."""
        return (self.psf_fwhm_range is not None or self.years != (FULL_DEPTH_YEARS, FULL_DEPTH_YEARS)
                or self.binned_fraction > 0)

    def get_survey(self) -> Survey:
        return get_survey(self.survey, self.psf_model, self.psf_fwhm)

    @classmethod
    def preset(cls, name: str, **overrides) -> BlendConfig:
        """A named configuration (`BLEND_PRESETS`), with optional field overrides."""
        if name not in BLEND_PRESETS:
            raise ValueError(f"Unknown blend preset {name!r}; choose one of {tuple(BLEND_PRESETS)}.")
        return cls(**{**BLEND_PRESETS[name], **overrides})


class GalaxySource(Protocol):
    """Where the galaxies of a blend come from."""

    def draw(self, rng: np.random.Generator, n: int, mag_min: float, mag_max: float,
             disk_hlr_range: tuple[float, float] | None = None) -> GalaxyCatalog:
        """``n`` galaxies with r-band magnitude in [mag_min, mag_max] (and disk size in range)."""


class GeneratedGalaxies:
    """New galaxies from the built-in generator (`catalog.generate_catalog`'s distributions).

    Parameters
    ----------
    population : `str`
        ``generator``: the sky's published distributions; ``wide``: the wide training population
        (`catalog.draw_wide`).
    """

    def __init__(self, population: str = "generator") -> None:
        self.population = population

    def draw(self, rng: np.random.Generator, n: int, mag_min: float, mag_max: float,
             disk_hlr_range: tuple[float, float] | None = None) -> GalaxyCatalog:
        if self.population == "wide":
            return self._draw_wide(rng, n, mag_min, mag_max, disk_hlr_range)
        parts, n_have = [], 0
        # The counts rise steeply: draw a few times more than needed and keep those in the range.
        while n_have < n:
            part = _draw(rng, 4 * n + 16, mag_min - 1.0, mag_max + 1.5)
            r = part.band_mag("r")
            keep = (r >= mag_min) & (r <= mag_max)
            if disk_hlr_range is not None:
                keep &= (part.disk_hlr >= disk_hlr_range[0]) & (part.disk_hlr <= disk_hlr_range[1])
            part = part[keep]
            parts.append(part)
            n_have += len(part)
        return GalaxyCatalog.concatenate(parts)[:n]

    @staticmethod
    def _draw_wide(rng: np.random.Generator, n: int, mag_min: float, mag_max: float,
                   disk_hlr_range: tuple[float, float] | None) -> GalaxyCatalog:
        parts, n_have = [], 0
        while n_have < n:
            part = draw_wide(rng, 2 * n + 8, mag_min, mag_max)
            if disk_hlr_range is not None:
                part = part[(part.disk_hlr >= disk_hlr_range[0]) & (part.disk_hlr <= disk_hlr_range[1])]
            parts.append(part)
            n_have += len(part)
        return GalaxyCatalog.concatenate(parts)[:n]


class CatalogGalaxies:
    """Galaxies sampled (with replacement) from an external catalogue.

    Parameters
    ----------
    catalog : `GalaxyCatalog`
        Galaxies to sample from, already restricted to one split (`catalog_io.select_split`).
    """

    def __init__(self, catalog: GalaxyCatalog) -> None:
        self.catalog = catalog
        self._r = catalog.band_mag("r")

    def draw(self, rng: np.random.Generator, n: int, mag_min: float, mag_max: float,
             disk_hlr_range: tuple[float, float] | None = None) -> GalaxyCatalog:
        keep = (self._r >= mag_min) & (self._r <= mag_max)
        if disk_hlr_range is not None:
            hlr = self.catalog.disk_hlr
            keep &= (hlr >= disk_hlr_range[0]) & (hlr <= disk_hlr_range[1])
        candidates = np.flatnonzero(keep)
        if len(candidates) == 0:
            raise ValueError(f"No catalogue galaxy has {mag_min} <= r <= {mag_max} "
                             "(and the disk size range).")
        return self.catalog[rng.choice(candidates, size=n)]


BLEND_PRESETS: dict[str, dict] = {
    # Arcelin et al. (2021): the defaults.
    "paper": {},
    # Training the deblender for stamps cut around every detected peak: the centred galaxy need not be
    # the brightest, neighbours reach 3" and half of them are as bright as a central galaxy.
    "training": {"central_brightest": False, "bright_neighbour_fraction": 0.5, "annulus": (0.325, 3.0),
                 "central_mag_max": 25.5},
    # The anchor set of docs/method.md (scarlet_lite's figures): heavy blends of 2-4 galaxies with
    # r 20-25.5, disk half-light radius 0.3-1.5", neighbours 0.5-3" away, true centres, PSF 0.70".
    "anchor": {"min_galaxies": 2, "max_galaxies": 4, "mag_min": 20.0, "mag_max": 25.5,
               "central_mag_max": 25.5, "central_brightest": False, "annulus": (0.5, 3.0),
               "max_shift": 0.0, "disk_hlr_range": (0.3, 1.5), "psf_fwhm": 0.70},
    # The wide training sky of model v3 (issue 10; docs/model.md says what each choice is for): the wide
    # galaxy population at r 16-27.5 (centred galaxies to 26.5), 0-6 neighbours 0.2-5" away, half of them
    # as bright as a centred galaxy, the centre off by up to 2 pixels, and per-blend PSFs (Kolmogorov or
    # Moffat, 0.5-1.2" in r, chromatic, scattered by band, slightly elliptical) and depths of 1-10 years.
    "wide": {"population": "wide", "min_galaxies": 1, "max_galaxies": 7, "mag_min": 16.0, "mag_max": 27.5,
             "central_mag_max": 26.5, "central_brightest": False, "bright_neighbour_fraction": 0.5,
             "annulus": (0.2, 5.0), "max_shift": 0.4, "psf_fwhm_range": (0.5, 1.2), "psf_chromatic": 0.2,
             "psf_band_scatter": 0.05, "psf_moffat_fraction": 0.5, "psf_e_max": 0.05, "years": (1.0, 10.0)},
}

# Per-galaxy truth: scalar fields, and per-band fields of shape (n, bands).
TRUTH_SCALAR_FIELDS = ("ident", "blend_index", "is_central", "x", "y", "dx", "dy", "redshift", "hlr",
                       "g1", "g2", "hsm_sigma", "hsm_failed", "snr", "blendedness")
TRUTH_BAND_FIELDS = ("flux", "flux_stamp", "mag", "snr_band", "blendedness_band")


@dataclasses.dataclass
class Blend:
    """One blended stamp and its truth.

    Attributes
    ----------
    image : `numpy.ndarray`, shape (bands, h, w), float32
        Noisy image, electrons (background-subtracted).
    variance : `numpy.ndarray`, shape (bands,), float32
        Noise variance per pixel in each band.
    truth_images : `numpy.ndarray`, shape (n, bands, h, w), float32
        Noiseless image of every galaxy alone; the central galaxy first.
    psf : `numpy.ndarray`, shape (bands, P, P), float32
        Each band's PSF image (P = `conditions.PSF_IMAGE_SIZE`, centred, summing to 1).
    truth : `dict` [`str`, `numpy.ndarray`]
        Per-galaxy truth (`TRUTH_SCALAR_FIELDS`, `TRUTH_BAND_FIELDS`); positions ``x``, ``y`` are 0-based
        pixel coordinates in the reference band, ``dx``, ``dy`` offsets from the stamp centre in arcsec.
    galaxies : `GalaxyCatalog`
        Parameters of the galaxies, in the order of ``truth_images``.
    """

    image: np.ndarray
    variance: np.ndarray
    truth_images: np.ndarray
    truth: dict[str, np.ndarray]
    galaxies: GalaxyCatalog
    psf: np.ndarray | None = None

    @property
    def noiseless(self) -> np.ndarray:
        """Noiseless blend: the sum of the truth images."""
        return self.truth_images.sum(axis=0)


class BlendMaker:
    """Make blends for one configuration.

    Parameters
    ----------
    config : `BlendConfig`
    source : `GalaxySource`, optional
        Where galaxies come from; the built-in generator by default.
    """

    def __init__(self, config: BlendConfig, source: GalaxySource | None = None) -> None:
        self.config = config
        self.source = source or GeneratedGalaxies(config.population)
        self.survey = config.get_survey()
        self.renderer = StampRenderer(self.survey, config.stamp_size)
        self._renderers = {1: self.renderer}
        self._ref = self.survey.band_names.index(config.reference_band)
        self._ref_scale = self.survey.bands[self._ref].pixel_scale
        self.variance = (self.survey.noise_sigma**2).astype(np.float32)
        self._survey_conditions = survey_conditions(self.survey)
        self._survey_psf = self._survey_conditions.psf_images(self.survey)

    def conditions(self, seed: int, index: int, split: str = "train") -> Conditions:
        """The observing conditions of blend ``index`` of the stream (seed, split), from their own stream."""
        cfg = self.config
        if not cfg.draws_conditions:
            return self._survey_conditions
        fixed = [b.psf_fwhm for b in self.survey.bands]
        rng = np.random.default_rng([seed, SPLITS[split], index, 7])
        return Conditions.draw(self.survey, rng, cfg.psf_fwhm_range or (fixed[self._ref],) * 2,
                               psf_chromatic=cfg.psf_chromatic, psf_band_scatter=cfg.psf_band_scatter,
                               psf_moffat_fraction=cfg.psf_moffat_fraction, psf_e_max=cfg.psf_e_max,
                               years=cfg.years, reference_band=cfg.reference_band,
                               binned_fraction=cfg.binned_fraction)

    def make(self, seed: int, index: int, split: str = "train",
             shear: tuple[float, float] | None = None) -> Blend:
        """Make blend number ``index`` of the stream (seed, split).

        With ``shear`` (g1, g2), every galaxy's profile is sheared before the PSF; the galaxies, their
        positions and the noise realisation are those of the unsheared blend (the draws do not depend on
        the shear), as a shear-response measurement needs.
        """
        cfg = self.config
        rng = np.random.default_rng([seed, SPLITS[split], index])
        n = int(rng.integers(cfg.min_galaxies, cfg.max_galaxies + 1))
        hlr_range = cfg.disk_hlr_range
        central = self.source.draw(rng, 1, cfg.mag_min, cfg.central_mag_max, hlr_range)
        galaxies = central
        if n > 1:
            bright = rng.random(n - 1) < cfg.bright_neighbour_fraction
            faint = self.source.draw(rng, n - 1, cfg.mag_min, cfg.mag_max, hlr_range)
            if bright.any():
                brighter = self.source.draw(rng, n - 1, cfg.mag_min, cfg.central_mag_max, hlr_range)
                faint = GalaxyCatalog.concatenate([brighter[np.flatnonzero(bright)],
                                                   faint[np.flatnonzero(~bright)]])
            galaxies = GalaxyCatalog.concatenate([central, faint])
            if cfg.central_brightest:
                galaxies = galaxies[np.argsort(galaxies.band_mag("r"), kind="stable")]
        if isinstance(self.source, GeneratedGalaxies):
            galaxies.ident = split_ident_offset(split) + (seed % 1000) * 10**9 + index * 8 + np.arange(n)

        shift = rng.uniform(-cfg.max_shift, cfg.max_shift, 2)
        radius = rng.uniform(cfg.annulus[0], cfg.annulus[1], n - 1)
        angle = rng.uniform(0, 2 * np.pi, n - 1)
        dx = np.concatenate([[shift[0]], shift[0] + radius * np.cos(angle)])
        dy = np.concatenate([[shift[1]], shift[1] + radius * np.sin(angle)])

        conditions = self.conditions(seed, index, split)
        drawn = conditions is not self._survey_conditions
        renderer = self._renderer(conditions.binning)
        truth_images = renderer.render(galaxies, dx, dy, shear=shear,
                                       psfs=list(conditions.psfs) if drawn else None)
        variance = conditions.variance.copy()
        # Zero the far wings (and FFT ringing) far below the noise: exact zeros compress on disk.
        sigma = np.sqrt(self.variance)[None, :, None, None]
        truth_images[np.abs(truth_images) < TRUTH_FLOOR * sigma] = 0.0
        noise = rng.standard_normal(truth_images.shape[1:], dtype=np.float32)
        image = truth_images.sum(axis=0) + noise * np.sqrt(variance)[:, None, None]
        psf = conditions.psf_images(self.survey) if drawn else self._survey_psf.copy()
        return Blend(image=image, variance=variance, truth_images=truth_images,
                     truth=self._truth(galaxies, dx, dy, truth_images, index, variance, conditions.binning),
                     galaxies=galaxies, psf=psf)

    def _renderer(self, binning: int) -> StampRenderer:
        """The renderer of pixels binned ``binning`` x ``binning`` (made once)."""
        if binning not in self._renderers:
            self._renderers[binning] = StampRenderer(binned_survey(self.survey, binning),
                                                     self.config.stamp_size)
        return self._renderers[binning]

    def _truth(self, galaxies: GalaxyCatalog, dx: np.ndarray, dy: np.ndarray, truth_images: np.ndarray,
               index: int, variance: np.ndarray, binning: int = 1) -> dict[str, np.ndarray]:
        n = len(galaxies)
        centre = self.config.stamp_size // 2
        x = centre + dx / (self._ref_scale * binning)
        y = centre + dy / (self._ref_scale * binning)
        shapes = hsm_shapes(truth_images[:, self._ref], np.stack([x, y], axis=1))
        flux = self.renderer.band_fluxes(galaxies)
        snr_band = snr(truth_images, variance[:, None, None])
        blend_band = blendedness(truth_images)
        zeropoints = np.array([b.magnitude_zeropoint for b in self.survey.bands])
        return {
            "ident": galaxies.ident.astype(np.int64),
            "blend_index": np.full(n, index, dtype=np.int64),
            "is_central": np.arange(n) == 0,
            "x": x, "y": y, "dx": dx, "dy": dy,
            "redshift": galaxies.redshift, "hlr": galaxies.hlr,
            "g1": shapes["g1"], "g2": shapes["g2"], "hsm_sigma": shapes["sigma"],
            "hsm_failed": shapes["failed"].astype(bool),
            "snr": np.sqrt(np.sum(snr_band**2, axis=1)),
            "blendedness": blend_band[:, self._ref],
            "flux": flux, "flux_stamp": truth_images.sum(axis=(2, 3), dtype=np.float64),
            "mag": zeropoints - 2.5 * np.log10(flux),
            "snr_band": snr_band, "blendedness_band": blend_band,
        }

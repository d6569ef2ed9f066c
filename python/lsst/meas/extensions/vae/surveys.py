"""Bands and surveys: pixel scale, PSF, zero point, sky, exposure time and noise per pixel.

Numbers come from `surveycodex` (LSST at 10-year depth, Euclid VIS and NISP) where it has them.
The PSFs follow Arcelin et al. (2021) by default: one Kolmogorov PSF of FWHM 0.65 arcsec in every LSST
band, a Moffat of FWHM 0.18 arcsec (beta 2.5) for Euclid VIS and 0.22 arcsec (beta 2.5) for NISP.
``psf_model="surveycodex"`` uses surveycodex's per-band LSST seeing instead (Kolmogorov, and its Euclid
FWHMs with the same Moffat beta).

Images are in electrons summed over the whole survey: a source of AB magnitude ``m`` gives
``exposure_time * 10**(-0.4 * (m - zeropoint))`` electrons, where ``zeropoint`` is the magnitude that
gives one electron per second (surveycodex's definition).  The background is the sky; its variance per
pixel is the sky level in electrons (Poisson, gain 1, no read noise: sky-dominated deep coadds).
"""

from __future__ import annotations

__all__ = ["Band", "Survey", "get_survey", "SURVEY_NAMES", "ALL_BANDS"]

import dataclasses
import functools
import math

import galsim
import numpy as np
import surveycodex

from .measure.photometry import flux_to_mag

# Every band a catalogue must provide magnitudes for, in this order.
ALL_BANDS = ("u", "g", "r", "i", "z", "y", "VIS", "Y", "J", "H")

SURVEY_NAMES = ("lsst", "euclid", "lsst+euclid")

# Arcelin et al. (2021), section 2: PSFs used for the paper's simulations.
_PAPER_LSST_FWHM = 0.65
_PAPER_EUCLID_VIS_FWHM = 0.18
_PAPER_EUCLID_NIR_FWHM = 0.22
_MOFFAT_BETA = 2.5

# surveycodex names of the Euclid filters for our band names.
_EUCLID_FILTERS = {"VIS": ("Euclid_VIS", "IE"), "Y": ("Euclid_NISP", "YE"), "J": ("Euclid_NISP", "JE"),
                   "H": ("Euclid_NISP", "HE")}


@dataclasses.dataclass(frozen=True)
class Band:
    """One band of one instrument at full survey depth.

    Attributes
    ----------
    name : `str`
        Band name, one of `ALL_BANDS`.
    survey : `str`
        surveycodex survey name (``LSST``, ``Euclid_VIS``, ``Euclid_NISP``).
    pixel_scale : `float`
        Arcsec per pixel.
    zeropoint : `float`
        AB magnitude giving one electron per second.
    sky_brightness : `float`
        Sky surface brightness, AB mag per arcsec^2.
    exposure_time : `float`
        Total exposure time over the survey, seconds.
    psf_kind : `str`
        ``kolmogorov`` or ``moffat``.
    psf_fwhm : `float`
        PSF full width at half maximum, arcsec.
    psf_beta : `float`
        Moffat index (ignored for Kolmogorov).
    """

    name: str
    survey: str
    pixel_scale: float
    zeropoint: float
    sky_brightness: float
    exposure_time: float
    psf_kind: str
    psf_fwhm: float
    psf_beta: float = _MOFFAT_BETA

    @property
    def magnitude_zeropoint(self) -> float:
        """AB magnitude of a source giving one electron over the whole exposure time."""
        return self.zeropoint + 2.5 * math.log10(self.exposure_time)

    def mag_to_electrons(self, mag: np.ndarray | float) -> np.ndarray | float:
        """Total electrons collected from a source of AB magnitude ``mag``."""
        return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - self.magnitude_zeropoint))

    def electrons_to_mag(self, electrons: np.ndarray | float) -> np.ndarray | float:
        """AB magnitude of a source giving ``electrons`` (NaN for non-positive values)."""
        return flux_to_mag(electrons, self.magnitude_zeropoint)

    @property
    def sky_level(self) -> float:
        """Mean sky background per pixel, electrons."""
        return float(self.mag_to_electrons(self.sky_brightness)) * self.pixel_scale**2

    @property
    def noise_sigma(self) -> float:
        """Standard deviation of the background noise per pixel, electrons."""
        return math.sqrt(self.sky_level)

    def make_psf(self) -> galsim.GSObject:
        """The PSF as a GalSim profile (flux 1, arcsec units)."""
        if self.psf_kind == "kolmogorov":
            return galsim.Kolmogorov(fwhm=self.psf_fwhm)
        if self.psf_kind == "moffat":
            return galsim.Moffat(beta=self.psf_beta, fwhm=self.psf_fwhm)
        raise ValueError(f"Unknown PSF kind {self.psf_kind!r}; use 'kolmogorov' or 'moffat'.")

    def psf_image(self, size: int = 41) -> np.ndarray:
        """The pixelated PSF on an odd ``size`` x ``size`` grid, centred, normalised to sum 1."""
        if size % 2 == 0:
            raise ValueError(f"PSF image size must be odd, got {size}.")
        image = self.make_psf().drawImage(nx=size, ny=size, scale=self.pixel_scale).array
        return (image / image.sum()).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Survey:
    """An ordered set of bands observed together.

    Attributes
    ----------
    name : `str`
        One of `SURVEY_NAMES`.
    bands : `tuple` [`Band`]
        Bands in the order of the image cubes' first axis.
    """

    name: str
    bands: tuple[Band, ...]

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    def band(self, name: str) -> Band:
        """The band called ``name``."""
        for b in self.bands:
            if b.name == name:
                return b
        raise KeyError(f"Band {name!r} is not in survey {self.name!r} (bands {self.band_names}).")

    @property
    def noise_sigma(self) -> np.ndarray:
        """Background noise per pixel for every band, electrons."""
        return np.array([b.noise_sigma for b in self.bands])


def _lsst_bands(psf_model: str) -> list[Band]:
    codex = surveycodex.get_survey("LSST")
    bands = []
    for name in "ugrizy":
        f = codex.get_filter(name)
        fwhm = _PAPER_LSST_FWHM if psf_model == "paper" else float(f.psf_fwhm.value)
        bands.append(Band(name=name, survey="LSST", pixel_scale=float(codex.pixel_scale.value),
                          zeropoint=float(f.zeropoint.value), sky_brightness=float(f.sky_brightness.value),
                          exposure_time=float(f.full_exposure_time.value), psf_kind="kolmogorov",
                          psf_fwhm=fwhm))
    return bands


def _euclid_bands(psf_model: str) -> list[Band]:
    bands = []
    for name, (survey_name, filter_name) in _EUCLID_FILTERS.items():
        codex = surveycodex.get_survey(survey_name)
        f = codex.get_filter(filter_name)
        if psf_model == "paper":
            fwhm = _PAPER_EUCLID_VIS_FWHM if name == "VIS" else _PAPER_EUCLID_NIR_FWHM
        else:
            fwhm = float(f.psf_fwhm.value)
        bands.append(Band(name=name, survey=survey_name, pixel_scale=float(codex.pixel_scale.value),
                          zeropoint=float(f.zeropoint.value), sky_brightness=float(f.sky_brightness.value),
                          exposure_time=float(f.full_exposure_time.value), psf_kind="moffat",
                          psf_fwhm=fwhm))
    return bands


@functools.cache
def get_survey(name: str = "lsst", psf_model: str = "paper", psf_fwhm: float | None = None) -> Survey:
    """Return a survey by name.

    Parameters
    ----------
    name : `str`
        ``lsst`` (ugrizy), ``euclid`` (VIS, Y, J, H) or ``lsst+euclid`` (all ten bands).
    psf_model : `str`
        ``paper`` (Arcelin et al. 2021 PSFs) or ``surveycodex`` (per-band seeing from surveycodex).
    psf_fwhm : `float`, optional
        Override the PSF FWHM of every band (arcsec).

    Returns
    -------
    survey : `Survey`
    """
    name = name.lower()
    if psf_model not in ("paper", "surveycodex"):
        raise ValueError(f"Unknown psf_model {psf_model!r}; use 'paper' or 'surveycodex'.")
    if name == "lsst":
        bands = _lsst_bands(psf_model)
    elif name == "euclid":
        bands = _euclid_bands(psf_model)
    elif name == "lsst+euclid":
        bands = _lsst_bands(psf_model) + _euclid_bands(psf_model)
    else:
        raise ValueError(f"Unknown survey {name!r}; choose one of {SURVEY_NAMES}.")
    if psf_fwhm is not None:
        bands = [dataclasses.replace(b, psf_fwhm=float(psf_fwhm)) for b in bands]
    return Survey(name=name, bands=tuple(bands))

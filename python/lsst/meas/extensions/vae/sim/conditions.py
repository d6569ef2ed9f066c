"""Observing conditions of one blend: each band's PSF and the noise level of the coadd.

A real coadd's PSF differs from band to band (seeing scales about as wavelength^-0.2), from patch to
patch and from one survey year to the next, and its depth grows with the number of years observed.  A
blend of a `BlendConfig` whose condition fields differ from the defaults draws its own conditions:

- the r-band PSF FWHM uniform in ``psf_fwhm_range`` (arcsec), the other bands scaled by
  ``(lambda_b / lambda_r) ** -psf_chromatic`` and scattered by ``psf_band_scatter`` (fractional, per
  band);
- a Moffat profile (index 2-5) for a fraction ``psf_moffat_fraction`` of the blends, Kolmogorov for the
  rest;
- a PSF ellipticity (reduced shear, the same in every band) of modulus uniform up to ``psf_e_max``;
- a depth of ``years`` (log-uniform in the range; 10 is the survey's full depth): images keep the
  full-depth flux units, so the noise variance scales as ``10 / years``;
- for a fraction ``binned_fraction`` of the blends, pixels binned 3 x 3 (two thirds of them) or 5 x 5:
  the stamp covers 3 or 5 times the sky, each pixel holds the flux of 9 or 25, the noise variance is 9
  or 25 times the native pixel's and the PSF is narrower in pixels.  This is what the deblender sees when it
  models a galaxy larger than its stamp on a binned stamp; odd factors keep the galaxy's central pixel at
  the centre of a binned pixel (and the binned PSF centred).

The conditions are drawn from a stream of their own, so the galaxies and positions of a blend do not
depend on them (the same blend can be seen under other conditions).
"""

from __future__ import annotations

__all__ = ["Conditions", "EFFECTIVE_WAVELENGTH_NM", "FULL_DEPTH_YEARS", "PSF_IMAGE_SIZE", "psf_image",
           "survey_conditions", "binned_survey", "BINNING_FACTORS"]

import dataclasses
import functools
import math

import galsim
import numpy as np

from ..surveys import Survey

# Effective wavelengths of the bands, nm (LSST: the filters' published effective wavelengths, rounded;
# Euclid: the passbands' centres).
EFFECTIVE_WAVELENGTH_NM = {"u": 367.0, "g": 482.0, "r": 622.0, "i": 755.0, "z": 869.0, "y": 971.0,
                           "VIS": 725.0, "Y": 1080.0, "J": 1370.0, "H": 1770.0}
FULL_DEPTH_YEARS = 10.0
# Side of the PSF images that travel with every blend (odd; 8" at LSST pixels, which holds 99 % of the
# light of a 1.2" Kolmogorov PSF).
PSF_IMAGE_SIZE = 41
MOFFAT_BETA_RANGE = (2.0, 5.0)
# Binning factors of binned blends and their probabilities.
BINNING_FACTORS = (3, 5)
_BINNING_PROBABILITIES = (2 / 3, 1 / 3)


@functools.cache
def binned_survey(survey: Survey, factor: int) -> Survey:
    """``survey`` with every band's pixels binned ``factor`` x ``factor`` (pixel scales times ``factor``)."""
    if factor == 1:
        return survey
    return Survey(name=survey.name, bands=tuple(dataclasses.replace(b, pixel_scale=b.pixel_scale * factor)
                                                for b in survey.bands))


def psf_image(psf: galsim.GSObject, pixel_scale: float, size: int = PSF_IMAGE_SIZE) -> np.ndarray:
    """A PSF drawn on an odd ``size`` x ``size`` grid of ``pixel_scale`` pixels, centred, summing to 1."""
    if size % 2 == 0:
        raise ValueError(f"PSF image size must be odd, got {size}.")
    image = psf.drawImage(nx=size, ny=size, scale=pixel_scale).array
    return (image / image.sum()).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Conditions:
    """The PSF of every band and the noise of one blend.

    Attributes
    ----------
    psfs : `tuple` [`galsim.GSObject`]
        One PSF per survey band (flux 1, arcsec).
    psf_fwhm : `numpy.ndarray`, shape (bands,)
        FWHM of each band's PSF, arcsec.
    variance : `numpy.ndarray`, shape (bands,), float32
        Noise variance per pixel, in the survey's full-depth flux units (electrons at full depth).
    years : `float`
        Depth, years of the survey.
    binning : `int`
        Pixels binned ``binning`` x ``binning`` (1: the survey's pixels).
    """

    psfs: tuple[galsim.GSObject, ...]
    psf_fwhm: np.ndarray
    variance: np.ndarray
    years: float
    binning: int = 1

    def psf_images(self, survey: Survey, size: int = PSF_IMAGE_SIZE) -> np.ndarray:
        """Every band's PSF image on this blend's pixels, shape (bands, size, size), float32."""
        pixels = binned_survey(survey, self.binning)
        return np.stack([psf_image(psf, band.pixel_scale, size)
                         for psf, band in zip(self.psfs, pixels.bands)])

    @classmethod
    def draw(cls, survey: Survey, rng: np.random.Generator, psf_fwhm_range: tuple[float, float],
             psf_chromatic: float = 0.0, psf_band_scatter: float = 0.0, psf_moffat_fraction: float = 0.0,
             psf_e_max: float = 0.0, years: tuple[float, float] = (FULL_DEPTH_YEARS, FULL_DEPTH_YEARS),
             reference_band: str = "r", binned_fraction: float = 0.0) -> Conditions:
        """Draw one blend's conditions (see the module's docstring for the laws).

        Parameters
        ----------
        survey : `Survey`
            Bands (their full-depth noise and pixel scales).
        rng : `numpy.random.Generator`
            Random stream of these conditions.
        psf_fwhm_range : `tuple` [`float`, `float`]
            Range of the reference band's PSF FWHM, arcsec.
        psf_chromatic : `float`
            Exponent of the FWHM's wavelength dependence (0.2 for Kolmogorov seeing).
        psf_band_scatter : `float`
            Fractional scatter of each band's FWHM around the chromatic law.
        psf_moffat_fraction : `float`
            Probability of a Moffat PSF instead of a Kolmogorov one.
        psf_e_max : `float`
            Largest PSF ellipticity (reduced shear modulus).
        years : `tuple` [`float`, `float`]
            Depth range in years, drawn log-uniformly.
        reference_band : `str`
            Band whose FWHM is drawn from ``psf_fwhm_range``.
        binned_fraction : `float`
            Probability of binned pixels (`BINNING_FACTORS`).
        """
        names = survey.band_names
        ref = EFFECTIVE_WAVELENGTH_NM[reference_band]
        fwhm_ref = rng.uniform(*psf_fwhm_range)
        scale = np.array([(EFFECTIVE_WAVELENGTH_NM[b] / ref) ** -psf_chromatic for b in names])
        scatter = np.exp(rng.normal(0.0, psf_band_scatter, len(names))) if psf_band_scatter > 0 else 1.0
        fwhm = fwhm_ref * scale * scatter
        moffat = rng.random() < psf_moffat_fraction
        beta = rng.uniform(*MOFFAT_BETA_RANGE)
        g = rng.uniform(0.0, psf_e_max)
        angle = rng.uniform(0.0, math.pi)
        psfs = []
        for f in fwhm:
            psf = galsim.Moffat(beta=beta, fwhm=float(f)) if moffat else galsim.Kolmogorov(fwhm=float(f))
            if g > 0:
                psf = psf.shear(g=g, beta=angle * galsim.radians)
            psfs.append(psf)
        depth = math.exp(rng.uniform(math.log(years[0]), math.log(years[1])))
        binning = 1
        if binned_fraction > 0 and rng.random() < binned_fraction:
            binning = int(rng.choice(BINNING_FACTORS, p=_BINNING_PROBABILITIES))
        pixels = binned_survey(survey, binning)
        variance = (pixels.noise_sigma**2 * FULL_DEPTH_YEARS / depth).astype(np.float32)
        return cls(psfs=tuple(psfs), psf_fwhm=fwhm, variance=variance, years=depth, binning=binning)


def survey_conditions(survey: Survey) -> Conditions:
    """The survey's own conditions: its PSFs at full depth."""
    return Conditions(psfs=tuple(b.make_psf() for b in survey.bands),
                      psf_fwhm=np.array([b.psf_fwhm for b in survey.bands]),
                      variance=(survey.noise_sigma**2).astype(np.float32), years=FULL_DEPTH_YEARS)

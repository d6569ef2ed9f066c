"""Survey definitions against hand computations."""

import math

import numpy as np
import pytest

from lsst.meas.extensions.vae.surveys import ALL_BANDS, get_survey


def test_lsst_r_noise_matches_hand_computation():
    r = get_survey("lsst").band("r")
    # surveycodex LSST r: zero point 28.13 (1 e-/s), sky 21.2 mag/arcsec^2, 184 visits x 30 s, 0.2" pixels.
    sky_per_pixel = 5520.0 * 10 ** (-0.4 * (21.2 - 28.13)) * 0.2**2
    assert r.sky_level == pytest.approx(sky_per_pixel, rel=1e-9)
    assert r.noise_sigma == pytest.approx(math.sqrt(sky_per_pixel), rel=1e-9)
    assert r.noise_sigma == pytest.approx(361.2, abs=0.5)
    # A 24th magnitude galaxy gives 5520 * 10**(-0.4 * (24 - 28.13)) electrons.
    assert r.mag_to_electrons(24.0) == pytest.approx(5520.0 * 10 ** (0.4 * 4.13), rel=1e-9)
    assert r.electrons_to_mag(r.mag_to_electrons(24.0)) == pytest.approx(24.0)
    assert np.isnan(r.electrons_to_mag(-1.0))


def test_psf_models():
    lsst = get_survey("lsst")
    assert [b.psf_fwhm for b in lsst.bands] == [0.65] * 6
    assert get_survey("lsst", "surveycodex").band("r").psf_fwhm == pytest.approx(0.81)
    euclid = get_survey("euclid")
    assert euclid.band_names == ("VIS", "Y", "J", "H")
    assert euclid.band("VIS").psf_fwhm == 0.18 and euclid.band("VIS").pixel_scale == 0.1
    assert euclid.band("H").psf_kind == "moffat" and euclid.band("H").pixel_scale == 0.3
    both = get_survey("lsst+euclid")
    assert both.band_names == ALL_BANDS
    psf = lsst.band("r").psf_image(41)
    assert psf.shape == (41, 41) and psf.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.unravel_index(np.argmax(psf), psf.shape) == (20, 20)


def test_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="Unknown survey"):
        get_survey("hsc")
    with pytest.raises(ValueError, match="psf_model"):
        get_survey("lsst", "gaussian")
    with pytest.raises(KeyError, match="not in survey"):
        get_survey("lsst").band("VIS")

"""Scoring functions on analytic profiles."""

import galsim
import numpy as np
import pytest

from lsst.meas.extensions.vae.measure import blendedness, flux_to_mag, hsm_shape, snr


def test_hsm_recovers_the_shear_of_an_elliptical_gaussian():
    g1, g2 = 0.2, -0.1
    image = galsim.Gaussian(sigma=3.0, flux=1000.0).shear(g1=g1, g2=g2).shift(1.5, -2.0).drawImage(
        nx=65, ny=65, scale=1.0, method="no_pixel").array
    shape = hsm_shape(image)
    assert not shape.failed
    assert shape.g1 == pytest.approx(g1, abs=1e-4)
    assert shape.g2 == pytest.approx(g2, abs=1e-4)
    # Area-preserving shear: det(M)^(1/4) is the round sigma.
    assert shape.sigma == pytest.approx(3.0, rel=1e-3)
    assert shape.x == pytest.approx(32 + 1.5, abs=1e-3) and shape.y == pytest.approx(32 - 2.0, abs=1e-3)


def test_hsm_failure_is_flagged_not_raised():
    assert hsm_shape(np.zeros((21, 21))).failed
    assert hsm_shape(np.full((21, 21), np.nan)).failed
    assert np.isnan(hsm_shape(np.zeros((21, 21))).g1)


def test_snr_and_blendedness_analytic():
    a = np.zeros((1, 5, 5))
    a[0, 2, 2] = 3.0
    b = np.zeros((1, 5, 5))
    b[0, 2, 2] = 1.0
    b[0, 0, 0] = 2.0
    np.testing.assert_allclose(snr(a, 4.0), [1.5])  # sqrt(9 / 4)
    np.testing.assert_allclose(snr(b, 1.0), [np.sqrt(5.0)])
    bl = blendedness(np.stack([a, b]))
    # <a,a> = 9, <a+b,a> = 12 -> 1 - 9/12; <b,b> = 5, <a+b,b> = 3 + 5 = 8 -> 1 - 5/8.
    np.testing.assert_allclose(bl[:, 0], [0.25, 0.375])
    isolated = blendedness(np.stack([a, np.zeros_like(a)]))
    assert isolated[0, 0] == 0.0 and np.isnan(isolated[1, 0])


def test_flux_to_mag():
    np.testing.assert_allclose(flux_to_mag([1.0, 100.0], 30.0), [30.0, 25.0])
    assert np.isnan(flux_to_mag(0.0, 30.0))

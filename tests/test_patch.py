"""Whole simulated patches."""

import numpy as np
import pytest

from lsst.meas.extensions.vae.sim.patch import PatchConfig, make_patch, read_patch, write_patch


@pytest.fixture(scope="module")
def patch():
    return make_patch(PatchConfig(size=200), seed=2, progress=False)


def test_patch_content(patch):
    config = patch.config
    assert patch.band_names == ["u", "g", "r", "i", "z", "y"]
    # 200 x 200 px of 0.2" = 0.444 arcmin^2 at ~190 galaxies / arcmin^2 (r < 27.5).
    assert config.expected_galaxies() == pytest.approx(84.5, rel=0.03)
    assert abs(len(patch.truth) - config.expected_galaxies()) < 4 * np.sqrt(config.expected_galaxies())
    r = patch.band("r")
    assert r.image.shape == r.variance.shape == r.mask.shape == (200, 200)
    assert r.psf.shape == (41, 41) and r.psf.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.all(r.variance == pytest.approx(130_617, rel=1e-4))  # 5520 * 10**(0.4 * 6.93) * 0.04 electrons
    t = patch.truth
    assert np.all((t["x"] > -0.5) & (t["x"] < 199.5) & (t["y"] > -0.5) & (t["y"] < 199.5))
    assert np.all(t["mag_r"] <= 27.5 + 1e-9)
    # The image holds the galaxies' light plus zero-mean noise of the right level.
    inside = (t["x"] > 30) & (t["x"] < 170) & (t["y"] > 30) & (t["y"] < 170) & (t["hlr"] < 1.0)
    assert inside.sum() > 10
    total = r.image.sum()
    expected = t["flux_r"].sum()
    noise = np.sqrt(r.variance.sum())
    assert abs(total - expected) < 0.1 * expected + 5 * noise
    assert 0 <= np.nanmin(t["blendedness"]) and np.nanmax(t["blendedness"]) <= 1
    assert np.isfinite(t["g1"]).mean() > 0.95


def test_reproducible_and_round_trip(patch, tmp_path):
    again = make_patch(PatchConfig(size=200), seed=2, progress=False)
    np.testing.assert_array_equal(again.band("g").image, patch.band("g").image)
    path = write_patch(patch, tmp_path / "p.h5")
    back = read_patch(path)
    assert back.config == patch.config and back.seed == 2
    np.testing.assert_array_equal(back.band("y").image, patch.band("y").image)
    assert back.truth.colnames == patch.truth.colnames
    np.testing.assert_array_equal(back.truth["ident"], patch.truth["ident"])


def test_euclid_bands_cover_the_same_sky():
    p = make_patch(PatchConfig(survey="lsst+euclid", size=60), seed=1, progress=False)
    shapes = {b.name: b.image.shape for b in p.bands}
    assert shapes["r"] == (60, 60) and shapes["VIS"] == (120, 120) and shapes["H"] == (40, 40)

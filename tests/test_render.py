"""The Fourier stamp renderer against GalSim's own drawImage."""

import galsim
import numpy as np
import pytest

from lsst.meas.extensions.vae.sim.catalog import generate_catalog
from lsst.meas.extensions.vae.sim.render import StampRenderer, galaxy_components
from lsst.meas.extensions.vae.surveys import ALL_BANDS, get_survey

TIGHT = galsim.GSParams(folding_threshold=1e-4, maxk_threshold=1e-5, maximum_fft_size=16384)


@pytest.mark.parametrize("survey_name,tolerance", [("lsst", 2e-4), ("lsst+euclid", 2e-3)])
def test_matches_galsim(survey_name, tolerance):
    survey = get_survey(survey_name)
    catalog = generate_catalog(6, seed=11, mag_max=25.0)
    renderer = StampRenderer(survey, 45)
    dx = np.linspace(-1.0, 1.0, 6)
    dy = np.linspace(0.7, -0.4, 6)
    images = renderer.render(catalog, dx, dy)
    fluxes = renderer.band_fluxes(catalog)
    for g in range(len(catalog)):
        components = galaxy_components(catalog, g)
        for b, band in enumerate(survey.bands):
            column = ALL_BANDS.index(band.name)
            profile = galsim.Add([p * (f[column] * fluxes[g, b]) for p, f in components]).shift(dx[g], dy[g])
            reference = galsim.Convolve(profile, band.make_psf(), gsparams=TIGHT).drawImage(
                nx=45, ny=45, scale=band.pixel_scale).array
            assert np.abs(images[g, b] - reference).max() < tolerance * reference.max()


def test_flux_and_centre_of_a_known_galaxy():
    survey = get_survey("lsst")
    catalog = generate_catalog(1, seed=3, mag_max=23.0)
    catalog.disk_hlr[:] = 0.5
    catalog.bulge_fraction[:] = 0.0
    catalog.disk_q[:] = 1.0
    catalog.mag[:, ALL_BANDS.index("r")] = 22.0
    image = StampRenderer(survey, 59).render(catalog, np.array([0.0]), np.array([0.0]))[0]
    r = survey.band_names.index("r")
    # r = 22: 5520 s * 10**(-0.4 (22 - 28.13)) electrons; a 0.5" disk loses < 0.5 % outside 11.8".
    expected = 5520.0 * 10 ** (-0.4 * (22.0 - 28.13))
    assert image[r].sum() == pytest.approx(expected, rel=5e-3)
    assert image[r].sum() < expected
    assert np.unravel_index(np.argmax(image[r]), image[r].shape) == (29, 29)
    np.testing.assert_allclose(image[r], image[r].T, atol=1e-3 * image[r].max())  # round: symmetric


def test_even_stamp_rejected():
    with pytest.raises(ValueError, match="odd"):
        StampRenderer(get_survey("lsst"), 60)

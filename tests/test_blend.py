"""Blends: reproducibility, truth, noise, layout."""

import galsim
import numpy as np
import pytest

from lsst.meas.extensions.vae.sim.blend import BlendConfig, BlendMaker, CatalogGalaxies
from lsst.meas.extensions.vae.sim.render import galaxy_components
from lsst.meas.extensions.vae.surveys import ALL_BANDS


@pytest.fixture(scope="module")
def maker():
    return BlendMaker(BlendConfig())


def test_blends_reproduce_from_their_seed(maker):
    a = maker.make(seed=3, index=17)
    b = BlendMaker(BlendConfig()).make(seed=3, index=17)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.truth_images, b.truth_images)
    np.testing.assert_array_equal(a.truth["ident"], b.truth["ident"])
    c = maker.make(seed=3, index=18)
    assert not np.array_equal(a.image, c.image)
    test = maker.make(seed=3, index=17, split="test")
    assert not set(test.truth["ident"]) & set(a.truth["ident"])


def test_truth_images_sum_to_the_noiseless_blend(maker):
    """The stored truth images add up to the whole scene drawn at once by GalSim."""
    cfg = maker.config
    for index in range(6):
        blend = maker.make(seed=0, index=index)
        if len(blend.truth_images) < 3:
            continue
        survey = maker.survey
        r = survey.band_names.index("r")
        band = survey.bands[r]
        t = blend.truth
        scene = []
        for g in range(len(t["ident"])):
            comps = galaxy_components(blend.galaxies, g)
            flux = t["flux"][g, r]
            scene.append(galsim.Add([p * (f[ALL_BANDS.index("r")] * flux) for p, f in comps])
                         .shift(t["dx"][g], t["dy"][g]))
        reference = galsim.Convolve(galsim.Add(scene), band.make_psf()).drawImage(
            nx=cfg.stamp_size, ny=cfg.stamp_size, scale=band.pixel_scale).array
        np.testing.assert_allclose(blend.noiseless[r], reference, atol=5e-3 * reference.max())
        residual = blend.image - blend.noiseless
        np.testing.assert_allclose(residual.std(axis=(1, 2)), np.sqrt(blend.variance), rtol=0.05)
        return
    pytest.fail("no blend with 3 or more galaxies among the first six")


def test_layout_and_truth_fields(maker):
    cfg = maker.config
    sizes = []
    for index in range(60):
        blend = maker.make(seed=1, index=index)
        t = blend.truth
        n = len(t["ident"])
        sizes.append(n)
        assert blend.image.shape == (6, cfg.stamp_size, cfg.stamp_size)
        assert blend.truth_images.shape == (n, 6, cfg.stamp_size, cfg.stamp_size)
        assert t["is_central"][0] and not t["is_central"][1:].any()
        r = t["mag"][:, 2]
        assert r[0] == r.min() and r[0] <= cfg.central_mag_max
        assert abs(t["dx"][0]) <= cfg.max_shift and abs(t["dy"][0]) <= cfg.max_shift
        dist = np.hypot(t["dx"][1:] - t["dx"][0], t["dy"][1:] - t["dy"][0])
        assert np.all((dist >= cfg.annulus[0] - 1e-9) & (dist <= cfg.annulus[1] + 1e-9))
        assert np.all(t["blendedness"][~np.isnan(t["blendedness"])] >= -1e-6)
        if n == 1:
            assert t["blendedness"][0] == pytest.approx(0.0, abs=1e-6)
        assert np.all(np.isfinite(blend.image))
    assert sorted(set(sizes)) == [1, 2, 3, 4]


def test_every_catsim_galaxy_renders_with_the_expected_flux(shared_catalogs):
    from lsst.meas.extensions.vae.sim.catalog_io import read_catsim
    from lsst.meas.extensions.vae.sim.render import StampRenderer
    from lsst.meas.extensions.vae.surveys import get_survey

    catalog = read_catsim(shared_catalogs / "catsim_sample_100.fits")
    assert len(catalog) == 100
    survey = get_survey("lsst")
    renderer = StampRenderer(survey, 59)
    images = renderer.render(catalog, np.zeros(100), np.zeros(100))
    assert np.all(np.isfinite(images))
    expected = renderer.band_fluxes(catalog)
    # Flux is the catalogue magnitude converted at 10-year depth, e.g. r: 5520 s * 10**(-0.4 (r - 28.13)).
    np.testing.assert_allclose(expected[:, 2], 5520.0 * 10 ** (-0.4 * (catalog.band_mag("r") - 28.13)),
                               rtol=1e-9)
    measured = images.sum(axis=(2, 3))
    small = catalog.hlr < 1.0  # galaxies that fit in 11.8": all but the stamp-filling few
    assert small.sum() >= 95
    np.testing.assert_allclose(measured[small], expected[small], rtol=0.02)
    assert np.all(measured <= expected * 1.001)


def test_catalog_source_blends(shared_catalogs):
    from lsst.meas.extensions.vae.sim.catalog_io import read_catsim, select_split

    train = select_split(read_catsim(shared_catalogs / "catsim_sample_100.fits"), "train")
    maker = BlendMaker(BlendConfig(central_mag_max=26.0), CatalogGalaxies(train))
    blend = maker.make(seed=0, index=0)
    assert set(blend.truth["ident"]) <= set(train.ident)


def test_bad_config_fails_clearly():
    with pytest.raises(ValueError, match="min_galaxies"):
        BlendConfig(min_galaxies=3, max_galaxies=2)
    with pytest.raises(ValueError, match="annulus"):
        BlendConfig(annulus=(2.0, 1.0))

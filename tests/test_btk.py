"""The BlendingToolKit adapter: BTK draws a small seeded batch of LSST blends from the CatSim sample, its
own ``DeblendGenerator`` runs the VAE (`VaeDeblend`) beside BTK's ``SepSingleBand``, and BTK's matcher and
reconstruction metrics score both.  Skipped where BTK or ../shared/data is absent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CATSIM = Path(__file__).resolve().parents[2] / "shared" / "data" / "catalogs" / "catsim_sample_100.fits"

btk = pytest.importorskip("btk", reason="BlendingToolKit (the 'btk' extra) is not installed")
needs_catalog = pytest.mark.skipif(not CATSIM.is_file(), reason=f"{CATSIM} is absent (CI and developers)")

BATCH, MAX_N = 6, 3


def test_package_imports_without_btk():
    """`compare` imports without BTK; `compare.btk` then fails with the install hint."""
    code = ("import sys; sys.modules['btk'] = None\n"
            "import lsst.meas.extensions.vae.compare\n"
            "try:\n    import lsst.meas.extensions.vae.compare.btk\n"
            "except ImportError as e:\n    print('hint' if 'requirements/btk.txt' in str(e) else e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "hint"


def test_shim_is_scoped_and_idempotent():
    import galsim

    from lsst.meas.extensions.vae.compare import btk as adapter

    original = galsim.random.BaseDeviate
    adapter.apply_btk_shims()
    shimmed = btk.draw_blends.galsim
    adapter.apply_btk_shims()
    assert btk.draw_blends.galsim is shimmed  # applied once
    assert galsim.random.BaseDeviate is original  # GalSim itself is untouched
    seed = np.random.SeedSequence(3).generate_state(1)  # what BTK passes
    assert shimmed.random.BaseDeviate(seed=seed).raw() == galsim.BaseDeviate(int(seed[0])).raw()
    assert shimmed.Image is galsim.Image


def test_bands_mapped_by_name():
    from lsst.meas.extensions.vae.compare.btk import band_indices

    assert band_indices("ygrizu", "ugrizy").tolist() == [5, 1, 2, 3, 4, 0]
    with pytest.raises(ValueError, match="lack"):
        band_indices(("g", "r", "i"), "ugrizy")


@pytest.fixture(scope="module")
def deblended():
    """One seeded BTK batch through BTK's DeblendGenerator: the VAE (true centroids) and SepSingleBand."""
    from lsst.meas.extensions.vae.compare.btk import VaeDeblend

    vae = VaeDeblend(max_n_sources=MAX_N)  # before drawing: it applies the GalSim seed shim
    catalog = btk.catalog.CatsimCatalog.from_file(str(CATSIM))
    sampling = btk.sampling_functions.DefaultSampling(max_number=MAX_N, min_number=2, seed=0)
    draw = btk.draw_blends.CatsimGenerator(catalog, sampling, btk.survey.get_surveys("LSST"),
                                           batch_size=BATCH, seed=0)
    sep_single = btk.deblend.SepSingleBand(max_n_sources=MAX_N + 3, use_band=2)
    generator = btk.deblend.DeblendGenerator([vae, sep_single], draw)
    blend_batch, results = next(generator)
    return vae, blend_batch, results


@needs_catalog
def test_vae_through_btk_harness(deblended):
    from lsst.meas.extensions.vae.compare.btk import reconstruction_metrics

    vae, blend_batch, results = deblended
    out = results["VaeDeblend"]
    size = blend_batch.image_size
    assert out.deblended_images.shape == (BATCH, MAX_N, 6, size, size)
    assert np.isfinite(out.deblended_images).all() and out.deblended_images.min() >= 0
    for truth, cat, images in zip(blend_batch.catalog_list, out.catalog_list, out.deblended_images):
        assert len(cat) == len(truth)  # one output per truth galaxy, in the truth's order
        np.testing.assert_allclose(cat["x_peak"], truth["x_peak"])
        assert (images[: len(truth)].sum(axis=(1, 2, 3)) > 0).all()  # every galaxy modelled
        assert not images[len(truth):].any()  # zero after the last source
        assert not np.any(cat["outside_image"])

    vae_scores = reconstruction_metrics(blend_batch, out, band="r")
    assert (vae_scores["n_matched"] == vae_scores["n_true"]).all()
    n_galaxies = int(vae_scores["n_true"].sum())
    for key in ("mse", "psnr", "ssim"):
        assert vae_scores[key].shape == (n_galaxies,) and np.isfinite(vae_scores[key]).all()

    # Against no deblending (every galaxy gets the whole blend): the floor.
    blend = np.clip(blend_batch.blend_images, 0, None)
    no_deblend = btk.blend_batch.DeblendBatch(
        BATCH, MAX_N, [t["ra", "dec", "x_peak", "y_peak"] for t in blend_batch.catalog_list], 6, size, None,
        np.stack([np.where((np.arange(MAX_N) < len(t))[:, None, None, None], b[None], 0.0)
                  for t, b in zip(blend_batch.catalog_list, blend)]))
    floor = reconstruction_metrics(blend_batch, no_deblend, band="r")
    assert np.median(vae_scores["mse"]) < 0.3 * np.median(floor["mse"])
    assert np.median(vae_scores["psnr"]) > np.median(floor["psnr"]) + 10
    assert np.median(vae_scores["ssim"]) > np.median(floor["ssim"]) + 0.3

    # Against BTK's SepSingleBand on the same galaxies: the VAE deblends SEP's own detections.
    sep_out = results["SepSingleBand"]
    sep_scores = reconstruction_metrics(blend_batch, sep_out, band="r")
    on_sep = _vae_on_reference(vae, blend_batch, sep_out)
    vae_on_sep = reconstruction_metrics(blend_batch, on_sep, band="r")
    assert vae_on_sep["n_matched"].sum() == sep_scores["n_matched"].sum() > 0
    assert np.median(vae_on_sep["psnr"]) > np.median(sep_scores["psnr"]) + 1
    assert np.median(vae_on_sep["ssim"]) > np.median(sep_scores["ssim"])


def _vae_on_reference(vae, blend_batch, reference):
    """The VAE on another BTK deblender's detections (``reference_catalogs``, as BTK's ``Scarlet``)."""
    from lsst.meas.extensions.vae.compare.btk import VaeDeblend

    wide = VaeDeblend(max_n_sources=reference.max_n_sources)
    assert wide.network is vae.network  # the weights are loaded once
    return wide(blend_batch, reference_catalogs=reference.catalog_list)


@needs_catalog
def test_detected_peaks_and_conserved_images(deblended):
    from lsst.meas.extensions.vae.compare.btk import VaeDeblend, reconstruction_metrics

    _, blend_batch, _ = deblended
    detected = VaeDeblend(max_n_sources=MAX_N + 3, peaks="sep")(blend_batch)
    scores = reconstruction_metrics(blend_batch, detected, band="r")
    assert 0 < scores["n_matched"].sum() <= scores["n_true"].sum()
    assert np.isfinite(scores["mse"]).all()

    conserved = VaeDeblend(max_n_sources=MAX_N, images="conserved").deblend(0, blend_batch)
    n = len(blend_batch.catalog_list[0])
    total = conserved.deblended_images[:n].sum(axis=0)
    # The children split the blend's pixels (clipped at zero for BTK's metrics): where the blend is
    # positive they add up to it.
    blend = blend_batch.blend_images[0]
    bright = blend > 5 * np.sqrt(np.median(blend**2, axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(total[bright], blend[bright], rtol=1e-3)

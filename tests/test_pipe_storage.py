"""Storage classes of the standalone pipeline: file round trips, butler round trips through the repository
seed and through DAF_BUTLER_CONFIG_PATH."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from lsst.daf.butler import Config, DatasetType

from lsst.meas.extensions.vae.pipe.standalone import (Coadd, FootprintImage, VaeModelData, butler_config_dir,
                                                      make_repo, read_coadd, read_footprints, seed_config,
                                                      use_butler_config, write_coadd, write_footprints,
                                                      write_seed_config)
from lsst.meas.extensions.vae.pipe.standalone.models import (BlendModel, ChildModel, read_model_data,
                                                             write_model_data)
from lsst.meas.extensions.vae.pipe.standalone.testing import gaussian_psf
from lsst.meas.extensions.vae.sim.patch import PatchConfig, make_patch


def _coadd(xy0=(100, 250), band="r") -> Coadd:
    rng = np.random.default_rng(1)
    shape = (20, 30)
    mask = np.zeros(shape, dtype=np.int32)
    mask[3, 4] = 1 << 5
    return Coadd(image=rng.normal(size=shape), variance=np.full(shape, 2.0), mask=mask, psf=gaussian_psf(),
                 bbox=(xy0[0], xy0[1], xy0[0] + 30, xy0[1] + 20), band=band, zeropoint=28.17, pixel_scale=0.2)


def _model_data() -> VaeModelData:
    rng = np.random.default_rng(2)
    blends = {}
    for parent_id, n in ((11, 2), (12, 1), (13, 0)):
        children = [ChildModel(id=100 + 10 * parent_id + k, peak_id=k + 1, origin=(5 + k, 7),
                               peak=(20.0 + k, 22.0), model=rng.normal(size=(3, 9, 9))) for k in range(n)]
        footprint = np.zeros((6, 8), dtype=bool)
        footprint[1:5, 2:7] = True
        blends[parent_id] = BlendModel(parent_id=parent_id, bbox=(10, 20, 18, 26), footprint=footprint,
                                       children=children)
    return VaeModelData(bands=("g", "r", "i"), blends=blends, metadata={"weights": "test", "stamp_size": 9})


def _assert_coadds_equal(a: Coadd, b: Coadd) -> None:
    for name in ("image", "variance", "mask", "psf"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert getattr(b, name).dtype.isnative
    assert (a.bbox, a.band, a.zeropoint, a.pixel_scale, a.mask_planes) == \
        (b.bbox, b.band, b.zeropoint, b.pixel_scale, b.mask_planes)


def _assert_models_equal(a: VaeModelData, b: VaeModelData) -> None:
    assert a.bands == b.bands and a.metadata == b.metadata and list(a.blends) == list(b.blends)
    for parent_id, blend in a.blends.items():
        other = b.blends[parent_id]
        assert blend.bbox == other.bbox
        np.testing.assert_array_equal(blend.footprint, other.footprint)
        assert [c.id for c in blend.children] == [c.id for c in other.children]
        for c, d in zip(blend.children, other.children):
            assert (c.peak_id, c.origin, c.peak) == (d.peak_id, d.origin, d.peak)
            np.testing.assert_array_equal(c.model, d.model)


def test_coadd_fits_round_trip(tmp_path):
    coadd = _coadd()
    write_coadd(coadd, tmp_path / "c.fits")
    _assert_coadds_equal(coadd, read_coadd(tmp_path / "c.fits"))
    assert coadd.mask_bits(["DETECTED", "NOT_A_PLANE"]) == 1 << 5


def test_coadd_rejects_inconsistent_arrays():
    coadd = _coadd()
    with pytest.raises(ValueError, match="bbox"):
        Coadd(image=coadd.image, variance=coadd.variance, mask=coadd.mask, psf=coadd.psf, bbox=(0, 0, 5, 5),
              band="r", zeropoint=28.0, pixel_scale=0.2)
    with pytest.raises(ValueError, match="PSF"):
        Coadd(image=coadd.image, variance=coadd.variance, mask=coadd.mask, psf=np.ones((4, 4)),
              bbox=coadd.bbox, band="r", zeropoint=28.0, pixel_scale=0.2)


def test_footprints_round_trip(tmp_path):
    labels = np.zeros((10, 12), dtype=np.int32)
    labels[1:4, 2:5] = 1
    labels[6:9, 7:11] = 2
    footprints = FootprintImage(labels=labels, ids=np.array([2**40 + 1, 2**40 + 2]), bbox=(50, 60, 62, 70))
    write_footprints(footprints, tmp_path / "f.fits")
    back = read_footprints(tmp_path / "f.fits")
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_array_equal(back.ids, footprints.ids)
    assert back.bbox == footprints.bbox
    assert back.label_of(2**40 + 2) == 2
    with pytest.raises(ValueError):
        FootprintImage(labels=labels, ids=np.array([1]), bbox=(0, 0, 12, 10))


def test_model_data_round_trip(tmp_path):
    data = _model_data()
    write_model_data(data, tmp_path / "m.h5")
    _assert_models_equal(data, read_model_data(tmp_path / "m.h5"))
    subset = read_model_data(tmp_path / "m.h5", parents=[12])
    assert list(subset.blends) == [12]
    # The sum of the models on an image, in patch pixels.
    image = data.render((40, 40))
    expected = sum(c.model.sum(axis=(1, 2)) for b in data.blends.values() for c in b.children)
    np.testing.assert_allclose(image.sum(axis=(1, 2)), expected, rtol=1e-5)


def test_seed_file_matches_config_folder(tmp_path):
    path = write_seed_config(tmp_path / "seed.yaml")
    assert Config(str(path)).toDict() == seed_config().toDict()
    assert {"VaeCoadd", "VaeFootprints", "VaeModelData"} <= set(seed_config()["storageClasses"])
    assert set(seed_config()["storageClasses"]) == set(seed_config()["datastore", "formatters"])
    env = use_butler_config({"DAF_BUTLER_CONFIG_PATH": "/elsewhere"})
    assert env["DAF_BUTLER_CONFIG_PATH"] == f"{butler_config_dir()}{os.pathsep}/elsewhere"
    assert use_butler_config(dict(env)) == env  # idempotent


def test_butler_round_trips_in_a_seeded_repo(tmp_path):
    patch = make_patch(PatchConfig(size=48), seed=3, progress=False)
    butler = make_repo(tmp_path / "repo", [patch], origin=(10, 20))
    data_id = {"skymap": "vae_sim", "tract": 0, "patch": 0}
    coadd = butler.get("deep_coadd", data_id, band="r")
    _assert_coadds_equal(Coadd.from_patch_band(patch.band("r"), xy0=(10, 20)), coadd)
    assert len(butler.query_datasets("deep_coadd")) == len(patch.bands)
    truth = butler.get("truth_catalog", data_id)
    np.testing.assert_allclose(truth["x"], np.asarray(patch.truth["x"]) + 10)

    universe = butler.dimensions
    for name, storage in (("test_footprints", "VaeFootprints"), ("test_models", "VaeModelData")):
        butler.registry.registerDatasetType(DatasetType(name, ("tract", "patch", "skymap"), storage,
                                                        universe=universe))
    footprints = FootprintImage(labels=np.ones((3, 4), dtype=np.int32), ids=[7], bbox=(1, 2, 5, 5))
    butler.put(footprints, "test_footprints", data_id)
    assert butler.get("test_footprints", data_id).label_of(7) == 1
    data = _model_data()
    butler.put(data, "test_models", data_id)
    _assert_models_equal(data, butler.get("test_models", data_id))
    assert list(butler.get("test_models", data_id, parameters={"parents": [11, 13]}).blends) == [11, 13]
    with open(tmp_path / "repo" / "butler.yaml") as f:
        assert "VaeModelData" in f.read()  # the repository itself knows the storage classes


def test_butler_round_trip_through_config_path(tmp_path):
    """A repository made without the seed works in a process that has DAF_BUTLER_CONFIG_PATH."""
    script = textwrap.dedent(f"""
        import numpy as np
        from lsst.daf.butler import Butler, DatasetType
        from lsst.meas.extensions.vae.pipe.standalone.testing import gaussian_psf
        from lsst.meas.extensions.vae.pipe.standalone import Coadd
        Butler.makeRepo({str(tmp_path / 'plain')!r})
        butler = Butler.from_config({str(tmp_path / 'plain')!r}, writeable=True, run="r")
        butler.registry.insertDimensionData("instrument", {{"name": "I"}})
        registry = butler.registry
        registry.insertDimensionData("physical_filter", {{"instrument": "I", "name": "I_r", "band": "r"}})
        registry.registerDatasetType(DatasetType("c", ("band",), "VaeCoadd", universe=butler.dimensions))
        coadd = Coadd(image=np.ones((4, 5)), variance=np.ones((4, 5)), mask=np.zeros((4, 5)),
                      psf=gaussian_psf(), bbox=(0, 0, 5, 4), band="r", zeropoint=27.0, pixel_scale=0.2)
        butler.put(coadd, "c", band="r")
        assert Butler.from_config({str(tmp_path / 'plain')!r}, collections="r").get("c", band="r").band == "r"
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "DAF_BUTLER_CONFIG_PATH"}
    result = subprocess.run([sys.executable, "-c", script], env=use_butler_config(env), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")

"""The standalone tasks' ``run`` on small synthetic scenes with a numpy stamp model (no butler, no torch):
detection, deblending limits and failures, conservation, measurement; ids and re-distribution."""

from __future__ import annotations

import numpy as np
import pytest

from lsst.meas.extensions.vae.pipe.standalone import (DetectCoaddPeaksTask, MeasureObjectUnforcedTask,
                                                      VaeDeblendTask)
from lsst.meas.extensions.vae.pipe.standalone.detection import (detect, grow_mask, label_regions,
                                                                local_maxima)
from lsst.meas.extensions.vae.pipe.standalone.ids import IdGeneratorConfig, PatchIdGenerator
from lsst.meas.extensions.vae.pipe.standalone.redistribute import redistribute
from lsst.meas.extensions.vae.pipe.standalone.testing import GaussianStampModel, synthetic_coadds

XY0 = (300, 500)
# An isolated galaxy, a blend of two, another isolated galaxy: far enough apart (> a 31-pixel stamp) that a
# NaN in one cannot reach the others.
SCENE = [(XY0[0] + 20, XY0[1] + 20, 3000.0, 2.0), (XY0[0] + 62, XY0[1] + 60, 4000.0, 2.0),
         (XY0[0] + 69, XY0[1] + 62, 2500.0, 2.0), (XY0[0] + 20, XY0[1] + 76, 2000.0, 2.5)]


@pytest.fixture(scope="module")
def coadds():
    return synthetic_coadds(SCENE, shape=(100, 100), xy0=XY0, noise=1.0, seed=4)


@pytest.fixture(scope="module")
def detections(coadds):
    return DetectCoaddPeaksTask().run(coadds, tract=3, patch=7)


def _deblend(coadds, detections, model=None, **config):
    task = VaeDeblendTask(model=model or GaussianStampModel(), config=VaeDeblendTask.ConfigClass())
    for key, value in config.items():
        setattr(task.config, key, value)
    return task, task.run(coadds, detections.mergedDetections, detections.peaks, detections.footprints)


def _accounted(parents) -> np.ndarray:
    deblended = ~parents["deblend_skipped"] & ~parents["deblend_failed"]
    return deblended ^ (parents["deblend_skipped"] | parents["deblend_failed"])


def test_detection_finds_the_blend_and_isolated_galaxies(detections):
    parents, peaks = detections.mergedDetections, detections.peaks
    assert len(parents) == 3
    assert sorted(parents["footprint_nPeaks"]) == [1, 1, 2]
    truth = np.array([s[:2] for s in SCENE])
    d = np.hypot(peaks["x"][:, None] - truth[None, :, 0], peaks["y"][:, None] - truth[None, :, 1])
    assert len(peaks) == 4 and np.all(d.min(axis=1) <= 1.0)  # patch pixels, xy0 included
    generator = PatchIdGenerator(release_id=0, tract=3, patch=7)
    np.testing.assert_array_equal(generator.counter(parents["id"]), [1, 2, 3])
    assert set(peaks["parent"]) == set(parents["id"])
    footprints = detections.footprints
    assert footprints.bbox == (XY0[0], XY0[1], XY0[0] + 100, XY0[1] + 100)
    for row in parents:
        label = footprints.label_of(row["id"])
        ys, xs = np.nonzero(footprints.labels == label)
        assert (xs.min() + XY0[0], xs.max() + 1 + XY0[0]) == (row["bbox_x0"], row["bbox_x1"])
        assert len(xs) == row["footprint_area"]
    assert all(peaks[f"merge_peak_{b}"].all() for b in "ugrizy")


def test_detection_keeps_one_peak_on_a_bright_noisy_galaxy():
    coadds = synthetic_coadds([(40, 40, 2e5, 4.0)], shape=(80, 80), noise=3.0, seed=9)
    found = detect(np.stack([c.image for c in coadds]), np.stack([c.variance for c in coadds]),
                   [c.psf for c in coadds])
    assert found.n_footprints == 1 and len(found.peaks) == 1


def test_detection_ignores_non_finite_pixels():
    coadds = synthetic_coadds(SCENE, shape=(100, 100), xy0=XY0, noise=1.0, seed=4)
    coadds[2].image[50, 50] = np.nan
    coadds[3].variance[10, 10] = np.inf
    result = DetectCoaddPeaksTask().run(coadds)
    assert len(result.mergedDetections) == 3 and np.isfinite(result.peaks["detection_snr"]).all()


def test_detection_helpers():
    mask = np.zeros((9, 9), dtype=bool)
    mask[4, 4] = True
    assert grow_mask(mask, 1.5).sum() == 9 and grow_mask(mask, 1.0).sum() == 5
    two = np.zeros((6, 9), dtype=bool)
    two[1:3, 1:3] = True
    two[3:5, 6:8] = True
    labels = label_regions(two)
    assert labels.max() == 2 and set(np.unique(labels[two])) == {1, 2}
    image = np.zeros((7, 7))
    image[3, 3], image[3, 5] = 2.0, 1.0
    assert np.argwhere(local_maxima(image, 1) & (image > 0)).tolist() == [[3, 3], [3, 5]]
    assert np.argwhere(local_maxima(image, 2) & (image > 0)).tolist() == [[3, 3]]


def test_ids():
    config = IdGeneratorConfig()
    config.release_id = 2
    generator = config.apply(tract=9813, patch=40)
    ids = generator.make(range(1, 4))
    assert ids.dtype == np.int64 and np.all(ids > 0) and np.all(np.diff(ids) == 1)
    np.testing.assert_array_equal(generator.counter(ids), [1, 2, 3])
    assert not set(ids) & set(config.apply(tract=9813, patch=41).make(range(1, 4)))
    with pytest.raises(ValueError):
        generator.make([0])


def test_deblend_outputs_and_conservation(coadds, detections):
    task, result = _deblend(coadds, detections)
    parents, objects, models = result.objectParents, result.deblendedCatalog, result.vaeModelData
    assert list(parents["id"]) == list(detections.mergedDetections["id"])
    assert _accounted(parents).all() and not parents["deblend_skipped"].any()
    assert sorted(parents["deblend_nChild"]) == [0, 0, 2]
    assert list(objects["id"]) == sorted(objects["id"]) and len(set(objects["id"])) == len(objects) == 4
    isolated = objects["parent"] == 0
    assert set(objects["id"][isolated]) == set(parents["id"][parents["deblend_nPeaks"] == 1])
    assert objects["id"][~isolated].min() > parents["id"].max()
    for band in "ugrizy":
        for row in parents:
            mine = (objects["parent"] == row["id"]) | (objects["id"] == row["id"])
            total = objects[f"deblend_conservedFlux_{band}"][mine].sum()
            np.testing.assert_allclose(total, row[f"deblend_parentFlux_{band}"], rtol=1e-5)
    assert models.bands == tuple("ugrizy") and set(models.blends) == set(parents["id"])
    children = models.children()
    assert set(children) == set(objects["id"])
    assert all(np.isfinite(child.model).all() for _, child in children.values())
    assert (parents["deblend_runtime"] > 0).all()


def test_deblend_limits(coadds, detections):
    _, result = _deblend(coadds, detections, maxNumberOfPeaks=1)
    parents, objects = result.objectParents, result.deblendedCatalog
    blend = parents["deblend_nPeaks"] == 2
    assert parents["deblend_skipped_tooManyPeaks"][blend].all() and parents["deblend_skipped"][blend].all()
    assert not (objects["parent"] != 0).any() and len(objects) == 2  # the isolated sources only
    assert _accounted(parents).all()

    _, result = _deblend(coadds, detections, maxFootprintArea=10)
    assert result.objectParents["deblend_skipped_parentTooBig"].all()

    _, result = _deblend(coadds, detections, processSingles=False)
    parents, objects = result.objectParents, result.deblendedCatalog
    single = parents["deblend_nPeaks"] == 1
    assert parents["deblend_skipped_isolatedParent"][single].all()
    assert not parents["deblend_skipped"][~single].any()
    kept = objects[objects["parent"] == 0]
    assert not kept["deblend_modelled"].any()
    for row in parents[single]:
        assert result.vaeModelData.blends[row["id"]].children == []
        mine = kept["id"] == row["id"]
        np.testing.assert_allclose(kept["deblend_conservedFlux_r"][mine], row["deblend_parentFlux_r"])


def test_deblend_masked_parent_is_skipped(detections):
    coadds = synthetic_coadds(SCENE, shape=(100, 100), xy0=XY0, noise=1.0, seed=4)
    for coadd in coadds:
        coadd.mask[:40, :40] |= 1 << coadd.mask_planes["BAD"]  # covers the first galaxy's footprint
    _, result = _deblend(coadds, detections)
    parents = result.objectParents
    masked = parents["deblend_skipped_masked"]
    assert masked.sum() == 1 and parents["deblend_maskedFraction"][masked][0] > 0.5
    assert _accounted(parents).all()


def test_deblend_failures_are_caught_per_parent(detections):
    coadds = synthetic_coadds(SCENE, shape=(100, 100), xy0=XY0, noise=1.0, seed=4)
    first = detections.peaks[0]
    for coadd in coadds:  # a pixel only the first parent's stamps are centred on
        coadd.image[first["y"] - XY0[1], first["x"] - XY0[0]] += 1e4
    model = GaussianStampModel(fail_above=5e3)
    _, result = _deblend(coadds, detections, model=model)
    parents = result.objectParents
    broken = parents["id"] == first["parent"]
    assert parents["deblend_failed"][broken].all() and parents["deblend_error"][broken][0] == "ValueError"
    assert not parents["deblend_failed"][~broken].any()
    assert sorted(parents["deblend_nChild"][~broken]) == [0, 2] and _accounted(parents).all()
    assert model.calls > 2  # the batch, then parent by parent
    with pytest.raises(ValueError, match="too bright"):
        _deblend(coadds, detections, model=GaussianStampModel(fail_above=5e3), catchFailures=False)

    # A model that returns NaN: that parent is flagged, not the others.
    _, result = _deblend(coadds, detections, model=GaussianStampModel(nan_above=5e3))
    parents = result.objectParents
    assert parents["deblend_failed"][broken].all() and parents["deblend_error"][broken][0] == "NonFiniteModel"
    assert not parents["deblend_failed"][~broken].any() and _accounted(parents).all()


def test_deblend_masks_non_finite_pixels(detections):
    coadds = synthetic_coadds(SCENE, shape=(100, 100), xy0=XY0, noise=1.0, seed=4)
    for coadd in coadds:
        coadd.image[60, 64] = np.nan  # inside the blend's footprint
    _, result = _deblend(coadds, detections)
    parents, objects = result.objectParents, result.deblendedCatalog
    assert not parents["deblend_failed"].any() and np.isfinite(parents["deblend_parentFlux_r"]).all()
    children = objects[objects["parent"] != 0]
    assert children["deblend_masked"].all() and np.isfinite(children["deblend_conservedFlux_r"]).all()
    meas = MeasureObjectUnforcedTask().run(coadds, objects, result.vaeModelData).outputCatalog
    np.testing.assert_allclose(meas["r_flux"], objects["deblend_conservedFlux_r"], rtol=1e-5)


def test_deblend_needs_the_network_bands(coadds, detections):
    with pytest.raises(ValueError, match="lacks"):
        VaeDeblendTask(model=GaussianStampModel(bands=("r", "N921"))).run(
            coadds, detections.mergedDetections, detections.peaks, detections.footprints)


def test_measurement(coadds, detections):
    _, deblended = _deblend(coadds, detections)
    objects = deblended.deblendedCatalog
    meas = MeasureObjectUnforcedTask().run(coadds, objects, deblended.vaeModelData).outputCatalog
    assert list(meas["id"]) == list(objects["id"])
    for band in "ugrizy":
        np.testing.assert_allclose(meas[f"{band}_flux"], objects[f"deblend_conservedFlux_{band}"], rtol=1e-5)
        np.testing.assert_allclose(meas[f"{band}_modelFlux"], objects[f"deblend_modelFlux_{band}"], rtol=1e-5)
        assert np.all(meas[f"{band}_fluxErr"] > 0)
    np.testing.assert_allclose(meas["r_mag"], 28.0 - 2.5 * np.log10(meas["r_flux"]))
    # Round galaxies: small shears; HSM centroids near the truth positions (patch pixels).
    assert np.all(np.abs(meas["r_hsmModel_g1"]) < 1e-3) and not meas["r_hsm_flag"].any()
    isolated = meas["parent"] == 0
    assert np.all(np.hypot(meas["r_hsm_g1"][isolated], meas["r_hsm_g2"][isolated]) < 0.1)
    truth = np.array([s[:2] for s in SCENE])
    d = np.hypot(meas["r_hsm_x"][:, None] - truth[None, :, 0], meas["r_hsm_y"][:, None] - truth[None, :, 1])
    assert np.all(d.min(axis=1) < 1.5)

    task = MeasureObjectUnforcedTask()
    task.config.doConserveFlux = False
    models_only = task.run(coadds, objects, deblended.vaeModelData).outputCatalog
    np.testing.assert_allclose(models_only["r_flux"], models_only["r_modelFlux"], rtol=1e-5)
    assert np.isnan(models_only["r_fluxErr"]).all()


def test_redistribute_adds_up_and_fills_unmodelled_pixels():
    rng = np.random.default_rng(0)
    image = rng.normal(5.0, 1.0, (2, 12, 16)).astype(np.float32)
    footprint = np.zeros((12, 16), dtype=bool)
    footprint[1:11, 1:15] = True
    models = [np.zeros((2, 5, 5), np.float32), np.zeros((2, 5, 5), np.float32)]
    models[0][:, 2, 2] = 1.0
    models[1][:, 1:4, 1:4] = 1.0
    shares = redistribute(image, footprint, models, [(1, 3), (10, 4)], np.array([[3.0, 5.0], [12.0, 6.0]]))
    np.testing.assert_allclose(shares.sum(axis=0), image * footprint, rtol=1e-6)
    assert np.all(shares[:, :, ~footprint] == 0)
    # A pixel no model reaches goes to the nearest peak.
    assert shares[0, 0, 9, 2] == pytest.approx(image[0, 9, 2]) and shares[1, 0, 9, 2] == 0


def test_an_empty_patch_goes_through():
    coadds = synthetic_coadds([], shape=(64, 64))
    detections = DetectCoaddPeaksTask().run(coadds)
    assert len(detections.mergedDetections) == 0 and len(detections.peaks) == 0
    task, result = _deblend(coadds, detections)
    assert len(result.deblendedCatalog) == len(result.objectParents) == 0
    assert "deblend_failed" in result.objectParents.colnames
    meas = MeasureObjectUnforcedTask().run(coadds, result.deblendedCatalog, result.vaeModelData)
    assert len(meas.outputCatalog) == 0 and "r_flux" in meas.outputCatalog.colnames

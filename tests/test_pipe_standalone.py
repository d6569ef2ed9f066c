"""The standalone pipeline end to end: a simulated 200x200 patch in a temporary butler repository,
``pipetask run`` of pipelines/demo.yaml (two worker processes), outputs read back and checked, and
``lsst.pipe.base.testUtils`` checks of every task.  The deblender is the shipped network
(``weights/lsst.safetensors``); model-dependent numbers are checked for properties only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lsst.pipe.base import testUtils

from lsst.meas.extensions.vae.pipe.standalone import (DetectCoaddPeaksTask, MeasureObjectUnforcedTask,
                                                      VaeDeblendTask, open_repo, read_outputs, run_demo)
from lsst.meas.extensions.vae.measure.matching import match_to_truth
from lsst.meas.extensions.vae.model.weights import read_metadata, shipped_weights_path

ORIGIN = (4000, 8000)
DATA_ID = {"skymap": "vae_sim", "tract": 0, "patch": 0}


@pytest.fixture(scope="module")
def weights():
    """The shipped weights, by path (as a user's config would name them)."""
    return shipped_weights_path("lsst")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, weights):
    out = tmp_path_factory.mktemp("demo")
    summary = run_demo(out, size=200, seed=0, weights=str(weights), jobs=2, origin=ORIGIN, progress=False,
                       verbose=False)
    return out, summary, read_outputs(summary["repo"])


def test_demo_summary_and_files(demo):
    out, summary, outputs = demo
    on_disk = json.loads((out / "summary.json").read_text())
    for key in ("n_parents", "n_children", "n_truth_matched", "flux_rel_abs_err_median", "e_abs_err_median",
                "seconds"):
        assert key in on_disk
    assert on_disk["n_parents"] == len(outputs["parents"]) > 5
    assert on_disk["n_children"] == len(outputs["objects"])
    assert (out / "patch.png").stat().st_size > 0 and (out / "residuals.png").stat().st_size > 0
    # Peaks come from detection: most objects lie on a truth galaxy, in patch (tract) pixels.
    assert summary["n_truth_matched"] >= 0.8 * summary["n_children"]
    assert outputs["coadds"][0].xy0 == ORIGIN


def test_every_parent_is_deblended_or_flagged(demo):
    _, _, outputs = demo
    parents, detections, objects = outputs["parents"], outputs["detections"], outputs["objects"]
    assert list(parents["id"]) == list(detections["id"])
    flagged = parents["deblend_skipped"] | parents["deblend_failed"]
    modelled_single = (parents["deblend_nPeaks"] == 1) & ~flagged
    deblended = (parents["deblend_nChild"] > 0) & ~flagged
    assert np.all(deblended | modelled_single | flagged)
    assert deblended.sum() >= 1  # the patch has blends
    assert not parents["deblend_failed"].any()  # the real network on a simulated patch: nothing fails
    modelled = objects[objects["deblend_modelled"]]
    assert len(modelled) > 0 and np.all(modelled["deblend_modelFlux_r"] > 0)
    # Objects: the children of deblended blends and every isolated source.
    children = objects[objects["parent"] != 0]
    assert set(children["parent"]) == set(parents["id"][deblended])
    for row in parents[deblended]:
        assert (children["parent"] == row["id"]).sum() == row["deblend_nChild"] == row["deblend_nPeaks"]
    assert set(objects["id"][objects["parent"] == 0]) == set(parents["id"][parents["deblend_nPeaks"] == 1])
    assert len(set(objects["id"])) == len(objects) and list(objects["id"]) == sorted(objects["id"])


def test_children_add_up_to_their_parent(demo):
    _, _, outputs = demo
    parents, objects, meas = outputs["parents"], outputs["objects"], outputs["measurement"]
    assert list(meas["id"]) == list(objects["id"])
    owner = np.where(objects["parent"] == 0, objects["id"], objects["parent"])
    done = ~parents["deblend_failed"] & ~parents["deblend_skipped"]
    assert done.sum() > 0
    for band in "ugrizy":
        for row in parents[done]:
            mine = owner == row["id"]
            expected = row[f"deblend_parentFlux_{band}"]
            scale = max(abs(expected), 1.0)
            assert abs(meas[f"{band}_flux"][mine].sum() - expected) < 1e-4 * scale
            assert abs(objects[f"deblend_conservedFlux_{band}"][mine].sum() - expected) < 1e-4 * scale


def test_model_data_read_back(demo, weights):
    _, summary, outputs = demo
    models, objects = outputs["models"], outputs["objects"]
    meta = read_metadata(weights)
    assert models.bands == tuple(json.loads(meta["bands"])) == tuple("ugrizy")
    assert models.metadata["stamp_size"] == int(meta["stamp_size"])
    assert models.metadata["weights_sha256"] == meta["sha256"]
    size = int(meta["stamp_size"])
    factor = dict(zip(objects["id"], objects["deblend_binFactor"]))  # a binned child's stamp is wider
    for parent_id, child in models.children().values():  # stamps clipped to the parent's box
        x0, y0, x1, y1 = models.blends[parent_id].bbox
        assert child.model.shape[0] == 6 and max(child.model.shape[1:]) <= size * factor[child.id]
        assert x0 <= child.bbox[0] < child.bbox[2] <= x1 and y0 <= child.bbox[1] < child.bbox[3] <= y1
        assert np.isfinite(child.model).all()
    assert set(models.children()) == set(objects["id"][objects["deblend_modelled"]])
    butler = open_repo(summary["repo"], collections=[summary["collection"]])
    some = sorted(models.blends)[:2]
    assert list(butler.get("object_vae_models", DATA_ID, parameters={"parents": some}).blends) == some


def test_match_to_truth_is_one_to_one():
    index = match_to_truth([0.0, 0.5, 10.0], [0.0, 0.0, 10.0], [0.4, 30.0], [0.0, 30.0], radius=2.0)
    assert index.tolist() == [-1, 0, -1]


@pytest.mark.parametrize("task_class", [DetectCoaddPeaksTask, VaeDeblendTask, MeasureObjectUnforcedTask])
def test_lint_connections(task_class):
    testUtils.lintConnections(task_class.ConfigClass.ConnectionsClass)


def test_run_test_quantum_and_valid_output(demo, weights):
    """testUtils.makeQuantum/runTestQuantum on copies of the inputs in a fresh run, then assertValidOutput on
    a real ``run``."""
    _, summary, outputs = demo
    butler = open_repo(summary["repo"], writeable=True, run="vae/testutils")
    bands = [c.band for c in outputs["coadds"]]
    for coadd in outputs["coadds"]:
        butler.put(coadd, "deep_coadd", DATA_ID, band=coadd.band)
    source = open_repo(summary["repo"], collections=[summary["collection"]])
    upstream = {"object_detection_merged": outputs["detections"], "object_detection_peaks": outputs["peaks"],
                "object_detection_footprints": source.get("object_detection_footprints", DATA_ID),
                "object_deblend": outputs["objects"], "object_vae_models": outputs["models"]}
    for name, value in upstream.items():
        butler.put(value, name, DATA_ID)
    band_ids = [dict(DATA_ID, band=b) for b in bands]

    detect = DetectCoaddPeaksTask()
    deblend = VaeDeblendTask(config=VaeDeblendTask.ConfigClass())
    deblend.config.weights = str(weights)
    measure = MeasureObjectUnforcedTask()
    io = {
        detect: {"coadds": band_ids, "mergedDetections": DATA_ID, "peaks": DATA_ID, "footprints": DATA_ID},
        deblend: {"coadds": band_ids, "mergedDetections": DATA_ID, "peaks": DATA_ID, "footprints": DATA_ID,
                  "deblendedCatalog": DATA_ID, "objectParents": DATA_ID, "vaeModelData": DATA_ID},
        measure: {"coadds": band_ids, "inputCatalog": DATA_ID, "vaeModelData": DATA_ID,
                  "outputCatalog": DATA_ID},
    }
    for task, ids in io.items():
        quantum = testUtils.makeQuantum(task, butler, DATA_ID, ids)
        run = testUtils.runTestQuantum(task, butler, quantum, mockRun=True)
        run.assert_called_once()
        kwargs = run.call_args.kwargs
        assert sorted(c.band for c in kwargs["coadds"]) == sorted(bands)
        if isinstance(task, DetectCoaddPeaksTask):
            assert (kwargs["tract"], kwargs["patch"]) == (0, 0)
            result = task.run(**kwargs)
            assert len(result.mergedDetections) == len(outputs["detections"])
        else:
            result = task.run(**kwargs)
        testUtils.assertValidOutput(task, result)

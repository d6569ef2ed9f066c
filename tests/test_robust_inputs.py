"""Bad inputs: through ``pipetask run`` of the standalone pipeline on simulated patches, and through the
tasks' ``run`` where a pipeline cannot produce the input (peaks outside the image, bands in another
order, weights for other stamps).  Each gives a per-object flag or a clear error naming the input; every
parent that goes in comes out; NaN appears only where a flag says why.  docs/robustness.md lists them.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from lsst.meas.extensions.vae.deblend.network import VaeDeblender
from lsst.meas.extensions.vae.pipe.standalone import (DetectCoaddPeaksTask, MeasureObjectUnforcedTask,
                                                      VaeDeblendTask, open_repo)
from lsst.meas.extensions.vae.pipe.standalone.repo import make_repo
from lsst.meas.extensions.vae.pipe.standalone.runner import PipetaskError, run_pipetask
from lsst.meas.extensions.vae.pipe.standalone.testing import simulated_coadds
from lsst.meas.extensions.vae.sim.patch import MASK_PLANES, PatchConfig, make_patch

BANDS = tuple("ugrizy")
XY0 = (300, 500)
SCENE = [(XY0[0] + 28, XY0[1] + 30), (XY0[0] + 100, XY0[1] + 36), (XY0[0] + 109, XY0[1] + 42),
         (XY0[0] + 34, XY0[1] + 106), (XY0[0] + 104, XY0[1] + 104), (XY0[0] + 111, XY0[1] + 99)]
OUTPUT = "vae/robust"


def check_outputs(detections: Table, parents: Table, objects: Table, measurement: Table,
                  missing: tuple[str, ...] = ()) -> None:
    """Every parent comes out, once; NaN only where a flag says why."""
    assert sorted(parents["id"]) == sorted(detections["id"])
    isolated = set(np.asarray(objects["id"][objects["parent"] == 0]).tolist())
    for row in parents:  # deblended, with an object per peak, or flagged with the reason
        n_objects = int(np.sum(objects["parent"] == row["id"])) + (int(row["id"]) in isolated)
        if row["deblend_failed"]:
            assert row["deblend_error"] != ""
        elif row["deblend_skipped"]:
            reasons = [row[name] for name in parents.colnames if name.startswith("deblend_skipped_")]
            assert any(reasons) or row["deblend_nPeaks"] == 0
        else:
            assert n_objects == row["deblend_nPeaks"] > 0
    assert list(measurement["id"]) == list(objects["id"])
    for name in objects.colnames:
        values = np.asarray(objects[name])
        if values.dtype.kind != "f":
            continue
        if name.startswith("deblend_modelFlux_"):
            assert np.isfinite(values[objects["deblend_modelled"]]).all(), name
        elif name == "deblend_peak_snr":
            continue  # as detection gives it
        else:
            assert np.isfinite(values).all(), name
    for band in BANDS:
        no_data = np.asarray(measurement[f"{band}_flag_noData"])
        np.testing.assert_array_equal(no_data, band in missing)
        for name in (f"{band}_flux", f"{band}_fluxErr"):
            np.testing.assert_array_equal(np.isfinite(measurement[name]), band not in missing, err_msg=name)
        mag = np.asarray(measurement[f"{band}_mag"])
        assert np.all(np.isfinite(mag) == (np.nan_to_num(measurement[f"{band}_flux"]) > 0))
    flag = np.asarray(measurement["r_hsm_flag"])
    assert np.all(np.isfinite(measurement["r_hsm_g1"]) == ~flag)


@pytest.fixture(scope="module")
def network(shipped_deblender):
    return shipped_deblender


@pytest.fixture(scope="module")
def scene():
    coadds, truth = simulated_coadds(SCENE, shape=(140, 140), xy0=XY0, seed=2)
    return coadds, DetectCoaddPeaksTask().run(coadds, tract=0, patch=0)


def _deblend(network, coadds, detections, peaks=None, **config):
    task = VaeDeblendTask(model=network)
    for key, value in config.items():
        setattr(task.config, key, value)
    return task.run(coadds, detections.mergedDetections, detections.peaks if peaks is None else peaks,
                    detections.footprints)


def test_robust_bands_in_another_order(network, scene):
    coadds, detections = scene
    straight = _deblend(network, coadds, detections)
    reverse = _deblend(network, coadds[::-1], detections)
    for name in straight.deblendedCatalog.colnames:
        np.testing.assert_array_equal(straight.deblendedCatalog[name], reverse.deblendedCatalog[name])


def test_robust_peaks_outside_the_image_and_their_footprint(network, scene):
    coadds, detections = scene
    peaks = detections.peaks.copy()
    blend_parent = next(int(p) for p in detections.mergedDetections["id"] if np.sum(peaks["parent"] == p) > 1)
    # A peak of a blend moved 7 px beyond the image's left edge, another of it onto a pixel outside its
    # footprint (the image corner, which no footprint reaches here).
    rows = np.flatnonzero(peaks["parent"] == blend_parent)
    x0, y0 = coadds[0].bbox[:2]
    assert detections.footprints.labels[0, 0] == 0
    peaks["x"][rows[0]], peaks["y"][rows[0]] = x0 - 7, y0 + 60
    peaks["x"][rows[1]], peaks["y"][rows[1]] = x0, y0
    result = _deblend(network, coadds, detections, peaks)
    objects = result.deblendedCatalog
    outside = objects[objects["deblend_peakId"] == peaks["id"][rows[0]]][0]
    off = objects[objects["deblend_peakId"] == peaks["id"][rows[1]]][0]
    assert outside["deblend_peakOutsideImage"] and not outside["deblend_peakOutsideFootprint"]
    assert (outside["deblend_center_x"], outside["deblend_center_y"]) == (x0 - 7, y0 + 60)  # not moved
    assert all(outside[f"deblend_modelFlux_{b}"] == 0 and outside[f"deblend_conservedFlux_{b}"] == 0
               for b in BANDS)
    assert off["deblend_peakOutsideFootprint"] and not off["deblend_peakOutsideImage"]
    others = objects[~objects["deblend_peakOutsideImage"] & ~objects["deblend_peakOutsideFootprint"]]
    assert not others["deblend_peakOutsideImage"].any()
    parent = result.objectParents[result.objectParents["id"] == blend_parent][0]
    assert not parent["deblend_failed"] and not parent["deblend_skipped"]
    children = objects[objects["parent"] == blend_parent]
    for band in BANDS:  # the blend's flux is still all given to its children
        assert np.sum(children[f"deblend_conservedFlux_{band}"]) == pytest.approx(
            parent[f"deblend_parentFlux_{band}"], rel=1e-5, abs=1e-2)
    meas = MeasureObjectUnforcedTask().run(coadds, objects, result.vaeModelData).outputCatalog
    check_outputs(detections.mergedDetections, result.objectParents, objects, meas)


def test_robust_weights_for_other_stamps_and_corrupt_weights(tiny_training, scene, tmp_path):
    coadds, detections = scene
    # Weights for 33-pixel stamps: the task follows the weights' stamp size.
    tiny = VaeDeblender(str(tiny_training["bundle"]), device="cpu")
    # The refinement (the default) needs the weights' refiner, which the tiny weights lack: one clear error.
    with pytest.raises(FileNotFoundError, match="refineSteps=0"):
        _deblend(tiny, coadds, detections)
    result = _deblend(tiny, coadds, detections, refineSteps=0)
    assert result.vaeModelData.metadata["stamp_size"] == 33
    assert len(result.objectParents) == len(detections.mergedDetections)
    data = (tiny_training["bundle"]).read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    altered = tmp_path / "altered.safetensors"
    changed = bytearray(data)
    changed[-100] ^= 0x55
    altered.write_bytes(bytes(changed))
    with pytest.raises(ValueError, match="truncated.safetensors cannot be read"):
        VaeDeblender(str(truncated), device="cpu")
    with pytest.raises(ValueError, match="altered.safetensors: tensors do not match"):
        VaeDeblender(str(altered), device="cpu")


@pytest.fixture(scope="module")
def bad_repo(tmp_path_factory):
    """A repository of five small patches, each with one kind of bad input, through one pipetask run.

    0: a NaN block and an infinite row in r and g;  1: negative variance over a region in g, zero in i;
    2: a bright galaxy's footprint masked EDGE in every band (detection uses those pixels, the deblender
    does not);  3: no u coadd;  4: nothing to detect.
    """
    root = tmp_path_factory.mktemp("robust")
    patches = [make_patch(PatchConfig(size=150, mag_max=25.0), seed=20 + k, progress=False) for k in range(5)]
    r = patches[0].band("r")
    cy, cx = np.unravel_index(np.argmax(r.image), r.image.shape)
    r.image[max(cy - 5, 0): cy + 5, max(cx - 5, 0): cx + 5] = np.nan
    patches[0].band("g").image[cy, :] = np.inf
    g = patches[1].band("g")
    g.variance[40:80, 40:80] = -g.variance[40:80, 40:80]
    patches[1].band("i").variance[90:120, 10:60] = 0.0
    r2 = patches[2].band("r")
    cy, cx = np.unravel_index(np.argmax(r2.image), r2.image.shape)
    for band in patches[2].bands:
        band.mask[max(cy - 30, 0): cy + 30, max(cx - 30, 0): cx + 30] |= 1 << MASK_PLANES["EDGE"]
    for band in patches[4].bands:
        band.image[:] = 0.0
    butler = make_repo(root / "repo", patches)
    refs = butler.query_datasets("deep_coadd", data_id={"patch": 3, "band": "u", "tract": 0,
                                                        "skymap": "vae_sim"}, explain=False)
    assert len(refs) == 1
    butler.pruneDatasets(refs, disassociate=True, unstore=True, purge=True)
    log = run_pipetask(root / "repo", "vae/inputs", OUTPUT, jobs=2, log_file=root / "pipetask.log",
                       register_dataset_types=True)
    return root, log


def test_robust_pipetask_bad_pixels_missing_band_masked_and_empty(bad_repo):
    root, log = bad_repo  # pipetask succeeded on every quantum (run_pipetask raises otherwise)
    butler = open_repo(root / "repo", collections=[OUTPUT])
    for patch in range(5):
        data_id = {"skymap": "vae_sim", "tract": 0, "patch": patch}
        detections = butler.get("object_detection_merged", data_id)
        parents = butler.get("object_parent_patch", data_id)
        objects = butler.get("object_deblend", data_id)
        measurement = butler.get("object_unforced_measurement", data_id)
        check_outputs(detections, parents, objects, measurement, missing=("u",) if patch == 3 else ())
        if patch == 0:
            assert objects["deblend_masked"].any()
        if patch == 1:
            assert objects["deblend_masked"].any()  # the regions without a positive variance
        if patch == 2:
            assert parents["deblend_skipped_masked"].any()
        if patch == 3:
            assert objects["deblend_missingBand"].all() and parents["deblend_missingBand"].all()
            assert np.all(objects["deblend_conservedFlux_u"] == 0)
            assert np.isfinite(measurement["r_flux"]).all()
        else:
            assert not objects["deblend_missingBand"].any()
        if patch == 4:
            assert len(detections) == len(parents) == len(objects) == 0
        else:
            assert len(objects) > 0


def test_robust_pipetask_refuses_corrupt_weights_naming_the_file(bad_repo, tmp_path):
    root, _ = bad_repo
    truncated = tmp_path / "lsst_truncated.safetensors"
    from lsst.meas.extensions.vae.model.weights import shipped_weights_path

    truncated.write_bytes(shipped_weights_path("lsst").read_bytes()[:4096])
    with pytest.raises(PipetaskError, match="lsst_truncated.safetensors cannot be read"):
        run_pipetask(root / "repo", "vae/inputs", "vae/robust-weights", jobs=1,
                     config={"deblendCoaddFootprints:weights": str(truncated)},
                     data_query="patch = 0", register_dataset_types=True)

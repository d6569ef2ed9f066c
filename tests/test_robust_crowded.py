"""Crowded parents: one footprint with many peaks goes through with the skip limits off, in waves of
non-overlapping peaks that give the same models as one peak at a time, and its children add up to it.
(The cluster-scale figures, 500-2,000 peaks over millions of pixels, come from bench/bench_crowded.py.)
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from lsst.meas.extensions.vae.deblend import field
from lsst.meas.extensions.vae.pipe.standalone import MeasureObjectUnforcedTask, VaeDeblendTask
from lsst.meas.extensions.vae.pipe.standalone.coadd import FootprintImage
from lsst.meas.extensions.vae.pipe.standalone.testing import simulated_coadds

SIDE = 150
N_PEAKS = 45


def _cluster():
    rng = np.random.default_rng(11)
    positions = rng.uniform(8, SIDE - 8, size=(N_PEAKS, 2))
    coadds, truth = simulated_coadds(positions, shape=(SIDE, SIDE), seed=11, mag_range=(20.0, 24.5))
    labels = np.ones((SIDE, SIDE), dtype=np.int32)  # one footprint: the whole field
    return coadds, positions, labels


def test_robust_waves_give_the_models_of_one_peak_at_a_time(tiny_deblender, monkeypatch):
    coadds, positions, labels = _cluster()
    image = np.stack([c.image for c in coadds])
    size = tiny_deblender.stamp_size
    centers = np.rint(positions).astype(np.int64)
    brightness = image.sum(axis=0)[centers[:, 1], centers[:, 0]]
    waves = field._waves(centers, brightness, size)
    assert waves.max() + 1 < N_PEAKS / 2  # far fewer network calls than peaks
    for k in range(N_PEAKS):  # every brighter overlapping peak is in an earlier wave
        near = np.all(np.abs(centers - centers[k]) < size, axis=1) & (brightness > brightness[k])
        assert np.all(waves[near] < waves[k])
    # The first pass's waves (binned stamps, which order their candidates by waves too, are left out).
    config = field.DeblendConfig(bin_large=False)
    in_waves, _ = field.deblend_field(image, positions, tiny_deblender, size, footprints=labels,
                                      config=config)
    monkeypatch.setattr(field, "_waves", lambda c, b, s: np.argsort(np.argsort(-b, kind="stable"),
                                                                    kind="stable"))
    one_by_one, _ = field.deblend_field(image, positions, tiny_deblender, size, footprints=labels,
                                        config=config)
    for a, b in zip(in_waves, one_by_one):
        np.testing.assert_array_equal(a.model, b.model)


def test_robust_crowded_parent_is_not_skipped(tiny_deblender):
    coadds, positions, labels = _cluster()
    footprints = FootprintImage(labels=labels, ids=np.array([7]), bbox=coadds[0].bbox)
    detections = Table({"id": np.array([7], dtype=np.int64), "footprint_area": np.array([labels.size])})
    peaks = Table({"id": np.arange(100, 100 + N_PEAKS, dtype=np.int64), "parent": np.full(N_PEAKS, 7),
                   "x": np.rint(positions[:, 0]).astype(np.int64),
                   "y": np.rint(positions[:, 1]).astype(np.int64)})
    skipping = VaeDeblendTask(model=tiny_deblender)
    skipping.config.refineSteps = 0  # the tiny weights have no refiner
    skipping.config.maxNumberOfPeaks = 40  # scarlet-like limits skip it
    skipped = skipping.run(coadds, detections, peaks, footprints)
    assert skipped.objectParents["deblend_skipped_tooManyPeaks"][0] and len(skipped.deblendedCatalog) == 0
    task = VaeDeblendTask(model=tiny_deblender)
    task.config.refineSteps = 0
    task.config.maxNumberOfPeaks = 0
    task.config.maxFootprintArea = 0
    result = task.run(coadds, detections, peaks, footprints)
    parent = result.objectParents[0]
    assert not parent["deblend_skipped"] and not parent["deblend_failed"]
    objects = result.deblendedCatalog
    assert len(objects) == N_PEAKS and parent["deblend_nChild"] == N_PEAKS
    for band in "ugrizy":
        np.testing.assert_allclose(np.sum(objects[f"deblend_conservedFlux_{band}"], dtype=np.float64),
                                   parent[f"deblend_parentFlux_{band}"], rtol=1e-5)
    measured = MeasureObjectUnforcedTask().run(coadds, objects, result.vaeModelData).outputCatalog
    np.testing.assert_allclose(measured["r_flux"], objects["deblend_conservedFlux_r"], rtol=1e-4, atol=1e-2)
    assert np.isfinite(measured["r_fluxErr"]).all()

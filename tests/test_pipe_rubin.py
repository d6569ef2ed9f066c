"""The Rubin drop-in task: its array parts (everywhere) and the task itself (only where afw is).

The first half needs no afw: cut-outs, the per-parent core call, the skip rules, the flux scale and
the export of the core's children in scarlet's model-data layout, and the DRP pipeline file; the core
runs the shipped network (``weights/lsst.safetensors``) on a simulated blend of two galaxies.  The second
half runs `VaeDeblendCoaddTask` on a small synthetic patch with real afw footprints and rebuilds the
HeavyFootprints with scarlet's own ``updateCatalogFootprints``; it is skipped where afw, meas_base or
meas_extensions_scarlet are missing (PyPI-only environments).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lsst.meas.extensions.vae.deblend.field import DeblendConfig, deblend_field
from lsst.meas.extensions.vae.pipe.rubin.blends import (
    blend_box, deblend_blend, electrons_per_nanojansky, masked_fraction, skip_reason, stamp_margin,
    touches_edge)
from lsst.meas.extensions.vae.pipe.rubin.modelData import (
    PSF_SIZE, crop_model, delta_psf, export_blend, model_metadata, trim_morph)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "config"

# A blend of two simulated galaxies (x, y) in a cut-out wider than the stamps around them, and a box
# footprint over both, (x0, y0, x1, y1).
CENTRES = ((70, 65), (79, 71))
SCENE_SHAPE = (130, 140)  # height, width
BLEND_BOX = (58, 53, 92, 84)


@pytest.fixture(scope="module")
def network():
    from lsst.meas.extensions.vae.deblend.network import VaeDeblender

    return VaeDeblender("lsst", device="cpu")


@pytest.fixture(scope="module")
def scene():
    """(image, variance) cubes (ugrizy, electrons) of two galaxies, the footprint and the peaks."""
    from lsst.meas.extensions.vae.pipe.standalone.testing import simulated_coadds

    coadds, _ = simulated_coadds(CENTRES, shape=SCENE_SHAPE, seed=3)
    footprint = np.zeros(SCENE_SHAPE, dtype=bool)
    x0, y0, x1, y1 = BLEND_BOX
    footprint[y0:y1, x0:x1] = True
    return (np.stack([c.image for c in coadds]), np.stack([c.variance for c in coadds]), footprint,
            np.array(CENTRES))


# ---------------------------------------------------------------------------------------------------------
# Array parts
# ---------------------------------------------------------------------------------------------------------

def test_delta_kernels_make_matching_a_no_op():
    psf = delta_psf()
    assert psf.shape == (PSF_SIZE, PSF_SIZE) and psf.sum() == 1 and psf[PSF_SIZE // 2, PSF_SIZE // 2] == 1
    meta = model_metadata(("g", "r", "i"))
    assert meta["bands"] == ("g", "r", "i")
    assert meta["psf"].shape == (3, PSF_SIZE, PSF_SIZE) and meta["psf"].dtype == np.float32
    for band_psf in meta["psf"]:
        np.testing.assert_array_equal(band_psf, meta["model_psf"])
    # The Fourier ratio scarlet uses to match the model PSF to each band's PSF is exactly 1.
    ratio = np.fft.fft2(meta["psf"][0]) / np.fft.fft2(meta["model_psf"])
    np.testing.assert_allclose(ratio, 1.0)
    with pytest.raises(ValueError):
        delta_psf(4)


def test_crop_model_inside_partly_and_outside():
    model = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    cropped, origin = crop_model(model, (10, 20), (0, 0, 100, 100))
    np.testing.assert_array_equal(cropped, model)
    assert origin == (10, 20)
    cropped, origin = crop_model(model, (10, 20), (12, 21, 100, 24))
    np.testing.assert_array_equal(cropped, model[:, 1:4, 2:])
    assert origin == (12, 21)
    cropped, origin = crop_model(model, (10, 20), (30, 30, 40, 40))
    assert cropped.shape == (2, 1, 1) and not cropped.any() and origin == (30, 30)


def test_trim_morph_zeroes_and_crops_below_the_floor():
    grid = np.arange(11) - 5
    morph = np.exp(-(grid[:, None] ** 2 + grid[None] ** 2) / 4.0).astype(np.float32)
    same, origin = trim_morph(morph, (100, 200), 0.0, (105, 205))
    assert same is not None and origin == (100, 200)
    np.testing.assert_array_equal(same, morph)
    floor = float(np.exp(-9 / 4.0)) * 1.0001  # keeps the pixels within a radius of 3: a 5x5 box
    trimmed, origin = trim_morph(morph, (100, 200), floor, (105, 205))
    assert trimmed.shape == (5, 5) and origin == (103, 203)
    np.testing.assert_array_equal(trimmed, np.where(morph >= floor, morph, 0)[3:8, 3:8])
    empty, origin = trim_morph(morph, (100, 200), 2.0, (300, 205))
    assert empty.shape == (1, 1) and not empty.any() and origin == (110, 205)


def test_blend_box_and_margin():
    config = DeblendConfig(max_centroid_shift=3.0, bin_large=False)
    assert stamp_margin(59, config) == 29 + 3 + 1
    assert stamp_margin(59, DeblendConfig(refine_centroids=False, bin_large=False)) == 30
    # A binned stamp (5 x 5 at most) reaches 5 * 59 // 2 = 147 pixels from its peak, 118 more.
    assert stamp_margin(59, DeblendConfig(max_centroid_shift=3.0)) == 147 + 3 + 1
    assert blend_box((10, 20, 30, 40), 5, (100, 200)) == (5, 15, 35, 45)
    assert blend_box((2, 3, 198, 99), 5, (100, 200)) == (0, 0, 200, 100)


def test_deblend_blend_matches_the_whole_field_call_and_moves_to_the_image_frame(network, scene):
    image, variance, footprint, peaks = scene
    stamp = network.stamp_size
    config = DeblendConfig(iterations=2, bin_large=False)  # a cut-out narrower than the binned stamps' reach
    whole_children, whole_parents = deblend_field(image, peaks, network, stamp,
                                                  footprints=footprint.astype(np.int32), config=config)
    box = blend_box(BLEND_BOX, stamp_margin(stamp, config), image.shape[1:])
    x0, y0, x1, y1 = box
    assert x0 > 0 and y0 > 0 and (x1, y1) != (SCENE_SHAPE[1], SCENE_SHAPE[0])  # a real cut-out
    result = deblend_blend(image[:, y0:y1, x0:x1], footprint[y0:y1, x0:x1], peaks - (x0, y0), network,
                           stamp, xy0=(x0, y0), variance=variance[:, y0:y1, x0:x1], config=config)
    assert result.parent.bbox == whole_parents[0].bbox == BLEND_BOX
    for cut, whole in zip(result.children, whole_children):
        assert cut.origin == whole.origin and cut.center == whole.center
        np.testing.assert_array_equal(cut.peak, whole.peak)
        np.testing.assert_allclose(cut.model, whole.model, rtol=1e-6)
        np.testing.assert_allclose(cut.flux_conserved, whole.flux_conserved, rtol=1e-6)
    # Conservation: the children add up to the parent inside the footprint.
    np.testing.assert_allclose(sum(c.flux_conserved for c in result.children), result.parent.flux, rtol=1e-5)
    assert np.isfinite(result.chi2) and result.chi2 > 0 and np.all(np.isfinite(result.child_chi2))
    # The network models both galaxies, on stamps within the centroid shift of their peaks.
    for child, peak in zip(result.children, peaks):
        assert np.isfinite(child.model).all() and np.all(child.flux_model > 0)
        shift = max(abs(child.center[0] - peak[0]), abs(child.center[1] - peak[1]))
        assert shift <= config.max_centroid_shift
        assert child.origin == (child.center[0] - stamp // 2, child.center[1] - stamp // 2)
    no_variance = deblend_blend(image[:, y0:y1, x0:x1], footprint[y0:y1, x0:x1], peaks - (x0, y0),
                                network, stamp, xy0=(x0, y0), config=config)
    assert np.isnan(no_variance.chi2)
    with pytest.raises(ValueError):
        deblend_blend(image, footprint[:-1], peaks, network, stamp)


def test_export_blend_layout_reproduces_every_model(network, scene):
    image, _, footprint, peaks = scene
    children, parents = deblend_field(image, peaks, network, network.stamp_size,
                                      footprints=footprint.astype(np.int32))
    bbox = parents[0].bbox
    x0, y0, x1, y1 = bbox
    xy0 = (1000, 2000)
    n_bands = len(network.bands)
    scale = np.array([2.0, 4.0, 0.5, 1.0, 3.0, 8.0])
    blend = export_blend(children, bbox, footprint[y0:y1, x0:x1], [np.int64(11), 12], [np.int64(0), 1],
                         blend_id=np.int64(7), xy0=xy0, scale=scale)
    assert list(blend["children"]) == [7] and type(next(iter(blend["children"]))) is int
    assert blend["metadata"]["origin"] == (y0 + 2000, x0 + 1000)
    np.testing.assert_array_equal(blend["metadata"]["spans"], footprint[y0:y1, x0:x1])
    child_blend = blend["children"][7]
    assert child_blend["origin"] == (y0 + 2000, x0 + 1000) and child_blend["shape"] == (y1 - y0, x1 - x0)
    assert list(child_blend["sources"]) == [11, 12]
    for k, (child_id, source) in enumerate(child_blend["sources"].items()):
        meta = source["metadata"]
        assert meta == {"id": child_id, "peak_id": k}
        assert all(type(v) is int for v in meta.values())
        json.dumps(meta)
        assert len(source["components"]) == n_bands
        expected, (mx, my) = crop_model(np.clip(children[k].model, 0, None), children[k].origin, bbox)
        for b, component in enumerate(source["components"]):
            np.testing.assert_array_equal(component["spectrum"], np.eye(n_bands, dtype=np.float32)[b])
            assert component["origin"] == (my + 2000, mx + 1000)
            assert component["peak"] == (int(peaks[k, 1]) + 2000, int(peaks[k, 0]) + 1000)
            assert component["morph"].dtype == np.float32
            np.testing.assert_allclose(component["morph"], expected[b] / scale[b], rtol=1e-6)
            # Inside the parent box.
            oy, ox = component["origin"]
            h, w = component["morph"].shape
            assert y0 + 2000 <= oy and oy + h <= y1 + 2000 and x0 + 1000 <= ox and ox + w <= x1 + 1000
        # Summing spectrum x morph over the components gives back the whole multi-band model.
        total = sum(c["spectrum"][:, None, None] * c["morph"][None] for c in source["components"])
        np.testing.assert_allclose(total, expected / scale[:, None, None], rtol=1e-6)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False


SCARLET_IO = all(_importable(name) for name in ("lsst.scarlet.lite", "lsst.meas.extensions.scarlet"))


@pytest.mark.skipif(not SCARLET_IO, reason="scarlet_lite and meas_extensions_scarlet are Rubin-stack only")
def test_model_data_round_trips_through_scarlets_io(network, scene):
    """The wrapped model data goes through the installed io's as_dict / JSON / from_dict unchanged, and is
    of the types that io's readers take (typed PSFs and LsstHierarchicalBlendData where it has them)."""
    import lsst.scarlet.lite as scl
    from lsst.meas.extensions.scarlet import io
    from lsst.meas.extensions.vae.pipe.rubin.scarletData import (makeModelData, modelPsfArrays,
                                                                 toScarletBlendData, typedModelData)

    image, _, footprint, peaks = scene
    children, parents = deblend_field(image, peaks, network, network.stamp_size,
                                      footprints=footprint.astype(np.int32))
    x0, y0, x1, y1 = bbox = parents[0].bbox
    bands = tuple(network.bands)
    blend = export_blend(children, bbox, footprint[y0:y1, x0:x1], [11, 12], [0, 1], blend_id=7,
                         xy0=(1000, 2000), floor=[0.01] * len(bands))
    modelData = makeModelData(bands)
    modelData.blends[5] = toScarletBlendData(blend)
    modelData.isolated[3] = io.IsolatedSourceData(span_array=np.ones((3, 4), dtype=bool), origin=(2005, 1010),
                                                  peak=(2006, 1011))
    hierarchical = modelData.blends[5]
    if hasattr(io, "LsstHierarchicalBlendData"):
        assert isinstance(hierarchical, io.LsstHierarchicalBlendData)
        np.testing.assert_array_equal(hierarchical.span_array, footprint[y0:y1, x0:x1])
        assert tuple(hierarchical.origin) == (y0 + 2000, x0 + 1000)
    else:
        assert isinstance(hierarchical, scl.io.HierarchicalBlendData)
    if typedModelData():
        assert not modelData.legacy and modelData.bands == bands
        assert modelData.model_psf.data.shape == (1, PSF_SIZE, PSF_SIZE) and modelData.model_psf.bands == ()
        assert modelData.psf.bands == bands
    again = io.LsstScarletModelData.from_dict(json.loads(json.dumps(modelData.as_dict())))
    assert set(again.blends) == {5} and set(again.isolated) == {3}
    assert type(again.blends[5]) is type(hierarchical)
    modelPsf, psf, got = modelPsfArrays(modelData)
    modelPsf2, psf2, got2 = modelPsfArrays(again)
    assert got == got2 == bands and psf2.shape == (len(bands), PSF_SIZE, PSF_SIZE)
    np.testing.assert_array_equal(modelPsf2, modelPsf)
    np.testing.assert_array_equal(psf2, psf)
    np.testing.assert_array_equal(modelPsf2, delta_psf())
    # JSON keys come back as strings; downstream finds each child by its metadata id.
    sources = {int(key): source for key, source in again.blends[5].children[7].sources.items()}
    assert set(sources) == {11, 12}
    for k, (child_id, source) in enumerate(sorted(sources.items())):
        assert source.metadata == {"id": child_id, "peak_id": k}
        stored = blend["children"][7]["sources"][child_id]["components"]
        assert len(source.components) == len(bands)
        for component, expected in zip(source.components, stored):
            assert tuple(component.origin) == expected["origin"] and tuple(component.peak) == expected["peak"]
            np.testing.assert_allclose(component.morph, expected["morph"], rtol=1e-6)
            np.testing.assert_array_equal(component.spectrum, expected["spectrum"])
    isolated = again.isolated[3]
    assert tuple(isolated.origin) == (2005, 1010) and tuple(isolated.peak) == (2006, 1011)
    assert np.asarray(isolated.span_array).astype(bool).all()


def test_export_blend_floor_trims_each_band(network, scene):
    image, _, _, peaks = scene
    children, parents = deblend_field(image, peaks, network, network.stamp_size)
    bbox = (50, 45, 100, 92)
    x0, y0, x1, y1 = bbox
    spans = np.ones((y1 - y0, x1 - x0), dtype=bool)
    # A different fraction of each band's brightest model pixel.
    brightest = np.max([c.model.max(axis=(1, 2)) for c in children], axis=0)
    floor = brightest * np.linspace(0.05, 0.3, len(brightest))
    blend = export_blend(children, bbox, spans, [1, 2], [0, 1], blend_id=1, floor=floor)
    for k, source in enumerate(blend["children"][1]["sources"].values()):
        full, (mx, my) = crop_model(np.clip(children[k].model, 0, None), children[k].origin, bbox)
        for b, component in enumerate(source["components"]):
            expected = np.where(full[b] >= floor[b], full[b], 0)
            rebuilt = np.zeros_like(expected)
            oy, ox = component["origin"]
            h, w = component["morph"].shape
            rebuilt[oy - my:oy - my + h, ox - mx:ox - mx + w] = component["morph"]
            np.testing.assert_array_equal(rebuilt, expected)
            assert component["morph"].size < full[b].size


def test_export_blend_band_subset_and_conserved_images(network, scene):
    image, _, footprint, peaks = scene
    children, parents = deblend_field(image, peaks, network, network.stamp_size,
                                      footprints=footprint.astype(np.int32))
    bbox = parents[0].bbox
    x0, y0, x1, y1 = bbox
    blend = export_blend(children, bbox, footprint[y0:y1, x0:x1], [1, 2], [0, 1], blend_id=1,
                         images=parents[0].conserved, band_index=[1])
    sources = blend["children"][1]["sources"]
    for k, source in enumerate(sources.values()):
        (component,) = source["components"]
        np.testing.assert_array_equal(component["spectrum"], [1.0])
        assert component["origin"] == (y0, x0)
        np.testing.assert_array_equal(component["morph"], parents[0].conserved[k, 1])
    # The stored conserved images add up to the observed image in the footprint.
    total = sum(s["components"][0]["morph"] for s in sources.values())
    np.testing.assert_allclose(total, image[1, y0:y1, x0:x1] * footprint[y0:y1, x0:x1], rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError):
        export_blend(children, bbox, footprint, [1, 2], [0, 1], blend_id=1)
    with pytest.raises(ValueError):
        export_blend(children, bbox, footprint[y0:y1, x0:x1], [1], [0, 1], blend_id=1)


def test_skip_rules_follow_scarlets_order():
    base = dict(n_peaks=3, bbox_area=100, bbox_size=10, is_pseudo=False, masked={}, max_peaks=600,
                max_area=2_000_000, max_size=0, mask_limits={})
    assert skip_reason(**base) is None
    assert skip_reason(**{**base, "is_pseudo": True, "n_peaks": 1000}) == "deblend_skipped_isPseudo"
    assert skip_reason(**{**base, "bbox_area": 3_000_000, "n_peaks": 1000}) == "deblend_skipped_parentTooBig"
    assert skip_reason(**{**base, "bbox_size": 50, "max_size": 40}) == "deblend_skipped_parentTooBig"
    assert skip_reason(**{**base, "max_area_times_peaks": 299}) == "deblend_skipped_parentTooBig"
    assert skip_reason(**{**base, "max_area_times_peaks": 300}) is None
    assert skip_reason(**{**base, "masked": {"SAT": 0.5}, "mask_limits": {"SAT": 0.1}, "n_peaks": 1000}) \
        == "deblend_skipped_masked"
    assert skip_reason(**{**base, "masked": {"SAT": 0.05}, "mask_limits": {"SAT": 0.1}}) is None
    assert skip_reason(**{**base, "n_peaks": 601}) == "deblend_skipped_tooManyPeaks"
    assert skip_reason(**{**base, "n_peaks": 601, "max_peaks": 0, "max_area": 0, "bbox_area": 10**9}) is None
    footprint = np.zeros((4, 4), bool)
    footprint[:2] = True
    masked = np.zeros((4, 4), bool)
    masked[0, :2] = True
    assert masked_fraction(footprint, masked) == 0.25
    assert masked_fraction(np.zeros((2, 2), bool), masked[:2, :2]) == 0.0


def test_skip_rules_are_one_set():
    """The vectorised rules the standalone task calls give what the Rubin task's per-parent call gives."""
    from lsst.meas.extensions.vae.deblend.skip import SKIP_FLAGS, SkipLimits, skip_reasons

    rng = np.random.default_rng(3)
    n = 400
    n_peaks = rng.integers(0, 12, n)
    area = rng.integers(1, 4000, n)
    size = rng.integers(1, 80, n)
    pseudo = rng.random(n) < 0.1
    masked = {"BAD": rng.random(n), "SAT": rng.random(n)}
    ratio = rng.random(n)
    limits = SkipLimits(max_peaks=8, max_area=3000, max_size=70, max_area_times_peaks=20_000,
                        mask_limits={"BAD": 0.8, "SAT": 0.9}, min_axis_ratio=0.05)
    flags = skip_reasons(n_peaks=n_peaks, bbox_area=area, bbox_size=size, is_pseudo=pseudo, masked=masked,
                         axis_ratio=ratio, limits=limits)
    for k in range(n):
        one = skip_reason(n_peaks=int(n_peaks[k]), bbox_area=int(area[k]), bbox_size=int(size[k]),
                          is_pseudo=bool(pseudo[k]), masked={p: float(v[k]) for p, v in masked.items()},
                          max_peaks=8, max_area=3000, max_size=70, max_area_times_peaks=20_000,
                          mask_limits={"BAD": 0.8, "SAT": 0.9}, axis_ratio=float(ratio[k]),
                          min_axis_ratio=0.05)
        assert (one or "") == flags[k]
    assert set(flags) - {""} <= set(SKIP_FLAGS) and len(set(flags)) == 5
    # Without axis ratios the axis-ratio limit does not apply; a mask limit of 0 is "not one pixel".
    assert skip_reason(n_peaks=2, bbox_area=10, bbox_size=5, is_pseudo=False, masked={}, max_peaks=0,
                       max_area=0, max_size=0, mask_limits={}, min_axis_ratio=0.5) is None
    flag = skip_reason(n_peaks=2, bbox_area=10, bbox_size=5, is_pseudo=False, masked={"BAD": 0.01},
                       max_peaks=0, max_area=0, max_size=0, mask_limits={"BAD": 0.0})
    assert flag == "deblend_skipped_masked"


def test_override_files_set_known_fields():
    """The pex_config override files of config/ set fields that exist (the VAE's checked without afw)."""
    from types import SimpleNamespace

    from lsst.meas.extensions.vae.pipe.rubin.vaeConfig import VaeDeblendConfig

    files = sorted(CONFIG_DIR.rglob("*.py"))
    assert {f.relative_to(CONFIG_DIR).as_posix() for f in files} >= {
        "LSSTCam/deblendCoaddFootprints.py", "vaeEncoderOnly.py", "vaeFit.py", "vaeRefine.py"}
    scarletFields = {"maxNumberOfPeaks", "maxFootprintArea", "maxAreaTimesPeaks", "badMask", "pseudoColumns",
                     "persistIsolated", "catchFailures", "maskLimits", "maxFootprintSize", "processSingles"}
    for path in files:
        vae = VaeDeblendConfig()
        multiband = SimpleNamespace()
        exec(compile(path.read_text(), str(path), "exec"), {"config": SimpleNamespace(vae=vae,
                                                                                      multibandDeblend=multiband)})
        vae.validate()
        assert set(vars(multiband)) <= scarletFields, path
    fit, fast, refine = VaeDeblendConfig(), VaeDeblendConfig(), VaeDeblendConfig()
    for config, name in ((fit, "vaeFit.py"), (fast, "vaeEncoderOnly.py"), (refine, "vaeRefine.py")):
        exec((CONFIG_DIR / name).read_text(), {"config": SimpleNamespace(vae=config)})
    assert fit.fitSteps == 60 and fast.fitSteps == 0 and fast.refineSteps == 0
    assert refine.refineSteps == 2 and refine.fitSteps == 0
    assert refine.deblendConfig().refine_steps == 2
    both = VaeDeblendConfig()
    both.fitSteps, both.refineSteps = 60, 2
    with pytest.raises(Exception, match="alternatives"):
        both.validate()


# Top-level Rubin packages imported by pipe/rubin/ and their eups names.
EUPS_NAMES = {"lsst.afw": "afw", "lsst.geom": "geom", "lsst.meas.base": "meas_base",
              "lsst.meas.extensions.scarlet": "meas_extensions_scarlet", "lsst.scarlet.lite": "scarlet_lite",
              "lsst.pex.config": "pex_config", "lsst.pipe.base": "pipe_base", "lsst.utils": "utils",
              "lsst.daf.butler": "daf_butler"}


def test_table_names_every_rubin_package_the_task_imports():
    import ast
    import re

    table = (REPO / "ups" / "meas_extensions_vae.table").read_text()
    declared = set(re.findall(r"^setup(?:Required|Optional)\((\w+)\)", table, flags=re.M))
    imported = set()
    for path in (REPO / "python/lsst/meas/extensions/vae/pipe/rubin").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                     # importlib.import_module("lsst...."), the lazy imports
                     else [node.args[0].value] if (isinstance(node, ast.Call) and node.args
                                                   and isinstance(node.args[0], ast.Constant)
                                                   and isinstance(node.args[0].value, str)
                                                   and getattr(node.func, "attr", "") == "import_module")
                     else [])
            imported.update(n for n in names if n and n.startswith("lsst."))
    packages = {eups for prefix, eups in EUPS_NAMES.items()
                if any(n == prefix or n.startswith(prefix + ".") for n in imported)}
    unknown = {n for n in imported if not any(n == p or n.startswith(p + ".") for p in EUPS_NAMES)}
    assert not unknown, unknown
    assert {"afw", "meas_base", "meas_extensions_scarlet", "scarlet_lite", "pipe_base"} <= packages
    assert packages <= declared, packages - declared


def test_optional_modules_are_not_needed_to_load_the_task(tmp_path):
    """torch, GalSim and surveycodex are loaded only where used: the task's modules import without them."""
    blocked = ("torch", "galsim", "surveycodex", "safetensors", "h5py", "sep")
    # Packages of those names that fail to import, first on the path: as if not installed to whatever
    # imports them (a None in sys.modules would look installed to libraries that probe sys.modules, e.g.
    # scipy's array-API check under meas_base).
    for name in blocked:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked')\n")
    probe = (
        "import sys\n"
        "import importlib.util\n"
        "import lsst.meas.extensions.vae.pipe.rubin as rubin\n"
        "import lsst.meas.extensions.vae.deblend.skip, lsst.meas.extensions.vae.pipe.rubin.vaeConfig\n"
        "rubin.vaeConfig.VaeDeblendConfig().validate()\n"
        "if importlib.util.find_spec('lsst.afw') is not None:\n"
        "    from lsst.meas.extensions.vae.pipe.rubin import deblendTask\n"
        "    deblendTask.VaeDeblendCoaddConfig().validate()\n"
        f"assert not any(name.split('.')[0] in {blocked!r} for name in sys.modules)\n"
        "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.strip().endswith("ok")


def test_touches_edge(network, scene):
    image, _, _, peaks = scene
    children, _ = deblend_field(image, peaks[:1], network, network.stamp_size)
    child = children[0]
    whole = (0, 0, SCENE_SHAPE[1], SCENE_SHAPE[0])
    assert not child.edge and not touches_edge(child, whole)  # the box holds the whole stamp
    x, y = child.center
    assert touches_edge(child, (x - 3, y - 8, x + 5, y + 8))  # the galaxy crosses x - 3 and x + 4
    child.edge = True
    assert touches_edge(child, whole)


def test_electrons_per_nanojansky_matches_the_training_zero_points():
    from lsst.meas.extensions.vae.surveys import get_survey

    scale = electrons_per_nanojansky(["u", "g", "r", "i", "z", "y"])
    assert scale.shape == (6,) and np.all(scale > 0)
    survey = get_survey("lsst")
    for band, factor in zip("ugrizy", scale):
        # A 24th-magnitude source: 10**(0.4 * (31.4 - 24)) nJy, and the survey's electrons for it.
        nanojansky = 10 ** (0.4 * (31.4 - 24.0))
        np.testing.assert_allclose(nanojansky * factor, survey.band(band).mag_to_electrons(24.0), rtol=1e-12)


def test_package_imports_without_afw():
    code = ("import sys, lsst.meas.extensions.vae.pipe.rubin as r; "
            "print(any(m.startswith(('lsst.afw', 'lsst.scarlet', 'torch')) for m in sys.modules)); "
            "print('VaeDeblendCoaddTask' in dir(r))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "True"]


def test_drp_pipeline_swaps_the_deblender_class_and_restates_the_overrides():
    pipeline = yaml.safe_load((REPO / "pipelines" / "DRP-vae.yaml").read_text())
    assert pipeline["imports"] == [{"location": "$DRP_PIPE_DIR/pipelines/LSSTCam/DRP.yaml"}]
    assert list(pipeline["tasks"]) == ["deblendCoaddFootprints"]
    task = pipeline["tasks"]["deblendCoaddFootprints"]
    # The package-level lazy name of lsst.meas.extensions.vae.pipe.rubin.deblendTask.VaeDeblendCoaddTask.
    assert task["class"] == "lsst.meas.extensions.vae.VaeDeblendCoaddTask"
    # Every override drp_pipe (a5ef3ba, pipelines/_ingredients/base-v2.yaml) sets on this label.
    assert task["config"] == {
        "useCellCoadds": "parameters.use_cell_coadds",
        "idGenerator.release_id": "parameters.release_id",
        "connections.inputSchema": "object_detection_merged_schema",
        "connections.peakSchema": "object_detection_peak_schema",
        "connections.mergedDetections": "object_detection_merged",
        "connections.coadds": "deep_coadd",
        "connections.coadds_cell": "deep_coadd_cell_predetection",
        "connections.backgrounds": "deep_coadd_background",
        "connections.outputSchema": "object_deblend_schema",
        "connections.deblendedCatalog": "object_deblend",
        "connections.scarletModelData": "object_scarlet_models",
    }
    module = REPO / "python/lsst/meas/extensions/vae/pipe/rubin/deblendTask.py"
    assert "class VaeDeblendCoaddTask(pipeBase.PipelineTask)" in module.read_text()


def test_drp_pipeline_resolves_with_pipe_base(tmp_path, monkeypatch):
    """pipe_base's own parser: the re-declared label takes our class and drops the imported config."""
    from lsst.pipe.base.pipelineIR import PipelineIR

    drp = tmp_path / "pipelines" / "LSSTCam"
    drp.mkdir(parents=True)
    (drp / "DRP.yaml").write_text(yaml.safe_dump({
        "description": "stand-in for drp_pipe's LSSTCam DRP",
        "parameters": {"release_id": 0, "use_cell_coadds": True},
        "tasks": {
            "deblendCoaddFootprints": {
                "class": "lsst.pipe.tasks.deblendCoaddSourcesPipeline.DeblendCoaddSourcesMultiTask",
                "config": {"multibandDeblend.maxIter": 10, "connections.coadds": "deep_coadd"}},
            "measureObjectUnforced": {"class": "lsst.pipe.tasks.multiBand.MeasureMergedCoaddSourcesTask"}},
        "subsets": {"stage3-coadd": ["deblendCoaddFootprints", "measureObjectUnforced"]},
    }))
    monkeypatch.setenv("DRP_PIPE_DIR", str(tmp_path))
    ir = PipelineIR.from_uri(str(REPO / "pipelines" / "DRP-vae.yaml"))
    task = ir.tasks["deblendCoaddFootprints"]
    assert task.klass == "lsst.meas.extensions.vae.VaeDeblendCoaddTask"
    overrides = {k: v for block in task.config for k, v in block.rest.items()}
    assert "multibandDeblend.maxIter" not in overrides
    assert overrides["connections.scarletModelData"] == "object_scarlet_models"
    assert dict(ir.parameters.mapping) == {"release_id": 0, "use_cell_coadds": True}
    assert "deblendCoaddFootprints" in ir.labeled_subsets["stage3-coadd"].subset


# ---------------------------------------------------------------------------------------------------------
# The task (Rubin stack only)
# ---------------------------------------------------------------------------------------------------------

STACK = all(_importable(name) for name in
            ("lsst.afw", "lsst.meas.base", "lsst.meas.extensions.scarlet", "lsst.scarlet.lite"))
stack = pytest.mark.skipif(not STACK,
                           reason="afw, meas_base and meas_extensions_scarlet are Rubin-stack only")

XY0 = (1000, 2000)
SHAPE = (90, 120)  # height, width


def _schemas():
    import lsst.afw.detection as afwDet
    import lsst.afw.table as afwTable

    schema = afwTable.SourceTable.makeMinimalSchema()
    schema.addField("merge_footprint_r", type="Flag", doc="detected in r")
    peakSchema = afwDet.PeakTable.makeMinimalSchema()
    peakSchema.addField("merge_peak_sky", type="Flag", doc="sky object")
    peakSchema.addField("merge_peak_r", type="Flag", doc="peak in r")
    return schema, peakSchema


def _patch(bands):
    """Coadds (nJy) of three galaxies, a lone galaxy, a sky object and a crowded parent, with the merged
    detections as mergeDetections would write them."""
    import lsst.afw.detection as afwDet
    import lsst.afw.geom as afwGeom
    import lsst.afw.image as afwImage
    import lsst.afw.table as afwTable
    import lsst.geom as geom

    bbox = geom.Box2I(geom.Point2I(*XY0), geom.Extent2I(SHAPE[1], SHAPE[0]))
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]] + np.array(XY0[::-1])[:, None, None]
    galaxies = [(1030, 2030, 300.0), (1037, 2033, 200.0), (1090, 2060, 250.0), (1065, 2020, 0.0),
                (1080, 2015, 150.0), (1084, 2018, 120.0), (1088, 2013, 100.0)]
    rng = np.random.default_rng(1)
    coadds = []
    for k, band in enumerate(bands):
        exposure = afwImage.ExposureF(bbox)
        image = np.zeros(SHAPE, dtype=np.float32)
        for x, y, flux in galaxies:
            image += flux * (1 + 0.1 * k) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.5**2))
        exposure.image.array[:] = image + rng.normal(0, 1.0, SHAPE)
        exposure.variance.array[:] = 1.0
        exposure.setPhotoCalib(afwImage.PhotoCalib(1.0))
        coadds.append(exposure)

    schema, peakSchema = _schemas()
    table = afwTable.SourceTable.make(schema, afwTable.IdFactory.makeSimple())
    catalog = afwTable.SourceCatalog(table)

    def add(circles, sky=False):
        spans = afwGeom.SpanSet()
        for x, y, r in circles:
            spans = spans.union(afwGeom.SpanSet.fromShape(r).shiftedBy(x, y))
        footprint = afwDet.Footprint(spans.clippedTo(bbox), peakSchema)
        for x, y, r in circles:
            peak = footprint.addPeak(x, y, 1.0)
            peak.set("merge_peak_sky", sky)
            peak.set("merge_peak_r", True)
        record = catalog.addNew()
        record.setFootprint(footprint)
        record.set("merge_footprint_r", True)
        return record

    add([(1030, 2030, 9), (1037, 2033, 9)])  # a blend of two
    add([(1090, 2060, 8)])  # isolated
    add([(1065, 2020, 4)], sky=True)  # sky object
    add([(1080, 2015, 6), (1084, 2018, 6), (1088, 2013, 6)])  # three peaks
    return coadds, catalog, afwTable.SourceCatalog(schema), afwDet.PeakCatalog(peakSchema)


@pytest.fixture(scope="module")
def stack_run():
    if not STACK:
        pytest.skip("Rubin stack only")
    import lsst.afw.table as afwTable
    from lsst.meas.extensions.vae.pipe.rubin.deblendTask import VaeDeblendCoaddConfig, VaeDeblendCoaddTask

    config = VaeDeblendCoaddConfig()
    config.vae.device = "cpu"
    # A scarlet override, as a user's -c deblendCoaddFootprints:multibandDeblend.maxNumberOfPeaks=2 gives:
    config.loadFromString("config.multibandDeblend.maxNumberOfPeaks = 2")  # the three-peak parent skips
    task = VaeDeblendCoaddTask(initInputs=_initInputs(), config=config)
    coadds, catalog, _, _ = _patch(list(task.model.bands))
    result = task.run(coadds=coadds, bands=list(task.model.bands), mergedDetections=catalog,
                      idFactory=afwTable.IdFactory.makeSimple())
    return task, coadds, catalog, result


def _initInputs():
    import lsst.afw.detection as afwDet
    import lsst.afw.table as afwTable

    schema, peakSchema = _schemas()
    return {"inputSchema": afwTable.SourceCatalog(schema), "peakSchema": afwDet.PeakCatalog(peakSchema)}


@stack
def test_connections_follow_use_cell_coadds():
    from lsst.meas.extensions.vae.pipe.rubin.deblendTask import (VaeDeblendCoaddConfig,
                                                                 VaeDeblendCoaddConnections)

    config = VaeDeblendCoaddConfig()
    connections = VaeDeblendCoaddConnections(config=config)
    assert "coadds" in connections.inputs and "coadds_cell" not in connections.inputs
    assert "backgrounds" not in connections.inputs and "deconvolvedCoadds" not in connections.inputs
    assert connections.dimensions == {"tract", "patch", "skymap"}
    config.useCellCoadds = True
    connections = VaeDeblendCoaddConnections(config=config)
    assert {"coadds_cell", "backgrounds"} <= connections.inputs and "coadds" not in connections.inputs
    assert connections.outputs == {"deblendedCatalog", "scarletModelData", "objectParents"}
    assert connections.scarletModelData.storageClass == "LsstScarletModelData"


@stack
def test_schema_has_scarlets_columns(stack_run):
    task, *_ = stack_run
    objects = task.objectSchema
    for name, kind in [("deblend_peak_center_x", "I"), ("deblend_peak_center_y", "I"),
                       ("deblend_nChild", "I"), ("deblend_peakId", "I"), ("deblend_peak_instFlux", "D"),
                       ("deblend_scarletFlux", "F"), ("deblend_edgePixels", "Flag"),
                       ("deblend_dataCoverage", "F"), ("deblend_zeroFlux", "Flag"),
                       ("deblend_binned", "Flag"), ("deblend_maxOverlap", "F"), ("deblend_fluxOverlap", "F"),
                       ("deblend_fluxOverlapFraction", "F"), ("deblend_blendedness", "F"),
                       ("deblend_blendId", "L"), ("deblend_blendNChild", "I"), ("deblend_parentNPeaks", "I"),
                       ("deblend_parentNChild", "I"), ("deblend_nComponents", "I"), ("deblend_chi2", "F"),
                       ("merge_peak_sky", "Flag"), ("merge_footprint_r", "Flag")]:
        assert objects.find(name).field.getTypeString() == kind, name
    parents = task.parentSchema
    for name, kind in [("deblend_runtime", "F"), ("deblend_iterations", "I"), ("deblend_nChild", "I"),
                       ("deblend_nPeaks", "I"), ("deblend_skipped", "Flag"),
                       ("deblend_skipped_isolatedParent", "Flag"), ("deblend_skipped_isPseudo", "Flag"),
                       ("deblend_skipped_tooManyPeaks", "Flag"), ("deblend_skipped_parentTooBig", "Flag"),
                       ("deblend_skipped_masked", "Flag"), ("deblend_failed", "Flag"),
                       ("deblend_childFailed", "Flag"), ("deblend_incompleteData", "Flag"),
                       ("deblend_error", "String"), ("deblend_nComponents", "I"), ("deblend_chi2", "F"),
                       ("merge_peak_sky", "Flag")]:
        assert parents.find(name).field.getTypeString() == kind, name
    assert parents.find("deblend_error").field.getSize() == 25
    assert task.outputSchema.schema == task.objectSchema


def _blendRecords(parents, parentId):
    return [p for p in parents if p["parent"] == parentId]


@stack
def test_catalogs(stack_run):
    task, coadds, catalog, result = stack_run
    objects, parents = result.deblendedCatalog, result.objectParents
    assert objects.isSorted() and len(set(objects["id"])) == len(objects)
    # Every parent comes out in input order, then one blend record per parent sent to the deblender.
    assert list(parents["id"])[:len(catalog)] == list(catalog["id"])
    blend, lone, sky, crowded = parents[:len(catalog)]
    (blendRecord,) = _blendRecords(parents, blend.getId())
    (crowdedRecord,) = _blendRecords(parents, crowded.getId())
    assert len(parents) == len(catalog) + 2 and not _blendRecords(parents, lone.getId())
    assert min(blendRecord.getId(), crowdedRecord.getId()) > max(catalog["id"])
    for record in (blend, blendRecord):
        assert record["deblend_nChild"] == 2 and record["deblend_nPeaks"] == 2
        assert record["deblend_runtime"] > 0
    assert blendRecord.getFootprint().getArea() == blend.getFootprint().getArea()
    assert lone["deblend_skipped_isolatedParent"] and not lone["deblend_skipped"]
    # A sky object is an isolated source: no skip flag (scarlet keeps isPseudo for skipped pseudo blends).
    assert sky["merge_peak_sky"] and not sky["deblend_skipped_isPseudo"] and not sky["deblend_skipped"]
    for record in (crowded, crowdedRecord):
        assert record["deblend_skipped"] and record["deblend_skipped_tooManyPeaks"]
        assert record["deblend_nChild"] == 0 and record["deblend_nPeaks"] == 3
    assert not any(parents["deblend_failed"]) and not any(parents["deblend_childFailed"])
    isolated = objects[objects["parent"] == 0]
    assert sorted(isolated["id"]) == sorted([lone.getId(), sky.getId()])
    for record in isolated:
        assert record.getFootprint().getArea() == catalog.find(record.getId()).getFootprint().getArea()
        # As scarlet leaves them:
        assert record["deblend_parentNPeaks"] == 0 and record["deblend_blendId"] == 0
    children = objects[objects["parent"] != 0]
    assert len(children) == 2 and set(children["parent"]) == {blend.getId()}
    assert min(children["id"]) > max(parents["id"])
    assert set(children["deblend_blendId"]) == {blendRecord.getId()}
    assert set(children["deblend_blendNChild"]) == {2}
    assert set(children["deblend_parentNPeaks"]) == {2} and set(children["deblend_parentNChild"]) == {2}
    assert all(children["merge_footprint_r"])
    assert {(r["deblend_peak_center_x"], r["deblend_peak_center_y"]) for r in children} == {(1030, 2030),
                                                                                           (1037, 2033)}
    assert crowded.getId() not in set(objects["parent"])
    mask = coadds[0].mask
    bit = mask.getPlaneBitMask("NOT_DEBLENDED")
    assert mask.array[2015 - XY0[1], 1080 - XY0[0]] & bit
    assert not mask.array[2030 - XY0[1], 1030 - XY0[0]] & bit


@stack
def test_model_data_layout_and_round_trip(stack_run):
    """The model data as the installed meas_extensions_scarlet writes it, through its as_dict/from_dict."""
    import lsst.scarlet.lite as scl
    from lsst.meas.extensions.scarlet.io import LsstScarletModelData
    from lsst.meas.extensions.scarlet import io
    from lsst.meas.extensions.vae.pipe.rubin.scarletData import modelPsfArrays, typedModelData

    LsstHierarchicalBlendData = getattr(io, "LsstHierarchicalBlendData", None)

    task, coadds, catalog, result = stack_run
    modelData = result.scarletModelData
    blend, lone, sky, _ = result.objectParents[:len(catalog)]
    (blendRecord,) = _blendRecords(result.objectParents, blend.getId())
    assert set(modelData.blends) == {blend.getId()}
    assert set(modelData.isolated) == {lone.getId()}  # sky objects are not stored
    hierarchical = modelData.blends[blend.getId()]
    assert set(hierarchical.children) == {blendRecord.getId()}
    if LsstHierarchicalBlendData is not None:
        assert isinstance(hierarchical, LsstHierarchicalBlendData)
        spans, origin = hierarchical.span_array, hierarchical.origin
    else:
        assert isinstance(hierarchical, scl.io.HierarchicalBlendData)
        spans, origin = hierarchical.metadata["spans"], hierarchical.metadata["origin"]
    box = blend.getFootprint().getBBox()
    assert tuple(origin) == (box.getMinY(), box.getMinX())
    np.testing.assert_array_equal(spans, blend.getFootprint().spans.asArray())
    if typedModelData():
        assert not modelData.legacy and isinstance(modelData.psf, scl.ImagePsf)
    modelPsf, psf, bands = modelPsfArrays(modelData)
    assert bands == tuple(task.model.bands) and psf.shape[0] == len(bands)

    again = LsstScarletModelData.from_dict(json.loads(json.dumps(modelData.as_dict())))
    assert set(again.blends) == set(modelData.blends) and set(again.isolated) == set(modelData.isolated)
    assert type(again.blends[blend.getId()]) is type(hierarchical)
    modelPsf2, psf2, bands2 = modelPsfArrays(again)
    assert bands2 == bands
    np.testing.assert_allclose(modelPsf2, modelPsf)
    np.testing.assert_allclose(psf2, psf)
    before = hierarchical.children[blendRecord.getId()].sources
    after = {int(key): source for key, source in again.blends[blend.getId()].children[blendRecord.getId()]
             .sources.items()}  # JSON keys come back as strings
    assert set(before) == set(after)
    for sourceId in before:
        for c1, c2 in zip(before[sourceId].components, after[sourceId].components):
            np.testing.assert_allclose(c2.morph, c1.morph, rtol=1e-6)
            assert tuple(c2.origin) == tuple(c1.origin)


@stack
def test_model_data_rebuilds_heavy_footprints(stack_run, tmp_path):
    import lsst.afw.table as afwTable
    from lsst.meas.extensions.scarlet.io import updateCatalogFootprints
    from lsst.meas.extensions.scarlet.io.utils import read_scarlet_model, write_scarlet_model

    task, coadds, catalog, result = stack_run
    modelData = result.scarletModelData
    blendRecord = _blendRecords(result.objectParents, catalog[0].getId())[0]
    sources = modelData.blends[catalog[0].getId()].children[blendRecord.getId()].sources
    stored = {s: sum(float(c.morph.sum()) * np.asarray(c.spectrum) for c in source.components)
              for s, source in sources.items()}
    path = tmp_path / "models.scarlet"
    write_scarlet_model(str(path), modelData)
    for redistribute in (False, True):
        data = read_scarlet_model(str(path))
        for band, coadd in zip(task.model.bands, coadds):
            objects = afwTable.SourceCatalog(result.deblendedCatalog.table.clone())
            objects.extend(result.deblendedCatalog, deep=True)
            updateCatalogFootprints(data, objects, band,
                                    imageForRedistribution=coadd if redistribute else None,
                                    removeScarletData=False, updateFluxColumns=True)
            bandIndex = list(task.model.bands).index(band)
            for record in objects[objects["parent"] != 0]:
                heavy = record.getFootprint()
                assert heavy.isHeavy() and heavy.getArea() > 0
                peak = heavy.peaks[0]
                assert (peak.getIx(), peak.getIy()) == (record["deblend_peak_center_x"],
                                                        record["deblend_peak_center_y"])
                assert np.isfinite(record["deblend_scarletFlux"]) and record["deblend_scarletFlux"] >= 0
                # The stored model (nJy) is what downstream reads: no re-convolution, no rescaling.
                np.testing.assert_allclose(record["deblend_scarletFlux"], stored[record.getId()][bandIndex],
                                           rtol=1e-4)
                if not redistribute:
                    # The HeavyFootprint is the model within the parent's box: its flux is the catalogue's.
                    assert blend_box_contains(catalog[0].getFootprint().getBBox(), heavy.getBBox())
                    np.testing.assert_allclose(heavy.getImageArray().sum(), record["deblend_scarletFlux"],
                                               rtol=1e-4)
            if redistribute:
                # The children split the parent's pixels: their fluxes add up to the image in the footprint.
                parent = catalog[0].getFootprint()
                total = sum(r.getFootprint().getImageArray().sum() for r in objects[objects["parent"] != 0])
                observed = (coadd.image.array * parent.spans.asArray(
                    (SHAPE[0], SHAPE[1]), XY0)).sum()
                np.testing.assert_allclose(total, observed, rtol=0.02)


def blend_box_contains(outer, inner) -> bool:
    return outer.contains(inner)


@stack
def test_model_floor_and_units(stack_run):
    """Stored models are in the coadds' units (nJy), clipped to the parent's box, at the observed seeing."""
    task, coadds, catalog, result = stack_run
    from lsst.meas.extensions.vae.pipe.rubin.scarletData import modelPsfArrays

    blend = catalog[0]
    box = blend.getFootprint().getBBox()
    hierarchical = result.scarletModelData.blends[blend.getId()]
    (child,) = hierarchical.children.values()
    total = np.zeros(len(task.model.bands))
    for source in child.sources.values():
        for component in source.components:
            y0, x0 = component.origin
            h, w = component.morph.shape
            assert box.getMinY() <= y0 and y0 + h <= box.getMaxY() + 1
            assert box.getMinX() <= x0 and x0 + w <= box.getMaxX() + 1
            assert (component.morph >= 0).all()
            total += component.morph.sum() * np.asarray(component.spectrum)
    # The coadds are in nJy (PhotoCalib 1) and so are the stored models: the network's electrons divided
    # by the task's scale (test_electrons_per_nanojansky_matches_the_training_zero_points), which the
    # rebuild test finds unchanged downstream.
    assert np.all(np.isfinite(total)) and np.all(total > 0)
    spans = blend.getFootprint().spans.asArray((SHAPE[0], SHAPE[1]), XY0)
    observed = np.array([(c.image.array * spans).sum() for c in coadds])
    assert np.all(total < 10 * observed)  # not left in electrons (17 to 270 per nJy)
    modelPsf, psf, _ = modelPsfArrays(result.scarletModelData)
    for kernel in (modelPsf, *psf):
        assert kernel.sum() == 1 and kernel[kernel.shape[0] // 2, kernel.shape[1] // 2] == 1


@stack
def test_scarlet_config_files_apply(tmp_path):
    """A scarlet config for the label, and the shipped override files, load into the VAE task's config."""
    from lsst.meas.extensions.vae.pipe.rubin.deblendTask import VaeDeblendCoaddConfig

    path = tmp_path / "scarlet.py"
    path.write_text("config.multibandDeblend.maxNumberOfPeaks = 30\n"
                    "config.multibandDeblend.maxIter = 50\n"  # scarlet's own fit: accepted, unused
                    "config.multibandDeblend.maskLimits = {'NO_DATA': 0.25}\n")
    config = VaeDeblendCoaddConfig()
    config.load(str(path))
    assert config.multibandDeblend.maxNumberOfPeaks == 30 and dict(config.multibandDeblend.maskLimits) == {
        "NO_DATA": 0.25}
    for override in sorted(CONFIG_DIR.rglob("*.py")):
        config = VaeDeblendCoaddConfig()
        config.load(str(override))
        config.validate()


@stack
def test_failures_are_caught_per_parent():
    """The real network, made to raise on the stamps of one blend (a spike at its brightest peak)."""
    import lsst.afw.table as afwTable
    from lsst.meas.extensions.vae.pipe.rubin.deblendTask import VaeDeblendCoaddConfig, VaeDeblendCoaddTask
    from lsst.meas.extensions.vae.pipe.standalone.testing import FaultyModel

    coadds, catalog, _, _ = _patch(["g", "r"])
    spike = 20.0 * max(float(c.image.array.max()) for c in coadds)
    for coadd in coadds:
        coadd.image.array[2030 - XY0[1], 1030 - XY0[0]] += spike
    config = VaeDeblendCoaddConfig()
    config.vae.device = "cpu"
    config.vae.fluxScale = {"g": 1.0, "r": 1.0}
    task = VaeDeblendCoaddTask(initInputs=_initInputs(), config=config)
    model = FaultyModel(task.model, above=spike / 2)
    task.model = model
    result = task.run(coadds=coadds, bands=["g", "r"], mergedDetections=catalog,
                      idFactory=afwTable.IdFactory.makeSimple())
    blend, lone, sky, crowded = result.objectParents[:len(catalog)]
    (blendRecord,) = _blendRecords(result.objectParents, blend.getId())
    # As scarlet: the failure is on the blend's record, the parent has a failed child.
    assert blendRecord["deblend_failed"] and blendRecord["deblend_error"] == "ValueError"
    assert blendRecord["deblend_skipped"] and model.chosen > 0
    assert blend["deblend_childFailed"] and not blend["deblend_failed"] and blend["deblend_nChild"] == 0
    # The other parents are untouched: the three-peak parent is deblended by the network.
    assert not any(p["deblend_failed"] or p["deblend_childFailed"] for p in (lone, sky, crowded))
    assert crowded["deblend_nChild"] == 3 and not crowded["deblend_skipped"]
    children = result.deblendedCatalog[result.deblendedCatalog["parent"] != 0]
    assert len(children) == 3 and set(children["parent"]) == {crowded.getId()}
    assert set(result.scarletModelData.blends) == {crowded.getId()}
    config.multibandDeblend.catchFailures = False
    task = VaeDeblendCoaddTask(initInputs=_initInputs(), config=config)
    task.model = FaultyModel(model.model, above=spike / 2)
    with pytest.raises(ValueError, match="too bright"):
        task.run(coadds=coadds, bands=["g", "r"], mergedDetections=catalog)


CANDIDATE = REPO / "weights" / "candidates" / "lsst-v3.safetensors"


@stack
@pytest.mark.skipif(not CANDIDATE.exists(), reason="the PSF-aware candidate weights are not in this checkout")
def test_psf_aware_network_reads_each_coadds_psf():
    """A PSF-aware network gets each coadd PSF's kernel image at the peak, and a coadd without one is a
    clear error (every blend would fail the same way)."""
    import lsst.afw.detection as afwDet
    import lsst.afw.table as afwTable
    from lsst.meas.extensions.vae.pipe.rubin.deblendTask import VaeDeblendCoaddConfig, VaeDeblendCoaddTask

    config = VaeDeblendCoaddConfig()
    config.vae.device = "cpu"
    config.vae.weights = str(CANDIDATE)
    config.vae.refineSteps = 0  # the candidate has no refiner
    task = VaeDeblendCoaddTask(initInputs=_initInputs(), config=config)
    bands = list(task.model.bands)
    assert task.model.conditioned
    fluxes = {}
    for sigma in (1.2, 2.4):
        coadds, catalog, _, _ = _patch(bands)
        for coadd in coadds:
            coadd.setPsf(afwDet.GaussianPsf(25, 25, sigma))
        patch = task._preparePatch(coadds, bands)
        psf = task._peakPsfs(list(catalog[0].getFootprint().peaks), patch)
        assert psf.shape == (2, len(bands), task.model.psf_size, task.model.psf_size)
        yy, xx = np.mgrid[: psf.shape[-1], : psf.shape[-1]] - psf.shape[-1] // 2
        np.testing.assert_allclose(psf.sum(axis=(-1, -2)), 1.0, rtol=1e-5)
        np.testing.assert_allclose((psf * xx**2).sum(axis=(-1, -2)), sigma**2, rtol=0.03)
        result = task.run(coadds=coadds, bands=bands, mergedDetections=catalog,
                          idFactory=afwTable.IdFactory.makeSimple())
        children = result.deblendedCatalog[result.deblendedCatalog["parent"] == catalog[0].getId()]
        assert len(children) == 2
        (child,) = result.scarletModelData.blends[catalog[0].getId()].children.values()
        fluxes[sigma] = np.array([sum(float(c.morph.sum()) for c in source.components)
                                  for _, source in sorted(child.sources.items())])
        assert np.all(np.isfinite(fluxes[sigma])) and np.all(fluxes[sigma] > 0)
    # The same pixels with another PSF give other models: the PSF reaches the network.
    assert np.max(np.abs(fluxes[2.4] / fluxes[1.2] - 1)) > 0.01

    coadds, catalog, _, _ = _patch(bands)
    with pytest.raises(ValueError, match="PSF-aware"):
        task.run(coadds=coadds, bands=bands, mergedDetections=catalog)

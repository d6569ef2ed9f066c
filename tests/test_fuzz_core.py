"""Property test of the deblending core: random fields of footprints, peaks, masks and corrupted pixels
through `deblend_field` with a real (tiny, trained) network.

Invariants checked on every case:

- every peak comes out as a child, of its own parent, and every parent label comes out;
- nothing is NaN or infinite in any child's model or fluxes, nor in any parent's flux;
- with conservation on, the children of a parent add up to its observed footprint flux (the bad pixels
  zeroed), to float rounding, whenever the parent has a peak with finite coordinates;
- the flags are set exactly where the inputs were bad: ``outside_image`` for a peak outside the image
  or not finite (its model is zero, and it takes no flux while its parent has a peak in the image),
  ``masked`` for a stamp that covers a bad or non-finite pixel, ``outside_footprint`` for a peak whose
  pixel is not in its parent's footprint, ``edge`` for a stamp reaching beyond the image.

Hypothesis draws the cases from a fixed seed (``derandomize``), so CI runs the same 1,000 cases.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsst.meas.extensions.vae.deblend import DeblendConfig, cut_stamp, deblend_field
from lsst.meas.extensions.vae.deblend.network import VaeDeblender

CASES = 1000


@st.composite
def fields(draw):
    """A random field: image, peaks, parent labels, footprints, bad pixels and a configuration."""
    h = draw(st.integers(12, 64))
    w = draw(st.integers(12, 64))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n_parents = draw(st.integers(1, 3))
    footprints = np.zeros((h, w), dtype=np.int32)
    peaks, labels = [], []
    for label in range(1, n_parents + 1):
        x0, x1 = sorted(draw(st.lists(st.integers(0, w), min_size=2, max_size=2)))
        y0, y1 = sorted(draw(st.lists(st.integers(0, h), min_size=2, max_size=2)))
        footprints[y0:y1, x0:x1] = label  # later parents may cover earlier ones, even wholly
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["inside", "inside", "inside", "anywhere", "outside", "nan"]))
            if kind == "nan":
                peaks.append((np.nan, draw(st.floats(0, h))))
            elif kind == "outside":
                x = draw(st.sampled_from([-8.0, -1.0, w + 0.6, w + 9.0]))
                peaks.append((x, draw(st.floats(0, h - 1))))
            elif kind == "anywhere":
                peaks.append((draw(st.floats(-0.4, w - 0.6)), draw(st.floats(-0.4, h - 0.6))))
            else:
                peaks.append((draw(st.floats(x0, max(x1 - 1, x0))), draw(st.floats(y0, max(y1 - 1, y0)))))
            labels.append(label)
    peaks = np.array(peaks, dtype=np.float64)
    # Noise and a Gaussian galaxy at each finite peak.
    yy, xx = np.mgrid[:h, :w]
    image = rng.normal(0.0, 3.0, (6, h, w)).astype(np.float32)
    for x, y in peaks:
        if np.isfinite(x):
            amplitude = rng.uniform(0.0, 400.0) * rng.uniform(0.2, 1.0, 6)[:, None, None]
            image += (amplitude * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * rng.uniform(1, 4) ** 2))
                      ).astype(np.float32)
    bad = None
    if draw(st.booleans()):
        bad = np.zeros((h, w), dtype=bool)
        bx, by = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
        bad[by: by + draw(st.integers(1, h)), bx: bx + draw(st.integers(1, w))] = True
    for _ in range(draw(st.integers(0, 6))):  # corrupted pixels, in one band or all
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        y, x = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        band = draw(st.sampled_from([slice(None), 0, 2, 5]))
        image[band, y, x] = value
    config = DeblendConfig(iterations=draw(st.integers(1, 2)), refine_centroids=draw(st.booleans()),
                           conserve_flux=draw(st.sampled_from([True, True, True, False])))
    return image, peaks, np.array(labels), footprints, bad, config


@settings(max_examples=CASES, deadline=None, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=fields())
def test_fuzz_core_invariants(tiny_deblender, case):
    image, peaks, labels, footprints, bad, config = case
    size = tiny_deblender.stamp_size
    children, parents = deblend_field(image, peaks, tiny_deblender, size, parents=labels,
                                      footprints=footprints, bad=bad, config=config)
    h, w = footprints.shape
    unusable = ~np.isfinite(image).all(axis=0) | (False if bad is None else bad)
    assert len(children) == len(peaks)
    assert [p.label for p in parents] == sorted(set(labels.tolist()))
    for child, peak, label in zip(children, peaks, labels):
        assert child.parent == label
        for values in (child.model, child.flux_model, child.flux_conserved):
            assert np.isfinite(values).all()
        rounded = np.rint(peak) if np.isfinite(peak).all() else None
        outside = rounded is None or not (0 <= rounded[0] < w and 0 <= rounded[1] < h)
        assert child.outside_image == outside
        if outside:
            assert not child.model.any() and child.zero_flux and not child.refined
            continue
        x, y = child.center
        side = size * child.binned  # a binned child's stamp is wider
        assert child.model.shape[-2:] == (side, side)
        _, edge = cut_stamp(np.zeros((1, h, w), np.float32), (x, y), side)
        assert child.edge == edge
        covered = cut_stamp(unusable[None].astype(np.float32), (x, y), side)[0]
        assert child.masked == bool(covered.any())
        assert child.outside_footprint == (footprints[y, x] != label)
        assert abs(x - rounded[0]) <= config.max_centroid_shift + 0.5
        assert abs(y - rounded[1]) <= config.max_centroid_shift + 0.5
    for parent in parents:
        assert np.isfinite(parent.flux).all()
        x0, y0, x1, y1 = parent.bbox
        observed = np.where(unusable[None], 0.0, image)[:, y0:y1, x0:x1] * (footprints[y0:y1, x0:x1]
                                                                             == parent.label)
        np.testing.assert_allclose(parent.flux, observed.sum(axis=(1, 2), dtype=np.float64), rtol=1e-5,
                                   atol=1e-3)
        members = [children[i] for i in parent.children]
        if not config.conserve_flux:
            for child in members:
                np.testing.assert_array_equal(child.flux_conserved, child.flux_model)
            continue
        finite = [c for c in members if np.isfinite(c.peak).all()]
        if not finite:
            continue
        total = np.sum([c.flux_conserved for c in members], axis=0)
        scale = np.abs(observed).sum(axis=(1, 2), dtype=np.float64)
        np.testing.assert_allclose(total, parent.flux, rtol=0, atol=1e-5 * scale.max() + 1e-3)
        if any(not c.outside_image for c in members):
            for child in members:
                if child.outside_image:
                    assert not child.flux_conserved.any()


def test_fuzz_core_runs_real_network(tiny_deblender):
    """The property test's network is a trained one, not a stand-in: it models a bright source."""
    stamp = np.zeros((1, 6, tiny_deblender.stamp_size, tiny_deblender.stamp_size), dtype=np.float32)
    c = tiny_deblender.stamp_size // 2
    grid = np.arange(tiny_deblender.stamp_size) - c
    stamp[0] += (500.0 * np.exp(-(grid[None, :] ** 2 + grid[:, None] ** 2) / 8.0)).astype(np.float32)
    models, _ = tiny_deblender(stamp, np.full((1, 1, 2), np.nan))
    assert models[0].sum() > 0.2 * stamp[0].sum()
    assert isinstance(tiny_deblender, VaeDeblender)

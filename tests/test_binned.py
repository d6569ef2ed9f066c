"""Galaxies larger than the stamp: modelled on binned stamps (`DeblendConfig.bin_large`), with the shipped
weights on analytic GalSim galaxies (seeded), flagged ``Child.binned`` / ``deblend_binned``."""

from __future__ import annotations

import dataclasses

import galsim
import numpy as np
import pytest

from lsst.meas.extensions.vae.deblend import (DeblendConfig, add_at, bin_image, bin_psf, deblend_field,
                                              edge_fraction, unbin_image)
from lsst.meas.extensions.vae.surveys import get_survey

SURVEY = get_survey("lsst")
R = SURVEY.band_names.index("r")
STAMP = 59


def draw(shape: tuple[int, int], galaxies: list[tuple[float, float, float, float]], seed: int
         ) -> tuple[np.ndarray, list[np.ndarray]]:
    """A noisy ugrizy image (electrons, full depth) of exponential galaxies (x, y: integer pixels; r mag,
    hlr arcsec; a flat spectrum: the same magnitude in every band), each convolved with its band's PSF,
    and each galaxy's noiseless image."""
    h, w = shape
    truths = []
    for k, (x, y, mag, hlr) in enumerate(galaxies):
        truth = np.zeros((len(SURVEY.bands), h, w), dtype=np.float32)
        size = min(2 * int(12 * hlr / 0.2) + 41, max(h, w) // 2 * 2 + 1)  # its light, up to the image side
        for b, band in enumerate(SURVEY.bands):
            galaxy = galsim.Exponential(half_light_radius=hlr, flux=float(band.mag_to_electrons(mag)))
            galaxy = galaxy.shear(g1=0.15 * (-1) ** k, g2=0.1)
            stamp = galsim.Convolve(galaxy, band.make_psf()).drawImage(nx=size, ny=size,
                                                                       scale=band.pixel_scale)
            add_at(truth[b], stamp.array, (int(x) - size // 2, int(y) - size // 2))
        truths.append(truth)
    rng = np.random.default_rng(seed)
    sigma = np.array([band.noise_sigma for band in SURVEY.bands], dtype=np.float32)
    noise = rng.standard_normal((len(SURVEY.bands), h, w)).astype(np.float32) * sigma[:, None, None]
    return sum(truths) + noise, truths


def footprint(truths: list[np.ndarray], level: float = 0.5) -> np.ndarray:
    """One parent (label 1): the pixels where the noiseless r image is above ``level`` noise sigma."""
    return (sum(truths)[R] > level * SURVEY.bands[R].noise_sigma).astype(np.int32)


@pytest.fixture(scope="module")
def large_blend():
    """A 5" exponential (r 19.5) with three small neighbours (r 22.5, 0.6") 40-60 px away: its light
    reaches far past its 59-px stamp, beyond its neighbours."""
    galaxies = [(160, 160, 19.5, 5.0), (215, 160, 22.5, 0.6), (120, 200, 22.5, 0.6), (160, 100, 22.5, 0.6)]
    image, truths = draw((321, 321), galaxies, seed=2)
    return image, truths, np.array([g[:2] for g in galaxies], dtype=np.float64), footprint(truths)


def test_binning_helpers_keep_flux_and_centre():
    rng = np.random.default_rng(0)
    stamp = rng.random((2, 15, 15)).astype(np.float32)
    binned = bin_image(stamp, 3)
    assert binned.shape == (2, 5, 5)
    np.testing.assert_allclose(binned.sum(axis=(1, 2)), stamp.sum(axis=(1, 2)), rtol=1e-6)
    for factor in (2, 3, 5):  # back to full resolution: every binned pixel's flux kept exactly
        model = rng.random((2, 7, 7)).astype(np.float32)
        model[0, 3, 3] = 0.0  # an empty block is spread evenly (here: stays empty)
        up = unbin_image(model, factor)
        assert up.shape == (2, 7 * factor, 7 * factor) and np.all(up >= 0)
        np.testing.assert_allclose(bin_image(up, factor), model, rtol=1e-5, atol=1e-7)
    psf = SURVEY.bands[R].psf_image(41)
    for factor in (3, 5):
        narrow = bin_psf(psf, factor)
        assert narrow.shape == psf.shape and narrow.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.unravel_index(np.argmax(narrow), narrow.shape) == (20, 20)  # centred
        np.testing.assert_allclose(narrow, narrow[::-1, ::-1], atol=1e-6)  # a round PSF stays round
        assert narrow.max() > 2 * psf.max()  # narrower in pixels
    assert edge_fraction(np.ones((1, 10, 10)), 2) == pytest.approx(64 / 100)
    with pytest.raises(ValueError, match="increasing"):
        DeblendConfig(binning_factors=(5, 3))


def test_a_galaxy_larger_than_the_stamp_is_binned_and_keeps_its_flux(shipped_deblender, large_blend):
    image, truths, peaks, labels = large_blend
    true_in_footprint = np.array([(t[R] * labels).sum() for t in truths])
    assert true_in_footprint[0] > 0.9 * truths[0][R].sum()  # the footprint holds most of its light

    old, _ = deblend_field(image, peaks, shipped_deblender, STAMP, footprints=labels,
                           config=DeblendConfig(bin_large=False))
    children, parents = deblend_field(image, peaks, shipped_deblender, STAMP, footprints=labels)
    big = children[0]
    assert big.binned in (3, 5) and all(c.binned == 1 for c in old)
    side = STAMP * big.binned
    assert big.model.shape == (6, side, side)
    assert big.origin == (big.center[0] - side // 2, big.center[1] - side // 2)
    # The model reaches the galaxy's wings: light beyond the 59-px stamp, as the truth has.
    inner = big.model[R, side // 2 - 29: side // 2 + 30, side // 2 - 29: side // 2 + 30].sum()
    assert big.model[R].sum() - inner > 0.15 * big.model[R].sum()
    # Conserved flux (the observed flux split in proportion to the models, inside the footprint) against
    # the galaxy's true flux inside the footprint: within 2 % binned; unbinned its wings beyond the stamp
    # went to the neighbours (here 24 % of its flux).
    binned_error = big.flux_conserved[R] / true_in_footprint[0] - 1
    old_error = old[0].flux_conserved[R] / true_in_footprint[0] - 1
    assert abs(binned_error) < 0.02
    assert abs(old_error) > 0.10
    for b in range(6):  # within 3 % in every band (measured: 1.1-2.2 %)
        truth_b = (truths[0][b] * labels).sum()
        assert abs(big.flux_conserved[b] / truth_b - 1) < 0.03
    # The neighbours no longer take the large galaxy's wings.
    for k in (1, 2, 3):  # measured: +18, +3 and +2 % binned; +166, +99 and +77 % not
        assert abs(children[k].flux_conserved[R] / true_in_footprint[k] - 1) < 0.25
        assert old[k].flux_conserved[R] / true_in_footprint[k] - 1 > 0.5
    # Every child comes out, and the children still add up to the parent.
    assert len(children) == 4 and parents[0].children == [0, 1, 2, 3]
    np.testing.assert_allclose(sum(c.flux_conserved for c in children), parents[0].flux, rtol=1e-5)
    np.testing.assert_allclose(parents[0].conserved.sum(axis=0).sum(axis=(1, 2)), parents[0].flux, rtol=1e-5)


def test_small_galaxies_are_not_binned_and_unchanged(shipped_deblender):
    galaxies = [(60, 60, 21.5, 0.6), (70, 64, 22.5, 0.4)]
    image, truths = draw((121, 121), galaxies, seed=3)
    labels = footprint(truths)
    peaks = np.array([g[:2] for g in galaxies], dtype=np.float64)
    for config in (DeblendConfig(), DeblendConfig(iterations=1, n_samples=2)):
        on, on_parents = deblend_field(image, peaks, shipped_deblender, STAMP, footprints=labels,
                                       config=config)
        off, off_parents = deblend_field(image, peaks, shipped_deblender, STAMP, footprints=labels,
                                         config=dataclasses.replace(config, bin_large=False))
        for a, b in zip(on, off):
            assert a.binned == b.binned == 1 and a.model.shape == (6, STAMP, STAMP)
            np.testing.assert_array_equal(a.model, b.model)
            np.testing.assert_array_equal(a.flux_conserved, b.flux_conserved)
            np.testing.assert_array_equal(a.flux_model_err, b.flux_model_err)
            assert a.origin == b.origin
        np.testing.assert_array_equal(on_parents[0].conserved, off_parents[0].conserved)


def test_the_standalone_task_flags_binned_children(shipped_deblender):
    from lsst.meas.extensions.vae.pipe.standalone import DetectCoaddPeaksTask, VaeDeblendTask
    from lsst.meas.extensions.vae.pipe.standalone.coadd import Coadd

    galaxies = [(120, 120, 19.5, 4.0), (40, 40, 22.0, 0.5)]
    image, truths = draw((241, 241), galaxies, seed=4)
    coadds = [Coadd(image=image[b], variance=np.full(image.shape[1:], band.sky_level, dtype=np.float32),
                    mask=np.zeros(image.shape[1:], dtype=np.int32), psf=band.psf_image(41),
                    bbox=(0, 0, 241, 241), band=band.name, zeropoint=band.magnitude_zeropoint,
                    pixel_scale=band.pixel_scale) for b, band in enumerate(SURVEY.bands)]
    detections = DetectCoaddPeaksTask().run(coadds, tract=0, patch=0)
    result = VaeDeblendTask(model=shipped_deblender).run(coadds, detections.mergedDetections,
                                                         detections.peaks, detections.footprints)
    objects = result.deblendedCatalog
    assert "deblend_binned" in objects.colnames and "deblend_binFactor" in objects.colnames
    near = np.hypot(objects["deblend_peak_center_x"] - 120, objects["deblend_peak_center_y"] - 120) < 3
    assert near.sum() == 1
    large = objects[near][0]
    assert large["deblend_binned"] and large["deblend_binFactor"] in (3, 5)
    # Neither the small galaxy nor the noise peak that detection finds in the large one's wings (a
    # faint diffuse model that reaches its stamp's edge, below the noise there) is binned.
    assert len(objects) == 3
    assert not objects["deblend_binned"][~near].any() and np.all(objects["deblend_binFactor"][~near] == 1)
    assert not result.objectParents["deblend_failed"].any()
    # The stored model (clipped to the parent's box) is wider than a stamp.
    stored = [child for _, child in result.vaeModelData.children().values() if child.id == large["id"]][0]
    assert max(stored.model.shape[1:]) > STAMP
    without = VaeDeblendTask(model=shipped_deblender, config=_config(doBinLarge=False)).run(
        coadds, detections.mergedDetections, detections.peaks, detections.footprints).deblendedCatalog
    assert not without["deblend_binned"].any()


def _config(**fields):
    from lsst.meas.extensions.vae.pipe.standalone import VaeDeblendTask

    config = VaeDeblendTask.ConfigClass()
    for name, value in fields.items():
        setattr(config, name, value)
    return config

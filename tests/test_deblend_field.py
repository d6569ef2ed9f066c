"""The whole-field deblending core, with a real (tiny) trained network."""

import numpy as np
import pytest
import torch

from lsst.meas.extensions.vae.deblend import DeblendConfig, cut_stamp, deblend_field, paste_stamp
from lsst.meas.extensions.vae.deblend.fit import estimate_variance, fit_latents
from lsst.meas.extensions.vae.deblend.network import VaeDeblender
from lsst.meas.extensions.vae.sim.blend import BlendConfig, BlendMaker


def test_cut_and_paste_round_trip_with_edges():
    image = np.arange(2 * 10 * 12, dtype=np.float32).reshape(2, 10, 12)
    stamp, edge = cut_stamp(image, (5, 4), 5)
    np.testing.assert_array_equal(stamp, image[:, 2:7, 3:8])
    assert not edge
    stamp, edge = cut_stamp(image, (0, 9), 5)
    assert edge and stamp[0, 2, 2] == image[0, 9, 0] and stamp[0, 4, 4] == 0.0
    target = np.zeros_like(image)
    paste_stamp(target, stamp, (0, 9))
    assert target[0, 9, 0] == image[0, 9, 0] and target[0, 8, 1] == image[0, 8, 1]
    assert target.sum() == pytest.approx(stamp.sum())


@pytest.fixture(scope="module")
def field(tiny_training):
    """Two parents side by side in one field: a 3-galaxy blend and an isolated galaxy."""
    deblender = VaeDeblender(str(tiny_training["bundle"]), device="cpu")
    maker = BlendMaker(BlendConfig.preset("training", stamp_size=33, min_galaxies=3, max_galaxies=3,
                                          annulus=(0.325, 1.5)))
    single = BlendMaker(BlendConfig(stamp_size=33, max_galaxies=1)).make(0, 1, split="test")
    blend = maker.make(0, 0, split="test")
    image = np.zeros((6, 33, 80), dtype=np.float32)
    image[:, :, :33] = blend.image
    image[:, :, 45:78] = single.image
    labels = np.zeros((33, 80), dtype=np.int32)
    labels[:, :33] = 1
    labels[:, 45:78] = 2
    peaks = np.concatenate([np.stack([blend.truth["x"], blend.truth["y"]], 1),
                            [[single.truth["x"][0] + 45, single.truth["y"][0]]]])
    return deblender, image, labels, peaks


def test_every_peak_comes_out_and_conservation_sums_to_the_parent(field):
    deblender, image, labels, peaks = field
    children, parents = deblend_field(image, peaks, deblender, 33, parents=np.array([1, 1, 1, 2]),
                                      footprints=labels, config=DeblendConfig(iterations=2))
    assert len(children) == 4 and [c.parent for c in children] == [1, 1, 1, 2]
    assert [p.label for p in parents] == [1, 2] and parents[0].children == [0, 1, 2]
    for parent in parents:
        total = sum(children[i].flux_conserved for i in parent.children)
        np.testing.assert_allclose(total, parent.flux, rtol=1e-5, atol=1e-2)
        np.testing.assert_allclose(parent.conserved.sum(axis=0).sum(axis=(1, 2)), parent.flux, rtol=1e-5,
                                   atol=1e-2)
    for child in children:  # the tiny network's models overflow its stamps: some are binned
        side = 33 * child.binned
        assert child.model.shape == (6, side, side) and np.isfinite(child.model).all()
        assert np.all(np.isnan(child.flux_model_err))
    for child in children:  # edge: the (binned) stamp reaches beyond the 80 x 33 field
        x, y = child.center
        half = child.model.shape[-1] // 2
        assert child.edge == (x - half < 0 or y - half < 0 or x + half > 79 or y + half > 32)
    assert any(child.edge for child in children[:3])  # neighbours of the central galaxy stick out


def test_options_and_flags(field):
    deblender, image, labels, peaks = field
    bad = np.zeros(labels.shape, dtype=bool)
    bad[10, 60] = True
    children, parents = deblend_field(image, peaks, deblender, 33, parents=np.array([1, 1, 1, 2]),
                                      footprints=labels, bad=bad,
                                      config=DeblendConfig(iterations=1, refine_centroids=False,
                                                           conserve_flux=False, n_samples=4))
    assert parents[0].conserved is None
    for child in children:
        np.testing.assert_array_equal(child.flux_conserved, child.flux_model)
        assert np.all(np.isfinite(child.flux_model_err)) and np.all(child.flux_model_err >= 0)
        assert not child.refined
    assert children[3].masked and not children[0].masked
    again, _ = deblend_field(image, peaks, deblender, 33, parents=np.array([1, 1, 1, 2]), footprints=labels,
                             bad=bad, config=DeblendConfig(iterations=1, refine_centroids=False,
                                                           conserve_flux=False, n_samples=4))
    np.testing.assert_array_equal(again[0].model, children[0].model)  # deterministic on the CPU
    np.testing.assert_array_equal(again[0].flux_model_err, children[0].flux_model_err)


def test_no_peaks_and_wrong_stamps(field):
    deblender, image, labels, _ = field
    children, parents = deblend_field(image, np.zeros((0, 2)), deblender, 33, parents=np.zeros(0),
                                      footprints=labels)
    assert children == [] and parents == []
    with pytest.raises(ValueError, match="do not fit"):
        deblender(np.zeros((1, 6, 21, 21), dtype=np.float32), np.full((1, 1, 2), np.nan))


def _chi2(image, children, labels, variance):
    model = np.zeros_like(image)
    for child in children:
        paste_stamp(model, child.model, child.center)
    return float((((image - model) ** 2 / variance[:, None, None]) * (labels > 0)).sum())


def test_latent_fit_recovers_codes_and_lowers_chi2(field):
    deblender, image, labels, peaks = field
    rng = np.random.default_rng(3)
    # Exact scenes from the decoder itself, one galaxy on the field's edge: the fit must pull perturbed
    # codes back to the true ones, which it can only do if every canvas is aligned with the image.
    centers = np.array([[20, 16], [27, 20], [62, 16], [3, 30]])
    labels_true = np.array([1, 1, 2, 3])
    z_true = rng.standard_normal((4, deblender.vae.config.latent)).astype(np.float32) * 0.5
    with torch.no_grad():
        truth = deblender.decode(torch.from_numpy(z_true)).numpy()
        z_start = z_true + 0.5 * rng.standard_normal(z_true.shape).astype(np.float32)
        start = deblender.decode(torch.from_numpy(z_start)).numpy()

    def placed(models):
        out = np.zeros_like(image)
        for k in range(4):
            paste_stamp(out, models[k], tuple(centers[k]))
        return out

    # Each parent is fitted to its own footprint (here the pixels nearer to its galaxies than to the
    # others'), which holds the light of its own galaxies only.
    yy, xx = np.mgrid[:image.shape[1], :image.shape[2]]
    nearest = np.argmin((xx[None] - centers[:, 0, None, None]) ** 2
                        + (yy[None] - centers[:, 1, None, None]) ** 2, axis=0)
    footprints = labels_true[nearest]

    def own_parts(models):
        return sum(placed(np.where((labels_true == label)[:, None, None, None], models, 0.0))
                   * (footprints == label) for label in np.unique(labels_true))

    _, models = fit_latents(own_parts(truth), np.ones(6), None, centers, labels_true, z_start, start,
                            deblender.decode, 33, steps=150, learning_rate=0.05, prior_weight=0.0,
                            footprints=footprints)
    # The isolated galaxy wholly inside the field is found again; the blend and the galaxy on the
    # field's edge (its stamp half outside, unconstrained there) are matched where the image is, on
    # each parent's own pixels.
    assert np.abs(models[2] - truth[2]).sum() < 0.1 * np.abs(start[2] - truth[2]).sum()

    assert np.abs(own_parts(models) - own_parts(truth)).sum() < 0.3 * np.abs(own_parts(start - truth)).sum()
    # Free per-band amplitudes take up a flux the decoder's codes do not give: the isolated galaxy at
    # 1.5 times its decoded flux in the first band, started from its true code.
    brighter = truth[2:3].copy()
    brighter[:, 0] *= 1.5
    scaled = np.zeros_like(image)
    paste_stamp(scaled, brighter[0], tuple(centers[2]))
    _, models = fit_latents(scaled, np.ones(6), None, centers[2:3], labels_true[2:3], z_true[2:3],
                            truth[2:3], deblender.decode, 33, steps=100, learning_rate=0.05, prior_weight=0.0,
                            amplitude_sigma=1.0)
    np.testing.assert_allclose(models[0].sum(axis=(1, 2)), brighter[0].sum(axis=(1, 2)), rtol=0.05)

    # On a real simulated blend the fit explains the pixels better than the encoder alone.
    variance = BlendMaker(BlendConfig(stamp_size=33, max_galaxies=1)).make(0, 1, split="test").variance
    kwargs = dict(parents=np.array([1, 1, 1, 2]), footprints=labels, variance=variance)
    # Not binned: the tiny network's models overflow its stamps, and the fit holds binned children fixed.
    plain, _ = deblend_field(image, peaks, deblender, 33, config=DeblendConfig(bin_large=False), **kwargs)
    fit_config = DeblendConfig(fit_steps=30, fit_learning_rate=0.1, bin_large=False)
    fitted_children, parents = deblend_field(image, peaks, deblender, 33, config=fit_config, **kwargs)
    assert _chi2(image, fitted_children, labels, variance) < 0.9 * _chi2(image, plain, labels, variance)
    for parent in parents:
        total = sum(fitted_children[i].flux_conserved for i in parent.children)
        np.testing.assert_allclose(total, parent.flux, rtol=1e-5, atol=1e-2)
    again, _ = deblend_field(image, peaks, deblender, 33, config=fit_config, **kwargs)
    np.testing.assert_array_equal(again[0].model, fitted_children[0].model)  # deterministic on the CPU


def test_latent_fit_steps_in_units_of_the_latent_scale():
    # With the shipped decoder: a galaxy's code 3 units off along the dimension the decoder is most
    # sensitive to.  Unit steps stall on the flat likelihood (Adam moves each coordinate about lr per step);
    # with that dimension's scale at 4 the fit gets close.
    deblender = VaeDeblender("lsst", device="cpu")
    latent = deblender.vae.config.latent
    z_true = (np.random.default_rng(3).standard_normal((1, latent)) * 0.5).astype(np.float32)
    with torch.no_grad():
        truth = deblender.decode(torch.from_numpy(z_true)).numpy()
        shifted = torch.from_numpy(z_true + np.eye(latent, dtype=np.float32))
        dim = int(np.abs(deblender.decode(shifted).numpy() - truth).sum(axis=(1, 2, 3)).argmax())
        far = z_true.copy()
        far[0, dim] += 3.0
        far_model = deblender.decode(torch.from_numpy(far)).numpy()
    size = deblender.stamp_size
    observed = np.zeros((6, size, size), dtype=np.float32)
    paste_stamp(observed, truth[0], (size // 2, size // 2))
    inverse_variance = 1.0 / np.array(deblender.norm.scales) ** 2
    errors = {}
    for name, latent_scale in (("unit", None), ("scaled", np.where(np.arange(latent) == dim, 4.0, 1.0))):
        fitted, _ = fit_latents(observed, inverse_variance, None, np.array([[size // 2, size // 2]]),
                                np.array([1]), far, far_model, deblender.decode, size, steps=30,
                                learning_rate=0.05, prior_weight=0.0, latent_scale=latent_scale)
        errors[name] = abs(fitted[0, dim] - z_true[0, dim])
    assert errors["unit"] > 1.5 and errors["scaled"] < 0.6, errors
    with pytest.raises(ValueError, match="latent_scale"):
        fit_latents(observed, inverse_variance, None, np.array([[size // 2, size // 2]]), np.array([1]),
                    far, far_model, deblender.decode, size, steps=1, latent_scale=-np.ones(latent))
    # The shipped weights carry the spread of the training galaxies' codes.
    assert deblender.latent_scale.shape == (latent,) and np.all(deblender.latent_scale > 0)


def test_variance_from_the_sky_pixels():
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, [[[2.0]], [[5.0]]], size=(2, 120, 120)).astype(np.float32)
    footprints = np.zeros((120, 120), dtype=np.int32)
    footprints[40:80, 40:80] = 1
    image[:, 40:80, 40:80] += 1000.0  # a bright source inside the footprint is left out
    image[:, :, 100:] = 0.0  # and so is padding with no data
    np.testing.assert_allclose(estimate_variance(image, footprints, None), [4.0, 25.0], rtol=0.05)
    with pytest.raises(ValueError, match="pass the variance"):
        estimate_variance(np.zeros((2, 10, 10)), None, None)


def test_deblend_image_keeps_the_loaded_network(tmp_path):
    from lsst.meas.extensions.vae.deblend import deblend_image
    from lsst.meas.extensions.vae.deblend.network import load_deblender
    from lsst.meas.extensions.vae.model.weights import shipped_weights_path

    blend = BlendMaker(BlendConfig.preset("anchor")).make(seed=0, index=0)
    peaks = np.stack([blend.truth["x"], blend.truth["y"]], axis=1)
    first, _ = deblend_image(blend.image, peaks, device="cpu")
    model = load_deblender("lsst", device="cpu")
    assert load_deblender("lsst", device="cpu") is model  # loaded once, then kept
    again, _ = deblend_image(blend.image, peaks, device="cpu")
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.model, b.model)
    # A copy of the file elsewhere is another network; a rewritten file is loaded again.
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(shipped_weights_path("lsst").read_bytes())
    loaded = load_deblender(str(copy), device="cpu")
    assert loaded is not model and load_deblender(str(copy), device="cpu") is loaded
    copy.write_bytes(shipped_weights_path("lsst").read_bytes())
    import os

    os.utime(copy, ns=(0, 10**9))
    assert load_deblender(str(copy), device="cpu") is not loaded

"""Model v3: the wide training sky, per-blend observing conditions, and the PSF- and noise-aware networks."""

from __future__ import annotations

import logging

import galsim
import numpy as np
import pytest
import torch
from lsst.meas.extensions.vae.deblend.network import VaeDeblender, psf_fwhm_pixels
from lsst.meas.extensions.vae.model.networks import PRESETS, VAE, NetworkConfig, convolve_psf
from lsst.meas.extensions.vae.sim.blend import BlendConfig, BlendMaker
from lsst.meas.extensions.vae.sim.catalog import draw_wide
from lsst.meas.extensions.vae.sim.conditions import PSF_IMAGE_SIZE, psf_image
from lsst.meas.extensions.vae.surveys import get_survey

# Small wide blends for the tests: up to 3 galaxies within 2" on 33 x 33 stamps.
TINY_WIDE = dict(stamp_size=33, max_galaxies=3, annulus=(0.2, 2.0))


def test_wide_blends_carry_their_conditions():
    maker = BlendMaker(BlendConfig.preset("wide", **TINY_WIDE))
    blends = [maker.make(3, i) for i in range(12)]
    again = maker.make(3, 5)
    np.testing.assert_array_equal(again.image, blends[5].image)
    np.testing.assert_array_equal(again.psf, blends[5].psf)
    full_depth = (maker.survey.noise_sigma**2).astype(np.float32)
    fwhm = []
    for blend in blends:
        assert blend.psf.shape == (6, PSF_IMAGE_SIZE, PSF_IMAGE_SIZE)
        np.testing.assert_allclose(blend.psf.sum(axis=(1, 2)), 1.0, rtol=1e-5)
        ratio = blend.variance / full_depth
        # 1 to 10 years: the variance at full-depth flux units is 1 to 10 times the full depth's, the same
        # factor in every band.
        assert 0.99 <= ratio.min() and ratio.max() <= 10.01
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
        fwhm.append(psf_fwhm_pixels(blend.psf) * 0.2)
    fwhm = np.array(fwhm)
    r = fwhm[:, 2]
    assert 0.45 < r.min() and r.max() < 1.3 and r.max() - r.min() > 0.15  # drawn in 0.5-1.2"
    # Seeing scales as wavelength^-0.2: u is about 1.2 times wider than y.
    assert 1.1 < np.median(fwhm[:, 0] / fwhm[:, 5]) < 1.35
    assert len({round(v, 3) for v in (b.variance[2] for b in blends)}) == len(blends)  # depth varies


def test_conditions_leave_the_galaxies_alone():
    # The conditions come from their own stream: the same blend under other PSFs and depths.
    wide = BlendMaker(BlendConfig.preset("wide", **TINY_WIDE)).make(4, 2)
    fixed = BlendMaker(BlendConfig.preset("wide", **TINY_WIDE, psf_fwhm_range=None, psf_chromatic=0.0,
                                          psf_band_scatter=0.0, psf_moffat_fraction=0.0, psf_e_max=0.0,
                                          years=(10.0, 10.0))).make(4, 2)
    np.testing.assert_array_equal(wide.truth["x"], fixed.truth["x"])
    np.testing.assert_array_equal(wide.galaxies.mag, fixed.galaxies.mag)
    np.testing.assert_allclose(wide.truth["flux"], fixed.truth["flux"])
    assert not np.allclose(wide.truth_images, fixed.truth_images)


def test_wide_population_covers_what_the_issue_asks():
    galaxies = draw_wide(np.random.default_rng(0), 4000, 16.0, 27.5)
    r = galaxies.band_mag("r")
    assert 16.0 <= r.min() and r.max() <= 27.5 and np.mean(r < 20) > 0.1  # flattened: bright ones too
    assert galaxies.disk_hlr.min() < 0.07 and galaxies.disk_hlr.max() > 2.5
    assert galaxies.disk_n.min() <= 0.55 and galaxies.disk_n.max() >= 5.5
    e = (1 - galaxies.disk_q) / (1 + galaxies.disk_q)
    assert e.max() > 0.75
    knotty = galaxies.knot_count > 0
    assert 0.15 < knotty.mean() < 0.35 and np.all(galaxies.knot_fraction[knotty].max(axis=1) > 0)
    shares = galaxies.bulge_fraction + galaxies.knot_fraction
    assert np.all(shares <= 1.0 + 1e-9)


def test_knotty_galaxy_renders_its_flux():
    survey = get_survey("lsst")
    maker = BlendMaker(BlendConfig(psf_fwhm=0.7, stamp_size=59))
    galaxies = draw_wide(np.random.default_rng(5), 200, 20.0, 22.0)
    one = galaxies[np.flatnonzero((galaxies.knot_count > 0) & (galaxies.disk_hlr < 0.5))[:1]]
    image = maker.renderer.render(one, np.zeros(1), np.zeros(1))[0]
    flux = maker.renderer.band_fluxes(one)[0]
    np.testing.assert_allclose(image.sum(axis=(1, 2)), flux, rtol=0.01)
    # The same PSFs given per call draw the same images.
    psfs = [b.make_psf() for b in maker.survey.bands]
    again = maker.renderer.render(one, np.zeros(1), np.zeros(1), psfs=psfs)[0]
    assert np.abs(again - image).max() < 1e-4 * image.max()
    assert survey.band_names == maker.survey.band_names


def _moment_radius(image: np.ndarray) -> float:
    grid = np.arange(image.shape[-1]) - image.shape[-1] // 2
    r2 = grid[None, :] ** 2 + grid[:, None] ** 2
    light = np.clip(image, 0, None)
    return float(np.sqrt((light * r2).sum() / light.sum()))


def _gaussian_psf(fwhm: float, bands: int = 6) -> np.ndarray:
    psf = psf_image(galsim.Gaussian(fwhm=fwhm), 0.2)
    return np.repeat(psf[None], bands, axis=0)


def test_conditioned_decoder_convolves_with_the_psf():
    torch.manual_seed(0)
    config = NetworkConfig(stamp_size=33, conditioned=True, **PRESETS["small"])
    vae = VAE(config).eval()
    vae.set_scales(get_survey("lsst").noise_sigma)
    z = torch.randn(1, config.latent)
    narrow = torch.from_numpy(_gaussian_psf(0.5)[None])
    wide = torch.from_numpy(_gaussian_psf(1.2)[None])
    # A compact galaxy before the PSF (normalised units), seen through a narrow and a wide PSF.
    galaxy = psf_image(galsim.Exponential(half_light_radius=0.3), 0.2, 33) * 1e6
    scales = vae.decoder.scales.view(-1, 1, 1)
    raw = torch.asinh(torch.from_numpy(np.repeat(galaxy[None, None], 6, axis=1)) / scales)
    with torch.no_grad():
        out_narrow = (torch.sinh(vae.decoder.convolved(raw, narrow)) * scales)[0, 2].numpy()
        out_wide = (torch.sinh(vae.decoder.convolved(raw, wide)) * scales)[0, 2].numpy()
    assert _moment_radius(out_wide) > 1.1 * _moment_radius(out_narrow)
    np.testing.assert_allclose(out_wide.sum(), out_narrow.sum(), rtol=0.02)
    # The convolution keeps the flux of light well inside the stamp and centres the PSF on its pixel.
    point = torch.zeros(1, 6, 33, 33)
    point[..., 16, 16] = 1.0
    blurred = convolve_psf(point, wide)
    np.testing.assert_allclose(blurred.sum(dim=(2, 3)).numpy(), 1.0, rtol=1e-4)
    np.testing.assert_allclose(blurred[0, 0].numpy(), wide[0, 0, 4:37, 4:37].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="PSF"):
        vae.decoder(z)


@pytest.fixture(scope="module")
def tiny_v3(tmp_path_factory):
    """A real, tiny training run of the conditioned networks on wide 33 x 33 blends, bundled."""
    from lsst.meas.extensions.vae.model.training import TrainConfig, train
    from lsst.meas.extensions.vae.model.weights import load_model, save_bundle
    from lsst.meas.extensions.vae.sim.dataset import read_shard_config, write_blends

    root = tmp_path_factory.mktemp("tiny_v3")
    config = BlendConfig.preset("wide", **TINY_WIDE)
    write_blends(root / "train", 128, seed=1, config=config, jobs=1, progress=False)
    write_blends(root / "val", 32, seed=2, config=config, split="validation", jobs=1, progress=False)
    common = dict(train_dir=str(root / "train"), val_dir=str(root / "val"), batch_size=32, epoch_size=256,
                  max_epochs=3, patience=10, lr=2e-3, seed=0, bf16=False, conditioned=True, augment=True,
                  colour_jitter=0.3)
    vae_run = train(TrainConfig(kind="vae", out_dir=str(root / "vae"), **common), progress=False)
    deb_run = train(TrainConfig(kind="deblender", out_dir=str(root / "deblender"), neighbour_jitter=0.5,
                                vae_weights=str(root / "vae"), **{**common, "max_epochs": 1}), progress=False)
    vae, norm, meta = load_model(root / "vae" / "best.safetensors", kind="vae")
    deblender, _, deb_meta = load_model(root / "deblender" / "best.safetensors", kind="deblender")
    bundle = save_bundle(root / "tiny_v3.safetensors", vae, deblender, norm, meta["likelihood"],
                         extra={key: deb_meta[key] for key in ("data_config", "trained_over")})
    return {"vae_run": vae_run, "deblender_run": deb_run, "bundle": bundle,
            "config": read_shard_config(next((root / "val").glob("shard-*.h5"))), "root": root}


def test_conditioned_training_loss_falls(tiny_v3):
    run = tiny_v3["vae_run"]
    assert run["best_val_loss"] < 0.9 * run["initial_val_loss"]
    assert tiny_v3["config"].psf_fwhm_range == (0.5, 1.2)


def test_conditioned_deblender_takes_psf_and_noise(tiny_v3, caplog):
    net = VaeDeblender(str(tiny_v3["bundle"]), device="cpu")
    assert net.conditioned
    blend = BlendMaker(BlendConfig.preset("wide", **TINY_WIDE)).make(9, 0, split="test")
    stamps = blend.image[None]
    neighbours = np.full((1, 1, 2), np.nan)
    with pytest.raises(ValueError, match="PSF"):
        net(stamps, neighbours)
    models, _ = net(stamps, neighbours, psf=blend.psf, variance=blend.variance)
    assert np.isfinite(models).all()
    # The PSF reaches the model and the noise level the code (the direction of the PSF's effect on a
    # compact galaxy is tested on the decoder above: this briefly trained one draws broad blobs).
    with torch.no_grad():
        z = torch.from_numpy(net.encode(stamps, neighbours, psf=blend.psf, variance=blend.variance)[0])
        narrow = net.decode(z, torch.from_numpy(_gaussian_psf(0.5)[None])).numpy()[0, 2]
        wide = net.decode(z, torch.from_numpy(_gaussian_psf(1.2)[None])).numpy()[0, 2]
    assert np.abs(wide - narrow).max() > 1e-3 * np.abs(narrow).max()
    deep = net.encode(stamps, neighbours, psf=blend.psf, variance=blend.variance / 4)[0]
    assert not np.allclose(deep, z.numpy())
    # Inputs outside the training range are reported once, with what to check.
    with caplog.at_level(logging.WARNING, logger="lsst.meas.extensions.vae"):
        net(stamps, neighbours, psf=_gaussian_psf(2.5), variance=blend.variance)
        net(stamps, neighbours, psf=_gaussian_psf(2.5), variance=blend.variance)
    warnings = [r for r in caplog.records if "trained" in r.getMessage()]
    assert len(warnings) == 1 and "PSF FWHM" in warnings[0].getMessage()


def test_deblend_field_passes_the_psf(tiny_v3):
    from lsst.meas.extensions.vae.deblend.field import deblend_field

    net = VaeDeblender(str(tiny_v3["bundle"]), device="cpu")
    blend = BlendMaker(BlendConfig.preset("wide", **TINY_WIDE, min_galaxies=2)).make(9, 1, split="test")
    peaks = np.stack([blend.truth["x"], blend.truth["y"]], axis=1)
    with pytest.raises(ValueError, match="PSF"):
        deblend_field(blend.image, peaks, net, net.stamp_size)
    children, parents = deblend_field(blend.image, peaks, net, net.stamp_size, psf=blend.psf,
                                      variance=blend.variance)
    assert len(children) == len(peaks)
    # Flux conservation hands out the observed pixels: the children's fluxes sum to the parent's.
    total = sum(c.flux_conserved for c in children)
    np.testing.assert_allclose(total, parents[0].flux, rtol=1e-3)


def test_training_augmentations_keep_what_they_must(tiny_v3):
    from lsst.meas.extensions.vae.model.training import TrainConfig, _prepare
    from lsst.meas.extensions.vae.sim.dataset import BlendDataset

    data = BlendDataset(tiny_v3["root"] / "val")
    batch = data.read(0, 8, truth=False)
    config = TrainConfig(kind="deblender", vae_weights="x", conditioned=True, augment=True, colour_jitter=0.3)
    out = _prepare(batch, config, np.random.default_rng(0), 33, reference=2)
    target = out["target"].numpy()
    # Quarter turns and flips move pixels, not flux; the colour jitter leaves the reference band alone.
    flux, jittered = batch["central"].sum(axis=(2, 3)), target.sum(axis=(2, 3))
    np.testing.assert_allclose(jittered[:, 2], flux[:, 2], rtol=1e-5)
    assert not np.allclose(jittered[:, 0], flux[:, 0], rtol=1e-3)
    np.testing.assert_allclose(out["psf"].numpy().sum(axis=(2, 3)), 1.0, rtol=1e-5)
    assert out["neighbours"].shape == (8, 1, 33, 33)


def test_binned_blends_see_the_sky_on_coarser_pixels():
    config = BlendConfig.preset("wide", **TINY_WIDE, binned_fraction=1.0, years=(10.0, 10.0))
    maker = BlendMaker(config)
    full_depth = maker.survey.noise_sigma**2
    native = BlendMaker(BlendConfig.preset("wide", **TINY_WIDE, years=(10.0, 10.0)))
    for index in range(4):
        binned, plain = maker.make(2, index), native.make(2, index)
        k = maker.conditions(2, index).binning
        assert k in (3, 5)
        # A binned pixel holds k^2 pixels: k^2 times the noise variance, the offsets k times fewer pixels.
        np.testing.assert_allclose(binned.variance, k**2 * full_depth, rtol=1e-5)
        centre = config.stamp_size // 2
        np.testing.assert_allclose(binned.truth["x"] - centre, (plain.truth["x"] - centre) / k, atol=1e-9)
        # The same galaxies, the same flux, on coarser pixels.
        np.testing.assert_allclose(binned.truth["flux"], plain.truth["flux"])
        assert psf_fwhm_pixels(binned.psf[2]) < psf_fwhm_pixels(plain.psf[2])


@pytest.fixture(scope="module")
def scaled_bundle(tiny_v3):
    """The tiny v3 networks bundled with an amplitude reference: every stamp brighter than a faint core
    is divided down to it (the mechanism, not trained weights)."""
    import dataclasses

    from lsst.meas.extensions.vae.model.weights import load_model, save_bundle

    root = tiny_v3["root"]
    vae, norm, meta = load_model(root / "vae" / "best.safetensors", kind="vae")
    deblender, _, deb_meta = load_model(root / "deblender" / "best.safetensors", kind="deblender")
    scaled = dataclasses.replace(norm, amplitude_reference=20.0)
    return save_bundle(root / "tiny_v3_scaled.safetensors", vae, deblender, scaled, meta["likelihood"],
                       extra={key: deb_meta[key] for key in ("data_config", "trained_over")})


def test_amplitude_factor_makes_models_scale_with_the_data(scaled_bundle, tiny_v3):
    net = VaeDeblender(str(scaled_bundle), device="cpu")
    assert net.norm.amplitude_reference == 20.0
    blend = BlendMaker(BlendConfig.preset("wide", **TINY_WIDE, min_galaxies=2)).make(9, 3, split="test")
    stamps = blend.image[None].astype(np.float32)
    neighbours = np.full((1, 1, 2), np.nan)
    codes, factors = net.encode(stamps, neighbours, psf=blend.psf, variance=blend.variance)
    assert factors[0] > 1.0
    # Ten times the light and ten times the noise sigma: the same stamp to the network, ten times the model.
    for run in (lambda s, v: net(s, neighbours, psf=blend.psf, variance=v)[0],
                lambda s, v: net.reconstruct(s, psf=blend.psf, variance=v)):
        model, bright = run(stamps, blend.variance), run(10 * stamps, 100 * blend.variance)
        np.testing.assert_allclose(bright, 10 * model, rtol=2e-4, atol=1e-4 * np.abs(bright).max())
    bright_codes, bright_factors = net.encode(10 * stamps, neighbours, psf=blend.psf,
                                              variance=100 * blend.variance)
    np.testing.assert_allclose(bright_factors, 10 * factors, rtol=1e-5)
    np.testing.assert_allclose(bright_codes, codes, rtol=1e-4, atol=1e-4)
    # Without the reference the same networks do not scale (their flux comes from the code alone).
    plain = VaeDeblender(str(tiny_v3["bundle"]), device="cpu")
    a = plain(stamps, neighbours, psf=blend.psf, variance=blend.variance)[0]
    b = plain(10 * stamps, neighbours, psf=blend.psf, variance=100 * blend.variance)[0]
    assert not np.allclose(b, 10 * a, rtol=0.05)


def test_latent_fit_keeps_the_amplitude_factors(scaled_bundle):
    from lsst.meas.extensions.vae.deblend.field import DeblendConfig, deblend_field

    net = VaeDeblender(str(scaled_bundle), device="cpu")
    blend = BlendMaker(BlendConfig.preset("wide", **TINY_WIDE, min_galaxies=2)).make(9, 1, split="test")
    peaks = np.stack([blend.truth["x"], blend.truth["y"]], axis=1)
    encoder, _ = deblend_field(blend.image, peaks, net, net.stamp_size, psf=blend.psf,
                               variance=blend.variance, config=DeblendConfig(conserve_flux=False))
    # A fit of zero length is the encoder's models; a short fit stays near them (the factors reach the
    # fit's decoder: without them the fitted models would start a factor away).
    fitted, _ = deblend_field(blend.image, peaks, net, net.stamp_size, psf=blend.psf,
                              variance=blend.variance, config=DeblendConfig(conserve_flux=False, fit_steps=3,
                                                                            fit_learning_rate=1e-3))
    for e, f in zip(encoder, fitted):
        np.testing.assert_allclose(f.flux_model, e.flux_model, rtol=0.05,
                                   atol=1e-3 * np.abs(e.flux_model).max())


def test_training_with_an_amplitude_reference_learns(tiny_v3):
    from lsst.meas.extensions.vae.model.training import TrainConfig, train
    from lsst.meas.extensions.vae.model.weights import load_model

    root = tiny_v3["root"]
    with pytest.raises(ValueError, match="amplitude_reference"):
        TrainConfig(kind="vae", amplitude_reference=20.0)
    run = train(TrainConfig(kind="vae", out_dir=str(root / "vae_scaled"), train_dir=str(root / "train"),
                            val_dir=str(root / "val"), batch_size=32, epoch_size=256, max_epochs=2,
                            patience=10, lr=2e-3, seed=0, bf16=False, conditioned=True,
                            amplitude_reference=20.0, clip_grad_norm=50.0), progress=False)
    assert run["best_val_loss"] < 0.9 * run["initial_val_loss"]
    _, norm, _ = load_model(root / "vae_scaled" / "best.safetensors", kind="vae")
    assert norm.amplitude_reference == 20.0


def test_psf_images_stack_on_one_grid():
    from lsst.meas.extensions.vae.deblend.psf import stack_psf_images

    small, large = _gaussian_psf(0.7)[2, 10:31, 10:31], _gaussian_psf(1.0)[2]
    psf = stack_psf_images([small, None, large], size=33)
    assert psf.shape == (3, 33, 33)
    np.testing.assert_allclose(psf.sum(axis=(1, 2)), 1.0, rtol=1e-6)
    # Centre on centre, the band without a coadd borrows the first band's PSF, the 41-px one is cropped.
    assert np.unravel_index(psf[2].argmax(), psf[2].shape) == (16, 16)
    np.testing.assert_array_equal(psf[1], psf[0])
    np.testing.assert_allclose(psf[0, 6:27, 6:27], small / small.sum(), rtol=1e-5)
    assert stack_psf_images([small, large]).shape == (2, 41, 41)
    for bad in ([None, None], [np.ones((4, 5))], [np.full((3, 3), np.nan)]):
        with pytest.raises(ValueError):
            stack_psf_images(bad)


def test_rubin_array_path_passes_the_psf_at_each_peak(tiny_v3):
    from lsst.meas.extensions.vae.pipe.rubin.blends import deblend_blend

    net = VaeDeblender(str(tiny_v3["bundle"]), device="cpu")
    blend = BlendMaker(BlendConfig.preset("wide", **TINY_WIDE, min_galaxies=2)).make(9, 1, split="test")
    peaks = np.stack([blend.truth["x"], blend.truth["y"]], axis=1)
    footprint = np.ones(blend.image.shape[-2:], dtype=bool)
    variance = np.broadcast_to(blend.variance[:, None, None], blend.image.shape).copy()
    with pytest.raises(ValueError, match="PSF"):
        deblend_blend(blend.image, footprint, peaks, net, net.stamp_size, variance=variance)
    per_peak = np.broadcast_to(blend.psf, (len(peaks),) + blend.psf.shape)
    result = deblend_blend(blend.image, footprint, peaks, net, net.stamp_size, variance=variance,
                           psf=per_peak)
    assert len(result.children) == len(peaks) and np.isfinite(result.chi2)
    # A wider PSF at the peaks gives wider models (the decoder convolves with what it is given).
    wide = np.broadcast_to(_gaussian_psf(1.2)[None], per_peak.shape)
    wider = deblend_blend(blend.image, footprint, peaks, net, net.stamp_size, variance=variance, psf=wide)
    assert not np.allclose(wider.children[0].model, result.children[0].model)


def test_training_continues_from_a_bundle(tiny_v3):
    from lsst.meas.extensions.vae.model.training import TrainConfig, train

    root = tiny_v3["root"]
    common = dict(train_dir=str(root / "train"), val_dir=str(root / "val"), batch_size=32, epoch_size=64,
                  max_epochs=1, patience=10, lr=1e-4, seed=0, bf16=False, conditioned=True)
    run = train(TrainConfig(kind="vae", out_dir=str(root / "vae_continued"), init_from=str(tiny_v3["bundle"]),
                            **common), progress=False)
    # It starts where the bundle's VAE stopped (its validation loss), not from a fresh network's.
    fresh = tiny_v3["vae_run"]
    assert run["initial_val_loss"] < 0.9 * fresh["initial_val_loss"]
    np.testing.assert_allclose(run["initial_val_loss"], fresh["best_val_loss"], rtol=0.02)
    with pytest.raises(ValueError, match="another network or normalisation"):
        train(TrainConfig(kind="vae", out_dir=str(root / "vae_other"), init_from=str(tiny_v3["bundle"]),
                          amplitude_reference=5.0, **common), progress=False)


def test_flux_loss_pulls_a_faint_model_up():
    from lsst.meas.extensions.vae.model.normalization import Normalization
    from lsst.meas.extensions.vae.model.training import flux_loss

    norm = Normalization.asinh(np.full(2, 10.0))
    galaxy = torch.from_numpy(psf_image(galsim.Exponential(half_light_radius=0.5), 0.2)[None, None]).float()
    target = 5000.0 * galaxy.expand(1, 2, -1, -1)
    variance = torch.full((1, 2), 100.0)
    exact = flux_loss(norm.forward(target), target, variance, norm)
    assert float(exact) < 1e-6
    # A model 20 % too faint: the loss is (0.2 F)^2 / (pixels var + (0.02 F)^2) / 2 per band.
    output = norm.forward(0.8 * target).requires_grad_(True)
    loss = flux_loss(output, target, variance, norm)
    flux, pixels = 5000.0 * float(galaxy.sum()), galaxy.shape[-1] ** 2
    expected = 2 * 0.5 * (0.2 * flux) ** 2 / (pixels * 100.0 + (0.02 * flux) ** 2)
    np.testing.assert_allclose(float(loss.detach()), expected, rtol=1e-3)
    loss.backward()
    assert float(output.grad.sum()) < 0  # a step against the gradient brightens the model

    # The pseudo-Huber form: the same near zero, linear far out (a neighbour's light in the model).
    chi = np.sqrt(2 * expected / 2)  # per band
    huber = flux_loss(output.detach(), target, variance, norm, huber=3.0)
    np.testing.assert_allclose(float(huber), 2 * 9.0 * (np.sqrt(1 + chi**2 / 9.0) - 1), rtol=1e-3)
    assert abs(float(huber) - expected) < 0.2 * expected  # chi ~ 1.9: still close to chi^2 / 2
    # A model 30 times the truth: the loss and its gradient in the model's flux scale a.
    a = torch.tensor(30.0, requires_grad=True)
    plain = flux_loss(norm.forward(a * target), target, variance, norm)
    bounded = flux_loss(norm.forward(a * target), target, variance, norm, huber=3.0)
    assert bounded.item() < 0.05 * plain.item()
    (grad,) = torch.autograd.grad(bounded, a)
    error = np.sqrt(pixels * 100.0 + (0.02 * flux) ** 2)
    assert 0 < grad.item() <= 2 * 3.0 * flux / error * 1.001  # at most `huber` flux errors per band

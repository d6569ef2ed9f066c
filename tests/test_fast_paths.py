"""The fast paths of the CPU hot loop give what the plain ones give: the vectorised ``asinh`` of the
normalisation, bfloat16 network passes (`VaeDeblender(precision="bfloat16")`) on real GalSim blends, and the
detection image summed over bands in Fourier space with each band's SNR taken at the peaks only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsst.meas.extensions.vae.deblend.field import DeblendConfig, deblend_field
from lsst.meas.extensions.vae.deblend.network import VaeDeblender
from lsst.meas.extensions.vae.measure.detection import band_snr_at, detection_snr, fft_convolve
from lsst.meas.extensions.vae.model.normalization import asinh


def test_vectorised_asinh_is_torch_asinh():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.concatenate([rng.normal(0, 1, 10_000), rng.normal(0, 1e4, 10_000),
                                         10.0 ** rng.uniform(-30, 38, 1000)]).astype(np.float32))
    x = torch.cat([x, -x])
    exact = torch.asinh(x.double())
    # Relative error against float64: 1.1e-7 measured, as torch's own (1.1e-7).
    assert ((asinh(x).double() - exact).abs() / exact.abs().clamp_min(1e-300)).max() < 3e-7
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 3e38, -3e38, float("nan")])
    np.testing.assert_array_equal(asinh(special).numpy(), torch.asinh(special).numpy())
    assert torch.signbit(asinh(torch.tensor([-0.0])))[0]
    # Where gradients are taken, torch's own (derivative 1 at 0).
    z = torch.zeros(3, requires_grad=True)
    asinh(z).sum().backward()
    np.testing.assert_array_equal(z.grad.numpy(), [1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def blends():
    from lsst.meas.extensions.vae.sim.blend import BlendConfig, BlendMaker

    maker = BlendMaker(BlendConfig.preset("anchor"))
    return [maker.make(seed=12, index=i, split="test") for i in range(12)]


def test_bfloat16_passes_match_float32_on_real_blends(shipped_deblender, blends):
    with pytest.raises(ValueError, match="precision"):
        VaeDeblender("lsst", device="cpu", precision="float16")
    fast = VaeDeblender("lsst", device="cpu", precision="bfloat16")
    r = fast.bands.index("r")
    flux = {"float32": [], "bfloat16": []}
    truth_errors = {"float32": [], "bfloat16": []}
    for blend in blends:
        peaks = np.stack([blend.truth["x"], blend.truth["y"]], axis=1)
        for name, net in (("float32", shipped_deblender), ("bfloat16", fast)):
            children, _ = deblend_field(blend.image, peaks, net, net.stamp_size, variance=blend.variance,
                                        config=DeblendConfig(refine_steps=2))
            for k, child in enumerate(children):
                truth = blend.truth_images[k][r].sum()
                flux[name].append(child.model[r].sum())
                truth_errors[name].append(abs(child.model[r].sum() / truth - 1))
    gap = np.abs(np.array(flux["bfloat16"]) / np.array(flux["float32"]) - 1)
    # Measured: median 0.003, largest 0.024 on these 12 blends (with the first and last layers in bfloat16
    # too, one bright galaxy's model moved by 0.15); the accuracy against the truth is the same.
    assert np.median(gap) < 0.01 and gap.max() < 0.05
    assert np.median(truth_errors["bfloat16"]) < 1.1 * np.median(truth_errors["float32"]) + 0.005
    # The same inputs give the same models run to run.
    peaks = np.stack([blends[0].truth["x"], blends[0].truth["y"]], axis=1)
    runs = [deblend_field(blends[0].image, peaks, fast, fast.stamp_size, variance=blends[0].variance,
                          config=DeblendConfig(refine_steps=2))[0] for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a.model, b.model)


def test_detection_image_and_band_snr_match_direct_convolutions():
    rng = np.random.default_rng(3)
    shape, bands = (70, 90), 3
    yy, xx = np.mgrid[:41, :41] - 20
    # Off-centre kernels: a convolution and a correlation differ on them.
    psfs = [np.exp(-((xx - 0.8) ** 2 + (yy + 0.5) ** 2) / (2 * s**2)) for s in (1.5, 2.0, 2.5)]
    psfs = [p / p.sum() for p in psfs]
    variances = [np.full(shape, v, dtype=np.float32) * rng.uniform(0.8, 1.2, shape).astype(np.float32)
                 for v in (4.0, 9.0, 25.0)]
    images = [rng.normal(0, np.sqrt(v)).astype(np.float32) for v in variances]
    for image in images:
        image[30:34, 40:44] += 200.0
    bad = np.zeros(shape, dtype=bool)
    bad[10, 10] = True
    images[1][5, 80] = np.nan
    snr = detection_snr(images, variances, psfs, bad)
    # The per-band sums of the module's definition, one convolution at a time.
    signal, noise = np.zeros(shape), np.zeros(shape)
    band = []
    for image, variance, psf in zip(images, variances, psfs):
        good = np.isfinite(image) & ~bad
        weight = np.where(good, 1.0 / variance, 0.0)  # float32, as the module's
        clean = np.where(good, image, 0.0).astype(np.float64)
        signal += fft_convolve(clean * weight, psf)
        noise += fft_convolve(weight, psf**2)
        band.append(fft_convolve(clean, psf) / np.sqrt(fft_convolve(np.where(good, variance, 0.0), psf**2)))
    np.testing.assert_allclose(snr, signal / np.sqrt(noise), rtol=1e-9, atol=1e-9)
    points = np.array([[41, 31], [0, 0], [89, 69], [80, 5], [45, 60]])  # the blob, corners, the NaN pixel
    expected = np.stack([b[points[:, 1], points[:, 0]] for b in band], axis=1)
    np.testing.assert_allclose(band_snr_at(images, variances, psfs, points, bad), expected, rtol=1e-9,
                               atol=1e-9)
    assert band_snr_at(images, variances, psfs, points[:0], bad).shape == (0, bands)

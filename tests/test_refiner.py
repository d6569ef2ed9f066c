"""The learned refinement (issue 12): a real, small training run on real GalSim blends through the tiny
trained deblender, its loss on held-out blends, the weights' round trip, and the field's refinement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsst.meas.extensions.vae.deblend.field import DeblendConfig, deblend_field
from lsst.meas.extensions.vae.deblend.network import VaeDeblender
from lsst.meas.extensions.vae.deblend.refine import RefinerTrainConfig, train_refiner
from lsst.meas.extensions.vae.model.refiner import Refiner, RefinerConfig
from lsst.meas.extensions.vae.model.weights import (WeightsMismatchError, load_refiner, read_metadata,
                                                    save_refiner)
from lsst.meas.extensions.vae.sim.dataset import BlendDataset


@pytest.fixture(scope="module")
def refiner_run(tiny_training):
    root = tiny_training["root"]
    config = RefinerTrainConfig(train=(str(root / "train"),), val=(str(root / "val"),),
                                weights=str(tiny_training["bundle"]), out=str(root / "refiner"), steps=2,
                                filters=(8, 16), dense=64, batch_size=32, lr=1e-3, max_epochs=8, patience=8,
                                seed=0)
    return train_refiner(config, progress=False)


# The tiny network's wide models would send every galaxy of its single-stamp blends to a binned stamp,
# which the refinement leaves alone.
def _blend(root, index: int = 0):
    data = BlendDataset(sorted((root / "val").glob("shard-*.h5")))
    batch = data.read(index, index + 1)
    o, n = batch["galaxy_offset"][0], batch["n_galaxies"][0]
    peaks = np.stack([batch["truth"]["x"][o:o + n], batch["truth"]["y"][o:o + n]], axis=1)
    return batch["image"][0], peaks, batch["variance"][0], batch["truth_images"][0]


def test_refinement_lowers_the_loss_on_held_out_blends(refiner_run):
    history = refiner_run["history"]
    encoder = history[0]["val_loss_encoder"]
    # Held-out blends (the validation split, never trained on): the refined models' loss against the truth
    # is below the encoder's models' loss (measured 0.957 of it with this tiny network and 512 blends; 0.81
    # with the shipped weights and 3,900 blends, docs/benchmarks.md).
    assert refiner_run["best_val"] < 0.98 * encoder, history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    meta = read_metadata(refiner_run["path"])
    assert meta["kind"] == "refiner" and meta["steps"] == "2"


def test_untrained_refiner_changes_nothing(tiny_training):
    net = VaeDeblender(str(tiny_training["bundle"]), device="cpu", refiner=Refiner(RefinerConfig(
        bands=("u", "g", "r", "i", "z", "y"), stamp_size=33, latent=32, filters=(8,), dense=16)))
    image, peaks, variance, _ = _blend(tiny_training["root"])
    plain, _ = deblend_field(image, peaks, net, net.stamp_size, variance=variance,
                             config=DeblendConfig(bin_large=False))
    refined, _ = deblend_field(image, peaks, net, net.stamp_size, variance=variance,
                               config=DeblendConfig(refine_steps=2, bin_large=False))
    for a, b in zip(plain, refined):
        np.testing.assert_allclose(b.model, a.model, rtol=1e-5, atol=1e-4)


def test_field_refinement_is_applied_and_deterministic(tiny_training, refiner_run):
    net = VaeDeblender(str(tiny_training["bundle"]), device="cpu", refiner=refiner_run["path"])
    image, peaks, variance, _ = _blend(tiny_training["root"], 3)
    plain, _ = deblend_field(image, peaks, net, net.stamp_size, variance=variance,
                             config=DeblendConfig(bin_large=False))
    first, _ = deblend_field(image, peaks, net, net.stamp_size, variance=variance,
                             config=DeblendConfig(refine_steps=2, bin_large=False))
    second, _ = deblend_field(image, peaks, net, net.stamp_size, variance=variance,
                              config=DeblendConfig(refine_steps=2, bin_large=False))
    moved = [float(np.abs(a.model - b.model).sum() / max(np.abs(a.model).sum(), 1e-9))
             for a, b in zip(plain, first)]
    assert max(moved) > 1e-3, moved  # the trained refiner changes the models
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.model, b.model)
        assert np.isfinite(a.model).all()
    # The children still add up to the parent inside the footprint (flux conservation after refinement).
    total = sum(c.flux_conserved for c in first)
    np.testing.assert_allclose(total, image.sum(axis=(1, 2)), rtol=1e-4)


def test_refiner_weights_belong_to_their_bundle(tiny_training, refiner_run, shipped_deblender):
    refiner, meta = load_refiner(refiner_run["path"], read_metadata(tiny_training["bundle"]))
    assert refiner.config.filters == (8, 16) and meta["bundle_sha256"] == read_metadata(
        tiny_training["bundle"])["sha256"]
    with pytest.raises(WeightsMismatchError, match="trained on other weights"):
        load_refiner(refiner_run["path"], shipped_deblender.metadata)
    copy = save_refiner(tiny_training["root"] / "copy.refiner.safetensors", refiner,
                        read_metadata(tiny_training["bundle"]))
    again, _ = load_refiner(copy, read_metadata(tiny_training["bundle"]))
    for key, value in refiner.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])


def test_refinement_and_fit_are_one_or_the_other():
    with pytest.raises(ValueError, match="choose one"):
        DeblendConfig(refine_steps=2, fit_steps=60)
    with pytest.raises(ValueError, match="refine_steps"):
        DeblendConfig(refine_steps=-1)


def test_weights_without_a_refiner_say_how_to_get_one(tiny_training):
    net = VaeDeblender(str(tiny_training["bundle"]), device="cpu")
    image, peaks, variance, _ = _blend(tiny_training["root"])
    with pytest.raises(FileNotFoundError, match="vae-deblend train refiner"):
        deblend_field(image, peaks, net, net.stamp_size, variance=variance,
                      config=DeblendConfig(refine_steps=1, bin_large=False))


def test_relative_loss_scores_each_galaxy_against_its_encoder_models(tiny_training, refiner_run):
    from pathlib import Path

    from lsst.meas.extensions.vae.deblend.refine import _tensors, refiner_loss

    net = VaeDeblender(str(tiny_training["bundle"]), device="cpu", deterministic=False)
    capture = next(Path(refiner_run["path"]).parent.glob("capture-val-*.npz"))
    with np.load(capture) as f:
        arrays = {key: f[key] for key in f.files}
    batch = _tensors(arrays, np.arange(16), net.stamp_size)
    refiner = load_refiner(refiner_run["path"], net.metadata)[0]
    with torch.no_grad():
        assert refiner_loss(net, refiner, batch, 0, 1.0, 3.0, relative=True).item() == pytest.approx(1.0)
        absolute = refiner_loss(net, refiner, batch, 2, 1.0, 3.0).item()
        relative = refiner_loss(net, refiner, batch, 2, 1.0, 3.0, relative=True).item()
    assert np.isfinite(absolute) and 0 < relative < 10


def test_shipped_refiner_brings_real_models_closer_to_the_truth(shipped_deblender):
    """The shipped refiner with the shipped weights on 20 real GalSim anchor blends of the test split
    (galaxies it never trained on; the anchor preset is one of its training skies): every galaxy's model r
    flux against its truth."""
    from lsst.meas.extensions.vae.sim.blend import BlendConfig, BlendMaker

    net = shipped_deblender
    assert net.refiner.config.filters == (16, 32, 64)  # loads, and belongs to these weights
    maker = BlendMaker(BlendConfig.preset("anchor"))
    r = net.bands.index("r")
    errors: dict[int, list] = {0: [], 2: []}
    for index in range(20):
        blend = maker.make(seed=7, index=index, split="test")
        peaks = np.stack([blend.truth["x"], blend.truth["y"]], axis=1)
        for steps in errors:
            children, _ = deblend_field(blend.image, peaks, net, net.stamp_size, variance=blend.variance,
                                        config=DeblendConfig(refine_steps=steps))
            for k, child in enumerate(children):
                truth = blend.truth_images[k][r].sum()
                errors[steps].append((child.model[r].sum() - truth) / truth)
    encoder, refined = np.abs(errors[0]), np.abs(errors[2])
    # Measured: median abs(df/f) 0.206 -> 0.101, mean 0.296 -> 0.194, median df/f -0.063 -> +0.016.
    assert np.median(refined) < 0.7 * np.median(encoder)
    assert refined.mean() < encoder.mean()
    assert abs(np.median(errors[2])) < abs(np.median(errors[0]))

"""Networks, normalisation, a tiny real training run, weights."""

import json

import numpy as np
import pytest
import torch

from lsst.meas.extensions.vae.model.networks import PRESETS, VAE, Deblender, NetworkConfig, neighbour_maps
from lsst.meas.extensions.vae.model.normalization import Normalization
from lsst.meas.extensions.vae.model.weights import (
    WeightsMismatchError,
    load_bundle,
    load_model,
    read_metadata,
    save_model,
)


def test_shapes_and_presets():
    for preset, n_params in (("small", 2_002_057), ("paper", 5_824_201)):
        config = NetworkConfig(**PRESETS[preset])
        vae = VAE(config)
        assert sum(p.numel() for p in vae.parameters()) == n_params
        out, mean, log_std = vae(torch.zeros(2, 6, 59, 59))
        assert out.shape == (2, 6, 59, 59) and mean.shape == (2, 32) and log_std.shape == (2, 32)
    deb = Deblender(NetworkConfig(stamp_size=33))
    out, _, _ = deb(torch.zeros(3, 6, 33, 33), torch.zeros(3, 1, 33, 33))
    assert out.shape == (3, 6, 33, 33)


def test_deblender_starts_as_the_vae():
    config = NetworkConfig(stamp_size=33)
    vae = VAE(config).eval()
    deb = Deblender(config).eval()
    deb.init_from_vae(vae)
    x = torch.randn(2, 6, 33, 33)
    with torch.no_grad():
        a = vae(x, sample=False)[0]
        b = deb(x, torch.rand(2, 1, 33, 33))[0]
    torch.testing.assert_close(a, b)  # the neighbour channel starts with zero weights
    assert not any(p.requires_grad for p in deb.decoder.parameters())


def test_normalizations_invert():
    x = torch.tensor([[-50.0, 0.0, 3.0, 1e5]]).view(1, 1, 1, 4).repeat(1, 2, 1, 1)
    asinh = Normalization.asinh(np.array([10.0, 20.0]))
    torch.testing.assert_close(asinh.inverse(asinh.forward(x)), x, rtol=1e-4, atol=1e-3)
    # The paper's tanh saturates in float32 beyond ~6 I_b: check inversion below that.
    paper = Normalization.paper(np.array([500.0, 80.0]))
    moderate = x.clamp(max=300.0)
    torch.testing.assert_close(paper.inverse(paper.forward(moderate)), moderate, rtol=1e-3, atol=1e-3)
    assert paper.forward(x).abs().max() <= 1.0
    for norm in (asinh, paper):
        assert Normalization.from_json(norm.to_json()) == norm
    with pytest.raises(ValueError, match="Unknown normalization"):
        Normalization("log", (1.0,))


def test_neighbour_maps():
    maps = neighbour_maps(np.array([[[10.0, 5.0], [np.nan, np.nan]]]), 21)
    assert maps.shape == (1, 1, 21, 21)
    assert maps[0, 0, 5, 10] == pytest.approx(1.0) and maps[0, 0].sum() == pytest.approx(2 * np.pi * 1.5**2,
                                                                                          rel=1e-3)


def test_tiny_training_run_loss_falls(tiny_training):
    vae_history = json.loads((tiny_training["root"] / "vae" / "history.json").read_text())
    run = tiny_training["vae_run"]
    # From the untrained network to 6 short epochs (96 steps): measured 1023.5 -> 885.0 (seeded, CPU).
    assert run["best_val_loss"] < 0.92 * run["initial_val_loss"]
    assert vae_history[-1]["train_loss"] < vae_history[0]["train_loss"]
    assert (tiny_training["root"] / "vae" / "loss_curves.png").exists()
    assert tiny_training["deblender_run"]["epochs"] == 2


def test_training_resumes(tiny_training, tmp_path):
    from lsst.meas.extensions.vae.model.training import TrainConfig, train

    root = tiny_training["root"]
    common = dict(train_dir=str(root / "train"), val_dir=str(root / "val"), batch_size=32, epoch_size=64,
                  patience=10, seed=3, bf16=False, out_dir=str(tmp_path / "run"))
    first = train(TrainConfig(max_epochs=1, **common), progress=False)
    resumed = train(TrainConfig(max_epochs=2, **common), resume=True, progress=False)
    assert first["epochs"] == 1 and resumed["epochs"] == 2
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_deblender_fine_tunes_from_a_trained_encoder(tiny_training, tmp_path):
    from lsst.meas.extensions.vae.model.training import TrainConfig, train

    root = tiny_training["root"]
    common = dict(kind="deblender", train_dir=str(root / "train"), val_dir=str(root / "val"), batch_size=32,
                  epoch_size=64, max_epochs=1, seed=0, bf16=False, vae_weights=str(root / "vae"))
    tuned = train(TrainConfig(out_dir=str(tmp_path / "tuned"),
                              init_encoder=str(root / "deblender" / "best.safetensors"), **common),
                  progress=False)
    # It starts where the trained deblender ended, not where a fresh one (the VAE's encoder) starts.
    assert tuned["initial_val_loss"] == pytest.approx(tiny_training["deblender_run"]["best_val_loss"],
                                                      rel=1e-4)
    assert tuned["initial_val_loss"] < tiny_training["deblender_run"]["initial_val_loss"]
    with pytest.raises(ValueError, match="not a 'deblender'"):
        train(TrainConfig(out_dir=str(tmp_path / "wrong"), init_encoder=str(tiny_training["bundle"]),
                          **common), progress=False)


def test_weights_round_trip_and_checks(tiny_training, tmp_path):
    path = tiny_training["root"] / "vae" / "best.safetensors"
    vae, norm, meta = load_model(path, kind="vae", bands=("u", "g", "r", "i", "z", "y"), stamp_size=33)
    assert meta["kind"] == "vae" and json.loads(meta["bands"]) == list("ugrizy")
    copy = save_model(tmp_path / "copy.safetensors", vae, norm, kind="vae", extra={"data_seed": 1})
    again, _, meta2 = load_model(copy, kind="vae")
    for (k, a), (_, b) in zip(vae.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    assert meta2["data_seed"] == "1" and len(meta2["sha256"]) == 64
    with pytest.raises(WeightsMismatchError, match="bands"):
        load_model(path, kind="vae", bands=("VIS", "Y", "J", "H"))
    with pytest.raises(WeightsMismatchError, match="stamp size"):
        load_model(path, kind="vae", stamp_size=59)
    with pytest.raises(WeightsMismatchError, match="normalisation"):
        load_model(path, kind="vae", normalization=Normalization.asinh(np.ones(6)))
    with pytest.raises(ValueError, match="holds a 'vae'"):
        load_model(path, kind="deblender")
    vae_b, deb_b, norm_b, meta_b = load_bundle(tiny_training["bundle"])
    assert meta_b["kind"] == "bundle" and norm_b == norm
    torch.testing.assert_close(deb_b.decoder.state_dict()["features.0.weight"],
                               vae.decoder.state_dict()["features.0.weight"])
    assert "data_config" in read_metadata(tiny_training["bundle"])


def test_corrupt_weights_fail_clearly(tiny_training, tmp_path):
    data = bytearray((tiny_training["root"] / "vae" / "best.safetensors").read_bytes())
    data[-10] ^= 0xFF
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_model(bad, kind="vae")


def test_bundle_stores_the_latent_spread_and_the_deblender_reads_it(tiny_training, tmp_path):
    from lsst.meas.extensions.vae.cli import main
    from lsst.meas.extensions.vae.deblend.network import VaeDeblender
    from lsst.meas.extensions.vae.model.latents import latent_spread
    from lsst.meas.extensions.vae.sim.dataset import BlendDataset

    root = tiny_training["root"]
    out = tmp_path / "bundle.safetensors"
    # The spread comes from the VAE's own training data (train_config) by default.
    assert main(["bundle", "--vae", str(root / "vae"), "--deblender", str(root / "deblender"),
                 "--out", str(out), "--latent-samples", "300"]) == 0
    meta = read_metadata(out)
    assert json.loads(meta["latent_spread_data"]) == {"data": str(root / "train"), "n": 300, "seed": 0}
    spread = np.array(json.loads(meta["latent_spread"]))
    deblender = VaeDeblender(str(out), device="cpu")
    np.testing.assert_allclose(deblender.latent_scale, spread, rtol=1e-6)
    assert deblender.latent_scale.shape == (deblender.vae.config.latent,)
    assert np.all(deblender.latent_scale > 0)
    # The same galaxies and seed give the same spread, across shard blocks; more galaxies agree closely.
    vae, norm, _ = load_model(root / "vae" / "best.safetensors", kind="vae")
    data = BlendDataset(root / "train")
    again = latent_spread(vae, norm, data, n=300, seed=0, block=128)
    np.testing.assert_allclose(again, spread, rtol=1e-4, atol=1e-6)  # stored to 6 decimals
    more = latent_spread(vae, norm, data, n=512, seed=1)
    assert np.median(np.abs(more / spread - 1)) < 0.1
    # Weights bundled without it step in unit coordinates.
    assert VaeDeblender(str(tiny_training["bundle"]), device="cpu").latent_scale is None

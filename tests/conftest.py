"""Shared test fixtures."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CATALOGS = REPO.parent / "shared" / "data" / "catalogs"

warnings.filterwarnings("ignore", message=".*drawFFT requires a very large FFT.*")


@pytest.fixture(scope="session")
def shared_catalogs() -> Path:
    """The real galaxy catalogues beside the project (CI has them; a user's clone does not)."""
    if not SHARED_CATALOGS.is_dir():
        pytest.skip("../shared/data/catalogs is absent (only CI and developers have it)")
    return SHARED_CATALOGS


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory):
    """A real, tiny training run (VAE then deblender, seconds) on simulated 33x33 blends, bundled."""
    import dataclasses

    from lsst.meas.extensions.vae.model.training import TrainConfig, train
    from lsst.meas.extensions.vae.model.weights import load_model, save_bundle
    from lsst.meas.extensions.vae.sim.blend import BlendConfig
    from lsst.meas.extensions.vae.sim.dataset import write_blends

    root = tmp_path_factory.mktemp("tiny")
    config = BlendConfig.preset("training", stamp_size=33, annulus=(0.325, 1.5))
    write_blends(root / "train", 512, seed=1, config=config, jobs=1, progress=False)
    write_blends(root / "val", 64, seed=2, config=config, split="validation", jobs=1, progress=False)
    common = dict(train_dir=str(root / "train"), val_dir=str(root / "val"), batch_size=32, epoch_size=512,
                  max_epochs=6, patience=10, lr=2e-3, seed=0, bf16=False)
    vae_run = train(TrainConfig(kind="vae", out_dir=str(root / "vae"), **common), progress=False)
    deb_run = train(TrainConfig(kind="deblender", out_dir=str(root / "deblender"),
                                vae_weights=str(root / "vae"), **{**common, "max_epochs": 2}),
                    progress=False)
    vae, norm, meta = load_model(root / "vae" / "best.safetensors", kind="vae")
    deblender, _, _ = load_model(root / "deblender" / "best.safetensors", kind="deblender")
    bundle = save_bundle(root / "tiny.safetensors", vae, deblender, norm, meta["likelihood"],
                         extra={"data_config": json.dumps(dataclasses.asdict(config))})
    return {"root": root, "vae_run": vae_run, "deblender_run": deb_run, "bundle": bundle}


@pytest.fixture(scope="session")
def tiny_deblender(tiny_training):
    """The tiny training run's bundle as a `VaeDeblender` on the CPU (33x33 stamps)."""
    from lsst.meas.extensions.vae.deblend.network import VaeDeblender

    return VaeDeblender(str(tiny_training["bundle"]), device="cpu")


@pytest.fixture(scope="session")
def shipped_deblender():
    """The shipped weights (``weights/lsst.safetensors``) as a `VaeDeblender` on the CPU."""
    from lsst.meas.extensions.vae.deblend.network import VaeDeblender

    return VaeDeblender("lsst", device="cpu")

"""The vae-deblend command line, run as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

from lsst.meas.extensions.vae.sim.dataset import BlendDataset
from lsst.meas.extensions.vae.sim.patch import read_patch

BIN = Path(sys.executable).parent


def _run(*args):
    return subprocess.run([str(BIN / "vae-deblend"), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "Agg"})


def test_simulate_blends_and_patch(tmp_path):
    out = tmp_path / "blends"
    result = _run("simulate", "blends", "--n", "24", "--seed", "3", "--survey", "lsst", "--out", str(out),
                  "--jobs", "2", "--stamp-size", "45", "--split", "test", "--no-progress")
    assert "24 blends" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 24 and summary["config"]["stamp_size"] == 45 and summary["split"] == "test"
    assert (out / "gallery.png").stat().st_size > 10_000
    assert len(BlendDataset(out)) == 24

    out = tmp_path / "patch"
    _run("simulate", "patch", "--n", "1", "--seed", "4", "--out", str(out), "--size", "120", "--no-progress")
    patch = read_patch(out / "patch-4.h5")
    assert patch.band("r").image.shape == (120, 120) and len(patch.truth) > 5
    assert (out / "patch-4.png").exists()


def test_simulate_from_a_catalog(tmp_path, shared_catalogs):
    out = tmp_path / "catsim"
    _run("simulate", "blends", "--n", "6", "--seed", "0", "--out", str(out), "--jobs", "1",
         "--catalog", str(shared_catalogs / "catsim_sample_100.fits"), "--no-progress", "--no-gallery")
    data = BlendDataset(out)
    idents = data.read(0, 6)["truth"]["ident"]
    assert idents.min() > 2_000_000_000  # CatSim galtileids, not generated idents


def test_help_lists_the_commands():
    result = _run("--help")
    assert "simulate" in result.stdout and "demo" in result.stdout
    bad = subprocess.run([str(BIN / "vae-deblend"), "simulate", "blends", "--n", "3", "--out", "x",
                          "--survey", "hsc"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_cli_preset_names_match_the_blend_presets():
    from lsst.meas.extensions.vae.cli import BLEND_PRESET_NAMES
    from lsst.meas.extensions.vae.sim.blend import BLEND_PRESETS

    assert BLEND_PRESET_NAMES == tuple(BLEND_PRESETS)

"""``bps submit`` of the standalone pipeline with ctrl_bps_parsl on this machine (bps/demo-parsl-local.yaml):
a simulated 150x150 patch in a temporary repository, three jobs (detect, deblend, measure) run by parsl
workers, outputs read back from the BPS output collection.  Takes about 40 s."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lsst.ctrl.bps.parsl")

from lsst.meas.extensions.vae.pipe.standalone import make_repo, read_outputs  # noqa: E402
from lsst.meas.extensions.vae.sim.patch import PatchConfig, make_patch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_bps_submit_runs_the_demo_pipeline(tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo, [make_patch(PatchConfig(size=150), seed=3)])
    # A site file of the user's kind: the shipped submit file, with its own operator and submit folder.
    submit = tmp_path / "submit.yaml"
    submit.write_text(f"includeConfigs:\n  - {ROOT / 'bps' / 'demo-parsl-local.yaml'}\n"
                      f"operator: vaetest\nsubmitPath: {tmp_path / 'submit'}/{{outputRun}}\n")
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, CTRL_MPEXEC_DIR=sys.prefix, DAF_BUTLER_DIR=sys.prefix,
               MEAS_EXTENSIONS_VAE_DIR=str(ROOT), VAE_REPO=str(repo),
               PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run([str(Path(bin_dir) / "bps"), "submit", str(submit)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "States.failed: 0" in done.stdout + done.stderr

    outputs = read_outputs(repo, collection="u/vaetest/vae_demo")
    parents, detections, objects = outputs["parents"], outputs["detections"], outputs["objects"]
    assert len(parents) > 3 and list(parents["id"]) == list(detections["id"])
    accounted = ((parents["deblend_nChild"] > 0) | (parents["deblend_nPeaks"] == 1)
                 | parents["deblend_skipped"] | parents["deblend_failed"])
    assert accounted.all()
    assert list(outputs["measurement"]["id"]) == list(objects["id"])
    assert np.isfinite(outputs["measurement"]["r_flux"]).all()

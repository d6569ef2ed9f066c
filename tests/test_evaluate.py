"""`vae-deblend evaluate` end to end with a real (tiny) trained network."""

import json

import numpy as np

from lsst.meas.extensions.vae.evaluate import evaluate


def test_evaluate_writes_metrics_and_plots(tiny_training, tmp_path):
    metrics = evaluate(str(tiny_training["bundle"]), n=12, seed=3, out_dir=tmp_path, preset="anchor",
                       chunk=5, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("n", "e1_err_median", "e2_err_median", "e_abs_err_median", "e_err_rms", "mag_err_median",
                "mag_err_nmad", "flux_rel_abs_err_mean", "by_snr", "by_blendedness", "baseline",
                "isolated_bound", "conserved_flux"):
        assert key in saved
    assert saved["n"] == metrics["n"] == 12
    assert sum(row["n"] for row in saved["by_blendedness"]) == 12
    assert np.isfinite(saved["flux_rel_abs_err_mean"]) and saved["flux_rel_abs_err_mean"] >= 0
    # The anchor set's blends are heavy: without deblending, the aperture flux is far too high.
    assert saved["baseline"]["flux_rel_err_median"] > 0.3
    assert (tmp_path / "binned.png").stat().st_size > 10_000 and (tmp_path / "examples.png").exists()
    per_galaxy = np.load(tmp_path / "per_galaxy.npz")
    assert len(per_galaxy["vae_df"]) == 12

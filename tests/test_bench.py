"""``vae-deblend bench``: every deblender on the same blends, the JSON's keys, and the shear response."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lsst.meas.extensions.vae.evaluate.bench import STAT_KEYS, shear_response

BIN = Path(sys.executable).parent
SHEAR_KEYS = ("m", "m_err", "c", "c_err", "c2", "c2_err", "m1", "m2", "m_bright", "n", "n_used")
DEBLENDERS = "vae,vae-fit,scarlet,sep,none"


def _bench(out: Path, *args: str) -> dict:
    subprocess.run([str(BIN / "vae-deblend"), "bench", "--out", str(out), "--no-progress", *args], check=True,
                   capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
    return json.loads((out / "bench.json").read_text())


@pytest.fixture(scope="module")
def true_peaks_bench(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench")
    # A short latent fit: the path is the 60-step one's, the test stays quick.
    return out, _bench(out, "--n", "8", "--seed", "5", "--deblenders", DEBLENDERS, "--fit-steps", "5",
                       "--shear")


def test_every_key_for_every_deblender(true_peaks_bench):
    out, result = true_peaks_bench
    rows = result["deblenders"]
    assert set(rows) == {"vae", "vae:model", "vae-fit", "vae-fit:model", "scarlet", "scarlet:model", "sep",
                         "none"}
    n_galaxies = result["n_galaxies"]
    assert n_galaxies >= 16  # 8 anchor blends of 2-4 galaxies, all scored
    for name, row in rows.items():
        assert row["seconds_per_blend_median"] > 0, name
        assert ((row["seconds_per_blend_batched"] or 0) > 0) == name.startswith("vae"), name
        for subset in ("all", "central"):
            assert set(STAT_KEYS) <= set(row[subset]), (name, subset)
        assert row["all"]["n"] == n_galaxies and row["central"]["n"] == 8
        for key in ("by_blendedness", "by_snr", "by_mag"):
            assert sum(b["n"] for b in row[key]) == n_galaxies, (name, key)
            assert all(set(STAT_KEYS) <= set(b) for b in row[key])
        assert set(SHEAR_KEYS) <= set(row["shear"]), name
        assert np.isfinite(row["shear"]["m"]) and row["shear"]["m_err"] > 0, name
    assert (out / "bench.md").read_text().count("| vae |") == 3  # all, central, shear
    assert (out / "bench.png").stat().st_size > 20_000


def test_floors_and_deblenders_rank(true_peaks_bench):
    _, result = true_peaks_bench
    rows = result["deblenders"]
    mean = {name: row["all"]["flux_rel_abs_err_mean"] for name, row in rows.items()}
    # No deblending puts every neighbour's light in the aperture: far the worst; the deblenders beat
    # the nearest-peak floor on the mean flux error.
    assert mean["none"] > 1.0
    assert max(mean["vae"], mean["scarlet"]) < mean["sep"] < mean["none"]
    # Flux conservation puts the observed flux back: the children's fluxes are near their truth.
    assert rows["vae"]["all"]["flux_rel_abs_err_median"] < 0.2
    # The floors cost nothing next to the networks.
    assert rows["sep"]["seconds_per_blend_median"] < rows["vae"]["seconds_per_blend_median"]


def test_noise_alone_leaves_the_shear_response(true_peaks_bench):
    # Each isolated truth plus its blend's noise, measured like the deblenders' outputs: the response is
    # that of the noiseless isolated galaxies within its error, and the deblenders take signal out.
    _, result = true_peaks_bench
    noise = result["shear_noise_only"]
    assert noise["n_used"] >= 0.9 * noise["n"]
    assert abs(noise["m"]) < 3 * noise["m_err"] + 0.01
    assert 0.2 < noise["R_isolated"] < 1.0  # HSM on PSF-convolved images: diluted, not zero
    assert result["deblenders"]["sep"]["shear"]["m"] < -0.1


def test_detected_peaks_are_matched_and_counted(tmp_path):
    result = _bench(tmp_path, "--n", "6", "--seed", "2", "--deblenders", "vae,sep,none", "--peaks",
                    "detected")
    det = result["detection"]
    assert det["matched"] + det["missed"] == det["truth"] >= 12
    assert det["matched"] + det["spurious"] == det["detected"]
    assert 0 < det["matched"] < det["truth"]  # heavy blends: some neighbours are not detected
    assert result["deblenders"]["vae"]["all"]["n"] == det["matched"]


def test_shear_response_recovers_a_known_bias():
    rng = np.random.default_rng(3)
    n, g = 400, 0.02
    e0 = rng.normal(0, 0.2, (n, 2))
    shears = np.array([[g, 0], [-g, 0], [0, g], [0, -g]])
    # Measured shapes respond to shear by R = 0.7 (PSF dilution); the "deblended" ones by 0.9 R, offset
    # by c R.
    isolated = 0.7 * (e0[:, None, :] + shears[None])
    biased = 0.9 * isolated + 0.7 * np.array([0.001, -0.002])
    blend = np.arange(n) // 3
    out = shear_response(biased, isolated, g, blend, np.full(n, 23.0), n_boot=200)
    assert out["m"] == pytest.approx(-0.1, abs=1e-9)
    assert out["m1"] == pytest.approx(-0.1, abs=1e-9) and out["m2"] == pytest.approx(-0.1, abs=1e-9)
    assert out["c"] == pytest.approx(0.001, rel=1e-6) and out["c2"] == pytest.approx(-0.002, rel=1e-6)
    assert out["m_bright"] == pytest.approx(-0.1, abs=1e-9)
    # A failed measurement drops the galaxy; noise on the shapes shows in the bootstrap error.
    noisy = biased + rng.normal(0, 0.01, biased.shape)
    noisy[0, 2, 1] = np.nan
    out = shear_response(noisy, isolated, g, blend, np.full(n, 23.0), n_boot=200)
    assert out["n_used"] == n - 1
    assert abs(out["m"] + 0.1) < 4 * out["m_err"] and 0.005 < out["m_err"] < 0.1


def test_validation_split_gives_other_blends(tmp_path):
    """``--split validation`` (for choosing settings) scores blends of the validation split, never the test
    split's; the JSON records the split, the passes and the precision."""
    from lsst.meas.extensions.vae.evaluate.bench import BenchConfig

    with pytest.raises(ValueError, match="split"):
        BenchConfig(split="train")
    args = ("--n", "2", "--seed", "5", "--deblenders", "sep")
    test = _bench(tmp_path / "test", *args)
    validation = _bench(tmp_path / "validation", *args, "--split", "validation", "--iterations", "1")
    assert validation["config"]["split"] == "validation" and validation["config"]["iterations"] == 1
    assert test["config"]["split"] == "test" and test["config"]["precision"] == "float32"
    flux = {name: r["deblenders"]["sep"]["all"]["flux_rel_abs_err_mean"] for name, r in
            (("test", test), ("validation", validation))}
    assert flux["test"] != flux["validation"]

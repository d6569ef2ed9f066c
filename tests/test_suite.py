"""``vae-deblend evaluate --suite shift``: every set end to end on a tiny budget, and the sets' galaxies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lsst.meas.extensions.vae.evaluate.bench import ISOLATED_ROW, STAT_KEYS
from lsst.meas.extensions.vae.evaluate.suite import (
    SUITE_SETS, RotatedGalaxies, SetUnavailable, ShiftedPriorGalaxies, set_maker)
from lsst.meas.extensions.vae.sim.blend import GeneratedGalaxies

from conftest import SHARED_CATALOGS

BIN = Path(sys.executable).parent
DEBLENDERS = "vae,vae-fit,scarlet,none"
ROWS = {"vae", "vae:model", "vae-fit", "vae-fit:model", "scarlet", "scarlet:model", "none", ISOLATED_ROW}


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory) -> tuple[Path, dict]:
    """Every set, 2 blends each, the latent fit (3 steps) on the first one only."""
    out = tmp_path_factory.mktemp("suite")
    catalogs = SHARED_CATALOGS if SHARED_CATALOGS.is_dir() else out / "no-catalogs"
    subprocess.run([str(BIN / "vae-deblend"), "evaluate", "--suite", "shift", "--n", "2", "--fit-n", "1",
                    "--fit-steps", "3", "--seed", "1", "--deblenders", DEBLENDERS,
                    "--catalogs", str(catalogs),
                    "--out", str(out), "--no-progress"], check=True, capture_output=True, text=True,
                   env={**os.environ, "MPLBACKEND": "Agg"})
    return out, json.loads((out / "suite.json").read_text())


def test_every_set_scores_every_galaxy_of_every_row(tiny_suite):
    out, suite = tiny_suite
    assert list(suite["sets"]) == list(SUITE_SETS)
    ran = {name: entry for name, entry in suite["sets"].items() if not entry["skipped"]}
    # Only the catalogue sets may be skipped, and only where the catalogues are absent.
    assert set(suite["sets"]) - set(ran) <= ({"catsim", "cosmos"} if not SHARED_CATALOGS.is_dir() else set())
    for name, entry in ran.items():
        result = entry["result"]
        rows = result["deblenders"]
        assert set(rows) == ROWS, name
        n_galaxies = result["n_galaxies"]
        low = 10 if name == "crowded" else 4  # 2 blends of 5-8 (crowded) or 2-4 galaxies
        assert n_galaxies >= low, name
        for row_name, row in rows.items():
            # The fit runs on the first blend only; every other row on both.
            expected = entry["fit_against_encoder"]["n_galaxies"] if row_name.startswith("vae-fit") \
                else n_galaxies
            assert row["all"]["n"] == expected, (name, row_name)
            assert set(STAT_KEYS) <= set(row["all"]), (name, row_name)
            for key in ("by_mag", "by_snr", "by_blendedness"):
                assert sum(b["n"] for b in row[key]) == expected, (name, row_name, key)
        fit = entry["fit_against_encoder"]
        assert fit["n_blends"] == 1 and 0 < fit["n_galaxies"] < n_galaxies, name
        assert {"conserved", "model"} <= set(fit)
        # No deblending is far the worst; the VAE alone on each galaxy is its best.
        mean = {row: rows[row]["all"]["flux_rel_abs_err_mean"] for row in ("none", "vae", ISOLATED_ROW)}
        assert mean["none"] > mean["vae"], name
        assert mean[ISOLATED_ROW] < mean["none"], name
        assert (out / name / "bench.json").is_file() and (out / name / "fit" / "bench.json").is_file()
    table = (out / "suite.md").read_text()
    for name in ran:
        assert sum(line.startswith(f"| {name} |") for line in table.splitlines()) == 5 + 1, name  # + fit row
    for name, entry in suite["sets"].items():
        if entry["skipped"]:
            assert f"- {name}: skipped (" in table
    assert (out / "suite.png").stat().st_size > 20_000 and (out / "suite_bins.png").stat().st_size > 20_000


def test_catalogue_sets_skip_with_the_reason_without_catalogues(tmp_path):
    for name in ("catsim", "cosmos"):
        with pytest.raises(SetUnavailable, match="not found"):
            set_maker(SUITE_SETS[name], 59, None)
        with pytest.raises(SetUnavailable, match="not found"):
            set_maker(SUITE_SETS[name], 59, tmp_path)


def test_catalogue_sets_draw_rotated_test_galaxies(shared_catalogs):
    from lsst.meas.extensions.vae.sim.catalog_io import read_catalog, select_split

    maker = set_maker(SUITE_SETS["cosmos"], 59, shared_catalogs)
    assert isinstance(maker.source, RotatedGalaxies)
    test_ids = set(select_split(read_catalog(shared_catalogs / "cosmos_23.5_example_fits_100.fits"),
                                "test").ident.tolist())
    blend = maker.make(0, 0, split="test")
    assert set(blend.galaxies.ident.tolist()) <= test_ids
    # The same galaxy drawn twice is turned by different angles.
    rng = np.random.default_rng(0)
    a, b = maker.source.draw(rng, 40, 18.0, 25.5), maker.source.draw(rng, 40, 18.0, 25.5)
    same = np.flatnonzero(a.ident == b.ident)
    assert len(same) and not np.allclose(a.disk_beta[same], b.disk_beta[same])


def test_shifted_priors_leave_the_training_mixture():
    rng = np.random.default_rng(5)
    shifted = ShiftedPriorGalaxies().draw(rng, 2000, 20.0, 25.5)
    plain = GeneratedGalaxies().draw(np.random.default_rng(5), 2000, 20.0, 25.5)
    np.testing.assert_array_equal(shifted.band_mag("r"), plain.band_mag("r"))  # r magnitudes kept
    sersic = shifted.disk_n != 1.0
    assert 0.4 < sersic.mean() < 0.6 and shifted.disk_n.min() >= 0.5 and shifted.disk_n.max() <= 6.0
    assert np.all(shifted.bulge_fraction[sersic] == 0.0)
    ratio = shifted.disk_hlr / plain.disk_hlr
    unclipped = (shifted.disk_hlr > 0.05) & (shifted.disk_hlr < 5.0)
    np.testing.assert_allclose(np.sort(np.unique(np.round(ratio[unclipped], 6))), [1 / 1.6, 1.6], rtol=1e-5)
    assert np.mean(shifted.disk_q < 0.3) > 1.5 * np.mean(plain.disk_q < 0.3)  # flatter disks (28 % vs 16 %)
    colours = shifted.mag - shifted.band_mag("r")[:, None] - (plain.mag - plain.band_mag("r")[:, None])
    assert 0.25 < np.std(colours[:, 0]) < 0.35  # u - r off the templates' locus

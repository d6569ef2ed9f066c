"""A clean log: the code paths of ``make demo`` emit no warning a user cannot act on.

Each warning the demo used to print has a check here, on the cheapest path that produced it:

- the colour pictures (the blend gallery's noiseless central galaxies, whose sky is exactly zero, made
  astropy's Lupton RGB helper report "invalid value encountered in divide"; blank or noiseless coadds
  gave a zero stretch), drawn under warnings recorded with the ``always`` filter;
- reading a catalogue (``ArrowAstropy``) through the butler in a fresh process, where lsst-daf-butler
  looks up the storage class's converters and logged "Unable to import type pandas.core.frame.DataFrame"
  without pandas;
- ``pipetask run --init-only`` as `run_pipetask` starts it, which logged "Unable to import eups" when it
  recorded the package versions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.table import Table

from lsst.meas.extensions.vae.cli import simulate_blends
from lsst.meas.extensions.vae.pipe.standalone import Coadd, make_repo, run_pipetask, use_butler_config
from lsst.meas.extensions.vae.pipe.standalone.plots import plot_patch, plot_residuals
from lsst.meas.extensions.vae.pipe.standalone.repo import INPUT_RUN
from lsst.meas.extensions.vae.pipe.standalone.testing import gaussian_psf, simulated_coadds
from lsst.meas.extensions.vae.sim.patch import PatchConfig, make_patch
from lsst.meas.extensions.vae.sim.plots import colour_image, lupton_rgb

DATA_ID = {"skymap": "vae_sim", "tract": 0, "patch": 0}


def _warnings_of(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
    """Call ``function`` and return its result with every Python warning it emitted, as text.

    The ``always`` filter shows each warning, including those the default filters would show only once
    per place (as in the demo's log) and those an earlier test already triggered.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    return result, [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]


def _warning_lines(log: str) -> list[str]:
    """Lines of a log that report a warning, an error or a traceback."""
    words = ("warning", "error", "traceback")
    return [line for line in log.splitlines() if any(word in line.lower() for word in words)]


def _blank_coadd(band: str, shape: tuple[int, int] = (40, 50), value: float = 0.0,
                 variance: float = 0.0) -> Coadd:
    """A coadd of constant pixels and variance (zero by default: an empty, noiseless patch)."""
    return Coadd(image=np.full(shape, value), variance=np.full(shape, variance),
                 mask=np.zeros(shape, dtype=np.int32), psf=gaussian_psf(), bbox=(0, 0, shape[1], shape[0]),
                 band=band, zeropoint=28.0, pixel_scale=0.2)


def _objects(x: list[float], y: list[float], parent: list[int]) -> Table:
    """An ``object_deblend``-like table of the columns the pictures use."""
    return Table({"deblend_peak_center_x": np.asarray(x, dtype=float),
                  "deblend_peak_center_y": np.asarray(y, dtype=float),
                  "parent": np.asarray(parent, dtype=np.int64)})


def test_lupton_rgb_is_astropys_mapping_without_its_zero_division():
    from astropy.visualization import make_lupton_rgb

    rng = np.random.default_rng(4)
    planes = [rng.normal(size=(30, 40)) + rng.exponential(4.0, size=(30, 40)) for _ in range(3)]
    minimum = [-1.0, -0.5, -2.0]
    # Every pixel has a positive mean intensity here: astropy does not divide by zero and both agree.
    expected = make_lupton_rgb(*planes, minimum=minimum, stretch=6.0, Q=8.0)
    rgb, caught = _warnings_of(lupton_rgb, *planes, minimum=minimum, stretch=6.0, q=8.0)
    assert caught == []
    assert rgb.dtype == np.uint8 and rgb.shape == (30, 40, 3)
    np.testing.assert_array_equal(rgb, expected)

    # A noiseless galaxy on an exactly zero sky, with a non-finite pixel: black sky, no warning.
    galaxy = np.zeros((21, 21))
    galaxy[8:13, 8:13] = 50.0
    galaxy[0, 0] = np.nan
    rgb, caught = _warnings_of(lupton_rgb, galaxy, galaxy, galaxy, stretch=5.0, q=8.0)
    assert caught == []
    assert not rgb[galaxy != 50.0].any() and rgb[10, 10].min() > 0

    with pytest.raises(ValueError, match="stretch"):
        lupton_rgb(galaxy, galaxy, galaxy, stretch=0.0)
    with pytest.raises(ValueError, match="shape"):
        lupton_rgb(galaxy, galaxy, galaxy[:5])


def test_colour_images_of_noiseless_and_blank_cubes_are_warning_free():
    bands = ("u", "g", "r", "i", "z", "y")
    central = np.zeros((6, 33, 33))
    yy, xx = np.mgrid[:33, :33]
    central[:, 10:23, 10:23] = np.exp(-((xx - 16) ** 2 + (yy - 16) ** 2) / 8.0)[10:23, 10:23]
    for cube, noise in ((central, np.full(6, 0.1)), (central, None), (np.zeros((6, 33, 33)), None),
                        (central, np.zeros(6)), (np.full((6, 33, 33), np.nan), np.full(6, 0.1))):
        rgb, caught = _warnings_of(colour_image, cube, bands, noise)
        assert caught == []
        assert rgb.shape == (33, 33, 3) and rgb.dtype == np.uint8
        assert not rgb[0, 0].any()  # the sky (or a blank or undefined pixel) is black
        assert rgb[16, 16].any() == bool(np.nansum(cube) > 0)


def test_demo_blend_gallery_is_warning_free(tmp_path, capsys):
    """``vae-deblend demo``'s first step, as it calls it (fewer blends, one process)."""
    args = argparse.Namespace(
        n=8, seed=0, survey="lsst", psf_model="paper", out=tmp_path / "blends", catalog=None, jobs=1,
        no_progress=True, split="test", stamp_size=None, max_galaxies=None, shard_size=1000,
        no_gallery=False, preset="paper")
    summary, caught = _warnings_of(simulate_blends, args)
    assert caught == []
    assert Path(summary["gallery"]).stat().st_size > 0
    assert _warning_lines(capsys.readouterr().err) == []


def test_patch_pictures_are_warning_free(tmp_path):
    positions = [(20.0, 22.0), (26.0, 24.0), (45.0, 40.0)]
    coadds, truth = simulated_coadds(positions, shape=(64, 64), seed=1, psf_size=21)
    objects = _objects([p[0] for p in positions], [p[1] for p in positions], [7, 7, 0])
    holes = [_blank_coadd(band, (64, 64), value=3.0, variance=4.0) for band in ("g", "r", "i")]
    for coadd in holes:
        coadd.image[5:9, 5:9] = np.nan
        coadd.variance[5:9, 5:9] = np.nan
        coadd.variance[20:30, :] = 0.0
    blank = _blank_coadd("r", (64, 64))
    matched = np.array([True, True, False])
    calls = [  # the demo's pictures; an image with undefined pixels; an empty, noiseless band
        (plot_patch, coadds, objects, "patch.png", {"truth": truth, "matched": matched}),
        (plot_residuals, coadds[2], np.zeros((64, 64)), "residuals.png", {}),
        (plot_patch, holes, objects, "holes.png", {}),
        (plot_patch, [blank], _objects([], [], []), "blank.png", {}),
        (plot_residuals, blank, np.zeros((64, 64)), "blank_residuals.png", {}),
    ]
    for function, data, extra, name, kwargs in calls:
        path, caught = _warnings_of(function, data, extra, tmp_path / name, title=name, **kwargs)
        assert caught == [], name
        assert path.stat().st_size > 0


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    """A seeded repository of a small simulated patch (coadds and an ``ArrowAstropy`` truth catalogue)."""
    root = tmp_path_factory.mktemp("robust_log") / "repo"
    make_repo(root, [make_patch(PatchConfig(size=48), seed=3, progress=False)])
    return root


def test_catalogue_read_in_a_fresh_process_logs_nothing(tiny_repo):
    """The first read of an ``ArrowAstropy`` dataset in a process (a pipetask worker's, the demo's)
    imports every converter type of that storage class, pandas' DataFrame included."""
    script = textwrap.dedent(f"""
        import json
        import logging

        records = []

        class Keep(logging.Handler):
            def emit(self, record):
                records.append(f"{{record.name}} {{record.levelname}}: {{record.getMessage()}}")

        logging.getLogger().addHandler(Keep(level=logging.WARNING))
        logging.captureWarnings(True)
        from lsst.daf.butler import Butler

        butler = Butler.from_config({str(tiny_repo)!r}, collections=[{INPUT_RUN!r}])
        truth = butler.get("truth_catalog", {DATA_ID!r})
        print(json.dumps({{"rows": len(truth), "records": records}}), flush=True)
        # pyarrow's parquet threads can abort the interpreter's exit after the work is done
        # (apache/arrow#34314, seen once in CI here): leave without the C++ teardown.
        import os
        os._exit(0)
    """)
    env = use_butler_config({k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rows"] > 0
    assert report["records"] == []
    assert _warning_lines(result.stderr) == []


def test_pipetask_records_versions_without_a_warning(tiny_repo):
    """pipetask as `run_pipetask` starts it, up to writing the init outputs and package versions."""
    log = run_pipetask(tiny_repo, INPUT_RUN, "vae/robust_log", jobs=1, extra_args=["--init-only"],
                       timeout=300)
    assert "QuantumGraph contains 3 quanta" in log
    assert _warning_lines(log) == []
    from lsst.meas.extensions.vae.pipe.standalone import open_repo

    packages = open_repo(tiny_repo, collections=["vae/robust_log"]).get("packages")
    assert "numpy" in packages  # versions are recorded all the same


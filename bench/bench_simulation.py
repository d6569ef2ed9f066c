"""Simulation speed: blended 6-band stamps per second, against a plain GalSim loop, on this machine.

Measures, at the default `BlendConfig` (LSST ugrizy, 59x59, 1-4 galaxies, truth images and HSM shapes):

- ``plain_galsim``: a plain GalSim loop over the same galaxies (``Convolve(galaxy, psf).drawImage`` per
  galaxy and band, truth kept, HSM on r), one process: the baseline;
- ``maker_1proc``: `BlendMaker.make` in one process (no I/O);
- ``write_1proc`` / ``write_2proc``: `write_blends` to HDF5 shards with 1 and 2 processes (steady state:
  the call alone, after imports);
- ``cli_3000``: ``vae-deblend simulate blends --n 3000`` as a subprocess, counted from process start.

Usage::

    python bench/bench_simulation.py [--n 2000] [--out bench/output/simulation.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import galsim
import numpy as np

from lsst.meas.extensions.vae.measure.shape import hsm_shape
from lsst.meas.extensions.vae.sim.blend import BlendConfig, BlendMaker
from lsst.meas.extensions.vae.sim.dataset import write_blends
from lsst.meas.extensions.vae.sim.render import galaxy_components
from lsst.meas.extensions.vae.surveys import ALL_BANDS


def plain_galsim_rate(n: int) -> float:
    """Blends per second of a plain GalSim loop drawing the same blends as `BlendMaker`."""
    maker = BlendMaker(BlendConfig())
    survey = maker.survey
    size = maker.config.stamp_size
    psfs = [b.make_psf() for b in survey.bands]
    blends = [maker.make(0, i) for i in range(n)]  # the same galaxies and positions
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for blend in blends:
        t = blend.truth
        truth = np.zeros((len(t["ident"]), len(survey.bands), size, size), dtype=np.float32)
        for g in range(len(t["ident"])):
            comps = galaxy_components(blend.galaxies, g)
            for b, band in enumerate(survey.bands):
                col = ALL_BANDS.index(band.name)
                galaxy = galsim.Add([p * (f[col] * t["flux"][g, b]) for p, f in comps]).shift(t["dx"][g],
                                                                                               t["dy"][g])
                truth[g, b] = galsim.Convolve(galaxy, psfs[b]).drawImage(
                    nx=size, ny=size, scale=band.pixel_scale).array
            hsm_shape(truth[g, 2], center=(t["x"][g], t["y"][g]))
        image = truth.sum(0) + rng.standard_normal(truth.shape[1:]) * np.sqrt(blend.variance)[:, None, None]
        assert np.isfinite(image).all()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="blends per measurement")
    parser.add_argument("--n-plain", type=int, default=200, help="blends for the plain GalSim baseline")
    parser.add_argument("--out", type=Path, default=Path("bench/output/simulation.json"))
    args = parser.parse_args()

    results = {}
    results["plain_galsim_1proc"] = plain_galsim_rate(args.n_plain)

    maker = BlendMaker(BlendConfig())
    maker.make(0, 0)
    start = time.perf_counter()
    for i in range(args.n):
        maker.make(1, i)
    results["maker_1proc"] = args.n / (time.perf_counter() - start)

    tmp = Path(tempfile.mkdtemp(prefix="bench_sim_"))
    try:
        for jobs in (1, 2):
            start = time.perf_counter()
            write_blends(tmp / f"w{jobs}", args.n, seed=2, jobs=jobs, progress=False)
            results[f"write_{jobs}proc"] = args.n / (time.perf_counter() - start)
        cli = Path(sys.executable).parent / "vae-deblend"
        start = time.perf_counter()
        subprocess.run([str(cli), "simulate", "blends", "--n", "3000", "--seed", "3", "--out",
                        str(tmp / "cli"), "--jobs", "2", "--no-progress"], check=True, capture_output=True)
        results["cli_3000_from_process_start"] = 3000 / (time.perf_counter() - start)
        shard_bytes = sum(p.stat().st_size for p in (tmp / "cli").glob("shard-*.h5"))
        results["disk_kb_per_blend"] = shard_bytes / 3000 / 1024
    finally:
        shutil.rmtree(tmp)

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "python": platform.python_version(), "galsim": galsim.__version__}
    print(f"{'measurement':34s} {'blends/s':>9s}")
    for key, value in results.items():
        unit = "" if key != "disk_kb_per_blend" else " (kB/blend)"
        print(f"{key:34s} {value:9.1f}{unit}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "machine": machine, "n": args.n,
                                    "command": " ".join(sys.argv)}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

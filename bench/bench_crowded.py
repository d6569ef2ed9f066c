"""Crowded parents: one footprint of a galaxy cluster with hundreds to thousands of peaks, no skipping.

DRP's scarlet skips parents with more than ``maxNumberOfPeaks`` (600) peaks or a footprint larger than
``maxFootprintArea`` (2,000,000 pixels).  Here a cluster of N galaxies (GalSim renderings of the
simulation's population, 10-year LSST noise, one galaxy per 45 x 45 pixels on average, at random
positions) is ONE parent whose footprint is the whole cluster box (several million pixels for N = 2000),
with every true position as a peak.  The standalone deblend task's ``run`` deblends it with both limits
off (0), then the measurement task measures every child.  Each N runs in a child process, so that its
peak resident memory is its own; the table gives the time and memory per N and the time per peak, which
must not grow with N.

Usage::

    python bench/bench_crowded.py --n 500 1000 2000 [--out bench/output/crowded.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

SPACING = 45  # pixels per galaxy on a side: a dense cluster core


def run_one(n: int, seed: int) -> dict:
    """Simulate, deblend and measure a cluster of ``n`` galaxies (in this process)."""
    import numpy as np
    import torch
    from astropy.table import Table

    from lsst.meas.extensions.vae.pipe.standalone.coadd import FootprintImage
    from lsst.meas.extensions.vae.pipe.standalone.deblend_task import VaeDeblendTask
    from lsst.meas.extensions.vae.pipe.standalone.measure_task import MeasureObjectUnforcedTask
    from lsst.meas.extensions.vae.pipe.standalone.testing import simulated_coadds

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    side = int(math.ceil(math.sqrt(n) * SPACING))
    rng = np.random.default_rng(seed)
    margin = 20
    positions = rng.uniform(margin, side - margin, size=(n, 2))
    start = time.perf_counter()
    coadds, _ = simulated_coadds(positions, shape=(side, side), seed=seed, mag_range=(20.0, 25.0))
    t_sim = time.perf_counter() - start
    rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    labels = np.zeros((side, side), dtype=np.int32)
    labels[margin // 2: side - margin // 2, margin // 2: side - margin // 2] = 1
    area = int(labels.sum())
    footprints = FootprintImage(labels=labels, ids=np.array([1]), bbox=coadds[0].bbox)
    detections = Table({"id": np.array([1], dtype=np.int64), "footprint_area": np.array([area])})
    peaks = Table({"id": np.arange(1, n + 1, dtype=np.int64) + 1, "parent": np.ones(n, dtype=np.int64),
                   "x": np.rint(positions[:, 0]).astype(np.int64),
                   "y": np.rint(positions[:, 1]).astype(np.int64)})
    task = VaeDeblendTask()
    task.config.maxNumberOfPeaks = 0
    task.config.maxFootprintArea = 0
    task.model  # load the weights outside the timing
    start = time.perf_counter()
    result = task.run(coadds, detections, peaks, footprints)
    t_deblend = time.perf_counter() - start
    rss_deblend = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    parent = result.objectParents[0]
    start = time.perf_counter()
    measured = MeasureObjectUnforcedTask().run(coadds, result.deblendedCatalog, result.vaeModelData)
    t_measure = time.perf_counter() - start
    catalog = measured.outputCatalog
    conserved = float(np.sum(result.deblendedCatalog["deblend_conservedFlux_r"]))
    return {"n_peaks": n, "side": side, "footprint_area": area, "n_children": int(len(catalog)),
            "skipped": bool(parent["deblend_skipped"]), "failed": bool(parent["deblend_failed"]),
            "children_flux_over_parent_r": conserved / float(parent["deblend_parentFlux_r"]),
            "hsm_failed_fraction": float(np.mean(catalog["r_hsm_flag"])),
            "nan_flux_fraction": float(np.mean(~np.isfinite(catalog["r_flux"]))),
            "seconds_simulation": t_sim, "seconds_deblend": t_deblend, "seconds_measure": t_measure,
            "ms_per_peak_deblend": 1e3 * t_deblend / n, "ms_per_peak_measure": 1e3 * t_measure / n,
            "peak_rss_gib_inputs": rss_inputs, "peak_rss_gib": rss_deblend,
            "peak_rss_gib_with_measure": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/output/crowded.json"))
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.seed)))
        return
    rows = []
    for n in args.n:
        done = subprocess.run([sys.executable, __file__, "--one", str(n), "--seed", str(args.seed)],
                              check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    header = ("peaks", "footprint px", "children", "skipped", "deblend s", "ms/peak", "measure s",
              "ms/peak", "peak RSS GiB", "sum children / parent r", "HSM failed")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join([f"{r['n_peaks']}", f"{r['footprint_area']:,}", f"{r['n_children']}",
                          f"{r['skipped']}", f"{r['seconds_deblend']:.1f}", f"{r['ms_per_peak_deblend']:.1f}",
                          f"{r['seconds_measure']:.1f}", f"{r['ms_per_peak_measure']:.1f}",
                          f"{r['peak_rss_gib_with_measure']:.2f}", f"{r['children_flux_over_parent_r']:.6f}",
                          f"{r['hsm_failed_fraction']:.3f}"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                    "threads": int(os.environ.get("BENCH_THREADS", "2")), "rows": rows},
                                   indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

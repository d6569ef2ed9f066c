"""Pipeline speed: children per second through the deblend task, and a whole patch's time and memory.

Simulates a patch (`make_patch`) in a child process and writes it to HDF5, reads it back here and runs
the standalone tasks' ``run`` methods (no butler I/O): detection, then the VAE deblend task, then
measurement, timing each; reports the deblend task's objects (children + isolated sources) per second
and the peak resident memory of this process (the coadds in memory included, the simulation not).

Usage::

    python bench/bench_pipeline.py --size 1000 [--weights lsst] [--out bench/output/pipeline_1000.json]
    python bench/bench_pipeline.py --size 4000
    python bench/bench_pipeline.py --size 1000 --fit-steps 60   # with the joint latent fit
    python bench/bench_pipeline.py --size 1000 --refine-steps 0  # encoder only (the default refines)
    python bench/bench_pipeline.py --size 1000 --precision bfloat16

The patch is simulated once per size and seed into bench/output (``--simulate`` makes it again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from lsst.meas.extensions.vae.deblend.network import PRECISIONS
from lsst.meas.extensions.vae.pipe.standalone.coadd import Coadd
from lsst.meas.extensions.vae.pipe.standalone.deblend_task import VaeDeblendTask
from lsst.meas.extensions.vae.pipe.standalone.detect_task import DetectCoaddPeaksTask
from lsst.meas.extensions.vae.pipe.standalone.measure_task import MeasureObjectUnforcedTask
from lsst.meas.extensions.vae.sim.patch import read_patch


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default="lsst")
    parser.add_argument("--fit-steps", type=int, default=None,
                        help="the deblend task's fitSteps (default: the task's default)")
    parser.add_argument("--refine-steps", type=int, default=None,
                        help="the deblend task's refineSteps (default: the task's default)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--simulate", action="store_true",
                        help="simulate the patch again even if bench/output holds it already")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="the deblend task's precision (default: the task's default)")
    args = parser.parse_args()
    fit = "" if args.fit_steps is None else f"_fit{args.fit_steps}"
    fit += "" if args.refine_steps is None else f"_refine{args.refine_steps}"
    fit += "" if args.precision is None else f"_{args.precision}"
    out = args.out or Path(f"bench/output/pipeline_{args.size}{fit}.json")

    start = time.perf_counter()
    path = Path(f"bench/output/patch_{args.size}_{args.seed}.h5")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or args.simulate:  # the same size and seed give the same patch
        code = ("from lsst.meas.extensions.vae.sim.patch import *; write_patch(make_patch("
                f"PatchConfig(size={args.size}), {args.seed}, progress=False), '{path}')")
        subprocess.run([sys.executable, "-c", code], check=True)
    t_sim = time.perf_counter() - start
    patch = read_patch(path)
    coadds = [Coadd.from_patch_band(b) for b in patch.bands]
    del patch.bands[:]
    rss_inputs = peak_rss_gb()

    detect = DetectCoaddPeaksTask()
    start = time.perf_counter()
    detected = detect.run(coadds)
    t_detect = time.perf_counter() - start
    rss_detect = peak_rss_gb()

    deblend_config = VaeDeblendTask.ConfigClass()
    deblend_config.weights = args.weights
    if args.fit_steps is not None:
        deblend_config.fitSteps = args.fit_steps
    if args.refine_steps is not None:
        deblend_config.refineSteps = args.refine_steps
    if args.precision is not None:
        deblend_config.precision = args.precision
    deblend = VaeDeblendTask(config=deblend_config)
    start = time.perf_counter()
    deblended = deblend.run(coadds, detected.mergedDetections, detected.peaks, detected.footprints)
    t_deblend = time.perf_counter() - start
    rss_deblend = peak_rss_gb()

    measure = MeasureObjectUnforcedTask()
    start = time.perf_counter()
    measure.run(coadds, deblended.deblendedCatalog, deblended.vaeModelData)
    t_measure = time.perf_counter() - start

    n_objects = len(deblended.deblendedCatalog)
    result = {
        "size": args.size, "fit_steps": deblend_config.fitSteps, "refine_steps": deblend_config.refineSteps,
        "precision": deblend_config.precision,
        "n_truth": len(patch.truth),
        "n_parents": len(detected.mergedDetections),
        "n_peaks": len(detected.peaks), "n_objects": n_objects,
        "seconds": {"simulate": t_sim, "detect": t_detect, "deblend": t_deblend, "measure": t_measure,
                    "pipeline": t_detect + t_deblend + t_measure},
        "objects_per_second_deblend": n_objects / t_deblend,
        "peak_rss_gb": peak_rss_gb(),
        # The running peak after each stage tells which stage set it.
        "peak_rss_after_gb": {"inputs": rss_inputs, "detect": rss_detect, "deblend": rss_deblend},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
        "command": " ".join(sys.argv),
    }
    print(f"patch {args.size}x{args.size} (fitSteps {deblend_config.fitSteps}, refineSteps "
          f"{deblend_config.refineSteps}, {deblend_config.precision}): {result['n_truth']} "
          f"galaxies, {result['n_parents']} parents, {result['n_peaks']} peaks, {n_objects} objects")
    for key, value in result["seconds"].items():
        print(f"  {key:9s} {value:8.1f} s")
    print(f"  deblend  {result['objects_per_second_deblend']:8.1f} objects/s")
    print(f"  peak RSS {result['peak_rss_gb']:8.2f} GB (running peak after inputs "
          f"{rss_inputs:.2f}, detect {rss_detect:.2f}, deblend {rss_deblend:.2f})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

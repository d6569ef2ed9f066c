"""scarlet_deblend on anchor-preset test blends with true peaks: r-band |df/f| and ms per blend on one
thread (docs/comparison.md).  Usage: python bench/bench_scarlet.py SEED N"""
import os, time, sys
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
import numpy as np
from lsst.meas.extensions.vae.sim.blend import BlendConfig, BlendMaker
from lsst.meas.extensions.vae.compare.scarlet import scarlet_deblend
maker = BlendMaker(BlendConfig.preset("anchor"))
psfs = np.stack([b.psf_image(41) for b in maker.survey.bands])
seed, N = int(sys.argv[1]), int(sys.argv[2])
em, ec, cm, cc, times, its, fails, conv = [], [], [], [], [], [], 0, 0
for i in range(N):
    b = maker.make(seed, i, split="test")
    peaks = np.stack([np.asarray(b.truth["x"]), np.asarray(b.truth["y"])], 1)
    t = time.perf_counter(); r = scarlet_deblend(b.image, b.variance, psfs, peaks); times.append(time.perf_counter() - t)
    tf = b.truth_images[:, 2].sum((1, 2))
    m = np.abs(r.models[:, 2].sum((1, 2)) / tf - 1); c = np.abs(r.conserved[:, 2].sum((1, 2)) / tf - 1)
    em += list(m); ec += list(c); cm.append(m[0]); cc.append(c[0]); its.append(r.iterations); fails += int(r.failed.sum()); conv += r.converged
t = np.array(times) * 1e3
print(f"seed {seed}, {N} blends, {len(em)} galaxies; failures {fails}; converged {conv}/{N}; iterations median {np.median(its)}")
print(f"all galaxies r |df/f| model median/mean {np.median(em):.3f}/{np.mean(em):.3f}; conserved {np.median(ec):.3f}/{np.mean(ec):.3f}")
print(f"central galaxy  r |df/f| model median/mean {np.median(cm):.3f}/{np.mean(cm):.3f}; conserved {np.median(cc):.3f}/{np.mean(cc):.3f}")
print(f"ms per blend: median {np.median(t):.1f}, median excluding calls that compiled {np.median(t[t<1000]):.1f}, first call {t[0]:.0f}, calls over 1 s {int((t>1000).sum())}, total {t.sum()/1e3:.1f} s")

"""BlendingToolKit's harness on this deblender: BTK draws LSST blends from a CatSim catalogue, BTK's own
deblenders and the VAE (through `lsst.meas.extensions.vae.compare.btk.VaeDeblend`) deblend them, and BTK's
matcher and reconstruction metrics (MSE, which BTK computes as a root mean square, PSNR, SSIM) score each
in the r band against BTK's noiseless isolated images.

Deblenders: the VAE on BTK's true centroids (as BTK's ``Scarlet`` is run) and on its own SEP detections;
BTK's ``SepSingleBand`` (r band: each detection gets the blend's pixels in its SEP segment); and no
deblending (every true galaxy gets the whole blend image), the floor any deblender must beat.

Usage::

    python bench/bench_btk.py --catalog ../shared/data/catalogs/catsim_sample_100.fits --n 100 \\
        [--batch-size 20] [--max-number 3] [--seed 0] [--out bench/output/btk.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                                  / "catalogs" / "catsim_sample_100.fits"))
    parser.add_argument("--n", type=int, default=100, help="blends")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--max-number", type=int, default=3)
    parser.add_argument("--min-number", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import btk
    import btk.deblend

    from lsst.meas.extensions.vae.compare.btk import VaeDeblend, reconstruction_metrics

    class NoDeblend(btk.deblend.Deblender):
        """Every true galaxy gets the whole (clipped) blend image."""

        def deblend(self, ii, blend_batch):
            catalog = blend_batch.catalog_list[ii]
            image = np.clip(blend_batch.blend_images[ii], 0, None)
            images = np.zeros((self.max_n_sources,) + image.shape)
            images[: len(catalog)] = image
            columns = catalog["ra", "dec", "x_peak", "y_peak"]
            return btk.blend_batch.DeblendExample(self.max_n_sources, columns, image.shape[0],
                                                  image.shape[-1], None, images)

    m = args.max_number
    # SepSingleBand may find more sources than there are galaxies (max_n_sources m + 3); "vae_on_sep_r"
    # deblends SepSingleBand's own detections, so that both are scored on the same matched galaxies.
    deblenders = {"vae_truth": VaeDeblend(m), "vae_sep": VaeDeblend(m + 3, peaks="sep"),
                  "btk_SepSingleBand_r": btk.deblend.SepSingleBand(m + 3, use_band=2),
                  "vae_on_sep_r": VaeDeblend(m + 3), "no_deblending": NoDeblend(m)}
    catalog = btk.catalog.CatsimCatalog.from_file(args.catalog)
    sampling = btk.sampling_functions.DefaultSampling(max_number=m, min_number=args.min_number,
                                                      seed=args.seed)
    draw = btk.draw_blends.CatsimGenerator(catalog, sampling, btk.survey.get_surveys("LSST"),
                                           batch_size=args.batch_size, seed=args.seed)
    scores = {name: {"mse": [], "psnr": [], "ssim": [], "n_true": 0, "n_matched": 0, "seconds": 0.0}
              for name in deblenders}
    n_done, draw_seconds = 0, 0.0
    while n_done < args.n:
        t0 = time.perf_counter()
        batch = next(draw)
        draw_seconds += time.perf_counter() - t0
        if n_done == 0:  # warm-up, untimed: torch's first calls allocate and pick kernels
            for deblender in deblenders.values():
                deblender.deblend(0, batch)
        results = {}
        for name, deblender in deblenders.items():
            kwargs = ({"reference_catalogs": results["btk_SepSingleBand_r"].catalog_list}
                      if name == "vae_on_sep_r" else {})
            t0 = time.perf_counter()
            result = results[name] = deblender(batch, **kwargs)
            scores[name]["seconds"] += time.perf_counter() - t0
            metrics = reconstruction_metrics(batch, result, band="r")
            for key in ("mse", "psnr", "ssim"):
                scores[name][key].extend(metrics[key].tolist())
            scores[name]["n_true"] += int(metrics["n_true"].sum())
            scores[name]["n_matched"] += int(metrics["n_matched"].sum())
        n_done += batch.batch_size

    summary = {"n_blends": n_done, "args": vars(args), "machine": platform.processor() or platform.machine(),
               "draw_ms_per_blend": 1e3 * draw_seconds / n_done, "torch_threads": torch.get_num_threads(),
               "cpus": os.cpu_count(), "deblenders": {}}
    print(f"{n_done} BTK LSST blends ({args.min_number}-{m} galaxies, BTK DefaultSampling), r band, "
          f"drawing {summary['draw_ms_per_blend']:.1f} ms/blend")
    print(f"{'deblender':22s} {'matched':>9s} {'MSE med/mean':>18s} {'PSNR med/mean':>15s} "
          f"{'SSIM med/mean':>15s} {'ms/blend':>9s}")
    for name, s in scores.items():
        row = {"n_true": s["n_true"], "n_matched": s["n_matched"],
               "ms_per_blend": 1e3 * s["seconds"] / n_done}
        for key in ("mse", "psnr", "ssim"):
            values = np.asarray(s[key])
            row[key] = {"median": float(np.median(values)), "mean": float(np.mean(values))}
        summary["deblenders"][name] = row
        print(f"{name:22s} {s['n_matched']:4d}/{s['n_true']:<4d} {row['mse']['median']:8.2f}/"
              f"{row['mse']['mean']:<8.2f} {row['psnr']['median']:7.2f}/{row['psnr']['mean']:<7.2f} "
              f"{row['ssim']['median']:7.3f}/{row['ssim']['mean']:<7.3f} {row['ms_per_blend']:9.1f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()

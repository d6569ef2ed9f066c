"""Galaxies larger than the stamp: the standalone tasks (detection, then the VAE deblender) on a simulated
patch, with and without binned stamps (``doBinLarge``), scored on the children that the binned run binned.

    python bench/bench_binned.py [--size 1000] [--seed 0] [--out bench/output/binned.json]

For each binned child matched to a truth galaxy (nearest within 2 px): the relative error of its r-band
conserved and model fluxes; for each parent holding a binned child: the residual sum |image - sum of the
stored models| / image flux over the parent's footprint in r (the stored models are clipped to the
parent's box, as in the demo's residuals.png).  The same figures over every matched object show what
binning changes elsewhere.  Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lsst.meas.extensions.vae.deblend.network import load_deblender
from lsst.meas.extensions.vae.measure.matching import match_to_truth
from lsst.meas.extensions.vae.pipe.standalone import DetectCoaddPeaksTask, VaeDeblendTask
from lsst.meas.extensions.vae.pipe.standalone.coadd import Coadd
from lsst.meas.extensions.vae.sim.patch import PatchConfig, make_patch


def _coadds(patch) -> list[Coadd]:
    h, w = patch.bands[0].image.shape
    return [Coadd(image=b.image, variance=b.variance, mask=b.mask, psf=b.psf, bbox=(0, 0, w, h), band=b.name,
                  zeropoint=b.zeropoint, pixel_scale=b.pixel_scale) for b in patch.bands]


def _run(coadds, detections, net, bin_large: bool):
    config = VaeDeblendTask.ConfigClass()
    config.doBinLarge = bin_large
    start = time.perf_counter()
    result = VaeDeblendTask(model=net, config=config).run(coadds, detections.mergedDetections,
                                                          detections.peaks, detections.footprints)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/output/binned.json"))
    args = parser.parse_args()

    patch = make_patch(PatchConfig(survey="lsst", size=args.size), seed=args.seed, progress=False)
    coadds = _coadds(patch)
    detections = DetectCoaddPeaksTask().run(coadds, tract=0, patch=0)
    net = load_deblender("lsst", device="cpu")
    runs = {name: _run(coadds, detections, net, flag) for name, flag in (("before", False), ("after", True))}
    after = runs["after"][0].deblendedCatalog
    truth = patch.truth
    labels = detections.footprints.labels
    ids = list(detections.footprints.ids)
    r = patch.band_names.index("r")
    image = coadds[r].image
    report: dict = {"size": args.size, "seed": args.seed, "n_objects": len(after),
                    "n_binned": int(after["deblend_binned"].sum()),
                    "bin_factors": {int(f): int((after["deblend_binFactor"] == f).sum())
                                    for f in np.unique(after["deblend_binFactor"])}}
    binned_ids = set(np.asarray(after["id"][after["deblend_binned"]]).tolist())
    binned_parents = sorted({int(row["parent"]) if row["parent"] else int(row["id"])
                             for row in after if row["deblend_binned"]})
    for name, (result, seconds) in runs.items():
        objects = result.deblendedCatalog
        index = match_to_truth(objects["deblend_peak_center_x"], objects["deblend_peak_center_y"], truth["x"],
                               truth["y"], 2.0)
        ok = index >= 0
        true_flux = np.full(len(objects), np.nan)
        true_flux[ok] = np.asarray(truth["flux_r"])[index[ok]]
        conserved = np.asarray(objects["deblend_conservedFlux_r"]) / true_flux - 1
        model = np.asarray(objects["deblend_modelFlux_r"]) / true_flux - 1
        chosen = np.array([int(i) in binned_ids for i in objects["id"]]) & ok
        rendered = result.vaeModelData.render(image.shape)[r]
        residuals, excess, signed = [], [], []
        for pid in binned_parents:
            inside = labels == ids.index(pid) + 1
            flux = image[inside].sum()
            residual = (image - rendered)[inside]
            residuals.append(float(np.abs(residual).sum() / flux))
            signed.append(float(residual.sum() / flux))
            # What pure noise would give: E|n| = sqrt(2 / pi) sigma per pixel.
            floor = np.sqrt(2 / np.pi) * np.sqrt(coadds[r].variance[inside]).sum()
            excess.append(float((np.abs(residual).sum() - floor) / flux))
        everyone = ok & np.asarray(objects["deblend_modelled"])
        report[name] = {
            "seconds": seconds,
            "binned_matched": int(chosen.sum()),
            "binned_true_hlr": [float(v) for v in np.asarray(truth["hlr"])[index[chosen]]],
            "binned_true_flux_r": [float(v) for v in true_flux[chosen]],
            "binned_true_mag_r": [float(v) for v in np.asarray(truth["mag_r"])[index[chosen]]],
            "binned_conserved_df": [float(v) for v in conserved[chosen]],
            "binned_model_df": [float(v) for v in model[chosen]],
            "binned_parent_residual": residuals,
            "binned_parent_residual_above_noise": excess,
            "binned_parent_signed_residual": signed,
            "all_conserved_median_abs_df": float(np.median(np.abs(conserved[everyone]))),
            "all_model_median_abs_df": float(np.median(np.abs(model[everyone]))),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{args.size}x{args.size} patch, seed {args.seed}: {report['n_objects']} objects, "
          f"{report['n_binned']} binned {report['bin_factors']}")
    print("| run | binned (matched) | median abs conserved df/f | median abs model df/f | median residual "
          "| all objects: median abs conserved / model df/f | deblend s |")
    print("|---|---|---|---|---|---|---|")
    for name in ("before", "after"):
        one = report[name]
        conserved = np.median(np.abs(one["binned_conserved_df"]))
        model = np.median(np.abs(one["binned_model_df"]))
        print(f"| {name} | {one['binned_matched']} | {conserved:.3f} | {model:.3f} | "
              f"{np.median(one['binned_parent_residual']):.3f} | {one['all_conserved_median_abs_df']:.3f} / "
              f"{one['all_model_median_abs_df']:.3f} | {one['seconds']:.1f} |")
    for k in range(report["before"]["binned_matched"]):
        b, a = report["before"], report["after"]
        print(f"  child {k} (true r {a['binned_true_mag_r'][k]:.2f}, hlr {a['binned_true_hlr'][k]:.2f}\"): "
              f"conserved {b['binned_conserved_df'][k]:+.3f} -> {a['binned_conserved_df'][k]:+.3f}, "
              f"model {b['binned_model_df'][k]:+.3f} -> {a['binned_model_df'][k]:+.3f}")
    for k, pid in enumerate(binned_parents):
        b, a = report["before"], report["after"]
        print(f"  parent {pid}: sum |residual| / flux {b['binned_parent_residual'][k]:.3f} -> "
              f"{a['binned_parent_residual'][k]:.3f}; above the noise's "
              f"{b['binned_parent_residual_above_noise'][k]:.3f} -> "
              f"{a['binned_parent_residual_above_noise'][k]:.3f}; signed "
              f"{b['binned_parent_signed_residual'][k]:+.3f} -> {a['binned_parent_signed_residual'][k]:+.3f}")


if __name__ == "__main__":
    main()

"""The standalone pipeline end to end on a simulated patch, scored against its truth.

`run_demo` simulates a patch, makes a butler repository of it, runs ``pipetask run`` on
``pipelines/demo.yaml`` in a subprocess, reads the outputs back, matches the objects to the truth
galaxies (nearest within ``match_radius`` pixels, one to one), prints a short table and writes pictures
and ``summary.json``.
"""

from __future__ import annotations

__all__ = ["run_demo", "read_outputs", "score_outputs", "DEMO_OUTPUT"]

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...measure.matching import match_to_truth
from ...sim.patch import PatchConfig, make_patch
from .repo import DEFAULT_SKYMAP, INPUT_RUN, make_repo, open_repo
from .runner import run_pipetask

DEMO_OUTPUT = "vae/demo"


def read_outputs(repo: str | Path, collection: str = DEMO_OUTPUT, tract: int = 0, patch: int = 0,
                 skymap: str = DEFAULT_SKYMAP) -> dict[str, Any]:
    """Read one patch's pipeline outputs and inputs back from a repository.

    Returns
    -------
    outputs : `dict`
        ``objects`` (object_deblend), ``parents`` (object_parent_patch), ``measurement``
        (object_unforced_measurement), ``detections`` (object_detection_merged), ``peaks``, ``models``
        (`VaeModelData`), ``coadds`` (`list` [`Coadd`]) and ``truth`` (truth_catalog, if present).
    """
    butler = open_repo(repo, collections=[collection])
    data_id = {"skymap": skymap, "tract": tract, "patch": patch}
    out = {"objects": butler.get("object_deblend", data_id),
           "parents": butler.get("object_parent_patch", data_id),
           "measurement": butler.get("object_unforced_measurement", data_id),
           "detections": butler.get("object_detection_merged", data_id),
           "peaks": butler.get("object_detection_peaks", data_id),
           "models": butler.get("object_vae_models", data_id)}
    refs = butler.query_datasets("deep_coadd", collections=[collection], data_id=data_id, explain=False)
    out["coadds"] = sorted((butler.get(ref) for ref in refs), key=lambda c: c.band)
    truth_refs = butler.query_datasets("truth_catalog", collections=[collection], data_id=data_id,
                                       explain=False)
    out["truth"] = butler.get(truth_refs[0]) if truth_refs else None
    return out


def score_outputs(outputs: dict[str, Any], band: str = "r", match_radius: float = 2.0) -> dict[str, Any]:
    """Counts and errors against truth of one patch's outputs (see `read_outputs`).

    ``flux_rel_abs_err_median``: median |f - f_true| / f_true of the re-distributed ``band`` flux of the
    matched objects; ``e_abs_err_median``: median |g - g_true| (HSM reduced shear, ``band``) on the
    re-distributed pixels; the ``model_*`` entries are the same on the models.
    """
    parents, objects, meas = outputs["parents"], outputs["objects"], outputs["measurement"]
    truth = outputs["truth"]
    index = match_to_truth(meas["deblend_peak_center_x"], meas["deblend_peak_center_y"], truth["x"],
                           truth["y"], match_radius)
    ok = index >= 0
    true_flux = np.asarray(truth[f"flux_{band}"])[index[ok]]

    def _median_abs(values: np.ndarray) -> float:
        values = values[np.isfinite(values)]
        return float(np.median(np.abs(values))) if len(values) else float("nan")

    def _shape_err(prefix: str) -> np.ndarray:
        dg1 = np.asarray(meas[f"{prefix}_g1"])[ok] - np.asarray(truth["g1"])[index[ok]]
        dg2 = np.asarray(meas[f"{prefix}_g2"])[ok] - np.asarray(truth["g2"])[index[ok]]
        return np.hypot(dg1, dg2)

    deblended = (parents["deblend_nChild"] > 0) & ~parents["deblend_failed"]
    return {
        "n_parents": int(len(parents)),
        "n_blends_deblended": int(deblended.sum()),
        "n_parents_skipped": int(parents["deblend_skipped"].sum()),
        "n_parents_failed": int(parents["deblend_failed"].sum()),
        "n_children": int(len(objects)),
        "n_children_of_blends": int((np.asarray(objects["parent"]) != 0).sum()),
        "n_truth": int(len(truth)),
        "n_truth_matched": int(ok.sum()),
        "flux_rel_abs_err_median": _median_abs((np.asarray(meas[f"{band}_flux"])[ok] - true_flux)
                                               / true_flux),
        "model_flux_rel_abs_err_median": _median_abs((np.asarray(meas[f"{band}_modelFlux"])[ok] - true_flux)
                                                     / true_flux),
        "e_abs_err_median": _median_abs(_shape_err(f"{band}_hsm")),
        "model_e_abs_err_median": _median_abs(_shape_err(f"{band}_hsmModel")),
        "match_radius": match_radius,
        "band": band,
        "matched": ok,
    }


def _table(summary: dict[str, Any]) -> str:
    rows = [
        ("parents", f"{summary['n_parents']} ({summary['n_blends_deblended']} blends deblended, "
                    f"{summary['n_parents_skipped']} skipped, {summary['n_parents_failed']} failed)"),
        ("children + isolated", f"{summary['n_children']} ({summary['n_children_of_blends']} in blends)"),
        ("truth galaxies", f"{summary['n_truth']}"),
        (f"matched within {summary['match_radius']:g} px", f"{summary['n_truth_matched']}"),
        (f"median |df/f| {summary['band']}", f"{summary['flux_rel_abs_err_median']:.3f} re-distributed, "
                                             f"{summary['model_flux_rel_abs_err_median']:.3f} model"),
        (f"median |dg| {summary['band']}", f"{summary['e_abs_err_median']:.3f} re-distributed, "
                                           f"{summary['model_e_abs_err_median']:.3f} model"),
        ("seconds", f"{summary['seconds']:.1f} (pipetask {summary['seconds_pipetask']:.1f})"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def run_demo(out_dir: str | Path, size: int = 1000, seed: int = 0, *, weights: str = "lsst", jobs: int = 2,
             survey: str = "lsst", origin: tuple[int, int] = (0, 0), match_radius: float = 2.0,
             progress: bool = True, verbose: bool = True) -> dict[str, Any]:
    """Simulate a patch, deblend it with ``pipetask run`` and score the result against truth.

    Parameters
    ----------
    out_dir : `str` or `pathlib.Path`
        Output folder: ``repo/`` (the butler repository; replaced if a previous demo made it),
        ``pipetask.log``, ``patch.png``, ``residuals.png`` and ``summary.json``.
    size : `int`
        Side of the patch, pixels.
    seed : `int`
        Simulation seed.
    weights : `str`
        Deblender weights (shipped name or path).
    jobs : `int`
        pipetask worker processes.
    survey : `str`
        Simulated survey (``lsst``; bands on another pixel grid are not ingested).
    origin : `tuple` [`int`, `int`]
        (x0, y0) of the patch's first pixel in its tract (truth positions follow).
    match_radius : `float`
        Matching radius to truth, pixels.
    progress, verbose : `bool`
        Show the simulation progress bar; print the table.

    Returns
    -------
    summary : `dict`
        As written to ``summary.json``: ``n_parents``, ``n_children``, ``n_truth_matched``,
        ``flux_rel_abs_err_median``, ``e_abs_err_median``, ``seconds`` and more.
    """
    from .models import VaeModelData
    from .plots import plot_patch, plot_residuals

    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    repo = out_dir / "repo"
    if (repo / "butler.yaml").is_file():
        shutil.rmtree(repo)
    patch = make_patch(PatchConfig(survey=survey, size=size), seed=seed, progress=progress)
    make_repo(repo, [patch], origin=origin)
    pipetask_start = time.perf_counter()
    run_pipetask(repo, INPUT_RUN, DEMO_OUTPUT, jobs=jobs, config={"parameters:weights": weights},
                 log_file=out_dir / "pipetask.log")
    seconds_pipetask = time.perf_counter() - pipetask_start

    outputs = read_outputs(repo)
    scores = score_outputs(outputs, match_radius=match_radius)
    matched = scores.pop("matched")
    models: VaeModelData = outputs["models"]
    coadds = outputs["coadds"]
    title = f"{size}x{size} {survey} patch, seed {seed}"
    plot_patch(coadds, outputs["measurement"], out_dir / "patch.png", truth=outputs["truth"], matched=matched,
               title=f"VAE deblending, {title}")
    reference = next(c for c in coadds if c.band == scores["band"])
    rendered = models.render(reference.image.shape, reference.xy0)[models.bands.index(reference.band)]
    plot_residuals(reference, rendered, out_dir / "residuals.png", title=f"Residuals, {title}")

    summary = {"size": size, "seed": seed, "survey": survey, "weights": weights, "origin": list(origin),
               **scores,
               "seconds": time.perf_counter() - start, "seconds_pipetask": seconds_pipetask,
               "repo": str(repo), "collection": DEMO_OUTPUT}
    with open(out_dir / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    if verbose:
        print(f"VAE deblending demo ({title}, weights {weights})")
        print(_table(summary))
        print(f"Wrote {out_dir / 'summary.json'}, {out_dir / 'patch.png'}, {out_dir / 'residuals.png'}")
    return summary

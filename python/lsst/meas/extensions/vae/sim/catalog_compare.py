"""Compare the built-in galaxy generator with real catalogues (CatSim, COSMOS parametric fits).

`compare_with_catalogs` draws galaxies with `generate_catalog`, reads a CatSim catalogue and a COSMOS
parametric-fit catalogue (`catalog_io`), writes a figure of their size-magnitude relations and of their
r-magnitude and colour (g - r, r - i, i - z) distributions, and returns the medians of each sample.

Sizes are `GalaxyCatalog.hlr` (circularised half-light radii of disk and bulge, weighted by their r-band
flux shares).  COSMOS magnitudes are F814W treated as i (see `catalog_io`), and the COSMOS sample is
limited to F814W < 23.5, so it only overlaps the bright end of the others.
"""

from __future__ import annotations

__all__ = ["compare_with_catalogs", "summarize"]

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .catalog import GalaxyCatalog, generate_catalog
from .catalog_io import read_catsim, read_cosmos

BRIGHT_R = 25.0
_STYLE = {
    "generator": {"color": "0.35", "label": "generator"},
    "catsim": {"color": "tab:orange", "label": "CatSim"},
    "cosmos": {"color": "tab:blue", "label": "COSMOS fits"},
}
_COLOURS = (("g", "r"), ("r", "i"), ("i", "z"))


def summarize(catalog: GalaxyCatalog) -> dict[str, float]:
    """Medians of size, r magnitude, colours and redshift of a catalogue.

    Parameters
    ----------
    catalog : `GalaxyCatalog`

    Returns
    -------
    summary : `dict` [`str`, `float`]
        ``n``, ``median_r``, ``median_hlr`` (arcsec), ``median_g_r``, ``median_r_i``, ``median_i_z``,
        ``median_redshift``, and for galaxies with r < 25 ``n_r_lt_25``, ``median_hlr_r_lt_25`` and
        ``median_r_i_r_lt_25`` (NaN where there are none).
    """
    r = catalog.band_mag("r")
    bright = r < BRIGHT_R
    summary = {
        "n": float(len(catalog)),
        "median_r": float(np.median(r)),
        "median_hlr": float(np.median(catalog.hlr)),
        "median_redshift": float(np.median(catalog.redshift)),
    }
    for blue, red in _COLOURS:
        summary[f"median_{blue}_{red}"] = float(np.median(catalog.band_mag(blue) - catalog.band_mag(red)))
    summary["n_r_lt_25"] = float(bright.sum())
    r_i = catalog.band_mag("r") - catalog.band_mag("i")
    summary["median_hlr_r_lt_25"] = float(np.median(catalog.hlr[bright])) if bright.any() else float("nan")
    summary["median_r_i_r_lt_25"] = float(np.median(r_i[bright])) if bright.any() else float("nan")
    return summary


def compare_with_catalogs(out_dir: str | os.PathLike, seed: int = 0, *, catsim_path: str | os.PathLike,
                          cosmos_path: str | os.PathLike, n_generated: int = 20000,
                          filename: str = "catalog_comparison.png") -> dict:
    """Plot the generator's galaxies against CatSim and COSMOS, and summarise all three.

    Parameters
    ----------
    out_dir : `str` or `os.PathLike`
        Directory for the figure (created if needed).
    seed : `int`
        Seed of `generate_catalog` (training split).
    catsim_path : `str` or `os.PathLike`
        CatSim catalogue (e.g. ``catsim_sample_100.fits``).
    cosmos_path : `str` or `os.PathLike`
        COSMOS parametric-fit catalogue (e.g. ``cosmos_23.5_example_fits_100.fits``).
    n_generated : `int`
        Number of generated galaxies.
    filename : `str`
        Name of the PNG file.

    Returns
    -------
    result : `dict`
        ``png``: path of the figure; ``generator``, ``catsim``, ``cosmos``: the `summarize` output of
        each sample.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalogs = {
        "generator": generate_catalog(n_generated, seed=seed, split="train"),
        "catsim": read_catsim(catsim_path),
        "cosmos": read_cosmos(cosmos_path),
    }
    result: dict = {name: summarize(catalog) for name, catalog in catalogs.items()}
    png = out_dir / filename
    _plot(catalogs, result, png)
    result["png"] = png
    return result


def _plot(catalogs: dict[str, GalaxyCatalog], summaries: dict[str, dict], png: Path) -> None:
    fig = Figure(figsize=(15, 9), layout="constrained")
    axes = fig.subplots(2, 3)

    # Size-magnitude relation.
    ax = axes[0, 0]
    mag_bins = np.arange(18.0, 28.51, 0.5)
    for name, catalog in catalogs.items():
        r, hlr = catalog.band_mag("r"), catalog.hlr
        style = _STYLE[name]
        if name == "generator":
            ax.scatter(r, hlr, s=1, alpha=0.08, color=style["color"], rasterized=True)
            centre, median = _running_median(r, hlr, mag_bins)
            ax.plot(centre, median, color="k", lw=2, label=f"{style['label']} median (N={len(catalog)})")
        else:
            ax.scatter(r, hlr, s=14, color=style["color"], edgecolor="k", lw=0.3,
                       label=f"{style['label']} (N={len(catalog)})", marker="o" if name == "catsim" else "^")
    ax.set_yscale("log")
    ax.set_xlabel("r (AB mag)")
    ax.set_ylabel("half-light radius (arcsec)")
    ax.set_title("size-magnitude")
    ax.legend(fontsize=8)

    # r magnitudes.
    _histograms(axes[0, 1], {k: c.band_mag("r") for k, c in catalogs.items()}, np.arange(17.0, 28.6, 0.5),
                "r (AB mag)")
    axes[0, 1].set_title("r magnitude")

    # Sizes of the bright galaxies.
    bright = {k: c.hlr[c.band_mag("r") < BRIGHT_R] for k, c in catalogs.items()}
    _histograms(axes[0, 2], bright, np.geomspace(0.03, 5.0, 30), "half-light radius (arcsec)")
    axes[0, 2].set_xscale("log")
    axes[0, 2].set_title(f"sizes, r < {BRIGHT_R:g}")

    # Colours.
    for ax, (blue, red) in zip(axes[1], _COLOURS):
        values = {k: c.band_mag(blue) - c.band_mag(red) for k, c in catalogs.items()}
        _histograms(ax, values, np.arange(-0.6, 2.01, 0.1), f"{blue} - {red}")
        ax.set_title(f"{blue} - {red}")

    lines = [f"{_STYLE[k]['label']}: median r {s['median_r']:.2f}, hlr {s['median_hlr']:.3f}\", "
             f"hlr(r<25) {s['median_hlr_r_lt_25']:.3f}\", g-r {s['median_g_r']:.2f}, "
             f"r-i {s['median_r_i']:.2f}, i-z {s['median_i_z']:.2f}" for k, s in summaries.items()]
    fig.suptitle("\n".join(lines), fontsize=9)
    fig.savefig(png, dpi=90)


def _histograms(ax, values: dict[str, np.ndarray], bins: np.ndarray, xlabel: str) -> None:
    for name, value in values.items():
        style = _STYLE[name]
        value = value[np.isfinite(value)]
        if len(value) == 0:
            continue
        ax.hist(np.clip(value, bins[0], bins[-1]), bins=bins, density=True, histtype="step", lw=2,
                color=style["color"], label=f"{style['label']} (N={len(value)})")
        ax.axvline(np.median(value), color=style["color"], ls=":", lw=1.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)


def _running_median(x: np.ndarray, y: np.ndarray, bins: np.ndarray, min_count: int = 20
                    ) -> tuple[np.ndarray, np.ndarray]:
    which = np.digitize(x, bins) - 1
    centre, median = [], []
    for k in range(len(bins) - 1):
        selected = which == k
        if selected.sum() >= min_count:
            centre.append(0.5 * (bins[k] + bins[k + 1]))
            median.append(np.median(y[selected]))
    return np.array(centre), np.array(median)

"""Plots of scores: binned errors against SNR and blendedness, and example models."""

from __future__ import annotations

__all__ = ["plot_binned", "plot_examples", "plot_bench", "plot_suite"]

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _centres(rows: list[dict]) -> np.ndarray:
    return np.array([0.5 * (r["lo"] + min(r["hi"], 2 * max(r["lo"], 1e-3))) for r in rows])


def plot_binned(metrics: dict, path: str | Path) -> Path:
    """Median and NMAD of dmag, dg1, dg2 and |df/f| (with the no-deblending baseline) in SNR and
    blendedness bins, as in Arcelin et al. (2021)."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for row, (key, label, log) in enumerate((("by_snr", "r-band SNR", True),
                                             ("by_blendedness", "blendedness (r)", False))):
        rows = [r for r in metrics[key] if r["n"] > 0]
        x = np.arange(len(rows))
        ticks = [f"{r['lo']:g}-{r['hi']:g}\n(n={r['n']})" for r in rows]
        ax = axes[row, 0]
        med = [r["dmag"]["median"] for r in rows]
        sig = [r["dmag"]["nmad"] for r in rows]
        ax.errorbar(x, med, yerr=sig, fmt="o-", capsize=3, label="VAE")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel("dmag (r), median +- NMAD")
        ax = axes[row, 1]
        for comp, marker in (("dg1", "o"), ("dg2", "s")):
            ax.errorbar(x + (0.1 if comp == "dg2" else -0.1), [r[comp]["median"] for r in rows],
                        yerr=[r[comp]["nmad"] for r in rows], fmt=marker + "-", capsize=3, label=comp)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel("dg, median +- NMAD")
        ax.legend(fontsize=8)
        ax = axes[row, 2]
        ax.plot(x, [r["abs_df"]["median"] for r in rows], "o-", label="VAE median |df/f|")
        ax.plot(x, [r["abs_df"]["mean"] for r in rows], "o--", label="VAE mean |df/f|")
        ax.plot(x, [r["baseline_abs_df"]["median"] for r in rows], "s:", color="gray",
                label="no deblending, median")
        ax.set_yscale("log")
        ax.set_ylabel("|df/f| (r)")
        ax.legend(fontsize=8)
        for ax in axes[row]:
            ax.set_xticks(x)
            ax.set_xticklabels(ticks, fontsize=7)
            ax.set_xlabel(label)
    fig.suptitle(f"Central galaxies of {metrics['n']} '{metrics['preset']}' test blends: median |df/f| "
                 f"{metrics['flux_rel_abs_err_median']:.3f}, median |dg| {metrics['e_abs_err_median']:.3f}",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_examples(examples: list[tuple], path: str | Path) -> Path:
    """Blend, true central galaxy, VAE model and truth - model residual, r band, for a few blends."""
    n = len(examples)
    fig, axes = plt.subplots(4, n, figsize=(1.7 * n, 7), squeeze=False)
    for k, (blend, truth, model, center) in enumerate(examples):
        vmax = max(float(truth.max()), 1e-9)
        for row, (img, title) in enumerate(((blend, "blend"), (truth, "truth"), (model, "model"),
                                            (truth - model, "truth-model"))):
            ax = axes[row, k]
            lim = (-0.2 * vmax, 0.2 * vmax) if row == 3 else (-0.05 * vmax, vmax)
            ax.imshow(img, origin="lower", cmap="RdBu_r" if row == 3 else "gray_r", vmin=lim[0], vmax=lim[1])
            ax.plot(*center, "+", color="orange", ms=5)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.suptitle("r band: blend, true central galaxy, VAE model, residual (+-20 % of the peak)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bench(result: dict, path: str | Path) -> Path:
    """Every row of a bench result side by side: median and mean abs(df/f) and abs(dg) RMS against r
    magnitude and blendedness, and the time per blend."""
    rows = result["deblenders"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for col, (key, label) in enumerate((("by_mag", "r magnitude"), ("by_blendedness", "blendedness (r)"))):
        for name, entry in rows.items():
            bins = [b for b in entry[key] if b["n"] > 0]
            x = [0.5 * (b["lo"] + b["hi"]) for b in bins]
            style = "--" if ":" in name else "-"
            axes[0, col].plot(x, [b["flux_rel_abs_err_median"] for b in bins], "o" + style, label=name)
            axes[1, col].plot(x, [b["flux_rel_abs_err_mean"] for b in bins], "o" + style, label=name)
        for ax, what in ((axes[0, col], "median"), (axes[1, col], "mean")):
            ax.set_xlabel(label)
            ax.set_ylabel(f"abs(df/f) {what} (r)")
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=7)
    names = list(rows)
    y = np.arange(len(names))
    axes[0, 2].barh(y, [1e3 * rows[n]["seconds_per_blend_median"] for n in names])
    axes[0, 2].set_yticks(y, names, fontsize=8)
    axes[0, 2].set_xscale("log")
    axes[0, 2].set_xlabel("ms per blend (median, all sources)")
    for name, entry in rows.items():
        bins = [b for b in entry["by_blendedness"] if b["n"] > 0]
        axes[1, 2].plot([0.5 * (b["lo"] + b["hi"]) for b in bins], [b["e_err_rms"] for b in bins],
                        "o" + ("--" if ":" in name else "-"), label=name)
    axes[1, 2].set_xlabel("blendedness (r)")
    axes[1, 2].set_ylabel("dg RMS (r, HSM)")
    cfg = result["config"]
    fig.suptitle(f"{result['n_blends']} blends ({cfg['preset']}, {cfg['peaks']} peaks), "
                 f"{result['n_galaxies']} galaxies")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# The rows a suite plot shows, and their colours.
_SUITE_ROWS = {"vae": "C0", "vae-fit": "C1", "vae-refine": "C3", "scarlet": "C2", "none": "C7",
               "vae:isolated": "C4"}


def plot_suite(suite: dict, path: str | Path, bins_path: str | Path) -> tuple[Path, Path]:
    """The shift suite: every set's headline figures side by side (``path``), and every set's mean and
    median abs(df/f) against r magnitude (``bins_path``)."""
    sets = {name: e["result"]["deblenders"] for name, e in suite["sets"].items() if not e["skipped"]}
    names = list(sets)
    fig, axes = plt.subplots(2, 2, figsize=(15, 8))
    panels = (("flux_rel_abs_err_median", "median abs(df/f)", True), ("flux_rel_abs_err_mean",
              "mean abs(df/f)", True), ("catastrophic_fraction", "fraction abs(df/f) > 1", False),
              ("e_abs_err_rms", "abs(dg) RMS", False))
    width = 0.8 / len(_SUITE_ROWS)
    x = np.arange(len(names))
    for ax, (key, label, log) in zip(axes.flat, panels):
        for k, (row, colour) in enumerate(_SUITE_ROWS.items()):
            values = [rows[row]["all"][key] if row in rows else np.nan for rows in sets.values()]
            ax.bar(x + (k - len(_SUITE_ROWS) / 2 + 0.5) * width, values, width, color=colour, label=row)
        ax.set_xticks(x, names, fontsize=8, rotation=20)
        ax.set_ylabel(f"{label} (r, all galaxies)")
        if log:
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    cfg = suite["config"]
    fig.suptitle(f"Shift suite: {cfg['n']} blends per set (latent fit on {cfg['fit_n'] or cfg['n']}), "
                 f"weights {cfg['weights']}; conserved children for the VAE rows and scarlet")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

    columns = 3
    rows_of_plot = max(1, int(np.ceil(len(names) / columns)))
    fig, axes = plt.subplots(rows_of_plot, columns, figsize=(15, 3.6 * rows_of_plot), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for row, colour in _SUITE_ROWS.items():
            if row not in sets[name]:
                continue
            bins = [b for b in sets[name][row]["by_mag"] if b["n"] > 0]
            centres = [0.5 * (b["lo"] + b["hi"]) for b in bins]
            ax.plot(centres, [b["flux_rel_abs_err_mean"] for b in bins], "o-", color=colour, label=row)
            ax.plot(centres, [b["flux_rel_abs_err_median"] for b in bins], "s:", color=colour)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("r magnitude")
        ax.set_ylabel("abs(df/f): mean (-), median (:)")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(bins_path, dpi=90)
    plt.close(fig)
    return Path(path), Path(bins_path)

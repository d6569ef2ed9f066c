"""Robust statistics and binned summaries (median bias, NMAD sigma, outlier fraction)."""

from __future__ import annotations

__all__ = ["nmad", "summary", "binned", "SNR_BINS", "BLENDEDNESS_BINS"]

import numpy as np

SNR_BINS = (0.0, 10.0, 20.0, 40.0, 80.0, 160.0, np.inf)
BLENDEDNESS_BINS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


def nmad(x: np.ndarray) -> float:
    """Normalised median absolute deviation: 1.4826 median(|x - median(x)|) (sigma for a Gaussian)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def summary(x: np.ndarray) -> dict[str, float]:
    """``n``, ``median``, ``nmad``, ``mean``, ``rms`` and ``outlier_fraction`` (|x - median| > 3 NMAD)
    of the finite values of ``x``."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"n": 0, "median": float("nan"), "nmad": float("nan"), "mean": float("nan"),
                "rms": float("nan"), "outlier_fraction": float("nan")}
    med, sig = float(np.median(x)), nmad(x)
    return {"n": int(len(x)), "median": med, "nmad": sig, "mean": float(np.mean(x)),
            "rms": float(np.sqrt(np.mean(x**2))),
            "outlier_fraction": float(np.mean(np.abs(x - med) > 3 * sig)) if sig > 0 else 0.0}


def binned(values: dict[str, np.ndarray], by: np.ndarray, edges: tuple[float, ...]) -> list[dict]:
    """`summary` of each array of ``values`` in bins of ``by``.

    Returns
    -------
    rows : `list` [`dict`]
        One per bin: ``lo``, ``hi``, ``n`` and, per value name, its summary.
    """
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (by >= lo) & (by < hi) if hi != edges[-1] else (by >= lo) & (by <= hi)
        row = {"lo": float(lo), "hi": float(hi), "n": int(inside.sum())}
        for name, v in values.items():
            row[name] = summary(np.asarray(v)[inside])
        rows.append(row)
    return rows

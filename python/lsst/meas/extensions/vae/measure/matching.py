"""Matching measured objects to truth galaxies (arrays only)."""

from __future__ import annotations

__all__ = ["match_to_truth"]

import numpy as np


def match_to_truth(x: np.ndarray, y: np.ndarray, truth_x: np.ndarray, truth_y: np.ndarray,
                   radius: float = 2.0) -> np.ndarray:
    """One-to-one nearest matches of objects to truth within ``radius`` pixels, closest pairs first.

    Returns
    -------
    index : `numpy.ndarray` (n,), int
        Truth row of each object, -1 when unmatched.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    truth_x, truth_y = np.asarray(truth_x, dtype=float), np.asarray(truth_y, dtype=float)
    index = np.full(len(x), -1, dtype=np.int64)
    if len(x) == 0 or len(truth_x) == 0:
        return index
    pairs = []
    order = np.argsort(truth_x)
    sorted_x = truth_x[order]
    for i in range(len(x)):
        lo, hi = np.searchsorted(sorted_x, [x[i] - radius, x[i] + radius])
        cand = order[lo:hi]
        d = np.hypot(truth_x[cand] - x[i], truth_y[cand] - y[i])
        for j, dist in zip(cand[d <= radius], d[d <= radius]):
            pairs.append((dist, i, int(j)))
    taken = set()
    for _, i, j in sorted(pairs):
        if index[i] < 0 and j not in taken:
            index[i] = j
            taken.add(j)
    return index

"""Flux re-distribution of one parent from stored child models, through the deblending core's own rule.

Measurement rebuilds each child's pixels from the persisted models: inside the parent's footprint, the
observed flux of every pixel is split among the children in proportion to their (clipped positive)
models, pixels no model reaches going to the nearest peak, so that the children add up to the parent.
The rule is the core's (`lsst.meas.extensions.vae.deblend.field.conserve_flux`); this module only
converts stamp origins to centres.
"""

from __future__ import annotations

__all__ = ["redistribute"]

from collections.abc import Sequence

import numpy as np

from ...deblend import field


def redistribute(image: np.ndarray, footprint: np.ndarray, models: Sequence[np.ndarray],
                 origins: Sequence[tuple[int, int]], peaks: np.ndarray) -> np.ndarray:
    """Split a parent's observed flux among its children in proportion to their models.

    Parameters
    ----------
    image : `numpy.ndarray` (bands, h, w)
        Observed image over the parent's box.
    footprint : `numpy.ndarray` (h, w) of `bool`
        The parent's footprint over the same box.
    models : sequence of `numpy.ndarray` (bands, s, s)
        Each child's model (square stamps).
    origins : sequence of (`int`, `int`)
        (x0, y0) of each model's lower-left pixel, relative to the box.
    peaks : `numpy.ndarray` (n, 2)
        (x, y) of each child's peak, relative to the box.

    Returns
    -------
    children : `numpy.ndarray` (n, bands, h, w), float32
        Each child's share of the observed image (zero outside the footprint); summed over children it
        equals ``image * footprint``.
    """
    half = np.array([np.asarray(m).shape[-1] // 2 for m in models], dtype=np.int64).reshape(-1, 1)
    centers = np.asarray(origins, dtype=np.int64).reshape(-1, 2) + half
    return field.conserve_flux(image, footprint, list(models), centers, peaks)

"""Which parents the deblenders leave alone: one set of rules and flag names for both pipelines.

The Rubin task (`~lsst.meas.extensions.vae.pipe.rubin.VaeDeblendCoaddTask`) and the standalone task
(`~lsst.meas.extensions.vae.pipe.standalone.deblend_task.VaeDeblendTask`) both call `skip_reason` (one
parent) or `skip_reasons` (arrays of parents), so the two pipelines skip the same parents for the same
reason.  The rules and their order are those of scarlet's task (``ScarletDeblendTask._checkSkipped``):

1. pseudo sources (sky objects): ``deblend_skipped_isPseudo``;
2. footprints too big: bounding-box area above ``max_area``, longest bounding-box side above
   ``max_size``, bounding-box area times number of peaks above ``max_area_times_peaks``, or the
   footprint's axis ratio (minor / major, from its second moments) below ``min_axis_ratio``
   (``deblend_skipped_parentTooBig``);
3. too many masked pixels: for any plane of ``mask_limits``, the fraction of the footprint's pixels with
   that plane set in any band above the plane's limit (``deblend_skipped_masked``);
4. too many peaks: more than ``max_peaks`` (``deblend_skipped_tooManyPeaks``).

Every limit ``<= 0`` is disabled, except the mask limits, where 0 means "not a single masked pixel".
"""

from __future__ import annotations

__all__ = ["SKIP_PSEUDO", "SKIP_TOO_BIG", "SKIP_MASKED", "SKIP_TOO_MANY_PEAKS", "SKIP_FLAGS", "SkipLimits",
           "skip_reason", "skip_reasons"]

import dataclasses
from collections.abc import Mapping

import numpy as np

SKIP_PSEUDO = "deblend_skipped_isPseudo"
SKIP_TOO_BIG = "deblend_skipped_parentTooBig"
SKIP_MASKED = "deblend_skipped_masked"
SKIP_TOO_MANY_PEAKS = "deblend_skipped_tooManyPeaks"
#: The skip flags, in the order the rules are applied.
SKIP_FLAGS = (SKIP_PSEUDO, SKIP_TOO_BIG, SKIP_MASKED, SKIP_TOO_MANY_PEAKS)


@dataclasses.dataclass(frozen=True)
class SkipLimits:
    """The limits of the skip rules (the names of scarlet's config fields in the docs).

    Attributes
    ----------
    max_peaks : `int`
        ``maxNumberOfPeaks``.
    max_area : `int`
        ``maxFootprintArea``, on the bounding box.
    max_size : `int`
        ``maxFootprintSize``, the bounding box's longest side.
    max_area_times_peaks : `int`
        ``maxAreaTimesPeaks``.
    mask_limits : `dict` [`str`, `float`]
        ``maskLimits``: largest masked fraction of the footprint per mask plane.
    min_axis_ratio : `float`
        ``minFootprintAxisRatio``.
    """

    max_peaks: int = 600
    max_area: int = 2_000_000
    max_size: int = 0
    max_area_times_peaks: int = 1_000_000_000
    mask_limits: Mapping[str, float] = dataclasses.field(default_factory=dict)
    min_axis_ratio: float = 0.0


def skip_reason(*, n_peaks: int, bbox_area: int, bbox_size: int, is_pseudo: bool, masked: Mapping[str, float],
                max_peaks: int, max_area: int, max_size: int, mask_limits: Mapping[str, float],
                max_area_times_peaks: int = 0, axis_ratio: float | None = None,
                min_axis_ratio: float = 0.0) -> str | None:
    """The flag naming why one parent is not deblended, or `None` to deblend it (rules: module docstring).

    Parameters
    ----------
    n_peaks : `int`
        Peaks of the parent's footprint (all of them, sky peaks included).
    bbox_area, bbox_size : `int`
        Area and longest side of the footprint's bounding box.
    is_pseudo : `bool`
        The parent is a pseudo source (sky object).
    masked : `dict` [`str`, `float`]
        Fraction of the footprint's pixels with each plane of ``mask_limits`` set (in any band).
    max_peaks, max_area, max_size, mask_limits, max_area_times_peaks, min_axis_ratio
        The limits (`SkipLimits`).
    axis_ratio : `float`, optional
        Minor over major axis of the footprint (needed only with ``min_axis_ratio > 0``).

    Returns
    -------
    flag : `str` or `None`
        One of `SKIP_FLAGS`.
    """
    reasons = skip_reasons(n_peaks=np.array([n_peaks]), bbox_area=np.array([bbox_area]),
                           bbox_size=np.array([bbox_size]), is_pseudo=np.array([is_pseudo]),
                           masked={plane: np.array([masked.get(plane, 0.0)]) for plane in mask_limits},
                           axis_ratio=None if axis_ratio is None else np.array([axis_ratio]),
                           limits=SkipLimits(max_peaks=max_peaks, max_area=max_area, max_size=max_size,
                                             max_area_times_peaks=max_area_times_peaks,
                                             mask_limits=dict(mask_limits), min_axis_ratio=min_axis_ratio))
    return reasons[0] or None


def skip_reasons(*, n_peaks: np.ndarray, bbox_area: np.ndarray, bbox_size: np.ndarray,
                 is_pseudo: np.ndarray | None = None, masked: Mapping[str, np.ndarray] | None = None,
                 axis_ratio: np.ndarray | None = None, limits: SkipLimits = SkipLimits()) -> np.ndarray:
    """The skip flag of each of n parents (rules: module docstring), ``""`` for those to deblend.

    Parameters
    ----------
    n_peaks, bbox_area, bbox_size : `numpy.ndarray` (n,)
        Peaks, bounding-box area and longest bounding-box side of each parent.
    is_pseudo : `numpy.ndarray` (n,) of `bool`, optional
        Pseudo sources (sky objects); none by default.
    masked : `dict` [`str`, `numpy.ndarray` (n,)], optional
        Masked fraction of each footprint per plane of ``limits.mask_limits`` (a plane missing here counts
        as unmasked).
    axis_ratio : `numpy.ndarray` (n,), optional
        Minor over major axis of each footprint; without it ``limits.min_axis_ratio`` is not applied.
    limits : `SkipLimits`

    Returns
    -------
    flags : `numpy.ndarray` (n,) of `str`
        The first rule that applies, by its flag name, or ``""``.
    """
    n_peaks = np.asarray(n_peaks, dtype=np.int64)
    area = np.asarray(bbox_area, dtype=np.int64)
    size = np.asarray(bbox_size, dtype=np.int64)
    n = len(n_peaks)
    pseudo = np.zeros(n, dtype=bool) if is_pseudo is None else np.asarray(is_pseudo, dtype=bool)
    too_big = np.zeros(n, dtype=bool)
    if limits.max_area > 0:
        too_big |= area > limits.max_area
    if limits.max_size > 0:
        too_big |= size > limits.max_size
    if limits.max_area_times_peaks > 0:
        too_big |= area * n_peaks > limits.max_area_times_peaks
    if limits.min_axis_ratio > 0 and axis_ratio is not None:
        too_big |= np.asarray(axis_ratio, dtype=np.float64) < limits.min_axis_ratio
    too_masked = np.zeros(n, dtype=bool)
    for plane, limit in limits.mask_limits.items():
        if masked is not None and plane in masked:
            too_masked |= np.asarray(masked[plane], dtype=np.float64) > limit
    too_many = (n_peaks > limits.max_peaks) if limits.max_peaks > 0 else np.zeros(n, dtype=bool)
    flags = np.full(n, "", dtype=object)
    for rule, flag in zip((too_many, too_masked, too_big, pseudo), SKIP_FLAGS[::-1]):
        flags[rule] = flag  # later rules first, so the earliest that applies wins
    return flags.astype(str)

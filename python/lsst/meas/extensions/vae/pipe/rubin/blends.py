"""One parent footprint at a time, on arrays: the part of the Rubin task that needs no afw.

The DRP task (`VaeDeblendCoaddTask`) cuts each parent out of the coadds, hands the cut-out arrays to
`deblend_blend`, and turns the result back into catalogue records and scarlet-style model data.  This
module holds the steps in between, on plain numpy arrays:

- `blend_box`: the cut-out around a parent's bounding box, wide enough that no stamp (after centroid
  refinement) reaches past it;
- `deblend_blend`: `deblend_field` on that cut-out with the parent's footprint as the only label, the
  results moved back to the frame of the whole image, plus the reduced chi^2 of the fit;
- `skip_reason` (from `~lsst.meas.extensions.vae.deblend.skip`, shared with the standalone task): the
  scarlet task's rules for not deblending a parent (pseudo sources, too big, too masked, too many peaks);
- `electrons_per_nanojansky`: the factor from calibrated coadd pixels (nJy) to the electrons of the
  simulated survey the weights were trained on.

Coordinates: arrays are indexed ``[band, y, x]``; boxes are ``(x0, y0, x1, y1)`` with exclusive upper
bounds, in the pixel frame of the array they refer to (the caller adds the coadd's ``xy0``).
"""

from __future__ import annotations

__all__ = ["BlendResult", "blend_box", "stamp_margin", "deblend_blend", "skip_reason", "masked_fraction",
           "touches_edge", "electrons_per_nanojansky", "NANOJANSKY_AB_ZEROPOINT"]

import dataclasses
import math

import numpy as np

from ...deblend.field import Child, DeblendConfig, Parent, add_at, binned_reach, deblend_field
from ...deblend.fit import median_variance
from ...deblend.skip import skip_reason  # noqa: F401 (the rules shared with the standalone task)
from ...geometry import overlap_slices

#: AB magnitude of a flux of 1 nJy.
NANOJANSKY_AB_ZEROPOINT = 31.4


@dataclasses.dataclass
class BlendResult:
    """The deblended children of one parent, in the frame of the whole image.

    Attributes
    ----------
    children : `list` [`Child`]
        One per peak given, in the input order; ``peak``, ``center`` and ``origin`` are in the frame of
        the whole image (the cut-out's offset added back).
    parent : `Parent`
        The parent, its ``bbox`` in the frame of the whole image.
    chi2 : `float`
        Reduced chi^2 of the sum of the models over the footprint (mean over bands and footprint pixels
        of residual^2 / variance); NaN without a variance.
    child_chi2 : `numpy.ndarray` (n,)
        Per child: the chi^2 summed over its stamp (inside the footprint) divided by the number of
        (band, pixel) elements where its model is positive; NaN without a variance.
    """

    children: list[Child]
    parent: Parent
    chi2: float
    child_chi2: np.ndarray


def stamp_margin(stamp_size: int, config: DeblendConfig) -> int:
    """Pixels to add around a parent's bounding box so that its stamps stay inside the cut-out.

    A stamp is centred on a peak inside the box and may move by up to ``max_centroid_shift`` pixels; a
    binned stamp (`DeblendConfig.bin_large`) reaches `binned_reach` pixels farther.
    """
    shift = math.ceil(config.max_centroid_shift) if config.refine_centroids else 0
    return stamp_size // 2 + shift + 1 + binned_reach(stamp_size, config)


def blend_box(bbox: tuple[int, int, int, int], margin: int, shape: tuple[int, int]
              ) -> tuple[int, int, int, int]:
    """``bbox`` grown by ``margin`` on every side and clipped to an image of ``shape`` (height, width)."""
    x0, y0, x1, y1 = bbox
    height, width = shape
    return (max(x0 - margin, 0), max(y0 - margin, 0), min(x1 + margin, width), min(y1 + margin, height))


def _moved(child: Child, dx: int, dy: int) -> Child:
    return dataclasses.replace(child, peak=np.asarray(child.peak, dtype=np.float64) + (dx, dy),
                               center=(child.center[0] + dx, child.center[1] + dy),
                               origin=(child.origin[0] + dx, child.origin[1] + dy))


def deblend_blend(image: np.ndarray, footprint: np.ndarray, peaks: np.ndarray, model, stamp_size: int, *,
                  xy0: tuple[int, int] = (0, 0), bad: np.ndarray | None = None,
                  variance: np.ndarray | None = None, config: DeblendConfig = DeblendConfig(),
                  psf: np.ndarray | None = None) -> BlendResult:
    """Deblend one parent from a cut-out of the coadds.

    Parameters
    ----------
    image : `numpy.ndarray` (bands, h, w)
        The cut-out (see `blend_box`), background subtracted, in the network's units (electrons).
    footprint : `numpy.ndarray` (h, w) of `bool`
        The parent's footprint in the cut-out.
    peaks : `numpy.ndarray` (n, 2)
        Peak positions (x, y) in the cut-out, pixels; every one inside ``footprint``.
    model : callable
        The stamp model, e.g. `~lsst.meas.extensions.vae.deblend.network.VaeDeblender`.
    stamp_size : `int`
        The model's stamp side.
    xy0 : `tuple` [`int`, `int`]
        Position of the cut-out's first pixel in the whole image; the results are moved by it.
    bad : `numpy.ndarray` (h, w) of `bool`, optional
        Pixels to hide from the network (bad mask planes, non-finite values).
    variance : `numpy.ndarray` (bands, h, w), optional
        Variance of ``image`` (same units squared), for the chi^2, the latent fit's noise and a PSF- and
        noise-aware network (its median over good pixels).
    config : `DeblendConfig`
    psf : `numpy.ndarray` (n, bands, p, p) or (bands, p, p), optional
        The coadds' PSF images at each peak (or one set for the parent), p odd, each summing to 1
        (`~lsst.meas.extensions.vae.deblend.psf.stack_psf_images`); needed by PSF-aware weights.

    Returns
    -------
    result : `BlendResult`
    """
    footprint = np.asarray(footprint, dtype=bool)
    if image.shape[-2:] != footprint.shape:
        raise ValueError(f"Image {image.shape} and footprint {footprint.shape} cut-outs differ in shape.")
    peaks = np.asarray(peaks, dtype=np.float64).reshape(-1, 2)
    if len(peaks) == 0:
        raise ValueError("A parent with no peak to deblend.")
    needs_noise = config.fit_steps > 0 or config.refine_steps > 0 or getattr(model, "conditioned", False)
    children, parents = deblend_field(image, peaks, model, stamp_size, parents=np.ones(len(peaks), np.int64),
                                      footprints=footprint.astype(np.int32), bad=bad, config=config,
                                      variance=(median_variance(variance, bad)
                                                if variance is not None and needs_noise else None), psf=psf)
    parent = parents[0]
    chi2, child_chi2 = _chi2(image, footprint, children, variance, bad)
    dx, dy = xy0
    x0, y0, x1, y1 = parent.bbox
    parent = dataclasses.replace(parent, bbox=(x0 + dx, y0 + dy, x1 + dx, y1 + dy))
    return BlendResult(children=[_moved(c, dx, dy) for c in children], parent=parent, chi2=chi2,
                       child_chi2=child_chi2)


def _chi2(image: np.ndarray, footprint: np.ndarray, children: list[Child], variance: np.ndarray | None,
          bad: np.ndarray | None) -> tuple[float, np.ndarray]:
    n = len(children)
    if variance is None:
        return math.nan, np.full(n, np.nan)
    total = np.zeros(image.shape, dtype=np.float64)
    for child in children:
        add_at(total, np.clip(child.model, 0, None), child.origin)  # any size (a binned child's is wider)
    good = footprint[None] & np.isfinite(variance) & (variance > 0) & np.isfinite(image)
    if bad is not None:
        good &= ~bad[None]
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2_image = np.where(good, (image - total) ** 2 / np.where(good, variance, 1.0), 0.0)
    n_good = int(good.sum())
    chi2 = float(chi2_image.sum() / n_good) if n_good else math.nan
    per_child = np.full(n, np.nan)
    for i, child in enumerate(children):
        in_image, in_stamp = overlap_slices(image.shape[-2:], child.model.shape[-2:], *child.origin)
        area = np.count_nonzero(child.model[:, in_stamp[0], in_stamp[1]] > 0)
        if area > 0:
            per_child[i] = float(chi2_image[:, in_image[0], in_image[1]].sum() / area)
    return chi2, per_child


def touches_edge(child: Child, bbox: tuple[int, int, int, int]) -> bool:
    """Whether a child's stamp leaves the image or its model has flux on the border of ``bbox``.

    ``bbox`` is the parent's (x0, y0, x1, y1) in the child's frame; flux on its border means the
    footprint probably cut the galaxy (scarlet's ``deblend_edgePixels``).
    """
    if child.edge:
        return True
    x0, y0, x1, y1 = bbox
    size = child.model.shape[-1]
    ox, oy = child.origin
    light = np.clip(child.model, 0, None).sum(axis=0)
    for x in (x0, x1 - 1):
        if ox <= x < ox + size and light[max(y0 - oy, 0):max(min(y1 - oy, size), 0), x - ox].any():
            return True
    for y in (y0, y1 - 1):
        if oy <= y < oy + size and light[y - oy, max(x0 - ox, 0):max(min(x1 - ox, size), 0)].any():
            return True
    return False


def masked_fraction(footprint: np.ndarray, masked: np.ndarray) -> float:
    """Fraction of the footprint's pixels that are set in ``masked`` (both 2-d, same shape)."""
    area = int(np.count_nonzero(footprint))
    return float(np.count_nonzero(footprint & masked)) / area if area else 0.0


def electrons_per_nanojansky(bands) -> np.ndarray:
    """Electrons of the training survey per nJy, for each band.

    The shipped weights were trained on simulated images in electrons at full survey depth; a source of
    AB magnitude ``m`` gave ``10**(-0.4 (m - zp_b))`` electrons, ``zp_b`` the band's
    `~lsst.meas.extensions.vae.surveys.Band.magnitude_zeropoint`.  One nJy is AB magnitude 31.4, so the
    factor is ``10**(0.4 (zp_b - 31.4))``.

    Parameters
    ----------
    bands : iterable of `str`
        Band names known to `~lsst.meas.extensions.vae.surveys` (LSST ugrizy, Euclid VIS Y J H).
    """
    from ...surveys import get_survey  # GalSim and surveycodex: loaded only when asked

    survey = get_survey("lsst+euclid")
    return np.array([10.0 ** (0.4 * (survey.band(b).magnitude_zeropoint - NANOJANSKY_AB_ZEROPOINT))
                     for b in bands])

"""The VAE models in the layout of scarlet's persisted model data, as plain dicts of numpy arrays.

Downstream measurement (``lsst.meas.extensions.scarlet.io.updateCatalogFootprints``) rebuilds every
child's HeavyFootprint from ``LsstScarletModelData``.  This module builds the content of that object
without importing scarlet, so that it can be tested anywhere; the Rubin task wraps the dicts into the
``lsst.scarlet.lite.io`` classes (`VaeDeblendCoaddTask`, ``toScarletBlendData``) with the same names:

- model metadata (`model_metadata`): ``bands`` (the order of the models' first axis), ``model_psf``
  (2-d) and ``psf`` (bands x h x w).  Downstream re-convolves each model from ``model_psf`` to
  ``psf[band]`` with the Fourier ratio of the two; VAE models are already at the observed seeing, so
  both are the same small odd delta kernel and the matching kernel is a delta (a no-op).
- one hierarchical blend per parent (`export_blend`)::

      {"children": {blend_id: {"origin": (y0, x0), "shape": (h, w),
                               "sources": {child_id: {"components": [component, ...],
                                                      "metadata": {"id": child_id, "peak_id": peak_id}}}}},
       "metadata": {"spans": footprint mask (h, w), "origin": (y0, x0)}}

  with the parent's bounding box as the blend's box, and one factorized component per band::

      {"origin": (y, x), "peak": (y, x), "spectrum": one-hot (bands,), "morph": model[band] (h', w')}

  a one-hot spectrum and ``morph = model[band]`` reproduce any per-band model exactly through the
  factorized-component reader (the cube-component type does not read back under its stored name).

All origins, shapes and peaks are (y, x), in the coadd's pixel frame; all models are float32.
"""

from __future__ import annotations

__all__ = ["PSF_SIZE", "delta_psf", "model_metadata", "crop_model", "trim_morph", "export_blend"]

from collections.abc import Sequence

import numpy as np

from ...deblend.field import Child

#: Side of the delta kernels stored as ``model_psf`` and ``psf``.
PSF_SIZE = 5


def delta_psf(size: int = PSF_SIZE) -> np.ndarray:
    """A ``size`` x ``size`` float32 image, 1 at the centre and 0 elsewhere (``size`` odd)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"The delta kernel needs an odd size, got {size}.")
    psf = np.zeros((size, size), dtype=np.float32)
    psf[size // 2, size // 2] = 1.0
    return psf


def model_metadata(bands: Sequence[str], psf_size: int = PSF_SIZE) -> dict:
    """The ``metadata`` of the model data: bands, and identical delta kernels as model and band PSFs."""
    psf = delta_psf(psf_size)
    return {"bands": tuple(bands), "model_psf": psf, "psf": np.repeat(psf[None], len(bands), axis=0)}


def crop_model(model: np.ndarray, origin: tuple[int, int], bbox: tuple[int, int, int, int]
               ) -> tuple[np.ndarray, tuple[int, int]]:
    """The part of a stamp model inside a box.

    Parameters
    ----------
    model : `numpy.ndarray` (bands, s, s)
        The model stamp.
    origin : `tuple` [`int`, `int`]
        (x, y) of the stamp's first pixel.
    bbox : `tuple` [`int`, `int`, `int`, `int`]
        (x0, y0, x1, y1), upper bounds exclusive, in the same frame.

    Returns
    -------
    cropped : `numpy.ndarray` (bands, h, w)
        A copy; a single zero pixel at the box pixel nearest the stamp if they do not overlap.
    origin : `tuple` [`int`, `int`]
        (x, y) of ``cropped``'s first pixel.
    """
    ox, oy = origin
    x0, y0, x1, y1 = bbox
    xs, xe = max(ox, x0), min(ox + model.shape[-1], x1)
    ys, ye = max(oy, y0), min(oy + model.shape[-2], y1)
    if xs >= xe or ys >= ye:
        x = min(max(ox, x0), x1 - 1)
        y = min(max(oy, y0), y1 - 1)
        return np.zeros(model.shape[:-2] + (1, 1), dtype=np.float32), (x, y)
    return np.array(model[..., ys - oy:ye - oy, xs - ox:xe - ox], dtype=np.float32), (xs, ys)


def trim_morph(morph: np.ndarray, origin: tuple[int, int], floor: float,
               peak: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Zero the pixels of a 2-d model below ``floor`` and crop it to the box of what is left.

    Parameters
    ----------
    morph : `numpy.ndarray` (h, w)
    origin : `tuple` [`int`, `int`]
        (x, y) of ``morph``'s first pixel.
    floor : `float`
        Pixels ``< floor`` become 0 (``floor <= 0`` keeps the model whole).
    peak : `tuple` [`int`, `int`]
        (x, y) where a model with nothing left is put as a single zero pixel (clipped into the box).

    Returns
    -------
    morph : `numpy.ndarray` (h', w'), float32
    origin : `tuple` [`int`, `int`]
    """
    morph = np.asarray(morph, dtype=np.float32)
    if floor <= 0:
        return morph, origin
    kept = morph >= floor
    if not kept.any():
        x = min(max(peak[0], origin[0]), origin[0] + morph.shape[1] - 1)
        y = min(max(peak[1], origin[1]), origin[1] + morph.shape[0] - 1)
        return np.zeros((1, 1), dtype=np.float32), (x, y)
    rows, cols = np.flatnonzero(kept.any(axis=1)), np.flatnonzero(kept.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    trimmed = np.where(kept, morph, 0.0).astype(np.float32)[r0:r1, c0:c1]
    return trimmed, (origin[0] + int(c0), origin[1] + int(r0))


def export_blend(children: Sequence[Child], bbox: tuple[int, int, int, int], spans: np.ndarray,
                 child_ids: Sequence[int], peak_ids: Sequence[int], *, blend_id: int,
                 peaks: np.ndarray | None = None, xy0: tuple[int, int] = (0, 0),
                 scale: np.ndarray | None = None, images: np.ndarray | None = None,
                 band_index: Sequence[int] | None = None, floor: Sequence[float] | None = None) -> dict:
    """One parent's children in the layout of a scarlet hierarchical blend (see the module docstring).

    Parameters
    ----------
    children : sequence of `Child`
        The core's children of this parent (`deblend_field` or `deblend_blend` output).
    bbox : `tuple` [`int`, `int`, `int`, `int`]
        The parent footprint's bounding box (x0, y0, x1, y1), exclusive upper bounds, in the children's
        frame.
    spans : `numpy.ndarray` (y1 - y0, x1 - x0) of `bool`
        The parent footprint over ``bbox``.
    child_ids, peak_ids : sequence of `int`
        Catalogue id of each child's record and id of its detection peak.
    blend_id : `int`
        Key of the single child blend (the parent's id: the VAE does not split parents).
    peaks : `numpy.ndarray` (n, 2) of `int`, optional
        (x, y) of the detection peaks in the children's frame; by default the rounded ``Child.peak``.
    xy0 : `tuple` [`int`, `int`]
        Added to every position: the children's frame -> the coadd's pixel frame.
    scale : `numpy.ndarray` (bands,), optional
        The network's units per image unit; models are divided by it (back to image units).
    images : `numpy.ndarray` (n, bands, y1 - y0, x1 - x0), optional
        Per-child images over ``bbox`` to store instead of the models (e.g. the flux-conserved children
        of `Parent.conserved`), in the same units as the models.
    band_index : sequence of `int`, optional
        Which of the models' bands to store, in order (default all).
    floor : sequence of `float`, optional
        Per stored band, in stored units: model pixels below it are set to 0 and each band's component is
        cropped to what is left (`trim_morph`); not applied to ``images``.  Downstream footprints are the
        non-zero pixels of the models, so this also sets how far they reach.

    Returns
    -------
    blend : `dict`
        ``{"children": {blend_id: {...}}, "metadata": {"spans": ..., "origin": ...}}``.
    """
    x0, y0, x1, y1 = (int(v) for v in bbox)
    spans = np.asarray(spans, dtype=bool)
    if spans.shape != (y1 - y0, x1 - x0):
        raise ValueError(f"Footprint mask of shape {spans.shape} does not cover the box {bbox}.")
    if not len(children) == len(child_ids) == len(peak_ids):
        raise ValueError("One child id and one peak id are needed per child.")
    dx, dy = (int(v) for v in xy0)
    n_bands = children[0].model.shape[0] if children else 0
    bands = list(range(n_bands)) if band_index is None else [int(b) for b in band_index]
    sources = {}
    for k, child in enumerate(children):
        if images is not None:
            model, (mx, my) = np.asarray(images[k], dtype=np.float32), (x0, y0)
        else:
            model, (mx, my) = crop_model(np.clip(child.model, 0, None), child.origin, (x0, y0, x1, y1))
        if scale is not None:
            model = (model / np.asarray(scale, dtype=np.float64)[:, None, None]).astype(np.float32)
        px, py = (np.rint(child.peak).astype(int) if peaks is None else np.asarray(peaks[k], dtype=int))
        components = []
        for slot, b in enumerate(bands):
            spectrum = np.zeros(len(bands), dtype=np.float32)
            spectrum[slot] = 1.0
            morph, (cx, cy) = model[b], (mx, my)
            if floor is not None and images is None:
                morph, (cx, cy) = trim_morph(morph, (mx, my), float(floor[slot]), (int(px), int(py)))
            components.append({"origin": (cy + dy, cx + dx), "peak": (int(py) + dy, int(px) + dx),
                               "spectrum": spectrum, "morph": np.ascontiguousarray(morph)})
        child_id = int(child_ids[k])
        sources[child_id] = {"components": components,
                             "metadata": {"id": child_id, "peak_id": int(peak_ids[k])}}
    blend = {"origin": (y0 + dy, x0 + dx), "shape": (y1 - y0, x1 - x0), "sources": sources}
    return {"children": {int(blend_id): blend}, "metadata": {"spans": spans, "origin": (y0 + dy, x0 + dx)}}

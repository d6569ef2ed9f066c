"""The model data in the classes of the installed scarlet io, whichever release it is.

`export_blend` (module ``modelData``) gives each parent's children as plain dicts; the functions here wrap
them into ``lsst.scarlet.lite.io`` and ``lsst.meas.extensions.scarlet.io`` classes, choosing by what is
importable:

- meas_extensions_scarlet with model data schema 1.0.3 on (``LsstScarletModelData(bands=, model_psf=,
  psf=)``, ``lsst.scarlet.lite.ImagePsf``): typed model-level fields;
- schema 1.0.2 on: top-level blends are ``LsstHierarchicalBlendData`` (its ``updateCatalogFootprints``
  reads nothing else), else scarlet_lite's ``HierarchicalBlendData`` with the footprint in ``metadata``;
- earlier releases (b538e17): ``bands``, ``model_psf`` and ``psf`` as arrays in ``metadata``.

This module needs no afw by itself: scarlet's io is imported when a function is called.
"""

from __future__ import annotations

__all__ = ["scarletIo", "typedModelData", "toScarletBlendData", "makeModelData", "modelPsfArrays"]

import importlib
import inspect
from collections.abc import Sequence

import numpy as np

from .modelData import delta_psf, model_metadata


def scarletIo():
    """``lsst.scarlet.lite`` and ``lsst.meas.extensions.scarlet.io``, imported on first use."""
    return (importlib.import_module("lsst.scarlet.lite"),
            importlib.import_module("lsst.meas.extensions.scarlet.io"))


def typedModelData() -> bool:
    """Whether the model data takes typed ``bands``, ``model_psf`` and ``psf`` (schema 1.0.3 on).

    Older meas_extensions_scarlet releases read the three from ``metadata`` as arrays.
    """
    scl, io = scarletIo()
    return (hasattr(scl, "ImagePsf")
            and {"bands", "model_psf", "psf"} <= set(inspect.signature(io.LsstScarletModelData).parameters))


def toScarletBlendData(blend: dict):
    """Wrap `~lsst.meas.extensions.vae.pipe.rubin.modelData.export_blend` output into scarlet's classes.

    Returns
    -------
    blend : ``LsstHierarchicalBlendData`` or ``lsst.scarlet.lite.io.HierarchicalBlendData``
        The first where meas_extensions_scarlet has it (its ``updateCatalogFootprints`` reads nothing
        else), the second for earlier releases, with the parent footprint in its ``metadata``.
    """
    scl, io = scarletIo()
    children = {}
    for blendId, child in blend["children"].items():
        sources = {}
        for sourceId, source in child["sources"].items():
            components = [
                scl.io.ScarletFactorizedComponentData(origin=tuple(c["origin"]), peak=tuple(c["peak"]),
                                                      spectrum=c["spectrum"], morph=c["morph"])
                for c in source["components"]
            ]
            sources[sourceId] = scl.io.ScarletSourceData(components=components,
                                                         metadata=dict(source["metadata"]))
        children[blendId] = scl.io.ScarletBlendData(origin=tuple(child["origin"]),
                                                    shape=tuple(child["shape"]), sources=sources)
    spans = np.asarray(blend["metadata"]["spans"], dtype=bool)
    origin = tuple(int(v) for v in blend["metadata"]["origin"])
    if hasattr(io, "LsstHierarchicalBlendData"):
        return io.LsstHierarchicalBlendData(children=children, span_array=spans, origin=origin)
    return scl.io.HierarchicalBlendData(children=children, metadata={"spans": spans, "origin": origin})


def makeModelData(bands: Sequence[str]):
    """An empty ``LsstScarletModelData`` whose PSFs make downstream re-convolution a no-op.

    The VAE models are at the observed seeing: the model PSF and every band's PSF are the same delta
    kernel, so the matching kernel downstream is a delta.  With schema 1.0.3 on they are typed
    ``lsst.scarlet.lite.ImagePsf`` objects (the model PSF band-less, ``(1, h, w)``); before, arrays in
    ``metadata``.
    """
    scl, io = scarletIo()
    if typedModelData():
        psf = delta_psf()
        return io.LsstScarletModelData(
            bands=tuple(bands),
            model_psf=scl.ImagePsf(psf[None], bands=()),
            psf=scl.ImagePsf(np.repeat(psf[None], len(bands), axis=0), bands=tuple(bands)),
        )
    return io.LsstScarletModelData(metadata=model_metadata(bands))


def modelPsfArrays(modelData) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The model PSF (2-d), the observed PSFs (bands, h, w) and the bands of a model data, either schema."""
    if getattr(modelData, "psf", None) is not None and getattr(modelData, "bands", None) is not None:
        modelPsf = np.asarray(modelData.model_psf.data)
        return modelPsf.reshape(modelPsf.shape[-2:]), np.asarray(modelData.psf.data), tuple(modelData.bands)
    metadata = modelData.metadata
    return np.asarray(metadata["model_psf"]), np.asarray(metadata["psf"]), tuple(metadata["bands"])

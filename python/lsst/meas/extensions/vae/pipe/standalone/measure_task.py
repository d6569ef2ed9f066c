"""``measureObjectUnforced``: fluxes, magnitudes and shapes of the deblended objects (standalone).

For every object of ``object_deblend`` the child's pixels are rebuilt from the model data: with
``doConserveFlux``, the observed flux of its parent's footprint is re-distributed among the parent's
children in proportion to their models (the core's `conserve_flux`), as DRP's measurement does
with ``updateCatalogFootprints(..., imageForRedistribution=...)``; otherwise the model itself is the
child.  An isolated source kept without a model is its footprint's pixels.  Non-finite pixels count as
zero, as in the deblender.

Per band: ``{band}_flux`` (re-distributed pixels, electrons) and its error from the variance,
``{band}_modelFlux`` (sum of the model), and the AB magnitudes ``{band}_mag``, ``{band}_magErr``,
``{band}_modelMag`` from the coadd's zero point.  In ``shapeBand`` (r): the HSM adaptive-moments reduced
shear, size and centroid of the re-distributed pixels (``{band}_hsm_*``) and of the noiseless model
(``{band}_hsmModel_*``).

Unlike DRP's per-band task, one quantum measures all bands of a patch (dimensions tract, patch, skymap).
"""

from __future__ import annotations

__all__ = ["MeasureObjectUnforcedConnections", "MeasureObjectUnforcedConfig", "MeasureObjectUnforcedTask"]

from typing import Any

import numpy as np
from astropy.table import Table
from lsst.pex.config import Field
from lsst.pipe.base import (InputQuantizedConnection, OutputQuantizedConnection, PipelineTask,
                            PipelineTaskConfig, PipelineTaskConnections, QuantumContext, Struct)
from lsst.pipe.base import connectionTypes as cT
from lsst.utils.timer import timeMethod

from ...deblend.field import conserve_flux_shares
from ...measure.photometry import flux_to_mag
from ...measure.shape import hsm_shape
from .coadd import Coadd
from .detect_task import BAND_DIMENSIONS, PATCH_DIMENSIONS
from .models import BlendModel, VaeModelData

_SHAPE_FIELDS = ("g1", "g2", "sigma", "x", "y")


class MeasureObjectUnforcedConnections(PipelineTaskConnections, dimensions=PATCH_DIMENSIONS):
    coadds = cT.Input(
        doc="Coadd of each band of the patch.",
        name="deep_coadd",
        storageClass="VaeCoadd",
        dimensions=BAND_DIMENSIONS,
        multiple=True,
    )
    inputCatalog = cT.Input(
        doc="Deblended children and isolated sources.",
        name="object_deblend",
        storageClass="ArrowAstropy",
        dimensions=PATCH_DIMENSIONS,
    )
    vaeModelData = cT.Input(
        doc="Per-band models of the children, by parent.",
        name="object_vae_models",
        storageClass="VaeModelData",
        dimensions=PATCH_DIMENSIONS,
    )
    outputCatalog = cT.Output(
        doc="Per-band fluxes and magnitudes and the HSM shape of every object.",
        name="object_unforced_measurement",
        storageClass="ArrowAstropy",
        dimensions=PATCH_DIMENSIONS,
    )


class MeasureObjectUnforcedConfig(PipelineTaskConfig, pipelineConnections=MeasureObjectUnforcedConnections):
    doConserveFlux = Field[bool](
        doc="Measure each child on its share of the observed pixels (models otherwise).", default=True)
    shapeBand = Field[str](doc="Band of the HSM shapes.", default="r")


class MeasureObjectUnforcedTask(PipelineTask):
    """Measure the deblended objects of a patch on pixels rebuilt from the VAE models."""

    ConfigClass = MeasureObjectUnforcedConfig
    _DefaultName = "measureObjectUnforced"
    config: MeasureObjectUnforcedConfig

    def runQuantum(self, butlerQC: QuantumContext, inputRefs: InputQuantizedConnection,
                   outputRefs: OutputQuantizedConnection) -> None:
        inputs = butlerQC.get(inputRefs)
        outputs = self.run(**inputs)
        butlerQC.put(outputs, outputRefs)

    @timeMethod
    def run(self, coadds: list[Coadd], inputCatalog: Table, vaeModelData: VaeModelData) -> Struct:
        """Measure every object.

        Parameters
        ----------
        coadds : `list` [`Coadd`]
            At least the models' bands, on one pixel grid.
        inputCatalog : `astropy.table.Table`
            ``object_deblend``.
        vaeModelData : `VaeModelData`

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``outputCatalog`` (`astropy.table.Table`), one row per object, in the input order.
        """
        bands = vaeModelData.bands
        by_band = {c.band: c for c in coadds}
        if self.config.shapeBand not in bands:
            raise ValueError(f"shapeBand {self.config.shapeBand!r} is not one of the models' bands {bands}.")
        present = [b for b in bands if b in by_band]
        if not present:
            raise ValueError(f"The models are in bands {''.join(bands)}; the quantum has none of them.")
        missing = [b for b in bands if b not in by_band]
        if missing:
            self.log.warning("The patch has no %s coadd: its fluxes are NaN, with %s.", "".join(missing),
                             ", ".join(f"{b}_flag_noData" for b in missing))
        shape = by_band[present[0]].image.shape
        image = np.stack([by_band[b].image if b in by_band else np.zeros(shape, np.float32) for b in bands])
        variance = np.stack([by_band[b].variance if b in by_band else np.zeros(shape, np.float32)
                             for b in bands])
        # Pixels without a finite value and a positive variance count as zero, as in the deblender (its
        # children then carry deblend_masked).
        usable = np.isfinite(image) & np.isfinite(variance) & (variance > 0)
        if not usable.all():
            image = np.where(usable, image, 0.0).astype(np.float32)
            variance = np.where(usable, variance, 0.0).astype(np.float32)
        zeropoint = np.array([by_band[b].zeropoint if b in by_band else np.nan for b in bands])
        xy0 = by_band[present[0]].xy0
        s = bands.index(self.config.shapeBand)

        index = {int(object_id): k for k, object_id in enumerate(inputCatalog["id"])}
        n = len(inputCatalog)
        flux = np.full((n, len(bands)), np.nan)
        flux_err = np.full((n, len(bands)), np.nan)
        model_flux = np.full((n, len(bands)), np.nan)
        shape = np.full((n, len(_SHAPE_FIELDS)), np.nan)
        shape_model = np.full((n, len(_SHAPE_FIELDS)), np.nan)
        seen = np.zeros(n, dtype=bool)
        for parent_id, blend in vaeModelData.blends.items():
            for object_id, pixels, origin, weights, child in self._children(blend, image, xy0):
                k = index.get(object_id)
                if k is None:
                    raise KeyError(f"Object {object_id} of parent {parent_id} is in the models but not in "
                                   "the catalogue.")
                seen[k] = True
                flux[k] = pixels.sum(axis=(1, 2), dtype=np.float64)
                x0, y0 = origin[0] - xy0[0], origin[1] - xy0[1]
                if weights is not None:
                    var = variance[:, y0: y0 + pixels.shape[1], x0: x0 + pixels.shape[2]]
                    flux_err[k] = np.sqrt(np.sum(weights**2 * var, axis=(1, 2), dtype=np.float64))
                if child is not None:
                    peak = child.peak
                else:
                    peak = (float(inputCatalog["deblend_peak_center_x"][k]),
                            float(inputCatalog["deblend_peak_center_y"][k]))
                shape[k] = self._shape(pixels[s], (peak[0] - origin[0], peak[1] - origin[1]), origin)
                if child is not None:
                    model_flux[k] = child.model.sum(axis=(1, 2), dtype=np.float64)
                    shape_model[k] = self._shape(child.model[s],
                                                 (peak[0] - child.origin[0], peak[1] - child.origin[1]),
                                                 child.origin)
        if not seen.all():
            raise KeyError(f"{int((~seen).sum())} objects have no model data, e.g. "
                           f"{int(inputCatalog['id'][np.flatnonzero(~seen)[0]])}.")

        out = Table()
        for name in ("id", "parent", "deblend_peak_center_x", "deblend_peak_center_y", "deblend_nChild",
                     "deblend_parentNPeaks", "deblend_modelled"):
            if name in inputCatalog.colnames:
                out[name] = inputCatalog[name]
        for band in missing:  # no measurement where there is no coadd
            b = bands.index(band)
            flux[:, b] = flux_err[:, b] = model_flux[:, b] = np.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            mag_err = 2.5 / np.log(10.0) * flux_err / flux
        for b, band in enumerate(bands):
            out[f"{band}_flag_noData"] = np.full(n, band in missing)
            out[f"{band}_flux"] = flux[:, b]
            out[f"{band}_fluxErr"] = flux_err[:, b]
            out[f"{band}_modelFlux"] = model_flux[:, b]
            out[f"{band}_mag"] = flux_to_mag(flux[:, b], zeropoint[b])
            out[f"{band}_magErr"] = np.where(flux[:, b] > 0, mag_err[:, b], np.nan)
            out[f"{band}_modelMag"] = flux_to_mag(model_flux[:, b], zeropoint[b])
        band = self.config.shapeBand
        for f, field in enumerate(_SHAPE_FIELDS):
            out[f"{band}_hsm_{field}"] = shape[:, f]
        out[f"{band}_hsm_flag"] = ~np.isfinite(shape[:, 0])
        for f, field in enumerate(_SHAPE_FIELDS):
            out[f"{band}_hsmModel_{field}"] = shape_model[:, f]
        out[f"{band}_hsmModel_flag"] = ~np.isfinite(shape_model[:, 0])
        self.log.info("Measured %d objects in %d bands (%s re-distributed pixels).", n, len(bands),
                      "on" if self.config.doConserveFlux else "not on")
        return Struct(outputCatalog=out)

    def _children(self, blend: BlendModel, image: np.ndarray, xy0: tuple[int, int]
                  ) -> list[tuple[int, np.ndarray, tuple[int, int], np.ndarray | None, Any]]:
        """(object id, pixels, their lower-left (x, y) in patch pixels, per-pixel weight of the observed
        image or `None` for model pixels, child model or `None`) of every object of a blend.

        A child's re-distributed pixels cover its own box (its model's and the footprint pixels given to
        it), not the whole blend's, so that a parent of many children stays cheap.
        """
        x0, y0, x1, y1 = (blend.bbox[0] - xy0[0], blend.bbox[1] - xy0[1], blend.bbox[2] - xy0[0],
                          blend.bbox[3] - xy0[1])
        observed = image[:, y0:y1, x0:x1] * blend.footprint
        if not blend.children:  # an isolated source kept as observed
            inside = np.broadcast_to(blend.footprint, observed.shape).astype(np.float32)
            return [(blend.parent_id, observed, (blend.bbox[0], blend.bbox[1]), inside, None)]
        if not self.config.doConserveFlux:
            return [(child.id, child.model, child.origin, None, child) for child in blend.children]
        origins = [(c.origin[0] - blend.bbox[0], c.origin[1] - blend.bbox[1]) for c in blend.children]
        peaks = np.array([(c.peak[0] - blend.bbox[0], c.peak[1] - blend.bbox[1]) for c in blend.children])
        shares = conserve_flux_shares(observed, blend.footprint, [c.model for c in blend.children],
                                      np.array(origins), peaks)
        out = []
        for child, ((sx, sy), share) in zip(blend.children, shares):
            under = observed[:, sy: sy + share.shape[1], sx: sx + share.shape[2]]
            with np.errstate(divide="ignore", invalid="ignore"):
                weight = np.where(under != 0, share / under, 0.0)
            out.append((child.id, share, (blend.bbox[0] + sx, blend.bbox[1] + sy), weight, child))
        return out

    @staticmethod
    def _shape(image: np.ndarray, center: tuple[float, float], origin: tuple[int, int]) -> np.ndarray:
        """HSM (g1, g2, sigma, x, y) of a 2-d image, x and y in patch pixels; NaN when HSM fails."""
        result = hsm_shape(image, center=center)
        if result.failed:
            return np.full(len(_SHAPE_FIELDS), np.nan)
        return np.array([result.g1, result.g2, result.sigma, result.x + origin[0], result.y + origin[1]])

"""The VAE deblender as a drop-in replacement of DRP's ``DeblendCoaddSourcesMultiTask``.

This is the only module of the package that imports afw, meas_base and scarlet: it is loaded by the
Rubin stack alone (``lsst.meas.extensions.vae.VaeDeblendCoaddTask`` resolves to it lazily).  The task
reads the same datasets as the scarlet deblending step of DRP and writes the same three outputs:

- ``deblendedCatalog``: isolated sources (id and footprint of their parent, ``parent = 0``) and
  deblended children (new ids, ``parent`` set, no footprint), sorted by id;
- ``scarletModelData``: an ``LsstScarletModelData`` holding every child's VAE model as scarlet
  factorized components, from which ``lsst.meas.extensions.scarlet.io.updateCatalogFootprints`` rebuilds
  the HeavyFootprints in measurement;
- ``objectParents``: every input parent with its deblending flags.

Each parent is cut out of the coadds, converted to arrays and handed to the array core
(`~lsst.meas.extensions.vae.pipe.rubin.blends.deblend_blend`); the results come back as records and model
data.  The afw <-> array conversions are the small functions at the top of this module.
"""

from __future__ import annotations

__all__ = ["VaeDeblendCoaddConnections", "VaeDeblendCoaddConfig", "VaeDeblendCoaddTask",
           "footprintToArrays", "footprintsToLabelImage", "coaddCutout"]

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

import lsst.afw.detection as afwDet
import lsst.afw.geom.ellipses as afwEll
import lsst.afw.image as afwImage
import lsst.afw.table as afwTable
import lsst.geom as geom
import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.meas.base import SkyMapIdGeneratorConfig
from lsst.meas.extensions.scarlet import ScarletDeblendConfig
from lsst.meas.extensions.scarlet.io import IsolatedSourceData
from lsst.utils.logging import PeriodicLogger
from lsst.utils.timer import timeMethod

from ...deblend.field import DeblendConfig
from ...deblend.psf import stack_psf_images
from ...deblend.skip import skip_reason
from .blends import blend_box, deblend_blend, electrons_per_nanojansky, stamp_margin, touches_edge
from .modelData import export_blend
from .scarletData import makeModelData, toScarletBlendData
from .vaeConfig import VaeDeblendConfig


# Size of the deblend_error string column (as in scarlet's schema).
ERROR_SIZE = 25
# scarlet's columnInheritance default (deprecated upstream after v30: used when the field is gone).
COLUMN_INHERITANCE = {"deblend_nChild": "deblend_parentNChild", "deblend_nPeaks": "deblend_parentNPeaks"}


# ---------------------------------------------------------------------------------------------------------
# afw <-> arrays
# ---------------------------------------------------------------------------------------------------------

def footprintToArrays(footprint: afwDet.Footprint, xy0: tuple[int, int] = (0, 0)
                      ) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray, list[int]]:
    """A Footprint as arrays.

    Parameters
    ----------
    footprint : `lsst.afw.detection.Footprint`
    xy0 : `tuple` [`int`, `int`]
        Subtracted from every position (the image's origin, to get array indices).

    Returns
    -------
    bbox : `tuple` [`int`, `int`, `int`, `int`]
        (x0, y0, x1, y1) of the footprint's bounding box, upper bounds exclusive.
    spans : `numpy.ndarray` (y1 - y0, x1 - x0) of `bool`
        The footprint's pixels in its bounding box.
    peaks : `numpy.ndarray` (n, 2) of `int`
        (x, y) of its peaks.
    peakIds : `list` [`int`]
    """
    box = footprint.getBBox()
    x0, y0 = box.getMinX() - xy0[0], box.getMinY() - xy0[1]
    bbox = (x0, y0, x0 + box.getWidth(), y0 + box.getHeight())
    peaks = np.array([(p.getIx() - xy0[0], p.getIy() - xy0[1]) for p in footprint.peaks], dtype=np.int64)
    return bbox, footprint.spans.asArray(), peaks.reshape(-1, 2), [int(p.getId()) for p in footprint.peaks]


def footprintsToLabelImage(catalog: afwTable.SourceCatalog, bbox) -> np.ndarray:
    """Label image of a catalogue's footprints: pixel value k + 1 for the k-th record, 0 for none.

    Later records overwrite earlier ones where footprints overlap; pixels outside ``bbox`` (an
    `lsst.geom.Box2I`) are dropped.
    """
    height, width = bbox.getHeight(), bbox.getWidth()
    labels = np.zeros((height, width), dtype=np.int32)
    for k, record in enumerate(catalog):
        ys, xs = record.getFootprint().spans.shiftedBy(-bbox.getMinX(), -bbox.getMinY()).indices()
        keep = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        labels[ys[keep], xs[keep]] = k + 1
    return labels


def coaddCutout(exposures: Sequence[afwImage.Exposure | None], box: tuple[int, int, int, int],
                badMask: Sequence[str], scale: np.ndarray, maskPlanes: Sequence[str] = ()
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Arrays of the coadds over a box, in the network's band order and units.

    Parameters
    ----------
    exposures : sequence of `lsst.afw.image.Exposure` or `None`
        One per network band; `None` for a band without a coadd (zeros, not bad).
    box : `tuple` [`int`, `int`, `int`, `int`]
        (x0, y0, x1, y1) in array indices of the exposures.
    badMask : sequence of `str`
        Mask planes hidden from the network (any band); planes a mask lacks are ignored.
    scale : `numpy.ndarray` (bands,)
        Network units per image unit.
    maskPlanes : sequence of `str`
        Planes to return separately (any band), e.g. for the masked-fraction limits.

    Returns
    -------
    image : `numpy.ndarray` (bands, h, w), float32
        Non-finite pixels set to 0.
    variance : `numpy.ndarray` (bands, h, w), float32
    bad : `numpy.ndarray` (h, w) of `bool`
        Bad mask planes set or a non-finite image or variance value, in any band.
    planes : `dict` [`str`, `numpy.ndarray`]
        ``maskPlanes`` as (h, w) boolean arrays.
    """
    x0, y0, x1, y1 = box
    rows, cols = slice(y0, y1), slice(x0, x1)
    shape = (len(exposures), y1 - y0, x1 - x0)
    image = np.zeros(shape, dtype=np.float32)
    variance = np.zeros(shape, dtype=np.float32)
    bad = np.zeros(shape[1:], dtype=bool)
    planes = {name: np.zeros(shape[1:], dtype=bool) for name in maskPlanes}
    for b, exposure in enumerate(exposures):
        if exposure is None:
            continue
        mask = exposure.mask
        known = mask.getMaskPlaneDict()
        pixels = exposure.image.array[rows, cols]
        var = exposure.variance.array[rows, cols]
        bits = mask.array[rows, cols]
        badPlanes = [p for p in badMask if p in known]
        badBits = mask.getPlaneBitMask(badPlanes) if badPlanes else 0
        finite = np.isfinite(pixels) & np.isfinite(var)
        bad |= (bits & badBits) != 0
        bad |= ~finite
        image[b] = np.where(finite, pixels * scale[b], 0.0)
        variance[b] = np.where(finite, var * scale[b] ** 2, 0.0)
        for name in maskPlanes:
            if name in known:
                planes[name] |= (bits & mask.getPlaneBitMask(name)) != 0
    return image, variance, bad, planes


# ---------------------------------------------------------------------------------------------------------
# Connections and configuration (those of DeblendCoaddSourcesMultiTask, without the deconvolved coadds)
# ---------------------------------------------------------------------------------------------------------

class VaeDeblendCoaddConnections(pipeBase.PipelineTaskConnections,
                                 dimensions=("tract", "patch", "skymap"),
                                 defaultTemplates={"inputCoaddName": "deep", "outputCoaddName": "deep"}):
    inputSchema = cT.InitInput(
        doc="Schema of the merged detection catalog",
        name="{inputCoaddName}Coadd_mergeDet_schema",
        storageClass="SourceCatalog",
    )
    peakSchema = cT.InitInput(
        doc="Schema of the footprint peak catalogs",
        name="{inputCoaddName}Coadd_peak_schema",
        storageClass="PeakCatalog",
    )
    mergedDetections = cT.Input(
        doc="Detection catalog merged across bands: the parents, with footprints and peaks",
        name="{inputCoaddName}Coadd_mergeDet",
        storageClass="SourceCatalog",
        dimensions=("tract", "patch", "skymap"),
    )
    coadds = cT.Input(
        doc="Coadds to deblend, one per band",
        name="{inputCoaddName}Coadd_calexp",
        storageClass="ExposureF",
        multiple=True,
        dimensions=("tract", "patch", "band", "skymap"),
    )
    coadds_cell = cT.Input(
        doc="Cell-based coadds to deblend, one per band (stitched, background subtracted)",
        name="{inputCoaddName}CoaddCell",
        storageClass="MultipleCellCoadd",
        multiple=True,
        dimensions=("tract", "patch", "band", "skymap"),
    )
    backgrounds = cT.Input(
        doc="Background models to subtract from the cell-based coadds",
        name="{inputCoaddName}Coadd_calexp_background",
        storageClass="Background",
        multiple=True,
        dimensions=("tract", "patch", "band", "skymap"),
    )
    outputSchema = cT.InitOutput(
        doc="Schema of the deblended catalog",
        name="{outputCoaddName}Coadd_deblendedFlux_schema",
        storageClass="SourceCatalog",
    )
    deblendedCatalog = cT.Output(
        doc="Isolated sources and deblended children",
        name="{outputCoaddName}Coadd_deblendedCatalog",
        storageClass="SourceCatalog",
        dimensions=("tract", "patch", "skymap"),
    )
    scarletModelData = cT.Output(
        doc="VAE models of the children, in scarlet's persisted form",
        name="{outputCoaddName}Coadd_scarletModelData",
        storageClass="LsstScarletModelData",
        dimensions=("tract", "patch", "skymap"),
    )
    objectParents = cT.Output(
        doc="Parents of the deblended objects, with their deblending flags",
        name="object_parent_patch",
        storageClass="SourceCatalog",
        dimensions=("tract", "patch", "skymap"),
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config:
            if config.useCellCoadds:
                del self.coadds
            else:
                del self.coadds_cell
                del self.backgrounds


class VaeDeblendCoaddConfig(pipeBase.PipelineTaskConfig, pipelineConnections=VaeDeblendCoaddConnections):
    """Configuration of `VaeDeblendCoaddTask`, laid out as ``DeblendCoaddSourcesMultiConfig``.

    ``multibandDeblend`` is scarlet's own ``ScarletDeblendConfig``, so scarlet's overrides apply
    unchanged.  The VAE honours its fields ``maxNumberOfPeaks``, ``maxFootprintArea``,
    ``maxFootprintSize``, ``maxAreaTimesPeaks``, ``minFootprintAxisRatio``, ``maskLimits``, ``badMask``,
    ``processSingles``, ``persistIsolated``, ``pseudoColumns``, ``notDeblendedMask``, ``catchFailures``,
    ``columnInheritance`` and the CI limits (``useCiLimits``, ``ciDeblendChildRange``,
    ``ciNumParentsToDeblend``); the others tune scarlet's own fit and are ignored.  The VAE's options are
    in ``vae`` (`VaeDeblendConfig`).
    """

    useCellCoadds = pexConfig.Field[bool](
        doc="Deblend the stitched cell-based coadds (minus their backgrounds) instead of the coadds.",
        default=False,
    )
    idGenerator = SkyMapIdGeneratorConfig.make_field()
    multibandDeblend = pexConfig.ConfigField(
        dtype=ScarletDeblendConfig,
        doc="Scarlet's deblender options: the skip limits, mask planes, sky objects and failure handling "
            "that the VAE shares with it (scarlet's fitting options are ignored).",
    )
    vae = pexConfig.ConfigField(
        dtype=VaeDeblendConfig,
        doc="The VAE's own options: network, algorithm and model data.",
    )


# ---------------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Patch:
    """What every parent of a patch shares: the coadds in the network's band order and units."""

    coadds: list  # the input exposures (their masks get NOT_DEBLENDED)
    exposures: list  # one per network band, None where there is no coadd
    present: list[int]  # indices of the network bands with a coadd
    missing: list[str]  # network bands without a coadd
    modelBands: list[str]  # the bands stored in the model data
    xy0: tuple[int, int]  # the coadds' origin
    shape: tuple[int, int]  # the coadds' (height, width)
    scale: np.ndarray  # network units per image unit, per network band
    deblendConfig: DeblendConfig
    margin: int  # pixels around a parent's box in its cut-out


def _spansInBox(footprint: afwDet.Footprint, box: tuple[int, int, int, int], xy0: tuple[int, int]
                ) -> np.ndarray:
    """A footprint as a boolean array over ``box`` (x0, y0, x1, y1: array indices of an image at ``xy0``)."""
    return footprint.spans.asArray((box[3] - box[1], box[2] - box[0]), (box[0] + xy0[0], box[1] + xy0[1]))


def _axisRatio(footprint: afwDet.Footprint) -> float:
    """Minor over major axis of a footprint's second moments (1 for a footprint without extent)."""
    axes = afwEll.Axes(footprint.getShape())
    return float(axes.getB() / axes.getA()) if axes.getA() > 0 else 1.0


def _isPseudo(record, columns: Sequence[str]) -> bool:
    pseudo = False
    for column in columns:
        try:
            pseudo |= bool(record[column])
        except (KeyError, LookupError):
            pass
    return pseudo


class VaeDeblendCoaddTask(pipeBase.PipelineTask):
    """Deblend the merged detections of a patch with the VAE, in place of scarlet.

    Parameters
    ----------
    initInputs : `dict`
        ``inputSchema`` and ``peakSchema`` catalogs (their schemas are used).
    """

    ConfigClass = VaeDeblendCoaddConfig
    _DefaultName = "vaeDeblendCoadd"

    def __init__(self, initInputs, **kwargs):
        super().__init__(initInputs=initInputs, **kwargs)
        inputSchema = initInputs["inputSchema"].schema
        peakSchema = initInputs["peakSchema"].schema
        self.schemaMapper = afwTable.SchemaMapper(inputSchema)
        self.schemaMapper.addMinimalSchema(inputSchema)
        schema = self.schemaMapper.getOutputSchema()

        # Peak columns beyond the minimal peak schema (merge_peak_*) go to parents and objects.
        peakMinimalSchema = afwDet.PeakTable.makeMinimalSchema()
        self.peakSchemaMapper = afwTable.SchemaMapper(peakSchema, schema)
        for item in peakSchema:
            if item.key not in peakMinimalSchema:
                self.peakSchemaMapper.addMapping(item.key, item.field)
                schema.addField(item.field)

        self.parentSchemaMapper = afwTable.SchemaMapper(schema)
        self.parentSchemaMapper.addMinimalSchema(schema, doMap=True)
        self.parentSchema = self.parentSchemaMapper.editOutputSchema()
        self._addParentFields(self.parentSchema)

        self._addChildFields(schema)
        self.objectSchema = schema
        self.toCopyFromParent = [item.field.getName() for item in self.objectSchema
                                 if item.field.getName().startswith(("merge_footprint", "merge_peak"))]
        self.outputSchema = afwTable.SourceCatalog(self.objectSchema)
        self._model = None

    @staticmethod
    def _addParentFields(schema: afwTable.Schema) -> None:
        schema.addField("deblend_runtime", type=np.float32, doc="Time spent deblending the parent",
                        units="ms")
        schema.addField("deblend_iterations", type=np.int32, doc="Passes of the VAE over the parent's peaks")
        schema.addField("deblend_nChild", type=np.int32,
                        doc="Number of children this object has (defaults to 0)")
        schema.addField("deblend_nPeaks", type=np.int32, doc="Number of peaks in the parent footprint")
        schema.addField("deblend_spectrumInitFlag", type="Flag", doc="Unused by the VAE (scarlet's column)")
        schema.addField("deblend_skipped", type="Flag", doc="The deblender skipped this parent")
        schema.addField("deblend_skipped_isolatedParent", type="Flag",
                        doc="The parent has a single peak and was not deblended")
        schema.addField("deblend_skipped_isPseudo", type="Flag",
                        doc="The parent is a pseudo source (sky object) and was not deblended")
        schema.addField("deblend_skipped_tooManyPeaks", type="Flag", doc="The parent had too many peaks")
        schema.addField("deblend_skipped_parentTooBig", type="Flag", doc="The parent footprint was too big")
        schema.addField("deblend_skipped_masked", type="Flag",
                        doc="The parent footprint had too many masked pixels")
        schema.addField("deblend_blendConvergenceFailedFlag", type="Flag",
                        doc="Unused by the VAE (scarlet's column)")
        schema.addField("deblend_failed", type="Flag", doc="Deblending failed on this parent")
        schema.addField("deblend_childFailed", type="Flag",
                        doc="Deblending failed on a sub-blend (the VAE does not split parents)")
        schema.addField("deblend_error", type="String", size=ERROR_SIZE,
                        doc="Name of the exception if deblending failed")
        schema.addField("deblend_incompleteData", type="Flag",
                        doc="A band of the network had no coadd and was modelled from zeros")
        schema.addField("deblend_nComponents", type=np.int32,
                        doc="Number of components stored for the parent's children")
        schema.addField("deblend_chi2", type=np.float32,
                        doc="Reduced chi2 per pixel of the sum of the models over the footprint")

    @staticmethod
    def _addChildFields(schema: afwTable.Schema) -> None:
        afwTable.Point2IKey.addFields(schema, name="deblend_peak_center",
                                      doc="Position of the detection peak of the child", unit="pixel")
        schema.addField("deblend_nChild", type=np.int32,
                        doc="Number of children this object has (defaults to 0)")
        schema.addField("deblend_peakId", type=np.int32,
                        doc="ID of the peak in the parent footprint (unique with 'parent')")
        schema.addField("deblend_peak_instFlux", type=float, units="count",
                        doc="The instFlux at the peak position of the deblended model")
        schema.addField("deblend_scarletFlux", type=np.float32, doc="Flux of the deblender model")
        schema.addField("deblend_edgePixels", type="Flag",
                        doc="The model has flux on the edge of the parent footprint, or its stamp left the "
                            "image")
        schema.addField("deblend_dataCoverage", type=np.float32,
                        doc="Fraction of pixels with data (1 - fraction with NO_DATA)")
        schema.addField("deblend_zeroFlux", type="Flag", doc="The model has zero flux")
        schema.addField("deblend_binned", type="Flag",
                        doc="The galaxy reached past the network's stamp: it was modelled on a wider stamp, "
                            "binned (docs/model.md)")
        schema.addField("deblend_maxOverlap", type=np.float32,
                        doc="Largest flux of the neighbours' models in a pixel of this model")
        schema.addField("deblend_fluxOverlap", type=np.float32,
                        doc="Total flux of the neighbours' models over this model's footprint")
        schema.addField("deblend_fluxOverlapFraction", type=np.float32,
                        doc="deblend_fluxOverlap divided by the flux of this model")
        schema.addField("deblend_blendedness", type=np.float32,
                        doc="Blendedness of Bosch et al. 2018 from the models")
        schema.addField("deblend_blendId", type=np.int64,
                        doc="ID of the blend the child was deblended in (its parent: the VAE does not split)")
        schema.addField("deblend_blendNChild", type=np.int32, doc="Number of children in that blend")
        schema.addField("deblend_parentNPeaks", type=np.int32, doc="deblend_nPeaks of the parent")
        schema.addField("deblend_parentNChild", type=np.int32, doc="deblend_nChild of the parent")
        schema.addField("deblend_nComponents", type=np.int32, doc="Number of components stored for the child")
        schema.addField("deblend_chi2", type=np.float32,
                        doc="Reduced chi2 over the child's stamp (per positive model pixel)")

    @property
    def model(self):
        """The network (`~lsst.meas.extensions.vae.deblend.network.VaeDeblender`), loaded on first use."""
        if self._model is None:
            from ...deblend.network import VaeDeblender

            vae = self.config.vae
            self._model = VaeDeblender(vae.weights, device=vae.device, batch_size=vae.batchSize,
                                       precision=vae.precision)
        if self.config.vae.refineSteps > 0 and hasattr(self._model, "refiner"):
            _ = self._model.refiner  # a missing refiner: one clear error, not one per parent
        return self._model

    @model.setter
    def model(self, value) -> None:
        self._model = value

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        bandRefs = ("coadds_cell", "backgrounds") if self.config.useCellCoadds else ("coadds",)
        available = [{ref.dataId["band"] for ref in getattr(inputRefs, name)} for name in bandRefs]
        bands = sorted(set.intersection(*available))
        dropped = sorted(set.union(*available) - set(bands))
        if dropped:
            self.log.warning("Bands %s lack an input among %s and are left out.", dropped, bandRefs)
        if not bands:
            raise pipeBase.NoWorkFound("No coadd to deblend.")
        for name in bandRefs:
            byBand = {ref.dataId["band"]: ref for ref in getattr(inputRefs, name)}
            setattr(inputRefs, name, [byBand[band] for band in bands])
        inputs = butlerQC.get(inputRefs)
        mergedDetections = inputs.pop("mergedDetections")
        if self.config.useCellCoadds:
            coadds = [mcc.stitch().asExposure() for mcc in inputs.pop("coadds_cell")]
            for exposure, background in zip(coadds, inputs.pop("backgrounds")):
                exposure.image -= background.getImage()
        else:
            coadds = inputs.pop("coadds")
        assert not inputs, "runQuantum got extra inputs"
        idFactory = self.config.idGenerator.apply(butlerQC.quantum.dataId).make_table_id_factory()
        outputs = self.run(coadds=coadds, bands=bands, mergedDetections=mergedDetections, idFactory=idFactory)
        butlerQC.put(outputs, outputRefs)

    @timeMethod
    def run(self, coadds, bands: Sequence[str] | None, mergedDetections: afwTable.SourceCatalog,
            idFactory: afwTable.IdFactory | None = None) -> pipeBase.Struct:
        """Deblend every parent of a patch.

        Parameters
        ----------
        coadds : sequence of `lsst.afw.image.Exposure` or `lsst.afw.image.MultibandExposure`
            Background-subtracted coadds of the patch, one per band, on the same pixel grid.
        bands : sequence of `str` or `None`
            Band of each coadd (`None` with a `~lsst.afw.image.MultibandExposure`: its bands).
        mergedDetections : `lsst.afw.table.SourceCatalog`
            The parents: merged detections with footprints and peaks.
        idFactory : `lsst.afw.table.IdFactory`, optional
            Id factory of the patch (``config.idGenerator``); a simple one by default.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``deblendedCatalog`` (isolated sources and children, sorted by id), ``scarletModelData``
            (`LsstScarletModelData`) and ``objectParents`` (the parents in input order, then one blend
            record per parent sent to the deblender, ``parent`` = its parent's id, as scarlet's
            deconvolved parents).
        """
        options = self.config.multibandDeblend
        patch = self._preparePatch(coadds, bands)
        parents = self._makeParents(self._ciSelection(mergedDetections), idFactory)
        if options.notDeblendedMask:
            for exposure in patch.coadds:
                exposure.mask.addMaskPlane(options.notDeblendedMask)
        nParents = len(parents)
        blendRecords = self._initializeParents(parents, patch)
        objects = afwTable.SourceCatalog(afwTable.SourceTable.make(self.objectSchema))
        if len(parents):
            # Children get ids above every parent and blend record (as in scarlet's task).
            objects.getIdFactory().notify(int(np.max(parents["id"])))
        modelData = makeModelData(patch.modelBands)
        periodicLog = PeriodicLogger(self.log)
        counts = dict(isolated=0, deblended=0, skipped=0, failed=0, children=0)
        self.log.info("Deblending %d parents in bands %s.", nParents, patch.modelBands)
        for index in range(nParents):
            periodicLog.log("Deblended %d of %d parents.", index, nParents)
            parent = parents[index]
            blendRecord = blendRecords.get(parent.getId())
            if blendRecord is None:
                self._addIsolated(parent, patch, objects, modelData)
                counts["isolated"] += 1
                continue
            status, nChild = self._processBlend(parent, blendRecord, patch, objects, modelData)
            counts[status] += 1
            counts["children"] += nChild
        self.log.info("%d parents: %d isolated, %d deblended into %d children, %d skipped, %d failed.",
                      nParents, counts["isolated"], counts["deblended"], counts["children"],
                      counts["skipped"], counts["failed"])

        deblended = afwTable.SourceCatalog(afwTable.SourceTable.make(self.objectSchema))
        deblended.extend(objects, deep=True)
        deblended.sort()
        objectParents = afwTable.SourceCatalog(afwTable.SourceTable.make(self.parentSchema))
        objectParents.extend(parents, deep=True)
        return pipeBase.Struct(deblendedCatalog=deblended, scarletModelData=modelData,
                               objectParents=objectParents)

    def _preparePatch(self, coadds, bands) -> _Patch:
        """Check the coadds and line them up with the network's bands and units."""
        if isinstance(coadds, afwImage.MultibandExposure):
            bands = list(coadds.bands) if bands is None else list(bands)
            coadds = [coadds[band] for band in bands]
        coadds, bands = list(coadds), list(bands)
        if len(coadds) != len(bands) or not coadds:
            raise ValueError(f"{len(coadds)} coadds for bands {bands}.")
        bbox = coadds[0].getBBox()
        if any(c.getBBox() != bbox for c in coadds):
            raise ValueError("The coadds do not share one bounding box.")

        networkBands = list(self.model.bands)
        byBand = dict(zip(bands, coadds))
        exposures = [byBand.get(band) for band in networkBands]
        present = [k for k, band in enumerate(networkBands) if band in byBand]
        missing = [band for band in networkBands if band not in byBand]
        if not present:
            raise pipeBase.NoWorkFound(f"No coadd in the network's bands {networkBands} (have {bands}).")
        if missing:
            self.log.warning("No coadd in bands %s: the network sees zeros there.", missing)
        ignored = [band for band in bands if band not in networkBands]
        if ignored:
            self.log.info("Bands %s are not among the network's %s and are ignored.", ignored, networkBands)
        if getattr(self.model, "conditioned", False):
            noPsf = [networkBands[k] for k in present if exposures[k].getPsf() is None]
            if noPsf:
                # Every blend would fail the same way: say so once, for the quantum.
                raise ValueError(f"The weights are PSF-aware but the coadds in bands {noPsf} have no PSF.")
        deblendConfig = self.config.vae.deblendConfig()
        return _Patch(coadds=coadds, exposures=exposures, present=present, missing=missing,
                      modelBands=[networkBands[k] for k in present],
                      xy0=(bbox.getMinX(), bbox.getMinY()), shape=(bbox.getHeight(), bbox.getWidth()),
                      scale=self._fluxScale(networkBands, exposures), deblendConfig=deblendConfig,
                      margin=stamp_margin(self.model.stamp_size, deblendConfig))

    def _makeParents(self, mergedDetections, idFactory):
        """The parents, in input order, in a table whose id factory (the patch's) follows the largest
        input id."""
        if idFactory is None:
            idFactory = afwTable.IdFactory.makeSimple()
        if len(mergedDetections):
            # There may be gaps in the merged ids: start after the largest.
            idFactory.notify(int(np.max(mergedDetections["id"])))
        sources = afwTable.SourceCatalog(afwTable.SourceTable.make(self.objectSchema, idFactory))
        sources.extend(mergedDetections, mapper=self.schemaMapper)
        parents = afwTable.SourceCatalog(afwTable.SourceTable.make(self.parentSchema, idFactory))
        parents.extend(sources, mapper=self.parentSchemaMapper)
        return parents

    def _ciSelection(self, mergedDetections):
        """With ``useCiLimits``, scarlet's CI selection: the single-peak parents and the first
        ``ciNumParentsToDeblend`` parents with a number of peaks in ``ciDeblendChildRange``."""
        options = self.config.multibandDeblend
        if not getattr(options, "useCiLimits", False):
            return mergedDetections
        low, high = options.ciDeblendChildRange
        nPeaks = np.array([len(p.getFootprint().peaks) for p in mergedDetections], dtype=int)
        inRange = np.flatnonzero((nPeaks >= low) & (nPeaks <= high))
        if len(inRange) < options.ciNumParentsToDeblend:
            raise ValueError("Fewer than ciNumParentsToDeblend parents have a number of peaks in "
                             "ciDeblendChildRange.")
        keep = nPeaks == 1
        keep[inRange[:options.ciNumParentsToDeblend]] = True
        self.log.info("CI limits: deblending %d of %d parents.", int(keep.sum()), len(mergedDetections))
        return mergedDetections[keep]

    def _initializeParents(self, parents, patch: _Patch) -> dict:
        """Copy each parent's first peak columns to it and add a blend record for each parent to deblend.

        Sky objects (``pseudoColumns``) and single-peak parents (unless ``processSingles``) are isolated
        sources: they get no blend record.  Every other parent gets one blend record (``parent`` = the
        parent's id, the parent's footprint): the VAE deblends a parent as one blend, where scarlet may
        split it into deconvolved blends.

        Returns
        -------
        blendRecords : `dict` [`int`, `lsst.afw.table.SourceRecord`]
            The blend record of each parent to deblend, by parent id.
        """
        options = self.config.multibandDeblend
        nParents = len(parents)
        blendRecords = {}
        for index in range(nParents):
            parent = parents[index]
            footprint = parent.getFootprint()
            nPeaks = len(footprint.peaks)
            parent.set("deblend_nPeaks", nPeaks)
            if nPeaks == 0:
                continue  # nothing to assign or deblend: flagged when it is processed
            parent.assign(footprint.peaks[0], self.peakSchemaMapper)
            if patch.missing:
                parent.set("deblend_incompleteData", True)
            if _isPseudo(parent, options.pseudoColumns):
                continue  # a sky object: an isolated source, no flag (as scarlet)
            if nPeaks == 1 and not options.processSingles:
                parent.set("deblend_skipped_isolatedParent", True)
                continue
            blendRecord = parents.addNew()
            blendRecord.setParent(parent.getId())
            blendRecord.setFootprint(footprint)
            blendRecord.set("deblend_nPeaks", nPeaks)
            blendRecord.set("deblend_incompleteData", parent.get("deblend_incompleteData"))
            blendRecords[parent.getId()] = blendRecord
        return blendRecords

    def _processBlend(self, parent, blendRecord, patch: _Patch, objects, modelData) -> tuple[str, int]:
        """Skip or deblend the blend of one parent; returns its fate and its number of children."""
        options = self.config.multibandDeblend
        footprint = blendRecord.getFootprint()
        nPeaks = len(footprint.peaks)
        modelPeaks = [p for p in footprint.peaks if not _isPseudo(p, options.pseudoColumns)]
        box = footprint.getBBox()
        xy0 = patch.xy0
        cutBox = blend_box((box.getMinX() - xy0[0], box.getMinY() - xy0[1],
                            box.getMaxX() + 1 - xy0[0], box.getMaxY() + 1 - xy0[1]),
                           patch.margin, patch.shape)
        minAxisRatio = getattr(options, "minFootprintAxisRatio", 0.0)
        reason = skip_reason(n_peaks=nPeaks, bbox_area=box.getArea(),
                             bbox_size=max(box.getWidth(), box.getHeight()),
                             is_pseudo=not modelPeaks, masked=self._maskedFractions(footprint, patch),
                             max_peaks=options.maxNumberOfPeaks, max_area=options.maxFootprintArea,
                             max_size=options.maxFootprintSize, mask_limits=dict(options.maskLimits),
                             max_area_times_peaks=options.maxAreaTimesPeaks,
                             axis_ratio=_axisRatio(footprint) if minAxisRatio > 0 else None,
                             min_axis_ratio=minAxisRatio)
        if reason is not None:
            self._skipBlend(blendRecord, reason, patch.coadds, reason)
            parent.set("deblend_skipped", True)
            parent.set(reason, True)
            self._updateParentRecord(parent, nPeaks=nPeaks)
            return "skipped", 0

        start = time.perf_counter()
        firstRecord = len(objects)
        try:
            children = self._deblendBlend(parent, blendRecord, modelPeaks, patch, cutBox, objects, modelData)
        except Exception as error:
            if not options.catchFailures:
                raise
            del objects[firstRecord:]  # no orphan children
            modelData.blends.pop(parent.getId(), None)
            name = type(error).__name__
            self.log.warning("Parent %d failed to deblend: %s: %s", parent.getId(), name, error)
            blendRecord.set("deblend_error", name[:ERROR_SIZE])
            blendRecord.set("deblend_failed", True)
            self._skipBlend(blendRecord, "deblend_failed", patch.coadds, name)
            parent.set("deblend_childFailed", True)
            self._updateParentRecord(parent, nPeaks=nPeaks)
            return "failed", 0
        runtime = 1000.0 * (time.perf_counter() - start)
        for record in (blendRecord, parent):
            record.set("deblend_runtime", runtime)
        # The parent columns the children inherit (scarlet's columnInheritance) and the detection columns.
        for child in children:
            for key in self.toCopyFromParent:
                child.set(key, parent.get(key))
            inheritance = getattr(options, "columnInheritance", COLUMN_INHERITANCE)
            for parentColumn, childColumn in inheritance.items():
                child.set(childColumn, parent.get(parentColumn))
        return "deblended", len(children)

    def _updateParentRecord(self, record, *, nPeaks: int, nChild: int = 0, nComponents: int = 0,
                            runtime: float = np.nan, iterations: int = 0, chi2: float = np.nan) -> None:
        """The deblending results of a parent or blend record (scarlet's ``_updateParentRecord``)."""
        record.set("deblend_nPeaks", nPeaks)
        record.set("deblend_nChild", nChild)
        record.set("deblend_nComponents", nComponents)
        record.set("deblend_runtime", runtime)
        record.set("deblend_iterations", iterations)
        record.set("deblend_chi2", chi2)

    def _maskedFractions(self, footprint, patch: _Patch) -> dict[str, float]:
        """Fraction of the footprint with each plane of ``maskLimits`` set in any band (as scarlet)."""
        planes = list(self.config.multibandDeblend.maskLimits)
        if not planes:
            return {}
        box = footprint.getBBox()
        xy0 = patch.xy0
        cutBox = blend_box((box.getMinX() - xy0[0], box.getMinY() - xy0[1],
                            box.getMaxX() + 1 - xy0[0], box.getMaxY() + 1 - xy0[1]), 0, patch.shape)
        _, _, _, maskArrays = coaddCutout(patch.coadds, cutBox, [], np.ones(len(patch.coadds)), planes)
        spans = _spansInBox(footprint, cutBox, xy0)
        area = footprint.getArea()  # scarlet divides by the whole footprint's area
        return {name: float(np.count_nonzero(spans & array)) / area if area else 0.0
                for name, array in maskArrays.items()}

    def _fluxScale(self, networkBands: Sequence[str], exposures: Sequence) -> np.ndarray:
        """Network units per image unit of each network band (1 where there is no coadd)."""
        fluxScale = self.config.vae.fluxScale
        scale = np.ones(len(networkBands))
        auto = [b for b, e in zip(networkBands, exposures) if e is not None and b not in fluxScale]
        perNanojansky = dict(zip(auto, electrons_per_nanojansky(auto))) if auto else {}
        for k, (band, exposure) in enumerate(zip(networkBands, exposures)):
            if exposure is None:
                continue
            if band in fluxScale:
                scale[k] = fluxScale[band]
            else:
                calib = exposure.getPhotoCalib()
                nanojanskyPerUnit = calib.getCalibrationMean() if calib is not None else 1.0
                scale[k] = perNanojansky[band] * nanojanskyPerUnit
        return scale

    def _deblendBlend(self, parent, blendRecord, peaks, patch: _Patch, cutBox, objects, modelData) -> list:
        """Deblend one blend: the core on arrays, then records and model data; returns the children."""
        vae = self.config.vae
        footprint = blendRecord.getFootprint()
        xy0 = patch.xy0
        cx0, cy0 = cutBox[0], cutBox[1]
        image, variance, bad, _ = coaddCutout(patch.exposures, cutBox, self.config.multibandDeblend.badMask,
                                              patch.scale)
        positions = np.array([(p.getIx() - xy0[0], p.getIy() - xy0[1]) for p in peaks])
        deblendConfig = patch.deblendConfig
        if deblendConfig.conserve_flux and (footprint.getBBox().getArea() * len(peaks)
                                            > vae.maxConserveAreaTimesPeaks):
            self.log.info("Parent %d is too big to conserve flux: its models are stored.", parent.getId())
            deblendConfig = dataclasses.replace(deblendConfig, conserve_flux=False)
        psf = self._peakPsfs(peaks, patch) if getattr(self.model, "conditioned", False) else None
        result = deblend_blend(image, _spansInBox(footprint, cutBox, xy0), positions - (cx0, cy0), self.model,
                               self.model.stamp_size, xy0=(cx0, cy0), bad=bad, variance=variance,
                               config=deblendConfig, psf=psf)

        parentId = parent.getId()
        blendId = blendRecord.getId()
        nChild = len(peaks)
        nComponents = len(patch.present)
        bbox, parentSpans, _, _ = footprintToArrays(footprint, xy0)
        records = []
        for peak, child, chi2 in zip(peaks, result.children, result.child_chi2):
            record = objects.addNew()
            record.assign(peak, self.peakSchemaMapper)
            record.setParent(parentId)
            record.set("deblend_nChild", 0)
            record.set("deblend_blendId", blendId)
            record.set("deblend_blendNChild", len(footprint.peaks))
            record.set("deblend_peak_center_x", int(peak.getIx()))
            record.set("deblend_peak_center_y", int(peak.getIy()))
            record.set("deblend_peakId", int(peak.getId()))
            record.set("deblend_nComponents", nComponents)
            record.set("deblend_chi2", float(chi2))
            record.set("deblend_zeroFlux", bool(child.zero_flux))
            record.set("deblend_binned", child.binned > 1)
            record.set("deblend_edgePixels", bool(touches_edge(child, bbox)))
            records.append(record)

        images = result.parent.conserved if deblendConfig.conserve_flux else None
        if images is not None and result.parent.bbox != bbox:
            images = None  # the footprint reaches past the coadd: store the models
        blend = export_blend(result.children, bbox, parentSpans, [r.getId() for r in records],
                             [p.getId() for p in peaks], blend_id=blendId, peaks=positions, xy0=xy0,
                             scale=patch.scale, images=images, band_index=patch.present,
                             floor=self._modelFloor(variance, bad, patch))
        modelData.blends[parentId] = toScarletBlendData(blend)

        for record in (blendRecord, parent):
            self._updateParentRecord(record, nPeaks=len(footprint.peaks), nChild=nChild,
                                     nComponents=nChild * nComponents, iterations=deblendConfig.iterations,
                                     chi2=float(result.chi2))
        return records

    def _peakPsfs(self, peaks, patch: _Patch) -> np.ndarray:
        """The coadd PSF's kernel image of every network band at each peak, (n, bands, p, p), for a PSF-aware
        network (a band without a coadd borrows another band's)."""
        size = self.model.psf_size
        return np.stack([
            stack_psf_images([None if exposure is None else exposure.getPsf().computeKernelImage(
                geom.Point2D(peak.getFx(), peak.getFy())).array for exposure in patch.exposures], size)
            for peak in peaks])

    def _modelFloor(self, variance: np.ndarray, bad: np.ndarray, patch: _Patch) -> np.ndarray | None:
        """``vae.modelFloor`` times the noise rms of each stored band, in image units."""
        modelFloor = self.config.vae.modelFloor
        if modelFloor <= 0:
            return None
        floor = []
        for k in patch.present:
            good = np.isfinite(variance[k]) & (variance[k] > 0) & ~bad
            noise = np.sqrt(np.median(variance[k][good])) / patch.scale[k] if good.any() else 0.0
            floor.append(modelFloor * noise)
        return np.array(floor)

    def _addIsolated(self, parent, patch: _Patch, objects, modelData) -> None:
        """An isolated source: the parent's id and footprint, ``parent = 0``, no model (as scarlet).

        A parent without peaks is not a source: it is flagged ``deblend_skipped`` and gives no row.
        """
        options = self.config.multibandDeblend
        footprint = parent.getFootprint()
        if len(footprint.peaks) == 0:
            self._skipBlend(parent, "deblend_skipped", patch.coadds, "no peak")
            return
        peak = footprint.peaks[0]
        record = objects.addNew()
        record.assign(peak, self.peakSchemaMapper)
        record.setParent(0)
        record.setId(parent.getId())
        record.setFootprint(footprint)
        record.set("deblend_blendId", 0)
        record.set("deblend_blendNChild", 0)
        record.set("deblend_peak_center_x", int(peak.getIx()))
        record.set("deblend_peak_center_y", int(peak.getIy()))
        record.set("deblend_peakId", int(peak.getId()))
        record.set("deblend_nComponents", 0)
        self._updateParentRecord(parent, nPeaks=len(footprint.peaks), runtime=0.0)
        for key in self.toCopyFromParent:
            record.set(key, parent.get(key))
        if options.persistIsolated and not _isPseudo(parent, options.pseudoColumns):
            box = footprint.getBBox()
            modelData.isolated[parent.getId()] = IsolatedSourceData(
                span_array=footprint.spans.asArray(), origin=(box.getMinY(), box.getMinX()),
                peak=(peak.getIy(), peak.getIx()))

    def _skipBlend(self, record, flag: str, coadds, why: str) -> None:
        """Flag a blend (or peakless parent) that gives no object rows and mark its pixels NOT_DEBLENDED
        (scarlet's ``_skipBlend``)."""
        self.log.trace("Record %d not deblended: %s", record.getId(), why)
        self._updateParentRecord(record, nPeaks=len(record.getFootprint().peaks))
        record.set("deblend_skipped", True)
        record.set(flag, True)
        notDeblendedMask = self.config.multibandDeblend.notDeblendedMask
        if notDeblendedMask:
            for exposure in coadds:
                mask = exposure.mask
                record.getFootprint().spans.clippedTo(mask.getBBox()).setMask(
                    mask, mask.getPlaneBitMask(notDeblendedMask))

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
           "footprintToArrays", "footprintsToLabelImage", "coaddCutout", "toScarletBlendData",
           "makeModelData"]

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

import lsst.afw.detection as afwDet
import lsst.afw.image as afwImage
import lsst.afw.table as afwTable
import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
import lsst.scarlet.lite as scl
from lsst.meas.base import SkyMapIdGeneratorConfig
from lsst.meas.extensions.scarlet.io import IsolatedSourceData, LsstScarletModelData
from lsst.utils.logging import PeriodicLogger
from lsst.utils.timer import timeMethod

from ...deblend.field import DeblendConfig
from ...deblend.fit import FIT_STEPS_DEFAULT
from .blends import (blend_box, deblend_blend, electrons_per_nanojansky, masked_fraction, skip_reason,
                     stamp_margin, touches_edge)
from .modelData import export_blend, model_metadata

# The default bad mask planes of scarlet's deblender.
DEFAULT_BAD_MASK = ["BAD", "NO_DATA", "SAT", "SUSPECT", "EDGE"]
# Size of the deblend_error string column (as in scarlet's schema).
ERROR_SIZE = 25


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


def toScarletBlendData(blend: dict) -> scl.io.HierarchicalBlendData:
    """Wrap `~lsst.meas.extensions.vae.pipe.rubin.modelData.export_blend` output into scarlet's classes."""
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
    return scl.io.HierarchicalBlendData(children=children, metadata=dict(blend["metadata"]))


def makeModelData(bands: Sequence[str]) -> LsstScarletModelData:
    """An empty `LsstScarletModelData` whose metadata makes downstream re-convolution a no-op."""
    return LsstScarletModelData(metadata=model_metadata(bands))


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
    """Configuration of `VaeDeblendCoaddTask`."""

    useCellCoadds = pexConfig.Field[bool](
        doc="Deblend the stitched cell-based coadds (minus their backgrounds) instead of the coadds.",
        default=False,
    )
    idGenerator = SkyMapIdGeneratorConfig.make_field()

    # The network
    weights = pexConfig.Field[str](
        doc="Weights of the deblender: a shipped name ('lsst') or a .safetensors path.",
        default="lsst",
    )
    device = pexConfig.Field[str](
        doc="Torch device ('cpu', 'cuda', 'cuda:1'...); None: the GPU when there is one.",
        default=None,
        optional=True,
    )
    batchSize = pexConfig.Field[int](
        doc="Stamps per network call.",
        default=256,
    )
    fluxScale = pexConfig.DictField(
        keytype=str,
        itemtype=float,
        default={},
        doc="Network units (electrons of the training survey) per image unit, by band. Bands not given "
            "use the weights' survey zero points and the coadd's PhotoCalib (image units -> nJy -> "
            "electrons).",
    )

    # The algorithm
    iterations = pexConfig.Field[int](
        doc="Passes over the peaks: 1 = brightest-first pass only; each further pass re-models every "
            "galaxy on the image minus all the other models.",
        default=2,
    )
    doRefineCentroids = pexConfig.Field[bool](
        doc="Re-centre stamps on the models' light centroids.",
        default=True,
    )
    fitSteps = pexConfig.Field[int](
        doc="Adam steps of the joint latent fit of each parent's children to its pixels, through the "
            "frozen decoder, with the variance plane's noise (0: the encoder's models as they are).",
        default=FIT_STEPS_DEFAULT,
    )
    fitLearningRate = pexConfig.Field[float](
        doc="Adam's step of the latent fit, in units of the weights' latent spread.",
        default=0.1,
    )
    fitPriorWeight = pexConfig.Field[float](
        doc="Weight of the latent prior in the fit.",
        default=1.0,
    )
    fitAmplitudeSigma = pexConfig.Field[float](
        doc="Width of the prior on the log of each child's free per-band amplitude in the fit "
            "(0: no free amplitudes).",
        default=0.3,
    )
    maxCentroidShift = pexConfig.Field[float](
        doc="Largest centroid correction, pixels.",
        default=3.0,
    )
    modelFloor = pexConfig.Field[float](
        doc="Model pixels below this many times the band's noise rms (per pixel, median over the cut-out) "
            "are set to zero in the model data, and each band's model is cropped to what is left. "
            "Downstream footprints are the non-zero model pixels, so this bounds their size (and the size "
            "of the model data); 0 keeps every stamp whole (cropped to the parent's box).",
        default=0.1,
    )
    doConserveFlux = pexConfig.Field[bool](
        doc="Store the flux-conserved children (the image split in proportion to the models) in the model "
            "data instead of the models themselves. Measurement re-distributes the flux of its own image "
            "when its doConserveFlux is set (the DRP default), so leave this off there.",
        default=False,
    )

    # Limits (as scarlet's)
    maxNumberOfPeaks = pexConfig.Field[int](
        doc="Skip parents with more peaks than this (<= 0: unlimited).",
        default=600,
    )
    maxFootprintArea = pexConfig.Field[int](
        doc="Skip parents whose footprint's bounding box has more pixels than this (<= 0: unlimited).",
        default=2_000_000,
    )
    maxFootprintSize = pexConfig.Field[int](
        doc="Skip parents whose footprint's bounding box is longer than this (<= 0: unlimited).",
        default=0,
    )
    maxAreaTimesPeaks = pexConfig.Field[int](
        doc="Skip parents whose bounding-box area times number of peaks is above this (<= 0: unlimited).",
        default=1_000_000_000,
    )
    maxConserveAreaTimesPeaks = pexConfig.Field[int](
        doc="With doConserveFlux, parents whose bounding-box area times number of peaks is above this store "
            "their models instead (the conservation holds about 90 bytes per pixel, band and peak).",
        default=20_000_000,
    )
    processSingles = pexConfig.Field[bool](
        doc="Deblend single-peak parents too (one child each) instead of passing them on as isolated.",
        default=False,
    )
    persistIsolated = pexConfig.Field[bool](
        doc="Store isolated sources in the model data (as scarlet does).",
        default=True,
    )
    badMask = pexConfig.ListField[str](
        doc="Mask planes whose pixels are hidden from the network (in any band).",
        default=DEFAULT_BAD_MASK,
    )
    maskLimits = pexConfig.DictField(
        keytype=str,
        itemtype=float,
        default={},
        doc="Mask planes with the largest fraction of a footprint's pixels they may cover; parents above "
            "are skipped (deblend_skipped_masked).",
    )
    pseudoColumns = pexConfig.ListField[str](
        doc="Flags of sources that are never deblended (sky objects): such parents are passed on as "
            "isolated, such peaks in a blend get no child.",
        default=["merge_peak_sky", "sky_source"],
    )
    notDeblendedMask = pexConfig.Field[str](
        doc="Mask plane set on the coadds over skipped or failed parents, or None.",
        default="NOT_DEBLENDED",
        optional=True,
    )
    catchFailures = pexConfig.Field[bool](
        doc="Catch exceptions per parent, log them and flag the parent (deblend_failed, deblend_error) "
            "instead of failing the patch.",
        default=True,
    )

    def validate(self):
        super().validate()
        if self.iterations < 1:
            raise pexConfig.FieldValidationError(VaeDeblendCoaddConfig.iterations, self, "must be >= 1")
        if self.batchSize < 1:
            raise pexConfig.FieldValidationError(VaeDeblendCoaddConfig.batchSize, self, "must be >= 1")

    def deblendConfig(self) -> DeblendConfig:
        """The array core's options."""
        return DeblendConfig(iterations=self.iterations, refine_centroids=self.doRefineCentroids,
                             max_centroid_shift=self.maxCentroidShift, conserve_flux=self.doConserveFlux,
                             fit_steps=self.fitSteps, fit_learning_rate=self.fitLearningRate,
                             fit_prior_weight=self.fitPriorWeight,
                             fit_amplitude_sigma=self.fitAmplitudeSigma)


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

            self._model = VaeDeblender(self.config.weights, device=self.config.device,
                                       batch_size=self.config.batchSize)
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
            (`LsstScarletModelData`) and ``objectParents`` (every parent with its flags).
        """
        patch = self._preparePatch(coadds, bands)
        parents, objects = self._makeCatalogs(mergedDetections, idFactory)
        if self.config.notDeblendedMask:
            for exposure in patch.coadds:
                exposure.mask.addMaskPlane(self.config.notDeblendedMask)
        modelData = makeModelData(patch.modelBands)
        periodicLog = PeriodicLogger(self.log)
        counts = dict(isolated=0, deblended=0, skipped=0, failed=0, children=0)
        self.log.info("Deblending %d parents in bands %s.", len(parents), patch.modelBands)
        for index, parent in enumerate(parents):
            periodicLog.log("Deblended %d of %d parents.", index, len(parents))
            status, nChild = self._processParent(parent, patch, objects, modelData)
            counts[status] += 1
            counts["children"] += nChild
        self.log.info("%d parents: %d isolated, %d deblended into %d children, %d skipped, %d failed.",
                      len(parents), counts["isolated"], counts["deblended"], counts["children"],
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
        deblendConfig = self.config.deblendConfig()
        return _Patch(coadds=coadds, exposures=exposures, present=present, missing=missing,
                      modelBands=[networkBands[k] for k in present],
                      xy0=(bbox.getMinX(), bbox.getMinY()), shape=(bbox.getHeight(), bbox.getWidth()),
                      scale=self._fluxScale(networkBands, exposures), deblendConfig=deblendConfig,
                      margin=stamp_margin(self.model.stamp_size, deblendConfig))

    def _makeCatalogs(self, mergedDetections, idFactory):
        """The parents (input order, the patch's id factory) and an empty object catalogue whose ids follow
        the largest parent id."""
        if idFactory is None:
            idFactory = afwTable.IdFactory.makeSimple()
        if len(mergedDetections):
            # There may be gaps in the merged ids: start after the largest.
            idFactory.notify(int(np.max(mergedDetections["id"])))
        sources = afwTable.SourceCatalog(afwTable.SourceTable.make(self.objectSchema, idFactory))
        sources.extend(mergedDetections, mapper=self.schemaMapper)
        parents = afwTable.SourceCatalog(afwTable.SourceTable.make(self.parentSchema, idFactory))
        parents.extend(sources, mapper=self.parentSchemaMapper)
        objects = afwTable.SourceCatalog(afwTable.SourceTable.make(self.objectSchema))
        if len(parents):
            objects.getIdFactory().notify(int(np.max(parents["id"])))
        return parents, objects

    def _processParent(self, parent, patch: _Patch, objects, modelData) -> tuple[str, int]:
        """Pass on, skip or deblend one parent; returns its fate and its number of children."""
        footprint = parent.getFootprint()
        peaks = footprint.peaks
        nPeaks = len(peaks)
        parent.set("deblend_nPeaks", nPeaks)
        if nPeaks == 0:
            self._skip(parent, "deblend_skipped", patch.coadds, "no peak")
            return "skipped", 0
        # The first peak's columns (merge_peak_sky...) describe the parent.
        parent.assign(peaks[0], self.peakSchemaMapper)
        if patch.missing:
            parent.set("deblend_incompleteData", True)
        pseudo = _isPseudo(parent, self.config.pseudoColumns)
        if pseudo or (nPeaks == 1 and not self.config.processSingles):
            # Sky objects and single peaks go on as isolated sources (as in scarlet's task).
            parent.set("deblend_skipped_isPseudo" if pseudo else "deblend_skipped_isolatedParent", True)
            self._addIsolated(parent, objects, modelData)
            return "isolated", 0

        box = footprint.getBBox()
        xy0 = patch.xy0
        cutBox = blend_box((box.getMinX() - xy0[0], box.getMinY() - xy0[1],
                            box.getMaxX() + 1 - xy0[0], box.getMaxY() + 1 - xy0[1]),
                           patch.margin, patch.shape)
        reason = skip_reason(n_peaks=nPeaks, bbox_area=box.getArea(),
                             bbox_size=max(box.getWidth(), box.getHeight()),
                             is_pseudo=False, masked=self._maskedFractions(footprint, patch, cutBox),
                             max_peaks=self.config.maxNumberOfPeaks, max_area=self.config.maxFootprintArea,
                             max_size=self.config.maxFootprintSize, mask_limits=dict(self.config.maskLimits),
                             max_area_times_peaks=self.config.maxAreaTimesPeaks)
        if reason is not None:
            parent.set(reason, True)
            self._skip(parent, "deblend_skipped", patch.coadds, reason)
            return "skipped", 0

        start = time.perf_counter()
        firstRecord = len(objects)
        try:
            nChild = self._deblendParent(parent, patch, cutBox, objects, modelData)
        except Exception as error:
            if not self.config.catchFailures:
                raise
            del objects[firstRecord:]  # no orphan children
            modelData.blends.pop(parent.getId(), None)
            name = type(error).__name__
            self.log.warning("Parent %d failed to deblend: %s: %s", parent.getId(), name, error)
            parent.set("deblend_error", name[:ERROR_SIZE])
            self._skip(parent, "deblend_failed", patch.coadds, name)
            parent.set("deblend_runtime", 1000.0 * (time.perf_counter() - start))
            return "failed", 0
        parent.set("deblend_runtime", 1000.0 * (time.perf_counter() - start))
        return "deblended", nChild

    def _maskedFractions(self, footprint, patch: _Patch, cutBox) -> dict[str, float]:
        """Fraction of the footprint covered by each plane of ``config.maskLimits``."""
        planes = list(self.config.maskLimits)
        if not planes:
            return {}
        _, _, _, maskArrays = coaddCutout(patch.exposures, cutBox, [], patch.scale, planes)
        spans = _spansInBox(footprint, cutBox, patch.xy0)
        return {name: masked_fraction(spans, array) for name, array in maskArrays.items()}

    def _fluxScale(self, networkBands: Sequence[str], exposures: Sequence) -> np.ndarray:
        """Network units per image unit of each network band (1 where there is no coadd)."""
        scale = np.ones(len(networkBands))
        auto = [b for b, e in zip(networkBands, exposures)
                if e is not None and b not in self.config.fluxScale]
        perNanojansky = dict(zip(auto, electrons_per_nanojansky(auto))) if auto else {}
        for k, (band, exposure) in enumerate(zip(networkBands, exposures)):
            if exposure is None:
                continue
            if band in self.config.fluxScale:
                scale[k] = self.config.fluxScale[band]
            else:
                calib = exposure.getPhotoCalib()
                nanojanskyPerUnit = calib.getCalibrationMean() if calib is not None else 1.0
                scale[k] = perNanojansky[band] * nanojanskyPerUnit
        return scale

    def _deblendParent(self, parent, patch: _Patch, cutBox, objects, modelData) -> int:
        """Deblend one parent: the core on arrays, then records and model data; returns its number of
        children."""
        footprint = parent.getFootprint()
        allPeaks = list(footprint.peaks)
        peaks = [p for p in allPeaks if not _isPseudo(p, self.config.pseudoColumns)]
        if not peaks:
            raise RuntimeError("The parent has only pseudo peaks.")
        xy0 = patch.xy0
        cx0, cy0 = cutBox[0], cutBox[1]
        image, variance, bad, _ = coaddCutout(patch.exposures, cutBox, self.config.badMask, patch.scale)
        positions = np.array([(p.getIx() - xy0[0], p.getIy() - xy0[1]) for p in peaks])
        deblendConfig = patch.deblendConfig
        if deblendConfig.conserve_flux and (footprint.getBBox().getArea() * len(peaks)
                                            > self.config.maxConserveAreaTimesPeaks):
            self.log.info("Parent %d is too big to conserve flux: its models are stored.", parent.getId())
            deblendConfig = dataclasses.replace(deblendConfig, conserve_flux=False)
        result = deblend_blend(image, _spansInBox(footprint, cutBox, xy0), positions - (cx0, cy0), self.model,
                               self.model.stamp_size, xy0=(cx0, cy0), bad=bad, variance=variance,
                               config=deblendConfig)

        parentId = parent.getId()
        nChild = len(peaks)
        bbox, parentSpans, _, _ = footprintToArrays(footprint, xy0)
        records = []
        for peak, child, chi2 in zip(peaks, result.children, result.child_chi2):
            record = objects.addNew()
            record.assign(peak, self.peakSchemaMapper)
            record.setParent(parentId)
            record.set("deblend_nChild", 0)
            record.set("deblend_blendId", parentId)
            record.set("deblend_blendNChild", nChild)
            record.set("deblend_peak_center_x", int(peak.getIx()))
            record.set("deblend_peak_center_y", int(peak.getIy()))
            record.set("deblend_peakId", int(peak.getId()))
            record.set("deblend_nComponents", len(patch.present))
            record.set("deblend_chi2", float(chi2))
            record.set("deblend_zeroFlux", bool(child.zero_flux))
            record.set("deblend_edgePixels", bool(touches_edge(child, bbox)))
            record.set("deblend_parentNPeaks", len(allPeaks))
            record.set("deblend_parentNChild", nChild)
            for key in self.toCopyFromParent:
                record.set(key, parent.get(key))
            records.append(record)

        images = result.parent.conserved if deblendConfig.conserve_flux else None
        if images is not None and result.parent.bbox != bbox:
            images = None  # the footprint reaches past the coadd: store the models
        blend = export_blend(result.children, bbox, parentSpans, [r.getId() for r in records],
                             [p.getId() for p in peaks], blend_id=parentId, peaks=positions, xy0=xy0,
                             scale=patch.scale, images=images, band_index=patch.present,
                             floor=self._modelFloor(variance, bad, patch))
        modelData.blends[parentId] = toScarletBlendData(blend)

        parent.set("deblend_nChild", nChild)
        parent.set("deblend_nComponents", nChild * len(patch.present))
        parent.set("deblend_iterations", patch.deblendConfig.iterations)
        parent.set("deblend_chi2", float(result.chi2))
        return nChild

    def _modelFloor(self, variance: np.ndarray, bad: np.ndarray, patch: _Patch) -> np.ndarray | None:
        """``config.modelFloor`` times the noise rms of each stored band, in image units."""
        if self.config.modelFloor <= 0:
            return None
        floor = []
        for k in patch.present:
            good = np.isfinite(variance[k]) & (variance[k] > 0) & ~bad
            noise = np.sqrt(np.median(variance[k][good])) / patch.scale[k] if good.any() else 0.0
            floor.append(self.config.modelFloor * noise)
        return np.array(floor)

    def _addIsolated(self, parent, objects, modelData) -> None:
        """An isolated source: the parent's id and footprint, ``parent = 0``, no model."""
        footprint = parent.getFootprint()
        peak = footprint.peaks[0]
        record = objects.addNew()
        record.assign(peak, self.peakSchemaMapper)
        record.setParent(0)
        record.setId(parent.getId())
        record.setFootprint(footprint)
        record.set("deblend_nChild", 0)
        record.set("deblend_blendId", 0)
        record.set("deblend_blendNChild", 0)
        record.set("deblend_peak_center_x", int(peak.getIx()))
        record.set("deblend_peak_center_y", int(peak.getIy()))
        record.set("deblend_peakId", int(peak.getId()))
        record.set("deblend_nComponents", 0)
        record.set("deblend_parentNPeaks", len(footprint.peaks))
        record.set("deblend_parentNChild", 0)
        for key in self.toCopyFromParent:
            record.set(key, parent.get(key))
        parent.set("deblend_nChild", 0)
        parent.set("deblend_nComponents", 0)
        parent.set("deblend_runtime", 0.0)
        parent.set("deblend_iterations", 0)
        parent.set("deblend_chi2", np.nan)
        if self.config.persistIsolated:
            box = footprint.getBBox()
            modelData.isolated[parent.getId()] = IsolatedSourceData(
                span_array=footprint.spans.asArray(), origin=(box.getMinY(), box.getMinX()),
                peak=(peak.getIy(), peak.getIx()))

    def _skip(self, parent, flag: str, coadds, why: str) -> None:
        """Flag a parent that gives no object rows and mark its pixels NOT_DEBLENDED."""
        self.log.trace("Parent %d not deblended: %s", parent.getId(), why)
        parent.set(flag, True)
        parent.set("deblend_nChild", 0)
        parent.set("deblend_nComponents", 0)
        parent.set("deblend_iterations", 0)
        parent.set("deblend_chi2", np.nan)
        parent.set("deblend_runtime", np.nan)
        if self.config.notDeblendedMask:
            for exposure in coadds:
                mask = exposure.mask
                parent.getFootprint().spans.clippedTo(mask.getBBox()).setMask(
                    mask, mask.getPlaneBitMask(self.config.notDeblendedMask))

"""``deblendCoaddFootprints``: the VAE deblender on a coadd patch (standalone, no afw).

A thin edge around the core: gather the patch's coadds (in the network's band order), the parents, their
peaks and footprints; decide which parents to deblend (limits as scarlet's task: too many peaks, too
large, mostly masked, isolated with ``processSingles`` off); call
`lsst.meas.extensions.vae.deblend.field.deblend_field` on groups of about ``peaksPerCall`` peaks (parents
in detection order, so a group is a strip of the patch), each on the cut-out that holds it, so that stamps
of different parents share network batches while memory stays bounded; turn the results into catalogues
and model data.  Stored child models are clipped to their parent's box, as scarlet's are
(``deblend_modelFlux_*`` is the flux of the whole model).

Every parent that goes in comes out in ``object_parent_patch``: deblended (``deblend_nChild`` > 0, or an
isolated source that was modelled), or flagged (``deblend_skipped*``, ``deblend_failed`` with
``deblend_error``).  When the batched call raises and ``catchFailures`` is set, parents are deblended one
by one on cutouts and only those that raise are flagged.  A parent whose models are not finite is flagged
as failed too.

Objects (``object_deblend``): children of deblended blends (new ids, ``parent`` = parent id) and isolated
sources (``id`` = parent id, ``parent`` = 0; modelled or not).  Skipped and failed blends give no object
rows.  ``deblend_runtime`` of a batched parent is the batch's time shared in proportion to its peaks.
"""

from __future__ import annotations

__all__ = ["VaeDeblendConnections", "DeblendConfigBase", "VaeDeblendConfig", "VaeDeblendTask"]

import dataclasses
import math
import time
from typing import Any

import numpy as np
from astropy.table import Table
from lsst.pex.config import ChoiceField, Field, ListField
from lsst.pipe.base import (InputQuantizedConnection, OutputQuantizedConnection, PipelineTask,
                            PipelineTaskConfig, PipelineTaskConnections, QuantumContext, Struct)
from lsst.pipe.base import connectionTypes as cT
from lsst.utils.timer import timeMethod

from ...deblend.field import REFINE_STEPS_DEFAULT, Child, DeblendConfig, Parent, binned_reach, deblend_field
from ...deblend.fit import FIT_STEPS_DEFAULT, median_variance
from ...deblend.psf import stack_psf_images
from ...deblend.skip import SKIP_MASKED, SKIP_TOO_BIG, SKIP_TOO_MANY_PEAKS, SkipLimits, skip_reasons
from .coadd import Coadd, FootprintImage
from ...measure.detection import footprint_boxes
from .detect_task import BAND_DIMENSIONS, PATCH_DIMENSIONS
from .models import BlendModel, ChildModel, VaeModelData

# Parent flag columns, in a fixed order (object_parent_patch of every patch is stacked downstream).
PARENT_FLAGS = ("deblend_skipped", "deblend_skipped_isolatedParent", "deblend_skipped_tooManyPeaks",
                "deblend_skipped_parentTooBig", "deblend_skipped_masked", "deblend_failed",
                "deblend_missingBand")
CHILD_FLAGS = ("deblend_edgePixels", "deblend_masked", "deblend_refined", "deblend_zeroFlux",
               "deblend_peakOutsideImage", "deblend_peakOutsideFootprint", "deblend_binned")


class VaeDeblendConnections(PipelineTaskConnections, dimensions=PATCH_DIMENSIONS):
    coadds = cT.Input(
        doc="Coadd of each band of the patch.",
        name="deep_coadd",
        storageClass="VaeCoadd",
        dimensions=BAND_DIMENSIONS,
        multiple=True,
    )
    mergedDetections = cT.Input(
        doc="Parents from detection.",
        name="object_detection_merged",
        storageClass="ArrowAstropy",
        dimensions=PATCH_DIMENSIONS,
    )
    peaks = cT.Input(
        doc="Peaks of the parents.",
        name="object_detection_peaks",
        storageClass="ArrowAstropy",
        dimensions=PATCH_DIMENSIONS,
    )
    footprints = cT.Input(
        doc="Footprints of the parents as a label image.",
        name="object_detection_footprints",
        storageClass="VaeFootprints",
        dimensions=PATCH_DIMENSIONS,
    )
    deblendedCatalog = cT.Output(
        doc="Deblended children and isolated sources (no parents), sorted by id.",
        name="object_deblend",
        storageClass="ArrowAstropy",
        dimensions=PATCH_DIMENSIONS,
    )
    objectParents = cT.Output(
        doc="Every input parent with its deblending flags.",
        name="object_parent_patch",
        storageClass="ArrowAstropy",
        dimensions=PATCH_DIMENSIONS,
    )
    vaeModelData = cT.Output(
        doc="Per-band model of every child, by parent.",
        name="object_vae_models",
        storageClass="VaeModelData",
        dimensions=PATCH_DIMENSIONS,
    )


class DeblendConfigBase(PipelineTaskConfig, pipelineConnections=VaeDeblendConnections):
    """What every deblender of the standalone pipeline shares: the skip limits, the masks, isolated
    sources, failures and flux conservation (`VaeDeblendConfig`, `ScarletDeblendConfig`)."""

    doConserveFlux = Field[bool](
        doc="Split each parent's observed flux among its children (deblend_conservedFlux_*).", default=True)
    peaksPerCall = Field[int](doc="Peaks of the parents deblended together in one call of the core "
                              "(bounds the memory of their stamps and models).", default=2000)
    maxNumberOfPeaks = Field[int](
        doc="Skip parents with more peaks than this (0: no limit).", default=600)
    maxFootprintArea = Field[float](
        doc="Skip parents whose footprint's bounding box covers more pixels than this (0: no limit).",
        default=2e6)
    maxFootprintSize = Field[int](
        doc="Skip parents whose footprint's bounding box is longer than this (0: no limit).", default=0)
    maxAreaTimesPeaks = Field[int](
        doc="Skip parents whose bounding-box area times number of peaks is above this (0: no limit).",
        default=1_000_000_000)
    maxMaskedFraction = Field[float](
        doc="Skip parents with a larger fraction of their footprint in badMask pixels.", default=0.5)
    badMask = ListField[str](
        doc="Mask planes of pixels that the deblender ignores (zero in the network input, no weight in a fit).",
        default=["BAD", "CR", "NO_DATA", "SAT", "SUSPECT", "EDGE"])
    processSingles = Field[bool](doc="Also model isolated sources (parents with one peak).", default=True)
    catchFailures = Field[bool](
        doc="Flag parents whose deblending raises (deblend_failed, deblend_error) and go on; "
            "otherwise the exception stops the patch.", default=True)


class VaeDeblendConfig(DeblendConfigBase):
    weights = Field[str](doc="Shipped weights name (e.g. 'lsst') or a .safetensors path.", default="lsst")
    device = Field[str](doc="Torch device ('cpu', 'cuda', ...); empty: the GPU when there is one.",
                        default="")
    batchSize = Field[int](doc="Stamps per network call; 0: 64 on a CPU (its caches hold them), 256 on a "
                           "GPU.", default=0)
    numThreads = Field[int](doc="Torch CPU threads; 0 leaves torch's default.", default=0)
    precision = ChoiceField[str](
        doc="Arithmetic of the network passes (docs/benchmarks.md: bfloat16 measured faster at the same "
            "accuracy on a CPU with AVX512-BF16; it is emulated, and slow, on CPUs without it).",
        allowed={"float32": "float32 throughout", "bfloat16": "bfloat16 convolutions and matrix products"},
        default="float32")
    iterations = Field[int](
        doc="Passes over the peaks: 1 = brightest-first only; each further pass re-models every galaxy "
            "on the image minus all the other models.", default=2)
    doRefineCentroids = Field[bool](doc="Re-centre stamps on the models' light centroids.", default=True)
    maxCentroidShift = Field[float](doc="Largest centroid correction, pixels.", default=3.0)
    maxNeighbours = Field[int](doc="Most neighbour peaks given to the network per stamp.", default=8)
    fitSteps = Field[int](
        doc="Adam steps of the joint latent fit of each parent's galaxies to its pixels, through the "
            "frozen decoder (0: the encoder's models as they are). More accurate, and slower: see "
            "docs/benchmarks.md.", default=FIT_STEPS_DEFAULT)
    fitLearningRate = Field[float](doc="Adam's step of the latent fit, in units of the weights' "
                                   "latent spread.", default=0.1)
    fitPriorWeight = Field[float](doc="Weight of the latent prior in the fit.", default=1.0)
    fitAmplitudeSigma = Field[float](
        doc="Width of the prior on the log of each child's free per-band amplitude in the fit "
            "(0: no free amplitudes).", default=0.3)
    fitFluxPrior = Field[float](
        doc="Width of the prior that holds each child's flux in every band around the encoder's in the fit, "
            "in units of the child's own flux noise and fitFluxFraction of its flux in quadrature, so that a "
            "faint child cannot take its neighbour's light (0: no flux prior, the plain fit).", default=1.0)
    fitFluxFraction = Field[float](
        doc="The part of the flux prior's width proportional to the encoder's flux (bright children's "
            "pixels still correct it).", default=0.03)
    fitAccept = Field[bool](
        doc="After the fit, give the encoder's model back to every child whose share of the parent's "
            "chi-square got worse, or that took light from a neighbour whose share got worse.", default=True)
    refineSteps = Field[int](
        doc="Steps of the learned refinement of each galaxy's code and amplitudes (the weights' "
            "NAME.refiner.safetensors; 0: none, the encoder's models). Replaces the latent fit: set it to 0 "
            "with fitSteps.", default=REFINE_STEPS_DEFAULT)
    doBinLarge = Field[bool](
        doc="Model galaxies larger than the stamp on a stamp binningFactors times wider, binned "
            "(deblend_binned, deblend_binFactor; docs/model.md).", default=True)
    binningFactors = ListField[int](
        doc="Binning factors to try, increasing (odd factors keep the peak at a binned pixel's centre).",
        default=[3, 5])
    binEdgeFraction = Field[float](
        doc="A child is modelled on the next coarser stamp when more than this fraction of its model's "
            "light lies in the stamp's outer ring (of binEdgeWidth pixels) and its parent's footprint "
            "reaches the stamp's border.", default=0.02)
    binEdgeWidth = Field[int](doc="Width of that ring, pixels of the stamp the model was made on.",
                              default=2)
    binEdgeSnr = Field[float](
        doc="... and when that ring's light (over its pixels and the bands) is above this many times its "
            "noise (a spurious peak's faint, diffuse model is not binned).", default=5.0)

    def validate(self) -> None:
        super().validate()
        factors = list(self.binningFactors)
        if any(f < 2 for f in factors) or factors != sorted(set(factors)):
            raise ValueError(f"binningFactors must be increasing integers > 1, got {factors}.")
        if self.refineSteps < 0 or (self.refineSteps > 0 and self.fitSteps > 0):
            raise ValueError(f"refineSteps ({self.refineSteps}) must be >= 0, and 0 when fitSteps "
                             f"({self.fitSteps}) > 0: the latent fit and the learned refinement are "
                             "alternatives (config/vaeFit.py sets both).")


@dataclasses.dataclass
class _Outcome:
    """The deblending result of one parent (patch-pixel coordinates)."""

    parent: Parent | None = None
    children: list[Child] = dataclasses.field(default_factory=list)
    error: str = ""
    runtime_ms: float = 0.0
    iterations: int = 0


def _moved(child: Child, dx: int, dy: int) -> Child:
    """The child with its positions shifted by (dx, dy) pixels."""
    return dataclasses.replace(child, peak=child.peak + [dx, dy], center=(child.center[0] + dx,
                               child.center[1] + dy), origin=(child.origin[0] + dx, child.origin[1] + dy))


def _clipped(child: Child, box: tuple[int, int, int, int]) -> Child:
    """The child with its model clipped to ``box`` (x0, y0, x1, y1) and copied out of the core's arrays."""
    ox, oy = child.origin
    h, w = child.model.shape[-2:]
    x0, y0, x1, y1 = max(box[0], ox), max(box[1], oy), min(box[2], ox + w), min(box[3], oy + h)
    if x1 <= x0 or y1 <= y0:  # no overlap (a peak outside its footprint's box): keep the whole stamp
        return dataclasses.replace(child, model=child.model.copy())
    return dataclasses.replace(child, model=child.model[:, y0 - oy: y1 - oy, x0 - ox: x1 - ox].copy(),
                               origin=(x0, y0))


class VaeDeblendTask(PipelineTask):
    """Deblend every parent of a coadd patch with the VAE deblender.

    Parameters
    ----------
    model : callable, optional
        A stamp model with ``bands`` and ``stamp_size`` (a `VaeDeblender`), used instead of loading
        ``config.weights`` (tests, notebooks).
    **kwargs
        As for `lsst.pipe.base.PipelineTask`.
    """

    ConfigClass = VaeDeblendConfig
    _DefaultName = "deblendCoaddFootprints"
    config: VaeDeblendConfig

    def __init__(self, *, model: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._model = model

    @property
    def model(self) -> Any:
        """The stamp model (loaded on first use)."""
        if self._model is None:
            if self.config.numThreads > 0:
                import torch

                torch.set_num_threads(self.config.numThreads)
            from ...deblend.network import load_deblender

            self._model = load_deblender(self.config.weights, self.config.device or None,
                                         self.config.batchSize, precision=self.config.precision)
        if self.config.refineSteps > 0 and hasattr(self._model, "refiner"):
            _ = self._model.refiner  # a missing refiner: one clear error, not one per parent
        return self._model

    def runQuantum(self, butlerQC: QuantumContext, inputRefs: InputQuantizedConnection,
                   outputRefs: OutputQuantizedConnection) -> None:
        inputs = butlerQC.get(inputRefs)
        outputs = self.run(**inputs)
        butlerQC.put(outputs, outputRefs)

    @timeMethod
    def run(self, coadds: list[Coadd], mergedDetections: Table, peaks: Table,
            footprints: FootprintImage) -> Struct:
        """Deblend the parents of a patch.

        Parameters
        ----------
        coadds : `list` [`Coadd`]
            One per band (at least the network's bands), on one pixel grid.
        mergedDetections : `astropy.table.Table`
            Parents: ``id``, ``footprint_area`` (and whatever detection wrote).
        peaks : `astropy.table.Table`
            Peaks: ``id``, ``parent``, ``x``, ``y`` (patch pixels), brightest first within a parent.
        footprints : `FootprintImage`
            The parents' footprints.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``deblendedCatalog``, ``objectParents`` (`astropy.table.Table`) and ``vaeModelData``
            (`VaeModelData`).
        """
        model = self.model
        bands = tuple(model.bands)
        image, bad, bbox, missing_bands = self._gather(coadds, bands, footprints)
        noise = self._noise(coadds, bands, bad, missing_bands)
        psf = self._psf(coadds, bands) if getattr(model, "conditioned", False) else None
        x0, y0 = bbox[0], bbox[1]
        labels = footprints.labels
        boxes, _ = footprint_boxes(labels, len(footprints.ids))  # by label - 1, array pixels
        n = len(mergedDetections)
        parent_ids = np.asarray(mergedDetections["id"], dtype=np.int64)
        label_of = {int(pid): k + 1 for k, pid in enumerate(footprints.ids)}
        missing = [int(pid) for pid in parent_ids if int(pid) not in label_of]
        if missing:
            raise ValueError(f"{len(missing)} parents have no footprint, e.g. {missing[0]}.")
        parent_labels = np.array([label_of[int(pid)] for pid in parent_ids], dtype=np.int64)

        # Peak rows grouped by parent (in the parents' order), detection order kept within a parent.
        peak_parent = np.asarray(peaks["parent"], dtype=np.int64)
        order = np.argsort(peak_parent, kind="stable")
        lo = np.searchsorted(peak_parent[order], parent_ids, side="left")
        hi = np.searchsorted(peak_parent[order], parent_ids, side="right")
        members = {int(pid): order[a:b] for pid, a, b in zip(parent_ids, lo, hi)}
        unknown = set(np.unique(peak_parent)) - set(parent_ids.tolist())
        if unknown:
            raise ValueError(f"Peaks of {len(unknown)} parents that detection does not list, "
                             f"e.g. {min(unknown)}.")
        peak_xy = np.stack([np.asarray(peaks["x"], dtype=np.float64) - x0,
                            np.asarray(peaks["y"], dtype=np.float64) - y0], axis=1).reshape(-1, 2)
        n_peaks = (hi - lo).astype(np.int64)
        area = np.bincount(labels.ravel(), minlength=len(footprints.ids) + 1)[parent_labels]
        masked_area = np.bincount(labels[bad], minlength=len(footprints.ids) + 1)[parent_labels]
        with np.errstate(invalid="ignore", divide="ignore"):
            masked_fraction = np.where(area > 0, masked_area / np.maximum(area, 1), 0.0)
        parent_flux = np.stack([np.bincount(labels.ravel(), weights=image[b].ravel(),
                                            minlength=len(footprints.ids) + 1)[parent_labels]
                                for b in range(len(bands))], axis=1) if n else np.zeros((0, len(bands)))

        flags = {name: np.zeros(n, dtype=bool) for name in PARENT_FLAGS}
        flags["deblend_missingBand"][:] = bool(missing_bands)
        # The skip rules shared with the Rubin task (deblend/skip.py); the masked fraction is that of the
        # union of the badMask planes, limited by maxMaskedFraction.
        extent = np.clip(boxes[parent_labels - 1, 2:] - boxes[parent_labels - 1, :2], 0, None)  # (w, h)
        reasons = skip_reasons(n_peaks=n_peaks, bbox_area=np.prod(extent, axis=1),
                               bbox_size=np.max(extent, axis=1, initial=0),
                               masked={"badMask": masked_fraction},
                               limits=SkipLimits(max_peaks=self.config.maxNumberOfPeaks,
                                                 max_area=int(self.config.maxFootprintArea),
                                                 max_size=self.config.maxFootprintSize,
                                                 max_area_times_peaks=self.config.maxAreaTimesPeaks,
                                                 mask_limits={"badMask": self.config.maxMaskedFraction}))
        for name in (SKIP_TOO_MANY_PEAKS, SKIP_TOO_BIG, SKIP_MASKED):
            flags[name] = reasons == name
        isolated = n_peaks == 1
        flags["deblend_skipped_isolatedParent"] = isolated & (not self.config.processSingles)
        no_peaks = n_peaks == 0
        if no_peaks.any():
            self.log.warning("%d parents have no peak; they are skipped.", int(no_peaks.sum()))
        skipped = (flags["deblend_skipped_tooManyPeaks"] | flags["deblend_skipped_parentTooBig"]
                   | flags["deblend_skipped_masked"] | flags["deblend_skipped_isolatedParent"] | no_peaks)
        flags["deblend_skipped"] = skipped
        todo = np.flatnonzero(~skipped)

        # Parents go through the core in groups of about `peaksPerCall` peaks: large enough to fill
        # network batches, small enough to bound the memory of all their stamps and models.
        sizes = np.array([len(members[pid]) for pid in members])[todo] if len(todo) else np.zeros(0, int)
        group = np.cumsum(sizes) // max(self.config.peaksPerCall, 1)
        outcomes = {}
        for g in np.unique(group):
            outcomes.update(self._deblend_all(image, bad, labels, boxes, parent_labels, members, peak_xy,
                                              todo[group == g], noise, psf))
        for i, outcome in outcomes.items():
            for child in outcome.children:  # no light is invented in a band the patch lacks
                for band in missing_bands:
                    b = bands.index(band)
                    child.model[b] = 0.0
                    child.flux_model[b] = child.flux_conserved[b] = 0.0
            finite = all(np.isfinite(c.model).all() and np.isfinite(c.flux_conserved).all()
                         for c in outcome.children)
            if not outcome.error and not finite:
                outcome.error = "NonFiniteModel"
            if outcome.error:
                flags["deblend_failed"][i] = True
        n_failed = int(flags["deblend_failed"].sum())
        self.log.info("Deblended %d of %d parents (%d skipped, %d failed) with %d peaks.",
                      len(todo) - n_failed, n, int(skipped.sum()), n_failed, int(n_peaks[todo].sum()))

        objects, blends, n_child = self._objects(bands, mergedDetections, peaks, labels, boxes, parent_labels,
                                                 members, isolated, flags, outcomes, parent_flux, (x0, y0))
        parents_out = self._parents(bands, mergedDetections, n_peaks, n_child, masked_fraction, flags,
                                    outcomes, parent_flux)
        metadata = {**self._metadata(model), "bbox": list(bbox), "missing_bands": list(missing_bands)}
        return Struct(deblendedCatalog=objects, objectParents=parents_out,
                      vaeModelData=VaeModelData(bands=bands, blends=blends, metadata=metadata))

    def _gather(self, coadds: list[Coadd], bands: tuple[str, ...], footprints: FootprintImage
                ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int], tuple[str, ...]]:
        """The (bands, h, w) image in the network's band order, the bad-pixel mask, the box and the
        network's bands that the patch lacks (zero in the image; their children are flagged)."""
        by_band = {c.band: c for c in coadds}
        missing = tuple(b for b in bands if b not in by_band)
        if len(missing) == len(bands):
            raise ValueError(f"{self._deblender_name()} deblends bands {''.join(bands)}; the "
                             f"patch has none of the bands ({''.join(sorted(by_band)) or 'no coadd'}).")
        if missing:
            self.log.warning("The patch has no %s coadd: the deblender sees zeros there, and every object "
                             "is flagged deblend_missingBand.", "".join(missing))
        extra = sorted(set(by_band) - set(bands))
        if extra:
            self.log.info("Bands %s are not used by the deblender.", "".join(extra))
        chosen = [by_band[b] for b in bands if b in by_band]
        bbox = chosen[0].bbox
        for coadd in chosen:
            if coadd.bbox != bbox:
                raise ValueError(f"Coadd {coadd.band} covers {coadd.bbox}, not {bbox}: the deblender needs "
                                 "every band on one pixel grid.")
        if footprints.bbox != bbox:
            raise ValueError(f"Footprints cover {footprints.bbox}, the coadds {bbox}.")
        shape = chosen[0].image.shape
        bad = np.zeros(shape, dtype=bool)
        image = np.zeros((len(bands),) + shape, dtype=np.float32)
        for b, band in enumerate(bands):
            coadd = by_band.get(band)
            if coadd is None:
                continue
            bits = coadd.mask_bits(self.config.badMask)
            if bits:
                bad |= (coadd.mask & bits) != 0
            # NaN pixels would spread through residuals and conservation, and a pixel without a positive
            # variance has no measurement: zero them and treat them as masked.
            unusable = ~(np.isfinite(coadd.image) & np.isfinite(coadd.variance) & (coadd.variance > 0))
            if unusable.any():
                self.log.info("%d pixels of band %s are not finite or have no positive variance: masked.",
                              int(unusable.sum()), band)
                bad |= unusable
            image[b] = np.where(unusable, 0.0, coadd.image)
        return image, bad, bbox, missing

    def _deblender_name(self) -> str:
        """The deblender, for messages."""
        return f"The weights {self.config.weights!r}"

    def _metadata(self, model: Any) -> dict[str, Any]:
        """What the model data records of the deblender and its settings."""
        return {"weights": self.config.weights,
                "weights_sha256": getattr(model, "metadata", {}).get("sha256", ""),
                "stamp_size": int(model.stamp_size), "iterations": self.config.iterations,
                "doRefineCentroids": self.config.doRefineCentroids,
                "doConserveFlux": self.config.doConserveFlux, "fitSteps": self.config.fitSteps,
                "refineSteps": self.config.refineSteps,
                "doBinLarge": self.config.doBinLarge, "binningFactors": list(self.config.binningFactors)}

    def _iterations(self, outcome: _Outcome) -> int:
        """``deblend_iterations`` of a parent that went through the deblender."""
        return self.config.iterations

    def _noise(self, coadds: list[Coadd], bands: tuple[str, ...], bad: np.ndarray,
               missing: tuple[str, ...]) -> np.ndarray | None:
        """The per-band noise the deblender is given (the latent fit's and a PSF- and noise-aware network's;
        `None`: none needed)."""
        needed = (self.config.fitSteps > 0 or self.config.refineSteps > 0
                  or getattr(self.model, "conditioned", False))
        return self._noise_variance(coadds, bands, bad, missing) if needed else None

    @staticmethod
    def _psf(coadds: list[Coadd], bands: tuple[str, ...]) -> np.ndarray:
        """Each band's coadd PSF image, on one odd grid (bands, p, p), summing to 1; a band without a coadd
        borrows another band's PSF (its image is all zeros: its PSF only has to be a valid one)."""
        by_band = {c.band: c.psf for c in coadds}
        return stack_psf_images([by_band.get(band) for band in bands])

    def _noise_variance(self, coadds: list[Coadd], bands: tuple[str, ...], bad: np.ndarray,
                        missing: tuple[str, ...] = ()) -> np.ndarray | None:
        """Each band's median variance over good pixels (the latent fit's noise); `None` if a band has
        no usable variance (the core then estimates it from the sky pixels)."""
        if missing:
            return None
        by_band = {c.band: c for c in coadds}
        values = [median_variance(by_band[b].variance[None], bad) for b in bands]
        if any(v is None for v in values):
            self.log.warning("No usable variance plane: the latent fit estimates the noise from the image.")
            return None
        return np.concatenate(values)

    def _deblend_config(self) -> DeblendConfig:
        return DeblendConfig(iterations=self.config.iterations,
                             refine_centroids=self.config.doRefineCentroids,
                             max_centroid_shift=self.config.maxCentroidShift,
                             conserve_flux=self.config.doConserveFlux, n_samples=0,
                             keep_conserved_images=False, fit_steps=self.config.fitSteps,
                             fit_learning_rate=self.config.fitLearningRate,
                             fit_prior_weight=self.config.fitPriorWeight,
                             fit_amplitude_sigma=self.config.fitAmplitudeSigma,
                             fit_flux_prior=self.config.fitFluxPrior,
                             fit_flux_fraction=self.config.fitFluxFraction, fit_accept=self.config.fitAccept,
                             refine_steps=self.config.refineSteps,
                             bin_large=self.config.doBinLarge,
                             binning_factors=tuple(self.config.binningFactors),
                             bin_edge_fraction=self.config.binEdgeFraction,
                             bin_edge_width=self.config.binEdgeWidth,
                             bin_edge_snr=self.config.binEdgeSnr)

    @timeMethod
    def _deblend_all(self, image: np.ndarray, bad: np.ndarray, labels: np.ndarray, boxes: np.ndarray,
                     parent_labels: np.ndarray,
                     members: dict[int, np.ndarray], peak_xy: np.ndarray, todo: np.ndarray,
                     noise: np.ndarray | None = None, psf: np.ndarray | None = None) -> dict[int, _Outcome]:
        """Deblend the parents ``todo`` (row indices) in one batched call; parent by parent on failure."""
        if len(todo) == 0:
            return {}
        parent_ids = list(members)
        try:
            return self._deblend_region(image, bad, labels, boxes, parent_labels, members, peak_xy, todo,
                                        noise, psf)
        except Exception as error:
            if not self.config.catchFailures:
                raise
            self.log.warning("Batched deblending of %d parents failed (%s: %s); retrying parent by parent.",
                             len(todo), type(error).__name__, error)
        outcomes = {}
        for i in todo:
            start = time.perf_counter()
            try:
                outcomes.update(self._deblend_region(image, bad, labels, boxes, parent_labels, members,
                                                     peak_xy, np.array([i]), noise, psf))
            except Exception as error:
                self.log.warning("Deblending parent %d failed: %s: %s", parent_ids[i], type(error).__name__,
                                 error)
                outcomes[int(i)] = _Outcome(error=type(error).__name__,
                                            runtime_ms=1e3 * (time.perf_counter() - start))
        return outcomes

    def _deblend_region(self, image: np.ndarray, bad: np.ndarray, labels: np.ndarray, boxes: np.ndarray,
                        parent_labels: np.ndarray, members: dict[int, np.ndarray], peak_xy: np.ndarray,
                        todo: np.ndarray, noise: np.ndarray | None = None,
                        psf: np.ndarray | None = None) -> dict[int, _Outcome]:
        """Deblend the parents ``todo`` in one call of the core on the cut-out that holds them.

        Working on the cut-out (the parents' boxes grown by half a stamp and the largest centroid shift)
        bounds the core's whole-image copies; results come back in patch-array pixels, and each child's
        model is clipped to its parent's box (as scarlet's models are), which bounds the model data.
        """
        parent_ids = list(members)
        rows = [members[parent_ids[i]] for i in todo]
        peak_rows = np.concatenate(rows)
        peak_labels = np.concatenate([np.full(len(r), parent_labels[i]) for r, i in zip(rows, todo)])
        chosen = boxes[parent_labels[todo] - 1]
        config = self._deblend_config()
        # Half a stamp, the centroid shift and what a binned stamp reaches farther.
        margin = (self.model.stamp_size // 2 + int(math.ceil(self.config.maxCentroidShift)) + 1
                  + binned_reach(self.model.stamp_size, config))
        h, w = labels.shape
        # The cut-out holds the parents' boxes and all their peaks (a peak may lie off its footprint).
        xy = peak_xy[peak_rows]
        lo = np.minimum(chosen[:, :2].min(axis=0), np.floor(xy.min(axis=0)).astype(np.int64)) - margin
        hi = np.maximum(chosen[:, 2:].max(axis=0), np.ceil(xy.max(axis=0)).astype(np.int64) + 1) + margin
        cx0, cy0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
        cx1, cy1 = min(int(hi[0]), w), min(int(hi[1]), h)
        start = time.perf_counter()
        # Every parent's footprint goes in (not only those deblended here): each parent is deblended on
        # its own pixels, so its children do not depend on how the parents are grouped into calls.
        children, parents = deblend_field(image[:, cy0:cy1, cx0:cx1], peak_xy[peak_rows] - [cx0, cy0],
                                          self.model, self.model.stamp_size, parents=peak_labels,
                                          footprints=labels[cy0:cy1, cx0:cx1],
                                          bad=bad[cy0:cy1, cx0:cx1], config=config,
                                          max_neighbours=self.config.maxNeighbours, variance=noise, psf=psf)
        elapsed_ms = 1e3 * (time.perf_counter() - start)
        by_label = {p.label: p for p in parents}
        outcomes = {}
        offset = 0
        for r, i in zip(rows, todo):
            label = int(parent_labels[i])
            bx0, by0, bx1, by1 = by_label[label].bbox
            parent = dataclasses.replace(by_label[label], bbox=(bx0 + cx0, by0 + cy0, bx1 + cx0, by1 + cy0))
            box = tuple(int(v) for v in boxes[label - 1])
            outcomes[int(i)] = _Outcome(
                parent=parent,
                children=[_clipped(_moved(c, cx0, cy0), box) for c in children[offset: offset + len(r)]],
                runtime_ms=elapsed_ms * len(r) / len(peak_rows))
            offset += len(r)
        return outcomes

    def _objects(self, bands: tuple[str, ...], detections: Table, peaks: Table, labels: np.ndarray,
                 boxes: np.ndarray, parent_labels: np.ndarray, members: dict[int, np.ndarray],
                 isolated: np.ndarray,
                 flags: dict[str, np.ndarray], outcomes: dict[int, _Outcome], parent_flux: np.ndarray,
                 xy0: tuple[int, int]) -> tuple[Table, dict[int, BlendModel], np.ndarray]:
        """The object catalogue, the model data and each parent's number of children."""
        x0, y0 = xy0
        parent_ids = np.asarray(detections["id"], dtype=np.int64)
        next_id = int(parent_ids.max()) + 1 if len(parent_ids) else 1
        peak_ids = np.asarray(peaks["id"], dtype=np.int64)
        peak_x = np.asarray(peaks["x"], dtype=np.int64)
        peak_y = np.asarray(peaks["y"], dtype=np.int64)
        peak_snr = np.asarray(peaks["detection_snr"], dtype=np.float64) if "detection_snr" in peaks.colnames \
            else np.full(len(peaks), np.nan)
        rows: list[dict[str, Any]] = []
        blends: dict[int, BlendModel] = {}
        n_child = np.zeros(len(parent_ids), dtype=np.int32)
        nan = np.full(len(bands), np.nan)
        for i, pid in enumerate(parent_ids):
            pid = int(pid)
            outcome = outcomes.get(i)
            deblended = outcome is not None and not outcome.error
            if not (isolated[i] or deblended):
                continue  # skipped or failed blends give no objects
            label = int(parent_labels[i])
            bx0, by0, bx1, by1 = (int(v) for v in boxes[label - 1])
            blend = BlendModel(parent_id=pid, bbox=(bx0 + x0, by0 + y0, bx1 + x0, by1 + y0),
                               footprint=labels[by0:by1, bx0:bx1] == label)
            blends[pid] = blend
            peak_rows = members[pid]
            children = outcome.children if deblended else [None] * len(peak_rows)
            if not isolated[i]:
                n_child[i] = len(peak_rows)
            for row, child in zip(peak_rows, children):
                if isolated[i]:
                    object_id, parent = pid, 0
                else:
                    object_id, parent = next_id, pid
                    next_id += 1
                record: dict[str, Any] = {
                    "id": object_id, "parent": parent, "deblend_peakId": int(peak_ids[row]),
                    "deblend_peak_center_x": int(peak_x[row]), "deblend_peak_center_y": int(peak_y[row]),
                    "deblend_peak_snr": float(peak_snr[row]), "deblend_nChild": 0,
                    "deblend_parentNPeaks": len(peak_rows),
                    "deblend_parentNChild": 0 if isolated[i] else len(peak_rows),
                    "deblend_modelled": child is not None,
                    "deblend_missingBand": bool(flags["deblend_missingBand"][i]),
                }
                if child is not None:
                    record["deblend_center_x"] = child.center[0] + x0
                    record["deblend_center_y"] = child.center[1] + y0
                    model_flux, conserved = child.flux_model, child.flux_conserved
                    values = (child.edge, child.masked, child.refined, child.zero_flux, child.outside_image,
                              child.outside_footprint, child.binned > 1)
                    record["deblend_binFactor"] = int(child.binned)
                    for name, value in zip(CHILD_FLAGS, values):
                        record[name] = bool(value)
                    blend.children.append(ChildModel(id=object_id, peak_id=int(peak_ids[row]),
                                                     origin=(child.origin[0] + x0, child.origin[1] + y0),
                                                     peak=(float(peak_x[row]), float(peak_y[row])),
                                                     model=child.model))
                else:  # an isolated source kept as observed: all of its footprint's flux
                    record["deblend_center_x"] = int(peak_x[row])
                    record["deblend_center_y"] = int(peak_y[row])
                    model_flux, conserved = nan, parent_flux[i]
                    for name in CHILD_FLAGS:
                        record[name] = False
                    record["deblend_binFactor"] = 1
                for b, band in enumerate(bands):
                    record[f"deblend_modelFlux_{band}"] = float(model_flux[b])
                    record[f"deblend_conservedFlux_{band}"] = float(conserved[b])
                rows.append(record)
        columns = ["id", "parent", "deblend_peakId", "deblend_peak_center_x", "deblend_peak_center_y",
                   "deblend_peak_snr", "deblend_center_x", "deblend_center_y", "deblend_nChild",
                   "deblend_parentNPeaks", "deblend_parentNChild", "deblend_modelled", "deblend_missingBand",
                   *CHILD_FLAGS, "deblend_binFactor",
                   *[f"deblend_modelFlux_{b}" for b in bands], *[f"deblend_conservedFlux_{b}" for b in bands]]
        dtypes = {"id": np.int64, "parent": np.int64, "deblend_peakId": np.int64, "deblend_modelled": bool,
                  "deblend_missingBand": bool,
                  **{name: np.int32 for name in ("deblend_peak_center_x", "deblend_peak_center_y",
                                                 "deblend_center_x", "deblend_center_y", "deblend_nChild",
                                                 "deblend_parentNPeaks", "deblend_parentNChild",
                                                 "deblend_binFactor")},
                  **{name: bool for name in CHILD_FLAGS}}
        table = Table({name: np.array([r[name] for r in rows], dtype=dtypes.get(name, np.float64))
                       for name in columns})
        table.sort("id")
        return table, blends, n_child

    def _parents(self, bands: tuple[str, ...], detections: Table, n_peaks: np.ndarray, n_child: np.ndarray,
                 masked_fraction: np.ndarray, flags: dict[str, np.ndarray], outcomes: dict[int, _Outcome],
                 parent_flux: np.ndarray) -> Table:
        """The parents catalogue with its flags (fixed columns)."""
        n = len(detections)
        table = Table()
        table["id"] = np.asarray(detections["id"], dtype=np.int64)
        for name in ("tract", "patch", "x", "y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
                     "footprint_area"):
            if name in detections.colnames:
                table[name] = detections[name]
        table["deblend_nPeaks"] = n_peaks.astype(np.int32)
        table["deblend_nChild"] = n_child
        table["deblend_iterations"] = np.array([self._iterations(outcomes[i]) if i in outcomes else 0
                                                for i in range(n)], dtype=np.int32)
        table["deblend_maskedFraction"] = masked_fraction.astype(np.float32)
        for name in PARENT_FLAGS:
            table[name] = flags[name]
        done = [outcomes.get(i, _Outcome()) for i in range(n)]
        table["deblend_error"] = np.array([o.error for o in done] if n else [], dtype=str)
        table["deblend_runtime"] = np.array([o.runtime_ms for o in done], dtype=np.float64)
        for b, band in enumerate(bands):
            table[f"deblend_parentFlux_{band}"] = parent_flux[:, b] if n else np.zeros(0)
        return table

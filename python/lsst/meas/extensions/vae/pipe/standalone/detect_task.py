"""``detectCoaddPeaks``: multi-band footprints and peaks of a coadd patch (standalone, no afw).

Reads every band's ``deep_coadd`` of a patch, detects on their inverse-variance weighted, PSF-matched
sum (`lsst.meas.extensions.vae.measure.detection`), and writes the parents
(``object_detection_merged``), their peaks (``object_detection_peaks``) and the footprints as a label
image (``object_detection_footprints``).  Positions are patch pixels.
"""

from __future__ import annotations

__all__ = ["DetectCoaddPeaksConnections", "DetectCoaddPeaksConfig", "DetectCoaddPeaksTask"]

import numpy as np
from astropy.table import Table
from lsst.pex.config import ConfigField, Field, ListField
from lsst.pipe.base import (InputQuantizedConnection, OutputQuantizedConnection, PipelineTask,
                            PipelineTaskConfig, PipelineTaskConnections, QuantumContext, Struct)
from lsst.pipe.base import connectionTypes as cT
from lsst.utils.timer import timeMethod

from .coadd import Coadd, FootprintImage
from ...measure.detection import detect, psf_sigma
from .ids import IdGeneratorConfig, PatchIdGenerator

PATCH_DIMENSIONS = ("tract", "patch", "skymap")
BAND_DIMENSIONS = ("tract", "patch", "band", "skymap")


class DetectCoaddPeaksConnections(PipelineTaskConnections, dimensions=PATCH_DIMENSIONS):
    coadds = cT.Input(
        doc="Coadd of each band of the patch.",
        name="deep_coadd",
        storageClass="VaeCoadd",
        dimensions=BAND_DIMENSIONS,
        multiple=True,
    )
    mergedDetections = cT.Output(
        doc="Parents (one per merged footprint): id, footprint box and area, number of peaks.",
        name="object_detection_merged",
        storageClass="ArrowAstropy",
        dimensions=PATCH_DIMENSIONS,
    )
    peaks = cT.Output(
        doc="Peaks of every footprint: id, parent, position, detection and per-band significance.",
        name="object_detection_peaks",
        storageClass="ArrowAstropy",
        dimensions=PATCH_DIMENSIONS,
    )
    footprints = cT.Output(
        doc="Footprints of the parents as a label image.",
        name="object_detection_footprints",
        storageClass="VaeFootprints",
        dimensions=PATCH_DIMENSIONS,
    )


class DetectCoaddPeaksConfig(PipelineTaskConfig, pipelineConnections=DetectCoaddPeaksConnections):
    thresholdValue = Field[float](
        doc="Footprint threshold in the detection image, signal-to-noise.", default=5.0)
    minArea = Field[int](doc="Smallest footprint before growing, pixels.", default=5)
    nSigmaToGrow = Field[float](
        doc="Footprint growth in units of the largest PSF sigma of the bands.", default=2.4)
    peakThreshold = Field[float](doc="Lowest peak in the detection image, signal-to-noise.", default=5.0)
    peakMinSeparation = Field[int](
        doc="Half-side of the window a peak must be the maximum of, pixels.", default=2)
    peakMinProminence = Field[float](
        doc="Lowest rise of a peak above the saddle towards a brighter peak, signal-to-noise.", default=2.0)
    badMask = ListField[str](
        doc="Mask planes whose pixels get no weight in the detection image.",
        default=["BAD", "NO_DATA", "SAT"])
    idGenerator = ConfigField(dtype=IdGeneratorConfig, doc="How parent ids are made.")


class DetectCoaddPeaksTask(PipelineTask):
    """Detect merged multi-band footprints and their peaks on a coadd patch."""

    ConfigClass = DetectCoaddPeaksConfig
    _DefaultName = "detectCoaddPeaks"
    config: DetectCoaddPeaksConfig

    def runQuantum(self, butlerQC: QuantumContext, inputRefs: InputQuantizedConnection,
                   outputRefs: OutputQuantizedConnection) -> None:
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        inputs["idGenerator"] = self.config.idGenerator.apply(data_id["tract"], data_id["patch"])
        inputs["tract"], inputs["patch"] = int(data_id["tract"]), int(data_id["patch"])
        outputs = self.run(**inputs)
        butlerQC.put(outputs, outputRefs)

    @timeMethod
    def run(self, coadds: list[Coadd], idGenerator: PatchIdGenerator | None = None, tract: int = 0,
            patch: int = 0) -> Struct:
        """Detect footprints and peaks.

        Parameters
        ----------
        coadds : `list` [`Coadd`]
            One per band, on the same pixel grid.
        idGenerator : `PatchIdGenerator`, optional
            Parent ids (counters from 1 when absent).
        tract, patch : `int`
            Written to the catalogues.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``mergedDetections`` and ``peaks`` (`astropy.table.Table`), ``footprints``
            (`FootprintImage`).
        """
        if not coadds:
            raise ValueError("No coadd to detect on.")
        coadds = sorted(coadds, key=lambda c: c.band)
        bbox = coadds[0].bbox
        for coadd in coadds[1:]:
            if coadd.bbox != bbox:
                raise ValueError(f"Coadd {coadd.band} covers {coadd.bbox}, not {bbox} like {coadds[0].band}: "
                                 "detection needs every band on one pixel grid.")
        bands = [c.band for c in coadds]
        bad = np.zeros(coadds[0].image.shape, dtype=bool)
        for coadd in coadds:
            bits = coadd.mask_bits(self.config.badMask)
            if bits:
                bad |= (coadd.mask & bits) != 0
        grow = self.config.nSigmaToGrow * max(psf_sigma(c.psf) for c in coadds)
        found = detect([c.image for c in coadds], [c.variance for c in coadds],
                       [c.psf for c in coadds], bad=bad, threshold=self.config.thresholdValue,
                       min_area=self.config.minArea, grow_radius=grow,
                       peak_threshold=self.config.peakThreshold,
                       min_separation=self.config.peakMinSeparation,
                       min_prominence=self.config.peakMinProminence)
        n = found.n_footprints
        idGenerator = idGenerator or PatchIdGenerator(release_id=0, tract=tract, patch=patch)
        parent_ids = idGenerator.make(np.arange(1, n + 1))
        x0, y0 = bbox[0], bbox[1]

        n_peaks = np.bincount(found.peak_label, minlength=n + 1)[1:]
        first = np.searchsorted(found.peak_label, np.arange(1, n + 1))  # brightest peak of each parent
        parents = Table()
        parents["id"] = parent_ids
        parents["footprint_label"] = np.arange(1, n + 1, dtype=np.int32)
        parents["tract"] = np.full(n, tract, dtype=np.int32)
        parents["patch"] = np.full(n, patch, dtype=np.int32)
        parents["x"] = (found.peaks[first, 0] + x0).astype(np.float64) if n else np.zeros(0)
        parents["y"] = (found.peaks[first, 1] + y0).astype(np.float64) if n else np.zeros(0)
        for k, name in enumerate(("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")):
            parents[name] = found.bbox[:, k] + (x0 if k % 2 == 0 else y0)
        parents["footprint_area"] = found.area
        parents["footprint_nPeaks"] = n_peaks.astype(np.int32)
        parents["detection_snr"] = found.peak_snr[first] if n else np.zeros(0)

        m = len(found.peaks)
        peaks = Table()
        peaks["id"] = np.arange(1, m + 1, dtype=np.int64)
        peaks["parent"] = parent_ids[found.peak_label - 1] if m else np.zeros(0, dtype=np.int64)
        peaks["x"] = (found.peaks[:, 0] + x0).astype(np.int32)
        peaks["y"] = (found.peaks[:, 1] + y0).astype(np.int32)
        peaks["detection_snr"] = found.peak_snr
        for b, band in enumerate(bands):
            peaks[f"peak_snr_{band}"] = found.band_snr[:, b]
            peaks[f"merge_peak_{band}"] = found.band_snr[:, b] >= self.config.peakThreshold

        self.log.info("Detected %d parents with %d peaks in %d bands (%s).", n, m, len(bands),
                      ", ".join(bands))
        return Struct(mergedDetections=parents, peaks=peaks,
                      footprints=FootprintImage(labels=found.labels, ids=parent_ids, bbox=bbox))

"""``deblendCoaddFootprints`` with scarlet: the scarlet2 deblender of `lsst.meas.extensions.vae.compare.scarlet`
on every parent of a coadd patch (standalone, no afw).

The same connections, outputs and rules as `VaeDeblendTask` (it is that task with another deblender): the
parent flags, skip limits, masks, isolated sources, catalogues and model data are that task's code, so
`MeasureObjectUnforcedTask` measures its output unchanged and a pipeline switches deblender by swapping the
task's class.  Each parent is fitted on its footprint's box (pixels outside its footprint and bad pixels
get no weight, as meas_extensions_scarlet fits a parent), with each band's PSF image; its children's
models are the scarlet models convolved to the observed PSF, on that box.  A parent whose fit raises, or
any of whose sources scarlet could not model (not finite), is flagged ``deblend_failed``
(``deblend_error`` = the exception class or ``ScarletSourceFailed``) and gives no objects.

The box is padded to a size class (multiples of ``boxQuantum`` pixels, with zero weight) and the number
of sources to a power of two before the fit: scenes of one size class share one compiled JAX fit, so a
patch compiles a handful of fits, not one per parent (each compile takes seconds on a CPU).
"""

from __future__ import annotations

__all__ = ["ScarletDeblendConfig", "ScarletDeblendTask"]

import dataclasses
import time
from typing import Any

import numpy as np
from astropy.table import Table
from lsst.pex.config import Field, ListField
from lsst.pipe.base import Struct

from ...deblend.field import Child, Parent
from .coadd import Coadd, FootprintImage
from .deblend_task import DeblendConfigBase, VaeDeblendTask, _Outcome

BAND_ORDER = "ugrizyYJHKw"  # canonical order of the bands a patch may hold (unknown bands go last)


class ScarletDeblendConfig(DeblendConfigBase):
    """scarlet's settings (DRP's ``ScarletDeblendConfig`` defaults) on top of the shared ones."""

    bands = ListField[str](doc="Bands to deblend together, in this order; empty: every band of the patch.",
                           default=[])
    maxIter = Field[int](doc="Most iterations of the fit (DRP maxIter).", default=300)
    minIter = Field[int](doc="Fewest iterations before convergence may stop the fit (DRP minIter).",
                         default=5)
    relativeError = Field[float](doc="Stop when the loss changes by less than this fraction between two "
                                     "iterations (DRP relativeError).", default=1e-3)
    modelPsfSigma = Field[float](doc="Sigma of the Gaussian model-frame PSF, pixels (DRP modelPsfSigma).",
                                 default=0.8)
    doMonotonic = Field[bool](doc="Constrain each morphology to be monotonic about its peak.", default=True)
    backgroundThresh = Field[float](doc="Morphology pixels below this fraction of the background RMS in "
                                        "every band are zero during the fit (DRP backgroundThresh).",
                                    default=1.0)
    initialBackgroundThresh = Field[float](doc="The same for the initial morphology, in units of the "
                                               "detection image's noise (DRP initialBackgroundThresh).",
                                           default=1.0)
    boxSize = Field[int](doc="Side of the window about each peak where a morphology may be non-zero "
                             "(odd, pixels).", default=41)
    boxQuantum = Field[int](doc="Parent boxes are padded to a multiple of this side (pixels), so that "
                                "parents of similar size share a compiled fit.", default=32)

    def validate(self) -> None:
        super().validate()
        if self.boxSize < 3 or self.boxSize % 2 == 0:
            raise ValueError(f"boxSize must be odd and at least 3, got {self.boxSize}.")
        if self.boxQuantum < 1:
            raise ValueError(f"boxQuantum must be positive, got {self.boxQuantum}.")


@dataclasses.dataclass(frozen=True)
class _Bands:
    """What the shared task code asks of a deblender: its bands (and a stamp size for the cut-out margin)."""

    bands: tuple[str, ...]
    stamp_size: int = 1


class ScarletDeblendTask(VaeDeblendTask):
    """Deblend every parent of a coadd patch with scarlet2 (configured as DRP's scarlet_lite).

    Parameters
    ----------
    **kwargs
        As for `lsst.pipe.base.PipelineTask`.
    """

    ConfigClass = ScarletDeblendConfig
    _DefaultName = "deblendCoaddFootprints"
    config: ScarletDeblendConfig

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._planes: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def model(self) -> _Bands:
        """The bands to deblend (set by `run` from the patch and ``bands``)."""
        if self._model is None:
            raise RuntimeError("ScarletDeblendTask.model is only known inside run().")
        return self._model

    def run(self, coadds: list[Coadd], mergedDetections: Table, peaks: Table,
            footprints: FootprintImage) -> Struct:
        """Deblend the parents of a patch (as `VaeDeblendTask.run`, with scarlet)."""
        from ...compare.scarlet import ScarletConfig

        have = {c.band for c in coadds}
        bands = tuple(self.config.bands) or tuple(sorted(have, key=lambda b: (BAND_ORDER.find(b) % 99, b)))
        self._model = _Bands(bands)
        self._scarlet = ScarletConfig(max_iter=self.config.maxIter, min_iter=self.config.minIter,
                                      e_rel=self.config.relativeError,
                                      model_psf_sigma=self.config.modelPsfSigma,
                                      monotonic=self.config.doMonotonic,
                                      conserve_flux=self.config.doConserveFlux,
                                      bg_thresh=self.config.backgroundThresh,
                                      initial_bg_thresh=self.config.initialBackgroundThresh,
                                      box_size=self.config.boxSize)
        # The fit needs each band's variance and PSF, which the shared code does not gather.
        by_band = {c.band: c for c in coadds}
        shape = coadds[0].image.shape if coadds else (0, 0)
        size = max((c.psf.shape[0] for c in coadds), default=1)
        variance = np.full((len(bands),) + shape, np.inf, np.float32)
        psfs = np.zeros((len(bands), size, size), np.float32)
        psfs[:, size // 2, size // 2] = 1.0  # a band the patch lacks: any PSF, its pixels have no weight
        for b, band in enumerate(bands):
            coadd = by_band.get(band)
            if coadd is not None and coadd.image.shape == shape:
                variance[b] = coadd.variance
                k = (size - coadd.psf.shape[0]) // 2
                psfs[b] = 0.0
                psfs[b, k: size - k, k: size - k] = coadd.psf / coadd.psf.sum()
        self._planes = (variance, psfs)
        try:
            return super().run(coadds, mergedDetections, peaks, footprints)
        finally:
            self._planes = None
            self._model = None

    def _deblender_name(self) -> str:
        return "scarlet"

    def _metadata(self, model: Any) -> dict[str, Any]:
        import scarlet2

        return {"deblender": "scarlet2", "scarlet2_version": scarlet2.__version__,
                **{name: getattr(self.config, name) for name in (
                    "maxIter", "minIter", "relativeError", "modelPsfSigma", "doMonotonic", "backgroundThresh",
                    "initialBackgroundThresh", "boxSize", "doConserveFlux")}}

    def _iterations(self, outcome: _Outcome) -> int:
        return outcome.iterations

    def _noise(self, coadds: list[Coadd], bands: tuple[str, ...], bad: np.ndarray,
               missing: tuple[str, ...]) -> None:
        return None

    def _deblend_region(self, image: np.ndarray, bad: np.ndarray, labels: np.ndarray, boxes: np.ndarray,
                        parent_labels: np.ndarray, members: dict[int, np.ndarray], peak_xy: np.ndarray,
                        todo: np.ndarray, noise: np.ndarray | None = None,
                        psf: np.ndarray | None = None) -> dict[int, _Outcome]:
        """Fit each parent ``todo`` on its footprint's box (scarlet reads each band's PSF from the coadds
        itself: ``noise`` and ``psf``, the VAE's inputs, are unused); a parent that fails is flagged, not
        raised."""
        from ...compare.scarlet import scarlet_deblend

        variance, psfs = self._planes
        parent_ids = list(members)
        outcomes = {}
        for i in todo:
            start = time.perf_counter()
            label = int(parent_labels[i])
            x0, y0, x1, y1 = (int(v) for v in boxes[label - 1])
            rows = members[parent_ids[i]]
            # Pad the box to its size class: the extra pixels have no weight and no footprint.
            q = self.config.boxQuantum
            h, w = y1 - y0, x1 - x0
            hp, wp = -(-h // q) * q, -(-w // q) * q
            cut = np.zeros((len(image), hp, wp), np.float32)
            var = np.full((len(image), hp, wp), np.inf, np.float32)
            foot = np.zeros((hp, wp), bool)
            cut[:, :h, :w] = image[:, y0:y1, x0:x1]
            var[:, :h, :w] = np.where(bad[y0:y1, x0:x1], np.inf, variance[:, y0:y1, x0:x1])
            foot[:h, :w] = labels[y0:y1, x0:x1] == label
            xy = peak_xy[rows] - [x0, y0]
            result = scarlet_deblend(cut, var, psfs, xy, foot, self._scarlet)
            runtime_ms = 1e3 * (time.perf_counter() - start)
            if result.failed.any():
                self.log.warning("scarlet could not model %d of the %d sources of parent %d.",
                                 int(result.failed.sum()), len(rows), parent_ids[i])
                outcomes[int(i)] = _Outcome(error="ScarletSourceFailed", runtime_ms=runtime_ms,
                                            iterations=result.iterations)
                continue
            footprint = foot[:h, :w]
            flux = np.where(footprint, image[:, y0:y1, x0:x1], 0.0).sum(axis=(1, 2))
            conserved = result.conserved[:, :, :h, :w]
            children = []
            for k, row in enumerate(rows):
                model = np.ascontiguousarray(result.models[k, :, :h, :w])
                px, py = peak_xy[row]
                ix, iy = int(round(px)), int(round(py))
                inside = 0 <= ix - x0 < w and 0 <= iy - y0 < h
                flux_model = model.sum(axis=(1, 2)).astype(np.float64)
                children.append(Child(
                    parent=label, peak=np.array([px, py]), center=(ix, iy), model=model, origin=(x0, y0),
                    flux_model=flux_model, flux_model_err=np.full(len(image), np.nan),
                    flux_conserved=(conserved[k].sum(axis=(1, 2)).astype(np.float64)
                                    if self.config.doConserveFlux else flux_model),
                    edge=False, masked=bool(bad[y0:y1, x0:x1][footprint].any()), refined=False,
                    zero_flux=not flux_model.sum() > 0, outside_image=False,
                    outside_footprint=not (inside and footprint[iy - y0, ix - x0])))
            outcomes[int(i)] = _Outcome(
                parent=Parent(label=label, bbox=(x0, y0, x1, y1), children=list(range(len(rows))),
                              conserved=conserved if self.config.doConserveFlux else None, flux=flux),
                children=children, runtime_ms=runtime_ms, iterations=result.iterations)
        return outcomes

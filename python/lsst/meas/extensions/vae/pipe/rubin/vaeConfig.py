"""The VAE's own options of the DRP task: ``config.vae`` of `VaeDeblendCoaddConfig`.

Everything the VAE shares with scarlet's deblender (skip limits, mask planes, sky objects, failures,
isolated sources) lives in ``config.multibandDeblend``, scarlet's own ``ScarletDeblendConfig``, so that a
scarlet override (``-c deblendCoaddFootprints:multibandDeblend.maxNumberOfPeaks=...`` or a config file)
works unchanged.  This module needs pex_config only (no afw), so the override files of ``config/`` can be
checked anywhere.
"""

from __future__ import annotations

__all__ = ["VaeDeblendConfig"]

import lsst.pex.config as pexConfig

from ...deblend.field import REFINE_STEPS_DEFAULT, DeblendConfig
from ...deblend.fit import FIT_STEPS_DEFAULT


class VaeDeblendConfig(pexConfig.Config):
    """The network, the algorithm and the model data of the VAE deblender."""

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
        doc="Stamps per network call; 0: 64 on a CPU (its caches hold them), 256 on a GPU.",
        default=0,
    )
    precision = pexConfig.ChoiceField[str](
        doc="Arithmetic of the network passes (docs/benchmarks.md: bfloat16 measured faster at the same "
            "accuracy on a CPU with AVX512-BF16; it is emulated, and slow, on CPUs without it).",
        allowed={"float32": "float32 throughout", "bfloat16": "bfloat16 convolutions and matrix products"},
        default="float32",
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
    maxCentroidShift = pexConfig.Field[float](
        doc="Largest centroid correction, pixels.",
        default=3.0,
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
    fitFluxPrior = pexConfig.Field[float](
        doc="Width of the prior that holds each child's flux in every band around the encoder's in the fit, "
            "in units of the child's own flux noise and fitFluxFraction of its flux in quadrature, so that a "
            "faint child cannot take its neighbour's light (0: no flux prior, the plain fit).",
        default=1.0,
    )
    fitFluxFraction = pexConfig.Field[float](
        doc="The part of the flux prior's width proportional to the encoder's flux (bright children's "
            "pixels still correct it).",
        default=0.03,
    )
    fitAccept = pexConfig.Field[bool](
        doc="After the fit, give the encoder's model back to every child whose share of the parent's "
            "chi-square got worse, or that took light from a neighbour whose share got worse.",
        default=True,
    )
    refineSteps = pexConfig.Field[int](
        doc="Steps of the learned refinement of each child's code and amplitudes (the weights' "
            "NAME.refiner.safetensors; 0: none, the encoder's models). Replaces the latent fit: set it to 0 "
            "with fitSteps.",
        default=REFINE_STEPS_DEFAULT,
    )

    doBinLarge = pexConfig.Field[bool](
        doc="Model galaxies larger than the stamp on a stamp binningFactors times wider, binned "
            "(flag deblend_binned; docs/model.md).",
        default=True,
    )
    binningFactors = pexConfig.ListField[int](
        doc="Binning factors to try, increasing (odd factors keep the peak at a binned pixel's centre).",
        default=[3, 5],
    )
    binEdgeFraction = pexConfig.Field[float](
        doc="A child is modelled on the next coarser stamp when more than this fraction of its model's light "
            "lies in the stamp's outer ring (of binEdgeWidth pixels) and its parent's footprint reaches the "
            "stamp's border.",
        default=0.02,
    )
    binEdgeWidth = pexConfig.Field[int](
        doc="Width of that ring, pixels of the stamp the model was made on.",
        default=2,
    )
    binEdgeSnr = pexConfig.Field[float](
        doc="... and when that ring's light (over its pixels and the bands) is above this many times its "
            "noise (a spurious peak's faint, diffuse model is not binned).",
        default=5.0,
    )

    # The model data
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
    maxConserveAreaTimesPeaks = pexConfig.Field[int](
        doc="With doConserveFlux, parents whose bounding-box area times number of peaks is above this store "
            "their models instead (the conservation holds about 90 bytes per pixel, band and peak).",
        default=20_000_000,
    )

    def validate(self):
        super().validate()
        if self.iterations < 1:
            raise pexConfig.FieldValidationError(VaeDeblendConfig.iterations, self, "must be >= 1")
        if self.batchSize < 0:
            raise pexConfig.FieldValidationError(VaeDeblendConfig.batchSize, self,
                                                 "must be >= 0 (0: the device's default)")
        factors = list(self.binningFactors)
        if any(f < 2 for f in factors) or factors != sorted(set(factors)):
            raise pexConfig.FieldValidationError(VaeDeblendConfig.binningFactors, self,
                                                 "must be increasing integers > 1")
        if self.refineSteps < 0 or (self.refineSteps > 0 and self.fitSteps > 0):
            raise pexConfig.FieldValidationError(VaeDeblendConfig.refineSteps, self,
                                                 "must be >= 0, and 0 when fitSteps > 0: the latent fit "
                                                 "and the learned refinement are alternatives "
                                                 "(config/vaeFit.py sets both)")

    def deblendConfig(self) -> DeblendConfig:
        """The array core's options."""
        return DeblendConfig(iterations=self.iterations, refine_centroids=self.doRefineCentroids,
                             max_centroid_shift=self.maxCentroidShift, conserve_flux=self.doConserveFlux,
                             fit_steps=self.fitSteps, fit_learning_rate=self.fitLearningRate,
                             fit_prior_weight=self.fitPriorWeight,
                             fit_amplitude_sigma=self.fitAmplitudeSigma,
                             fit_flux_prior=self.fitFluxPrior,
                             fit_flux_fraction=self.fitFluxFraction, fit_accept=self.fitAccept,
                             refine_steps=self.refineSteps, bin_large=self.doBinLarge,
                             binning_factors=tuple(self.binningFactors),
                             bin_edge_fraction=self.binEdgeFraction, bin_edge_width=self.binEdgeWidth,
                             bin_edge_snr=self.binEdgeSnr)

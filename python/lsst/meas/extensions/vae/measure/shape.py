"""Galaxy shapes from HSM adaptive moments.

The project reports shapes as the reduced shear ``g = (1 - q) / (1 + q) * exp(2 i beta)`` of the
adaptive-moments ellipse (``galsim.hsm.ShapeData.observed_shape``), measured on PSF-convolved images;
shape errors are differences in g between a model and the noiseless isolated truth with the same PSF.
"""

from __future__ import annotations

__all__ = ["HsmShape", "hsm_shape", "hsm_shapes"]

import dataclasses

import galsim
import numpy as np


@dataclasses.dataclass(frozen=True)
class HsmShape:
    """Adaptive-moments shape of one image.

    Attributes
    ----------
    g1, g2 : `float`
        Reduced shear components (NaN when the fit failed).
    sigma : `float`
        Adaptive-moments size ``det(M)^(1/4)``, pixels (NaN when the fit failed).
    x, y : `float`
        Adaptive-moments centroid, 0-based pixel coordinates (x along columns).
    failed : `bool`
        True when HSM did not converge or the image has no positive flux.
    """

    g1: float
    g2: float
    sigma: float
    x: float
    y: float
    failed: bool


_FAILED = HsmShape(np.nan, np.nan, np.nan, np.nan, np.nan, True)


def hsm_shape(image: np.ndarray, center: tuple[float, float] | None = None,
              weight: np.ndarray | None = None) -> HsmShape:
    """Measure the adaptive-moments shape of a 2-d image.

    Parameters
    ----------
    image : `numpy.ndarray`
        2-d image.
    center : `tuple` [`float`, `float`], optional
        Starting guess of the centroid (x, y), 0-based pixels; the image centre by default.
    weight : `numpy.ndarray`, optional
        Per-pixel weight (0 ignores a pixel).

    Returns
    -------
    shape : `HsmShape`
    """
    image = np.asarray(image, dtype=np.float64)
    if not np.isfinite(image).all() or image.sum() <= 0:
        return _FAILED
    gs_image = galsim.Image(image)  # bounds start at (1, 1)
    guess = None
    if center is not None:
        guess = galsim.PositionD(center[0] + 1.0, center[1] + 1.0)
    gs_weight = None if weight is None else galsim.Image(np.asarray(weight, dtype=np.float64))
    result = galsim.hsm.FindAdaptiveMom(gs_image, weight=gs_weight, guess_centroid=guess, strict=False)
    if result.moments_status != 0:
        return _FAILED
    shear = result.observed_shape
    return HsmShape(g1=shear.g1, g2=shear.g2, sigma=result.moments_sigma,
                    x=result.moments_centroid.x - 1.0, y=result.moments_centroid.y - 1.0, failed=False)


def hsm_shapes(images: np.ndarray, centers: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Shapes of a stack of 2-d images, as arrays ``g1``, ``g2``, ``sigma``, ``x``, ``y``, ``failed``."""
    shapes = [hsm_shape(img, None if centers is None else tuple(centers[i])) for i, img in enumerate(images)]
    return {field.name: np.array([getattr(s, field.name) for s in shapes])
            for field in dataclasses.fields(HsmShape)}

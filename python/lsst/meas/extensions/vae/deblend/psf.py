"""PSF images as the PSF-aware networks take them: one odd, centred grid for every band, each summing
to 1.  Arrays only: the tasks hand in their coadds' PSF images (the standalone `Coadd` PSF, the Rubin
coadd PSF's kernel image at each peak)."""

from __future__ import annotations

__all__ = ["stack_psf_images"]

from collections.abc import Sequence

import numpy as np


def stack_psf_images(images: Sequence[np.ndarray | None], size: int | None = None) -> np.ndarray:
    """Each band's PSF image on one odd grid, centred, summing to 1.

    Parameters
    ----------
    images : sequence of `numpy.ndarray` (p, q) or `None`
        One PSF image per band, odd sides, centred on their central pixel; `None` for a band without a
        coadd, which borrows the first band's PSF that has one (its image is all zeros: its PSF only has to
        be a valid one).
    size : `int`, optional
        Side of the grid (odd): larger images are centre-cropped, smaller ones zero-padded.  By default
        the largest side given.

    Returns
    -------
    psf : `numpy.ndarray` (bands, size, size), float32

    Raises
    ------
    ValueError
        No band has a PSF, a side is even, or an image is not finite or has no positive sum.
    """
    given = [np.asarray(image, dtype=np.float64) for image in images if image is not None]
    if not given:
        raise ValueError("No band has a PSF image.")
    for image in given:
        if image.ndim != 2 or image.shape[0] % 2 == 0 or image.shape[1] % 2 == 0:
            raise ValueError(f"PSF images must be 2-d with odd sides (centred); got shape {image.shape}.")
        if not np.all(np.isfinite(image)) or image.sum() <= 0:
            raise ValueError("A PSF image is not finite or has no positive sum.")
    side = max(max(image.shape) for image in given) if size is None else int(size)
    if side % 2 == 0:
        raise ValueError(f"The PSF grid side must be odd; got {side}.")
    stacked = np.zeros((len(images), side, side), dtype=np.float64)
    for k, image in enumerate(images):
        psf = given[0] if image is None else np.asarray(image, dtype=np.float64)
        h, w = psf.shape
        # Centre on centre: crop what is beyond the grid, pad what is short of it.
        cy, cx, c = h // 2, w // 2, side // 2
        half_y, half_x = min(cy, c), min(cx, c)
        stacked[k, c - half_y:c + half_y + 1, c - half_x:c + half_x + 1] = \
            psf[cy - half_y:cy + half_y + 1, cx - half_x:cx + half_x + 1]
        stacked[k] /= stacked[k].sum()
    return stacked.astype(np.float32)

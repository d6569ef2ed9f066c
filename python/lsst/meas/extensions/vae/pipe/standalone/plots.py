"""Pictures of a deblended patch: a colour image with the objects marked, and residual panels."""

from __future__ import annotations

__all__ = ["plot_patch", "plot_residuals"]

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from astropy.table import Table

from .coadd import Coadd


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(*args, **kwargs)


def _noise_sigma(coadds: Iterable[Coadd]) -> float:
    """Pixel scale of the pictures: the median over bands of the square root of each band's median
    variance.

    Only finite, positive variances count.  When no band has any (noiseless or blank coadds), the scale
    is the median of the non-zero finite ``|image|`` pixels, and 1 for blank images (which any positive
    scale draws the same).

    Parameters
    ----------
    coadds : iterable of `Coadd`

    Returns
    -------
    sigma : `float`
        A positive, finite number.
    """
    coadds = list(coadds)
    sigmas = []
    for coadd in coadds:
        variance = coadd.variance[np.isfinite(coadd.variance) & (coadd.variance > 0)]
        if variance.size:
            sigmas.append(float(np.sqrt(np.median(variance))))
    if sigmas:
        return float(np.median(sigmas))
    pixels = [np.abs(c.image[np.isfinite(c.image)]) for c in coadds]
    values = np.concatenate(pixels) if pixels else np.zeros(0)
    values = values[values > 0]
    return float(np.median(values)) if values.size else 1.0


def _rgb(coadds: dict[str, Coadd]) -> np.ndarray:
    """(h, w, 3) uint8 picture of the i, r and g coadds (or the bands there are), black at -0.5 sigma."""
    from ...sim.plots import lupton_rgb

    names = [b for b in ("i", "r", "g") if b in coadds]
    while len(names) < 3:
        names.append(names[-1] if names else next(iter(coadds)))
    images = [coadds[b].image.astype(np.float64) for b in names]
    sigma = _noise_sigma(coadds[b] for b in names)
    return lupton_rgb(*images, minimum=-0.5 * sigma, stretch=8.0 * sigma, q=8.0)


def plot_patch(coadds: list[Coadd], objects: Table, path: str | Path, truth: Table | None = None,
               matched: np.ndarray | None = None, title: str = "") -> Path:
    """Colour (i, r, g) image of a patch with the deblended children (+) and isolated sources (o).

    Parameters
    ----------
    coadds : `list` [`Coadd`]
    objects : `astropy.table.Table`
        ``object_deblend`` (``parent``, ``deblend_peak_center_x/_y``).
    path : `str` or `pathlib.Path`
    truth : `astropy.table.Table`, optional
        Truth positions (``x``, ``y``), drawn as small dots.
    matched : `numpy.ndarray` of `bool`, optional
        Objects matched to truth (unmatched ones are drawn in another colour).
    title : `str`
    """
    by_band = {c.band: c for c in coadds}
    x0, y0, x1, y1 = coadds[0].bbox
    plt, (fig, ax) = _figure(figsize=(9, 9))
    ax.imshow(_rgb(by_band), origin="lower", extent=(x0 - 0.5, x1 - 0.5, y0 - 0.5, y1 - 0.5))
    if truth is not None and len(truth):
        ax.plot(truth["x"], truth["y"], ".", color="white", ms=2, alpha=0.6, label="truth")
    x = np.asarray(objects["deblend_peak_center_x"], dtype=float)
    y = np.asarray(objects["deblend_peak_center_y"], dtype=float)
    child = np.asarray(objects["parent"]) != 0
    good = np.ones(len(objects), dtype=bool) if matched is None else np.asarray(matched, dtype=bool)
    ax.plot(x[child & good], y[child & good], "+", color="red", ms=7, mew=1.2, label="blend children")
    ax.plot(x[~child & good], y[~child & good], "o", mfc="none", color="cyan", ms=7, mew=1.0,
            label="isolated")
    if matched is not None and (~good).any():
        ax.plot(x[~good], y[~good], "x", color="yellow", ms=6, mew=1.0, label="no truth within 2 px")
    ax.set_xlim(x0 - 0.5, x1 - 0.5)
    ax.set_ylim(y0 - 0.5, y1 - 0.5)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.6)
    ax.set_title(title or "VAE deblending: objects on the i, r, g image")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_residuals(coadd: Coadd, models: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Three panels of one band: the image, the sum of the models, and image minus models.

    Parameters
    ----------
    coadd : `Coadd`
    models : `numpy.ndarray` (h, w)
        Sum of every child model in that band, on the coadd's pixels.
    path : `str` or `pathlib.Path`
    title : `str`
    """
    sigma = _noise_sigma([coadd])
    x0, y0, x1, y1 = coadd.bbox
    extent = (x0 - 0.5, x1 - 0.5, y0 - 0.5, y1 - 0.5)
    plt, (fig, axes) = _figure(1, 3, figsize=(16, 5.8), sharex=True, sharey=True)
    stretch = dict(cmap="gray_r", origin="lower", extent=extent)
    for ax, data, name in zip(axes[:2], (coadd.image, models), (f"{coadd.band} image", "sum of the models")):
        ax.imshow(np.arcsinh(data / (3 * sigma)), vmin=-1, vmax=6, **stretch)
        ax.set_title(name)
    residual = coadd.image - models
    im = axes[2].imshow(residual / sigma, vmin=-5, vmax=5, cmap="RdBu_r", origin="lower", extent=extent)
    axes[2].set_title("image - models (noise sigma)")
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_xlabel("x (pixels)")
    axes[0].set_ylabel("y (pixels)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""Pictures of simulated data: a gallery of blends and a colour image of a patch."""

from __future__ import annotations

__all__ = ["colour_image", "plot_blend_gallery", "plot_patch"]

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.visualization import make_lupton_rgb  # noqa: E402


def colour_image(cube: np.ndarray, bands: Sequence[str], noise_sigma: np.ndarray | None = None,
                 stretch: float | None = None, q: float = 8.0) -> np.ndarray:
    """An RGB picture (h, w, 3, uint8) from the i, r, g planes of a cube (Lupton et al. 2004 asinh).

    Parameters
    ----------
    cube : `numpy.ndarray`, shape (bands, h, w)
    bands : sequence of `str`
        Band names of the cube's first axis; uses i, r, g (or the three first bands).
    noise_sigma : `numpy.ndarray`, optional
        Noise per band, to scale bands to equal noise before stacking.
    stretch : `float`, optional
        Linear range of the asinh stretch (default: 5 x the mean noise of the three planes).
    q : `float`
        Asinh softening.
    """
    names = [b for b in ("i", "r", "g") if b in bands]
    idx = [list(bands).index(b) for b in names] if len(names) == 3 else [0, 1, 2][: len(bands)]
    planes = [np.asarray(cube[i], dtype=float) for i in idx]
    while len(planes) < 3:
        planes.append(planes[-1])
    if noise_sigma is not None:
        sig = [noise_sigma[i] for i in idx] + [noise_sigma[idx[-1]]] * (3 - len(idx))
        planes = [p / s for p, s in zip(planes, sig)]
        stretch = stretch or 5.0
    else:
        stretch = stretch or 0.05 * max(float(np.percentile(p, 99.9)) for p in planes)
    return make_lupton_rgb(planes[0], planes[1], planes[2], stretch=stretch, Q=q)


def plot_blend_gallery(images: np.ndarray, centrals: np.ndarray, truths: list[dict], bands: Sequence[str],
                       noise_sigma: np.ndarray, path: str | Path, n_show: int = 8) -> Path:
    """Blends (colour), their central galaxy alone (noiseless) and its r image, with truth positions.

    Parameters
    ----------
    images : `numpy.ndarray`, shape (n, bands, h, w)
        Noisy blends.
    centrals : `numpy.ndarray`, shape (n, bands, h, w)
        Noiseless isolated central galaxies.
    truths : `list` [`dict`]
        Per blend: arrays ``x``, ``y`` (galaxy positions), ``mag`` (n_gal, bands) and ``blendedness``.
    bands : sequence of `str`
    noise_sigma : `numpy.ndarray`
        Noise per band.
    path : `str` or `pathlib.Path`
        PNG to write.
    n_show : `int`
        Number of blends (columns).
    """
    n_show = min(n_show, len(images))
    r = list(bands).index("r") if "r" in bands else 0
    fig, axes = plt.subplots(3, n_show, figsize=(2.0 * n_show, 6.3), squeeze=False)
    for k in range(n_show):
        truth = truths[k]
        axes[0, k].imshow(colour_image(images[k], bands, noise_sigma), origin="lower")
        axes[0, k].scatter(truth["x"][1:], truth["y"][1:], s=60, facecolors="none", edgecolors="cyan", lw=0.8)
        axes[0, k].scatter(truth["x"][:1], truth["y"][:1], s=60, marker="+", color="yellow", lw=0.8)
        axes[0, k].set_title(f"{len(truth['x'])} gal, r={truth['mag'][0, r]:.1f}", fontsize=8)
        axes[1, k].imshow(colour_image(centrals[k], bands, noise_sigma), origin="lower")
        axes[1, k].set_title(f"central, b={truth['blendedness'][0]:.2f}", fontsize=8)
        vmax = max(float(np.max(centrals[k, r])), 3 * float(noise_sigma[r]))
        axes[2, k].imshow(images[k, r], origin="lower", cmap="gray_r", vmin=-3 * noise_sigma[r], vmax=vmax)
        axes[2, k].contour(centrals[k, r], levels=[2 * noise_sigma[r]], colors="red", linewidths=0.6)
        axes[2, k].set_title("r blend + central 2σ", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Simulated blends (top), central galaxy alone (middle), r band with the central's "
                 "2-sigma contour (bottom)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_patch(cube: np.ndarray, bands: Sequence[str], noise_sigma: np.ndarray, x: np.ndarray,
               y: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Colour image of a patch with markers at the given positions."""
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.imshow(colour_image(cube, bands, noise_sigma), origin="lower")
    ax.scatter(x, y, s=12, facecolors="none", edgecolors="cyan", lw=0.4)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("x [pixel]")
    ax.set_ylabel("y [pixel]")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""Pictures of simulated data: a gallery of blends and a colour image of a patch."""

from __future__ import annotations

__all__ = ["colour_image", "lupton_rgb", "plot_blend_gallery", "plot_patch"]

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Softening constant of the Lupton et al. (2004) asinh stretch, as astropy's ``LuptonAsinhStretch`` sets it:
# an intensity of LUPTON_FRAC * stretch maps to LUPTON_FRAC of full scale, whatever ``q``.
LUPTON_FRAC = 0.1


def lupton_rgb(red: np.ndarray, green: np.ndarray, blue: np.ndarray, *,
               minimum: float | Sequence[float] = 0.0, stretch: float = 5.0, q: float = 8.0) -> np.ndarray:
    """An 8-bit colour picture of three planes with the Lupton et al. (2004) asinh stretch of their mean.

    The mapping of `astropy.visualization.make_lupton_rgb` (same constants, same pixels), but a pixel
    whose mean intensity is zero or negative (the sky of a noiseless image, a blank plane) is black
    without computing the 0/0 ratio astropy computes there and then discards (which numpy reports as
    "invalid value encountered in divide"), and non-finite pixels are black.

    Parameters
    ----------
    red, green, blue : `numpy.ndarray` (h, w)
        Planes shown in red, green and blue.
    minimum : `float` or sequence of three `float`
        Value of each plane shown black.
    stretch : `float`
        Linear range of the stretch (> 0): the intensity above ``minimum`` shown at ``LUPTON_FRAC`` of full
        scale is ``LUPTON_FRAC * stretch``.
    q : `float`
        Asinh softening (> 0); larger is more logarithmic.

    Returns
    -------
    rgb : `numpy.ndarray` (h, w, 3), uint8
        The picture; where a colour would exceed full scale, all three are scaled down together, so that
        bright pixels keep their hue.

    Raises
    ------
    ValueError
        ``stretch`` or ``q`` is not a positive number, or the planes differ in shape.
    """
    if not (np.isfinite(stretch) and stretch > 0):
        raise ValueError(f"The stretch must be a positive number, not {stretch}.")
    if not (np.isfinite(q) and q > 0):
        raise ValueError(f"The asinh softening q must be a positive number, not {q}.")
    shapes = {np.shape(p) for p in (red, green, blue)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"Three images of one (h, w) shape are needed, not shapes {sorted(shapes)}.")
    planes = np.stack([np.asarray(p, dtype=np.float64) for p in (red, green, blue)])
    black = np.broadcast_to(np.asarray(minimum, dtype=np.float64), (3,)).reshape(3, 1, 1)
    planes = np.where(np.isfinite(planes), planes - black, 0.0)
    intensity = planes.mean(axis=0)
    lit = intensity > 0
    ratio = np.zeros_like(intensity)
    ratio[lit] = (np.arcsinh(q * intensity[lit] / stretch) * (LUPTON_FRAC / np.arcsinh(LUPTON_FRAC * q))
                  / intensity[lit])
    rgb = np.clip(planes * ratio, 0.0, None)
    peak = rgb.max(axis=0)
    saturated = peak > 1.0
    rgb[:, saturated] /= peak[saturated]
    return np.ascontiguousarray((rgb * 255.0).astype(np.uint8).transpose(1, 2, 0))


def colour_image(cube: np.ndarray, bands: Sequence[str], noise_sigma: np.ndarray | None = None,
                 stretch: float | None = None, q: float = 8.0) -> np.ndarray:
    """An RGB picture (h, w, 3, uint8) from the i, r, g planes of a cube (Lupton et al. 2004 asinh).

    Parameters
    ----------
    cube : `numpy.ndarray`, shape (bands, h, w)
    bands : sequence of `str`
        Band names of the cube's first axis; uses i, r, g (or the three first bands).
    noise_sigma : `numpy.ndarray`, optional
        Noise per band, to scale bands to equal noise before stacking (ignored unless the three are
        positive numbers).
    stretch : `float`, optional
        Linear range of the asinh stretch (see `lupton_rgb`); by default 5 noise sigmas with
        ``noise_sigma``, else 5% of the brightest planes' 99.9th percentile (1 for a blank cube).
    q : `float`
        Asinh softening.

    Returns
    -------
    rgb : `numpy.ndarray` (h, w, 3), uint8
    """
    names = [b for b in ("i", "r", "g") if b in bands]
    idx = [list(bands).index(b) for b in names] if len(names) == 3 else [0, 1, 2][: len(bands)]
    planes = [np.asarray(cube[i], dtype=float) for i in idx]
    while len(planes) < 3:
        planes.append(planes[-1])
    sig = None
    if noise_sigma is not None:
        sig = np.array([noise_sigma[i] for i in idx] + [noise_sigma[idx[-1]]] * (3 - len(idx)), dtype=float)
        if not np.all(np.isfinite(sig) & (sig > 0)):
            sig = None  # no usable noise level (a noiseless simulation): stretch on the data instead
    if sig is not None:
        planes = [p / s for p, s in zip(planes, sig)]
        stretch = stretch or 5.0
    elif not stretch:
        tops = [float(np.percentile(p[np.isfinite(p)], 99.9)) for p in planes if np.isfinite(p).any()]
        top = max(tops, default=0.0)
        # A blank picture (nothing above zero) is black whatever the stretch: take 1.
        stretch = 0.05 * top if top > 0 else 1.0
    return lupton_rgb(planes[0], planes[1], planes[2], stretch=stretch, q=q)


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

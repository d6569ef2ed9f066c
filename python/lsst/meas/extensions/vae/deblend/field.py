"""Whole-field deblending on arrays: stamps per peak, iterative subtraction, centroid refinement, and
flux conservation.  No Rubin types: images are numpy cubes (bands, height, width).

For every parent (a footprint and its peaks):

1. **First pass, brightest first.**  Peaks are ordered by their brightness; a stamp is cut around each
   from its parent's view of the image (the observed pixels with other parents' footprints zeroed,
   minus the parent's galaxies modelled so far), the network models the galaxy at its centre, and the
   model is subtracted from the view before the next peak (as debvader does).  Peaks whose stamps no
   brighter unmodelled peak overlaps go through the network in one batch (a wave), across parents too;
   each parent's result is the same whatever other parents share the call.
2. **Centroid refinement.**  A model whose light centroid lies more than half a pixel from its stamp
   centre (an off-centre detection peak) is re-cut around the refined centre, within
   ``max_centroid_shift`` pixels.
3. **Galaxies larger than the stamp** (``bin_large``).  A model with more than ``bin_edge_fraction`` of
   its light in the outer ring of its stamp, whose parent's footprint reaches the stamp's border, is
   modelled again on a stamp ``f`` times wider (``binning_factors``, 3 then 5) cut from the view minus the
   other models and binned ``f`` x ``f`` (pixel sums: the flux is kept; the noise variance per binned
   pixel is ``f**2`` times larger, and a PSF-aware network is given the PSF binned alike).  The model is
   brought back to full resolution, each binned pixel's flux kept (`unbin_image`), and flux
   conservation restores the detail from the data.  Brightest first: a candidate near a brighter one
   waits for the brighter one's wider model and is tested again.  The child's model is then
   (bands, f s, f s), flagged by ``Child.binned``.
4. **Refinement passes.**  Each galaxy is modelled again on its parent's view minus every *other* model.
5. **Learned refinement** (optional, ``refine_steps``).  A small network trained for it (`model.refiner`)
   steps every galaxy's latent code and amplitudes from its stamp, its model and their residual, a few
   times, each time on the view minus the others' new models; binned galaxies are held fixed.
   **Or the latent fit** (optional, ``fit_steps``).  The latent codes of all galaxies of a parent are fitted
   together, through the frozen decoder, to the parent's pixels (`fit.fit_latents`); binned galaxies are
   held fixed.
6. **Flux conservation.**  Inside the footprint, the observed flux of every pixel is split among the
   children in proportion to their models (pixels no model reaches go to the nearest peak), so the
   children add up to the parent exactly.

Every parent that goes in comes out: peaks whose stamps leave the image or cover masked pixels are
flagged, not dropped; a peak outside the image (or not finite) is flagged and left unmodelled, never moved
onto the image.
"""

from __future__ import annotations

__all__ = ["DeblendConfig", "Child", "Parent", "deblend_field", "cut_stamp", "paste_stamp", "add_at",
           "conserve_flux", "conserve_flux_shares", "parent_boxes", "bin_image", "unbin_image", "bin_psf",
           "edge_fraction", "binned_reach", "REFINE_STEPS_DEFAULT"]

import dataclasses
from collections.abc import Callable

import numpy as np

from ..geometry import overlap_slices
from .fit import estimate_variance, fit_latents

# A stamp model: (stamps (n, bands, s, s), neighbour positions (n, k, 2), n_samples) -> (models, flux_std)
StampModel = Callable[..., tuple[np.ndarray, np.ndarray | None]]


# The tasks' default number of learned-refinement steps (`DeblendConfig.refine_steps`): chosen on the
# validation split against 1 and 3 steps (docs/benchmarks.md, "The refinement as the default"). The core's
# own default stays 0: it runs with any model, and a refiner belongs to one set of weights.
REFINE_STEPS_DEFAULT = 2


@dataclasses.dataclass(frozen=True)
class DeblendConfig:
    """Options of `deblend_field`.

    Attributes
    ----------
    iterations : `int`
        Passes over the peaks: 1 = the brightest-first pass only; each further pass re-models every
        galaxy on the image minus all the others' models.
    refine_centroids : `bool`
        Re-centre stamps on the models' light centroids.
    max_centroid_shift : `float`
        Largest centroid correction, pixels.
    conserve_flux : `bool`
        Split the observed flux among the children.
    n_samples : `int`
        Latent samples for the model-flux uncertainty (0: none).
    keep_conserved_images : `bool`
        Keep each parent's flux-conserved child images (`Parent.conserved`); the fluxes are always kept.
    use_neighbour_map : `bool`
        Tell the network where the other peaks of the parent are (its neighbour-map input channel).
    fit_steps : `int`
        Adam steps of the joint latent fit of each parent's galaxies (0: no fit; otherwise the model must
        offer ``encode`` and ``decode``, as `VaeDeblender` does).
    fit_learning_rate : `float`
        Adam's step, in units of the latent spread the weights carry (``latent_scale``), else of the
        latent coordinates.
    fit_prior_weight : `float`
        Weight of the latent prior against the pixels' chi-square.
    fit_amplitude_sigma : `float`
        If > 0, the fit also scales each galaxy's model per band, with a Gaussian prior of this width on
        the logarithm of the factor (0: the decoder's fluxes as they are).
    fit_flux_prior : `float`
        If > 0, the fit holds each galaxy's flux in every band around the encoder's, with a Gaussian prior
        of this many widths, the width being its own flux noise (`fit.flux_noise`) and
        ``fit_flux_fraction`` of the encoder's flux in quadrature, so that a faint galaxy cannot take
        its neighbour's light (0: no flux prior, the plain fit).
    fit_flux_fraction : `float`
        The part of the flux prior's width proportional to the encoder's flux (bright galaxies: their
        pixels, far less noisy, still correct the encoder's flux).
    refine_steps : `int`
        Steps of the learned refinement of every galaxy's code and amplitudes (`model.refiner`; 0: none;
        the model must offer ``encode`` and ``refine``, as `VaeDeblender` does).  Not with ``fit_steps``.
    fit_accept : `bool`
        After the fit, give the encoder's model back to every galaxy whose share of its parent's
        chi-square got worse, or that took light from a neighbour whose share got worse
        (`fit.accept_fit`): the fit lowers every galaxy's share of the chi-square or leaves it alone.
    bin_large : `bool`
        Model galaxies larger than the stamp on a binned stamp (`Child.binned`): see `deblend_field`.
    binning_factors : `tuple` [`int`, ...]
        The binning factors to try, in increasing order (each an integer > 1).
    bin_edge_fraction : `float`
        A galaxy is modelled on the next coarser stamp when more than this fraction of its model's
        (band-summed, positive) light lies in the outer ring of its stamp (and its parent's footprint
        reaches the stamp's border).  The model's own light says whether the galaxy overflows its stamp,
        where the footprint alone cannot (a blend's footprint reaches past a small galaxy's stamp too);
        with the shipped weights, isolated exponential disks put 1.2-1.6 % of their light in the 2-pixel
        ring at a half-light radius of 2" (not binned), 2.6-3.4 % at 3" and 3.6-5 % at 4" (binned).
    bin_edge_width : `int`
        Width of that ring, in pixels of the stamp the model was made on.
    bin_edge_snr : `float`
        ... and only when that ring's light stands above the noise: its sum over the ring's pixels and
        the bands, over the noise of that sum (the per-band variances, given or estimated from the sky
        pixels), above this.  A spurious peak in a big galaxy's wings has a faint diffuse model that
        spreads to its stamp's edge (measured 1.7), a galaxy that overflows its stamp a bright edge (6.6
        for an r = 22 disk of 3" half-light radius, 100 for r = 19.5 and 4").
    """

    iterations: int = 2
    refine_centroids: bool = True
    max_centroid_shift: float = 3.0
    conserve_flux: bool = True
    n_samples: int = 0
    keep_conserved_images: bool = True
    use_neighbour_map: bool = True
    fit_steps: int = 0
    fit_learning_rate: float = 0.1
    fit_prior_weight: float = 1.0
    fit_amplitude_sigma: float = 0.3
    fit_flux_prior: float = 1.0
    fit_flux_fraction: float = 0.03
    fit_accept: bool = True
    refine_steps: int = 0
    bin_large: bool = True
    binning_factors: tuple[int, ...] = (3, 5)
    bin_edge_fraction: float = 0.02
    bin_edge_width: int = 2
    bin_edge_snr: float = 5.0

    def __post_init__(self) -> None:
        if self.refine_steps < 0 or (self.refine_steps > 0 and self.fit_steps > 0):
            raise ValueError(f"refine_steps ({self.refine_steps}) must be >= 0, and the learned refinement "
                             f"replaces the latent fit (fit_steps {self.fit_steps}): choose one.")
        factors = tuple(int(f) for f in self.binning_factors)
        if any(f < 2 for f in factors) or list(factors) != sorted(set(factors)):
            raise ValueError(f"binning_factors must be increasing integers > 1, got {self.binning_factors}.")
        object.__setattr__(self, "binning_factors", factors)

    def largest_factor(self) -> int:
        """The coarsest binning a stamp may get (1 without ``bin_large``)."""
        return max(self.binning_factors, default=1) if self.bin_large else 1


@dataclasses.dataclass
class Child:
    """The deblended model of one peak.

    Attributes
    ----------
    parent : `int`
        Label of its parent.
    peak : `numpy.ndarray` (2,)
        Input peak position (x, y), pixels.
    center : `tuple` [`int`, `int`]
        Pixel (x, y) the final stamp is centred on (after refinement).
    model : `numpy.ndarray` (bands, s, s), or (bands, f s, f s) when ``binned`` is f > 1
        Noiseless model, electrons; its lower-left pixel is at ``origin``.
    origin : `tuple` [`int`, `int`]
        (x0, y0) of the model stamp in the image.
    flux_model : `numpy.ndarray` (bands,)
        Sum of the model.
    flux_model_err : `numpy.ndarray` (bands,)
        Standard deviation of the model flux over latent samples (NaN when not sampled).
    flux_conserved : `numpy.ndarray` (bands,)
        Flux after conservation (equal to ``flux_model`` when conservation is off).
    edge : `bool`
        The stamp reaches beyond the image (padded with zeros).
    masked : `bool`
        The stamp covers masked pixels (set to zero in the network input).
    refined : `bool`
        The stamp was re-centred.
    zero_flux : `bool`
        The model has no positive flux.
    outside_image : `bool`
        The peak lies outside the image (or is not finite): not modelled, its model is zero.
    outside_footprint : `bool`
        The peak's pixel is not in its parent's footprint (modelled all the same).
    binned : `int`
        Binning factor ``f`` of the stamp the galaxy was modelled on (1: not binned): its light reached
        the edge of the full-resolution stamp, so it was modelled on a stamp of ``f * s`` pixels binned
        ``f`` x ``f``, and ``model`` is that model brought back to full resolution, (bands, f s, f s).
    """

    parent: int
    peak: np.ndarray
    center: tuple[int, int]
    model: np.ndarray
    origin: tuple[int, int]
    flux_model: np.ndarray
    flux_model_err: np.ndarray
    flux_conserved: np.ndarray
    edge: bool = False
    masked: bool = False
    refined: bool = False
    zero_flux: bool = False
    outside_image: bool = False
    outside_footprint: bool = False
    binned: int = 1


@dataclasses.dataclass
class Parent:
    """A parent's result: its bounding box and, with conservation, each child's share of its pixels.

    Attributes
    ----------
    label : `int`
    bbox : `tuple` [`int`, `int`, `int`, `int`]
        (x0, y0, x1, y1), x1 and y1 exclusive.
    children : `list` [`int`]
        Indices of its children in the result list.
    conserved : `numpy.ndarray` (n_children, bands, h, w) or `None`
        Flux-conserved child images over the bbox (zero outside the footprint).
    flux : `numpy.ndarray` (bands,)
        Observed flux inside the footprint.
    """

    label: int
    bbox: tuple[int, int, int, int]
    children: list[int]
    conserved: np.ndarray | None
    flux: np.ndarray


def _stamp_slices(center: tuple[int, int], size: int, shape: tuple[int, int]):
    half = size // 2
    return overlap_slices(shape, (size, size), int(center[0]) - half, int(center[1]) - half)


def cut_stamp(image: np.ndarray, center: tuple[int, int], size: int) -> tuple[np.ndarray, bool]:
    """Cut a ``size`` x ``size`` stamp centred on pixel ``center`` (x, y), zero-padded at the edges.

    Returns
    -------
    stamp : `numpy.ndarray` (bands, size, size)
    edge : `bool`
        Part of the stamp lies outside the image.
    """
    stamp = np.zeros(image.shape[:-2] + (size, size), dtype=np.float32)
    in_image, in_stamp = _stamp_slices(center, size, image.shape[-2:])
    stamp[..., in_stamp[0], in_stamp[1]] = image[..., in_image[0], in_image[1]]
    covered = (in_stamp[0].stop - in_stamp[0].start) * (in_stamp[1].stop - in_stamp[1].start)
    return stamp, covered < size * size


def paste_stamp(image: np.ndarray, stamp: np.ndarray, center: tuple[int, int], scale: float = 1.0) -> None:
    """Add ``scale * stamp`` (square, centred on pixel ``center``) into ``image``, clipped to the image."""
    half = stamp.shape[-1] // 2
    add_at(image, stamp, (int(center[0]) - half, int(center[1]) - half), scale)


def add_at(image: np.ndarray, stamp: np.ndarray, origin: tuple[int, int], scale: float = 1.0) -> None:
    """Add ``scale * stamp`` (any shape, lower-left pixel at ``origin`` (x0, y0)) into ``image``, clipped."""
    in_image, in_stamp = overlap_slices(image.shape[-2:], stamp.shape[-2:], int(origin[0]), int(origin[1]))
    image[..., in_image[0], in_image[1]] += scale * stamp[..., in_stamp[0], in_stamp[1]]


def bin_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``image`` over ``factor`` x ``factor`` blocks, flux kept.

    The noise variance of a binned pixel is ``factor**2`` times that of a pixel (independent noise).

    Parameters
    ----------
    image : `numpy.ndarray` (..., f h, f w)
        Image (or stack of images) whose last two sides are multiples of ``factor``.
    factor : `int`
        Binning factor ``f`` (1: ``image`` itself).

    Returns
    -------
    binned : `numpy.ndarray` (..., h, w), float32
    """
    f = int(factor)
    if f == 1:
        return image
    *lead, h, w = image.shape
    if h % f or w % f:
        raise ValueError(f"An image of {h} x {w} pixels does not bin {f} x {f}.")
    return image.reshape(*lead, h // f, f, w // f, f).sum(axis=(-3, -1), dtype=np.float32)


def _interpolation_matrix(size: int, factor: int) -> np.ndarray:
    """(factor * size, size) matrix of the linear interpolation of ``size`` binned pixel values at the
    centres of the ``factor * size`` pixels they cover (held constant past the outer binned centres)."""
    centres = (np.arange(size * factor) + 0.5) / factor - 0.5
    centres = np.clip(centres, 0, size - 1)
    low = np.minimum(np.floor(centres).astype(np.int64), size - 2) if size > 1 else np.zeros(
        len(centres), np.int64)
    weight = centres - low
    matrix = np.zeros((size * factor, size), dtype=np.float64)
    rows = np.arange(size * factor)
    matrix[rows, low] = 1.0 - weight
    if size > 1:
        matrix[rows, low + 1] += weight
    return matrix


def unbin_image(binned: np.ndarray, factor: int) -> np.ndarray:
    """A model on binned pixels brought back to full resolution, each binned pixel's flux kept exactly.

    Within each block the flux is shared out as a bilinear interpolation of the binned image (a smoother
    model than a flat block, so that flux conservation, which splits the observed pixels in proportion to
    the models, does not draw the blocks into the children); the interpolation is rescaled block by block
    to the binned pixel's flux.  A block whose binned pixel is not positive, or where the interpolation
    vanishes, is spread evenly.

    Parameters
    ----------
    binned : `numpy.ndarray` (..., h, w)
        Model on binned pixels.
    factor : `int`
        Binning factor ``f`` (1: ``binned`` itself).

    Returns
    -------
    model : `numpy.ndarray` (..., f h, f w), float32
        Its `bin_image` is ``binned`` (to float rounding).
    """
    f = int(factor)
    if f == 1:
        return binned
    binned = np.asarray(binned, dtype=np.float32)
    *lead, h, w = binned.shape
    rows, cols = _interpolation_matrix(h, f), _interpolation_matrix(w, f)
    positive = np.clip(binned, 0, None).astype(np.float64)
    smooth = rows @ positive @ cols.T
    block = bin_image(smooth, f).astype(np.float64)
    good = (binned > 0) & (block > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(good, binned / np.where(good, block, 1.0), 0.0)
    even = np.where(good, 0.0, binned / (f * f))
    expand = np.repeat(np.repeat(scale, f, axis=-2), f, axis=-1)
    return (smooth * expand + np.repeat(np.repeat(even, f, axis=-2), f, axis=-1)).astype(np.float32)


def bin_psf(psf: np.ndarray, factor: int) -> np.ndarray:
    """PSF images binned ``factor`` x ``factor`` onto the same odd grid of p pixels, summing to 1.

    The blocks are laid out as a binned stamp's are (`bin_image` of a stamp of ``f s`` pixels cut around
    the peak), so the PSF's centre falls where a galaxy's centre does; the binned image is centred in the
    p x p output (which it fits: it is ``p / f`` pixels wide, rounded up to an odd number).

    Parameters
    ----------
    psf : `numpy.ndarray` (..., p, p)
        Centred PSF images, p odd.
    factor : `int`
        Binning factor (1: ``psf`` itself).

    Returns
    -------
    binned : `numpy.ndarray` (..., p, p), float32
    """
    f = int(factor)
    psf = np.asarray(psf, dtype=np.float32)
    if f == 1:
        return psf
    p = psf.shape[-1]
    half = p // 2
    first = half - f // 2  # the first pixel of the central block
    k = max(-(-first // f), -(-(p - first - f) // f))  # blocks on each side of the central one
    width = (2 * k + 1) * f
    padded = np.zeros(psf.shape[:-2] + (width, width), dtype=np.float32)
    start = k * f - first  # where the PSF's first pixel lands in the padded grid
    padded[..., start:start + p, start:start + p] = psf
    binned = bin_image(padded, f)
    out = np.zeros_like(psf)
    lo = half - k
    out[..., lo:lo + 2 * k + 1, lo:lo + 2 * k + 1] = binned
    total = out.sum(axis=(-2, -1), keepdims=True)
    return np.where(total > 0, out / np.where(total > 0, total, 1.0), out).astype(np.float32)


def edge_fraction(model: np.ndarray, width: int) -> float:
    """Fraction of a model's positive light (summed over bands) in the outer ring of its stamp.

    Parameters
    ----------
    model : `numpy.ndarray` (bands, h, w)
        A child's model.
    width : `int`
        Width of the ring, pixels.

    Returns
    -------
    fraction : `float`
        0 for a model without light.
    """
    light = np.clip(np.asarray(model, dtype=np.float64), 0, None).sum(axis=0)
    total = light.sum()
    if total <= 0:
        return 0.0
    inner = light[width:-width, width:-width].sum() if 2 * width < min(light.shape) else 0.0
    return float((total - inner) / total)


def binned_reach(stamp_size: int, config: DeblendConfig) -> int:
    """Pixels by which the widest binned stamp reaches farther from its peak than a stamp does: what a
    caller's cut-out margin (half a stamp and the centroid shift) must grow by.

    Parameters
    ----------
    stamp_size : `int`
        The network's stamp side.
    config : `DeblendConfig`
        Its ``bin_large`` and ``binning_factors`` (0 without ``bin_large``).
    """
    return (stamp_size * config.largest_factor()) // 2 - stamp_size // 2


def _neighbour_positions(peaks: np.ndarray, groups: list[np.ndarray], centers: np.ndarray, size: int,
                         k_max: int, use: bool = True) -> np.ndarray:
    """Stamp positions of the other peaks of each peak's parent (NaN-padded to ``k_max``; all NaN
    when not ``use``)."""
    out = np.full((len(peaks), k_max, 2), np.nan, dtype=np.float32)
    if not use:
        return out
    half = size // 2
    for members in groups:
        for i in members:
            others = members[members != i]
            rel = peaks[others] - centers[i] + half
            inside = np.all((rel > -half) & (rel < size + half), axis=1)
            rel = rel[inside][:k_max]
            out[i, : len(rel)] = rel
    return out


class _ParentViews:
    """Each parent's own view of the image, so that a parent's result never depends on which other
    parents are deblended in the same call (or in what order): the observed pixels, with other parents'
    footprints zeroed, minus the models of the parent's own children subtracted so far.  A parent with one
    active peak reads the image directly; the others get a canvas over their stamps' reach (``margin``
    pixels around their peaks).

    Zeroing the other footprints measured better than leaving them (a 1000x1000 patch, seed 5, through
    the pipeline: model median abs(df/f) 0.235 against 0.243 with the older shared residual, model median
    abs(dg) 0.056 against 0.065, docs/robustness.md).
    """

    def __init__(self, clean: np.ndarray, footprints: np.ndarray, labels: np.ndarray, centers: np.ndarray,
                 groups: list[np.ndarray], margin: int | list[int]) -> None:
        self.clean = clean
        self.footprints = footprints
        self.labels = labels
        self.canvas: dict[int, tuple[np.ndarray, int, int]] = {}  # label -> (pixels, x0, y0)
        height, width = clean.shape[-2:]
        margins = [margin] * len(groups) if np.ndim(margin) == 0 else list(margin)
        for members, margin in zip(groups, margins):
            if len(members) < 2:
                continue
            label = int(labels[members[0]])
            x0, y0 = np.maximum(centers[members].min(axis=0) - margin, 0)
            x1, y1 = np.minimum(centers[members].max(axis=0) + margin + 1, [width, height])
            pixels = clean[:, y0:y1, x0:x1] * self._own(footprints[y0:y1, x0:x1], label)
            self.canvas[label] = (pixels, int(x0), int(y0))

    @staticmethod
    def _own(labels: np.ndarray, label: int) -> np.ndarray:
        """Pixels of no parent or of ``label`` (float32 0/1)."""
        return ((labels == 0) | (labels == label)).astype(np.float32)

    def stamp(self, i: int, center: tuple[int, int], size: int, own_model: np.ndarray | None = None
              ) -> np.ndarray:
        """Peak ``i``'s stamp of its parent's view, with ``own_model`` (taken out of the view before,
        centred on ``center``; of any square size) added back."""
        label = int(self.labels[i])
        if label in self.canvas:
            pixels, x0, y0 = self.canvas[label]
            stamp = cut_stamp(pixels, (center[0] - x0, center[1] - y0), size)[0]
            if own_model is None:
                return stamp
            if own_model.shape[-1] == size:
                return stamp + own_model
            paste_stamp(stamp, own_model, (size // 2, size // 2))  # a model of another binning
            return stamp
        stamp = cut_stamp(self.clean, center, size)[0]
        in_image, in_stamp = _stamp_slices(center, size, self.footprints.shape)
        own = np.zeros((size, size), dtype=np.float32)
        own[in_stamp] = self._own(self.footprints[in_image], label)
        return stamp * own

    def subtract(self, i: int, model: np.ndarray, center: tuple[int, int]) -> None:
        """Take peak ``i``'s model out of its parent's view (a parent with one peak has nothing to
        take it from)."""
        label = int(self.labels[i])
        if label in self.canvas:
            pixels, x0, y0 = self.canvas[label]
            paste_stamp(pixels, model, (center[0] - x0, center[1] - y0), -1.0)


class _StampConditions:
    """The PSF images and noise variance of every peak's stamp, for models that take them."""

    def __init__(self, model, clean: np.ndarray, footprints: np.ndarray, bad: np.ndarray | None,
                 variance: np.ndarray | None, psf: np.ndarray | None, n: int) -> None:
        self.active = bool(getattr(model, "conditioned", False))
        self.variance = variance
        self.psf = None
        if not self.active:
            return
        if psf is None:
            raise ValueError("These weights are PSF-aware (model v3): deblending needs the PSF images "
                             "(psf=..., (bands, p, p) or one set per peak).")
        bands = clean.shape[0]
        psf = np.asarray(psf, dtype=np.float32)
        if psf.ndim == 3:
            psf = np.broadcast_to(psf, (n,) + psf.shape)
        if psf.ndim != 4 or psf.shape[:2] != (n, bands):
            raise ValueError(f"PSF images of shape {psf.shape} fit neither (bands, p, p) nor ({n}, {bands}, "
                             "p, p).")
        self.psf = psf
        if self.variance is None:
            self.variance = estimate_variance(clean, footprints, bad)
        self.variance = np.asarray(self.variance, dtype=np.float32).reshape(bands)

    def __call__(self, idx: np.ndarray, factors: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Keyword arguments of the model call for the stamps of peaks ``idx``, each binned by its
        ``factors`` (none by default): a binned stamp's PSF is the PSF binned alike, and its noise
        variance per pixel is ``f**2`` times larger."""
        if not self.active:
            return {}
        variance = np.broadcast_to(self.variance, (len(idx),) + self.variance.shape)
        psf = self.psf[idx]
        if factors is not None and np.any(np.asarray(factors) > 1):
            factors = np.asarray(factors)
            psf = np.array(psf)
            for f in np.unique(factors[factors > 1]):
                psf[factors == f] = bin_psf(psf[factors == f], int(f))
            variance = variance * (factors.astype(np.float32) ** 2)[:, None]
        return {"psf": psf, "variance": variance}


def deblend_field(image: np.ndarray, peaks: np.ndarray, model: StampModel, stamp_size: int,
                  parents: np.ndarray | None = None, footprints: np.ndarray | None = None,
                  bad: np.ndarray | None = None, config: DeblendConfig = DeblendConfig(),
                  max_neighbours: int = 8, variance: np.ndarray | None = None,
                  psf: np.ndarray | None = None) -> tuple[list[Child], list[Parent]]:
    """Deblend every parent of a field.

    Each parent is deblended on its own view of the image, where the pixels of other parents' footprints
    are zero (as scarlet models a blend on its own footprint), so a parent's children do not depend on
    which other parents share the call.

    Parameters
    ----------
    image : `numpy.ndarray` (bands, h, w)
        Background-subtracted image, electrons.
    peaks : `numpy.ndarray` (n, 2)
        Peak positions (x, y), pixels.  A peak outside the image (or not finite) is not modelled: its
        child has a zero model and ``outside_image`` set.
    model : callable
        ``model(stamps, neighbour_positions, n_samples)`` -> (models, flux_std), e.g. `VaeDeblender`.
    stamp_size : `int`
        The model's stamp side.
    parents : `numpy.ndarray` (n,), optional
        Parent label (> 0) of every peak; one parent (label 1) by default.
    footprints : `numpy.ndarray` (h, w) of `int`, optional
        Parent label of every pixel (0: no parent), including parents that are not deblended here; by
        default the whole image belongs to parent 1.
    bad : `numpy.ndarray` (h, w) of `bool`, optional
        Masked pixels, zeroed in the network input and left out of the conserved flux; non-finite
        pixels are treated as masked too.
    config : `DeblendConfig`
    max_neighbours : `int`
        Most neighbour peaks given to the network per stamp.
    variance : `numpy.ndarray` (bands,), optional
        Noise variance per band, for the latent fit and the PSF- and noise-aware networks; estimated from
        the pixels outside the footprints when not given.
    psf : `numpy.ndarray` (bands, p, p) or (n, bands, p, p), optional
        Each band's PSF image (p odd, centred, summing to 1), for the whole image or at every peak;
        needed by PSF-aware weights (``model.conditioned``), and checked against the range the other
        weights were trained on.

    Returns
    -------
    children : `list` [`Child`]
        One per peak, in the input order.
    parents : `list` [`Parent`]
        One per parent label of ``parents``, in increasing label order.
    """
    image = np.asarray(image, dtype=np.float32)
    peaks = np.asarray(peaks, dtype=np.float64).reshape(-1, 2)
    n = len(peaks)
    labels = np.ones(n, dtype=np.int64) if parents is None else np.asarray(parents, dtype=np.int64)
    if footprints is None:
        footprints = np.ones(image.shape[-2:], dtype=np.int32)
    nonfinite = ~np.isfinite(image).all(axis=0)
    if nonfinite.any():
        bad = nonfinite if bad is None else (bad | nonfinite)
    clean = image if bad is None else np.where(bad[None], 0.0, image).astype(np.float32)
    height, width = image.shape[-2:]
    # A peak outside the image is flagged and left unmodelled, never moved onto the image.
    finite = np.isfinite(peaks).all(axis=1)
    rounded = np.rint(np.where(finite[:, None], peaks, 0.0)).astype(np.int64)
    inside = finite & np.all((rounded >= 0) & (rounded < [width, height]), axis=1)
    centers = rounded  # an unmodelled peak outside the image keeps its position
    active = np.flatnonzero(inside)
    unique_labels = np.unique(labels)
    groups = [np.flatnonzero(labels == lab) for lab in unique_labels]
    active_groups = [g[inside[g]] for g in groups]
    active_groups = [g for g in active_groups if len(g)]
    half = stamp_size // 2
    margin = half + int(np.ceil(config.max_centroid_shift)) + 1

    # Brightest first within each parent (by the summed-band peak pixel), in waves: a peak goes in the wave
    # after the latest of the brighter peaks whose stamps overlap its own.
    on_image = np.clip(centers, [0, 0], [width - 1, height - 1])
    brightness = clean.sum(axis=0)[on_image[:, 1], on_image[:, 0]]
    wave = np.full(n, -1, dtype=np.int64)
    for members in active_groups:
        wave[members] = _waves(centers[members], brightness[members], stamp_size)

    conditions = _StampConditions(model, clean, footprints, bad, variance, psf, n)
    if conditions.active:
        variance = conditions.variance
    state = _Models(n, image.shape[0], stamp_size, peaks, groups, max_neighbours, config.use_neighbour_map)
    models = state.array
    edge = ~inside
    masked = np.zeros(n, dtype=bool)
    refined = np.zeros(n, dtype=bool)
    views = _ParentViews(clean, footprints, labels, centers, active_groups, margin)
    neighbours = _neighbour_positions(peaks, groups, centers, stamp_size, max_neighbours,
                                      config.use_neighbour_map)
    for r in range(int(wave.max()) + 1 if len(active) else 0):
        idx = np.flatnonzero(wave == r)
        stamps = np.stack([views.stamp(i, tuple(centers[i]), stamp_size) for i in idx])
        models[idx], _ = model(stamps, neighbours[idx], 0, **conditions(idx))
        for i in idx:
            views.subtract(i, models[i], tuple(centers[i]))

    if config.refine_centroids and len(active):
        grid = np.arange(stamp_size) - half
        light = np.clip(models.sum(axis=1), 0, None)
        total = light.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            dx = (light.sum(axis=1) * grid).sum(axis=1) / total
            dy = (light.sum(axis=2) * grid).sum(axis=1) / total
        move = inside & (np.hypot(dx, dy) > 0.5) & (np.hypot(dx, dy) <= config.max_centroid_shift) \
            & (total > 0)
        new_centers = centers.copy()
        new_centers[move] = np.clip(centers[move] + np.rint(np.stack([dx[move], dy[move]], axis=1)),
                                    [0, 0], [width - 1, height - 1]).astype(np.int64)
        refined = np.any(new_centers != centers, axis=1)
        for i in np.flatnonzero(refined):
            # Keep the model where it is on the sky while its stamp moves.
            shifted = np.zeros_like(models[i])
            paste_stamp(shifted, models[i], tuple(centers[i] - new_centers[i] + half))
            models[i] = shifted
        centers = new_centers
        neighbours = _neighbour_positions(peaks, groups, centers, stamp_size, max_neighbours,
                                          config.use_neighbour_map)
    state.centers, state.neighbours = centers, neighbours

    def margins() -> list[int]:
        """Each parent's canvas margin: half its widest stamp and the centroid shift."""
        return [margin + int(state.factor[g].max() * stamp_size) // 2 - half for g in active_groups]

    # Galaxies larger than the stamp (`_Models.too_large`) are modelled again on a stamp f times wider
    # binned f x f, the next factor each round, brightest first: a candidate whose wider stamp a brighter
    # candidate's overlaps waits until that one's wider model is out of the view, is modelled again at its
    # own binning, and is tested again (the light it reached its edge with may have been the other's).
    def noise() -> float:
        """The band-summed noise of one pixel (estimated from the sky pixels, once, when first asked)."""
        if "sigma" not in estimated:
            try:
                known = variance if variance is not None else estimate_variance(clean, footprints, bad)
                estimated["sigma"] = float(np.sqrt(np.sum(np.asarray(known, dtype=np.float64))))
            except ValueError:  # no pixel to estimate it from: the fraction of the light decides alone
                estimated["sigma"] = 0.0
        return estimated["sigma"]

    estimated: dict[str, float] = {}
    previous = 1
    for f in (config.binning_factors if config.bin_large and len(active) else ()):
        pending = np.array([i for i in active if state.factor[i] == previous
                            and state.too_large(i, footprints, labels, config, noise)], dtype=np.int64)
        grown = False
        while len(pending):
            order = np.zeros(len(pending), dtype=np.int64)
            for lab in np.unique(labels[pending]):
                mine = labels[pending] == lab
                order[mine] = _waves(centers[pending[mine]], brightness[pending[mine]], stamp_size * f)
            grow, wait = pending[order == 0], pending[order > 0]
            state.factor[grow] = f
            grown = True
            views = None  # one set of views at a time
            views = state.views(clean, footprints, labels, active, active_groups, margins())
            before = {int(i): state[i] for i in grow}
            out, _ = model(state.inputs(grow, views), state.neighbours_of(grow), 0,
                           **conditions(grow, state.factor[grow]))
            state.store(grow, out)
            if not len(wait):
                break
            for i in grow:  # the views now lack the wider models instead of the old ones
                views.subtract(i, -before[int(i)], tuple(centers[i]))
                views.subtract(i, state[i], tuple(centers[i]))
            out, _ = model(state.inputs(wait, views), state.neighbours_of(wait), 0,
                           **conditions(wait, state.factor[wait]))
            state.store(wait, out)
            pending = np.array([i for i in wait if state.too_large(i, footprints, labels, config, noise)],
                               dtype=np.int64)
        if not grown:
            break
        previous = f

    flux_std = None
    codes = None
    for it in range(1, max(config.iterations, 1)):
        # Each parent's view minus all of its models; each stamp adds its own model back.
        views = None  # one set of views at a time
        views = state.views(clean, footprints, labels, active, active_groups, margins())
        last = it == config.iterations - 1
        stamps = state.inputs(active, views)
        arguments = (state.neighbours_of(active),)
        keywords = conditions(active, state.factor[active])
        if last and (config.fit_steps > 0 or config.refine_steps > 0):
            codes = model.encode(stamps, *arguments, **keywords)
        out, flux_std_active = model(stamps, *arguments, config.n_samples if last else 0, **keywords)
        state.store(active, out)
        if last and flux_std_active is not None:
            flux_std = np.full((n, image.shape[0]), np.nan, dtype=np.float32)
            flux_std[active] = flux_std_active
        del stamps, out
    if config.n_samples and config.iterations <= 1 and len(active):  # one pass: sample on its residual
        if state.wide:  # the views of the first pass lack the binned models
            views = None
            views = state.views(clean, footprints, labels, active, active_groups, margins())
        out, flux_std_active = model(state.inputs(active, views), state.neighbours_of(active),
                                     config.n_samples, **conditions(active, state.factor[active]))
        state.store(active, out)
        flux_std = np.full((n, image.shape[0]), np.nan, dtype=np.float32)
        flux_std[active] = flux_std_active
    del views

    if config.refine_steps > 0 and len(active):
        _refine(model, clean, footprints, variance, bad, labels, state, codes, active, active_groups,
                margins(), config.refine_steps, conditions)
    if config.fit_steps > 0 and len(active):
        _fit(model, clean, bad, footprints, variance, labels, state, codes, active_groups, stamp_size, config,
             conditions)
    bad_stamp = None if bad is None else bad[None].astype(np.float32)
    for i in active:
        edge[i] = cut_stamp(clean[:1], tuple(centers[i]), state.size(i))[1]
        if bad_stamp is not None:
            masked[i] = bool(cut_stamp(bad_stamp, tuple(centers[i]), state.size(i))[0].any())
    off_footprint = np.zeros(n, dtype=bool)
    off_footprint[active] = footprints[centers[active, 1], centers[active, 0]] != labels[active]

    children = []
    for i in range(n):
        final = state[i]
        flux = final.sum(axis=(1, 2), dtype=np.float64)
        reach = state.size(i) // 2
        children.append(Child(
            parent=int(labels[i]), peak=peaks[i], center=(int(centers[i, 0]), int(centers[i, 1])),
            model=final, origin=(int(centers[i, 0] - reach), int(centers[i, 1] - reach)),
            flux_model=flux, flux_conserved=flux.copy(),
            flux_model_err=(flux_std[i].astype(np.float64) if flux_std is not None
                            else np.full(len(flux), np.nan)),
            edge=bool(edge[i]), masked=bool(masked[i]), refined=bool(refined[i]),
            zero_flux=bool(np.all(flux <= 0)), outside_image=not bool(inside[i]),
            outside_footprint=bool(off_footprint[i]), binned=int(state.factor[i])))
    boxes = parent_boxes(footprints)
    parent_results = [_conserve(clean, footprints, boxes.get(int(lab)), lab, members, children,
                                config.conserve_flux, config.keep_conserved_images)
                      for lab, members in zip(unique_labels, groups)]
    return children, parent_results


class _Models:
    """The current model of every peak, binned or not.

    A peak of binning factor 1 has its model on the full-resolution stamp of ``s`` pixels (a row of
    ``array``); a peak binned by ``f`` > 1 has its model on its stamp of ``f s`` pixels, brought back to
    full resolution (``wide``).  Both are centred on the peak's stamp centre: a stamp of ``f s`` pixels
    (even) around pixel ``c`` starts at ``c - f s // 2``, so its central binned pixel holds ``c``.
    """

    def __init__(self, n: int, bands: int, stamp_size: int, peaks: np.ndarray, groups: list[np.ndarray],
                 max_neighbours: int, use_neighbours: bool) -> None:
        self.array = np.zeros((n, bands, stamp_size, stamp_size), dtype=np.float32)
        self.wide: dict[int, np.ndarray] = {}
        self.factor = np.ones(n, dtype=np.int64)
        self.stamp_size = stamp_size
        self.peaks, self.groups = peaks, groups
        self.max_neighbours, self.use_neighbours = max_neighbours, use_neighbours
        self.centers = np.zeros((n, 2), dtype=np.int64)
        self.neighbours = np.zeros((n, max_neighbours, 2), dtype=np.float32)
        self._binned_neighbours: dict[int, np.ndarray] = {}

    def __getitem__(self, i: int) -> np.ndarray:
        return self.wide[i] if i in self.wide else self.array[i]

    def size(self, i: int) -> int:
        """Side of peak ``i``'s stamp, full-resolution pixels."""
        return self.stamp_size * int(self.factor[i])

    def too_large(self, i: int, footprints: np.ndarray, labels: np.ndarray, config: DeblendConfig,
                  noise: Callable[[], float]) -> bool:
        """Whether peak ``i``'s model overflows its stamp: more than ``bin_edge_fraction`` of its light in
        the stamp's outer ring, that light above ``bin_edge_snr`` times its noise (``noise()``: the
        band-summed noise of one pixel), and its parent's footprint reaching the stamp's border (else the
        parent lies within the stamp, and nothing beyond it would be deblended)."""
        f = int(self.factor[i])
        width = config.bin_edge_width * f
        model = self[i]
        if edge_fraction(model, width) <= config.bin_edge_fraction:
            return False
        size = self.size(i)
        in_image, in_stamp = _stamp_slices(tuple(self.centers[i]), size, footprints.shape)
        own = np.zeros((size, size), dtype=bool)
        own[in_stamp] = footprints[in_image] == labels[i]
        if not (own[0].any() or own[-1].any() or own[:, 0].any() or own[:, -1].any()):
            return False
        light = np.clip(np.asarray(model, dtype=np.float64), 0, None).sum(axis=0)
        inner = light[width:-width, width:-width]
        pixels = light.size - inner.size
        return bool(light.sum() - inner.sum() > config.bin_edge_snr * noise() * np.sqrt(pixels))

    def views(self, clean: np.ndarray, footprints: np.ndarray, labels: np.ndarray, members: np.ndarray,
              groups: list[np.ndarray], margin: int | list[int]) -> _ParentViews:
        """Each parent's view (`_ParentViews`) minus the current models of peaks ``members``."""
        views = _ParentViews(clean, footprints, labels, self.centers, groups, margin)
        for i in members:
            views.subtract(i, self[i], tuple(self.centers[i]))
        return views

    def inputs(self, idx: np.ndarray, views: _ParentViews) -> np.ndarray:
        """The network's stamps of peaks ``idx`` (each binned by its factor), own models added back."""
        stamps = []
        for i in idx:
            f = int(self.factor[i])
            stamp = views.stamp(i, tuple(self.centers[i]), self.stamp_size * f, self[i])
            stamps.append(stamp if f == 1 else bin_image(stamp, f))
        return np.stack(stamps) if stamps else self.array[:0]

    def neighbours_of(self, idx: np.ndarray) -> np.ndarray:
        """The other peaks' positions on the stamps of peaks ``idx`` (binned pixels on a binned stamp)."""
        out = self.neighbours[idx]
        factors = self.factor[idx]
        if np.all(factors == 1):
            return out
        out = out.copy()
        for f in np.unique(factors[factors > 1]):
            if f not in self._binned_neighbours:  # the same positions on a grid f times coarser
                self._binned_neighbours[int(f)] = _neighbour_positions(
                    self.peaks / f, self.groups, self.centers / f, self.stamp_size, self.max_neighbours,
                    self.use_neighbours)
            out[factors == f] = self._binned_neighbours[int(f)][idx[factors == f]]
        return out

    def store(self, idx: np.ndarray, out: np.ndarray) -> None:
        """Keep the network's models ``out`` of peaks ``idx`` (binned ones back at full resolution)."""
        factors = self.factor[idx]
        plain = factors == 1
        self.array[idx[plain]] = out[plain]
        for k in np.flatnonzero(~plain):
            self.wide[int(idx[k])] = unbin_image(out[k], int(factors[k]))


def _fit(model, clean: np.ndarray, bad: np.ndarray | None, footprints: np.ndarray,
         variance: np.ndarray | None, labels: np.ndarray, state: _Models, codes: np.ndarray | None,
         active_groups: list[np.ndarray], stamp_size: int, config: DeblendConfig,
         conditions: _StampConditions) -> None:
    """The joint latent fit of every parent's galaxies (the peaks on the image, by parent), starting from
    the encoder's ``codes`` of the active peaks (latent codes and amplitude factors, from
    ``model.encode``; encoded here when `None`); the fitted models replace those of ``state``.

    Binned galaxies are not fitted (the decoder draws stamps of ``s`` pixels): their models are held
    fixed, taken out of the pixels of their own parent's footprint that the others are fitted to.
    """
    active = np.sort(np.concatenate(active_groups))
    plain = state.factor[active] == 1
    fitted = active[plain]
    if not len(fitted):
        return
    centers = state.centers
    binned = active[~plain]
    if len(binned):  # the others are fitted to the pixels minus the binned models
        clean = clean.copy()
        for i in binned:
            own = np.zeros(state[i].shape[-2:], dtype=np.float32)
            reach = state.size(i) // 2
            origin = (int(centers[i, 0]) - reach, int(centers[i, 1]) - reach)
            in_image, in_stamp = overlap_slices(footprints.shape, own.shape, *origin)
            own[in_stamp] = footprints[in_image] == labels[i]
            add_at(clean, state[i] * own, origin, -1.0)
    if codes is not None:
        latents, factors = codes[0][plain], codes[1][plain]
    else:  # one pass only: encode each galaxy on its parent's view minus the others
        groups = [g[state.factor[g] == 1] for g in active_groups]
        groups = [g for g in groups if len(g)]
        views = state.views(clean, footprints, labels, fitted, groups, stamp_size // 2 + 1)
        latents, factors = model.encode(state.inputs(fitted, views), state.neighbours[fitted],
                                        **conditions(fitted))
        del views
    if variance is None:
        variance = estimate_variance(clean, footprints, bad)
    _, result = fit_latents(clean, 1.0 / np.asarray(variance, dtype=np.float64), bad, centers[fitted],
                            labels[fitted], latents, state.array[fitted], model.decode, stamp_size,
                            steps=config.fit_steps, learning_rate=config.fit_learning_rate,
                            prior_weight=config.fit_prior_weight,
                            amplitude_sigma=config.fit_amplitude_sigma,
                            latent_scale=getattr(model, "latent_scale", None),
                            device=getattr(model, "device", "cpu"),
                            footprints=footprints, psf=conditions(fitted).get("psf"), factors=factors,
                            flux_prior=config.fit_flux_prior,
                            flux_fraction=config.fit_flux_fraction, accept=config.fit_accept)
    state.array[fitted] = result


def _refine(model, clean: np.ndarray, footprints: np.ndarray, variance: np.ndarray | None,
            bad: np.ndarray | None, labels: np.ndarray, state: _Models, codes: tuple | None,
            active: np.ndarray, active_groups: list[np.ndarray], margins: list[int], steps: int,
            conditions: _StampConditions) -> None:
    """The learned refinement (``model.refine``) of every unbinned active galaxy, ``steps`` times: each
    step re-cuts every stamp from its parent's view minus the other galaxies' current models and moves all
    codes at once.  Binned galaxies keep their models (the decoder draws stamps of ``s`` pixels); their
    models are taken out of their neighbours' stamps."""
    plain = state.factor[active] == 1
    refined = active[plain]
    if not len(refined):
        return
    neighbours = state.neighbours_of(refined)
    keywords = conditions(refined)
    views = state.views(clean, footprints, labels, active, active_groups, margins)
    if codes is None:  # one pass only: encode each galaxy on its parent's view minus the others
        latents, factors = model.encode(state.inputs(refined, views), neighbours, **keywords)
    else:
        latents, factors = codes[0][plain], codes[1][plain]
    if "variance" not in keywords:
        known = variance if variance is not None else estimate_variance(clean, footprints, bad)
        keywords["variance"] = np.broadcast_to(np.asarray(known, dtype=np.float32),
                                               (len(refined), len(clean)))
    log_amplitude = np.zeros((len(refined), clean.shape[0]), dtype=np.float32)
    for step in range(steps):
        if step:  # the views minus the models of the step before
            views = None  # one set of views at a time
            views = state.views(clean, footprints, labels, active, active_groups, margins)
        latents, log_amplitude, out = model.refine(state.inputs(refined, views), neighbours, latents, factors,
                                                   log_amplitude, state.array[refined], **keywords)
        state.store(refined, out)
    del views


def _waves(centers: np.ndarray, brightness: np.ndarray, size: int) -> np.ndarray:
    """The wave of each of a parent's peaks in the brightest-first pass: one more than the latest wave of
    the brighter peaks whose stamps overlap its own (0 if none).

    A stamp is cut after the models of exactly the brighter overlapping peaks were taken out of the view,
    as in a pass one peak at a time, so the models are the same; but the peaks of a wave go through the
    network together, and a crowded parent of N peaks takes far fewer than N network calls.
    """
    order = np.argsort(-brightness, kind="stable")
    ordered = centers[order]
    waves = np.zeros(len(order), dtype=np.int64)
    for k in range(1, len(order)):
        near = np.all(np.abs(ordered[:k] - ordered[k]) < size, axis=1)
        if near.any():
            waves[k] = waves[:k][near].max() + 1
    out = np.empty_like(waves)
    out[order] = waves
    return out


def _nearest_peak(xs: np.ndarray, ys: np.ndarray, peaks: np.ndarray, tile: int = 64) -> np.ndarray:
    """Index of the nearest of ``peaks`` (m, 2) to every pixel (xs, ys); ties go to the lower index.

    Exact, in memory bounded by the tile: the pixels are taken a ``tile`` x ``tile`` square at a time,
    against only the peaks that can be nearest to some pixel of the square.
    """
    owner = np.zeros(len(xs), dtype=np.int64)
    if len(xs) == 0:
        return owner
    keys = (ys // tile) * (int(xs.max()) // tile + 1) + xs // tile
    order = np.argsort(keys, kind="stable")
    starts = np.flatnonzero(np.concatenate([[True], keys[order][1:] != keys[order][:-1]]))
    for rows in np.split(order, starts[1:]):
        tx, ty = (xs[rows[0]] // tile) * tile, (ys[rows[0]] // tile) * tile
        # Distance of each peak to the square (nearest point) and to its farthest corner: no pixel of
        # the square is farther from its nearest peak than the smallest farthest-corner distance.
        near = np.hypot(np.clip(peaks[:, 0], tx, tx + tile - 1) - peaks[:, 0],
                        np.clip(peaks[:, 1], ty, ty + tile - 1) - peaks[:, 1])
        far = np.hypot(np.maximum(np.abs(peaks[:, 0] - tx), np.abs(peaks[:, 0] - tx - tile + 1)),
                       np.maximum(np.abs(peaks[:, 1] - ty), np.abs(peaks[:, 1] - ty - tile + 1)))
        candidates = np.flatnonzero(near <= far.min())
        d2 = ((xs[rows, None] - peaks[None, candidates, 0]) ** 2
              + (ys[rows, None] - peaks[None, candidates, 1]) ** 2)
        owner[rows] = candidates[np.argmin(d2, axis=1)]
    return owner


def conserve_flux_shares(image: np.ndarray, footprint: np.ndarray, models: list[np.ndarray] | np.ndarray,
                         origins: np.ndarray, peaks: np.ndarray, eligible: np.ndarray | None = None
                         ) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Split a parent's observed flux among its children in proportion to their models, each child's
    share over its own box (memory grows with the children's boxes, not children times parent box).

    Parameters
    ----------
    image : `numpy.ndarray` (bands, h, w)
        Observed image over the parent's box.
    footprint : `numpy.ndarray` (h, w) of `bool`
        The parent's footprint over the same box.
    models : sequence of `numpy.ndarray` (bands, h_k, w_k)
        Each child's model (negative pixels count as zero); any shape.
    origins : `numpy.ndarray` (n, 2) of `int`
        (x0, y0) of each model's lower-left pixel, relative to the box.
    peaks : `numpy.ndarray` (n, 2)
        Each child's peak (x, y) relative to the box: footprint pixels that no model reaches (in a band)
        go to the nearest peak.
    eligible : `numpy.ndarray` (n,) of `bool`, optional
        Peaks that may take those pixels (e.g. not those outside the image); all finite peaks when none
        is eligible.

    Returns
    -------
    shares : `list` [(`tuple` [`int`, `int`], `numpy.ndarray` (bands, h_k, w_k))]
        Each child's (x0, y0) relative to the box and its share of the observed image there, float32;
        the shares add up to ``image * footprint`` (to float rounding).
    """
    image = np.asarray(image, dtype=np.float32)
    footprint = np.asarray(footprint, dtype=bool)
    bands, h, w = image.shape
    n = len(models)
    observed = image * footprint
    total = np.zeros_like(image)
    for k in range(n):
        add_at(total, np.clip(models[k], 0, None), origins[k])
    lacking = footprint[None] & (total <= 0)
    ys, xs = np.nonzero(lacking.any(axis=0))
    peaks = np.asarray(peaks, dtype=np.float64).reshape(n, 2)
    finite = np.isfinite(peaks).all(axis=1)
    usable = finite if eligible is None else finite & np.asarray(eligible, dtype=bool)
    if not usable.any():
        usable = finite
    candidates = np.flatnonzero(usable)
    owner = (candidates[_nearest_peak(xs, ys, peaks[candidates])] if len(candidates)
             else np.full(len(xs), -1))
    # The pixels given to each child, found in one sort (not one scan of them all per child).
    by_owner = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[by_owner], np.arange(n + 1))
    shares = []
    for k in range(n):
        model = np.asarray(models[k])
        ox, oy = int(origins[k][0]), int(origins[k][1])
        (iy, ix), (sy, sx) = overlap_slices((h, w), model.shape[-2:], ox, oy)
        mine = by_owner[bounds[k]:bounds[k + 1]]
        x_lo, y_lo = [ix.start] if ix.stop > ix.start else [], [iy.start] if iy.stop > iy.start else []
        x_hi, y_hi = [ix.stop] if x_lo else [], [iy.stop] if y_lo else []
        if len(mine):
            x_lo, x_hi = x_lo + [int(xs[mine].min())], x_hi + [int(xs[mine].max()) + 1]
            y_lo, y_hi = y_lo + [int(ys[mine].min())], y_hi + [int(ys[mine].max()) + 1]
        if not x_lo or not y_lo:  # no model pixel in the box and no pixel of its own
            shares.append(((min(max(ox, 0), w), min(max(oy, 0), h)), np.zeros((bands, 0, 0), np.float32)))
            continue
        bx0, by0 = min(x_lo), min(y_lo)
        share = np.zeros((bands, max(y_hi) - by0, max(x_hi) - bx0), dtype=np.float32)
        if ix.stop > ix.start and iy.stop > iy.start:
            part = np.clip(model[:, sy, sx], 0, None)
            weight = total[:, iy, ix]
            with np.errstate(invalid="ignore", divide="ignore"):
                share[:, iy.start - by0: iy.stop - by0, ix.start - bx0: ix.stop - bx0] = np.where(
                    weight > 0, part / weight, 0.0) * observed[:, iy, ix]
        fx, fy = xs[mine], ys[mine]
        share[:, fy - by0, fx - bx0] += np.where(lacking[:, fy, fx], observed[:, fy, fx], 0.0)
        shares.append(((bx0, by0), share))
    return shares


def conserve_flux(image: np.ndarray, footprint: np.ndarray, models: list[np.ndarray] | np.ndarray,
                  origins: np.ndarray, peaks: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """`conserve_flux_shares`, each child's share placed over the whole box.

    Returns
    -------
    children : `numpy.ndarray` (n, bands, h, w), float32
        Each child's share of the observed image, zero outside the footprint; their sum is
        ``image * footprint`` (to float rounding).
    """
    image = np.asarray(image, dtype=np.float32)
    return _placed(conserve_flux_shares(image, footprint, models, origins, peaks, eligible), image.shape)


def _placed(shares: list[tuple[tuple[int, int], np.ndarray]], shape: tuple[int, ...]) -> np.ndarray:
    """Shares from `conserve_flux_shares`, each placed over a box of ``shape`` (bands, h, w)."""
    placed = np.zeros((len(shares),) + tuple(shape), dtype=np.float32)
    for k, (origin, share) in enumerate(shares):
        add_at(placed[k], share, origin)
    return placed


def parent_boxes(footprints: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """Bounding box (x0, y0, x1, y1; exclusive ends) of every label > 0 of a label image, in one pass."""
    ys, xs = np.nonzero(footprints)
    if len(ys) == 0:
        return {}
    labels = footprints[ys, xs]
    order = np.argsort(labels, kind="stable")
    labels, ys, xs = labels[order], ys[order], xs[order]
    starts = np.flatnonzero(np.concatenate([[True], labels[1:] != labels[:-1]]))
    boxes = zip(labels[starts], np.minimum.reduceat(xs, starts), np.minimum.reduceat(ys, starts),
                np.maximum.reduceat(xs, starts) + 1, np.maximum.reduceat(ys, starts) + 1)
    return {int(lab): (int(x0), int(y0), int(x1), int(y1)) for lab, x0, y0, x1, y1 in boxes}


def _conserve(image: np.ndarray, footprints: np.ndarray, box: tuple[int, int, int, int] | None, label: int,
              members: np.ndarray, children: list[Child], conserve: bool, keep_images: bool) -> Parent:
    """The parent's result: its box, observed flux and (with ``conserve``) its children's shares."""
    if box is None:  # a parent with no footprint pixels: the children's stamps define its box
        x0 = max(min(children[i].origin[0] for i in members), 0)
        y0 = max(min(children[i].origin[1] for i in members), 0)
        x1 = min(max(children[i].origin[0] + children[i].model.shape[-1] for i in members), image.shape[-1])
        y1 = min(max(children[i].origin[1] + children[i].model.shape[-2] for i in members), image.shape[-2])
        box = (x0, y0, x1, y1)
    x0, y0, x1, y1 = box
    inside = footprints[y0:y1, x0:x1] == label
    observed = image[:, y0:y1, x0:x1] * inside
    flux = observed.sum(axis=(1, 2), dtype=np.float64)
    result = Parent(label=int(label), bbox=box, children=list(map(int, members)), conserved=None, flux=flux)
    if conserve:
        shares = conserve_flux_shares(
            image[:, y0:y1, x0:x1], inside, [children[i].model for i in members],
            np.array([(children[i].origin[0] - x0, children[i].origin[1] - y0) for i in members]),
            np.array([children[i].peak for i in members]) - [x0, y0],
            eligible=np.array([not children[i].outside_image for i in members]))
        for i, (_, share) in zip(members, shares):
            children[i].flux_conserved = share.sum(axis=(1, 2), dtype=np.float64)
        if keep_images:
            result.conserved = _placed(shares, observed.shape)
    return result

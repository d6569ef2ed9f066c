"""Whole-field deblending on arrays: stamps per peak, iterative subtraction, centroid refinement, and
flux conservation.  No Rubin types: images are numpy cubes (bands, height, width).

For every parent (a footprint and its peaks):

1. **First pass, brightest first.**  Peaks are ordered by their brightness; a stamp is cut around each
   from the residual image, the network models the galaxy at its centre, and the model is subtracted
   from the residual before the next peak (as debvader does).  Peaks of the same rank in different
   parents go through the network in one batch.
2. **Centroid refinement.**  A model whose light centroid lies more than half a pixel from its stamp
   centre (an off-centre detection peak) is re-cut around the refined centre, within
   ``max_centroid_shift`` pixels.
3. **Refinement passes.**  Each galaxy is modelled again on the image minus every *other* model.
4. **Latent fit** (optional, ``fit_steps``).  The latent codes of all galaxies of a parent are fitted
   together, through the frozen decoder, to the parent's pixels (`fit.fit_latents`).
5. **Flux conservation.**  Inside the footprint, the observed flux of every pixel is split among the
   children in proportion to their models (pixels no model reaches go to the nearest peak), so the
   children add up to the parent exactly.

Every parent that goes in comes out: peaks whose stamps leave the image or cover masked pixels are
flagged, not dropped.
"""

from __future__ import annotations

__all__ = ["DeblendConfig", "Child", "Parent", "deblend_field", "cut_stamp", "paste_stamp", "add_at",
           "conserve_flux", "parent_boxes"]

import dataclasses
from collections.abc import Callable

import numpy as np

from ..geometry import overlap_slices
from .fit import estimate_variance, fit_latents

# A stamp model: (stamps (n, bands, s, s), neighbour positions (n, k, 2), n_samples) -> (models, flux_std)
StampModel = Callable[..., tuple[np.ndarray, np.ndarray | None]]


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
    model : `numpy.ndarray` (bands, s, s)
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


def deblend_field(image: np.ndarray, peaks: np.ndarray, model: StampModel, stamp_size: int,
                  parents: np.ndarray | None = None, footprints: np.ndarray | None = None,
                  bad: np.ndarray | None = None, config: DeblendConfig = DeblendConfig(),
                  max_neighbours: int = 8, variance: np.ndarray | None = None
                  ) -> tuple[list[Child], list[Parent]]:
    """Deblend every parent of a field.

    Parameters
    ----------
    image : `numpy.ndarray` (bands, h, w)
        Background-subtracted image, electrons.
    peaks : `numpy.ndarray` (n, 2)
        Peak positions (x, y), pixels.
    model : callable
        ``model(stamps, neighbour_positions, n_samples)`` -> (models, flux_std), e.g. `VaeDeblender`.
    stamp_size : `int`
        The model's stamp side.
    parents : `numpy.ndarray` (n,), optional
        Parent label (> 0) of every peak; one parent (label 1) by default.
    footprints : `numpy.ndarray` (h, w) of `int`, optional
        Parent label of every pixel (0: no parent); by default the whole image belongs to parent 1.
    bad : `numpy.ndarray` (h, w) of `bool`, optional
        Masked pixels, zeroed in the network input and left out of the conserved flux; non-finite
        pixels are treated as masked too.
    config : `DeblendConfig`
    max_neighbours : `int`
        Most neighbour peaks given to the network per stamp.
    variance : `numpy.ndarray` (bands,), optional
        Noise variance per band, for the latent fit; estimated from the pixels outside the footprints
        when not given.

    Returns
    -------
    children : `list` [`Child`]
        One per peak, in the input order.
    parents : `list` [`Parent`]
        One per parent label, in increasing label order.
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
    centers = np.clip(np.rint(peaks).astype(np.int64), [0, 0], [width - 1, height - 1])
    unique_labels = np.unique(labels)
    groups = [np.flatnonzero(labels == lab) for lab in unique_labels]

    # Brightest first within each parent: rank by the summed-band peak pixel.
    brightness = clean.sum(axis=0)[centers[:, 1], centers[:, 0]]
    rank = np.zeros(n, dtype=np.int64)
    for members in groups:
        rank[members[np.argsort(-brightness[members], kind="stable")]] = np.arange(len(members))

    models = np.zeros((n, image.shape[0], stamp_size, stamp_size), dtype=np.float32)
    edge = np.zeros(n, dtype=bool)
    masked = np.zeros(n, dtype=bool)
    refined = np.zeros(n, dtype=bool)
    residual = clean.copy()
    neighbours = _neighbour_positions(peaks, groups, centers, stamp_size, max_neighbours,
                                      config.use_neighbour_map)
    for r in range(int(rank.max()) + 1 if n else 0):
        idx = np.flatnonzero(rank == r)
        stamps = np.stack([cut_stamp(residual, tuple(centers[i]), stamp_size)[0] for i in idx])
        models[idx], _ = model(stamps, neighbours[idx], 0)
        for i in idx:
            paste_stamp(residual, models[i], tuple(centers[i]), -1.0)

    if config.refine_centroids and n:
        grid = np.arange(stamp_size) - stamp_size // 2
        light = np.clip(models.sum(axis=1), 0, None)
        total = light.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            dx = (light.sum(axis=1) * grid).sum(axis=1) / total
            dy = (light.sum(axis=2) * grid).sum(axis=1) / total
        move = (np.hypot(dx, dy) > 0.5) & (np.hypot(dx, dy) <= config.max_centroid_shift) & (total > 0)
        new_centers = centers.copy()
        new_centers[move] += np.rint(np.stack([dx[move], dy[move]], axis=1)).astype(np.int64)
        new_centers = np.clip(new_centers, [0, 0], [width - 1, height - 1])
        refined = np.any(new_centers != centers, axis=1)
        for i in np.flatnonzero(refined):
            # Keep the model where it is on the sky while its stamp moves.
            shifted = np.zeros_like(models[i])
            paste_stamp(shifted, models[i], tuple(centers[i] - new_centers[i] + stamp_size // 2))
            models[i] = shifted
        centers = new_centers
        neighbours = _neighbour_positions(peaks, groups, centers, stamp_size, max_neighbours,
                                      config.use_neighbour_map)

    flux_std = None
    latents = None
    if config.iterations > 1:
        del residual  # one image-sized array at a time
    for it in range(1, max(config.iterations, 1)):
        others = clean.copy()  # the image minus every model; each stamp adds its own model back
        for i in range(n):
            paste_stamp(others, models[i], tuple(centers[i]), -1.0)
        last = it == config.iterations - 1
        stamps = np.stack([cut_stamp(others, tuple(centers[i]), stamp_size)[0] + models[i]
                           for i in range(n)]) if n else models
        del others
        if last and config.fit_steps > 0:
            latents = model.encode(stamps, neighbours)
        models, flux_std = model(stamps, neighbours, config.n_samples if last else 0)
        del stamps
    if config.n_samples and config.iterations <= 1 and n:  # one pass: sample on the first-pass residual
        stamps = np.stack([cut_stamp(residual, tuple(centers[i]), stamp_size)[0] + models[i]
                           for i in range(n)])
        models, flux_std = model(stamps, neighbours, config.n_samples)

    if config.fit_steps > 0 and n:
        models = _fit(model, clean, bad, footprints, variance, centers, labels, neighbours, models, latents,
                      stamp_size, config)
    for i in range(n):
        _, edge[i] = cut_stamp(clean[:1], tuple(centers[i]), stamp_size)
        if bad is not None:
            masked[i] = bool(cut_stamp(bad[None].astype(np.float32), tuple(centers[i]), stamp_size)[0].any())

    children = []
    half = stamp_size // 2
    for i in range(n):
        flux = models[i].sum(axis=(1, 2), dtype=np.float64)
        children.append(Child(
            parent=int(labels[i]), peak=peaks[i], center=(int(centers[i, 0]), int(centers[i, 1])),
            model=models[i], origin=(int(centers[i, 0] - half), int(centers[i, 1] - half)),
            flux_model=flux, flux_conserved=flux.copy(),
            flux_model_err=(flux_std[i].astype(np.float64) if flux_std is not None
                            else np.full(len(flux), np.nan)),
            edge=bool(edge[i]), masked=bool(masked[i]), refined=bool(refined[i]),
            zero_flux=bool(np.all(flux <= 0))))
    boxes = parent_boxes(footprints)
    parent_results = [_conserve(clean, footprints, boxes.get(int(lab)), lab, members, children,
                                config.conserve_flux, config.keep_conserved_images)
                      for lab, members in zip(unique_labels, groups)]
    return children, parent_results


def _fit(model, clean: np.ndarray, bad: np.ndarray | None, footprints: np.ndarray,
         variance: np.ndarray | None, centers: np.ndarray, labels: np.ndarray, neighbours: np.ndarray,
         models: np.ndarray, latents: np.ndarray | None, stamp_size: int, config: DeblendConfig
         ) -> np.ndarray:
    """The joint latent fit of every parent's galaxies, starting from the encoder's codes of ``models``."""
    residual = clean.copy()
    for i in range(len(centers)):
        paste_stamp(residual, models[i], tuple(centers[i]), -1.0)
    if latents is None:  # one pass only: encode each galaxy on the image minus the others
        stamps = np.stack([cut_stamp(residual, tuple(centers[i]), stamp_size)[0] + models[i]
                           for i in range(len(centers))])
        latents = model.encode(stamps, neighbours)
        del stamps
    if variance is None:
        variance = estimate_variance(clean, footprints, bad)
    _, fitted = fit_latents(residual, 1.0 / np.asarray(variance, dtype=np.float64), bad, centers, labels,
                            latents, models, model.decode, stamp_size, steps=config.fit_steps,
                            learning_rate=config.fit_learning_rate, prior_weight=config.fit_prior_weight,
                            amplitude_sigma=config.fit_amplitude_sigma,
                            latent_scale=getattr(model, "latent_scale", None),
                            device=getattr(model, "device", "cpu"))
    return fitted


def conserve_flux(image: np.ndarray, footprint: np.ndarray, models: list[np.ndarray] | np.ndarray,
                  origins: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Split a parent's observed flux among its children in proportion to their models.

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
        Each child's peak (x, y) relative to the box: pixels no model reaches go to the nearest peak.

    Returns
    -------
    children : `numpy.ndarray` (n, bands, h, w), float32
        Each child's share of the observed image, zero outside the footprint; their sum is
        ``image * footprint`` exactly.
    """
    image = np.asarray(image, dtype=np.float32)
    footprint = np.asarray(footprint, dtype=bool)
    n = len(models)
    placed = np.zeros((n,) + image.shape, dtype=np.float32)
    if n == 0:
        return placed
    for k in range(n):
        add_at(placed[k], np.clip(models[k], 0, None), origins[k])
    total = placed.sum(axis=0)
    h, w = image.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    peaks = np.asarray(peaks, dtype=np.float64).reshape(n, 2)
    nearest = np.argmin((xx[None] - peaks[:, 0, None, None]) ** 2 + (yy[None] - peaks[:, 1, None, None]) ** 2,
                        axis=0)
    fallback = (np.arange(n)[:, None, None] == nearest[None]).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = np.where(total[None] > 0, placed / total[None], fallback[:, None])
    return (weights * (image * footprint)[None]).astype(np.float32)


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
        size = children[members[0]].model.shape[-1]
        x0 = max(min(children[i].origin[0] for i in members), 0)
        y0 = max(min(children[i].origin[1] for i in members), 0)
        x1 = min(max(children[i].origin[0] for i in members) + size, image.shape[-1])
        y1 = min(max(children[i].origin[1] for i in members) + size, image.shape[-2])
        box = (x0, y0, x1, y1)
    x0, y0, x1, y1 = box
    inside = footprints[y0:y1, x0:x1] == label
    observed = image[:, y0:y1, x0:x1] * inside
    flux = observed.sum(axis=(1, 2), dtype=np.float64)
    result = Parent(label=int(label), bbox=box, children=list(map(int, members)), conserved=None, flux=flux)
    if conserve:
        conserved = conserve_flux(image[:, y0:y1, x0:x1], inside, [children[i].model for i in members],
                                  np.array([(children[i].origin[0] - x0, children[i].origin[1] - y0)
                                            for i in members]),
                                  np.array([children[i].peak for i in members]) - [x0, y0])
        for k, i in enumerate(members):
            children[i].flux_conserved = conserved[k].sum(axis=(1, 2), dtype=np.float64)
        if keep_images:
            result.conserved = conserved
    return result

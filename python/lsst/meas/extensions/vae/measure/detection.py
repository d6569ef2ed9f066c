"""Multi-band detection on arrays: footprints and peaks of a patch (numpy and scipy; no Rubin types).

1. **Detection image.**  Each band is matched-filtered with its PSF; the bands are combined with
   inverse-variance weights into one signal-to-noise image
   ``nu = sum_b (I_b / V_b) * k_b / sqrt(sum_b (1 / V_b) * k_b**2)`` (``*``: convolution), which has
   unit noise for independent pixels.  Masked and non-finite pixels get no weight.
2. **Footprints.**  The 8-connected regions above ``threshold`` of at least ``min_area`` pixels;
   they are grown by ``grow_radius`` pixels (afw's ``nSigmaToGrow`` x PSF sigma) and regions that then
   touch are merged, as afw merges overlapping grown footprints.  Each region is a parent.
3. **Peaks.**  Local maxima of ``nu`` inside the footprints (over a (2 s + 1)^2 window, ``s =
   min_separation``) above ``peak_threshold``; a maximum that does not stand ``min_prominence`` above
   the lowest point on the straight line to a brighter one (a noise bump on a galaxy's wing) is
   dropped.  Every footprint keeps at least its brightest pixel as a peak.  Peaks are merged across
   bands by construction; ``band_snr`` says in which bands each peak is significant on its own.
"""

from __future__ import annotations

__all__ = ["Detections", "fft_convolve", "detection_snr", "band_snr_at", "grow_mask", "label_regions",
           "local_maxima", "prominent_peaks", "footprint_boxes", "psf_sigma", "detect"]

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.fft
import scipy.ndimage

from .shape import hsm_shape


@dataclasses.dataclass
class Detections:
    """Footprints and peaks of one patch, in array pixel coordinates.

    Attributes
    ----------
    labels : `numpy.ndarray` (h, w), int32
        Footprint label of every pixel (0: none; 1..n).
    bbox : `numpy.ndarray` (n, 4), int64
        (x0, y0, x1, y1) of footprint ``k`` in row ``k - 1``, x1 and y1 exclusive.
    area : `numpy.ndarray` (n,), int64
        Pixels in each footprint.
    peaks : `numpy.ndarray` (m, 2), int64
        (x, y) of every peak, brightest first within each footprint.
    peak_label : `numpy.ndarray` (m,), int32
        Footprint label of each peak.
    peak_snr : `numpy.ndarray` (m,)
        Detection signal-to-noise at each peak.
    band_snr : `numpy.ndarray` (m, bands)
        Per-band matched-filter signal-to-noise at each peak.
    snr : `numpy.ndarray` (h, w)
        The detection signal-to-noise image.
    """

    labels: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    peaks: np.ndarray
    peak_label: np.ndarray
    peak_snr: np.ndarray
    band_snr: np.ndarray
    snr: np.ndarray

    @property
    def n_footprints(self) -> int:
        return len(self.bbox)


def _fft_shape(image_shape: tuple[int, int], kernel_shape: tuple[int, int]) -> tuple[int, int]:
    """The padded FFT grid of a linear convolution: at least image + kernel - 1 on each axis, rounded up to
    a length whose factors are small (a 4040-pixel axis, 2^3 5 101, takes several times longer)."""
    return tuple(scipy.fft.next_fast_len(n + k - 1, real=True) for n, k in zip(image_shape, kernel_shape))


def fft_convolve(image: np.ndarray, kernel: np.ndarray, workers: int = 1) -> np.ndarray:
    """Convolve a 2-d image with an odd-sided kernel centred on its central pixel (zero padding).

    Returns an array of the image's shape (float64); ``workers`` threads compute the FFTs.
    """
    image = np.asarray(image, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    kh, kw = kernel.shape
    shape = _fft_shape(image.shape, kernel.shape)
    spectrum = (scipy.fft.rfft2(image, shape, workers=workers)
                * scipy.fft.rfft2(kernel, shape, workers=workers))
    out = scipy.fft.irfft2(spectrum, shape, workers=workers)
    return out[kh // 2: kh // 2 + image.shape[0], kw // 2: kw // 2 + image.shape[1]]


def _weights(image: np.ndarray, variance: np.ndarray, bad: np.ndarray | None) -> np.ndarray:
    good = np.isfinite(image) & np.isfinite(variance) & (variance > 0)
    if bad is not None:
        good &= ~bad
    with np.errstate(divide="ignore"):
        return np.where(good, 1.0 / np.where(good, variance, 1.0), 0.0)


def detection_snr(images: Sequence[np.ndarray], variances: Sequence[np.ndarray],
                  psfs: list[np.ndarray] | np.ndarray, bad: np.ndarray | None = None,
                  workers: int = 1, weights: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """The matched-filter signal-to-noise image, combined over bands.

    The bands' filtered images and weights are summed as spectra, so that a patch costs two FFTs per band
    and two inverse FFTs in all.

    Parameters
    ----------
    images, variances : sequence of `numpy.ndarray` (h, w), or `numpy.ndarray` (bands, h, w)
        Background-subtracted images and their variance (a list of the coadds' own arrays avoids
        stacking copies of a whole patch).
    psfs : sequence of `numpy.ndarray`
        PSF of each band (odd side, unit sum).
    bad : `numpy.ndarray` (h, w) of `bool`, optional
        Pixels to give no weight.
    workers : `int`
        Threads of the FFTs.
    weights : sequence of `numpy.ndarray` (h, w), optional
        Each band's pixel weights (the inverse variance, 0 where bad or not finite), when already made.

    Returns
    -------
    snr : `numpy.ndarray` (h, w)
        Combined detection image (0 where no band has weight).
    """
    image_shape = np.shape(images[0])
    kernel_shape = tuple(np.max([np.shape(k) for k in psfs], axis=0))
    shape = _fft_shape(image_shape, kernel_shape)
    signal = noise = None
    for b in range(len(images)):
        weight = _weights(images[b], variances[b], bad) if weights is None else weights[b]
        kernel = _unit_kernel(psfs[b], kernel_shape)
        # In float64 (scipy's FFTs of float32 arrays are single precision).
        weighted = np.where(weight > 0, images[b], 0.0).astype(np.float64) * weight
        kernel_spectrum = scipy.fft.rfft2(kernel, shape, workers=workers)
        band_signal = scipy.fft.rfft2(weighted, shape, workers=workers) * kernel_spectrum
        del weighted
        kernel_spectrum = scipy.fft.rfft2(kernel**2, shape, workers=workers)
        band_noise = scipy.fft.rfft2(weight.astype(np.float64), shape, workers=workers) * kernel_spectrum
        signal = band_signal if signal is None else signal + band_signal
        noise = band_noise if noise is None else noise + band_noise
    crop = (slice(kernel_shape[0] // 2, kernel_shape[0] // 2 + image_shape[0]),
            slice(kernel_shape[1] // 2, kernel_shape[1] // 2 + image_shape[1]))
    signal = scipy.fft.irfft2(signal, shape, workers=workers)[crop]
    noise = scipy.fft.irfft2(noise, shape, workers=workers)[crop]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(noise > 1e-12 * noise.max(initial=0.0), signal / np.sqrt(np.abs(noise)), 0.0)


def _unit_kernel(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A PSF image normalised to unit sum and zero-padded, centred, to the odd ``shape``."""
    kernel = np.asarray(psf, dtype=np.float64)
    kernel = kernel / kernel.sum()
    pad_y, pad_x = (shape[0] - kernel.shape[0]) // 2, (shape[1] - kernel.shape[1]) // 2
    return np.pad(kernel, ((pad_y, pad_y), (pad_x, pad_x)))


def band_snr_at(images: Sequence[np.ndarray], variances: Sequence[np.ndarray],
                psfs: list[np.ndarray] | np.ndarray, points: np.ndarray, bad: np.ndarray | None = None,
                chunk: int = 4096, weights: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Each band's own matched-filter signal-to-noise at some pixels.

    ``(I_b * k_b) / sqrt(V_b * k_b**2)`` at each point (``*``: convolution, zero outside the image and
    where a pixel has no weight), computed on the kernel-sized cut-outs around the points: the peaks of a
    patch, not the whole image.

    Parameters
    ----------
    images, variances, psfs, bad, weights
        As for `detection_snr`.
    points : `numpy.ndarray` (m, 2) of `int`
        (x, y) pixels.
    chunk : `int`
        Points per vectorised cut-out (memory: chunk x kernel pixels).

    Returns
    -------
    band_snr : `numpy.ndarray` (m, bands)
        0 where a band has no weight around the point.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    points = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    out = np.zeros((len(points), len(images)))
    for b in range(len(images)):
        weight = _weights(images[b], variances[b], bad) if weights is None else weights[b]
        kernel = np.asarray(psfs[b], dtype=np.float64)
        kernel = (kernel / kernel.sum())[::-1, ::-1]  # a convolution: the kernel flipped on the cut-out
        ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
        pad = ((ry, ry), (rx, rx))
        image = sliding_window_view(np.pad(np.where(weight > 0, images[b], 0.0), pad), kernel.shape)
        variance = sliding_window_view(np.pad(np.where(weight > 0, variances[b], 0.0), pad), kernel.shape)
        for lo in range(0, len(points), chunk):
            x, y = points[lo: lo + chunk, 0], points[lo: lo + chunk, 1]
            signal = np.einsum("mij,ij->m", image[y, x], kernel)
            noise = np.einsum("mij,ij->m", variance[y, x], kernel**2)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[lo: lo + chunk, b] = np.where(noise > 0, signal / np.sqrt(np.abs(noise)), 0.0)
    return out


def grow_mask(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilate a boolean image by a disk of ``radius`` pixels."""
    mask = np.asarray(mask, dtype=bool)
    r = int(np.floor(radius))
    if r <= 0:
        return mask.copy()
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if (dx or dy) and dx * dx + dy * dy <= radius * radius:
                out[max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] |= \
                    mask[max(-dy, 0): h + min(-dy, 0), max(-dx, 0): w + min(-dx, 0)]
    return out


def label_regions(mask: np.ndarray, min_area: int = 1) -> np.ndarray:
    """Label the 8-connected regions of a boolean image 1..n (0: background), in the order of their first
    pixel in a row-by-row scan, dropping regions of fewer than ``min_area`` pixels."""
    mask = np.asarray(mask, dtype=bool)
    labels, n = scipy.ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    labels = labels.astype(np.int32, copy=False)
    if min_area > 1 and n:
        area = np.bincount(labels.ravel(), minlength=n + 1)
        keep = area >= min_area
        keep[0] = False
        rank = np.where(keep, np.cumsum(keep), 0).astype(np.int32)  # the kept regions numbered 1..m
        labels = rank[labels]
    return labels


def local_maxima(image: np.ndarray, radius: int) -> np.ndarray:
    """Pixels equal to the maximum of their (2 radius + 1)^2 neighbourhood, as a boolean image."""
    from numpy.lib.stride_tricks import sliding_window_view

    radius = max(int(radius), 1)
    padded = np.pad(image, radius, mode="constant", constant_values=-np.inf)
    rows = sliding_window_view(padded, 2 * radius + 1, axis=1).max(axis=-1)
    window_max = sliding_window_view(rows, 2 * radius + 1, axis=0).max(axis=-1)
    return image >= window_max


def _line_minimum(image: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    n = int(max(abs(b[0] - a[0]), abs(b[1] - a[1]))) + 1
    t = np.linspace(0.0, 1.0, max(n, 2))
    xs = np.rint(a[0] + t * (b[0] - a[0])).astype(np.int64)
    ys = np.rint(a[1] + t * (b[1] - a[1])).astype(np.int64)
    return float(image[ys, xs].min())


def prominent_peaks(image: np.ndarray, candidates: np.ndarray, min_prominence: float) -> np.ndarray:
    """Which of one footprint's candidate peaks stand out (see the module docstring).

    Parameters
    ----------
    image : `numpy.ndarray` (h, w)
    candidates : `numpy.ndarray` (m, 2)
        (x, y) of the candidates, brightest first.
    min_prominence : `float`

    Returns
    -------
    keep : `numpy.ndarray` (m,) of `bool`
        The brightest is always kept.
    """
    values = image[candidates[:, 1], candidates[:, 0]]
    keep = np.ones(len(candidates), dtype=bool)
    for i in range(1, len(candidates)):
        col = max(_line_minimum(image, candidates[i], candidates[j]) for j in range(i))
        keep[i] = values[i] - col >= min_prominence
    return keep


def footprint_boxes(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x0, y0, x1, y1; n x 4) and areas (n,) of labels 1..n."""
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs] - 1
    big = np.iinfo(np.int64).max
    x0 = np.full(n, big, dtype=np.int64)
    y0 = np.full(n, big, dtype=np.int64)
    x1 = np.full(n, -1, dtype=np.int64)
    y1 = np.full(n, -1, dtype=np.int64)
    np.minimum.at(x0, lab, xs)
    np.minimum.at(y0, lab, ys)
    np.maximum.at(x1, lab, xs + 1)
    np.maximum.at(y1, lab, ys + 1)
    area = np.bincount(lab, minlength=n).astype(np.int64)
    return np.stack([x0, y0, x1, y1], axis=1), area


def psf_sigma(psf: np.ndarray) -> float:
    """Gaussian-equivalent sigma of a PSF image from adaptive moments (pixels); 1.5 if that fails."""
    shape = hsm_shape(psf)
    return 1.5 if shape.failed else float(shape.sigma)


def detect(images: Sequence[np.ndarray], variances: Sequence[np.ndarray], psfs: list[np.ndarray] | np.ndarray,
           bad: np.ndarray | None = None, threshold: float = 5.0, min_area: int = 5,
           grow_radius: float = 3.0, peak_threshold: float = 5.0, min_separation: int = 2,
           min_prominence: float = 2.0, workers: int = 1) -> Detections:
    """Detect footprints and peaks on a multi-band patch (see the module docstring).

    Parameters
    ----------
    images, variances : sequence of `numpy.ndarray` (h, w), or `numpy.ndarray` (bands, h, w)
    psfs : sequence of `numpy.ndarray`
    bad : `numpy.ndarray` (h, w) of `bool`, optional
    threshold : `float`
        Footprint threshold, detection signal-to-noise.
    min_area : `int`
        Smallest footprint before growing, pixels.
    grow_radius : `float`
        Footprint growth, pixels.
    peak_threshold : `float`
        Lowest peak, detection signal-to-noise.
    min_separation : `int`
        Half-side of the local-maximum window, pixels.
    min_prominence : `float`
        Lowest peak prominence, detection signal-to-noise.
    workers : `int`
        Threads of the detection image's FFTs.

    Returns
    -------
    detections : `Detections`
    """
    images = [np.asarray(image, dtype=np.float32) for image in images]
    variances = [np.asarray(variance, dtype=np.float32) for variance in variances]
    weights = [_weights(image, variance, bad) for image, variance in zip(images, variances)]
    snr = detection_snr(images, variances, psfs, bad, workers=workers, weights=weights)
    above = label_regions(snr > threshold, min_area) > 0
    labels = label_regions(grow_mask(above, grow_radius))
    n = int(labels.max())
    bbox, area = footprint_boxes(labels, n)

    is_max = local_maxima(snr, min_separation) & (labels > 0) & (snr >= peak_threshold)
    ys, xs = np.nonzero(is_max)
    cand_label = labels[ys, xs]
    cand_value = snr[ys, xs]
    peaks, peak_label = [], []
    order = np.lexsort((-cand_value, cand_label))  # by label, brightest first
    xs, ys, cand_label = xs[order], ys[order], cand_label[order]
    starts = np.searchsorted(cand_label, np.arange(1, n + 2))
    for k in range(1, n + 1):
        lo, hi = starts[k - 1], starts[k]
        if hi == lo:  # no maximum above the peak threshold: the brightest pixel
            x0, y0, x1, y1 = bbox[k - 1]
            sub = np.where(labels[y0:y1, x0:x1] == k, snr[y0:y1, x0:x1], -np.inf)
            j, i = np.unravel_index(np.argmax(sub), sub.shape)
            cand = np.array([[x0 + i, y0 + j]], dtype=np.int64)
        else:
            cand = np.stack([xs[lo:hi], ys[lo:hi]], axis=1).astype(np.int64)
            cand = cand[prominent_peaks(snr, cand, min_prominence)]
        peaks.append(cand)
        peak_label.append(np.full(len(cand), k, dtype=np.int32))
    peaks_arr = np.concatenate(peaks) if peaks else np.zeros((0, 2), dtype=np.int64)
    labels_arr = np.concatenate(peak_label) if peak_label else np.zeros(0, dtype=np.int32)
    return Detections(labels=labels, bbox=bbox, area=area, peaks=peaks_arr, peak_label=labels_arr,
                      peak_snr=snr[peaks_arr[:, 1], peaks_arr[:, 0]].astype(np.float64),
                      band_snr=band_snr_at(images, variances, psfs, peaks_arr, bad, weights=weights), snr=snr)

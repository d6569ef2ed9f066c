"""Pixel-box arithmetic shared by the simulator and the deblending core."""

from __future__ import annotations

__all__ = ["overlap_slices"]


def overlap_slices(image_shape: tuple[int, int], stamp_shape: tuple[int, int], x0: int, y0: int
                   ) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices of an image and of a stamp (lower-left pixel at x0, y0) where the two overlap.

    Both slice pairs are (rows, columns); they are empty when the stamp lies outside the image.
    """
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(image_shape[0], y0 + stamp_shape[0]), min(image_shape[1], x0 + stamp_shape[1])
    ye, xe = max(ye, ys), max(xe, xs)
    return (slice(ys, ye), slice(xs, xe)), (slice(ys - y0, ye - y0), slice(xs - x0, xe - x0))

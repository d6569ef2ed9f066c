"""In-memory coadd and footprint images of the standalone pipeline, and their FITS files.

`Coadd` stands in for afw's ``ExposureF`` on one band of a patch: image, variance, mask and PSF arrays
with the patch's pixel box, band, photometric zero point and pixel scale.  `FootprintImage` holds the
detection footprints of a patch as a label image.  Both are written as multi-extension FITS in the
layout afw uses (``IMAGE``, ``MASK``, ``VARIANCE`` extensions; ``LTV1``/``LTV2`` for the box origin;
``MP_*`` keywords for the mask planes), so that any FITS viewer can open them.

Pixel convention: ``image[j, i]`` is pixel (x, y) = (i + x0, j + y0) of the patch, x along columns.
Boxes are (x0, y0, x1, y1) with x1 and y1 exclusive, as in `deblend_field`'s `Parent.bbox`.
"""

from __future__ import annotations

__all__ = ["Coadd", "FootprintImage", "write_coadd", "read_coadd", "write_footprints", "read_footprints",
           "DEFAULT_MASK_PLANES"]

import dataclasses
from pathlib import Path

import numpy as np
from astropy.io import fits

from ...sim.patch import MASK_PLANES, PatchBand

# Mask bits, named as in afw's default mask planes (those of the simulator).
DEFAULT_MASK_PLANES: dict[str, int] = dict(MASK_PLANES)

Box = tuple[int, int, int, int]


def _native(array: np.ndarray, dtype: type) -> np.ndarray:
    """A native-byte-order copy (FITS data are big-endian; sep and torch need native order)."""
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("="))


def _check_box(bbox: Box, shape: tuple[int, ...], what: str) -> Box:
    bbox = tuple(int(v) for v in bbox)
    if len(bbox) != 4 or (bbox[3] - bbox[1], bbox[2] - bbox[0]) != tuple(shape[-2:]):
        raise ValueError(f"{what}: bbox {bbox} does not match the array shape {tuple(shape)}.")
    return bbox  # type: ignore[return-value]


@dataclasses.dataclass
class Coadd:
    """One band of a coadd patch.

    Attributes
    ----------
    image : `numpy.ndarray` (h, w), float32
        Background-subtracted image, electrons.
    variance : `numpy.ndarray` (h, w), float32
        Per-pixel variance, electrons squared.
    mask : `numpy.ndarray` (h, w), int32
        Bit mask; bit numbers in ``mask_planes``.
    psf : `numpy.ndarray` (k, k)
        PSF image (odd side, unit sum), centred on its central pixel.
    bbox : `tuple` [`int`, `int`, `int`, `int`]
        (x0, y0, x1, y1) of the image in patch pixels, x1 and y1 exclusive.
    band : `str`
        Band name (``r``...).
    zeropoint : `float`
        AB magnitude of one electron (``mag = zeropoint - 2.5 log10(flux)``).
    pixel_scale : `float`
        Pixel side, arcsec.
    mask_planes : `dict` [`str`, `int`]
        Mask plane name to bit number.
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: np.ndarray
    bbox: Box
    band: str
    zeropoint: float
    pixel_scale: float
    mask_planes: dict[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_MASK_PLANES))

    def __post_init__(self) -> None:
        self.image = _native(self.image, np.float32)
        self.variance = _native(self.variance, np.float32)
        self.mask = _native(self.mask, np.int32)
        self.psf = _native(self.psf, np.float64)
        if self.variance.shape != self.image.shape or self.mask.shape != self.image.shape:
            raise ValueError(f"Coadd {self.band}: image, variance and mask shapes differ "
                             f"({self.image.shape}, {self.variance.shape}, {self.mask.shape}).")
        if self.psf.ndim != 2 or self.psf.shape[0] % 2 == 0 or self.psf.shape[0] != self.psf.shape[1]:
            raise ValueError(f"Coadd {self.band}: the PSF must be square with an odd side, "
                             f"not {self.psf.shape}.")
        self.bbox = _check_box(self.bbox, self.image.shape, f"Coadd {self.band}")
        self.zeropoint = float(self.zeropoint)
        self.pixel_scale = float(self.pixel_scale)
        self.mask_planes = {str(k): int(v) for k, v in self.mask_planes.items()}

    @property
    def xy0(self) -> tuple[int, int]:
        """(x0, y0) of the first pixel."""
        return self.bbox[0], self.bbox[1]

    def mask_bits(self, planes: list[str] | tuple[str, ...]) -> int:
        """The OR of the bits of the named planes (planes this coadd does not define are ignored)."""
        bits = 0
        for name in planes:
            if name in self.mask_planes:
                bits |= 1 << self.mask_planes[name]
        return bits

    @classmethod
    def from_patch_band(cls, band: PatchBand, xy0: tuple[int, int] = (0, 0)) -> Coadd:
        """Wrap one band of a simulated patch (`lsst.meas.extensions.vae.sim.patch.PatchBand`)."""
        h, w = band.image.shape
        return cls(image=band.image, variance=band.variance, mask=band.mask, psf=band.psf,
                   bbox=(xy0[0], xy0[1], xy0[0] + w, xy0[1] + h), band=band.name, zeropoint=band.zeropoint,
                   pixel_scale=band.pixel_scale)


@dataclasses.dataclass
class FootprintImage:
    """The detection footprints of a patch as a label image.

    Attributes
    ----------
    labels : `numpy.ndarray` (h, w), int32
        0 outside every footprint; ``k`` (1-based) inside the footprint of parent ``ids[k - 1]``.
    ids : `numpy.ndarray` (n,), int64
        Parent id of each label.
    bbox : `tuple` [`int`, `int`, `int`, `int`]
        (x0, y0, x1, y1) of the label image in patch pixels.
    """

    labels: np.ndarray
    ids: np.ndarray
    bbox: Box

    def __post_init__(self) -> None:
        self.labels = _native(self.labels, np.int32)
        self.ids = _native(np.asarray(self.ids).reshape(-1), np.int64)
        self.bbox = _check_box(self.bbox, self.labels.shape, "FootprintImage")
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() > len(self.ids)):
            raise ValueError(f"FootprintImage: labels run to {self.labels.max()} but there are "
                             f"{len(self.ids)} ids.")

    def label_of(self, parent_id: int) -> int:
        """The label of a parent id."""
        where = np.flatnonzero(self.ids == parent_id)
        if len(where) != 1:
            raise KeyError(f"Parent {parent_id} is not in the footprint image.")
        return int(where[0]) + 1


def _box_header(header: fits.Header, bbox: Box) -> None:
    # afw's convention: LTV1/LTV2 = -(x0, y0) maps patch pixels to array pixels.
    header["LTV1"] = -bbox[0]
    header["LTV2"] = -bbox[1]


def _read_box(header: fits.Header, shape: tuple[int, ...]) -> Box:
    x0, y0 = -int(header.get("LTV1", 0)), -int(header.get("LTV2", 0))
    return x0, y0, x0 + shape[-1], y0 + shape[-2]


def write_coadd(coadd: Coadd, path: str | Path) -> None:
    """Write a `Coadd` to a FITS file (primary HDU with the metadata, then IMAGE, MASK, VARIANCE, PSF)."""
    primary = fits.PrimaryHDU()
    primary.header["BAND"] = coadd.band
    primary.header["ZEROPT"] = (coadd.zeropoint, "AB magnitude of one electron")
    primary.header["PIXSCALE"] = (coadd.pixel_scale, "arcsec per pixel")
    primary.header["BUNIT"] = "electron"
    image = fits.ImageHDU(coadd.image, name="IMAGE")
    mask = fits.ImageHDU(coadd.mask, name="MASK")
    for name, bit in coadd.mask_planes.items():
        mask.header[f"HIERARCH MP_{name}"] = bit
    variance = fits.ImageHDU(coadd.variance, name="VARIANCE")
    for hdu in (image, mask, variance):
        _box_header(hdu.header, coadd.bbox)
    psf = fits.ImageHDU(coadd.psf, name="PSF")
    fits.HDUList([primary, image, mask, variance, psf]).writeto(path, overwrite=True)


def read_coadd(path: str | Path) -> Coadd:
    """Read a `Coadd` written by `write_coadd`."""
    with fits.open(path, memmap=False) as hdus:
        header = hdus[0].header
        image = hdus["IMAGE"]
        planes = {key[3:]: int(value) for key, value in hdus["MASK"].header.items() if key.startswith("MP_")}
        return Coadd(image=image.data, variance=hdus["VARIANCE"].data, mask=hdus["MASK"].data,
                     psf=hdus["PSF"].data, bbox=_read_box(image.header, image.data.shape),
                     band=str(header["BAND"]), zeropoint=float(header["ZEROPT"]),
                     pixel_scale=float(header["PIXSCALE"]), mask_planes=planes)


def write_footprints(footprints: FootprintImage, path: str | Path) -> None:
    """Write a `FootprintImage` to FITS (LABELS image extension, IDS binary table)."""
    labels = fits.ImageHDU(footprints.labels, name="LABELS")
    _box_header(labels.header, footprints.bbox)
    ids = fits.BinTableHDU.from_columns([fits.Column(name="id", format="K", array=footprints.ids)],
                                        name="IDS")
    fits.HDUList([fits.PrimaryHDU(), labels, ids]).writeto(path, overwrite=True)


def read_footprints(path: str | Path) -> FootprintImage:
    """Read a `FootprintImage` written by `write_footprints`."""
    with fits.open(path, memmap=False) as hdus:
        labels = hdus["LABELS"]
        return FootprintImage(labels=labels.data, ids=np.asarray(hdus["IDS"].data["id"]),
                              bbox=_read_box(labels.header, labels.data.shape))

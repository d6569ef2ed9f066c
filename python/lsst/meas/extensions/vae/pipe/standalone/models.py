"""Per-patch model data of the VAE deblender (the standalone counterpart of ``LsstScarletModelData``).

For every parent that was deblended (and every isolated source that was modelled or kept as is), a
`BlendModel` holds the parent's footprint over its box and one `ChildModel` per child: its ids, the
peak, and the per-band model cube with the position of its lower-left pixel.  Measurement rebuilds each
child's pixels from these (re-distributing the observed flux in proportion to the models).

HDF5 layout (``write_model_data``)::

    /                       attrs: format_version, bands (JSON list), metadata (JSON)
    /blends/<parent id>     attrs: bbox (x0, y0, x1, y1); dataset footprint (uint8, h x w)
    /blends/<parent id>/children/<child id>
                            attrs: peak_id, origin (x0, y0), peak (x, y); dataset model (float32,
                            bands x h x w, gzip)

All positions are (x, y) patch pixels, x along columns, as in the deblending core.
"""

from __future__ import annotations

__all__ = ["ChildModel", "BlendModel", "VaeModelData", "write_model_data", "read_model_data"]

import dataclasses
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT_VERSION = "1"

Box = tuple[int, int, int, int]


@dataclasses.dataclass
class ChildModel:
    """The model of one child.

    Attributes
    ----------
    id : `int`
        Object id of the child (the parent id for an isolated source).
    peak_id : `int`
        Id of the detection peak it was modelled from.
    origin : `tuple` [`int`, `int`]
        (x0, y0) of the model's lower-left pixel, patch pixels.
    peak : `tuple` [`float`, `float`]
        (x, y) of the detection peak, patch pixels.
    model : `numpy.ndarray` (bands, h, w), float32
        Noiseless model, electrons.
    """

    id: int
    peak_id: int
    origin: tuple[int, int]
    peak: tuple[float, float]
    model: np.ndarray

    def __post_init__(self) -> None:
        self.id = int(self.id)
        self.peak_id = int(self.peak_id)
        self.origin = (int(self.origin[0]), int(self.origin[1]))
        self.peak = (float(self.peak[0]), float(self.peak[1]))
        self.model = np.ascontiguousarray(self.model, dtype=np.float32)
        if self.model.ndim != 3:
            raise ValueError(f"Child {self.id}: the model must be (bands, h, w), not {self.model.shape}.")

    @property
    def bbox(self) -> Box:
        """(x0, y0, x1, y1) of the model stamp."""
        h, w = self.model.shape[-2:]
        return self.origin[0], self.origin[1], self.origin[0] + w, self.origin[1] + h


@dataclasses.dataclass
class BlendModel:
    """The models of one parent.

    Attributes
    ----------
    parent_id : `int`
    bbox : `tuple` [`int`, `int`, `int`, `int`]
        (x0, y0, x1, y1) of the parent's footprint, patch pixels.
    footprint : `numpy.ndarray` (h, w), bool
        The parent's footprint over ``bbox``.
    children : `list` [`ChildModel`]
        Its children; empty for an isolated source that was not modelled.
    """

    parent_id: int
    bbox: Box
    footprint: np.ndarray
    children: list[ChildModel] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.parent_id = int(self.parent_id)
        self.bbox = tuple(int(v) for v in self.bbox)  # type: ignore[assignment]
        self.footprint = np.ascontiguousarray(self.footprint, dtype=bool)
        if self.footprint.shape != (self.bbox[3] - self.bbox[1], self.bbox[2] - self.bbox[0]):
            raise ValueError(f"Parent {self.parent_id}: footprint {self.footprint.shape} does not fit its "
                             f"bbox {self.bbox}.")


@dataclasses.dataclass
class VaeModelData:
    """The models of every parent of a patch.

    Attributes
    ----------
    bands : `tuple` [`str`]
        Bands of the models' first axis, in order.
    blends : `dict` [`int`, `BlendModel`]
        By parent id.
    metadata : `dict`
        JSON-serialisable extras (weights name and digest, stamp size, deblend options).
    """

    bands: tuple[str, ...]
    blends: dict[int, BlendModel] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bands = tuple(str(b) for b in self.bands)

    def children(self) -> dict[int, tuple[int, ChildModel]]:
        """Every child model by child id, with its parent id."""
        return {child.id: (parent_id, child) for parent_id, blend in self.blends.items()
                for child in blend.children}

    def render(self, shape: tuple[int, int], xy0: tuple[int, int] = (0, 0)) -> np.ndarray:
        """The sum of every model on a (bands, h, w) image whose first pixel is ``xy0``."""
        from ...deblend.field import add_at

        out = np.zeros((len(self.bands),) + tuple(shape), dtype=np.float32)
        for blend in self.blends.values():
            for child in blend.children:
                add_at(out, child.model, (child.origin[0] - xy0[0], child.origin[1] - xy0[1]))
        return out


def write_model_data(data: VaeModelData, path: str | Path) -> None:
    """Write `VaeModelData` to an HDF5 file (layout in the module docstring)."""
    with h5py.File(path, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["bands"] = json.dumps(list(data.bands))
        f.attrs["metadata"] = json.dumps(data.metadata)
        blends = f.create_group("blends")
        for parent_id, blend in data.blends.items():
            if parent_id != blend.parent_id:
                raise ValueError(f"Blend stored under {parent_id} has parent id {blend.parent_id}.")
            group = blends.create_group(str(parent_id))
            group.attrs["bbox"] = np.asarray(blend.bbox, dtype=np.int64)
            group.create_dataset("footprint", data=blend.footprint.astype(np.uint8), compression="gzip")
            children = group.create_group("children")
            for child in blend.children:
                node = children.create_group(str(child.id))
                node.attrs["peak_id"] = child.peak_id
                node.attrs["origin"] = np.asarray(child.origin, dtype=np.int64)
                node.attrs["peak"] = np.asarray(child.peak, dtype=np.float64)
                node.create_dataset("model", data=child.model, compression="gzip", compression_opts=4,
                                    shuffle=True)


def read_model_data(path: str | Path, parents: list[int] | None = None) -> VaeModelData:
    """Read `VaeModelData` written by `write_model_data`.

    Parameters
    ----------
    path : `str` or `pathlib.Path`
    parents : `list` [`int`], optional
        Read only these parents' blends (all by default).
    """
    with h5py.File(path, "r") as f:
        version = f.attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path} is not VAE model data of format {FORMAT_VERSION} (found {version!r}).")
        data = VaeModelData(bands=tuple(json.loads(f.attrs["bands"])),
                            metadata=json.loads(f.attrs["metadata"]))
        wanted = None if parents is None else {str(int(p)) for p in parents}
        for key, group in f["blends"].items():
            if wanted is not None and key not in wanted:
                continue
            children = [ChildModel(id=int(child_key), peak_id=int(node.attrs["peak_id"]),
                                   origin=tuple(node.attrs["origin"]), peak=tuple(node.attrs["peak"]),
                                   model=node["model"][()])
                        for child_key, node in group["children"].items()]
            children.sort(key=lambda c: c.id)
            data.blends[int(key)] = BlendModel(parent_id=int(key), bbox=tuple(group.attrs["bbox"]),
                                               footprint=group["footprint"][()].astype(bool),
                                               children=children)
        data.blends = dict(sorted(data.blends.items()))
        return data

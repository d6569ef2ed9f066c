"""Butler formatters of the standalone storage classes (FITS coadds and footprints, HDF5 models).

They are registered for the storage classes ``VaeCoadd``, ``VaeFootprints`` and ``VaeModelData`` by the
package's butler configuration (`lsst.meas.extensions.vae.pipe.standalone.butler_config`).
"""

from __future__ import annotations

__all__ = ["CoaddFormatter", "FootprintImageFormatter", "VaeModelDataFormatter"]

from typing import Any

from lsst.daf.butler import FormatterV2
from lsst.resources import ResourcePath

from .coadd import Coadd, FootprintImage, read_coadd, read_footprints, write_coadd, write_footprints
from .models import VaeModelData, read_model_data, write_model_data


def _check_type(obj: Any, pytype: type, formatter: FormatterV2) -> None:
    if not isinstance(obj, pytype):
        raise TypeError(f"{type(formatter).__name__} writes {pytype.__name__}, not {type(obj).__name__}.")


class CoaddFormatter(FormatterV2):
    """Read and write `Coadd` as multi-extension FITS."""

    default_extension = ".fits"
    supported_extensions = frozenset({".fits"})
    can_read_from_local_file = True

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        return read_coadd(path)

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        _check_type(in_memory_dataset, Coadd, self)
        write_coadd(in_memory_dataset, uri.ospath)


class FootprintImageFormatter(FormatterV2):
    """Read and write `FootprintImage` as FITS (label image and id table)."""

    default_extension = ".fits"
    supported_extensions = frozenset({".fits"})
    can_read_from_local_file = True

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        return read_footprints(path)

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        _check_type(in_memory_dataset, FootprintImage, self)
        write_footprints(in_memory_dataset, uri.ospath)


class VaeModelDataFormatter(FormatterV2):
    """Read and write `VaeModelData` as HDF5.

    Read parameter ``parents`` (a list of parent ids) reads only those blends.
    """

    default_extension = ".h5"
    supported_extensions = frozenset({".h5", ".hdf5"})
    can_read_from_local_file = True

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        parameters = dict(self.file_descriptor.parameters or {})
        parents = parameters.pop("parents", None)
        if parameters:
            raise KeyError(f"Unsupported parameters {sorted(parameters)} in a VaeModelData read.")
        return read_model_data(path, parents=parents)

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        _check_type(in_memory_dataset, VaeModelData, self)
        write_model_data(in_memory_dataset, uri.ospath)

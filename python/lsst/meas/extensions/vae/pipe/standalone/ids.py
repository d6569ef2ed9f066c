"""Object ids unique over a repository without a skymap package.

Stands in for ``SkyMapIdGeneratorConfig``: an id packs (release, tract, patch, counter) into a positive
64-bit integer, so that catalogues of different patches can be stacked without id clashes::

    id = ((release_id * 2**TRACT_BITS + tract) * 2**PATCH_BITS + patch) * 2**COUNTER_BITS + counter
"""

from __future__ import annotations

__all__ = ["IdGeneratorConfig", "PatchIdGenerator"]

import dataclasses

import numpy as np
from lsst.pex.config import Config, Field

COUNTER_BITS = 28
PATCH_BITS = 14
TRACT_BITS = 18
RELEASE_BITS = 63 - COUNTER_BITS - PATCH_BITS - TRACT_BITS


class IdGeneratorConfig(Config):
    """How object ids are made (the part of DRP's ``idGenerator`` this pipeline needs)."""

    release_id = Field[int](doc=f"Data release number, 0 to {2**RELEASE_BITS - 1}.", default=0,
                            check=lambda v: 0 <= v < 2**RELEASE_BITS)

    def apply(self, tract: int, patch: int) -> PatchIdGenerator:
        """The id generator of one patch."""
        return PatchIdGenerator(release_id=self.release_id, tract=int(tract), patch=int(patch))


@dataclasses.dataclass(frozen=True)
class PatchIdGenerator:
    """Ids of the objects of one patch."""

    release_id: int
    tract: int
    patch: int

    def __post_init__(self) -> None:
        if not 0 <= self.tract < 2**TRACT_BITS or not 0 <= self.patch < 2**PATCH_BITS:
            raise ValueError(f"Tract {self.tract} or patch {self.patch} does not fit the id layout.")

    @property
    def base(self) -> int:
        """The id of counter 0."""
        return ((self.release_id * 2**TRACT_BITS + self.tract) * 2**PATCH_BITS + self.patch) * 2**COUNTER_BITS

    def make(self, counters: np.ndarray | range) -> np.ndarray:
        """Ids of the given counters (1 and up; 0 is kept for "no object")."""
        counters = np.asarray(counters, dtype=np.int64)
        if counters.size and (counters.min() < 1 or counters.max() >= 2**COUNTER_BITS):
            raise ValueError(f"Object counters must lie in [1, {2**COUNTER_BITS}).")
        return self.base + counters

    def counter(self, ids: np.ndarray) -> np.ndarray:
        """The counters of ids made by this generator."""
        return np.asarray(ids, dtype=np.int64) - self.base

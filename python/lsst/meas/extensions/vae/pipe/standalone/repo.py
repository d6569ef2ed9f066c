"""A butler repository of simulated coadd patches, made without a skymap package or afw.

`make_repo` creates the repository with the package's storage classes in its own configuration, inserts
the dimension records by hand (an instrument with one physical filter per band, which implies the
bands; a skymap, one tract and one patch per simulated patch) and ingests each patch's coadds as
``deep_coadd`` (tract, patch, band, skymap; storage class ``VaeCoadd``) and its truth table as
``truth_catalog`` (tract, patch, skymap; ``ArrowAstropy``).
"""

from __future__ import annotations

__all__ = ["make_repo", "open_repo", "recover_repo", "DEFAULT_SKYMAP", "DEFAULT_INSTRUMENT", "INPUT_RUN"]

import contextlib
import hashlib
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lsst.daf.butler import Butler, DatasetType

from ...sim.patch import Patch
from .butler_config import seed_config, use_butler_config
from .coadd import Coadd

DEFAULT_SKYMAP = "vae_sim"
DEFAULT_INSTRUMENT = "VaeSim"
INPUT_RUN = "vae/inputs"


def recover_repo(repo_dir: str | Path) -> bool:
    """Roll back the registry transaction that a killed process left open, if there is one (SQLite).

    A process killed while it writes to a SQLite registry (``pipetask run`` killed while it stores a
    dataset) leaves the database's rollback journal beside it (a "hot journal").  SQLite rolls it back
    when the database is next opened for writing, but a read-only connection cannot and fails with
    "attempt to write a readonly database" -- and ``pipetask run`` opens the repository read-only first,
    so its re-run (``--extend-run``) fails until something opens the repository for writing.  This opens
    the database for writing, which rolls the journal back; SQLite's locks leave a journal of a live
    writer alone, so it is safe while another process works on the repository.

    Parameters
    ----------
    repo_dir : `str` or `pathlib.Path`
        The repository (its ``butler.yaml``).

    Returns
    -------
    found : `bool`
        Whether there was a journal (the database was then opened for writing); `False` for a registry
        that is not a local SQLite file.
    """
    from lsst.daf.butler import ButlerConfig
    from lsst.resources import ResourcePath

    config = ButlerConfig(str(repo_dir))
    db = str(config.get(("registry", "db"), ""))
    root = ResourcePath(config.get("root") or config.configDir, forceDirectory=True)
    if not db.startswith("sqlite:///") or not root.isLocal:
        return False  # a database server rolls back the transactions of lost connections itself
    path = Path(db.removeprefix("sqlite:///").replace("<butlerRoot>", root.ospath.rstrip("/")))
    if not path.with_name(path.name + "-journal").exists():
        return False
    connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the first read rolls back
    finally:
        connection.close()
    return True


def open_repo(repo_dir: str | Path, **kwargs: Any) -> Butler:
    """A butler on a repository, with the package's butler configuration on ``DAF_BUTLER_CONFIG_PATH``.

    A registry transaction left open by a killed process is rolled back first (`recover_repo`), so that a
    read-only butler opens after a kill.  ``kwargs`` go to `lsst.daf.butler.Butler.from_config`
    (``collections``, ``writeable``, ``run``...).
    """
    use_butler_config()
    # Best effort: a repository that cannot be read, or written, fails in the butler below with its own
    # message.
    with contextlib.suppress(Exception):
        recover_repo(repo_dir)
    return Butler.from_config(str(repo_dir), **kwargs)


def _grid_bands(patch: Patch) -> list[str]:
    """The bands on the reference band's pixel grid (the others cannot be stacked with it)."""
    ref = patch.band(patch.config.reference_band)
    return [b.name for b in patch.bands
            if b.image.shape == ref.image.shape and b.pixel_scale == ref.pixel_scale]


def make_repo(repo_dir: str | Path, patches: Sequence[Patch] | Mapping[int, Patch], *,
              skymap: str = DEFAULT_SKYMAP, tract: int = 0, instrument: str = DEFAULT_INSTRUMENT,
              run: str = INPUT_RUN, origin: tuple[int, int] = (0, 0),
              bands: Sequence[str] | None = None) -> Butler:
    """Create a repository holding simulated patches.

    Parameters
    ----------
    repo_dir : `str` or `pathlib.Path`
        A new repository (fails if one exists there).
    patches : sequence or mapping of `lsst.meas.extensions.vae.sim.patch.Patch`
        The patches; a sequence is numbered 0, 1, ...; a mapping gives the patch ids.
    skymap, tract, instrument : `str`, `int`, `str`
        Names of the dimension records to insert.
    run : `str`
        Run collection of the ingested datasets.
    origin : `tuple` [`int`, `int`]
        (x0, y0) of every patch's first pixel (truth positions are shifted by it too).
    bands : sequence of `str`, optional
        Bands to ingest; by default those on the reference band's pixel grid.

    Returns
    -------
    butler : `lsst.daf.butler.Butler`
        Writeable, with ``run`` as its run and default collection.
    """
    numbered = dict(patches) if isinstance(patches, Mapping) else dict(enumerate(patches))
    if not numbered:
        raise ValueError("No patch to ingest.")
    use_butler_config()
    Butler.makeRepo(str(repo_dir), config=seed_config())
    butler = Butler.from_config(str(repo_dir), writeable=True, run=run)
    registry = butler.registry

    all_bands: list[str] = []
    for patch in numbered.values():
        for name in (bands or _grid_bands(patch)):
            if name not in all_bands:
                all_bands.append(name)
    registry.insertDimensionData("instrument", {"name": instrument, "visit_max": 1, "exposure_max": 1,
                                                "detector_max": 1, "visit_system": 0,
                                                "class_name": "lsst.meas.extensions.vae.sim"})
    registry.insertDimensionData("physical_filter", *[
        {"instrument": instrument, "name": f"{instrument}_{band}", "band": band} for band in all_bands])
    skymap_hash = hashlib.sha1(f"{skymap}:{tract}:{sorted(numbered)}".encode()).digest()
    registry.insertDimensionData("skymap", {"name": skymap, "hash": skymap_hash, "tract_max": tract + 1,
                                            "patch_nx_max": max(numbered) + 1, "patch_ny_max": 1})
    registry.insertDimensionData("tract", {"skymap": skymap, "id": tract})
    registry.insertDimensionData("patch", *[
        {"skymap": skymap, "tract": tract, "id": patch_id, "cell_x": patch_id, "cell_y": 0}
        for patch_id in numbered])

    universe = butler.dimensions
    coadd_type = DatasetType("deep_coadd", ("tract", "patch", "band", "skymap"), "VaeCoadd",
                             universe=universe)
    truth_type = DatasetType("truth_catalog", ("tract", "patch", "skymap"), "ArrowAstropy", universe=universe)
    registry.registerDatasetType(coadd_type)
    registry.registerDatasetType(truth_type)

    for patch_id, patch in numbered.items():
        data_id = {"skymap": skymap, "tract": tract, "patch": patch_id}
        for name in (bands or _grid_bands(patch)):
            butler.put(Coadd.from_patch_band(patch.band(name), xy0=origin), coadd_type, band=name, **data_id)
        truth = patch.truth.copy()
        truth["x"] = truth["x"] + origin[0]
        truth["y"] = truth["y"] + origin[1]
        truth.meta["reference_band"] = patch.config.reference_band
        truth.meta["seed"] = patch.seed
        butler.put(truth, truth_type, **data_id)
    return butler

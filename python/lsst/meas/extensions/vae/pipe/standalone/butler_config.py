"""The butler configuration that makes the standalone storage classes known.

Two routes, both shipped here (use either or both; the definitions are identical so they merge):

- ``DAF_BUTLER_CONFIG_PATH``: the folder `butler_config_dir` holds ``storageClasses.yaml`` and
  ``datastores/fileDatastore.yaml``; `use_butler_config` prepends it to the variable of a process
  environment (do it before creating a butler or starting ``pipetask``; spawned workers inherit it).
- A repository seed: `seed_config` (or ``butler create --seed-config`` with the file written by
  `write_seed_config`) stores the definitions in the repository's own ``butler.yaml``, so every process
  that opens the repository (pipetask workers, BPS jobs) knows them without any environment.
  `lsst.meas.extensions.vae.pipe.standalone.repo.make_repo` does this.
"""

from __future__ import annotations

__all__ = ["CONFIG_PATH_ENV", "butler_config_dir", "use_butler_config", "seed_config", "write_seed_config"]

import os
from collections.abc import MutableMapping
from pathlib import Path

import yaml
from lsst.daf.butler import Config

CONFIG_PATH_ENV = "DAF_BUTLER_CONFIG_PATH"
_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def butler_config_dir() -> Path:
    """The folder to put on ``DAF_BUTLER_CONFIG_PATH``."""
    if not (_CONFIG_DIR / "storageClasses.yaml").is_file():
        raise FileNotFoundError(f"The package's butler configuration is missing from {_CONFIG_DIR} "
                                "(package data not installed?).")
    return _CONFIG_DIR


def use_butler_config(environ: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Prepend the package's butler configuration folder to ``DAF_BUTLER_CONFIG_PATH``.

    Parameters
    ----------
    environ : `dict`, optional
        Environment to update (the process's own, `os.environ`, by default); pass a copy to prepare the
        environment of a subprocess.

    Returns
    -------
    environ : `dict`
        The updated environment (unchanged when the folder is already on the path).
    """
    environ = os.environ if environ is None else environ
    folder = str(butler_config_dir())
    current = [p for p in environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if p]
    if folder not in current:
        environ[CONFIG_PATH_ENV] = os.pathsep.join([folder] + current)
    return environ


def seed_config() -> Config:
    """A seed configuration for a new repository holding the storage classes and their formatters."""
    folder = butler_config_dir()
    with open(folder / "storageClasses.yaml") as f:
        storage = yaml.safe_load(f)
    with open(folder / "datastores" / "fileDatastore.yaml") as f:
        datastore = yaml.safe_load(f)
    return Config({"storageClasses": storage["storageClasses"],
                   "datastore": {"formatters": datastore["datastore"]["formatters"]}})


def write_seed_config(path: str | Path) -> Path:
    """Write `seed_config` to a YAML file for ``butler create --seed-config FILE REPO``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(seed_config().toDict(), f, sort_keys=False)
    return path

"""The package imports from the eups layout (PYTHONPATH=python) and from a regular pip install."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = ("import lsst.meas.extensions.vae as v, lsst.pipe.base, lsst.daf.butler; "
         "from lsst.meas.extensions.vae.sim import BlendMaker; print(v.__file__)")


def test_eups_layout_import():
    env = {**os.environ, "PYTHONPATH": str(REPO / "python")}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True)
    assert Path(out.stdout.strip()).is_relative_to(REPO / "python")


def test_regular_pip_install_beside_the_middleware(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(tmp_path / "site"), str(REPO)], check=True, capture_output=True)
    installed = tmp_path / "site" / "lsst" / "meas" / "extensions" / "vae"
    assert (installed / "__init__.py").exists()
    # -S: no site-packages .pth files (so not the editable checkout); the middleware comes from
    # site-packages on PYTHONPATH, joined to the installed package by pkgutil namespaces.
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), sysconfig.get_paths()["purelib"]])}
    out = subprocess.run([sys.executable, "-S", "-c", PROBE], env=env, check=True, capture_output=True,
                         text=True, cwd=tmp_path)
    assert Path(out.stdout.strip()).is_relative_to(tmp_path / "site")

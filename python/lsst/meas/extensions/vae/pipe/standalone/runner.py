"""Running the standalone pipeline with ``pipetask`` from Python (demo, tests, benchmarks)."""

from __future__ import annotations

__all__ = ["demo_pipeline", "pipetask_command", "run_pipetask", "PipetaskError"]

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from .butler_config import use_butler_config
from .repo import recover_repo

_SOURCE_ROOT = Path(__file__).resolve().parents[7]

# pipetask records the versions of the packages it runs; without eups (the Rubin stack's package manager,
# not on PyPI) lsst.utils.packages logs "Unable to import eups, so cannot determine package versions from
# environment" at every run, although the versions of the Python distributions are recorded all the same.
# A user of the PyPI middleware cannot act on it, so that logger's warnings are not shown; it logs nothing
# else (lsst-utils 30.2026.4300), and inside the Rubin stack, where eups imports, it is silent anyway.
_PIPETASK_LOG_LEVELS = ("lsst.utils.packages=ERROR",)


class PipetaskError(RuntimeError):
    """``pipetask`` returned a non-zero status."""


def demo_pipeline() -> str:
    """Location of ``pipelines/demo.yaml``: package data if installed so, else the eups product or the
    source tree."""
    packaged = resources.files("lsst.meas.extensions.vae") / "pipelines" / "demo.yaml"
    if packaged.is_file():
        return "resource://lsst.meas.extensions.vae/pipelines/demo.yaml"
    roots = [Path(os.environ["MEAS_EXTENSIONS_VAE_DIR"])] if "MEAS_EXTENSIONS_VAE_DIR" in os.environ else []
    for root in roots + [_SOURCE_ROOT]:
        path = root / "pipelines" / "demo.yaml"
        if path.is_file():
            return str(path)
    raise FileNotFoundError("pipelines/demo.yaml is neither package data nor in the source tree.")


def pipetask_command() -> list[str]:
    """The ``pipetask`` of this Python (its console script, or the module entry point)."""
    script = Path(sys.executable).parent / "pipetask"
    if script.is_file():
        return [str(script)]
    found = shutil.which("pipetask")
    if found:
        return [found]
    return [sys.executable, "-c",
            "import sys; from lsst.ctrl.mpexec.cli.pipetask import main; sys.exit(main())"]


def run_pipetask(repo: str | Path, inputs: str | Sequence[str], output: str, pipeline: str | None = None, *,
                 jobs: int = 2, config: Mapping[str, str] | None = None, data_query: str | None = None,
                 register_dataset_types: bool = True, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, log_file: str | Path | None = None,
                 timeout: float | None = None) -> str:
    """Run ``pipetask run`` on a repository in a subprocess.

    pipetask is told not to show the warning it logs at every run outside the Rubin stack (that eups,
    not on PyPI, cannot be imported); everything else it logs is kept.

    Parameters
    ----------
    repo : `str` or `pathlib.Path`
    inputs : `str` or sequence of `str`
        Input collections.
    output : `str`
        Output (chained) collection.
    pipeline : `str`, optional
        Pipeline file or URI; `demo_pipeline` by default.
    jobs : `int`
        Worker processes (``-j``).
    config : `dict` [`str`, `str`], optional
        ``-c`` overrides, e.g. ``{"deblendCoaddFootprints:weights": "/path/w.safetensors"}``.
    data_query : `str`, optional
        ``-d`` query.
    register_dataset_types : `bool`
        Pass ``--register-dataset-types`` (needed on a repository's first run).
    extra_args : sequence of `str`
        More arguments of ``pipetask run``.
    env : `dict`, optional
        Environment of the subprocess (this process's by default); the package's butler configuration
        is put on its ``DAF_BUTLER_CONFIG_PATH``.
    log_file : `str` or `pathlib.Path`, optional
        Also write pipetask's output there.
    timeout : `float`, optional
        Seconds.

    Returns
    -------
    output : `str`
        pipetask's combined stdout and stderr.

    Raises
    ------
    PipetaskError
        pipetask failed (the message ends with its last lines of output).
    """
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    command = pipetask_command()
    for level in _PIPETASK_LOG_LEVELS:
        command += ["--log-level", level]
    command += ["run", "-b", str(repo), "-i", ",".join(inputs), "-o", output,
                "-p", pipeline or demo_pipeline(), "-j", str(jobs)]
    if register_dataset_types:
        command.append("--register-dataset-types")
    for key, value in (config or {}).items():
        command += ["-c", f"{key}={value}"]
    if data_query:
        command += ["-d", data_query]
    command += list(extra_args)
    environment = use_butler_config(dict(os.environ if env is None else env))
    # After a kill (the re-run of an interrupted run): pipetask opens the repository read-only first and
    # fails on a registry transaction the killed process left open; roll it back (best effort).
    with contextlib.suppress(Exception):
        recover_repo(repo)
    result = subprocess.run(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=timeout)
    if log_file is not None:
        Path(log_file).write_text(" ".join(command) + "\n" + result.stdout)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-40:])
        raise PipetaskError(f"pipetask run failed with status {result.returncode}:\n{tail}")
    return result.stdout

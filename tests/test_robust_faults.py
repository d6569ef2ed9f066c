"""Faults: ``pipetask run`` and ``vae-deblend train`` killed (SIGKILL, the whole process group) in the
middle, and what their re-runs make of it.

- ``pipetask run`` of pipelines/demo.yaml on two simulated 150x150 patches (6 quanta) is killed while a
  deblending quantum stores its outputs, re-run with ``--extend-run --skip-existing --clobber-outputs``
  and killed again once the first measurement is on disk, then re-run to the end: every output exists
  exactly once per data id, in the one output run, and equals that of an uninterrupted run.
- A writer killed in the middle of a SQLite registry commit leaves a transaction that a read-only butler
  (pipetask opens one first) cannot roll back; `recover_repo` (in `open_repo`, `run_pipetask`) does.
- ``vae-deblend train vae`` on tiny simulated blends is killed while its checkpoint is being written,
  while the checkpoint of an epoch with a better model is being written, and at a random moment, each
  time resumed with ``--resume``: at every moment observed the checkpoint and the weights load, the epochs
  continue (never restart) and the run ends with the history of one run; a stopped run stays stopped.

Seeded throughout (the kill moments are events, or a seeded delay); about 2 minutes 15 s on 2 busy cores
(docs/robustness.md).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from lsst.meas.extensions.vae.model.weights import load_model, read_metadata, shipped_weights_path
from lsst.meas.extensions.vae.pipe.standalone import (INPUT_RUN, demo_pipeline, make_repo, open_repo,
                                                      pipetask_command, read_outputs, recover_repo,
                                                      run_pipetask)
from lsst.meas.extensions.vae.pipe.standalone.butler_config import use_butler_config

BIN = Path(sys.executable).parent
PATCHES = (0, 1)
LABELS = ("detectCoaddPeaks", "deblendCoaddFootprints", "measureObjectUnforced")
OUTPUT_TYPES = ("object_detection_merged", "object_detection_peaks", "object_detection_footprints",
                "object_deblend", "object_parent_patch", "object_vae_models", "object_unforced_measurement")
# What every quantum writes besides its outputs; the metadata goes last and marks a finished quantum.
QUANTUM_TYPES = tuple(f"{label}_{kind}" for label in LABELS for kind in ("metadata", "log"))
# Written once per run, before the quanta (no data id).
INIT_TYPES = ("packages",) + tuple(f"{label}_config" for label in LABELS)
REFERENCE = "vae/reference"
OUTPUT = "vae/faults"
# Wall-clock time of a parent's deblending (ms): the only output that differs between two runs.
TIMING_COLUMNS = ("deblend_runtime",)


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def _run_until(command: Sequence[str], log: Path, trigger: Callable[[], bool] | None, *,
               env: dict | None = None, watch: Callable[[], None] | None = None,
               timeout: float = 300.0) -> None:
    """Run ``command`` in its own process group and SIGKILL the group as soon as ``trigger()`` is true.

    ``watch`` is called at every poll (every 2 ms or so) while the command runs, and once after it ended.
    Fails the test if the command ends before the trigger fires, or, without a trigger, if it fails.
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    start = time.monotonic()
    try:
        while True:
            if watch is not None:
                watch()
            if trigger is not None and trigger():
                os.killpg(proc.pid, signal.SIGKILL)  # pipetask's worker processes too (same group)
                break
            if proc.poll() is not None:
                if trigger is None and proc.returncode == 0:
                    break
                pytest.fail(f"{command[:3]} ended (status {proc.returncode}) before the moment to kill it:\n"
                            + _tail(log))
            if time.monotonic() - start > timeout:
                pytest.fail(f"{command[:3]}: still running after {timeout} s:\n" + _tail(log))
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if watch is not None:
        watch()


# ------------------------------------------------------------------------------------------------------
# pipetask run


def _files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, names in os.walk(root) for f in names]


def _in_place(output: Path, dataset_types: Sequence[str], n: int = 1) -> Callable[[], bool]:
    """True once the files of ``n`` of ``dataset_types`` of one patch are in place in a run of the output
    collection ``output``.

    The datastore's template puts a file in ``RUN/TYPE/TRACT/PATCH/TYPE_...``; it writes it under a
    temporary name (with a random prefix) and moves it there, within the transaction of its put.  A few
    ``listdir`` calls: the check runs every 2 ms beside pipetask on two cores.
    """
    def check() -> bool:
        try:
            runs = os.listdir(output)
        except FileNotFoundError:
            return False
        for run in runs:
            for patch in PATCHES:
                found = 0
                for dataset_type in dataset_types:
                    try:
                        names = os.listdir(output / run / dataset_type / "0" / str(patch))
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    found += any(name.startswith(dataset_type + "_") for name in names)
                if found >= n:
                    return True
        return False

    return check


def _hot_journal(repo: Path) -> bool:
    """Whether a killed writer left SQLite's journal "hot": a read-only connection then fails."""
    if not (repo / "gen3.sqlite3-journal").exists():
        return False
    connection = sqlite3.connect(f"file:{repo / 'gen3.sqlite3'}?mode=ro", uri=True)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return False
    except sqlite3.OperationalError as error:
        assert "readonly" in str(error)
        return True
    finally:
        connection.close()


def _registered(repo: Path, run: str) -> dict[str, list[int]]:
    """Patch ids of the registered datasets of each output and per-quantum type in ``run``.

    A read-only butler, by `open_repo`, which first rolls back a registry transaction the kill left open
    (`recover_repo`; a plain read-only butler fails on it, as does the re-run's pipetask).
    """
    butler = open_repo(repo)
    found = {}
    for name in OUTPUT_TYPES + QUANTUM_TYPES:
        refs = butler.query_datasets(name, collections=run, find_first=False, explain=False)
        found[name] = sorted(int(ref.dataId["patch"]) for ref in refs)
    return found


def _partial_quanta(found: dict[str, list[int]]) -> list[tuple[str, int]]:
    """Quanta with some outputs registered and no metadata (killed while writing their outputs)."""
    outputs = {"detectCoaddPeaks": OUTPUT_TYPES[:3], "deblendCoaddFootprints": OUTPUT_TYPES[3:6],
               "measureObjectUnforced": OUTPUT_TYPES[6:]}
    return [(label, patch) for label in LABELS for patch in PATCHES
            if patch not in found[f"{label}_metadata"] and any(patch in found[n] for n in outputs[label])]


def _assert_tables_equal(a, b, what: str) -> None:
    assert a.colnames == b.colnames, what
    assert len(a) == len(b) > 0, what
    for name in a.colnames:
        if name in TIMING_COLUMNS:
            continue
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert x.dtype == y.dtype, f"{what}: {name}"
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"{what}: {name} differs"


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory):
    """Two simulated 150x150 LSST patches in a new repository, and an uninterrupted run on them."""
    from lsst.meas.extensions.vae.sim.patch import PatchConfig, make_patch

    root = tmp_path_factory.mktemp("faults_pipe")
    repo = root / "repo"
    make_repo(repo, [make_patch(PatchConfig(size=150), seed=seed, progress=False) for seed in (3, 4)])
    weights = str(shipped_weights_path("lsst"))
    # One process (-j 1): half the time of -j 2 here (each -j 2 quantum is a fresh process that imports
    # torch), and the same outputs, which the comparison below checks.
    run_pipetask(repo, INPUT_RUN, REFERENCE, jobs=1, config={"parameters:weights": weights},
                 log_file=root / "reference.log")
    return root, repo, weights


def test_pipetask_killed_twice_then_rerun_loses_and_duplicates_nothing(pipeline_repo):
    root, repo, weights = pipeline_repo
    env = use_butler_config(dict(os.environ))

    def command(jobs: int, *extra: str) -> list[str]:
        return pipetask_command() + ["run", "-b", str(repo), "-i", INPUT_RUN, "-o", OUTPUT, "-p",
                                     demo_pipeline(), "-j", str(jobs), "--register-dataset-types", "-c",
                                     f"parameters:weights={weights}", *extra]

    # --extend-run: into the same output run; --skip-existing: quanta whose metadata is there are done;
    # --clobber-outputs: a quantum killed while writing its outputs left some of them registered and no
    # metadata, so it runs again, and without this the graph builder stops with OutputExistsError
    # ("Potential output dataset ... already exists in the output run") on the outputs in its way.
    rerun = ["--extend-run", "--skip-existing", "--clobber-outputs"]
    out_dir = repo / OUTPUT

    # 1. Two worker processes, killed with them once the second output file of a deblending quantum is in
    # place: detection done, deblending under way, and that quantum killed while it stores its outputs.
    # Each put is a transaction of its own, in an order that changes from process to process (pipe_base
    # keeps the connection names in a set): its first output is registered, its metadata is not.
    deblend_outputs = ("object_deblend", "object_parent_patch", "object_vae_models")
    _run_until(command(2), root / "run1.log", _in_place(out_dir, deblend_outputs, 2), env=env)
    hot = [_hot_journal(repo)]
    first = _registered(repo, OUTPUT)
    assert not _hot_journal(repo)
    print("after the first kill:", {k: v for k, v in first.items() if v}, "partial:", _partial_quanta(first))
    assert first["detectCoaddPeaks_metadata"], "the kill came before any quantum finished"
    assert len(first["deblendCoaddFootprints_metadata"]) < len(PATCHES), "the first kill came too late"
    assert any(label == "deblendCoaddFootprints" for label, _ in _partial_quanta(first))

    # 2. The re-run (one process), killed in its turn once the first measurement is in place.
    _run_until(command(1, *rerun), root / "run2.log", _in_place(out_dir, ["object_unforced_measurement"]),
               env=env)
    hot.append(_hot_journal(repo))
    # Left as the kill left it for run_pipetask below (which must roll the registry back itself): files
    # only.  Quanta end with their metadata file.
    names = [p.name for p in _files(out_dir)]
    assert sum(n.startswith("measureObjectUnforced_metadata_") for n in names) < len(PATCHES), "too late"
    assert any(n.startswith("deblendCoaddFootprints_metadata_") for n in names)
    print("hot journal after the kills:", hot)

    # 3. The re-run to the end.
    run_pipetask(repo, INPUT_RUN, OUTPUT, jobs=1, config={"parameters:weights": weights}, extra_args=rerun,
                 log_file=root / "run3.log")

    butler = open_repo(repo, writeable=True)
    runs = list(butler.collections.query(OUTPUT + "/*"))
    assert len(runs) == 1, f"the re-runs made new runs: {runs}"
    assert list(butler.collections.get_info(OUTPUT).children) == [runs[0], INPUT_RUN]
    # Exactly once per data id, across every collection the output chain holds.
    uris = set()
    for name in OUTPUT_TYPES + QUANTUM_TYPES + INIT_TYPES:
        refs = butler.query_datasets(name, collections=OUTPUT, find_first=False, explain=False)
        if name in INIT_TYPES:
            assert len(refs) == 1, name
        else:
            assert sorted(int(ref.dataId["patch"]) for ref in refs) == list(PATCHES), name
        assert {ref.run for ref in refs} == {runs[0]}, name
        for ref in refs:
            uri = butler.getURI(ref)
            assert uri.exists(), f"{name} {ref.dataId}: {uri} is gone"
            uris.add(Path(uri.ospath).resolve())
    # On disk: no output file that the registry does not know (a killed write leaves only temporary files;
    # the streaming logs of the killed quanta stay there, ``*.tmp.json``, harmless).
    run_files = [p.resolve() for p in _files(repo / runs[0])]
    strays = [p for p in run_files if p not in uris]
    assert all(".tmp" in p.name for p in strays), strays
    assert uris <= set(run_files)

    # The outputs are those of the uninterrupted run.
    for patch in PATCHES:
        ref_out = read_outputs(repo, REFERENCE, patch=patch)
        got = read_outputs(repo, OUTPUT, patch=patch)
        parents, detections = got["parents"], got["detections"]
        assert list(parents["id"]) == list(detections["id"]) == list(ref_out["parents"]["id"])
        assert len(parents) > 5
        for key in ("objects", "parents", "measurement", "detections", "peaks"):
            _assert_tables_equal(ref_out[key], got[key], f"patch {patch} {key}")
        assert got["models"].bands == ref_out["models"].bands
        assert got["models"].metadata == ref_out["models"].metadata
        assert sorted(got["models"].blends) == sorted(ref_out["models"].blends)
        want_children = ref_out["models"].children()
        have_children = got["models"].children()
        assert sorted(have_children) == sorted(want_children) and len(have_children) > 0
        for child_id, (parent_id, child) in want_children.items():
            assert have_children[child_id][0] == parent_id
            other = have_children[child_id][1]
            assert (other.origin, other.peak, other.peak_id) == (child.origin, child.peak, child.peak_id)
            np.testing.assert_array_equal(other.model, child.model)
        for parent_id, blend in ref_out["models"].blends.items():
            np.testing.assert_array_equal(got["models"].blends[parent_id].footprint, blend.footprint)
        data_id = {"skymap": "vae_sim", "tract": 0, "patch": patch}
        want = open_repo(repo, collections=[REFERENCE]).get("object_detection_footprints", data_id)
        have = open_repo(repo, collections=[OUTPUT]).get("object_detection_footprints", data_id)
        np.testing.assert_array_equal(have.labels, want.labels)
        np.testing.assert_array_equal(have.ids, want.ids)


def _kill_a_registry_writer(repo: Path) -> None:
    """A process killed in the middle of a transaction on the repository's SQLite registry.

    The transaction outgrows SQLite's page cache (2 pages here), so it writes pages into the database
    file before its commit, as the commit itself does: killed then, it leaves the journal hot (what a
    pipetask killed while it commits leaves, at a moment a test cannot choose).
    """
    writer = ("import os, signal, sqlite3, sys\n"
              "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "db.execute('PRAGMA cache_size=2')\n"
              "db.execute('BEGIN IMMEDIATE')\n"
              "db.execute('CREATE TABLE fault_probe (x BLOB)')\n"
              "for _ in range(200):\n"
              "    db.execute('INSERT INTO fault_probe VALUES (randomblob(4000))')\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", writer, str(repo / "gen3.sqlite3")])
    assert killed.returncode == -signal.SIGKILL
    assert _hot_journal(repo)


def test_a_registry_transaction_left_by_a_kill_is_rolled_back_before_reading(tmp_path):
    """A hot journal: a plain read-only butler (and pipetask, which opens one first) fails until a writer
    rolls it back; `open_repo` and `recover_repo` do (and `run_pipetask`, by `recover_repo`)."""
    from lsst.daf.butler import Butler

    from lsst.meas.extensions.vae.pipe.standalone import seed_config

    repo = tmp_path / "repo"
    use_butler_config()
    Butler.makeRepo(str(repo), config=seed_config())
    open_repo(repo, writeable=True).collections.register("vae/kept")
    assert recover_repo(repo) is False  # nothing to do

    _kill_a_registry_writer(repo)
    with pytest.raises(Exception, match="readonly database"):
        Butler.from_config(str(repo))
    assert "vae/kept" in open_repo(repo).collections.query("*")  # read-only, after the roll-back
    assert not (repo / "gen3.sqlite3-journal").exists()

    _kill_a_registry_writer(repo)
    assert recover_repo(repo) is True
    assert not _hot_journal(repo) and recover_repo(repo) is False
    Butler.from_config(str(repo))
    connection = sqlite3.connect(f"file:{repo / 'gen3.sqlite3'}?mode=ro", uri=True)
    tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    connection.close()
    assert "fault_probe" not in tables and len(tables) > 10  # the killed transaction is undone, no more


# ------------------------------------------------------------------------------------------------------
# vae-deblend train


MAX_EPOCHS = 7
TRAIN_OPTIONS = ("--batch-size", "8", "--epoch-size", "16", "--patience", "100", "--seed", "0", "--lr",
                 "2e-3", "--no-bf16", "--no-progress")


@pytest.fixture(scope="module")
def tiny_blends(tmp_path_factory):
    """128 training and 32 validation blends on 33x33 stamps (seconds)."""
    from lsst.meas.extensions.vae.sim.blend import BlendConfig
    from lsst.meas.extensions.vae.sim.dataset import write_blends

    root = tmp_path_factory.mktemp("faults_blends")
    config = BlendConfig.preset("training", stamp_size=33)
    write_blends(root / "train", 128, seed=1, config=config, jobs=1, progress=False)
    write_blends(root / "val", 32, seed=2, config=config, split="validation", jobs=1, progress=False)
    return root


def _state(out: Path) -> dict:
    """The training state of the checkpoint, loaded as training loads it."""
    saved = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "scheduler", "state", "torch_rng"} <= set(saved)
    return json.loads(saved["state"])


class _Watcher:
    """Loads every new version of the files ``--resume`` reads or a user keeps while training runs.

    Each file is opened once replaced; ``os.replace`` leaves an open file's contents alone, so a file
    that does not load here was written in place.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.seen: dict[str, tuple] = {}
        self.checkpoints: list[int] = []  # epochs of the checkpoints seen, in order
        self.loaded = 0

    def _changed(self, name: str) -> bool:
        try:
            st = (self.out / name).stat()
        except FileNotFoundError:
            return False
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self.seen.get(name) == key:
            return False
        self.seen[name] = key
        return True

    def __call__(self) -> None:
        if self._changed("checkpoint.pt"):
            state = _state(self.out)
            assert [h["epoch"] for h in state["history"]] == list(range(1, state["epoch"] + 1))
            self.checkpoints.append(state["epoch"])
            self.loaded += 1
        if self._changed("best.safetensors"):
            load_model(self.out / "best.safetensors", kind="vae")  # checks the sha256 of the tensors
            self.loaded += 1
        if self._changed("history.json"):
            json.loads((self.out / "history.json").read_text())
            self.loaded += 1


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return -1


def _epochs_printed(log: Path) -> list[int]:
    return [int(line.split()[2].rstrip(":")) for line in log.read_text().splitlines()
            if line.startswith("vae epoch ")]


def _check_after_kill(out: Path, previous_epoch: int) -> dict:
    """The files a kill left: they load and agree with the checkpoint, which holds more epochs than the
    previous one (the killed run trained and committed some) and fewer than all."""
    state = _state(out)
    epoch = state["epoch"]
    assert previous_epoch < epoch < MAX_EPOCHS
    history = state["history"]
    assert [h["epoch"] for h in history] == list(range(1, epoch + 1))
    best = min(history, key=lambda h: h["val_loss"])
    # best.safetensors holds the checkpoint's best epoch; or, killed between the checkpoint and the
    # move of a better model onto it, that model waits beside it (the resumed run finishes the move).
    # Never a model of an epoch the checkpoint does not hold (trained again after the resume).
    files = {name: read_metadata(out / name) for name in ("best.safetensors", "best.pending.safetensors")
             if (out / name).exists()}
    for name in files:
        load_model(out / name, kind="vae")
    epochs = {name: int(meta["epoch"]) for name, meta in files.items()}
    assert epochs.get("best.safetensors", 0) <= epoch, epochs
    holder = ("best.safetensors" if epochs.get("best.safetensors") == best["epoch"]
              else "best.pending.safetensors")
    assert epochs.get(holder) == best["epoch"], (epochs, best["epoch"])
    assert files[holder]["val_loss"] == f"{best['val_loss']:.4f}"
    # history.json: the checkpoint's history, or one epoch short (killed between the two writes).
    on_disk = json.loads((out / "history.json").read_text())
    assert on_disk == history[:len(on_disk)] and len(on_disk) >= epoch - 1
    return state


def test_train_killed_three_times_resumes_from_its_checkpoints(tiny_blends, tmp_path):
    out = tmp_path / "vae"
    command = [str(BIN / "vae-deblend"), "train", "vae", "--train", str(tiny_blends / "train"), "--val",
               str(tiny_blends / "val"), "--out", str(out), "--max-epochs", str(MAX_EPOCHS), *TRAIN_OPTIONS]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    rng = np.random.default_rng(20261201)
    watcher = _Watcher(out)
    tmp_checkpoint = out / "checkpoint.tmp"
    pending = out / "best.pending.safetensors"

    def after(n_new: int, moment: Callable[[], bool]) -> Callable[[], bool]:
        """``moment()`` once ``n_new`` more checkpoints than so far were written (the watcher saw them)."""
        start = len(watcher.checkpoints)
        return lambda: len(watcher.checkpoints) >= start + n_new and moment()

    # Run 1: killed while it writes its second checkpoint (the first one must survive whole).
    _run_until(command, tmp_path / "run1.log", after(1, tmp_checkpoint.exists), env=env, watch=watcher)
    left_partial = [tmp_checkpoint.exists()]
    states = [_check_after_kill(out, 0)]

    # Run 2: killed while it writes the checkpoint of an epoch that made a better model (written before
    # the checkpoint, as a pending file or, before the fix, onto best.safetensors), or else while it writes
    # its second checkpoint.
    def improved_epoch_commits() -> bool:
        best_written = max(_mtime(pending), _mtime(out / "best.safetensors"))
        return tmp_checkpoint.exists() and best_written > _mtime(out / "checkpoint.pt")

    two = after(2, tmp_checkpoint.exists)
    _run_until(command + ["--resume"], tmp_path / "run2.log",
               after(1, lambda: improved_epoch_commits() or two()), env=env, watch=watcher)
    left_partial.append(tmp_checkpoint.exists() or pending.exists())
    states.append(_check_after_kill(out, states[-1]["epoch"]))

    # Run 3: killed at a random moment (seeded) within 2 s of its first checkpoint, and at the latest when
    # its second checkpoint appears: on a fast machine 2 s hold the rest of the run's epochs, and a run
    # that ends before its kill tests nothing.
    delay = float(rng.uniform(0.0, 2.0))
    since: list[float] = []

    def random_moment() -> bool:
        if not since:
            since.append(time.monotonic())
        return time.monotonic() - since[0] >= delay

    second = after(2, lambda: True)
    _run_until(command + ["--resume"], tmp_path / "run3.log", after(1, lambda: random_moment() or second()),
               env=env, watch=watcher)
    states.append(_check_after_kill(out, states[-1]["epoch"]))

    # Run 4: to the end.
    _run_until(command + ["--resume"], tmp_path / "run4.log", None, env=env, watch=watcher)
    print(f"checkpoint epochs after the kills: {[s['epoch'] for s in states]}; killed mid-write: "
          f"{left_partial}; random delay {delay:.2f} s; files loaded while running: {watcher.loaded}")

    # A kill landed in the middle of a write at least once (its temporary file was still there).
    assert any(left_partial), left_partial
    # Every checkpoint written loaded (the watcher fails otherwise), one per epoch: no epoch was trained
    # twice (a restart) or lost.
    assert watcher.checkpoints == list(range(1, MAX_EPOCHS + 1))
    # Each resumed run's first epoch is the one after its checkpoint's (killed runs may not have printed).
    starts = [0] + [s["epoch"] for s in states]
    for start, log in zip(starts, ("run1.log", "run2.log", "run3.log", "run4.log")):
        printed = _epochs_printed(tmp_path / log)
        assert printed == list(range(start + 1, start + 1 + len(printed))), (log, printed, starts)
    assert _epochs_printed(tmp_path / "run4.log")[0] == states[-1]["epoch"] + 1
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, MAX_EPOCHS + 1))
    for state in states:  # the epochs a kill left are kept as they were trained
        assert history[:state["epoch"]] == state["history"]
    assert [h["minutes"] for h in history] == sorted(h["minutes"] for h in history)
    final = _state(out)
    assert final["epoch"] == MAX_EPOCHS and final["history"] == history
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == MAX_EPOCHS and summary["initial_val_loss"] == states[0]["initial_val_loss"]
    best = min(history, key=lambda h: h["val_loss"])
    assert summary["best_val_loss"] == best["val_loss"]
    meta = read_metadata(out / "best.safetensors")
    assert (int(meta["epoch"]), meta["val_loss"]) == (best["epoch"], f"{best['val_loss']:.4f}")
    load_model(out / "best.safetensors", kind="vae")
    assert not pending.exists()


def test_resuming_a_stopped_run_trains_no_further_unless_its_limits_grow(tiny_blends, tmp_path):
    """A stopped run (here by its time budget) that is resumed with the same options is as the run that
    was never killed: finished.  (It is also what a kill after the last checkpoint, before the summary,
    leaves.)  With a larger budget it goes on."""
    from lsst.meas.extensions.vae.model.training import TrainConfig, train

    run = tmp_path / "run"
    common = dict(train_dir=str(tiny_blends / "train"), val_dir=str(tiny_blends / "val"), batch_size=8,
                  epoch_size=16, max_epochs=2, patience=100, seed=0, lr=2e-3, bf16=False, out_dir=str(run))
    first = train(TrainConfig(max_minutes=0.0, **common), progress=False)
    assert first["epochs"] == 1
    checkpoint = (run / "checkpoint.pt").read_bytes()
    first_epoch = _state(run)["history"][0]
    again = train(TrainConfig(max_minutes=0.0, **common), resume=True, progress=False)
    assert again["epochs"] == 1 and again["best_val_loss"] == first["best_val_loss"]
    assert (run / "checkpoint.pt").read_bytes() == checkpoint
    more = train(TrainConfig(max_minutes=10.0, **common), resume=True, progress=False)
    assert more["epochs"] == 2
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == first_epoch

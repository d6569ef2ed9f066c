"""Blend datasets on disk: HDF5 shards written in parallel, and a reader that streams shuffled batches.

Layout of one shard (``shard-NNNNN.h5``):

- ``image`` (n, bands, h, w) float32: noisy blends, electrons;
- ``variance`` (n, bands) float32: noise variance per pixel;
- ``psf`` (n, bands, P, P) float32: each blend's PSF images (`conditions.PSF_IMAGE_SIZE`; shards written
  before model v3 lack it: the reader then gives the shard's survey PSFs);
- ``n_galaxies`` (n,), ``galaxy_offset`` (n,): where each blend's galaxies start in the galaxy arrays;
- ``truth_images`` (n_galaxies_total, bands, h, w) float32: each galaxy alone, noiseless, the central
  galaxy of each blend first;
- ``truth/<field>``: per-galaxy truth (`blend.TRUTH_SCALAR_FIELDS`, `blend.TRUTH_BAND_FIELDS`);
- attributes: ``config`` (JSON of the `BlendConfig`), ``bands``, ``seed``, ``split``, ``first_index``,
  ``catalog`` (the external catalogue used, if any).

Shard ``k`` holds blends ``first_index .. first_index + n - 1`` of the stream (seed, split), so a dataset
is the same whatever the number of processes that wrote it.
"""

from __future__ import annotations

__all__ = ["write_blends", "BlendDataset", "read_shard_config"]

import dataclasses
import json
import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from .blend import TRUTH_BAND_FIELDS, TRUTH_SCALAR_FIELDS, BlendConfig, BlendMaker, CatalogGalaxies
from .conditions import psf_image

DEFAULT_SHARD_SIZE = 1000
_SHARD_MULTIPLE = 4
_MIN_BALANCED_SHARD = 100

# Per-process state of the pool workers (set by _init_worker).
_worker: dict = {}


def _make_maker(config: BlendConfig, catalog_path: str | None, split: str) -> BlendMaker:
    source = None
    if catalog_path:
        from .catalog_io import read_catalog, select_split

        source = CatalogGalaxies(select_split(read_catalog(catalog_path), split))
    return BlendMaker(config, source)


def _init_worker(config: BlendConfig, catalog_path: str | None, split: str, counter) -> None:
    # One BLAS / FFT thread per process: the processes already use every core.
    os.environ["OMP_NUM_THREADS"] = "1"
    _worker["maker"] = _make_maker(config, catalog_path, split)
    _worker["counter"] = counter
    _worker["catalog"] = catalog_path


def _write_shard(task: tuple[str, int, int, int, str]) -> str:
    path, seed, first, count, split = task
    maker: BlendMaker = _worker["maker"]
    counter = _worker["counter"]
    blends = []
    for index in range(first, first + count):
        blends.append(maker.make(seed, index, split))
        if counter is not None and (index - first) % 10 == 9:
            with counter.get_lock():
                counter.value += 10
    _save_shard(path, blends, maker.config, seed, split, first, _worker.get("catalog"))
    if counter is not None:
        with counter.get_lock():
            counter.value += count % 10
    return path


def _save_shard(path: str, blends: list, config: BlendConfig, seed: int, split: str, first: int,
                catalog_path: str | None) -> None:
    n_gal = np.array([len(b.truth_images) for b in blends])
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.attrs["config"] = json.dumps(dataclasses.asdict(config))
        f.attrs["bands"] = json.dumps(list(config.get_survey().band_names))
        f.attrs["seed"] = seed
        f.attrs["split"] = split
        f.attrs["first_index"] = first
        f.attrs["catalog"] = catalog_path or ""
        f["image"] = np.stack([b.image for b in blends])
        f["variance"] = np.stack([b.variance for b in blends])
        f.create_dataset("psf", data=np.stack([b.psf for b in blends]), compression="lzf",
                         chunks=(min(64, len(blends)),) + blends[0].psf.shape)
        f["n_galaxies"] = n_gal
        f["galaxy_offset"] = np.concatenate([[0], np.cumsum(n_gal)[:-1]]).astype(np.int64)
        truth_images = np.concatenate([b.truth_images for b in blends])
        # Mostly exact zeros away from each galaxy: lzf shrinks them several-fold at little CPU cost.
        f.create_dataset("truth_images", data=truth_images, compression="lzf",
                         chunks=(min(16, len(truth_images)),) + truth_images.shape[1:])
        for name in TRUTH_SCALAR_FIELDS + TRUTH_BAND_FIELDS:
            f[f"truth/{name}"] = np.concatenate([b.truth[name] for b in blends])
    os.replace(tmp, path)  # atomic: a shard on disk is always complete


def write_blends(out_dir: str | Path, n: int, seed: int, config: BlendConfig | None = None,
                 split: str = "train", jobs: int | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                 catalog_path: str | None = None, progress: bool = True, resume: bool = False) -> list[Path]:
    """Simulate ``n`` blends into HDF5 shards, in parallel.

    Parameters
    ----------
    out_dir : `str` or `pathlib.Path`
        Output folder (created).
    n : `int`
        Number of blends.
    seed : `int`
        Stream seed.
    config : `BlendConfig`, optional
        Blend configuration; defaults to ``BlendConfig()``.
    split : `str`
        ``train``, ``validation`` or ``test``: disjoint galaxies.
    jobs : `int`, optional
        Number of processes (default: every core).
    shard_size : `int`
        Maximum blends per shard; the number of shards is rounded up to a multiple of 4 (if that leaves
        at least 100 blends per shard) so that they balance over the processes.
    catalog_path : `str`, optional
        External catalogue (CatSim or COSMOS format) to sample galaxies from instead of the generator.
    progress : `bool`
        Show a progress bar.
    resume : `bool`
        Keep the shards of this very stream already in ``out_dir`` (a shard on disk is always whole) and
        make only the missing ones: a stopped run continues where it stopped.

    Returns
    -------
    paths : `list` [`pathlib.Path`]
        The shard files, in stream order.
    """
    config = config or BlendConfig()
    jobs = max(1, jobs or os.cpu_count() or 1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A multiple of 4 shards balances 1, 2 or 4 processes (unless shards would get tiny); the layout
    # never depends on ``jobs``, so neither does the dataset.
    n_shards = max(1, math.ceil(n / shard_size))
    balanced = math.ceil(n_shards / _SHARD_MULTIPLE) * _SHARD_MULTIPLE
    if n / balanced >= _MIN_BALANCED_SHARD:
        n_shards = balanced
    bounds = np.linspace(0, n, n_shards + 1).round().astype(int)
    tasks = [(str(out_dir / f"shard-{k:05d}.h5"), seed, int(bounds[k]), int(bounds[k + 1] - bounds[k]), split)
             for k in range(n_shards)]
    if resume:
        tasks = [t for t in tasks
                 if not _same_shard(Path(t[0]), config, seed, split, t[2], t[3], catalog_path)]
    bar = tqdm(total=sum(t[3] for t in tasks), desc=f"simulate {split} blends", unit="blend",
               disable=not progress)
    if jobs == 1:
        _init_worker(config, catalog_path, split, None)
        for task in tasks:
            _write_shard(task)
            bar.update(task[3])
    else:
        ctx = multiprocessing.get_context("fork")
        counter = ctx.Value("l", 0)
        with ctx.Pool(jobs, initializer=_init_worker,
                      initargs=(config, catalog_path, split, counter)) as pool:
            pending = pool.map_async(_write_shard, tasks, chunksize=1)
            while not pending.ready():
                pending.wait(0.2)
                bar.update(counter.value - bar.n)
            pending.get()  # re-raise a worker's exception
            bar.update(bar.total - bar.n)
    bar.close()
    return [out_dir / f"shard-{k:05d}.h5" for k in range(n_shards)]


def _same_shard(path: Path, config: BlendConfig, seed: int, split: str, first: int, count: int,
                catalog_path: str | None) -> bool:
    """Whether ``path`` holds exactly the blends ``first .. first + count - 1`` of this stream."""
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            return (int(f.attrs["seed"]) == seed and f.attrs["split"] == split
                    and int(f.attrs["first_index"]) == first and len(f["image"]) == count
                    and _config_from_attrs(f.attrs) == config and f.attrs["catalog"] == (catalog_path or ""))
    except (OSError, KeyError):
        return False


def _config_from_attrs(attrs) -> BlendConfig:
    values = json.loads(attrs["config"])
    for key in ("annulus", "disk_hlr_range", "psf_fwhm_range", "years"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return BlendConfig(**values)


def read_shard_config(path: str | Path) -> BlendConfig:
    """The `BlendConfig` a shard was made with."""
    with h5py.File(path, "r") as f:
        return _config_from_attrs(f.attrs)


class BlendDataset:
    """Read blends from shards, by index or as a stream of shuffled batches.

    Parameters
    ----------
    paths : sequence of `str` or `pathlib.Path`, or a folder
        Shard files or folders holding ``shard-*.h5`` (in order), or one of them.
    """

    def __init__(self, paths: Sequence[str | Path] | str | Path) -> None:
        paths = [paths] if isinstance(paths, (str, Path)) else paths
        self.paths = [s for p in map(Path, paths)
                      for s in (sorted(p.glob("shard-*.h5")) if p.is_dir() else [p])]
        if not self.paths:
            raise FileNotFoundError("No shard files given (expected shard-*.h5).")
        self.sizes = []
        for p in self.paths:
            with h5py.File(p, "r") as f:
                self.sizes.append(len(f["image"]))
                bands = json.loads(f.attrs["bands"])
                shape = f["image"].shape[1:]
            if p == self.paths[0]:
                self.bands, self.image_shape = bands, shape
                self.max_neighbours = max(1, read_shard_config(p).max_galaxies - 1)
            elif bands != self.bands or shape != self.image_shape:
                raise ValueError(f"Shard {p} has bands {bands} and shape {shape}, unlike {self.paths[0]}.")
        self._starts = np.concatenate([[0], np.cumsum(self.sizes)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def config(self) -> BlendConfig:
        return read_shard_config(self.paths[0])

    @property
    def shard_ranges(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of each shard's blends, in order (what one `read` call may span)."""
        return [(int(a), int(b)) for a, b in zip(self._starts[:-1], self._starts[1:])]

    def _psf(self, f: h5py.File, start: int, stop: int) -> np.ndarray:
        if "psf" in f:
            return f["psf"][start:stop]
        # A shard from before per-blend PSFs: every blend has its survey's PSFs.
        survey = _config_from_attrs(f.attrs).get_survey()
        psf = np.stack([psf_image(b.make_psf(), b.pixel_scale) for b in survey.bands])
        return np.broadcast_to(psf, (stop - start,) + psf.shape).copy()

    def _read_block(self, f: h5py.File, start: int, stop: int, truth: bool) -> dict[str, np.ndarray]:
        offsets = f["galaxy_offset"][start:stop]
        n_gal = f["n_galaxies"][start:stop]
        g0, g1 = int(offsets[0]), int(offsets[-1] + n_gal[-1])
        truth_images = f["truth_images"][g0:g1]
        local = offsets - g0
        # Neighbours of each blend's central galaxy: (x, y, SNR), NaN-padded to the largest blend.
        x, y, snr = (f[f"truth/{name}"][g0:g1] for name in ("x", "y", "snr"))
        neighbours = np.full((stop - start, self.max_neighbours, 3), np.nan, dtype=np.float32)
        for k, (o, n) in enumerate(zip(local, n_gal)):
            neighbours[k, : n - 1] = np.stack([x[o + 1:o + n], y[o + 1:o + n], snr[o + 1:o + n]], axis=1)
        batch = {
            "image": f["image"][start:stop],
            "variance": f["variance"][start:stop],
            "psf": self._psf(f, start, stop),
            "n_galaxies": n_gal,
            "central": truth_images[local],
            "noiseless": np.add.reduceat(truth_images, local, axis=0),
            "neighbours": neighbours,
        }
        if truth:
            batch["truth_images"] = [truth_images[o:o + k] for o, k in zip(local, n_gal)]
            batch["truth"] = {name: f[f"truth/{name}"][g0:g1] for name in f["truth"]}
            batch["galaxy_offset"] = local
        return batch

    def read(self, start: int, stop: int, truth: bool = True) -> dict[str, np.ndarray]:
        """Blends ``start .. stop - 1`` (within one shard), with their truth.

        Returns
        -------
        batch : `dict`
            ``image``, ``variance``, ``psf``, ``n_galaxies``, ``central`` (noiseless central galaxy),
            ``noiseless`` (the noiseless blend), ``neighbours`` (x, y, SNR of the other galaxies,
            NaN-padded), and with ``truth``: ``truth_images`` (a list of per-blend arrays), ``truth``
            (per-galaxy fields) and ``galaxy_offset`` (each blend's first galaxy in ``truth``).
        """
        k = int(np.searchsorted(self._starts, start, side="right") - 1)
        if stop > self._starts[k + 1] or start < 0 or stop <= start:
            raise IndexError(f"Range {start}:{stop} is empty or crosses a shard boundary.")
        with h5py.File(self.paths[k], "r") as f:
            return self._read_block(f, start - int(self._starts[k]), stop - int(self._starts[k]), truth)

    def iter_batches(self, batch_size: int, seed: int, shuffle: bool = True, block_size: int = 256,
                     buffer_blocks: int = 8, drop_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Stream batches once over the data (the keys of `read` without ``truth``).

        Shards are visited in a random order and read in contiguous blocks; a buffer of
        ``buffer_blocks`` blocks is shuffled before batches are cut from it, so memory stays bounded by
        about ``buffer_blocks * block_size`` blends whatever the dataset size.

        Parameters
        ----------
        batch_size : `int`
            Blends per batch.
        seed : `int`
            Seed of the shuffling (use a different one every epoch).
        shuffle : `bool`
            Shuffle shards, blocks and blends (else stream order).
        block_size, buffer_blocks : `int`
            Read granularity and shuffle buffer size.
        drop_last : `bool`
            Drop a final incomplete batch.
        """
        rng = np.random.default_rng(seed)
        blocks = [(k, s, min(s + block_size, size)) for k, size in enumerate(self.sizes)
                  for s in range(0, size, block_size)]
        if shuffle:
            blocks = [blocks[i] for i in rng.permutation(len(blocks))]
        keys = ("image", "variance", "psf", "n_galaxies", "central", "noiseless", "neighbours")
        buffer: dict[str, list[np.ndarray]] = {key: [] for key in keys}
        buffered = 0
        handles: dict[int, h5py.File] = {}
        try:
            for i, (k, start, stop) in enumerate(blocks):
                if k not in handles:
                    handles[k] = h5py.File(self.paths[k], "r")
                block = self._read_block(handles[k], start, stop, truth=False)
                for key in keys:
                    buffer[key].append(block[key])
                buffered += stop - start
                last = i == len(blocks) - 1
                if buffered >= buffer_blocks * block_size or last:
                    merged = {key: np.concatenate(buffer[key]) for key in keys}
                    order = rng.permutation(buffered) if shuffle else np.arange(buffered)
                    n_full = buffered // batch_size * batch_size
                    for b in range(0, n_full, batch_size):
                        yield {key: merged[key][order[b:b + batch_size]] for key in keys}
                    rest = order[n_full:]
                    buffer = {key: [merged[key][rest]] for key in keys}
                    buffered = len(rest)
            if buffered and not drop_last:
                yield {key: np.concatenate(buffer[key]) for key in keys}
        finally:
            for handle in handles.values():
                handle.close()


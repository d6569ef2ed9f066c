"""HDF5 shards: parallel writing, reading back, streaming shuffled batches."""

import h5py
import numpy as np
import pytest

from lsst.meas.extensions.vae.sim.blend import BlendConfig, BlendMaker
from lsst.meas.extensions.vae.sim.dataset import BlendDataset, read_shard_config, write_blends

CONFIG = BlendConfig(stamp_size=33)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("blends")
    paths = write_blends(out / "two", 45, seed=5, config=CONFIG, jobs=2, shard_size=10, progress=False)
    return out, paths


def test_parallel_and_serial_writes_are_identical(shards):
    out, parallel = shards
    serial = write_blends(out / "one", 45, seed=5, config=CONFIG, jobs=1, shard_size=10, progress=False)
    assert len(parallel) == 5  # ceil(45 / 10); too small to round up to a multiple of 4
    a, b = BlendDataset(parallel), BlendDataset(serial)
    assert len(a) == len(b) == 45
    both = BlendDataset([out / "two", out / "one"])  # several folders: all their shards, in order
    assert len(both) == 90 and both.paths == list(parallel) + list(serial)
    for k in range(len(a.paths)):
        with h5py.File(a.paths[k]) as fa, h5py.File(b.paths[k]) as fb:
            np.testing.assert_array_equal(fa["image"][()], fb["image"][()])
            np.testing.assert_array_equal(fa["truth_images"][()], fb["truth_images"][()])
    assert not list(out.glob("*/*.tmp"))


def test_read_back_matches_the_maker(shards):
    _, paths = shards
    data = BlendDataset(paths[0].parent)
    assert data.bands == ["u", "g", "r", "i", "z", "y"] and data.image_shape == (6, 33, 33)
    assert read_shard_config(paths[0]) == CONFIG
    maker = BlendMaker(CONFIG)
    start = data.sizes[0] + 2
    batch = data.read(start, start + 3)
    for k in range(3):
        blend = maker.make(5, start + k)
        np.testing.assert_array_equal(batch["image"][k], blend.image)
        np.testing.assert_array_equal(batch["central"][k], blend.truth_images[0])
        np.testing.assert_array_equal(batch["truth_images"][k], blend.truth_images)
        o = batch["galaxy_offset"][k]
        np.testing.assert_array_equal(batch["truth"]["ident"][o:o + len(blend.truth_images)],
                                      blend.truth["ident"])
    with pytest.raises(IndexError):
        data.read(0, data.sizes[0] + 1)


def test_streamed_batches_cover_every_blend_once(shards):
    _, paths = shards
    data = BlendDataset(paths)
    seen = []
    for batch in data.iter_batches(batch_size=4, seed=1, block_size=4, buffer_blocks=2):
        assert batch["image"].shape[1:] == (6, 33, 33) and len(batch["image"]) <= 4
        seen.append(batch["image"][:, 2, 16, 16])
    seen = np.concatenate(seen)
    every = np.concatenate([data.read(int(s), int(s + n), truth=False)["image"][:, 2, 16, 16]
                            for s, n in zip(data._starts[:-1], data.sizes)])
    assert len(seen) == 45
    np.testing.assert_array_equal(np.sort(seen), np.sort(every))
    assert not np.array_equal(seen, every)  # shuffled
    again = np.concatenate([b["image"][:, 2, 16, 16] for b in data.iter_batches(4, seed=1, block_size=4,
                                                                                buffer_blocks=2)])
    np.testing.assert_array_equal(seen, again)  # deterministic for a seed
    ordered = np.concatenate([b["image"][:, 2, 16, 16] for b in data.iter_batches(4, 0, shuffle=False)])
    np.testing.assert_array_equal(ordered, every)
    dropped = sum(len(b["image"]) for b in data.iter_batches(4, seed=2, drop_last=True))
    assert dropped == 44


def test_missing_shards_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="shard"):
        BlendDataset(tmp_path)


def test_simulation_resumes_where_it_stopped(tmp_path):
    from lsst.meas.extensions.vae.sim.blend import BlendConfig
    from lsst.meas.extensions.vae.sim.dataset import BlendDataset, write_blends

    config = BlendConfig(stamp_size=25, max_galaxies=2)
    whole = write_blends(tmp_path / "whole", 8, seed=4, config=config, jobs=1, shard_size=2, progress=False)
    part = write_blends(tmp_path / "part", 8, seed=4, config=config, jobs=1, shard_size=2, progress=False)
    part[1].unlink()  # a run stopped before this shard was written
    stamp = part[0].stat().st_mtime_ns
    write_blends(tmp_path / "part", 8, seed=4, config=config, jobs=1, shard_size=2, progress=False,
                 resume=True)
    assert part[0].stat().st_mtime_ns == stamp  # kept, not made again
    np.testing.assert_array_equal(BlendDataset(tmp_path / "part").read(2, 4)["image"],
                                  BlendDataset(tmp_path / "whole").read(2, 4)["image"])
    assert len(whole) == 4

"""The built-in galaxy generator."""

import numpy as np
import pytest

from lsst.meas.extensions.vae.sim.catalog import (
    GalaxyCatalog,
    cumulative_counts,
    generate_catalog,
    split_ident_offset,
)
from lsst.meas.extensions.vae.surveys import ALL_BANDS


def test_deterministic_and_split_disjoint():
    a = generate_catalog(500, seed=4, split="train")
    b = generate_catalog(500, seed=4, split="train")
    c = generate_catalog(500, seed=4, split="test")
    np.testing.assert_array_equal(a.mag, b.mag)
    np.testing.assert_array_equal(a.ident, b.ident)
    assert not set(a.ident) & set(c.ident)
    assert not np.isin(a.mag[:, 2], c.mag[:, 2]).any()
    assert a.ident.min() >= split_ident_offset("train") and c.ident.min() >= split_ident_offset("test")
    with pytest.raises(ValueError, match="Unknown split"):
        generate_catalog(5, seed=0, split="holdout")


def test_distributions_follow_the_published_priors():
    cat = generate_catalog(20000, seed=1)
    r = cat.band_mag("r")
    assert r.min() >= 18.0 and r.max() <= 27.5
    assert np.median(r) == pytest.approx(26.55, abs=0.1)
    # Counts slope 0.31 dex/mag: the cumulative count ratio between r < 26.5 and r < 25.5 is ~10**0.31.
    ratio = np.sum(r < 26.5) / np.sum(r < 25.5)
    assert ratio == pytest.approx(10**0.31, rel=0.12)
    assert cumulative_counts(25.0) == 46.0
    # Miller et al. (2013) median disk scale length at i = 23: exp(-1.145) = 0.318" (major axis).
    i = cat.band_mag("i")
    near = np.abs(i - 23.0) < 0.25
    major_hlr = cat.disk_hlr[near] / np.sqrt(cat.disk_q[near])
    assert np.median(major_hlr) == pytest.approx(1.678 * np.exp(-1.145), rel=0.1)
    assert 0.0 <= cat.bulge_fraction.min() and cat.bulge_fraction.max() <= 1.0
    # 70 % pure disks are drawn; the r-band magnitude cut keeps slightly more of them (they are bluer).
    assert np.mean(cat.bulge_fraction[:, ALL_BANDS.index("i")] == 0) == pytest.approx(0.737, abs=0.015)
    assert np.all(np.isfinite(cat.mag))
    assert 0.05 < cat.disk_q.min() and cat.disk_q.max() <= 1.0


def test_catalog_container():
    cat = generate_catalog(10, seed=2)
    sub = cat[np.array([1, 3])]
    assert len(sub) == 2 and sub.ident[1] == cat.ident[3]
    table = cat.to_table()
    assert len(table) == 10 and "mag_VIS" in table.colnames
    both = GalaxyCatalog.concatenate([cat, sub])
    assert len(both) == 12
    with pytest.raises(ValueError, match="shape"):
        GalaxyCatalog(**{**{k: getattr(cat, k) for k in cat.__dataclass_fields__}, "mag": cat.mag[:, :3]})

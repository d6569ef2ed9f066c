"""Tests of the CatSim and COSMOS catalogue readers against the catalogues in ../shared/data/catalogs."""

from __future__ import annotations

from pathlib import Path

import galsim
import numpy as np
import pytest
from astropy.table import Table

from lsst.meas.extensions.vae.sim.catalog import GalaxyCatalog
from lsst.meas.extensions.vae.sim.catalog_io import (
    COSMOS_ZEROPOINT, best_fit_template, cosmos_sizes_and_fluxes, read_catalog, read_catsim, read_cosmos,
    select_split, split_bucket,
)
from lsst.meas.extensions.vae.sim.sed import SED_TEMPLATES, band_offsets
from lsst.meas.extensions.vae.surveys import ALL_BANDS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "catalogs"
CATSIM = DATA / "catsim_sample_100.fits"
COSMOS_FITS = DATA / "cosmos_23.5_example_fits_100.fits"
COSMOS_INDEX = DATA / "cosmos_23.5_example_100.fits"

if not (CATSIM.exists() and COSMOS_FITS.exists()):
    pytest.skip(f"shared catalogues not found in {DATA}", allow_module_level=True)

B = {band: b for b, band in enumerate(ALL_BANDS)}


@pytest.fixture(scope="module")
def catsim_table() -> Table:
    return Table.read(CATSIM)


@pytest.fixture(scope="module")
def catsim() -> GalaxyCatalog:
    return read_catsim(CATSIM)


@pytest.fixture(scope="module")
def cosmos_table() -> Table:
    return Table.read(COSMOS_FITS)


@pytest.fixture(scope="module")
def cosmos() -> GalaxyCatalog:
    return read_cosmos(COSMOS_FITS)


# --- CatSim --------------------------------------------------------------------------------------------

def test_catsim_rows_and_lsst_magnitudes(catsim: GalaxyCatalog, catsim_table: Table) -> None:
    assert len(catsim) == 100
    np.testing.assert_array_equal(catsim.ident, catsim_table["galtileid"])
    np.testing.assert_array_equal(catsim.redshift, catsim_table["redshift"])
    for band in "ugrizy":
        np.testing.assert_array_equal(catsim.band_mag(band), catsim_table[f"{band}_ab"])
    assert catsim.band_mag("r")[0] == pytest.approx(23.95888138, abs=1e-6)
    assert np.all(np.isfinite(catsim.mag))


def test_catsim_shapes(catsim: GalaxyCatalog, catsim_table: Table) -> None:
    row = catsim_table[0]
    assert catsim.disk_hlr[0] == pytest.approx(np.sqrt(row["a_d"] * row["b_d"]), rel=1e-12)
    assert catsim.disk_hlr[0] == pytest.approx(0.248326, abs=1e-6)
    assert catsim.disk_q[0] == pytest.approx(row["b_d"] / row["a_d"], rel=1e-12)
    assert catsim.disk_beta[0] == pytest.approx(np.mod(np.radians(row["pa_disk"]), np.pi), abs=1e-12)
    np.testing.assert_array_equal(catsim.disk_n, 1.0)
    np.testing.assert_array_equal(catsim.bulge_n, 4.0)

    both = (catsim_table["fluxnorm_bulge"] > 0) & (catsim_table["fluxnorm_disk"] > 0)
    k = int(np.flatnonzero(both)[0])
    a_b, b_b = catsim_table["a_b"][k], catsim_table["b_b"][k]
    assert catsim.bulge_hlr[k] == pytest.approx(np.sqrt(a_b * b_b), rel=1e-12)
    assert catsim.bulge_q[k] == pytest.approx(b_b / a_b, rel=1e-12)
    assert catsim.bulge_beta[k] == pytest.approx(catsim.disk_beta[k])

    # 70 pure disks (a_b = b_b = 0) get placeholder bulges; one pure bulge gets a placeholder disk.
    pure_disk = catsim_table["fluxnorm_bulge"] == 0
    assert pure_disk.sum() == 70
    np.testing.assert_array_equal(catsim.bulge_hlr[pure_disk], 0.1)
    np.testing.assert_array_equal(catsim.bulge_q[pure_disk], 1.0)
    np.testing.assert_array_equal(catsim.bulge_fraction[pure_disk], 0.0)
    pure_bulge = catsim_table["fluxnorm_disk"] == 0
    assert pure_bulge.sum() == 1
    np.testing.assert_array_equal(catsim.bulge_fraction[pure_bulge], 1.0)
    np.testing.assert_array_equal(catsim.disk_hlr[pure_bulge], 0.1)

    fb = catsim.bulge_fraction
    assert np.all((fb >= 0) & (fb <= 1))
    assert np.all(fb == fb[:, :1])  # the same in every band
    bulge, disk = catsim_table["fluxnorm_bulge"], catsim_table["fluxnorm_disk"]
    expected = bulge / (bulge + disk)
    np.testing.assert_allclose(fb[:, 0], expected, rtol=1e-12)
    assert np.all((catsim.disk_q > 0) & (catsim.disk_q <= 1) & (catsim.bulge_q > 0) & (catsim.bulge_q <= 1))


def test_catsim_euclid_stand_ins(catsim: GalaxyCatalog) -> None:
    r, i, z = catsim.band_mag("r"), catsim.band_mag("i"), catsim.band_mag("z")
    vis = catsim.band_mag("VIS")
    flux = (10 ** (-0.4 * r) + 10 ** (-0.4 * i) + 10 ** (-0.4 * z)) / 3
    np.testing.assert_allclose(vis, -2.5 * np.log10(flux), atol=1e-12)
    assert np.all(vis <= np.maximum.reduce([r, i, z]) + 1e-12)
    assert np.all(vis >= np.minimum.reduce([r, i, z]) - 1e-12)

    lsst = catsim.mag[:, [B[b] for b in "ugrizy"]]
    template = best_fit_template(lsst, catsim.redshift)
    offsets = band_offsets(template, catsim.redshift)
    for band in ("Y", "J", "H"):
        np.testing.assert_allclose(catsim.band_mag(band), i + offsets[:, B[band]], atol=1e-12)
    # Near-infrared colours of real galaxies (measured: i - H from 0.49 to 2.95, median 1.15).
    i_h = i - catsim.band_mag("H")
    assert np.all((i_h > 0.3) & (i_h < 3.2))
    assert np.median(i_h) == pytest.approx(1.15, abs=0.05)


def test_best_fit_template_recovers_templates() -> None:
    redshift = np.array([0.3, 0.8, 1.2, 0.5])
    for t in range(len(SED_TEMPLATES)):
        offsets = band_offsets(np.full(len(redshift), t), redshift)
        lsst = 24.0 + offsets[:, [B[b] for b in "ugrizy"]]
        np.testing.assert_array_equal(best_fit_template(lsst, redshift), t)


# --- COSMOS --------------------------------------------------------------------------------------------

def test_cosmos_rows_and_models(cosmos: GalaxyCatalog, cosmos_table: Table) -> None:
    assert len(cosmos) == 100  # every galaxy of the example file passes GalSim's "bad_fits" cut
    np.testing.assert_array_equal(cosmos.ident, cosmos_table["IDENT"])
    np.testing.assert_array_equal(cosmos.redshift, cosmos_table["zphot"])
    two = np.asarray(cosmos_table["use_bulgefit"]) == 1
    assert two.sum() == 36
    flux = np.asarray(cosmos_table["flux"])
    fb = cosmos.bulge_fraction
    assert np.all((fb >= 0) & (fb <= 1))
    np.testing.assert_allclose(fb[two, B["i"]], flux[two, 1] / (flux[two, 1] + flux[two, 2]), rtol=1e-12)
    np.testing.assert_array_equal(fb[~two], 0.0)
    np.testing.assert_array_equal(cosmos.disk_n[two], 1.0)
    assert np.all((cosmos.disk_n >= 0.3) & (cosmos.disk_n <= 6.0))
    # i is F814W: the model flux at GalSim's COSMOS zero point.
    total = np.where(two, flux[:, 1] + flux[:, 2], flux[:, 0])
    np.testing.assert_allclose(cosmos.band_mag("i"), COSMOS_ZEROPOINT - 2.5 * np.log10(total), atol=1e-12)
    assert cosmos.band_mag("i")[0] == pytest.approx(20.79397600, abs=1e-6)
    np.testing.assert_allclose(cosmos.disk_hlr[~two], np.asarray(cosmos_table["hlr"])[~two, 0], rtol=1e-12)
    mag_auto = read_cosmos(COSMOS_FITS, use_mag_auto=True)
    np.testing.assert_array_equal(mag_auto.band_mag("i"), cosmos_table["mag_auto"])


@pytest.mark.parametrize("index", [0, 1, 5, 17, 19, 4, 7, 16])  # Sersic (n >= 3 at 17, n < 0.3 at 19), B+D
def test_cosmos_matches_galsim(cosmos: GalaxyCatalog, cosmos_table: Table, index: int) -> None:
    galsim_catalog = galsim.COSMOSCatalog(file_name=COSMOS_FITS.name, dir=str(DATA), use_real=False,
                                          exclusion_level="bad_fits")
    reference = galsim_catalog.makeGalaxy(index, gal_type="parametric")
    flux = 10 ** (-0.4 * (cosmos.band_mag("i")[index] - COSMOS_ZEROPOINT))
    assert flux == pytest.approx(reference.flux, rel=1e-10)

    fb = cosmos.bulge_fraction[index, B["i"]]
    disk = (galsim.Sersic(float(cosmos.disk_n[index]), half_light_radius=cosmos.disk_hlr[index],
                          flux=flux * (1 - fb))
            .shear(q=cosmos.disk_q[index], beta=cosmos.disk_beta[index] * galsim.radians))
    if cosmos_table["use_bulgefit"][index]:
        reference_bulge, reference_disk = reference.obj_list
        bulge = (galsim.DeVaucouleurs(half_light_radius=cosmos.bulge_hlr[index], flux=flux * fb)
                 .shear(q=cosmos.bulge_q[index], beta=cosmos.bulge_beta[index] * galsim.radians))
        pairs = [(bulge, reference_bulge), (disk, reference_disk)]
        assert reference_bulge.original.n == cosmos.bulge_n[index] == 4.0
    else:
        assert fb == 0.0
        pairs = [(disk, reference)]
    for ours, theirs in pairs:
        assert ours.original.half_light_radius == pytest.approx(theirs.original.half_light_radius,
                                                                rel=1e-10)
        n_theirs = theirs.original.n if isinstance(theirs.original, galsim.Sersic) else 1.0
        assert ours.original.n == pytest.approx(n_theirs, abs=1e-10)
        assert ours.flux == pytest.approx(theirs.flux, rel=1e-10)
        np.testing.assert_allclose(ours.jac, theirs.jac, atol=1e-10)


def test_cosmos_sizes_and_fluxes_from_fits(cosmos_table: Table) -> None:
    """The precomputed hlr / flux columns follow from sersicfit / bulgefit (0.03 arcsec pixels)."""
    hlr, flux = cosmos_sizes_and_fluxes(np.asarray(cosmos_table["sersicfit"]),
                                        np.asarray(cosmos_table["bulgefit"]))
    two = np.asarray(cosmos_table["use_bulgefit"]) == 1
    np.testing.assert_allclose(hlr[:, 0], cosmos_table["hlr"][:, 0], rtol=1e-10)
    np.testing.assert_allclose(flux[:, 0], cosmos_table["flux"][:, 0], rtol=1e-6)
    np.testing.assert_allclose(hlr[two, 1:], np.asarray(cosmos_table["hlr"])[two, 1:], rtol=1e-10)
    # The catalogue's bulge and disk fluxes differ from the exact Sersic integrals by < 0.04 %.
    np.testing.assert_allclose(flux[two, 1:], np.asarray(cosmos_table["flux"])[two, 1:], rtol=5e-4)


def test_cosmos_colours_follow_galsim_templates(cosmos: GalaxyCatalog, cosmos_table: Table) -> None:
    two = np.asarray(cosmos_table["use_bulgefit"]) == 1
    colour = cosmos.mag - cosmos.mag[:, [B["i"]]]
    z = cosmos.redshift
    e, sbc, scd = (band_offsets(np.full(len(z), SED_TEMPLATES.index(t)), z) for t in ("E", "Sbc", "Scd"))
    bt = cosmos.bulge_fraction[:, [B["i"]]]
    mixed = -2.5 * np.log10((1 - bt) * 10 ** (-0.4 * scd) + bt * 10 ** (-0.4 * e))
    np.testing.assert_allclose(colour[two], mixed[two], atol=1e-10)
    n = cosmos.disk_n
    sersic_templates = [(~two & (n < 1.5), scd), (~two & (n >= 1.5) & (n < 3), sbc), (~two & (n >= 3), e)]
    for select, template in sersic_templates:
        assert select.sum() > 0
        np.testing.assert_allclose(colour[select], template[select], atol=1e-10)
    # Bulges are redder than disks: the bulge fraction grows towards the red.
    assert np.all(cosmos.bulge_fraction[two, B["H"]] >= cosmos.bulge_fraction[two, B["g"]])


def test_cosmos_exclusion(cosmos_table: Table) -> None:
    table = cosmos_table.copy()
    table["fit_status"][3] = 0  # both fits failed
    table["use_bulgefit"][10] = 0
    table["viable_sersic"][10] = 0  # nothing GalSim can build
    kept = read_cosmos(table)
    assert len(kept) == 98
    assert table["IDENT"][3] not in kept.ident and table["IDENT"][10] not in kept.ident
    assert len(read_cosmos(table, exclusion_level="none")) == 99
    with pytest.raises(ValueError):
        read_cosmos(table, exclusion_level="marginal")


# --- Dispatch and splits -------------------------------------------------------------------------------

def test_read_catalog_dispatch(catsim: GalaxyCatalog, cosmos: GalaxyCatalog) -> None:
    np.testing.assert_array_equal(read_catalog(CATSIM).mag, catsim.mag)
    np.testing.assert_array_equal(read_catalog(COSMOS_FITS).mag, cosmos.mag)
    if COSMOS_INDEX.exists():
        with pytest.raises(ValueError, match="real-galaxy index"):
            read_catalog(COSMOS_INDEX)


def test_read_catalog_rejects_other_tables(tmp_path: Path) -> None:
    path = tmp_path / "other.fits"
    Table({"id": [1, 2], "mag": [20.0, 21.0]}).write(path)
    with pytest.raises(ValueError, match="neither a CatSim catalogue"):
        read_catalog(path)


@pytest.mark.parametrize("which", ["catsim", "cosmos"])
def test_select_split_disjoint(which: str, request: pytest.FixtureRequest) -> None:
    catalog: GalaxyCatalog = request.getfixturevalue(which)
    parts = {split: select_split(catalog, split) for split in ("train", "validation", "test")}
    ids = {split: set(part.ident.tolist()) for split, part in parts.items()}
    assert not ids["train"] & ids["test"]
    assert not ids["train"] & ids["validation"]
    assert not ids["validation"] & ids["test"]
    assert ids["train"] | ids["validation"] | ids["test"] == set(catalog.ident.tolist())
    assert len(parts["test"]) > 0 and len(parts["train"]) > len(parts["test"])
    np.testing.assert_array_equal(select_split(catalog, "patch").ident, parts["test"].ident)
    # The split of a galaxy depends on its ident only, not on the catalogue's order or content.
    shuffled = catalog[np.random.default_rng(1).permutation(len(catalog))]
    assert set(select_split(shuffled, "test").ident.tolist()) == ids["test"]
    assert set(select_split(catalog[:50], "train").ident.tolist()) <= ids["train"]
    with pytest.raises(ValueError):
        select_split(catalog, "holdout")


def test_split_fractions() -> None:
    ident = np.arange(10**6, 10**6 + 200_000, dtype=np.int64)
    bucket = split_bucket(ident)
    assert bucket.min() == 0 and bucket.max() == 999
    assert np.mean(bucket < 200) == pytest.approx(0.2, abs=0.005)
    assert np.mean((bucket >= 200) & (bucket < 300)) == pytest.approx(0.1, abs=0.005)
    np.testing.assert_array_equal(split_bucket(ident[::-1]), bucket[::-1])

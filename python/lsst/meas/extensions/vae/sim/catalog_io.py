"""Read real galaxy catalogues into a `GalaxyCatalog`, and split them into disjoint train / test sets.

Two formats are understood (`read_catalog` tells them apart by their columns).

LSST CatSim (`read_catsim`), as distributed with the BlendingToolKit
---------------------------------------------------------------------
Columns ``galtileid, redshift, fluxnorm_bulge, fluxnorm_disk, a_b, b_b, a_d, b_d, pa_bulge, pa_disk,
u_ab ... y_ab``.

- Sizes: ``a`` and ``b`` are the half-light semi-major and semi-minor axes (arcsec); the circularised
  half-light radius is ``sqrt(a b)`` and the axis ratio ``b / a``.  A component with no flux has
  ``a = b = 0``; it gets harmless placeholder values (hlr 0.1 arcsec, q 1, the other component's angle)
  and a zero flux share.
- Position angles: ``beta = radians(pa)``, used directly as GalSim's shear angle (counter-clockwise from
  the x axis).  This is what the BlendingToolKit does (``btk/draw_blends.py``, ``get_catsim_galaxy``, and
  the earlier ``btk/catsim_draw.py`` credited to WeakLensingDeblending): ``np.radians(entry["pa_disk"])``
  passed as ``beta`` to ``shear(q=..., beta=...)``.  Angles are reduced modulo pi.
- Bulge fraction: ``fluxnorm_bulge / (fluxnorm_bulge + fluxnorm_disk)`` in every band.  The AGN
  component (``fluxnorm_agn``, zero for every galaxy of the BTK sample) is ignored: its flux, if any, is
  shared between bulge and disk in proportion, so total magnitudes are those of the catalogue.
- Magnitudes u, g, r, i, z, y: the catalogue's ``*_ab`` columns.  CatSim has no Euclid bands; stand-ins:

  * VIS: AB magnitude of the mean of the r, i and z flux densities (f_nu), the three LSST bands that
    VIS (550-900 nm) covers;
  * Y, J, H: the template of `sed.SED_TEMPLATES` (E, Sbc, Scd, Im) whose colours at the galaxy's
    redshift (`sed.band_offsets`) best match the observed ugrizy colours (least squares on
    ``m_band - m_i`` over u, g, r, z, y) gives ``m_Y - m_i``, ``m_J - m_i`` and ``m_H - m_i``.  Bands
    bluer than 150 nm in the rest frame are left out of the fit (z and y always count): there the
    templates' extrapolated far-UV and CatSim's intergalactic absorption disagree, and the u band
    alone would pick an E template for blue star-forming galaxies at z > 3 (i - H > 4).

GalSim's COSMOS parametric fits (`read_cosmos`)
------------------------------------------------
The ``*_fits.fits`` file of ``galsim.COSMOSCatalog`` (columns ``IDENT, mag_auto, zphot, sersicfit,
bulgefit, fit_status, use_bulgefit, viable_sersic, hlr, flux``), turned into galaxies the way GalSim 2.x
builds parametric galaxies (``galsim/galaxy_sample.py``: ``COSMOSCatalog._buildParametric``,
``_apply_exclusion`` and ``getSED``):

- ``sersicfit`` (8 numbers): I_e (surface brightness at the half-light radius, counts per pixel), the
  half-light radius along the major axis (pixels of 0.03 arcsec), Sersic n, q = b / a, boxiness (0),
  x0, y0, phi (position angle, radians, counter-clockwise from the image x axis).  ``bulgefit`` (16): the
  same 8 for an n = 1 disk, then 8 for an n = 4 bulge.
- Sizes and fluxes: GalSim takes the circularised half-light radius (arcsec) and total flux (counts/s in
  F814W) of the Sersic fit, bulge and disk from the precomputed columns ``hlr[0:3]`` and ``flux[0:3]``; so
  do we.  They are ``hlr = 0.03 r_pix sqrt(q)`` and ``flux = I_e q r_pix^2 / S_n``, where ``S_n`` is the
  surface brightness at the half-light radius of a unit-flux, unit-radius Sersic profile (checked in the
  tests); a catalogue without these columns is converted with these formulae.
- Model choice: the bulge + disk fit when ``use_bulgefit`` is set (disk n = 1, bulge n = 4, each with its
  own q and phi), else the single Sersic fit, whose n is clipped to [0.3, 6] and rounded to
  ``sersic_prec`` (0.05, GalSim's default) and which goes into the "disk" slot with bulge fraction 0.
- Selection: GalSim's ``exclusion_level="bad_fits"`` (our default) keeps a galaxy when the Sersic fit
  (``fit_status[:, 4]``) or the bulge + disk fit (``fit_status[:, 0]``) has a status in 1-4.  We also drop
  galaxies GalSim refuses to build (neither ``use_bulgefit`` nor ``viable_sersic``, or a bulge-to-total
  ratio outside [0, 1]).  ``"none"`` keeps everything buildable.  GalSim's ``"bad_stamp"`` and
  ``"marginal"`` levels need the ``*_selection.fits`` file (postage-stamp quality), which we do not read.
  In the 100-galaxy example catalogue nothing is dropped.
- Magnitude: the model's F814W flux with GalSim's COSMOS zero point, ``25.94 - 2.5 log10(flux)``, so the
  magnitudes give exactly the flux of ``COSMOSCatalog.makeGalaxy(i, gal_type="parametric")``
  (``use_mag_auto=True`` takes ``mag_auto`` instead, as GalSim's chromatic galaxies do; the two differ by
  -0.08 mag in the median).  F814W is treated as the LSST i band.
- Colours: as GalSim's chromatic parametric galaxies (``getSED`` / ``_buildParametric``) with
  ``redshift = zphot``: a bulge + disk galaxy has an E bulge and an Scd disk, each normalised to its share
  of the F814W (= i) flux; a single Sersic galaxy gets Scd for n < 1.5, Sbc for 1.5 <= n < 3 and E for
  n >= 3 (n after clipping and rounding).  Our `sed.band_offsets` use GalSim's ``CWW_*_ext.sed``
  templates, GalSim uses the ``*_ext_more`` versions of the same templates.

Splits (`select_split`)
-----------------------
A galaxy's split is a function of its ident alone: a 64-bit integer hash (splitmix64 finaliser) of the
ident, modulo 1000, gives a bucket b.  ``b < 1000 test_fraction`` is the test set ("patch" scenes draw
from it too, so that no training galaxy appears in an evaluation scene), the next
``1000 validation_fraction`` buckets are the validation set, the rest is the training set.  The three
sets are disjoint and stable when the catalogue grows or is reordered.
"""

from __future__ import annotations

__all__ = ["read_catsim", "read_cosmos", "read_catalog", "select_split", "split_bucket", "best_fit_template",
           "cosmos_sizes_and_fluxes", "COSMOS_PIXEL_SCALE", "COSMOS_ZEROPOINT"]

import functools
import logging
import os

import galsim
import numpy as np
from astropy.table import Table

from ..surveys import ALL_BANDS
from .catalog import SPLITS, GalaxyCatalog
from .sed import SED_TEMPLATES, band_offsets

_LOG = logging.getLogger(__name__)

PathLike = str | os.PathLike

# Placeholders for a component that carries no flux.
_ABSENT_HLR = 0.1
_ABSENT_Q = 1.0
_MIN_Q = 1e-2

_LSST_BANDS = ("u", "g", "r", "i", "z", "y")
_CATSIM_COLUMNS = ("galtileid", "redshift", "fluxnorm_bulge", "fluxnorm_disk", "a_b", "b_b", "a_d", "b_d",
                   "pa_bulge", "pa_disk") + tuple(f"{band}_ab" for band in _LSST_BANDS)
# Central wavelengths (nm) of the LSST bands, and the bluest rest-frame wavelength used to pick a template:
# blueward of ~150 nm the templates' far-UV extensions and the intergalactic absorption of CatSim's SEDs
# disagree, and at z > 3 the u and g bands would otherwise decide the fit.
_LSST_CENTRAL_NM = (367.0, 482.5, 622.2, 754.5, 869.1, 971.0)
_MIN_REST_FRAME_NM = 150.0
_COSMOS_COLUMNS = ("IDENT", "mag_auto", "zphot", "sersicfit", "bulgefit", "fit_status", "use_bulgefit",
                   "viable_sersic")

# GalSim (galaxy_sample.py): pixel scale of the COSMOS fits, arcsec, and the F814W zero point giving the
# counts per second of the COSMOS science images (``COSMOSCatalog.getBandpass``).
COSMOS_PIXEL_SCALE = 0.03
COSMOS_ZEROPOINT = 25.94
_SERSIC_N_RANGE = (0.3, 6.0)
# GalSim's chromatic COSMOS galaxies: E bulges, Scd disks, Sbc for intermediate single Sersic profiles.
_BULGE_TEMPLATE = SED_TEMPLATES.index("E")
_DISK_TEMPLATE = SED_TEMPLATES.index("Scd")
_INTERMEDIATE_TEMPLATE = SED_TEMPLATES.index("Sbc")
_BAND_INDEX = {band: b for b, band in enumerate(ALL_BANDS)}


# --- CatSim --------------------------------------------------------------------------------------------

def read_catsim(path: PathLike | Table) -> GalaxyCatalog:
    """Read a CatSim-format galaxy catalogue (e.g. the BlendingToolKit's input catalogue).

    Parameters
    ----------
    path : `str`, `os.PathLike` or `astropy.table.Table`
        FITS file (or table already read) with the CatSim columns listed in the module docstring.

    Returns
    -------
    catalog : `GalaxyCatalog`
        One galaxy per row, in file order; ``ident`` is ``galtileid``.
    """
    table = _as_table(path)
    _require(table, _CATSIM_COLUMNS, "CatSim")
    n = len(table)

    flux_bulge = np.asarray(table["fluxnorm_bulge"], dtype=float)
    flux_disk = np.asarray(table["fluxnorm_disk"], dtype=float)
    total = flux_bulge + flux_disk
    if np.any(total <= 0):
        raise ValueError(f"{np.sum(total <= 0)} CatSim galaxies have no bulge or disk flux.")
    bulge_fraction = flux_bulge / total

    disk_hlr, disk_q, disk_beta, has_disk = _catsim_component(table, "d", flux_disk)
    bulge_hlr, bulge_q, bulge_beta, has_bulge = _catsim_component(table, "b", flux_bulge)
    # A missing component takes the other one's angle (CatSim gives both components the same angle).
    bulge_beta = np.where(has_bulge, bulge_beta, disk_beta)
    disk_beta = np.where(has_disk, disk_beta, bulge_beta)

    redshift = np.asarray(table["redshift"], dtype=float)
    lsst_mag = np.stack([np.asarray(table[f"{band}_ab"], dtype=float) for band in _LSST_BANDS], axis=1)
    mag = np.zeros((n, len(ALL_BANDS)))
    for b, band in enumerate(_LSST_BANDS):
        mag[:, _BAND_INDEX[band]] = lsst_mag[:, b]
    mag[:, _BAND_INDEX["VIS"]] = _vis_from_riz(lsst_mag[:, 2], lsst_mag[:, 3], lsst_mag[:, 4])
    template = best_fit_template(lsst_mag, redshift)
    offsets = band_offsets(template, redshift)
    for band in ("Y", "J", "H"):
        mag[:, _BAND_INDEX[band]] = lsst_mag[:, 3] + offsets[:, _BAND_INDEX[band]]

    return GalaxyCatalog(
        ident=np.asarray(table["galtileid"], dtype=np.int64), redshift=redshift, mag=mag,
        bulge_fraction=np.repeat(bulge_fraction[:, None], len(ALL_BANDS), axis=1),
        disk_hlr=disk_hlr, disk_q=disk_q, disk_beta=disk_beta, disk_n=np.ones(n),
        bulge_hlr=bulge_hlr, bulge_q=bulge_q, bulge_beta=bulge_beta, bulge_n=np.full(n, 4.0),
    )


def _catsim_component(table: Table, suffix: str, flux: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Half-light radius, axis ratio, angle and presence of the CatSim disk (``d``) or bulge (``b``)."""
    a = np.asarray(table[f"a_{suffix}"], dtype=float)
    b = np.asarray(table[f"b_{suffix}"], dtype=float)
    pa = np.asarray(table["pa_disk" if suffix == "d" else "pa_bulge"], dtype=float)
    present = (flux > 0) & (a > 0) & (b > 0)
    safe_a = np.where(present, a, 1.0)
    safe_b = np.where(present, b, 1.0)
    hlr = np.where(present, np.sqrt(safe_a * safe_b), _ABSENT_HLR)
    q = np.where(present, np.clip(safe_b / safe_a, _MIN_Q, 1.0), _ABSENT_Q)
    beta = np.mod(np.radians(pa), np.pi)
    return hlr, q, beta, present


def _vis_from_riz(r: np.ndarray, i: np.ndarray, z: np.ndarray) -> np.ndarray:
    """AB magnitude of the mean r, i, z flux density: the VIS stand-in."""
    mean_flux = (10 ** (-0.4 * r) + 10 ** (-0.4 * i) + 10 ** (-0.4 * z)) / 3.0
    return -2.5 * np.log10(mean_flux)


def best_fit_template(lsst_mag: np.ndarray, redshift: np.ndarray) -> np.ndarray:
    """Index of the `SED_TEMPLATES` entry whose colours best match observed LSST magnitudes.

    Parameters
    ----------
    lsst_mag : `numpy.ndarray`, shape (n, 6)
        u, g, r, i, z, y AB magnitudes.
    redshift : `numpy.ndarray`, shape (n,)

    Returns
    -------
    template : `numpy.ndarray` of `int`, shape (n,)
        Minimises the sum over u, g, r, z, y of ``((m_b - m_i) - (template m_b - m_i))**2``, leaving out
        the bands whose central wavelength is bluer than 150 nm in the galaxy's rest frame (except z and
        y, which always count).
    """
    lsst_mag = np.asarray(lsst_mag, dtype=float)
    redshift = np.asarray(redshift, dtype=float)
    observed = lsst_mag - lsst_mag[:, [3]]
    columns = [_BAND_INDEX[band] for band in _LSST_BANDS]
    rest_wavelength = np.array(_LSST_CENTRAL_NM)[None, :] / (1.0 + redshift[:, None])
    weight = (rest_wavelength >= _MIN_REST_FRAME_NM).astype(float)
    weight[:, 4:] = 1.0  # z and y always count
    chi2 = np.stack([
        np.sum(weight * (observed - band_offsets(np.full(len(redshift), t), redshift)[:, columns]) ** 2,
               axis=1)
        for t in range(len(SED_TEMPLATES))
    ], axis=1)
    return np.argmin(chi2, axis=1)


# --- COSMOS --------------------------------------------------------------------------------------------

def read_cosmos(path: PathLike | Table, exclusion_level: str = "bad_fits", sersic_prec: float = 0.05,
                use_mag_auto: bool = False) -> GalaxyCatalog:
    """Read GalSim's COSMOS parametric-fit catalogue (``*_fits.fits``) as GalSim would build it.

    Parameters
    ----------
    path : `str`, `os.PathLike` or `astropy.table.Table`
        The parametric-fit file (or table already read).
    exclusion_level : `str`
        ``"bad_fits"`` (GalSim's cut on ``fit_status``) or ``"none"``; see the module docstring.
    sersic_prec : `float`
        Precision to which single-Sersic indices are rounded (GalSim's ``makeGalaxy`` default 0.05;
        0 keeps them exact).
    use_mag_auto : `bool`
        Take the i magnitude from ``mag_auto`` rather than from the model flux.

    Returns
    -------
    catalog : `GalaxyCatalog`
        The galaxies that pass the selection, in file order; ``ident`` is ``IDENT``.
    """
    if exclusion_level not in ("bad_fits", "none"):
        raise ValueError(f"exclusion_level must be 'bad_fits' or 'none', not {exclusion_level!r}.")
    table = _as_table(path)
    _require(table, _COSMOS_COLUMNS, "COSMOS parametric-fit")
    sersicfit = np.asarray(table["sersicfit"], dtype=float)
    bulgefit = np.asarray(table["bulgefit"], dtype=float)
    use_bulgefit = np.asarray(table["use_bulgefit"]).astype(bool)
    if "hlr" in table.colnames and "flux" in table.colnames:
        hlr = np.asarray(table["hlr"], dtype=float)
        flux = np.asarray(table["flux"], dtype=float)
    else:
        hlr, flux = cosmos_sizes_and_fluxes(sersicfit, bulgefit)

    with np.errstate(invalid="ignore", divide="ignore"):
        bt = flux[:, 1] / (flux[:, 1] + flux[:, 2])
    keep = use_bulgefit | np.asarray(table["viable_sersic"]).astype(bool)
    keep &= ~use_bulgefit | ((bt >= 0) & (bt <= 1))
    if exclusion_level == "bad_fits":
        status = np.asarray(table["fit_status"])
        keep &= ((status[:, 4] > 0) & (status[:, 4] < 5)) | ((status[:, 0] > 0) & (status[:, 0] < 5))
    if not np.all(keep):
        _LOG.info("read_cosmos: dropped %d of %d galaxies (exclusion_level=%s).", np.sum(~keep), len(keep),
                  exclusion_level)
    sersicfit, bulgefit, use_bulgefit = sersicfit[keep], bulgefit[keep], use_bulgefit[keep]
    hlr, flux, bt = hlr[keep], flux[keep], np.where(use_bulgefit, bt[keep], 0.0)
    n = len(sersicfit)

    sersic_n = np.clip(sersicfit[:, 2], *_SERSIC_N_RANGE)
    if sersic_prec > 0:
        sersic_n = np.floor(sersic_n / sersic_prec + 0.5) * sersic_prec
    disk_hlr = np.where(use_bulgefit, hlr[:, 2], hlr[:, 0])
    disk_q = np.where(use_bulgefit, bulgefit[:, 3], sersicfit[:, 3])
    disk_beta = np.mod(np.where(use_bulgefit, bulgefit[:, 7], sersicfit[:, 7]), np.pi)
    disk_n = np.where(use_bulgefit, 1.0, sersic_n)
    bulge_hlr = np.where(use_bulgefit, hlr[:, 1], _ABSENT_HLR)
    bulge_q = np.where(use_bulgefit, bulgefit[:, 11], _ABSENT_Q)
    bulge_beta = np.where(use_bulgefit, np.mod(bulgefit[:, 15], np.pi), disk_beta)
    total_flux = np.where(use_bulgefit, flux[:, 1] + flux[:, 2], flux[:, 0])

    if use_mag_auto:
        i_mag = np.asarray(table["mag_auto"], dtype=float)[keep]
    else:
        i_mag = COSMOS_ZEROPOINT - 2.5 * np.log10(total_flux)
    redshift = np.asarray(table["zphot"], dtype=float)[keep]

    # SED templates as in GalSim's chromatic parametric galaxies.
    disk_template = np.where(sersic_n < 1.5, _DISK_TEMPLATE,
                             np.where(sersic_n < 3.0, _INTERMEDIATE_TEMPLATE, _BULGE_TEMPLATE))
    disk_template = np.where(use_bulgefit, _DISK_TEMPLATE, disk_template)
    bulge_template = np.full(n, _BULGE_TEMPLATE)
    disk_flux = (1 - bt)[:, None] * 10 ** (-0.4 * band_offsets(disk_template, redshift))
    bulge_flux = bt[:, None] * 10 ** (-0.4 * band_offsets(bulge_template, redshift))
    band_flux = disk_flux + bulge_flux

    return GalaxyCatalog(
        ident=np.asarray(table["IDENT"], dtype=np.int64)[keep], redshift=redshift,
        mag=i_mag[:, None] - 2.5 * np.log10(band_flux), bulge_fraction=bulge_flux / band_flux,
        disk_hlr=disk_hlr, disk_q=disk_q, disk_beta=disk_beta, disk_n=disk_n,
        bulge_hlr=bulge_hlr, bulge_q=bulge_q, bulge_beta=bulge_beta, bulge_n=np.full(n, 4.0),
    )


def cosmos_sizes_and_fluxes(sersicfit: np.ndarray, bulgefit: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Circularised half-light radii and total fluxes of the COSMOS Sersic, bulge and disk fits.

    Parameters
    ----------
    sersicfit : `numpy.ndarray`, shape (n, 8)
    bulgefit : `numpy.ndarray`, shape (n, 16)

    Returns
    -------
    hlr : `numpy.ndarray`, shape (n, 3)
        Sersic, bulge and disk ``0.03 r_pix sqrt(q)``, arcsec (the catalogue's ``hlr`` column).
    flux : `numpy.ndarray`, shape (n, 4)
        Sersic, bulge, disk and bulge + disk ``I_e q r_pix^2 / S_n``, counts per second (the catalogue's
        ``flux`` column); zero where a fit has no valid parameters.
    """
    fits = [(sersicfit[:, 0], sersicfit[:, 1], sersicfit[:, 2], sersicfit[:, 3]),
            (bulgefit[:, 8], bulgefit[:, 9], np.full(len(bulgefit), 4.0), bulgefit[:, 11]),
            (bulgefit[:, 0], bulgefit[:, 1], np.full(len(bulgefit), 1.0), bulgefit[:, 3])]
    hlr = np.zeros((len(sersicfit), 3))
    flux = np.zeros((len(sersicfit), 4))
    for k, (i_e, r_pix, n, q) in enumerate(fits):
        valid = (r_pix > 0) & (q > 0)
        r_pix, q = np.where(valid, r_pix, 0.0), np.where(valid, q, 1.0)
        sb = np.array([_sersic_sb_at_hlr(v) for v in np.clip(n, 0.3, 6.2)])
        hlr[:, k] = COSMOS_PIXEL_SCALE * r_pix * np.sqrt(q)
        flux[:, k] = np.where(valid, i_e * q * r_pix**2 / sb, 0.0)
    flux[:, 3] = flux[:, 1] + flux[:, 2]
    return hlr, flux


@functools.lru_cache(maxsize=4096)
def _sersic_sb_at_hlr(n: float) -> float:
    """Surface brightness at the half-light radius of a unit-flux, unit-radius Sersic profile."""
    return galsim.Sersic(float(n), half_light_radius=1.0).xValue(1.0, 0.0)


# --- Dispatch and splits -------------------------------------------------------------------------------

def read_catalog(path: PathLike, **kwargs) -> GalaxyCatalog:
    """Read a CatSim or a COSMOS parametric-fit catalogue, recognised by its columns.

    Parameters
    ----------
    path : `str` or `os.PathLike`
        FITS file.
    **kwargs
        Passed to `read_cosmos` for a COSMOS catalogue.

    Returns
    -------
    catalog : `GalaxyCatalog`

    Raises
    ------
    ValueError
        If the columns are neither CatSim's nor the COSMOS parametric fits'.
    """
    table = _as_table(path)
    columns = set(table.colnames)
    if columns.issuperset(_CATSIM_COLUMNS):
        return read_catsim(table)
    if columns.issuperset(_COSMOS_COLUMNS):
        return read_cosmos(table, **kwargs)
    hint = ""
    if {"IDENT", "GAL_FILENAME"} <= columns:
        hint = " It looks like a COSMOS real-galaxy index; pass its *_fits file (the parametric fits)."
    raise ValueError(f"{os.fspath(path)} is neither a CatSim catalogue (needs {', '.join(_CATSIM_COLUMNS)})"
                     f" nor a COSMOS parametric-fit catalogue (needs {', '.join(_COSMOS_COLUMNS)})."
                     + hint)


def split_bucket(ident: np.ndarray) -> np.ndarray:
    """Bucket 0-999 of every ident: a splitmix64 hash of the ident, modulo 1000."""
    x = np.asarray(ident).astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(1000)).astype(np.int64)


def select_split(catalog: GalaxyCatalog, split: str, test_fraction: float = 0.2,
                 validation_fraction: float = 0.1) -> GalaxyCatalog:
    """The galaxies of an external catalogue that belong to ``split``.

    Parameters
    ----------
    catalog : `GalaxyCatalog`
    split : `str`
        One of `SPLITS`.  ``"patch"`` returns the test galaxies.
    test_fraction, validation_fraction : `float`
        Shares of the hash buckets given to the test and validation sets (multiples of 0.001); the
        training set has the rest.

    Returns
    -------
    selected : `GalaxyCatalog`
        The rows of ``catalog`` whose ident hashes into ``split``'s buckets, in their original order.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {tuple(SPLITS)}.")
    if not (0 <= test_fraction and 0 <= validation_fraction and test_fraction + validation_fraction <= 1):
        raise ValueError("Need 0 <= test_fraction, validation_fraction and a sum <= 1, got "
                         f"{test_fraction}, {validation_fraction}.")
    bucket = split_bucket(catalog.ident)
    test_end = int(round(1000 * test_fraction))
    validation_end = test_end + int(round(1000 * validation_fraction))
    if split in ("test", "patch"):
        mask = bucket < test_end
    elif split == "validation":
        mask = (bucket >= test_end) & (bucket < validation_end)
    else:
        mask = bucket >= validation_end
    return catalog[np.flatnonzero(mask)]


# --- Helpers -------------------------------------------------------------------------------------------

def _as_table(path: PathLike | Table) -> Table:
    return path if isinstance(path, Table) else Table.read(os.fspath(path))


def _require(table: Table, columns: tuple[str, ...], kind: str) -> None:
    missing = [c for c in columns if c not in table.colnames]
    if missing:
        raise ValueError(f"Not a {kind} catalogue: missing columns {', '.join(missing)}.")

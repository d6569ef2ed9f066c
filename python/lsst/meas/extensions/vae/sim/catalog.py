"""Galaxy parameters: the catalogue container and the built-in generator (no download needed).

A galaxy is a disk and a bulge, two Sersic profiles with a common centre, each with its own half-light
radius, axis ratio and position angle.  Magnitudes are AB, per band of `ALL_BANDS`, together with the
bulge's share of the flux in each band.  A single-Sersic galaxy (e.g. a COSMOS Sersic fit) is a "disk"
with free Sersic index and a zero bulge fraction.

The generator draws, for every galaxy (references in the functions below):

- an i-band magnitude from the LSST Science Book galaxy counts, kept if r < ``mag_max`` (27.5);
- a redshift from the LSST Science Book magnitude-dependent p(z);
- a disk scale length from the CFHTLenS size-magnitude prior of Miller et al. (2013);
- ellipticity moduli from the Miller et al. (2013) disk and bulge priors, a uniform position angle;
- a bulge-to-total ratio: 10 % bulge-dominated galaxies (Miller et al. 2013), the disk-dominated rest
  split as in the LSST CatSim extragalactic catalogue (70 % of all galaxies pure disks);
- SED templates (E for bulges, Sbc / Scd / Im for disks) whose redshifted colours give the per-band
  magnitudes and bulge fractions (`sed.py`).

Training and test galaxies never overlap: each split draws from its own random stream and gets idents in
its own range (`split_ident_offset`).
"""

from __future__ import annotations

__all__ = ["GalaxyCatalog", "generate_catalog", "SPLITS", "split_ident_offset", "cumulative_counts",
           "galaxy_fraction_in_range", "draw_wide"]

import dataclasses
import functools

import numpy as np
from astropy.table import Table

from ..surveys import ALL_BANDS
from .sed import SED_TEMPLATES, band_offsets

SPLITS = {"train": 1, "validation": 2, "test": 3, "patch": 4}
_IDENT_BLOCK = 10**12


def split_ident_offset(split: str) -> int:
    """First ident of galaxies generated for ``split``."""
    try:
        return SPLITS[split] * _IDENT_BLOCK
    except KeyError:
        raise ValueError(f"Unknown split {split!r}; use one of {tuple(SPLITS)}.") from None


_FIELDS = ("ident", "redshift", "mag", "bulge_fraction", "disk_hlr", "disk_q", "disk_beta", "disk_n",
           "bulge_hlr", "bulge_q", "bulge_beta", "bulge_n", "knot_fraction", "knot_count", "knot_seed")
_BAND_FIELDS = ("mag", "bulge_fraction", "knot_fraction")


@dataclasses.dataclass
class GalaxyCatalog:
    """Parameters of ``n`` galaxies, one array per field (struct of arrays).

    Attributes
    ----------
    ident : `numpy.ndarray` of `int64`
        Unique galaxy identifier.
    redshift : `numpy.ndarray`
    mag : `numpy.ndarray`, shape (n, len(ALL_BANDS))
        Total AB magnitude per band.
    bulge_fraction : `numpy.ndarray`, shape (n, len(ALL_BANDS))
        Bulge flux / total flux per band.
    disk_hlr, bulge_hlr : `numpy.ndarray`
        Half-light radii, arcsec (circularised: sqrt(a b)).
    disk_q, bulge_q : `numpy.ndarray`
        Axis ratios b / a.
    disk_beta, bulge_beta : `numpy.ndarray`
        Position angles, radians, counter-clockwise from the x axis.
    disk_n, bulge_n : `numpy.ndarray`
        Sersic indices (1 and 4 for the generator).
    knot_fraction : `numpy.ndarray`, shape (n, len(ALL_BANDS)), optional
        Share of the flux per band in star-forming knots (GalSim ``RandomKnots`` with the disk's
        half-light radius and shape); the disk holds ``1 - bulge_fraction - knot_fraction``.  Zero by
        default.
    knot_count : `numpy.ndarray` of `int`, optional
        Number of knots (0: none).
    knot_seed : `numpy.ndarray` of `int`, optional
        Seed of the knots' positions, so that a galaxy renders the same every time.
    """

    ident: np.ndarray
    redshift: np.ndarray
    mag: np.ndarray
    bulge_fraction: np.ndarray
    disk_hlr: np.ndarray
    disk_q: np.ndarray
    disk_beta: np.ndarray
    disk_n: np.ndarray
    bulge_hlr: np.ndarray
    bulge_q: np.ndarray
    bulge_beta: np.ndarray
    bulge_n: np.ndarray
    knot_fraction: np.ndarray | None = None
    knot_count: np.ndarray | None = None
    knot_seed: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ident)
        if self.knot_fraction is None:
            self.knot_fraction = np.zeros((n, len(ALL_BANDS)))
        if self.knot_count is None:
            self.knot_count = np.zeros(n, dtype=np.int64)
        if self.knot_seed is None:
            self.knot_seed = np.zeros(n, dtype=np.int64)
        for name in _FIELDS:
            value = np.asarray(getattr(self, name))
            expected = (n, len(ALL_BANDS)) if name in _BAND_FIELDS else (n,)
            if value.shape != expected:
                raise ValueError(f"GalaxyCatalog.{name} has shape {value.shape}, expected {expected}.")
            setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.ident)

    def __getitem__(self, index: np.ndarray | slice | int) -> GalaxyCatalog:
        if isinstance(index, (int, np.integer)):
            index = [index]
        return GalaxyCatalog(**{name: getattr(self, name)[index] for name in _FIELDS})

    @classmethod
    def concatenate(cls, catalogs: list[GalaxyCatalog]) -> GalaxyCatalog:
        return cls(**{name: np.concatenate([getattr(c, name) for c in catalogs]) for name in _FIELDS})

    def band_mag(self, band: str) -> np.ndarray:
        """Total AB magnitude in ``band``."""
        return self.mag[:, ALL_BANDS.index(band)]

    @property
    def hlr(self) -> np.ndarray:
        """Approximate half-light radius of the whole galaxy in r (flux-weighted mean), arcsec."""
        fb = self.bulge_fraction[:, ALL_BANDS.index("r")]
        return (1 - fb) * self.disk_hlr + fb * self.bulge_hlr

    def to_table(self) -> Table:
        """An astropy table with one column per field and per band (``mag_r``, ``bulge_fraction_r``)."""
        table = Table()
        for name in _FIELDS:
            value = getattr(self, name)
            if value.ndim == 2:
                for b, band in enumerate(ALL_BANDS):
                    table[f"{name}_{band}"] = value[:, b]
            else:
                table[name] = value
        return table


# --- Published distributions -------------------------------------------------------------------------

# LSST Science Book (2009, arXiv:0912.0201), eq. 3.7: N(< i) = 46 * 10**(0.31 (i - 25)) per arcmin^2.
COUNTS_SLOPE = 0.31
COUNTS_NORM_PER_ARCMIN2 = 46.0
COUNTS_PIVOT_MAG = 25.0


def cumulative_counts(i_mag: float) -> float:
    """Galaxies per arcmin^2 brighter than ``i_mag`` (LSST Science Book eq. 3.7)."""
    return COUNTS_NORM_PER_ARCMIN2 * 10 ** (COUNTS_SLOPE * (i_mag - COUNTS_PIVOT_MAG))


@functools.cache
def galaxy_fraction_in_range(mag_min: float, mag_max: float) -> float:
    """Fraction of generated galaxies with i in [mag_min - 1, mag_max + 1.5] whose r is in the range.

    Multiplied by the counts over that i range, it gives the density of galaxies with r in range
    (a fixed-seed Monte Carlo estimate, precise to about 0.3 %).
    """
    sample = _draw(np.random.default_rng(12345), 100_000, mag_min - 1.0, mag_max + 1.5)
    r = sample.band_mag("r")
    return float(np.mean((r >= mag_min) & (r <= mag_max)))


def _sample_counts_magnitudes(rng: np.random.Generator, n: int, mag_min: float, mag_max: float
                              ) -> np.ndarray:
    """Magnitudes with dN/dm proportional to 10**(0.31 m) between the limits (inverse CDF)."""
    a = 10 ** (COUNTS_SLOPE * mag_min)
    b = 10 ** (COUNTS_SLOPE * mag_max)
    return np.log10(a + rng.random(n) * (b - a)) / COUNTS_SLOPE


def _sample_redshift(rng: np.random.Generator, i_mag: np.ndarray) -> np.ndarray:
    """LSST Science Book eq. 3.8: p(z) = z^2 / (2 z0^3) exp(-z / z0), z0 = 0.0417 i - 0.744."""
    z0 = np.clip(0.0417 * i_mag - 0.744, 0.02, None)
    return np.clip(rng.gamma(3.0, z0), 0.01, 6.0)


def _sample_disk_hlr(rng: np.random.Generator, i_mag: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Circularised disk half-light radius from the CFHTLenS size prior of Miller et al. (2013).

    Miller et al. (2013, MNRAS 429, 2858), eqs. 19-20: p(r) ~ r exp(-(r / a)^(4/3)) with median major-axis
    scale length ln r_d = -1.145 - 0.269 (i - 23) (arcsec).  With u = (r / a)^(4/3), u follows a
    Gamma(3/2) law whose median, 1.1830, puts the median of r at 1.1340 a: we set ``a`` so that the
    median is the published one.  The exponential half-light radius is 1.678 scale lengths; the
    circularised radius of an ellipse of axis ratio q is sqrt(q) times its major-axis radius.
    """
    r_median = np.exp(-1.145 - 0.269 * (i_mag - 23.0))
    a = r_median / 1.1340
    scale_length = a * rng.gamma(1.5, 1.0, size=len(i_mag)) ** 0.75
    return np.clip(1.678 * scale_length * np.sqrt(q), 0.05, 5.0)


def _inverse_cdf_sampler(pdf: np.ndarray, grid: np.ndarray):
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    return lambda rng, n: np.interp(rng.random(n), cdf, grid)


_E_GRID = np.linspace(0.0, 0.8039, 2001)
# Miller et al. (2013), eq. 14: disk ellipticity modulus prior, e_max 0.804, a 0.2539, e0 0.0256.
_DISK_E = _inverse_cdf_sampler(
    _E_GRID * (1 - np.exp((_E_GRID - 0.804) / 0.2539)) / ((1 + _E_GRID) * np.sqrt(_E_GRID**2 + 0.0256**2)),
    _E_GRID)
# Miller et al. (2013), eq. 15: bulge ellipticity modulus prior, b 2.368, c 6.691.
_BULGE_E = _inverse_cdf_sampler(_E_GRID * np.exp(-2.368 * _E_GRID - 6.691 * _E_GRID**2), _E_GRID)

BULGE_DOMINATED_FRACTION = 0.10  # Miller et al. (2013), section 5.2
PURE_DISK_FRACTION = 0.70  # LSST CatSim extragalactic catalogue (../shared/data catsim sample: 70 %)


def _axis_ratio(e: np.ndarray) -> np.ndarray:
    """Axis ratio b / a of an ellipticity modulus |e| = (a - b) / (a + b)."""
    return (1 - e) / (1 + e)


def generate_catalog(n: int, seed: int, split: str = "train", mag_max: float = 27.5,
                     mag_min: float = 18.0) -> GalaxyCatalog:
    """Draw ``n`` galaxies with r-band magnitudes in [``mag_min``, ``mag_max``].

    Parameters
    ----------
    n : `int`
        Number of galaxies.
    seed : `int`
        Random seed; the same (seed, split, n) gives the same galaxies.
    split : `str`
        One of `SPLITS`: galaxies of different splits are drawn from different random streams and have
        idents in disjoint ranges.
    mag_max, mag_min : `float`
        r-band magnitude limits.

    Returns
    -------
    catalog : `GalaxyCatalog`
    """
    rng = np.random.default_rng([seed, split_ident_offset(split) // _IDENT_BLOCK])
    parts = []
    n_have = 0
    while n_have < n:
        m = max(2 * (n - n_have), 64)
        part = _draw(rng, m, mag_min - 1.0, mag_max + 1.5)
        r = part.band_mag("r")
        part = part[(r <= mag_max) & (r >= mag_min)]
        parts.append(part)
        n_have += len(part)
    catalog = GalaxyCatalog.concatenate(parts)[:n]
    catalog.ident = split_ident_offset(split) + seed % 10**5 * 10**6 + np.arange(n, dtype=np.int64)
    return catalog


def _draw(rng: np.random.Generator, n: int, i_min: float, i_max: float) -> GalaxyCatalog:
    i_mag = _sample_counts_magnitudes(rng, n, i_min, i_max)
    redshift = _sample_redshift(rng, i_mag)

    kind = rng.random(n)
    bulge_dominated = kind < BULGE_DOMINATED_FRACTION
    pure_disk = kind > 1 - PURE_DISK_FRACTION
    bt_i = np.where(bulge_dominated, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.5, n))
    bt_i[pure_disk] = 0.0
    beta = rng.uniform(0, np.pi, n)
    disk_q = _axis_ratio(_DISK_E(rng, n))
    bulge_q = _axis_ratio(_BULGE_E(rng, n))
    disk_hlr = _sample_disk_hlr(rng, i_mag, disk_q)
    bulge_hlr = np.clip(disk_hlr * np.exp(rng.normal(np.log(0.45), 0.5, n)), 0.03, 5.0)

    disk_template = np.where(bulge_dominated, 1, rng.integers(1, len(SED_TEMPLATES), n))
    bulge_template = np.zeros(n, dtype=int)
    disk_flux = (1 - bt_i)[:, None] * 10 ** (-0.4 * band_offsets(disk_template, redshift))
    bulge_flux = bt_i[:, None] * 10 ** (-0.4 * band_offsets(bulge_template, redshift))
    total = disk_flux + bulge_flux
    mag = i_mag[:, None] - 2.5 * np.log10(total)
    return GalaxyCatalog(
        ident=np.zeros(n, dtype=np.int64), redshift=redshift, mag=mag, bulge_fraction=bulge_flux / total,
        disk_hlr=disk_hlr, disk_q=disk_q, disk_beta=beta, disk_n=np.ones(n),
        bulge_hlr=bulge_hlr, bulge_q=bulge_q, bulge_beta=beta.copy(), bulge_n=np.full(n, 4.0),
    )



# --- The wide training population (issue 10) ------------------------------------------------------------
#
# Half of the galaxies follow the sky (the counts, the Miller et al. sizes and ellipticities, the
# magnitude-dependent p(z)), half follow flattened priors, so that what is rare on the sky but matters most
# as a neighbour (bright, large, elongated galaxies) is seen often in training.  Profiles mix the
# generator's bulge + disk, single Sersic profiles of any index and clumpy disks with star-forming knots;
# colours mix two templates of any kind.  docs/model.md says what each choice is for.
WIDE_FLAT_FRACTION = 0.5
WIDE_HLR_RANGE = (0.05, 3.0)  # arcsec, the flattened half: log-uniform
WIDE_E_MAX = 0.8
WIDE_SERSIC_RANGE = (0.5, 6.0)
WIDE_REDSHIFT_RANGE = (0.02, 3.0)  # the flattened half: uniform
# Profile kinds: bulge + disk, single Sersic, disk + knots (+ small bulge).
WIDE_KIND_PROBABILITIES = (0.35, 0.40, 0.25)
WIDE_KNOT_FRACTION_RANGE = (0.1, 0.6)  # of the disk's light
WIDE_KNOT_COUNT_RANGE = (10, 40)
_KNOT_TEMPLATE = SED_TEMPLATES.index("Im")


def _mixed_template_flux(rng: np.random.Generator, redshift: np.ndarray, first: np.ndarray,
                         second: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-band flux (i band = 1) of a mix ``weight * first + (1 - weight) * second`` of two templates."""
    return (weight[:, None] * 10 ** (-0.4 * band_offsets(first, redshift))
            + (1 - weight[:, None]) * 10 ** (-0.4 * band_offsets(second, redshift)))


def draw_wide(rng: np.random.Generator, n: int, mag_min: float = 16.0, mag_max: float = 27.5
              ) -> GalaxyCatalog:
    """Draw ``n`` galaxies of the wide training population, r-band magnitudes in [mag_min, mag_max].

    Parameters
    ----------
    rng : `numpy.random.Generator`
        Random stream.
    n : `int`
        Number of galaxies.
    mag_min, mag_max : `float`
        r-band magnitude range.

    Returns
    -------
    catalog : `GalaxyCatalog`
        Idents are zero; the caller numbers them.
    """
    flat = rng.random(n) < WIDE_FLAT_FRACTION
    r_mag = np.where(flat, rng.uniform(mag_min, mag_max, n),
                     _sample_counts_magnitudes(rng, n, mag_min, mag_max))
    redshift = np.where(flat, rng.uniform(*WIDE_REDSHIFT_RANGE, n), _sample_redshift(rng, r_mag))

    e_disk = np.where(flat, rng.uniform(0.0, WIDE_E_MAX, n), _DISK_E(rng, n))
    disk_q = _axis_ratio(e_disk)
    bulge_q = _axis_ratio(np.where(flat, rng.uniform(0.0, 0.5, n), _BULGE_E(rng, n)))
    hlr = np.where(flat, np.exp(rng.uniform(*np.log(WIDE_HLR_RANGE), n)),
                   _sample_disk_hlr(rng, r_mag, disk_q))
    hlr = np.clip(hlr, *WIDE_HLR_RANGE)
    bulge_hlr = np.clip(hlr * np.exp(rng.normal(np.log(0.45), 0.5, n)), 0.03, WIDE_HLR_RANGE[1])
    disk_beta = rng.uniform(0, np.pi, n)
    # Bulges mostly share the disk's position angle, with some twist.
    bulge_beta = disk_beta + rng.normal(0.0, 0.2, n)

    kind = rng.choice(3, size=n, p=WIDE_KIND_PROBABILITIES)
    disk_n = np.ones(n)
    sersic = kind == 1
    # Steps of 0.05 in index: GalSim caches its Sersic tables per index, and finer steps change nothing.
    disk_n[sersic] = np.round(np.exp(rng.uniform(*np.log(WIDE_SERSIC_RANGE), int(sersic.sum()))) * 20) / 20
    bt_i = np.where(kind == 0, rng.uniform(0.0, 1.0, n), np.where(kind == 2, rng.uniform(0.0, 0.3, n), 0.0))
    knots = kind == 2
    knot_i = np.where(knots, (1 - bt_i) * rng.uniform(*WIDE_KNOT_FRACTION_RANGE, n), 0.0)
    knot_count = np.where(knots, rng.integers(*WIDE_KNOT_COUNT_RANGE, n, endpoint=True), 0)

    n_templates = len(SED_TEMPLATES)
    disk_sed = _mixed_template_flux(rng, redshift, rng.integers(0, n_templates, n),
                                    rng.integers(0, n_templates, n), rng.random(n))
    bulge_sed = _mixed_template_flux(rng, redshift, np.zeros(n, dtype=int), np.ones(n, dtype=int),
                                     rng.uniform(0.6, 1.0, n))
    knot_sed = 10 ** (-0.4 * band_offsets(np.full(n, _KNOT_TEMPLATE), redshift))
    disk_flux = (1 - bt_i - knot_i)[:, None] * disk_sed
    bulge_flux = bt_i[:, None] * bulge_sed
    knot_flux = knot_i[:, None] * knot_sed
    total = disk_flux + bulge_flux + knot_flux
    mag = -2.5 * np.log10(total)
    mag += (r_mag - mag[:, ALL_BANDS.index("r")])[:, None]
    return GalaxyCatalog(
        ident=np.zeros(n, dtype=np.int64), redshift=redshift, mag=mag, bulge_fraction=bulge_flux / total,
        disk_hlr=hlr, disk_q=disk_q, disk_beta=disk_beta, disk_n=disk_n,
        bulge_hlr=bulge_hlr, bulge_q=bulge_q, bulge_beta=bulge_beta, bulge_n=np.full(n, 4.0),
        knot_fraction=knot_flux / total, knot_count=knot_count.astype(np.int64),
        knot_seed=rng.integers(1, 2**31 - 1, n).astype(np.int64),
    )

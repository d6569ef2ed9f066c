"""Galaxy colours from the SED templates and bandpasses that GalSim ships.

Colours are AB magnitude differences ``m_band - m_i`` of a redshifted template, integrated with numpy on
the tabulated SED and throughput curves (fast enough to compute at start-up for a grid of redshifts).

GalSim ships LSST bandpasses but none for Euclid.  Documented stand-ins:

- Euclid VIS: a top-hat from 550 to 900 nm (the VIS passband's nominal edges);
- Euclid Y, J, H: HST WFC3-IR F105W, F125W and F160W, whose passbands are close to NISP's.
"""

from __future__ import annotations

__all__ = ["SED_TEMPLATES", "colour_table", "band_offsets"]

import functools
import os

import galsim
import numpy as np

from ..surveys import ALL_BANDS

SED_TEMPLATES = ("E", "Sbc", "Scd", "Im")
REFERENCE_BAND = "i"

_REDSHIFT_GRID = np.linspace(0.0, 6.0, 601)

_BANDPASS_FILES = {
    "u": "LSST_u.dat", "g": "LSST_g.dat", "r": "LSST_r.dat", "i": "LSST_i.dat", "z": "LSST_z.dat",
    "y": "LSST_y.dat", "Y": "WFC3_ir_F105W.dat", "J": "WFC3_ir_F125W.dat", "H": "WFC3_ir_F160W.dat",
}
_VIS_TOP_HAT_NM = (550.0, 900.0)


def _share(*parts: str) -> str:
    return os.path.join(galsim.meta_data.share_dir, *parts)


def _throughput(band: str) -> tuple[np.ndarray, np.ndarray]:
    """Wavelength (nm) and throughput of a band."""
    if band == "VIS":
        lam = np.linspace(_VIS_TOP_HAT_NM[0] - 1, _VIS_TOP_HAT_NM[1] + 1, 702)
        return lam, ((lam >= _VIS_TOP_HAT_NM[0]) & (lam <= _VIS_TOP_HAT_NM[1])).astype(float)
    data = np.loadtxt(_share("bandpasses", _BANDPASS_FILES[band]))
    lam, thr = data[:, 0], data[:, 1]
    keep = thr > 1e-4 * thr.max()
    return lam[keep], thr[keep]


def _sed(template: str) -> tuple[np.ndarray, np.ndarray]:
    """Rest-frame wavelength (nm) and f_lambda of a CWW template (GalSim's ``*_ext.sed`` files)."""
    data = np.loadtxt(_share("SEDs", f"CWW_{template}_ext.sed"))
    return data[:, 0] / 10.0, data[:, 1]  # Angstrom -> nm


@functools.cache
def colour_table() -> np.ndarray:
    """AB magnitudes relative to the i band, for every template, redshift and band.

    Returns
    -------
    table : `numpy.ndarray`, shape (len(SED_TEMPLATES), len(redshift grid), len(ALL_BANDS))
        ``m_band - m_i`` on `_REDSHIFT_GRID`.
    """
    table = np.zeros((len(SED_TEMPLATES), len(_REDSHIFT_GRID), len(ALL_BANDS)))
    for t, template in enumerate(SED_TEMPLATES):
        rest_lam, flam = _sed(template)
        mags = np.zeros((len(_REDSHIFT_GRID), len(ALL_BANDS)))
        for b, band in enumerate(ALL_BANDS):
            lam, thr = _throughput(band)
            # Observed f_lambda at lam for every redshift (the (1+z) factor cancels in colours).
            flux_obs = np.interp(lam[None, :] / (1.0 + _REDSHIFT_GRID[:, None]), rest_lam, flam,
                                 left=0.0, right=0.0)
            # AB: f_nu averaged over the band, weighted by photon counts.
            numerator = np.trapezoid(flux_obs * thr * lam, lam, axis=1)
            denominator = np.trapezoid(thr / lam, lam)
            with np.errstate(divide="ignore"):
                mags[:, b] = -2.5 * np.log10(np.maximum(numerator / denominator, 1e-300))
        table[t] = mags - mags[:, [ALL_BANDS.index(REFERENCE_BAND)]]
    # Far-UV of the templates is unconstrained at high redshift: cap drop-outs at 10 mag fainter.
    return np.minimum(table, 10.0)


def band_offsets(template_index: np.ndarray, redshift: np.ndarray) -> np.ndarray:
    """``m_band - m_i`` for galaxies with the given template indices and redshifts.

    Parameters
    ----------
    template_index : `numpy.ndarray` of `int`
        Index into `SED_TEMPLATES` for every galaxy.
    redshift : `numpy.ndarray`
        Redshift of every galaxy (clipped to the grid, 0-6).

    Returns
    -------
    offsets : `numpy.ndarray`, shape (n, len(ALL_BANDS))
    """
    table = colour_table()
    z = np.clip(np.asarray(redshift, dtype=float), _REDSHIFT_GRID[0], _REDSHIFT_GRID[-1])
    pos = np.interp(z, _REDSHIFT_GRID, np.arange(len(_REDSHIFT_GRID)))
    lo = np.minimum(pos.astype(int), len(_REDSHIFT_GRID) - 2)
    w = (pos - lo)[:, None]
    idx = np.asarray(template_index, dtype=int)
    return (1 - w) * table[idx, lo] + w * table[idx, lo + 1]

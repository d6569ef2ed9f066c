"""The shift suite (``vae-deblend evaluate --suite shift``): the bench on sets the network never saw.

Every set is a `run_bench` run on blends laid out as the anchor set (2-4 galaxies, neighbours 0.5-3" from
the stamp centre, true peaks, r 20-25.5, 59x59 stamps) but shifted in one respect from what the shipped
weights were trained on; none of these blends, nor their galaxies, is used in training or in any choice:

- ``catsim``, ``cosmos``: galaxies of the LSST CatSim sample and of GalSim's COSMOS parametric fits from
  ``../shared/data/catalogs`` (their test split, `sim.catalog_io.select_split`), each given a random
  rotation (`RotatedGalaxies`) and a random position; any size (the anchor's disk-size cut is dropped)
  and r 18-25.5.  Skipped, with the reason, where the catalogues are absent.
- ``priors``: galaxies of the built-in generator with its priors moved (`ShiftedPriorGalaxies`).
- ``psf-0.55``, ``psf-0.80``, ``psf-1.00``: the r-band Kolmogorov PSF FWHM fixed at 0.55", 0.80" and
  1.0", the other bands scaled as (lambda_b / lambda_r) ** -0.2 (the weights were trained at 0.65" in
  every band).
- ``depth-1yr``, ``depth-10yr``: the noise of 1 and 10 years of LSST (trained at 10 years).
- ``crowded``: 5-8 galaxies per blend (trained on 1-4).

Each set scores every galaxy of every blend, with the VAE's isolated bound, the no-deblending floor and
scarlet in the same run (the bench's rows, scoring, matching and bins: `bench.run_bench`).  The latent fit
(``vae-fit``) costs seconds per blend on a CPU: with ``fit_n`` below ``n`` it runs on the first ``fit_n``
blends of each set only, in a second bench run beside the encoder on the same blends, so that the two are
compared on the same galaxies.  The suite writes ``suite.json`` (every set's bench result), ``suite.md``
(one row per set and deblender), ``suite.png`` and ``suite_bins.png``, and each set's bench files in a
folder of its own.
"""

from __future__ import annotations

__all__ = ["SUITE_SETS", "SuiteSet", "SuiteConfig", "SetUnavailable", "RotatedGalaxies",
           "ShiftedPriorGalaxies", "find_catalogs", "set_maker", "run_suite", "suite_table"]

import dataclasses
import datetime
import json
import os
import platform
from pathlib import Path

import numpy as np

from ..sim.blend import BlendConfig, BlendMaker, CatalogGalaxies, GalaxySource, GeneratedGalaxies
from ..sim.catalog import GalaxyCatalog
from ..surveys import ALL_BANDS
from .bench import DEBLENDERS, ISOLATED_ROW, BenchConfig, run_bench

# The catalogue files of ../shared/data/catalogs the catalogue sets read.
CATALOG_FILES = {"catsim": "catsim_sample_100.fits", "cosmos": "cosmos_23.5_example_fits_100.fits"}
# Per-band chromatic scaling of the PSF sets: FWHM proportional to wavelength ** -0.2 (Kolmogorov seeing).
PSF_CHROMATIC = 0.2
SUITE_DEBLENDERS = ("vae", "vae-fit", "scarlet", "none")


@dataclasses.dataclass(frozen=True)
class SuiteSet:
    """One set of the suite.

    Attributes
    ----------
    name : `str`
    title : `str`
        What it is, for the tables.
    blend : `dict`
        `BlendConfig` fields that differ from the anchor preset's.
    galaxies : `str`
        ``generator`` (the built-in one), ``priors`` (`ShiftedPriorGalaxies`), or a key of
        `CATALOG_FILES`.
    """

    name: str
    title: str
    blend: dict
    galaxies: str = "generator"


_CATALOG_LAYOUT = {"disk_hlr_range": None, "mag_min": 18.0}
SUITE_SETS: dict[str, SuiteSet] = {s.name: s for s in (
    SuiteSet("catsim", "CatSim galaxies (test split, rotated)", _CATALOG_LAYOUT, "catsim"),
    SuiteSet("cosmos", "COSMOS parametric fits (test split, rotated)", _CATALOG_LAYOUT, "cosmos"),
    SuiteSet("priors", "generator with shifted priors", {"disk_hlr_range": None}, "priors"),
    *(SuiteSet(f"psf-{fwhm:.2f}", f"PSF {fwhm:.2f}\" in r, chromatic",
               {"psf_fwhm": None, "psf_fwhm_range": (fwhm, fwhm), "psf_chromatic": PSF_CHROMATIC})
      for fwhm in (0.55, 0.80, 1.00)),
    *(SuiteSet(f"depth-{years}yr", f"{years}-year depth", {"years": (float(years), float(years))})
      for years in (1, 10)),
    SuiteSet("crowded", "crowded: 5-8 galaxies", {"min_galaxies": 5, "max_galaxies": 8}),
)}


class SetUnavailable(RuntimeError):
    """A set cannot be made here (e.g. its catalogue is absent); the message says why."""


class RotatedGalaxies:
    """Galaxies of another source, each turned by a random angle (bulge and disk together).

    Parameters
    ----------
    source : `GalaxySource`
    description : `str`
        What the galaxies are, for the result files.
    """

    def __init__(self, source: GalaxySource, description: str) -> None:
        self.source = source
        self.description = description

    def draw(self, rng: np.random.Generator, n: int, mag_min: float, mag_max: float,
             disk_hlr_range: tuple[float, float] | None = None) -> GalaxyCatalog:
        galaxies = self.source.draw(rng, n, mag_min, mag_max, disk_hlr_range)
        turn = rng.uniform(0.0, np.pi, len(galaxies))
        galaxies.disk_beta = np.mod(galaxies.disk_beta + turn, np.pi)
        galaxies.bulge_beta = np.mod(galaxies.bulge_beta + turn, np.pi)
        return galaxies


class ShiftedPriorGalaxies:
    """The built-in generator's galaxies with their priors moved away from the training mixture.

    The weights were trained on the generator of `sim.catalog` (CFHTLenS sizes at a given magnitude,
    exponential disks plus de Vaucouleurs bulges with a common angle, the Miller et al. disk and bulge
    ellipticity priors, colours on the SED templates' locus).  Each galaxy drawn here keeps its r
    magnitude and redshift, and then:

    - its size is multiplied or divided by ``size_factor`` (1.6, a random choice for each galaxy): the
      size-magnitude relation moves by +-0.2 dex, so at a given flux galaxies are far larger (low surface
      brightness, wider overlaps) or far more compact than in training;
    - with probability ``sersic_fraction`` (0.5) it becomes a single Sersic profile of index uniform in
      0.5-6 (rounded to 0.25), where training only saw n = 1 disks and n = 4 bulges: peakier cores and
      wider wings than any training profile;
    - its disk axis ratio comes from an ellipticity modulus uniform in 0-``e_max`` (0.75; axis ratios to
      0.14), flatter than the training prior, whose disks are mostly of modulus 0.1-0.4;
    - its bulge is turned by an independent random angle (training bulges share the disk's angle);
    - every band but r is shifted by a colour offset of ``colour_scatter`` mag RMS (0.3), independent per
      band: colours off the templates' locus, where a network that learnt to tell galaxies apart by
      colour would lose.

    Parameters
    ----------
    size_factor, sersic_fraction, e_max, colour_scatter : `float`
    """

    description = "built-in generator, shifted priors (sizes x or / 1.6, Sersic n 0.5-6, e to 0.75, colours)"

    def __init__(self, size_factor: float = 1.6, sersic_fraction: float = 0.5, e_max: float = 0.75,
                 colour_scatter: float = 0.3) -> None:
        self.size_factor = size_factor
        self.sersic_fraction = sersic_fraction
        self.e_max = e_max
        self.colour_scatter = colour_scatter
        self._generator = GeneratedGalaxies()

    def draw(self, rng: np.random.Generator, n: int, mag_min: float, mag_max: float,
             disk_hlr_range: tuple[float, float] | None = None) -> GalaxyCatalog:
        g = self._generator.draw(rng, n, mag_min, mag_max, disk_hlr_range)
        scale = np.where(rng.random(n) < 0.5, self.size_factor, 1.0 / self.size_factor)
        g.disk_hlr = np.clip(g.disk_hlr * scale, 0.05, 5.0)
        g.bulge_hlr = np.clip(g.bulge_hlr * scale, 0.03, 5.0)
        e = rng.uniform(0.0, self.e_max, n)
        g.disk_q = (1 - e) / (1 + e)
        g.bulge_beta = rng.uniform(0.0, np.pi, n)
        sersic = rng.random(n) < self.sersic_fraction
        index = np.round(rng.uniform(0.5, 6.0, n) * 4) / 4
        g.disk_n = np.where(sersic, index, g.disk_n)
        g.bulge_fraction = np.where(sersic[:, None], 0.0, g.bulge_fraction)
        offsets = rng.normal(0.0, self.colour_scatter, g.mag.shape)
        offsets[:, ALL_BANDS.index("r")] = 0.0
        g.mag = g.mag + offsets
        return g


def find_catalogs(path: str | os.PathLike | None = None) -> Path | None:
    """The folder of the real galaxy catalogues: ``path``, else ``../shared/data/catalogs`` from the
    working directory or from the source checkout this module is in; `None` when absent."""
    if path is not None:
        return Path(path) if Path(path).is_dir() else None
    here = Path(__file__).resolve()
    candidates = [Path.cwd().parent / "shared" / "data" / "catalogs"]
    candidates += [parent.parent / "shared" / "data" / "catalogs" for parent in here.parents
                   if (parent / "pyproject.toml").is_file()]
    return next((c for c in candidates if c.is_dir()), None)


def set_maker(spec: SuiteSet, stamp_size: int, catalogs: Path | None) -> BlendMaker:
    """The `BlendMaker` of one set.

    Raises
    ------
    SetUnavailable
        If the set needs a catalogue that is not in ``catalogs``, or the simulator lacks a field the set
        needs.
    """
    fields = {f.name for f in dataclasses.fields(BlendConfig)}
    missing = set(spec.blend) - fields
    if missing:
        raise SetUnavailable(f"set {spec.name}: this simulator's BlendConfig has no {sorted(missing)}")
    config = BlendConfig.preset("anchor", stamp_size=stamp_size, **spec.blend)
    if spec.galaxies == "generator":
        return BlendMaker(config)
    if spec.galaxies == "priors":
        return BlendMaker(config, ShiftedPriorGalaxies())
    path = None if catalogs is None else catalogs / CATALOG_FILES[spec.galaxies]
    if path is None or not path.is_file():
        raise SetUnavailable(f"set {spec.name}: catalogue {CATALOG_FILES[spec.galaxies]} not found "
                             f"({'no catalogue folder' if catalogs is None else catalogs}; it is in "
                             "../shared/data/catalogs on CI and developer machines)")
    from ..sim.catalog_io import read_catalog, select_split

    test = select_split(read_catalog(path), "test")
    return BlendMaker(config, RotatedGalaxies(CatalogGalaxies(test), f"{path.name}, test split "
                                              f"({len(test)} galaxies), rotated"))


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    """What ``vae-deblend evaluate --suite shift`` runs.

    Attributes
    ----------
    n : `int`
        Blends per set.
    seed : `int`
    deblenders : `tuple` [`str`, ...]
        Any of `bench.DEBLENDERS`; the VAE's isolated bound is always scored.
    sets : `tuple` [`str`, ...]
        Keys of `SUITE_SETS`.
    fit_n : `int`, optional
        Blends of each set the latent fit runs on (the first ones); all ``n`` when not given.
    weights : `str`
    fit_steps : `int`
    refine_steps : `int`
    refiner : `str`, optional
        ``vae-refine``'s refiner file (the weights' own by default).
    threads : `int`
    catalogs : `str`, optional
        Folder of the catalogues (`find_catalogs` when not given).
    """

    n: int = 200
    seed: int = 0
    deblenders: tuple[str, ...] = SUITE_DEBLENDERS
    sets: tuple[str, ...] = tuple(SUITE_SETS)
    fit_n: int | None = None
    weights: str = "lsst"
    fit_steps: int = 60
    refine_steps: int = 2
    refiner: str | None = None
    threads: int = 1
    catalogs: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.sets) - set(SUITE_SETS)
        if unknown:
            raise ValueError(f"Unknown set(s) {sorted(unknown)}; choose from {tuple(SUITE_SETS)}.")
        unknown = set(self.deblenders) - set(DEBLENDERS)
        if unknown:
            raise ValueError(f"Unknown deblender(s) {sorted(unknown)}; choose from {DEBLENDERS}.")
        if self.n < 1 or (self.fit_n is not None and not 1 <= self.fit_n):
            raise ValueError("n and fit_n must be at least 1.")


def _bench_config(config: SuiteConfig, n: int, deblenders: tuple[str, ...], isolated: bool) -> BenchConfig:
    return BenchConfig(n=n, seed=config.seed, deblenders=deblenders, weights=config.weights,
                       fit_steps=config.fit_steps, refine_steps=config.refine_steps, refiner=config.refiner,
                       threads=config.threads, isolated_bound=isolated)


def _run_set(config: SuiteConfig, spec: SuiteSet, maker: BlendMaker, out: Path, progress: bool) -> dict:
    """One set's bench result; with a smaller ``fit_n``, the fit's rows come from a second run on the
    first ``fit_n`` blends, beside the encoder's rows on those blends (``fit_blends``)."""
    fit_n = min(config.fit_n or config.n, config.n)
    split_fit = "vae-fit" in config.deblenders and fit_n < config.n
    main = tuple(d for d in config.deblenders if not (split_fit and d == "vae-fit"))
    result = run_bench(_bench_config(config, config.n, main, isolated=True), out, progress=progress,
                       maker=maker, title=spec.title)
    result["fit_blends"] = config.n if "vae-fit" in config.deblenders else 0
    if split_fit:
        fit = run_bench(_bench_config(config, fit_n, ("vae", "vae-fit"), isolated=False), out / "fit",
                        progress=progress, maker=maker, title=f"{spec.title}, first {fit_n} blends")
        result["fit_blends"] = fit_n
        result["fit_run"] = fit
        for name, entry in fit["deblenders"].items():
            if name.startswith("vae-fit"):
                result["deblenders"][name] = {**entry, "n_blends": fit_n}
    return result


def fit_against_encoder(result: dict) -> dict | None:
    """The fit's and the encoder's mean and median abs(df/f) on the same blends (conserved children and
    models), and whether the fit's mean is not worse; `None` without the fit."""
    same = result.get("fit_run", result)["deblenders"]
    if "vae-fit" not in same or "vae" not in same:
        return None
    out = {"n_blends": result["fit_blends"], "n_galaxies": same["vae-fit"]["all"]["n"]}
    for output, suffix in (("conserved", ""), ("model", ":model")):
        encoder, fit = same["vae" + suffix]["all"], same["vae-fit" + suffix]["all"]
        out[output] = {"encoder_mean": encoder["flux_rel_abs_err_mean"],
                       "fit_mean": fit["flux_rel_abs_err_mean"],
                       "encoder_median": encoder["flux_rel_abs_err_median"],
                       "fit_median": fit["flux_rel_abs_err_median"],
                       "fit_not_worse": bool(fit["flux_rel_abs_err_mean"] <= encoder["flux_rel_abs_err_mean"])}
    return out


_STAT_LABELS = {"flux_rel_abs_err_median": "median abs(df/f)", "flux_rel_abs_err_mean": "mean abs(df/f)",
                "e_abs_err_rms": "abs(dg) RMS"}
# Bins where the VAE is said to lose: at least this many galaxies.
MIN_BIN_GALAXIES = 20


def losing_bins(result: dict, deblender: str = "vae", against: str = "scarlet") -> list[dict]:
    """Bins (r magnitude, SNR, blendedness) where ``deblender``'s conserved children have a larger mean or
    median abs(df/f) than ``against``'s, or a larger abs(dg) RMS."""
    rows = result["deblenders"]
    if deblender not in rows or against not in rows:
        return []
    losses = []
    for key in ("by_mag", "by_snr", "by_blendedness"):
        for ours, theirs in zip(rows[deblender][key], rows[against][key]):
            if ours["n"] < MIN_BIN_GALAXIES:
                continue
            worse = [stat for stat in ("flux_rel_abs_err_median", "flux_rel_abs_err_mean", "e_abs_err_rms")
                     if ours[stat] > theirs[stat]]
            if worse:
                losses.append({"bin": key[3:], "lo": ours["lo"], "hi": ours["hi"], "n": ours["n"],
                               "worse": worse, deblender: {s: ours[s] for s in worse},
                               against: {s: theirs[s] for s in worse}})
    return losses


def run_suite(config: SuiteConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Run every set of ``config``; write ``suite.json``, ``suite.md`` and the plots to ``out_dir``.

    Returns
    -------
    suite : `dict`
        What ``suite.json`` holds: ``config``, ``machine``, ``date`` and ``sets``: per set its ``title``,
        ``skipped`` (the reason, or `None`), the bench ``result`` (`bench.run_bench`'s, every row and bin),
        ``fit_against_encoder`` and ``losing_bins`` (against scarlet).
    """
    from ..deblend.network import load_deblender

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp_size = load_deblender(config.weights).stamp_size
    catalogs = find_catalogs(config.catalogs)
    suite = {"config": {**dataclasses.asdict(config), "deblenders": list(config.deblenders),
                        "sets": list(config.sets)},
             "catalogs": None if catalogs is None else str(catalogs),
             "machine": {"platform": platform.platform(), "processor": platform.processor(),
                         "cpus": os.cpu_count(), "threads": config.threads},
             "date": datetime.date.today().isoformat(), "sets": {}}
    for name in config.sets:
        spec = SUITE_SETS[name]
        entry = {"title": spec.title, "blend": spec.blend, "galaxies": spec.galaxies, "skipped": None}
        try:
            maker = set_maker(spec, stamp_size, catalogs)
        except SetUnavailable as reason:
            print(f"skipping {reason}")
            entry["skipped"] = str(reason)
            suite["sets"][name] = entry
            continue
        result = _run_set(config, spec, maker, out / name, progress)
        entry.update(result=result, fit_against_encoder=fit_against_encoder(result),
                     losing_bins=losing_bins(result))
        suite["sets"][name] = entry
        # Written after every set: a stopped run keeps what it measured.
        (out / "suite.json").write_text(json.dumps(suite, indent=1, default=float) + "\n")
    (out / "suite.json").write_text(json.dumps(suite, indent=1, default=float) + "\n")
    (out / "suite.md").write_text(suite_table(suite))
    from .plots import plot_suite

    plot_suite(suite, out / "suite.png", out / "suite_bins.png")
    return suite


def _fmt(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "nan"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


# The rows of the table, in order: (row of the bench result, label, row of its models).
_TABLE_ROWS = (("vae", "vae (encoder)", "vae:model"), ("vae-fit", "vae-fit (latent fit)", "vae-fit:model"),
               ("vae-refine", "vae-refine (learned refinement)", "vae-refine:model"),
               ("scarlet", "scarlet", "scarlet:model"), ("none", "no deblending", None),
               (ISOLATED_ROW, "VAE on each galaxy alone (bound)", ISOLATED_ROW))


def suite_table(suite: dict) -> str:
    """The markdown tables of a suite: one row per set and deblender (all galaxies, r band, the flux-
    conserved children where there are some), the fit against the encoder, and the bins where the VAE
    loses to scarlet."""
    cfg = suite["config"]
    lines = [f"# Shift suite: {cfg['n']} blends per set (the latent fit on "
             f"{cfg['fit_n'] or cfg['n']}), seed {cfg['seed']}, weights {cfg['weights']}, {suite['date']}",
             "",
             "| set | row | galaxies | abs(df/f) median / mean | abs(df/f) > 1 | abs(dg) median / RMS "
             "| dmag median | dg1 / dg2 median | HSM failures | models' df/f median | ms per blend |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    skipped = []
    for name, entry in suite["sets"].items():
        if entry["skipped"]:
            skipped.append(f"- {name}: skipped ({entry['skipped']}).")
            continue
        rows = entry["result"]["deblenders"]
        for row, label, model_row in _TABLE_ROWS:
            if row not in rows:
                continue
            s = rows[row]["all"]
            models = rows[model_row]["all"]["flux_rel_err_median"] if model_row in rows else None
            lines.append(
                f"| {name} | {label} | {s['n']} | {_fmt(s['flux_rel_abs_err_median'])} / "
                f"{_fmt(s['flux_rel_abs_err_mean'])} | {100 * s['catastrophic_fraction']:.1f} % | "
                f"{_fmt(s['e_abs_err_median'])} / {_fmt(s['e_abs_err_rms'])} | "
                f"{_fmt(s['mag_err_median'], sign=True)} | {_fmt(s['e1_err_median'], 4, True)} / "
                f"{_fmt(s['e2_err_median'], 4, True)} | {s['hsm_failures']} | "
                f"{'' if models is None else _fmt(models, sign=True)} | "
                f"{1e3 * rows[row]['seconds_per_blend_median']:.1f} |")
    lines += [""] + skipped + ([""] if skipped else [])
    fits = [(name, e["fit_against_encoder"]) for name, e in suite["sets"].items()
            if not e["skipped"] and e.get("fit_against_encoder")]
    if fits:
        lines += ["## The latent fit against the encoder, on the same blends (mean abs(df/f))", "",
                  "| set | blends | galaxies | conserved: encoder / fit | models: encoder / fit "
                  "| fit not worse |",
                  "|---|---|---|---|---|---|"]
        for name, f in fits:
            ok = f["conserved"]["fit_not_worse"] and f["model"]["fit_not_worse"]
            lines.append(f"| {name} | {f['n_blends']} | {f['n_galaxies']} | "
                         f"{_fmt(f['conserved']['encoder_mean'])} / {_fmt(f['conserved']['fit_mean'])} | "
                         f"{_fmt(f['model']['encoder_mean'])} / {_fmt(f['model']['fit_mean'])} | "
                         f"{'yes' if ok else 'no'} |")
        lines.append("")
    losses = [(name, e["losing_bins"]) for name, e in suite["sets"].items()
              if not e["skipped"] and e["losing_bins"]]
    if losses:
        lines += [f"## Bins where the VAE (encoder, conserved) is worse than scarlet (>= {MIN_BIN_GALAXIES} "
                  "galaxies)", ""]
        for name, bins in losses:
            parts = []
            for b in bins:
                worse = ", ".join(f"{_STAT_LABELS[stat]} {b['vae'][stat]:.3f} vs {b['scarlet'][stat]:.3f}"
                                  for stat in b["worse"])
                parts.append(f"{b['bin']} {b['lo']:g}-{b['hi']:g} (n={b['n']}): {worse}")
            lines.append(f"- {name}: " + "; ".join(parts))
        lines.append("")
    return "\n".join(lines) + "\n"

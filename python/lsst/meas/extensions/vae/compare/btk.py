"""BlendingToolKit (BTK) adapter: this deblender as a `btk.deblend.Deblender`, so that BTK users draw
blends, deblend and score them with BTK's own generators, matchers and metrics, beside BTK's deblenders.

Five lines for a BTK user (docs/btk.md)::

    from lsst.meas.extensions.vae.compare.btk import VaeDeblend
    deblender = VaeDeblend(max_n_sources=3)                  # shipped LSST weights; applies the shims
    draw = btk.draw_blends.CatsimGenerator(catalog, sampling, btk.survey.get_surveys("LSST"), seed=0)
    blend_batch = next(draw)
    deblend_batch = deblender(blend_batch)                   # deblended_images (batch, n, bands, h, w)

Units: BTK's LSST images (surveycodex) are background-subtracted electrons summed over the full survey
exposure time (``mag2counts`` and ``mean_sky_level`` with ``full_exposure_time``), the units the shipped
weights were trained in (`lsst.meas.extensions.vae.surveys`), so the adapter passes the pixels unchanged.

BTK 1.0.9 with the packages it is installed beside here (numpy 2.4, astropy 8, GalSim 2.8) needs one shim,
`apply_btk_shims`, applied by `VaeDeblend` (and callable on its own before drawing): see its docstring.
BTK is imported here only; ``lsst.meas.extensions.vae`` and ``.compare`` import without it.
"""

from __future__ import annotations

__all__ = ["VaeDeblend", "apply_btk_shims", "band_indices", "reconstruction_metrics"]

import dataclasses
import types
from collections.abc import Sequence

import numpy as np

try:
    import btk
    import btk.blend_batch
    import btk.deblend
    import btk.draw_blends
except ImportError as error:  # the optional extra is not installed
    raise ImportError("The BTK adapter needs BlendingToolKit: pip install 'lsst-meas-extensions-vae[btk]' "
                      "(or: pip install --no-deps -r requirements/btk.txt).") from error

import galsim
from astropy.table import Table

from ..deblend.field import DeblendConfig, add_at, deblend_field

PEAK_MODES = ("truth", "sep")


def _as_seed(seed):
    """An int seed from BTK's one-element ``SeedSequence.generate_state(1)`` array (else as given)."""
    if isinstance(seed, np.ndarray):
        if seed.size != 1:
            raise TypeError(f"Expected a one-element seed array, got shape {seed.shape}.")
        return int(seed.reshape(-1)[0])
    if isinstance(seed, np.integer):
        return int(seed)
    return seed


class _GalSimForBtk(types.ModuleType):
    """``galsim`` as BTK's ``btk.draw_blends`` module sees it: everything forwarded to the real module,
    except that ``galsim.random.BaseDeviate`` accepts BTK's one-element seed arrays.

    Only the name ``galsim`` inside ``btk.draw_blends`` points at this; every other module (this package's
    simulator included) keeps the real GalSim.
    """

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__(real.__name__, real.__doc__)
        self._real = real
        random = types.ModuleType(real.random.__name__, real.random.__doc__)
        random.__dict__.update(real.random.__dict__)

        def base_deviate(seed=None):
            return real.random.BaseDeviate(_as_seed(seed))

        random.BaseDeviate = base_deviate
        self.random = random

    def __getattr__(self, name: str):
        return getattr(self._real, name)


def apply_btk_shims() -> None:
    """Make BTK 1.0.9 draw blends with GalSim 2.8 (idempotent; affects ``btk.draw_blends`` only).

    BTK's ``DrawBlendsGenerator.render_blend`` seeds its noise with
    ``galsim.random.BaseDeviate(seed=seedseq.generate_state(1))``, a one-element ``uint32`` array; GalSim
    2.8 accepts only an int (or another deviate) and raises ``TypeError: BaseDeviate must be initialized
    with either an int or another BaseDeviate`` at the first noisy batch.  The shim points the name
    ``galsim`` inside ``btk.draw_blends`` at a forwarding module whose ``random.BaseDeviate`` takes that
    array's single value as the int seed (the same seed BTK meant), and changes nothing else: GalSim itself
    is not patched, so other code sees no difference.
    """
    if not isinstance(btk.draw_blends.galsim, _GalSimForBtk):
        btk.draw_blends.galsim = _GalSimForBtk(galsim)


def band_indices(survey_filters: Sequence[str], network_bands: Sequence[str]) -> np.ndarray:
    """Index in ``survey_filters`` of each of the network's bands, matched by name.

    Raises
    ------
    ValueError
        A band the network needs is not among the survey's filters.
    """
    filters = list(survey_filters)
    missing = [b for b in network_bands if b not in filters]
    if missing:
        raise ValueError(f"The VAE weights need bands {tuple(network_bands)}; the BTK survey's filters "
                         f"{tuple(filters)} lack {tuple(missing)}. Draw with a survey that has them "
                         "(btk.survey.get_surveys('LSST') has ugrizy).")
    return np.array([filters.index(b) for b in network_bands], dtype=np.int64)


class VaeDeblend(btk.deblend.Deblender):
    """This package's VAE deblender as a BTK deblender.

    Every blend of a `btk.blend_batch.BlendBatch` is one parent covering the whole BTK stamp; its peaks
    are BTK's true centroids (``x_peak``, ``y_peak`` of the blend catalogue, as BTK's ``Scarlet`` uses
    them), the positions of a reference catalogue from another BTK deblender, or SEP detections.  The
    children's images are returned in the survey's band order.

    Parameters
    ----------
    max_n_sources : `int`
        Most sources per blend (BTK's convention: the size of the output's source axis).
    weights : `str`
        Shipped weights name (``lsst``) or a ``.safetensors`` path.
    peaks : `str`
        ``truth``: the blend catalogue's true centroids (no detection, as BTK's ``Scarlet``); ``sep``: SEP
        detections on the noise-weighted sum of the bands.  A ``reference_catalogs`` argument of the call
        (a list of catalogues, one per blend, with ``x_peak``/``y_peak`` or ``ra``/``dec``) overrides both.
    images : `str`
        ``model``: the noiseless models (what BTK's reconstruction metrics compare with its noiseless
        isolated images); ``conserved``: the observed pixels split among the children in proportion to
        their models (they add up to the blend).
    config : `DeblendConfig`, optional
        Options of the core (`lsst.meas.extensions.vae.deblend.field.DeblendConfig`); flux conservation
        follows ``images``.
    device : `str`, optional
        ``cpu`` or ``cuda`` (the GPU when there is one by default).
    detect_threshold : `float`
        SEP threshold in units of the detection image's noise (``peaks="sep"``).
    detect_min_area : `int`
        SEP minimum area in pixels (``peaks="sep"``).
    """

    def __init__(self, max_n_sources: int, weights: str = "lsst", peaks: str = "truth",
                 images: str = "model", config: DeblendConfig | None = None, device: str | None = None,
                 detect_threshold: float = 3.0, detect_min_area: int = 5) -> None:
        super().__init__(max_n_sources)
        if peaks not in PEAK_MODES:
            raise ValueError(f"peaks must be one of {PEAK_MODES}, got {peaks!r}.")
        if images not in ("model", "conserved"):
            raise ValueError(f"images must be 'model' or 'conserved', got {images!r}.")
        apply_btk_shims()  # users build the deblender before drawing, so the draw generator works too
        from ..deblend.network import load_deblender

        self.network = load_deblender(weights, device=device)
        self.peaks = peaks
        self.images = images
        config = config or DeblendConfig()
        # Conservation costs time and is only needed for the conserved images.
        self.config = dataclasses.replace(config, conserve_flux=images == "conserved",
                                          keep_conserved_images=images == "conserved")
        self.detect_threshold = float(detect_threshold)
        self.detect_min_area = int(detect_min_area)
        self._survey_cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def _survey_setup(self, survey) -> tuple[np.ndarray, np.ndarray]:
        """Band indices of the network's bands in the survey, and the survey's sky variance per band."""
        key = (survey.name, tuple(survey.available_filters), str(survey.pixel_scale))
        if key not in self._survey_cache:
            from surveycodex.utilities import mean_sky_level

            scale = survey.pixel_scale.to_value("arcsec")
            if not np.isclose(scale, 0.2, rtol=1e-3):
                raise ValueError(f"The VAE weights use LSST's 0.2 arcsec pixels; survey {survey.name!r} has "
                                 f"{scale} arcsec.")
            index = band_indices(survey.available_filters, self.network.bands)
            variance = np.array([mean_sky_level(survey, survey.get_filter(f)).to_value("electron")
                                 for f in survey.available_filters])
            self._survey_cache[key] = (index, variance)
        return self._survey_cache[key]

    def _detect(self, image: np.ndarray, variance: np.ndarray) -> np.ndarray:
        """SEP peaks (n, 2) on the bands' sum weighted by 1/sigma (noise sqrt(n_bands) in those units)."""
        import sep

        sigma = np.sqrt(variance)[:, None, None]
        detection = np.ascontiguousarray((image / sigma).sum(axis=0), dtype=np.float64)
        objects = sep.extract(detection, self.detect_threshold, err=np.sqrt(len(variance)),
                              minarea=self.detect_min_area)
        order = np.argsort(-objects["flux"])[: self.max_n_sources]  # keep the brightest if there are more
        return np.stack([objects["x"][order], objects["y"][order]], axis=1).reshape(-1, 2)

    @staticmethod
    def _catalog_peaks(catalog: Table, wcs) -> np.ndarray:
        """(n, 2) pixel positions from a catalogue's ``x_peak``/``y_peak``, else its ``ra``/``dec``."""
        if "x_peak" in catalog.colnames and "y_peak" in catalog.colnames:
            return np.stack([np.asarray(catalog["x_peak"], float), np.asarray(catalog["y_peak"], float)],
                            axis=1).reshape(-1, 2)
        x, y = wcs.world_to_pixel_values(np.asarray(catalog["ra"]) / 3600, np.asarray(catalog["dec"]) / 3600)
        return np.stack([x, y], axis=1).reshape(-1, 2)

    def deblend(self, ii: int, blend_batch: btk.blend_batch.BlendBatch,
                reference_catalogs: Sequence[Table] | None = None) -> btk.blend_batch.DeblendExample:
        """Deblend the ``ii``-th blend of ``blend_batch``.

        Parameters
        ----------
        ii : `int`
            Index of the blend in the batch.
        blend_batch : `btk.blend_batch.BlendBatch`
        reference_catalogs : sequence of `astropy.table.Table`, optional
            Peaks to deblend, one catalogue per blend (e.g. another BTK deblender's ``catalog_list``).

        Returns
        -------
        `btk.blend_batch.DeblendExample`
            Catalogue (``ra``, ``dec`` in arcsec, ``x_peak``, ``y_peak`` of the peaks deblended, the
            core's flags) and ``deblended_images`` (max_n_sources, survey bands, h, w), zero after the
            last source.
        """
        index, variance = self._survey_setup(blend_batch.survey)
        image = np.asarray(blend_batch.blend_images[ii], dtype=np.float32)
        n_bands, size = image.shape[0], blend_batch.image_size
        wcs = blend_batch.wcs
        if reference_catalogs is not None:
            peaks = self._catalog_peaks(reference_catalogs[ii], wcs)
        elif self.peaks == "truth":
            peaks = self._catalog_peaks(blend_batch.catalog_list[ii], wcs)
        else:
            peaks = self._detect(image, variance)
        if len(peaks) > self.max_n_sources:
            raise ValueError(f"Blend {ii} has {len(peaks)} peaks, more than max_n_sources="
                             f"{self.max_n_sources}.")
        deblended = np.zeros((self.max_n_sources, n_bands, size, size), dtype=np.float32)
        catalog = Table()
        if len(peaks):
            children, parents = deblend_field(image[index], peaks, self.network, self.network.stamp_size,
                                              config=self.config, variance=variance[index])
            for k, child in enumerate(children):
                if self.images == "conserved":
                    x0, y0, x1, y1 = parents[0].bbox
                    deblended[k, index, y0:y1, x0:x1] = parents[0].conserved[k]
                else:
                    canvas = np.zeros((len(index), size, size), dtype=np.float32)
                    add_at(canvas, child.model, child.origin)
                    deblended[k, index] = canvas  # (index is an array: deblended[k, index] is a copy)
            flags = {name: [getattr(c, name) for c in children]
                     for name in ("edge", "refined", "zero_flux", "outside_image")}
        else:
            flags = {name: np.zeros(0, dtype=bool) for name in ("edge", "refined", "zero_flux",
                                                                 "outside_image")}
        source = reference_catalogs[ii] if reference_catalogs is not None else (
            blend_batch.catalog_list[ii] if self.peaks == "truth" else None)
        if source is not None and {"ra", "dec"} <= set(source.colnames):
            catalog["ra"], catalog["dec"] = np.asarray(source["ra"], float), np.asarray(source["dec"], float)
        else:  # as BTK's own detecting deblenders do: arcsec
            ra, dec = wcs.pixel_to_world_values(peaks[:, 0], peaks[:, 1])
            catalog["ra"], catalog["dec"] = np.asarray(ra) * 3600, np.asarray(dec) * 3600
        catalog["x_peak"], catalog["y_peak"] = peaks[:, 0], peaks[:, 1]
        for name, values in flags.items():
            catalog[name] = np.asarray(values, dtype=bool)
        # BTK's PSNR and SSIM assert non-negative images; the decoder's models are, the split pixels of
        # noisy images are not.
        np.clip(deblended, 0.0, None, out=deblended)
        return btk.blend_batch.DeblendExample(self.max_n_sources, catalog, n_bands, size, None, deblended)


def reconstruction_metrics(blend_batch: btk.blend_batch.BlendBatch,
                           deblend_batch: btk.blend_batch.DeblendBatch, band: str = "r",
                           pixel_max_sep: float = 5.0) -> dict[str, np.ndarray]:
    """BTK's reconstruction metrics of one deblended batch against BTK's noiseless isolated images.

    The detections are matched to the truth with BTK's ``PixelHungarianMatcher``; BTK's ``MSE`` (which is
    the root of the mean squared difference per image), ``PSNR`` and ``StructSim`` are computed in one
    band on the matched pairs, as BTK's tutorials do.

    Parameters
    ----------
    blend_batch : `btk.blend_batch.BlendBatch`
    deblend_batch : `btk.blend_batch.DeblendBatch`
        Any BTK deblender's output; a single-band output (BTK's ``SepSingleBand``) is read as ``band``.
    band : `str`
        Survey filter to score.
    pixel_max_sep : `float`
        Largest truth-detection distance of a match, pixels.

    Returns
    -------
    `dict` [`str`, `numpy.ndarray`]
        ``mse``, ``psnr``, ``ssim``: one value per matched galaxy; ``n_true``, ``n_matched``: per blend.
    """
    import btk.match
    import btk.metrics.reconstruction as recon

    filters = list(blend_batch.survey.available_filters)
    if band not in filters:
        raise ValueError(f"Band {band!r} is not among the survey's filters {tuple(filters)}.")
    true_band = filters.index(band)
    pred_band = 0 if deblend_batch.n_bands == 1 else true_band
    matching = btk.match.PixelHungarianMatcher(pixel_max_sep=pixel_max_sep)(
        blend_batch.catalog_list, deblend_batch.catalog_list)
    true_images = matching.match_true_arrays(blend_batch.isolated_images[:, :, true_band])
    pred_images = matching.match_pred_arrays(deblend_batch.deblended_images[:, :, pred_band])
    size = blend_batch.batch_size
    out = {}
    metrics = (("mse", recon.MSE(size)), ("psnr", recon.PSNR(size)), ("ssim", recon.StructSim(size)))
    for name, metric in metrics:
        metric(true_images, pred_images)
        out[name] = np.asarray(metric.all_data[-1][name], dtype=float)
    out["n_true"] = np.asarray(matching.n_true)
    out["n_matched"] = np.array([len(m) for m in matching.true_matches])
    return out

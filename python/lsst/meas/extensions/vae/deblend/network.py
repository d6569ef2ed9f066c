"""Batched inference of the trained deblender on stamps, on CPU or GPU, with optional latent sampling."""

from __future__ import annotations

__all__ = ["PRECISIONS", "VaeDeblender", "load_deblender"]

import contextlib
import functools
import json
import logging

import numpy as np
import torch

from ..model.networks import condition_maps, neighbour_maps
from ..model.refiner import AMPLITUDE_LIMIT, Refiner, refiner_inputs
from ..model.training import default_device, network_output
from ..model.weights import load_bundle, load_refiner, refiner_path, shipped_weights_path

# On the CPU, network calls run on batches padded to a multiple of this: the CPU kernels round their sums
# differently for batches of other sizes (measured: models up to 7e-4 e- apart for batches of 1-3 or 5-7
# stamps against batches of 8), so that a stamp's model would depend on how many stamps share its call.
# Padded to multiples of 4 (of 2 they still differ), every stamp's model is the same bit for bit whatever
# the batch size or the grouping of parents into calls (tests/test_robust_determinism.py); the cost is at
# most 3 extra stamps per call.  The normalisation's element-wise functions (asinh, sinh) are applied to
# chunks of that many stamps: over a whole batch, torch splits them among threads at offsets that depend
# on the batch's length, and the elements at the end of each thread's share take a scalar path that
# rounds differently (1 ulp).
BATCH_MULTIPLE = 4
# Stamps per network call by default.  On the CPU a batch of 64 keeps the decoder's activations (16 x 64 x 64
# floats a stamp) in the caches: measured 2.4-2.7 ms per stamp against 3.5-3.7 ms for 256, one thread
# (docs/benchmarks.md).  A GPU wants large batches.
CPU_BATCH_SIZE = 64
GPU_BATCH_SIZE = 256
# An input's PSF width or depth this far (relative) outside the training range is reported.
_RANGE_TOLERANCE = 0.1
_log = logging.getLogger("lsst.meas.extensions.vae")
# Arithmetic of the network passes: float32, or bfloat16 (autocast: the convolutions and matrix products in
# bfloat16, the normalisation, the PSF convolution and the outputs in float32).
PRECISIONS = ("float32", "bfloat16")


def _keep_float32(layer: torch.nn.Module) -> None:
    """Run ``layer`` in float32 inside a bfloat16 autocast.

    Kept in float32: the networks' first layers (their inputs, in asinh units up to about 10, keep 8 bits
    in bfloat16) and the decoder's last (its output's rounding in asinh units is multiplied by the pixel's
    value in electrons).  With these in bfloat16 too, one bright galaxy's model flux of 40 anchor blends
    moved by 15 % against float32; with them in float32, at most 2.4 % (either alone does not do it).
    """
    forward = layer.forward

    def float32_forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return forward(x.float())

    layer.forward = float32_forward


def psf_fwhm_pixels(psf: np.ndarray) -> np.ndarray:
    """FWHM (pixels) of PSF images (..., p, p): the diameter of the disc with the area above half the peak."""
    psf = np.asarray(psf, dtype=np.float64)
    peak = psf.max(axis=(-2, -1), keepdims=True)
    area = (psf >= 0.5 * peak).sum(axis=(-2, -1))
    return 2.0 * np.sqrt(area / np.pi)


class VaeDeblender:
    """The shipped (or any bundled) VAE deblender, applied to stamps centred on peaks.

    Parameters
    ----------
    weights : `str`
        Shipped weights name (``lsst``) or a ``.safetensors`` path.
    bands : sequence of `str`, optional
        Bands the caller's images hold, in order; loading fails clearly if the weights differ.
    device : `str` or `torch.device`, optional
        ``cpu``, ``cuda``...; the GPU when there is one by default.
    batch_size : `int`
        Stamps per network call; 0: `CPU_BATCH_SIZE` on the CPU, `GPU_BATCH_SIZE` elsewhere.
    deterministic : `bool`
        On the CPU, make every stamp's model the same bit for bit whatever the batch (`BATCH_MULTIPLE`):
        free for the pipeline's large batches; a call of one blend of a few galaxies takes about 1.7 times
        as long (docs/robustness.md).
    refiner : `str` or `Refiner`, optional
        The learned refinement (`refine`): a ``.refiner.safetensors`` path or a network; by default the
        weights' own refiner file beside them (`model.weights.refiner_path`), loaded when first used.
    precision : `str`
        ``float32`` or ``bfloat16`` (`PRECISIONS`): the networks' convolutions and matrix products in
        bfloat16, where the CPU (AVX512-BF16, AMX) or GPU computes it in hardware faster; the models
        then differ from float32's in flux by 0.3 % (median) to 2.4 % (largest) on 40 anchor blends, and
        the bit-for-bit independence of the batch (``deterministic``) holds in float32 only (measured:
        2e-6 electrons apart across batch sizes in bfloat16; docs/benchmarks.md).
    """

    def __init__(self, weights: str = "lsst", bands=None, device=None, batch_size: int = 0,
                 deterministic: bool = True, refiner: str | Refiner | None = None,
                 precision: str = "float32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}; choose from {PRECISIONS}.")
        self.precision = precision
        self.device = torch.device(device) if device is not None else default_device()
        self._weights = weights
        self._refiner = refiner
        self._exact = deterministic and self.device.type == "cpu"
        self.vae, self.deblender, self.norm, self.metadata = load_bundle(weights, bands=bands,
                                                                         device=self.device)
        self.likelihood = self.metadata.get("likelihood", "normalized")
        self.bands = self.vae.config.bands
        self.stamp_size = self.vae.config.stamp_size
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0 (0: the device's default), got {batch_size}.")
        self.batch_size = batch_size or (CPU_BATCH_SIZE if self.device.type == "cpu" else GPU_BATCH_SIZE)
        self.deblender = self.deblender.to(memory_format=torch.channels_last)
        self.deblender.decoder.requires_grad_(False)  # frozen: latent fits need gradients of z only
        # Spread of real galaxies' codes per latent dimension: the latent fit's step scale (None in weights
        # bundled before it was stored).
        spread = self.metadata.get("latent_spread")
        self.latent_scale = np.array(json.loads(spread), dtype=np.float32) if spread else None
        self.conditioned = self.vae.config.conditioned
        self.psf_size = self.vae.config.psf_size
        if precision == "bfloat16":
            for layer in (self.deblender.encoder.features[0], self.deblender.decoder.features[-1],
                          self.vae.encoder.features[0]):
                _keep_float32(layer)
        self._trained_over = _training_range(self.metadata)
        self._reported: set[str] = set()

    def _conditions(self, n: int, psf: np.ndarray | None, variance: np.ndarray | None
                    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per-stamp PSF images (n, bands, p, p) and variances (n, bands) for a conditioned network."""
        if not self.conditioned:
            if psf is not None and variance is not None:
                self._report_range(np.asarray(psf, dtype=np.float32).reshape((-1,) + np.shape(psf)[-3:]),
                                   np.asarray(variance, dtype=np.float32).reshape(-1, len(self.bands)))
            return None, None
        if psf is None or variance is None:
            raise ValueError("These weights are PSF- and noise-aware (model v3): give the PSF images and the "
                             "noise variance of the stamps (psf=..., variance=...).")
        bands = len(self.bands)
        psf = np.asarray(psf, dtype=np.float32)
        variance = np.asarray(variance, dtype=np.float32)
        if psf.ndim == 3:
            psf = np.broadcast_to(psf, (n,) + psf.shape)
        if variance.ndim == 1:
            variance = np.broadcast_to(variance, (n, bands))
        if psf.shape[:2] != (n, bands) or psf.shape[-1] != psf.shape[-2] or psf.shape[-1] % 2 == 0:
            raise ValueError(f"PSF images of shape {psf.shape} do not fit {n} stamps of {bands} bands "
                             "(odd square images, one per band).")
        if variance.shape != (n, bands) or not np.all(np.isfinite(variance) & (variance > 0)):
            raise ValueError(f"The noise variance must be positive and finite, shape ({n}, {bands}) or "
                             f"({bands},); got shape {variance.shape}.")
        self._report_range(psf, variance)
        return psf, variance

    def _report_range(self, psf: np.ndarray, variance: np.ndarray) -> None:
        """Log (once per kind) inputs outside the PSF widths and depths the weights were trained over."""
        if self._trained_over is None:
            return
        (fwhm_low, fwhm_high), (var_low, var_high), ref = self._trained_over
        fwhm = psf_fwhm_pixels(psf[:, ref])
        depth = variance[:, ref]
        low, high = 1 - _RANGE_TOLERANCE, 1 + _RANGE_TOLERANCE
        checks = {
            "psf": (fwhm.min() < fwhm_low * low or fwhm.max() > fwhm_high * high,
                    f"PSF FWHM {fwhm.min():.2f}-{fwhm.max():.2f} px in {self.bands[ref]}, trained over "
                    f"{fwhm_low:.2f}-{fwhm_high:.2f} px"),
            "depth": (depth.min() < var_low * low or depth.max() > var_high * high,
                      f"noise variance {depth.min():.4g}-{depth.max():.4g} in {self.bands[ref]}, trained "
                      f"over {var_low:.4g}-{var_high:.4g}"),
        }
        for kind, (outside, text) in checks.items():
            if outside and kind not in self._reported:
                self._reported.add(kind)
                _log.warning("Input outside what the deblender's weights were trained on: %s; its models "
                             "there are extrapolations (docs/model.md).", text)

    @torch.no_grad()
    def __call__(self, stamps: np.ndarray, neighbours: np.ndarray, n_samples: int = 0, seed: int = 0,
                 psf: np.ndarray | None = None, variance: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """Model of the galaxy at the centre of each stamp.

        Parameters
        ----------
        stamps : `numpy.ndarray`, (n, bands, size, size)
            Images in electrons, the galaxy to model on the central pixel.
        neighbours : `numpy.ndarray`, (n, k, 2)
            (x, y) stamp positions of the other peaks (NaN rows for none).
        n_samples : `int`
            If > 0, also decode that many samples of the latent distribution and return the per-band
            standard deviation of the model flux (an epistemic uncertainty).
        seed : `int`
            Seed of the latent samples.
        psf : `numpy.ndarray`, (n, bands, p, p) or (bands, p, p), optional
            PSF image of each band at each stamp (p odd, centred), or one set for all; needed by
            PSF-aware weights (``conditioned``), ignored by the others.
        variance : `numpy.ndarray`, (n, bands) or (bands,), optional
            Noise variance per pixel, electrons^2; needed by PSF-aware weights, ignored by the others.

        Returns
        -------
        models : `numpy.ndarray`, (n, bands, size, size), float32
            Noiseless models, electrons.
        flux_std : `numpy.ndarray` (n, bands) or `None`
        """
        n = len(stamps)
        size = self.stamp_size
        if stamps.shape[1:] != (len(self.bands), size, size):
            raise ValueError(f"Stamps of shape {stamps.shape[1:]} do not fit the weights "
                             f"({len(self.bands)} bands, {size}x{size}).")
        models = np.zeros(stamps.shape, dtype=np.float32)
        flux_std = np.zeros((n, len(self.bands)), dtype=np.float32) if n_samples else None
        generator = torch.Generator(device=self.device).manual_seed(seed)
        psf, variance = self._conditions(n, psf, variance)
        for lo in range(0, n, self.batch_size):
            hi = min(n, lo + self.batch_size)
            psf_batch = self._psf_tensor(psf, lo, hi)
            mean, log_std, factors = self._encode_batch(stamps[lo:hi], neighbours[lo:hi], psf_batch,
                                                        None if variance is None else variance[lo:hi])
            models[lo:hi] = self.decode(mean, psf_batch, factors).cpu().numpy()
            if n_samples:
                fluxes = []
                for _ in range(n_samples):
                    eps = torch.randn(mean.shape, generator=generator, device=self.device)
                    fluxes.append(self.decode(mean + eps * log_std.exp(), psf_batch, factors).sum(dim=(2, 3)))
                flux_std[lo:hi] = torch.stack(fluxes).std(dim=0).cpu().numpy()
        return models, flux_std

    @torch.no_grad()
    def encode(self, stamps: np.ndarray, neighbours: np.ndarray, psf: np.ndarray | None = None,
               variance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's latent code (the mean) of the galaxy at the centre of each stamp, (n, latent),
        and each stamp's amplitude factor (n,) that its decoded model is multiplied by
        (`Normalization.stamp_factors`; ones for weights without one); ``psf`` and ``variance`` as for
        `__call__`."""
        codes, factors = [], []
        psf, variance = self._conditions(len(stamps), psf, variance)
        for lo in range(0, len(stamps), self.batch_size):
            hi = min(len(stamps), lo + self.batch_size)
            mean, _, factor = self._encode_batch(stamps[lo:hi], neighbours[lo:hi],
                                                 self._psf_tensor(psf, lo, hi),
                                                 None if variance is None else variance[lo:hi])
            codes.append(mean.cpu().numpy())
            factors.append(factor.cpu().numpy())
        if not codes:
            return np.zeros((0, self.vae.config.latent), dtype=np.float32), np.ones(0, dtype=np.float32)
        return np.concatenate(codes), np.concatenate(factors)

    @torch.no_grad()
    def reconstruct(self, stamps: np.ndarray, psf: np.ndarray | None = None,
                    variance: np.ndarray | None = None) -> np.ndarray:
        """The VAE's reconstruction (encoder mean, then decoder) of the galaxy alone on each stamp: the
        bound of any deblender built on this decoder.

        Parameters
        ----------
        stamps : `numpy.ndarray`, (n, bands, size, size)
            Images of isolated galaxies in electrons, each on the central pixel.
        psf, variance : `numpy.ndarray`, optional
            As for `__call__`.

        Returns
        -------
        models : `numpy.ndarray`, (n, bands, size, size), float32
        """
        n = len(stamps)
        models = np.zeros((n,) + tuple(stamps.shape[1:]), dtype=np.float32)
        psf, variance = self._conditions(n, psf, variance)
        for lo in range(0, n, self.batch_size):
            hi = min(n, lo + self.batch_size)
            psf_batch = self._psf_tensor(psf, lo, hi)
            x, factors = self._network_input(stamps[lo:hi], psf_batch,
                                             None if variance is None else variance[lo:hi], self.vae)
            with self._autocast():
                mean, _ = self.vae.encoder(x)
            models[lo:hi] = self.decode(mean[: hi - lo].float(), psf_batch, factors).cpu().numpy()
        return models

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The networks' arithmetic (`precision`) for the calls inside it; their outputs are cast back to
        float32 by the callers."""
        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @property
    def refiner(self) -> Refiner:
        """The learned refinement network (loaded on first use)."""
        if not isinstance(self._refiner, Refiner):
            path = self._refiner or refiner_path(self._weights)
            if not shipped_weights_path(str(path)).exists():
                raise FileNotFoundError(f"No refiner for the weights {self._weights!r} ({path}): train one "
                                        "with `vae-deblend train refiner` (docs/model.md), or deblend "
                                        "without the refinement (the tasks' refineSteps=0).")
            self._refiner, _ = load_refiner(path, self.metadata, device=self.device)
            self._refiner = self._refiner.to(memory_format=torch.channels_last)
            if self.precision == "bfloat16":
                _keep_float32(self._refiner.features[0])
        return self._refiner

    def refine_step(self, refiner: Refiner, stamps: torch.Tensor, neighbours: torch.Tensor,
                    codes: torch.Tensor, log_amplitude: torch.Tensor, models: torch.Tensor,
                    variance: torch.Tensor, factors: torch.Tensor, psf: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One refinement step on tensors (differentiable in ``refiner``'s parameters: the training's
        step too): new codes, log-amplitudes (n, bands) and models (electrons).

        ``stamps`` (n, bands, s, s) are the galaxies' stamps of their parents' pixels minus the other
        galaxies' models, ``neighbours`` their neighbour maps (n, 1, s, s), ``models`` their current
        models, ``variance`` (n, bands) the noise, ``factors`` the stamps' amplitude factors.
        """
        conditions = None
        if self.conditioned:
            conditions = condition_maps(psf, variance / factors[:, None] ** 2, self.deblender.decoder.scales,
                                        self.stamp_size)
        x = refiner_inputs(stamps, models, variance, factors, self.norm, neighbours, conditions,
                           elementwise=lambda function, t: self._in_chunks(function, t))
        with self._autocast():
            step, amplitude_step = refiner(x.contiguous(memory_format=torch.channels_last), codes)
        step, amplitude_step = step.float(), amplitude_step.float()
        scale = 1.0 if self.latent_scale is None else torch.as_tensor(self.latent_scale, device=codes.device)
        codes = codes + scale * step
        log_amplitude = (log_amplitude + amplitude_step).clamp(-AMPLITUDE_LIMIT, AMPLITUDE_LIMIT)
        models = self.decode(codes, psf, factors) * torch.exp(log_amplitude)[:, :, None, None]
        return codes, log_amplitude, models

    @torch.no_grad()
    def refine(self, stamps: np.ndarray, neighbours: np.ndarray, codes: np.ndarray, factors: np.ndarray,
               log_amplitude: np.ndarray, models: np.ndarray, variance: np.ndarray,
               psf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One step of the learned refinement (`model.refiner`) of every galaxy's code and amplitudes.

        Parameters
        ----------
        stamps : `numpy.ndarray`, (n, bands, s, s)
            Each galaxy's stamp of its parent's pixels minus the other galaxies' current models, electrons.
        neighbours : `numpy.ndarray`, (n, k, 2)
            (x, y) stamp positions of the other peaks (NaN rows for none).
        codes : `numpy.ndarray`, (n, latent)
            Current latent codes (the encoder's to start with, `encode`).
        factors : `numpy.ndarray`, (n,)
            The stamps' amplitude factors (`encode`).
        log_amplitude : `numpy.ndarray`, (n, bands)
            Current log-amplitude of each band's model (zeros to start with).
        models : `numpy.ndarray`, (n, bands, s, s)
            Current models, electrons.
        variance : `numpy.ndarray`, (n, bands) or (bands,)
            Noise variance per pixel, electrons^2.
        psf : `numpy.ndarray`, (n, bands, p, p), optional
            PSF images, for PSF-aware weights.

        Returns
        -------
        codes, log_amplitude, models : `numpy.ndarray`
            The refined codes, log-amplitudes and models (float32).
        """
        refiner = self.refiner
        n = len(stamps)
        variance = np.broadcast_to(np.asarray(variance, dtype=np.float32), (n, len(self.bands)))
        psf, _ = self._conditions(n, psf, variance) if self.conditioned else (None, None)
        out_codes = np.zeros((n, codes.shape[1]), dtype=np.float32)
        out_amplitude = np.zeros((n, len(self.bands)), dtype=np.float32)
        out_models = np.zeros(stamps.shape, dtype=np.float32)

        def tensor(a: np.ndarray, lo: int, hi: int) -> torch.Tensor:
            return self._padded(torch.from_numpy(np.array(a[lo:hi], dtype=np.float32))  # a writable copy
                                ).to(self.device)

        for lo in range(0, n, self.batch_size):
            hi = min(n, lo + self.batch_size)
            maps = self._padded(torch.from_numpy(neighbour_maps(neighbours[lo:hi], self.stamp_size))
                                ).to(self.device)
            factor = tensor(factors, lo, hi)
            factor = torch.where(factor > 0, factor, torch.ones_like(factor))  # padding rows
            psf_batch = None if psf is None else self._padded_psf(self._psf_tensor(psf, lo, hi))
            variance_batch = tensor(variance, lo, hi)
            variance_batch = torch.where(variance_batch > 0, variance_batch, torch.ones_like(variance_batch))
            z, amplitude, model = self.refine_step(
                refiner, tensor(stamps, lo, hi), maps, tensor(codes, lo, hi), tensor(log_amplitude, lo, hi),
                tensor(models, lo, hi), variance_batch, factor, psf_batch)
            out_codes[lo:hi] = z[: hi - lo].cpu().numpy()
            out_amplitude[lo:hi] = amplitude[: hi - lo].cpu().numpy()
            out_models[lo:hi] = model[: hi - lo].cpu().numpy()
        return out_codes, out_amplitude, out_models

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with zero rows appended up to a multiple of `BATCH_MULTIPLE` rows, on the CPU."""
        extra = -len(x) % BATCH_MULTIPLE if self._exact else 0
        return torch.cat([x, x.new_zeros((extra,) + tuple(x.shape[1:]))]) if extra else x

    def _in_chunks(self, function, x: torch.Tensor) -> torch.Tensor:
        """``function`` of a padded batch of stamps, applied `BATCH_MULTIPLE` stamps at a time on the CPU
        (the same split among threads for every chunk)."""
        if not self._exact or len(x) <= BATCH_MULTIPLE:
            return function(x)
        return torch.cat([function(x[lo: lo + BATCH_MULTIPLE]) for lo in range(0, len(x), BATCH_MULTIPLE)])

    def _psf_tensor(self, psf: np.ndarray | None, lo: int, hi: int) -> torch.Tensor | None:
        """The PSF images of stamps ``lo:hi`` on the device, or `None` for weights without PSF input."""
        if psf is None:
            return None
        return torch.from_numpy(np.array(psf[lo:hi], dtype=np.float32)).to(self.device)

    def _network_input(self, stamps: np.ndarray, psf: torch.Tensor | None, variance: np.ndarray | None,
                       network) -> tuple[torch.Tensor, torch.Tensor]:
        """A padded batch of stamps (electrons) as ``network``'s encoder input (normalised, divided by
        each stamp's amplitude factor, with the condition channels of a conditioned network), and the
        factors of the unpadded stamps."""
        x = self._padded(torch.from_numpy(np.ascontiguousarray(stamps, dtype=np.float32))).to(self.device)
        factors = self.norm.stamp_factors(x)
        x = self._in_chunks(self.norm.forward, x / factors[:, None, None, None])
        x = x.contiguous(memory_format=torch.channels_last)
        if self.conditioned:
            variance_t = self._padded(torch.from_numpy(np.array(variance, dtype=np.float32))).to(self.device)
            x = network.encoder_input(x, self._padded_psf(psf), variance_t / factors[:, None] ** 2)
        return x, factors[: len(stamps)]

    def _encode_batch(self, stamps: np.ndarray, neighbours: np.ndarray, psf: torch.Tensor | None = None,
                      variance: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and log-std of the latent distribution, and the amplitude factors, for one batch of stamps
        (electrons)."""
        x, factors = self._network_input(stamps, psf, variance, self.deblender)
        maps = self._padded(torch.from_numpy(neighbour_maps(neighbours, self.stamp_size))).to(self.device)
        with self._autocast():
            mean, log_std = self.deblender.encoder(torch.cat([x, maps], dim=1))
        return mean[: len(stamps)].float(), log_std[: len(stamps)].float(), factors

    def _padded_psf(self, psf: torch.Tensor) -> torch.Tensor:
        """PSF images padded like the stamps (the padding rows get a copy of the first PSF: any valid PSF)."""
        extra = -len(psf) % BATCH_MULTIPLE if self._exact else 0
        return torch.cat([psf, psf[:1].expand((extra,) + tuple(psf.shape[1:]))]) if extra else psf

    def decode(self, z: torch.Tensor, psf: torch.Tensor | None = None, factors: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Models in electrons from latent codes (on this deblender's device), differentiable in ``z``;
        PSF-aware weights need each code's PSF images (len(z), bands, p, p); ``factors`` (len(z),) are
        the stamps' amplitude factors (`encode`), ones when not given."""
        if self.conditioned and psf is None:
            raise ValueError("These weights are PSF-aware: decode needs each code's PSF images.")
        with self._autocast():
            if self.conditioned:
                raw = self.deblender.decoder(self._padded(z), self._padded_psf(psf))
            else:
                raw = self.deblender.decoder(self._padded(z))
        raw = raw.float()
        models = self._in_chunks(lambda r: self.norm.inverse(network_output(r, self.likelihood)), raw)
        models = models[: len(z)]
        if factors is not None:  # ones for weights without an amplitude reference: exact
            factors = torch.as_tensor(factors, dtype=models.dtype, device=models.device)
            models = models * factors[:, None, None, None]
        return models


def _training_range(metadata: dict[str, str]
                    ) -> tuple[tuple[float, float], tuple[float, float], int] | None:
    """PSF FWHM (pixels) and noise variance ranges of the reference band that the weights were trained
    over (their ``trained_over`` metadata; None for weights bundled before it was recorded)."""
    text = metadata.get("trained_over", "")
    if not text:
        return None
    values = json.loads(text)
    ref = list(json.loads(metadata["bands"])).index(values["reference_band"])
    return tuple(values["psf_fwhm_pixels"]), tuple(values["variance"]), ref


def load_deblender(weights: str = "lsst", device: str | None = None, batch_size: int = 0,
                   deterministic: bool = True, precision: str = "float32") -> VaeDeblender:
    """A `VaeDeblender`, loaded once per weights file (as it is on disk now) and options, then reused:
    loading the weights costs more than deblending a blend.

    Parameters
    ----------
    weights : `str`
        Shipped weights name or ``.safetensors`` path.
    device : `str`, optional
        ``cpu``, ``cuda``...; the GPU when there is one by default.
    batch_size : `int`
        Stamps per network call (0: the device's default, see `VaeDeblender`).
    deterministic : `bool`
        See `VaeDeblender`.
    precision : `str`
        See `VaeDeblender`.
    """
    path = shipped_weights_path(str(weights))
    stat = path.stat()
    return _cached_deblender(str(path.resolve()), stat.st_mtime_ns, stat.st_size, device, batch_size,
                             deterministic, precision)


@functools.lru_cache(maxsize=4)
def _cached_deblender(path: str, mtime_ns: int, size: int, device: str | None, batch_size: int,
                      deterministic: bool, precision: str) -> VaeDeblender:
    # The file's time and size are in the key, so a rewritten file is loaded again.
    return VaeDeblender(path, device=device, batch_size=batch_size, deterministic=deterministic,
                        precision=precision)

"""Batched inference of the trained deblender on stamps, on CPU or GPU, with optional latent sampling."""

from __future__ import annotations

__all__ = ["VaeDeblender", "load_deblender"]

import functools
import json

import numpy as np
import torch

from ..model.networks import neighbour_maps
from ..model.training import default_device, network_output
from ..model.weights import load_bundle, shipped_weights_path

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
        Stamps per network call.
    deterministic : `bool`
        On the CPU, make every stamp's model the same bit for bit whatever the batch (`BATCH_MULTIPLE`):
        free for the pipeline's large batches; a call of one blend of a few galaxies takes about 1.7 times
        as long (docs/robustness.md).
    """

    def __init__(self, weights: str = "lsst", bands=None, device=None, batch_size: int = 256,
                 deterministic: bool = True) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self._exact = deterministic and self.device.type == "cpu"
        self.vae, self.deblender, self.norm, self.metadata = load_bundle(weights, bands=bands,
                                                                         device=self.device)
        self.likelihood = self.metadata.get("likelihood", "normalized")
        self.bands = self.vae.config.bands
        self.stamp_size = self.vae.config.stamp_size
        self.batch_size = batch_size
        self.deblender = self.deblender.to(memory_format=torch.channels_last)
        self.deblender.decoder.requires_grad_(False)  # frozen: latent fits need gradients of z only
        # Spread of real galaxies' codes per latent dimension: the latent fit's step scale (None in weights
        # bundled before it was stored).
        spread = self.metadata.get("latent_spread")
        self.latent_scale = np.array(json.loads(spread), dtype=np.float32) if spread else None

    @torch.no_grad()
    def __call__(self, stamps: np.ndarray, neighbours: np.ndarray, n_samples: int = 0, seed: int = 0
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
        for lo in range(0, n, self.batch_size):
            hi = min(n, lo + self.batch_size)
            mean, log_std = self._encode_batch(stamps[lo:hi], neighbours[lo:hi])
            models[lo:hi] = self.decode(mean).cpu().numpy()
            if n_samples:
                fluxes = []
                for _ in range(n_samples):
                    eps = torch.randn(mean.shape, generator=generator, device=self.device)
                    fluxes.append(self.decode(mean + eps * log_std.exp()).sum(dim=(2, 3)))
                flux_std[lo:hi] = torch.stack(fluxes).std(dim=0).cpu().numpy()
        return models, flux_std

    @torch.no_grad()
    def encode(self, stamps: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
        """The encoder's latent code (the mean) of the galaxy at the centre of each stamp, (n, latent)."""
        codes = []
        for lo in range(0, len(stamps), self.batch_size):
            hi = min(len(stamps), lo + self.batch_size)
            codes.append(self._encode_batch(stamps[lo:hi], neighbours[lo:hi])[0].cpu().numpy())
        return (np.concatenate(codes) if codes
                else np.zeros((0, self.vae.config.latent), dtype=np.float32))

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

    def _encode_batch(self, stamps: np.ndarray, neighbours: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std of the latent distribution for one batch of stamps (electrons)."""
        x = self._padded(torch.from_numpy(np.ascontiguousarray(stamps, dtype=np.float32))).to(self.device)
        maps = self._padded(torch.from_numpy(neighbour_maps(neighbours, self.stamp_size))).to(self.device)
        x = self._in_chunks(self.norm.forward, x).contiguous(memory_format=torch.channels_last)
        mean, log_std = self.deblender.encoder(torch.cat([x, maps], dim=1))
        return mean[: len(stamps)], log_std[: len(stamps)]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Models in electrons from latent codes (on this deblender's device), differentiable in ``z``."""
        raw = self.deblender.decoder(self._padded(z))
        return self._in_chunks(lambda r: self.norm.inverse(network_output(r, self.likelihood)), raw)[: len(z)]


def load_deblender(weights: str = "lsst", device: str | None = None, batch_size: int = 256,
                   deterministic: bool = True) -> VaeDeblender:
    """A `VaeDeblender`, loaded once per weights file (as it is on disk now) and options, then reused:
    loading the weights costs more than deblending a blend.

    Parameters
    ----------
    weights : `str`
        Shipped weights name or ``.safetensors`` path.
    device : `str`, optional
        ``cpu``, ``cuda``...; the GPU when there is one by default.
    batch_size : `int`
        Stamps per network call.
    deterministic : `bool`
        See `VaeDeblender`.
    """
    path = shipped_weights_path(str(weights))
    stat = path.stat()
    return _cached_deblender(str(path.resolve()), stat.st_mtime_ns, stat.st_size, device, batch_size,
                             deterministic)


@functools.lru_cache(maxsize=4)
def _cached_deblender(path: str, mtime_ns: int, size: int, device: str | None, batch_size: int,
                      deterministic: bool) -> VaeDeblender:
    # The file's time and size are in the key, so a rewritten file is loaded again.
    return VaeDeblender(path, device=device, batch_size=batch_size, deterministic=deterministic)

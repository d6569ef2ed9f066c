"""The networks: a convolutional VAE of isolated galaxies and the deblender encoder (Arcelin et al. 2021).

Encoder: per block a 3x3 convolution and a 3x3 stride-2 convolution, each followed by PReLU; then a
dense layer and a linear layer giving the mean and log standard deviation of a diagonal Gaussian in the
latent space.  Decoder: the mirror image (dense layers, then per block a 4x4 stride-2 transposed
convolution and a 3x3 convolution), a final 3x3 convolution to the bands, centre-cropped to the stamp.

The deblender is an encoder of the same shape whose input also has a *neighbour map* channel (Gaussian
blobs at the other detected peaks of the stamp), trained on blends to land on the central galaxy's code;
it reuses the VAE's decoder, frozen.

Conditioned networks (model v3, ``NetworkConfig.conditioned``) take each stamp's observing conditions:
the encoders see every band's PSF image (centred, peak 1) and noise level (``log(sigma_b / scale_b)``,
a constant map) as extra channels, and the decoder draws the galaxy *before* the PSF, on the stamp's
pixels, and convolves it with each band's PSF (an FFT product): the latent code describes the galaxy, not
its image under one seeing, so one set of weights serves any coadd and a wider PSF gives a wider model by
construction.  The decoder's intrinsic image is ``scale_b * sinh(raw)`` (the asinh normalisation's
inverse); the convolved model is returned in normalised units, ``asinh(model / scale_b)``, like the plain
decoder's output.
"""

from __future__ import annotations

__all__ = ["NetworkConfig", "PRESETS", "Encoder", "Decoder", "VAE", "Deblender", "neighbour_maps",
           "condition_maps", "convolve_psf", "fit_psf_size"]

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from .normalization import asinh


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Shape of the networks.

    Attributes
    ----------
    bands : `tuple` [`str`]
        Band names, in the order of the input channels.
    stamp_size : `int`
        Stamp side, pixels.
    filters : `tuple` [`int`]
        Filters of each encoder block (the decoder mirrors them).
    dense : `int`
        Width of the dense layer.
    latent : `int`
        Latent dimension.
    conditioned : `bool`
        PSF- and noise-aware (model v3): the encoders take each band's PSF and noise level, the decoder
        convolves with the PSF.
    psf_size : `int`
        Side of the PSF images a conditioned network takes (odd).
    """

    bands: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")
    stamp_size: int = 59
    filters: tuple[int, ...] = (16, 32, 64, 128)
    dense: int = 256
    latent: int = 32
    conditioned: bool = False
    psf_size: int = 41

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    @property
    def condition_channels(self) -> int:
        """Extra encoder input channels of the observing conditions (a PSF and a noise map per band)."""
        return 2 * self.n_bands if self.conditioned else 0

    @property
    def bottleneck(self) -> int:
        """Side of the smallest feature map."""
        return bottleneck_side(self.stamp_size, len(self.filters))


def bottleneck_side(stamp_size: int, blocks: int) -> int:
    """Side of the feature map after ``blocks`` stride-2 blocks (`_conv_features`) on a stamp."""
    size = stamp_size
    for _ in range(blocks):
        size = math.ceil(size / 2)
    return size


# `paper`: Arcelin et al. (2021) encoder (32/64/128/256 filters, dense 256, latent 32).
# `small`: a quarter of the filters' products; trains on 2 CPU cores (the shipped default).
PRESETS = {
    "paper": {"filters": (32, 64, 128, 256), "dense": 256, "latent": 32},
    "small": {"filters": (16, 32, 64, 128), "dense": 256, "latent": 32},
}


def _conv_features(in_channels: int, filters: tuple[int, ...]) -> nn.Sequential:
    """The encoders' blocks: per block a 3x3 convolution and a 3x3 stride-2 convolution, each with PReLU."""
    layers: list[nn.Module] = []
    channels = in_channels
    for f in filters:
        layers += [nn.Conv2d(channels, f, 3, padding=1), nn.PReLU(f),
                   nn.Conv2d(f, f, 3, stride=2, padding=1), nn.PReLU(f)]
        channels = f
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Images (batch, channels, size, size) to latent mean and log standard deviation."""

    def __init__(self, config: NetworkConfig, in_channels: int) -> None:
        super().__init__()
        self.features = _conv_features(in_channels, config.filters)
        flat = config.filters[-1] * config.bottleneck**2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, config.dense), nn.PReLU(),
                                  nn.Linear(config.dense, 2 * config.latent))
        self.latent = config.latent

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(self.features(x))
        return h[:, : self.latent], h[:, self.latent:].clamp(-8.0, 2.0)


# The decoder's intrinsic image is scale * sinh(raw): raw is bounded so that sinh cannot overflow (16 is
# about 4e6 noise sigmas in one pixel, beyond any galaxy's brightest pixel at 0.2").
_RAW_LIMIT = 16.0


def fit_psf_size(psf: torch.Tensor, size: int) -> torch.Tensor:
    """PSF images (..., p, p), p odd, centre-cropped or zero-padded to (..., size, size), renormalised."""
    p = psf.shape[-1]
    if p > size:
        lo = (p - size) // 2
        psf = psf[..., lo:lo + size, lo:lo + size]
    elif p < size:
        pad = (size - p) // 2
        psf = nn.functional.pad(psf, (pad, pad, pad, pad))
    return psf / psf.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def convolve_psf(image: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """Each band of ``image`` (batch, bands, s, s) convolved with its PSF (batch, bands, p, p), p odd, the
    PSF's centre on pixel p // 2: the same s x s pixels, computed in float32 with an FFT product."""
    s, p = image.shape[-1], psf.shape[-1]
    n = s + p - 1
    spectrum = torch.fft.rfft2(image.float(), s=(n, n)) * torch.fft.rfft2(psf.float(), s=(n, n))
    full = torch.fft.irfft2(spectrum, s=(n, n))
    c = p // 2
    return full[..., c:c + s, c:c + s]


def condition_maps(psf: torch.Tensor, variance: torch.Tensor, scales: torch.Tensor, size: int
                   ) -> torch.Tensor:
    """The encoders' condition channels: each band's PSF (centred, peak 1) and ``log(sigma / scale)``.

    Parameters
    ----------
    psf : `torch.Tensor`, (batch, bands, p, p)
        PSF images, p odd.
    variance : `torch.Tensor`, (batch, bands)
        Noise variance per pixel.
    scales : `torch.Tensor`, (bands,)
        The normalisation's scale per band (the full-depth noise sigma).
    size : `int`
        Stamp side.

    Returns
    -------
    maps : `torch.Tensor`, (batch, 2 * bands, size, size)
    """
    psf = fit_psf_size(psf, size) if psf.shape[-1] != size else psf
    peak = psf.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    noise = 0.5 * torch.log(variance.clamp_min(1e-12) / scales**2)
    noise_maps = noise[:, :, None, None].expand(-1, -1, size, size)
    return torch.cat([psf / peak, noise_maps.to(psf.dtype)], dim=1)


class Decoder(nn.Module):
    """Latent codes to images (batch, bands, size, size), in normalised units.

    A conditioned decoder (``config.conditioned``) draws the galaxy before the PSF and convolves it with
    the ``psf`` given to `forward`; ``scales`` (the asinh normalisation's, per band) carry its output
    between normalised and linear units.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        filters = config.filters[::-1]
        self.start = filters[0]
        self.side = config.bottleneck
        self.stamp_size = config.stamp_size
        self.conditioned = config.conditioned
        self.psf_size = config.psf_size
        if config.conditioned:
            self.register_buffer("scales", torch.ones(config.n_bands))
        self.head = nn.Sequential(nn.Linear(config.latent, config.dense), nn.PReLU(),
                                  nn.Linear(config.dense, filters[0] * self.side**2), nn.PReLU())
        layers: list[nn.Module] = []
        channels = filters[0]
        for f in filters:
            layers += [nn.ConvTranspose2d(channels, f, 4, stride=2, padding=1), nn.PReLU(f),
                       nn.Conv2d(f, f, 3, padding=1), nn.PReLU(f)]
            channels = f
        layers.append(nn.Conv2d(channels, config.n_bands, 3, padding=1))
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, psf: torch.Tensor | None = None) -> torch.Tensor:
        h = self.head(z).view(-1, self.start, self.side, self.side)
        out = self.features(h)
        lo = (out.shape[-1] - self.stamp_size) // 2
        out = out[:, :, lo:lo + self.stamp_size, lo:lo + self.stamp_size]
        if not self.conditioned:
            return out
        if psf is None:
            raise ValueError("This decoder is PSF-aware: give it each stamp's PSF images.")
        return self.convolved(out, psf)

    def convolved(self, raw: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
        """The intrinsic image ``raw`` (normalised units) convolved with ``psf``, in normalised units."""
        scales = self.scales.view(-1, 1, 1)
        with torch.autocast(raw.device.type, enabled=False):
            intrinsic = torch.sinh(raw.float().clamp(-_RAW_LIMIT, _RAW_LIMIT)) * scales
            model = convolve_psf(intrinsic, fit_psf_size(psf.float(), self.psf_size))
            return asinh(model / scales)


class VAE(nn.Module):
    """Variational autoencoder of isolated galaxies."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, config.n_bands + config.condition_channels)
        self.decoder = Decoder(config)

    def set_scales(self, scales) -> None:
        """Give a conditioned network its normalisation's scales (per band)."""
        self.decoder.scales.copy_(torch.as_tensor(scales, dtype=torch.float32))

    def encoder_input(self, x: torch.Tensor, psf: torch.Tensor | None, variance: torch.Tensor | None
                      ) -> torch.Tensor:
        """Normalised images with the condition channels of a conditioned network appended."""
        if not self.config.conditioned:
            return x
        if psf is None or variance is None:
            raise ValueError("This network is PSF- and noise-aware: give it each stamp's PSF and variance.")
        maps = condition_maps(psf, variance, self.decoder.scales, self.config.stamp_size)
        return torch.cat([x, maps.to(x.dtype).contiguous(memory_format=torch.channels_last)], dim=1)

    def forward(self, x: torch.Tensor, sample: bool = True, psf: torch.Tensor | None = None,
                variance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_std = self.encoder(self.encoder_input(x, psf, variance))
        z = mean + torch.randn_like(mean) * log_std.exp() if sample else mean
        return self.decoder(z, psf), mean, log_std


class Deblender(nn.Module):
    """Encoder of blends (bands [+ conditions] + neighbour map) feeding the VAE's frozen decoder."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, config.n_bands + config.condition_channels + 1)
        self.decoder = Decoder(config)

    encoder_input = VAE.encoder_input

    def init_from_vae(self, vae: VAE) -> None:
        """Copy the VAE's decoder (and freeze it) and its encoder (the neighbour channel starts at zero)."""
        self.decoder.load_state_dict(vae.decoder.state_dict())
        for p in self.decoder.parameters():
            p.requires_grad_(False)
        state = vae.encoder.state_dict()
        first = state["features.0.weight"]
        state["features.0.weight"] = torch.cat([first, torch.zeros_like(first[:, :1])], dim=1)
        self.encoder.load_state_dict(state)

    def forward(self, x: torch.Tensor, neighbours: torch.Tensor, sample: bool = False,
                psf: torch.Tensor | None = None, variance: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = torch.cat([self.encoder_input(x, psf, variance), neighbours.to(x.dtype)], dim=1)
        mean, log_std = self.encoder(inputs)
        z = mean + torch.randn_like(mean) * log_std.exp() if sample else mean
        return self.decoder(z, psf), mean, log_std


NEIGHBOUR_SIGMA = 1.5  # pixels


def neighbour_maps(positions: np.ndarray, size: int) -> np.ndarray:
    """Neighbour-map channels: a unit Gaussian (sigma 1.5 px) at every neighbour peak of each stamp.

    Parameters
    ----------
    positions : `numpy.ndarray`, shape (batch, k, 2)
        (x, y) of up to k neighbour peaks per stamp, 0-based stamp pixels; NaN rows are absent peaks.
    size : `int`
        Stamp side.

    Returns
    -------
    maps : `numpy.ndarray`, shape (batch, 1, size, size), float32
    """
    grid = np.arange(size, dtype=np.float32)
    x = np.nan_to_num(positions[..., 0], nan=-1e4).astype(np.float32)
    y = np.nan_to_num(positions[..., 1], nan=-1e4).astype(np.float32)
    gx = np.exp(-0.5 * ((grid[None, None, :] - x[..., None]) / NEIGHBOUR_SIGMA) ** 2)
    gy = np.exp(-0.5 * ((grid[None, None, :] - y[..., None]) / NEIGHBOUR_SIGMA) ** 2)
    return np.einsum("bky,bkx->byx", gy, gx)[:, None].astype(np.float32)

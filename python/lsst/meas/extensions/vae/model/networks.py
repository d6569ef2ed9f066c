"""The networks: a convolutional VAE of isolated galaxies and the deblender encoder (Arcelin et al. 2021).

Encoder: per block a 3x3 convolution and a 3x3 stride-2 convolution, each followed by PReLU; then a
dense layer and a linear layer giving the mean and log standard deviation of a diagonal Gaussian in the
latent space.  Decoder: the mirror image (dense layers, then per block a 4x4 stride-2 transposed
convolution and a 3x3 convolution), a final 3x3 convolution to the bands, centre-cropped to the stamp.

The deblender is an encoder of the same shape whose input also has a *neighbour map* channel (Gaussian
blobs at the other detected peaks of the stamp), trained on blends to land on the central galaxy's code;
it reuses the VAE's decoder, frozen.
"""

from __future__ import annotations

__all__ = ["NetworkConfig", "PRESETS", "Encoder", "Decoder", "VAE", "Deblender", "neighbour_maps"]

import dataclasses
import math

import numpy as np
import torch
from torch import nn


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
    """

    bands: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")
    stamp_size: int = 59
    filters: tuple[int, ...] = (16, 32, 64, 128)
    dense: int = 256
    latent: int = 32

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    @property
    def bottleneck(self) -> int:
        """Side of the smallest feature map."""
        size = self.stamp_size
        for _ in self.filters:
            size = math.ceil(size / 2)
        return size


# `paper`: Arcelin et al. (2021) encoder (32/64/128/256 filters, dense 256, latent 32).
# `small`: a quarter of the filters' products; trains on 2 CPU cores (the shipped default).
PRESETS = {
    "paper": {"filters": (32, 64, 128, 256), "dense": 256, "latent": 32},
    "small": {"filters": (16, 32, 64, 128), "dense": 256, "latent": 32},
}


class Encoder(nn.Module):
    """Images (batch, channels, size, size) to latent mean and log standard deviation."""

    def __init__(self, config: NetworkConfig, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for f in config.filters:
            layers += [nn.Conv2d(channels, f, 3, padding=1), nn.PReLU(f),
                       nn.Conv2d(f, f, 3, stride=2, padding=1), nn.PReLU(f)]
            channels = f
        self.features = nn.Sequential(*layers)
        flat = channels * config.bottleneck**2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, config.dense), nn.PReLU(),
                                  nn.Linear(config.dense, 2 * config.latent))
        self.latent = config.latent

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(self.features(x))
        return h[:, : self.latent], h[:, self.latent:].clamp(-8.0, 2.0)


class Decoder(nn.Module):
    """Latent codes to images (batch, bands, size, size), in normalised units."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        filters = config.filters[::-1]
        self.start = filters[0]
        self.side = config.bottleneck
        self.stamp_size = config.stamp_size
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

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z).view(-1, self.start, self.side, self.side)
        out = self.features(h)
        lo = (out.shape[-1] - self.stamp_size) // 2
        return out[:, :, lo:lo + self.stamp_size, lo:lo + self.stamp_size]


class VAE(nn.Module):
    """Variational autoencoder of isolated galaxies."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, config.n_bands)
        self.decoder = Decoder(config)

    def forward(self, x: torch.Tensor, sample: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_std = self.encoder(x)
        z = mean + torch.randn_like(mean) * log_std.exp() if sample else mean
        return self.decoder(z), mean, log_std


class Deblender(nn.Module):
    """Encoder of blends (bands + neighbour map) feeding the VAE's frozen decoder."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, config.n_bands + 1)
        self.decoder = Decoder(config)

    def init_from_vae(self, vae: VAE) -> None:
        """Copy the VAE's decoder (and freeze it) and its encoder (the neighbour channel starts at zero)."""
        self.decoder.load_state_dict(vae.decoder.state_dict())
        for p in self.decoder.parameters():
            p.requires_grad_(False)
        state = vae.encoder.state_dict()
        first = state["features.0.weight"]
        state["features.0.weight"] = torch.cat([first, torch.zeros_like(first[:, :1])], dim=1)
        self.encoder.load_state_dict(state)

    def forward(self, x: torch.Tensor, neighbours: torch.Tensor, sample: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_std = self.encoder(torch.cat([x, neighbours], dim=1))
        z = mean + torch.randn_like(mean) * log_std.exp() if sample else mean
        return self.decoder(z), mean, log_std


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

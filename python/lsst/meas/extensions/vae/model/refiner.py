"""A learned refinement of the deblender's latent codes (iterative amortised inference, issue 12).

The latent fit moves every galaxy's code down the gradient of its parent's chi-square for 60 Adam steps.
The refiner does in a few steps what those steps do: a small network looks at a galaxy's stamp (its
parent's pixels minus the other galaxies' current models), its current model, the residual between the
two in units of the noise and where the neighbours are, and returns a step of its latent code and of its
log-amplitude per band.  Applied a few times through the frozen decoder, it is trained on blends to land
on the noiseless truth (`deblend.refine.train_refiner`): unlike the fit, it learns what the decoder gets
wrong on average (the too-faint models of faint galaxies, the light a neighbour left in the stamp), and
it costs one small network pass and one decoder pass per step instead of 60 decoder passes with their
gradients.

The refiner starts as the identity (its last layer is zero), so an untrained refiner leaves the encoder's
models as they are.
"""

from __future__ import annotations

__all__ = ["RefinerConfig", "Refiner", "refiner_inputs", "AMPLITUDE_LIMIT"]

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from .networks import _conv_features, bottleneck_side
from .normalization import Normalization, asinh

# The refined log-amplitude of a band stays within +-1 (a factor e either way): the decoder's fluxes are
# off by tens of per cent, not by factors of many.
AMPLITUDE_LIMIT = 1.0


@dataclasses.dataclass(frozen=True)
class RefinerConfig:
    """Shape of a refiner.

    Attributes
    ----------
    bands : `tuple` [`str`]
        Bands of the deblender it refines, in order.
    stamp_size : `int`
        Stamp side, pixels.
    latent : `int`
        The deblender's latent dimension.
    filters : `tuple` [`int`]
        Filters of each convolution block.
    dense : `int`
        Width of the dense layers.
    conditioned : `bool`
        The deblender is PSF- and noise-aware: the refiner sees the same condition channels.
    """

    bands: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")
    stamp_size: int = 59
    latent: int = 32
    filters: tuple[int, ...] = (16, 32, 64)
    dense: int = 128
    conditioned: bool = False

    @property
    def in_channels(self) -> int:
        """Stamp, model and residual per band, the neighbour map, and the conditions' PSF and noise."""
        n = len(self.bands)
        return 3 * n + 1 + (2 * n if self.conditioned else 0)

    @property
    def bottleneck(self) -> int:
        """Side of the smallest feature map."""
        return bottleneck_side(self.stamp_size, len(self.filters))


class Refiner(nn.Module):
    """Inputs (batch, `RefinerConfig.in_channels`, s, s) and codes (batch, latent) to a step of the code
    (batch, latent), in units of the latent spread, and of the log-amplitudes (batch, bands)."""

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__()
        self.config = config
        self.features = _conv_features(config.in_channels, config.filters)
        flat = config.filters[-1] * config.bottleneck**2
        self.image = nn.Sequential(nn.Flatten(), nn.Linear(flat, config.dense), nn.PReLU())
        self.step = nn.Sequential(nn.Linear(config.dense + config.latent, config.dense), nn.PReLU(),
                                  nn.Linear(config.dense, config.latent + len(config.bands)))
        nn.init.zeros_(self.step[-1].weight)  # the identity to start with: no step
        nn.init.zeros_(self.step[-1].bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.step(torch.cat([self.image(self.features(x)), z.to(x.dtype)], dim=1))
        latent = self.config.latent
        return h[:, :latent], h[:, latent:]


def refiner_inputs(stamps: torch.Tensor, models: torch.Tensor, variance: torch.Tensor, factors: torch.Tensor,
                   norm: Normalization, neighbours: torch.Tensor, conditions: torch.Tensor | None = None,
                   elementwise: Callable[[Callable, torch.Tensor], torch.Tensor] | None = None
                   ) -> torch.Tensor:
    """The refiner's input channels.

    Parameters
    ----------
    stamps : `torch.Tensor` (n, bands, s, s)
        Each galaxy's stamp of its parent's pixels minus the other galaxies' models, electrons.
    models : `torch.Tensor` (n, bands, s, s)
        Its current model, electrons.
    variance : `torch.Tensor` (n, bands)
        Noise variance per pixel, electrons^2.
    factors : `torch.Tensor` (n,)
        The stamps' amplitude factors (`Normalization.stamp_factors`): stamp and model are divided by them
        before they are normalised, as for the encoder.
    norm : `Normalization`
    neighbours : `torch.Tensor` (n, 1, s, s)
        The neighbour map (`networks.neighbour_maps`).
    conditions : `torch.Tensor` (n, 2 * bands, s, s), optional
        The condition channels of a PSF- and noise-aware deblender (`networks.condition_maps`).
    elementwise : callable, optional
        ``elementwise(function, tensor)`` applies an element-wise function (the normalisation); the
        deterministic CPU path applies it in fixed chunks (`deblend.network.VaeDeblender`).

    Returns
    -------
    inputs : `torch.Tensor` (n, `RefinerConfig.in_channels`, s, s)
    """
    apply = elementwise or (lambda function, x: function(x))
    scale = factors[:, None, None, None]
    residual = (stamps - models) / torch.sqrt(variance.clamp_min(1e-12))[:, :, None, None]
    channels = [apply(norm.forward, stamps / scale), apply(norm.forward, models / scale),
                apply(asinh, residual), neighbours.to(stamps.dtype)]
    if conditions is not None:
        channels.append(conditions.to(stamps.dtype))
    return torch.cat(channels, dim=1)

"""Image normalisations for the networks, invertible, with their constants stored beside the weights.

- ``asinh``: ``arcsinh(x / (scale_b * sigma_b))``, sigma_b the background noise of band b: linear below a
  few sigma, logarithmic above, so faint outskirts and bright cores both weigh in the loss.
- ``paper``: Arcelin et al. (2021), ``tanh(arcsinh(x / (I_b / 2.5)))``, I_b the mean maximum pixel of
  each band over the training set; bounded in (-1, 1).

docs/benchmarks.md compares the two.

Optionally (``amplitude_reference`` > 0, model v3) a stamp brighter than a reference is divided down to it
before either: the factor ``a = max(1, F / amplitude_reference)``, with ``F`` the stamp's central 9 x 9
pixels summed over bands in units of each band's scale, divides the image and its noise sigma, and
multiplies the network's model back.  A galaxy ten times brighter then looks to the network like the same
galaxy at the reference brightness with ten times less noise (which a noise-aware network is told): the
models scale with the data exactly instead of being drawn from five decades of flux through one latent
code, which regressed bright galaxies' fluxes to a typical one (docs/model.md).
"""

from __future__ import annotations

__all__ = ["Normalization", "asinh"]

import dataclasses
import json

import numpy as np
import torch

_KINDS = ("asinh", "paper")
# Side of the central box whose flux sets a stamp's amplitude factor (pixels): the galaxy's core, little of
# its neighbours'.
AMPLITUDE_BOX = 9


def asinh(x: torch.Tensor) -> torch.Tensor:
    """``torch.asinh(x)``, 3-4 times faster on the CPU outside autograd.

    torch's CPU ``asinh`` is not vectorised (1.0 ms against 0.27 ms for 4 stamps of 6 x 59 x 59 on one
    core, docs/benchmarks.md); ``sign(x) log1p(a + a^2 / (1 + sqrt(a^2 + 1)))``, ``a = |x|``, is made of
    vectorised functions and as accurate (1.0e-7 relative to float64 against torch's 1.1e-7).  Where
    gradients are taken torch's own is used (its derivative at 0 is 1, the formula's through ``|x|`` 0).
    """
    if x.requires_grad and torch.is_grad_enabled():
        return torch.asinh(x)
    a = x.abs()
    square = a * a
    y = torch.log1p(a + square / (1 + torch.sqrt(square + 1)))
    overflow = torch.isinf(square)
    if overflow.any():  # |x| above 1.8e19: asinh(x) = log(2 |x|) to float32 precision
        y = torch.where(overflow, torch.log(a) + np.log(2.0), y)
    return torch.copysign(y, x)


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-band invertible scaling of images (bands on axis -3).

    Attributes
    ----------
    kind : `str`
        ``asinh`` or ``paper``.
    scales : `tuple` [`float`]
        Per-band divisor applied before ``arcsinh`` (electrons).
    amplitude_reference : `float`
        Core flux (in units of the scales) above which stamps are divided down to it (`stamp_factors`);
        0: no per-stamp factor.
    """

    kind: str
    scales: tuple[float, ...]
    amplitude_reference: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Unknown normalization {self.kind!r}; use one of {_KINDS}.")
        if any(s <= 0 for s in self.scales):
            raise ValueError("Normalization scales must be positive.")
        if not self.amplitude_reference >= 0:
            raise ValueError("The amplitude reference must be >= 0.")

    @classmethod
    def asinh(cls, noise_sigma: np.ndarray, softening: float = 1.0, amplitude_reference: float = 0.0
              ) -> Normalization:
        """``arcsinh(x / (softening * sigma_b))``, with stamps above ``amplitude_reference`` divided down."""
        return cls("asinh", tuple(float(softening * s) for s in noise_sigma), float(amplitude_reference))

    @classmethod
    def paper(cls, mean_max_pixel: np.ndarray) -> Normalization:
        """Arcelin et al.: ``tanh(arcsinh(x / (I_b / 2.5)))``."""
        return cls("paper", tuple(float(m / 2.5) for m in mean_max_pixel))

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.scales, dtype=x.dtype, device=x.device).view(-1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Electrons to network units."""
        y = asinh(x / self._scale(x))
        return torch.tanh(y) if self.kind == "paper" else y

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Network units to electrons."""
        if self.kind == "paper":
            y = torch.atanh(y.clamp(-1 + 1e-6, 1 - 1e-6))
        return torch.sinh(y) * self._scale(y)

    def stamp_factors(self, x: torch.Tensor) -> torch.Tensor:
        """Each stamp's amplitude factor ``max(1, F / amplitude_reference)`` (ones when there is no
        reference).

        Parameters
        ----------
        x : `torch.Tensor`, (batch, bands, s, s)
            Stamps in electrons, the galaxy on the central pixel.

        Returns
        -------
        factors : `torch.Tensor`, (batch,), float32
        """
        if self.amplitude_reference <= 0:
            return torch.ones(len(x), dtype=torch.float32, device=x.device)
        c, h = x.shape[-1] // 2, AMPLITUDE_BOX // 2
        core = x[..., c - h:c + h + 1, c - h:c + h + 1].double() / self._scale(x).double()
        # Summed per stamp in float64: a stamp's factor does not depend on the batch it is in.
        flux = core.sum(dim=(1, 2, 3))
        return (flux / self.amplitude_reference).clamp_min(1.0).float()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Normalization:
        values = json.loads(text)
        return cls(values["kind"], tuple(values["scales"]), float(values.get("amplitude_reference", 0.0)))

"""Image normalisations for the networks, invertible, with their constants stored beside the weights.

- ``asinh``: ``arcsinh(x / (scale_b * sigma_b))``, sigma_b the background noise of band b: linear below a
  few sigma, logarithmic above, so faint outskirts and bright cores both weigh in the loss.
- ``paper``: Arcelin et al. (2021), ``tanh(arcsinh(x / (I_b / 2.5)))``, I_b the mean maximum pixel of
  each band over the training set; bounded in (-1, 1).

docs/benchmarks.md compares the two.
"""

from __future__ import annotations

__all__ = ["Normalization"]

import dataclasses
import json

import numpy as np
import torch

_KINDS = ("asinh", "paper")


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-band invertible scaling of images (bands on axis -3).

    Attributes
    ----------
    kind : `str`
        ``asinh`` or ``paper``.
    scales : `tuple` [`float`]
        Per-band divisor applied before ``arcsinh`` (electrons).
    """

    kind: str
    scales: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Unknown normalization {self.kind!r}; use one of {_KINDS}.")
        if any(s <= 0 for s in self.scales):
            raise ValueError("Normalization scales must be positive.")

    @classmethod
    def asinh(cls, noise_sigma: np.ndarray, softening: float = 1.0) -> Normalization:
        """``arcsinh(x / (softening * sigma_b))``."""
        return cls("asinh", tuple(float(softening * s) for s in noise_sigma))

    @classmethod
    def paper(cls, mean_max_pixel: np.ndarray) -> Normalization:
        """Arcelin et al.: ``tanh(arcsinh(x / (I_b / 2.5)))``."""
        return cls("paper", tuple(float(m / 2.5) for m in mean_max_pixel))

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.scales, dtype=x.dtype, device=x.device).view(-1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Electrons to network units."""
        y = torch.asinh(x / self._scale(x))
        return torch.tanh(y) if self.kind == "paper" else y

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Network units to electrons."""
        if self.kind == "paper":
            y = torch.atanh(y.clamp(-1 + 1e-6, 1 - 1e-6))
        return torch.sinh(y) * self._scale(y)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Normalization:
        values = json.loads(text)
        return cls(values["kind"], tuple(values["scales"]))

"""Measurement and scoring: HSM shapes, fluxes and magnitudes, SNR, blendedness."""

from .photometry import *  # noqa: F401, F403
from .shape import *  # noqa: F401, F403

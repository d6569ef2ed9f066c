"""Deblending core on arrays: stamps per peak, iterative deblending, centroid refinement, flux
conservation, and batched network inference.  No Rubin types."""

from .field import *  # noqa: F401, F403

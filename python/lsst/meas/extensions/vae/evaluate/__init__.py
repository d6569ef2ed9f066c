"""The scoring harness, above the deblending core: simulated test blends through the deblender, scored
against their truth (`central.evaluate`, ``vae-deblend evaluate``), with plots.  The pure measurements it
uses (shapes, photometry, statistics) live in `lsst.meas.extensions.vae.measure`, which the simulator
uses too and which imports nothing above it."""

from .central import *  # noqa: F401, F403

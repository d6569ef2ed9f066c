"""Pure measurements: detection (footprints and peaks), HSM shapes, fluxes and magnitudes, SNR,
blendedness, binned statistics.  The simulator uses them for its truth, so they import nothing above them
(the scoring harness that runs the deblender is `lsst.meas.extensions.vae.evaluate`)."""

from .photometry import *  # noqa: F401, F403
from .shape import *  # noqa: F401, F403

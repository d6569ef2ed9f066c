"""GalSim simulation: galaxy catalogues, blended stamps with truth, whole coadd patches, datasets."""

from .blend import *  # noqa: F401, F403
from .catalog import *  # noqa: F401, F403
from .render import *  # noqa: F401, F403

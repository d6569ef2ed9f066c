"""The standalone VAE deblending pipeline: PyPI middleware only, no afw, no skymap.

- Storage classes ``VaeCoadd`` (`Coadd`, FITS), ``VaeFootprints`` (`FootprintImage`, FITS) and
  ``VaeModelData`` (`VaeModelData`, HDF5), known to a butler through `use_butler_config` or a
  repository seeded with `seed_config`; catalogues are ``ArrowAstropy``.
- `make_repo`: a repository of simulated patches (``deep_coadd``, ``truth_catalog``).
- Tasks, with DRP's labels in ``pipelines/demo.yaml``: `DetectCoaddPeaksTask` (``detectCoaddPeaks``),
  `VaeDeblendTask` (``deblendCoaddFootprints``), `MeasureObjectUnforcedTask` (``measureObjectUnforced``);
  `ScarletDeblendTask` (scarlet2, the same connections) and `TruthComparisonTask` for
  ``pipelines/compare.yaml``.
- `run_pipetask` and `run_demo`: the pipeline end to end on a simulated patch, scored against truth.
"""

from .butler_config import *  # noqa: F401, F403
from .compare_task import *  # noqa: F401, F403
from .coadd import *  # noqa: F401, F403
from .deblend_task import *  # noqa: F401, F403
from .demo import *  # noqa: F401, F403
from .detect_task import *  # noqa: F401, F403
from .ids import *  # noqa: F401, F403
from .measure_task import *  # noqa: F401, F403
from .models import *  # noqa: F401, F403
from .repo import *  # noqa: F401, F403
from .runner import *  # noqa: F401, F403
from .scarlet_task import *  # noqa: F401, F403

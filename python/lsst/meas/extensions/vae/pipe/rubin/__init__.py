"""The drop-in DRP deblending task for the Rubin stack (`VaeDeblendCoaddTask`).

Importing this package needs no afw: the array parts (`blends`, `modelData`) load eagerly; the VAE's
sub-config (``vaeConfig``, pex_config only) and the model-data wrappers (``scarletData``, which import
scarlet's io when called) import without afw; the task, its config and connections (module
``deblendTask``, which imports afw, meas_base and scarlet) load on first attribute access.
"""

from __future__ import annotations

import importlib

from .blends import *  # noqa: F401, F403
from .modelData import *  # noqa: F401, F403

_TASK_NAMES = ("VaeDeblendCoaddTask", "VaeDeblendCoaddConfig", "VaeDeblendCoaddConnections")


def __getattr__(name: str):
    if name in _TASK_NAMES:
        return getattr(importlib.import_module(".deblendTask", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_TASK_NAMES))

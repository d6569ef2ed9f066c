"""Galaxy deblending with variational autoencoders, as an LSST Science Pipelines plugin.

Sub-packages: ``sim`` (GalSim blends, patches and datasets), ``measure`` (shapes, fluxes, SNR,
blendedness), and the survey definitions in ``surveys``.
"""

__version__ = "0.1.0"

_RUBIN_TASK_NAMES = ("VaeDeblendCoaddTask", "VaeDeblendCoaddConfig", "VaeDeblendCoaddConnections")


def __getattr__(name: str):
    # The drop-in DRP task needs afw: import it only when asked for (inside the Rubin stack).
    if name in _RUBIN_TASK_NAMES:
        from .pipe.rubin import deblendTask

        return getattr(deblendTask, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

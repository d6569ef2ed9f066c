"""Galaxy deblending with variational autoencoders, as an LSST Science Pipelines plugin.

Sub-packages: ``sim`` (GalSim blends, patches and datasets), ``measure`` (shapes, fluxes, SNR,
blendedness), and the survey definitions in ``surveys``.
"""

__version__ = "0.1.0"

"""Pipeline tasks around the deblending core.

- ``standalone``: runs with the PyPI middleware alone (no afw): its own coadd, footprint and model-data
  storage classes, detection, the VAE deblend task and measurement (``pipelines/demo.yaml``).
- ``rubin``: the drop-in deblend task for DRP (afw types at the edge).

Importing this package imports nothing heavy; import the sub-package you need.
"""

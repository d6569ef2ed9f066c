"""Pipeline tasks around the deblending core.

``standalone`` runs with the PyPI middleware alone (no afw): its own coadd, footprint and model-data
storage classes, detection, the VAE deblend task and measurement.  Importing this package imports
nothing heavy; import the sub-package you need.
"""

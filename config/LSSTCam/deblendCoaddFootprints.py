# Overrides of VaeDeblendCoaddTask for LSSTCam DRP (label deblendCoaddFootprints), applied with
#   -C deblendCoaddFootprints:$MEAS_EXTENSIONS_VAE_DIR/config/LSSTCam/deblendCoaddFootprints.py
# The shipped weights know the LSST bands u g r i z y; the coadds are in nJy (their PhotoCalib is used
# for the units). The skip limits, mask planes and sky-object columns are scarlet's LSSTCam defaults, in
# scarlet's own sub-config, so that scarlet's overrides keep working.
config.vae.weights = "lsst"
config.vae.batchSize = 0  # 64 stamps per call on a CPU, 256 on a GPU
config.vae.refineSteps = 2  # the learned refinement (docs/benchmarks.md)
config.vae.iterations = 2
config.vae.modelFloor = 0.1
config.vae.doConserveFlux = False  # measurement re-distributes the flux of its own image
config.multibandDeblend.maxNumberOfPeaks = 600
config.multibandDeblend.maxFootprintArea = 2_000_000
config.multibandDeblend.maxAreaTimesPeaks = 1_000_000_000
config.multibandDeblend.badMask = ["BAD", "NO_DATA", "SAT", "SUSPECT", "EDGE"]
config.multibandDeblend.pseudoColumns = ["merge_peak_sky", "sky_source"]
config.multibandDeblend.persistIsolated = True
config.multibandDeblend.catchFailures = True

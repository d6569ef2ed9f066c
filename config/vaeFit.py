# The VAE's accurate setting: the encoder's codes, then a joint fit of all the codes of a blend (and a
# free amplitude per galaxy and band) through the frozen decoder to the blend's pixels, with the variance
# plane's noise (weights/lsst.md). About a second per blend on a CPU; use a GPU node (config.vae.device).
# Apply with
#   -C deblendCoaddFootprints:$MEAS_EXTENSIONS_VAE_DIR/config/vaeFit.py
config.vae.fitSteps = 60
config.vae.refineSteps = 0
config.vae.fitLearningRate = 0.1
config.vae.fitPriorWeight = 1.0
config.vae.fitAmplitudeSigma = 0.3
# The fit cannot steal: each child's flux held around the encoder's (width: its own flux noise and 3 % of
# its flux in quadrature), and a child whose share of the chi-square got worse, or that took a worse
# neighbour's light, gets its encoder model back (docs/benchmarks.md, "Latent fit that cannot steal").
config.vae.fitFluxPrior = 1.0
config.vae.fitFluxFraction = 0.03
config.vae.fitAccept = True

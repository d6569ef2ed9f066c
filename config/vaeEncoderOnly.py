# The VAE's fast setting: each galaxy's latent code from the deblender's encoder, no latent fit
# (weights/lsst.md, "Two ways to run it"). Apply with
#   -C deblendCoaddFootprints:$MEAS_EXTENSIONS_VAE_DIR/config/vaeEncoderOnly.py
config.vae.fitSteps = 0
config.vae.refineSteps = 0
config.vae.iterations = 2

# The VAE with the learned refinement, the tasks' default since the eleventh session (this file states it
# for pipelines that want it explicit): the encoder's codes, then two steps of a small network trained to
# move each child's code and band amplitudes towards the truth from its stamp, model and residual
# (weights/lsst.refiner.safetensors, docs/model.md "Learned refinement"). About twice the encoder-only
# time (config/vaeEncoderOnly.py); replaces the latent fit. Apply with
#   -C deblendCoaddFootprints:$MEAS_EXTENSIONS_VAE_DIR/config/vaeRefine.py
config.vae.fitSteps = 0
config.vae.refineSteps = 2

"""Other deblenders run on the same data as the VAE: scarlet (scarlet2), and the adapter that lets
BlendingToolKit score this deblender with its own harness.

Array-level, like the deblending core: no Rubin types.  Optional dependencies (scarlet2, BTK) are imported
inside the modules that need them, so the package imports without them.
"""

"""Deblending core on arrays: stamps per peak, iterative deblending, centroid refinement, flux
conservation, and batched network inference.  No Rubin types."""

from .field import *  # noqa: F401, F403


def deblend_image(image, peaks, weights: str = "lsst", device=None, **kwargs):
    """One call for a user with a multi-band image and peak positions (as debvader's
    ``iterative_deblending``): the shipped weights (loaded on the first call, then kept) through
    `deblend_field`.

    Parameters
    ----------
    image : `numpy.ndarray` (bands, h, w)
        Background-subtracted image in electrons, bands as the weights expect (LSST ugrizy).
    peaks : `numpy.ndarray` (n, 2)
        Peak positions (x, y), pixels.
    weights : `str`
        Shipped weights name or ``.safetensors`` path.
    device : `str`, optional
        ``cpu`` or ``cuda`` (the GPU when there is one by default).
    **kwargs
        Passed to `deblend_field` (``parents``, ``footprints``, ``bad``, ``config``).

    Returns
    -------
    children, parents : `list` [`Child`], `list` [`Parent`]
    """
    from .network import load_deblender

    model = load_deblender(weights, device=device)  # loaded on the first call only
    return deblend_field(image, peaks, model, model.stamp_size, **kwargs)  # noqa: F405

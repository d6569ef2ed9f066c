"""Statistics of the VAE's latent space over real galaxies, stored with the weights.

The VAE is trained with a small KL weight, so the codes of the training galaxies do not spread like the
standard normal the KL term aims at: along some latent dimensions they spread over 0.3, along others over
4.  The latent fit (`deblend.fit.fit_latents`) takes its steps in these units.
"""

from __future__ import annotations

__all__ = ["latent_spread"]

import numpy as np
import torch
from tqdm import tqdm

from ..sim.dataset import BlendDataset
from .networks import VAE
from .normalization import Normalization


@torch.no_grad()
def latent_spread(vae: VAE, norm: Normalization, dataset: BlendDataset, n: int = 30_000, seed: int = 0,
                  block: int = 500, progress: bool = False) -> np.ndarray:
    """Standard deviation, per latent dimension, of the VAE encoder's means of isolated galaxies.

    The galaxies are the central galaxies of the first ``n`` blends of ``dataset``, alone (noiseless
    truth) with fresh noise of their blend's variance drawn from ``seed``.

    Returns
    -------
    spread : `numpy.ndarray` (latent,), float64
    """
    n = min(n, len(dataset))
    if n < 2:
        raise ValueError("Need at least two galaxies to measure the latent spread.")
    rng = np.random.default_rng(seed)
    codes = []
    shard_ends = np.cumsum(dataset.sizes)
    lo = 0
    with tqdm(total=n, desc="latent spread", unit="galaxy", disable=not progress) as bar:
        while lo < n:
            # Blocks never cross a shard boundary (BlendDataset.read reads within one shard).
            shard_end = int(shard_ends[np.searchsorted(shard_ends, lo, side="right")])
            hi = min(n, lo + block, shard_end)
            batch = dataset.read(lo, hi, truth=False)
            central = batch["central"]
            sigma = np.sqrt(batch["variance"]).astype(np.float32)[:, :, None, None]
            noisy = central + rng.standard_normal(central.shape, dtype=np.float32) * sigma
            noisy = torch.from_numpy(noisy)
            factors = norm.stamp_factors(noisy)  # bright stamps divided down, as the networks see them
            x = vae.encoder_input(norm.forward(noisy / factors[:, None, None, None]),
                                  torch.from_numpy(batch["psf"]),
                                  torch.from_numpy(batch["variance"]) / factors[:, None] ** 2)
            codes.append(vae.encoder(x)[0].float().numpy())
            bar.update(hi - lo)
            lo = hi
    return np.concatenate(codes).astype(np.float64).std(axis=0)

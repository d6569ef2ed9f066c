"""The network pass against its compute floor: FLOPs per stamp over the sgemm rate, measured in one run.

For a weights file (the shipped ones by default) this counts the floating-point operations of one stamp's
pass through the deblender's encoder and the decoder (torch's FLOP counter: convolutions, transposed
convolutions and matrix products, two operations per multiply-add; the element-wise activations, the
normalisation and a PSF-aware decoder's FFT convolution are not counted, so the floor is optimistic), then
measures on the same machine, with the same thread count and in the same run:

- the sgemm rate (float32 matrix product of two 2048 x 2048 matrices, the best of several repeats), the
  CPU's (or GPU's) practical peak for dense work;
- the time per stamp of the network pass (`VaeDeblender` on batches of stamps, as the tasks call it: the
  encoder, the decoder and the normalisation) for a few batch sizes.

The floor is FLOPs per stamp / sgemm rate; the ratio of the measured time to the floor says how far the
pass is from what the hardware gives (the issues ask for at most 2x).  Prints a table and writes JSON.

Usage::

    python bench/bench_network_floor.py [--weights lsst] [--threads 1] [--batches 16,64,256]
        [--out bench/output/network_floor.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from lsst.meas.extensions.vae.deblend.network import VaeDeblender
from lsst.meas.extensions.vae.model.networks import neighbour_maps


def count_flops(net: VaeDeblender, psf: torch.Tensor | None, variance: torch.Tensor | None) -> dict:
    """FLOPs of one stamp through the deblender's encoder and the decoder (batch of 4, divided by 4)."""
    batch = 4
    size, bands = net.stamp_size, len(net.bands)
    x = torch.zeros(batch, bands, size, size)
    maps = torch.from_numpy(neighbour_maps(np.full((batch, 1, 2), np.nan), size))
    out = {}
    with torch.no_grad():
        inputs = net.deblender.encoder_input(x, psf, variance)
        with FlopCounterMode(display=False) as counter:
            mean, _ = net.deblender.encoder(torch.cat([inputs, maps], dim=1))
        out["encoder"] = counter.get_total_flops() / batch
        with FlopCounterMode(display=False) as counter:
            net.deblender.decoder(mean, psf) if net.conditioned else net.deblender.decoder(mean)
        out["decoder"] = counter.get_total_flops() / batch
    out["total"] = out["encoder"] + out["decoder"]
    return out


def sgemm_rate(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Best float32 matrix-product rate (FLOP/s) over ``repeats`` products of two size x size matrices."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)  # warm-up
    best = np.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def pass_time(net: VaeDeblender, batch: int, psf: np.ndarray | None, variance: np.ndarray | None,
              repeats: int = 3) -> float:
    """Best seconds per stamp of the network call on ``batch`` stamps of noise."""
    rng = np.random.default_rng(0)
    size, bands = net.stamp_size, len(net.bands)
    stamps = rng.normal(0.0, 10.0, (batch, bands, size, size)).astype(np.float32)
    neighbours = np.full((batch, 1, 2), np.nan)
    kwargs = {} if psf is None else {"psf": psf, "variance": variance}
    net(stamps, neighbours, **kwargs)  # warm-up
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        net(stamps, neighbours, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="lsst", help="shipped weights name or .safetensors path")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the tasks' one per core)")
    parser.add_argument("--batches", default="16,64,256", help="stamps per network call, comma-separated")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/output/network_floor.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    net = VaeDeblender(args.weights, device=args.device, batch_size=max(batches))
    bands = len(net.bands)
    psf = variance = None
    psf_t = variance_t = None
    if net.conditioned:
        from lsst.meas.extensions.vae.sim.conditions import psf_image

        import galsim

        psf = np.repeat(psf_image(galsim.Kolmogorov(fwhm=0.7), 0.2)[None], bands, axis=0)
        variance = np.full(bands, 100.0, dtype=np.float32)
        psf_t = torch.from_numpy(np.repeat(psf[None], 4, axis=0))
        variance_t = torch.from_numpy(np.repeat(variance[None], 4, axis=0))
    flops = count_flops(net, psf_t, variance_t)
    rate = sgemm_rate(net.device)
    floor = flops["total"] / rate
    rows = []
    for batch in batches:
        seconds = pass_time(net, batch, psf, variance)
        rows.append({"batch": batch, "ms_per_stamp": 1e3 * seconds, "floor_ms_per_stamp": 1e3 * floor,
                     "ratio_to_floor": seconds / floor, "gflops_achieved": flops["total"] / seconds / 1e9})
    result = {"weights": str(args.weights), "conditioned": bool(net.conditioned), "threads": args.threads,
              "device": str(net.device), "machine": platform.processor() or platform.machine(),
              "mflop_per_stamp": {k: v / 1e6 for k, v in flops.items()},
              "sgemm_gflops": rate / 1e9, "rows": rows}
    print(f"network pass: {flops['total'] / 1e6:.1f} MFLOP per stamp (encoder {flops['encoder'] / 1e6:.1f}, "
          f"decoder {flops['decoder'] / 1e6:.1f}); sgemm {rate / 1e9:.1f} GFLOP/s on {args.threads} "
          f"thread(s); floor {1e3 * floor:.3f} ms per stamp")
    print("| stamps per call | ms per stamp | floor (ms) | time / floor | GFLOP/s achieved |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['batch']} | {row['ms_per_stamp']:.3f} | {row['floor_ms_per_stamp']:.3f} | "
              f"{row['ratio_to_floor']:.2f} | {row['gflops_achieved']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

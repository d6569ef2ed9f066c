"""A network on a diet: narrower decoders distilled from the shipped one, their accuracy against their cost.

The decoder is three quarters of the network pass's FLOPs (142 of 194 MFLOP per stamp) and runs four
times per object in the default deblend (two passes, two refinement steps). For each width divisor ``w``
this script builds a decoder of the shipped one's layout with its filters divided by ``w``, and trains it
(Adam, mean squared error in the network's asinh units) to give the shipped decoder's output for the
codes that the shipped encoder gives to the central galaxies of training-split blends, jittered by a
fraction of the latent spread (the refinement moves codes by such steps). The latent space, the encoder
and the refiner stay the shipped ones: only the decoder changes, so no retraining of the VAE is needed.
Then it runs `vae-deblend bench`'s scoring on validation-split blends (no figure of docs/benchmarks.md
comes from them) with the default deblend (two passes, two refinement steps) once with the shipped
decoder and once with each student, in one run, one thread, and prints each decoder's MFLOP per stamp,
its time per stamp and the accuracy it keeps.  Nothing is shipped from it: it measures.

Usage::

    python bench/bench_decoder_diet.py --widths 2,4 --minutes 20 [--train-blends 3000] [--val-blends 200]
        [--out bench/output/decoder_diet]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from lsst.meas.extensions.vae.deblend.network import VaeDeblender
from lsst.meas.extensions.vae.evaluate.bench import BenchConfig, run_bench, vae_deblender
from lsst.meas.extensions.vae.model.networks import Decoder
from lsst.meas.extensions.vae.sim.blend import BlendConfig, BlendMaker

# Jitter of the training codes, in units of the latent spread: the refinement's steps are of this order.
CODE_JITTER = 0.3


def training_codes(net: VaeDeblender, n_blends: int, seed: int) -> np.ndarray:
    """The encoder's codes of the central galaxies of ``n_blends`` training-split blends (training preset)."""
    maker = BlendMaker(BlendConfig.preset("training"))
    stamps, neighbours = [], []
    for index in tqdm(range(n_blends), desc="training blends", unit="blend"):
        blend = maker.make(seed, index, split="train")
        stamps.append(blend.image)
        central = np.asarray(blend.truth["is_central"], dtype=bool)
        others = np.stack([blend.truth["x"], blend.truth["y"]], axis=1)[~central]
        maps = np.full((8, 2), np.nan, dtype=np.float32)
        maps[: min(8, len(others))] = others[:8]
        neighbours.append(maps)
    codes, _ = net.encode(np.stack(stamps).astype(np.float32), np.stack(neighbours))
    return codes


def decoder_mflop(decoder: torch.nn.Module, latent: int) -> float:
    """MFLOP per stamp of a decoder (torch's FLOP counter, batch of 4)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        decoder(torch.zeros(4, latent))
    return counter.get_total_flops() / 4 / 1e6


def decoder_ms(decoder: torch.nn.Module, latent: int, batch: int = 64, repeats: int = 5) -> float:
    """Best ms per stamp of a decoder's forward pass on ``batch`` codes."""
    z = torch.randn(batch, latent)
    best = np.inf
    with torch.no_grad():
        decoder(z)
        for _ in range(repeats):
            start = time.perf_counter()
            decoder(z)
            best = min(best, time.perf_counter() - start)
    return 1e3 * best / batch


def distil(teacher: torch.nn.Module, student: torch.nn.Module, codes: np.ndarray, scale: np.ndarray,
           minutes: float, seed: int, batch: int = 64) -> dict:
    """Train ``student`` to give ``teacher``'s output for jittered ``codes``, for ``minutes``."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(student.parameters(), lr=1e-3)
    codes_t = torch.from_numpy(codes)
    scale_t = torch.from_numpy(scale.astype(np.float32))
    start, steps, losses = time.perf_counter(), 0, []
    student.train()
    while time.perf_counter() - start < 60 * minutes:
        rows = torch.from_numpy(rng.integers(0, len(codes), batch))
        z = codes_t[rows] + CODE_JITTER * scale_t * torch.randn(batch, codes.shape[1])
        with torch.no_grad():
            target = teacher(z)
        loss = torch.nn.functional.mse_loss(student(z), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        steps += 1
    student.eval()
    tail = losses[-200:]
    return {"steps": steps, "samples": steps * batch, "minutes": (time.perf_counter() - start) / 60,
            "final_mse": float(np.mean(tail))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="2,4", help="filter divisors of the students, comma-separated")
    parser.add_argument("--minutes", type=float, default=20.0, help="distillation time per student")
    parser.add_argument("--train-blends", type=int, default=3000)
    parser.add_argument("--val-blends", type=int, default=200)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/output/decoder_diet"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]

    net = VaeDeblender("lsst", device="cpu")
    teacher = net.deblender.decoder
    config = net.vae.config
    codes = training_codes(net, args.train_blends, args.seed)
    scale = net.latent_scale if net.latent_scale is not None else np.ones(config.latent, dtype=np.float32)
    rows = [{"decoder": "shipped", "width_divisor": 1, "mflop": decoder_mflop(teacher, config.latent),
             "ms_per_stamp": decoder_ms(teacher, config.latent)}]
    extra = {}
    for w in widths:
        student_config = dataclasses.replace(config, filters=tuple(max(1, f // w) for f in config.filters))
        student = Decoder(student_config)
        training = distil(teacher, student, codes, scale, args.minutes, args.seed + w)
        student = student.to(memory_format=torch.channels_last).requires_grad_(False)
        rows.append({"decoder": f"filters / {w}", "width_divisor": w, "filters": student_config.filters,
                     "mflop": decoder_mflop(student, config.latent),
                     "ms_per_stamp": decoder_ms(student, config.latent), "training": training})
        run = vae_deblender("lsst", refine_steps=2)
        run.net.deblender.decoder = student  # the same encoder, latent space and refiner
        extra[f"vae-refine-w{w}"] = run
    bench = BenchConfig(n=args.val_blends, seed=args.seed, deblenders=("vae-refine",), split="validation",
                        threads=args.threads)
    result = run_bench(bench, args.out, progress=True, extra=extra)
    for row in rows:
        name = "vae-refine" if row["width_divisor"] == 1 else f"vae-refine-w{row['width_divisor']}"
        entry = result["deblenders"][name]
        row["accuracy"] = {output: result["deblenders"][key]["all"] for output, key in
                           (("conserved", name), ("models", f"{name}:model"))}
        row["ms_per_blend"] = 1e3 * entry["seconds_per_blend_median"]
        row["ms_per_blend_batched"] = 1e3 * (entry.get("seconds_per_blend_batched") or np.nan)
    summary = {"rows": rows, "val_blends": args.val_blends, "train_blends": args.train_blends,
               "seed": args.seed, "threads": args.threads, "code_jitter": CODE_JITTER,
               "machine": platform.processor() or platform.machine()}
    (args.out / "decoder_diet.json").write_text(json.dumps(summary, indent=2, default=float))
    print("| decoder | MFLOP per stamp | ms per stamp (64 per call) | distillation | conserved abs(df/f) "
          "median / mean | > 1 | abs(dg) median / RMS | models abs(df/f) median / mean | ms per blend "
          "(100 per call) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        c, m = row["accuracy"]["conserved"], row["accuracy"]["models"]
        t = row.get("training")
        distilled = f"{t['samples']:,} samples, {t['minutes']:.1f} min, MSE {t['final_mse']:.2e}" if t else ""
        print(f"| {row['decoder']} | {row['mflop']:.1f} | {row['ms_per_stamp']:.2f} | {distilled} | "
              f"{c['flux_rel_abs_err_median']:.3f} / {c['flux_rel_abs_err_mean']:.3f} | "
              f"{100 * c['catastrophic_fraction']:.1f} % | {c['e_abs_err_median']:.3f} / "
              f"{c['e_err_rms']:.3f} | {m['flux_rel_abs_err_median']:.3f} / "
              f"{m['flux_rel_abs_err_mean']:.3f} | "
              f"{row['ms_per_blend']:.1f} ({row['ms_per_blend_batched']:.1f}) |")


if __name__ == "__main__":
    main()

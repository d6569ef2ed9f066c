"""Likelihood and normalisation of the VAE, compared by measurement at equal training time.

For each (likelihood, normalisation) pair, train the `small` VAE for the same wall-clock budget on the
same shards and seed, then reconstruct 1,000 isolated validation galaxies (fresh noise) and score the r
band: median and mean |df/f| and median |dg| (HSM) against the noiseless truth.

Usage::

    python bench/bench_likelihood.py --train runs/train --val runs/val --minutes 4 \
        [--out bench/output/likelihood.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from lsst.meas.extensions.vae.evaluate import central_metrics
from lsst.meas.extensions.vae.model.training import TrainConfig, network_output, train
from lsst.meas.extensions.vae.model.weights import load_model
from lsst.meas.extensions.vae.sim.dataset import BlendDataset

VARIANTS = (("normalized", "asinh"), ("gaussian", "asinh"), ("bce", "paper"), ("normalized", "paper"))


@torch.no_grad()
def reconstruct(run_dir: Path, val: BlendDataset, n: int) -> dict:
    vae, norm, meta = load_model(run_dir / "best.safetensors", kind="vae")
    batch = val.read(0, min(n, val.sizes[0]))
    central = batch["central"]
    rng = np.random.default_rng(7)
    sigma = np.sqrt(batch["variance"])[:, :, None, None]
    noisy = torch.from_numpy((central + rng.standard_normal(central.shape) * sigma).astype(np.float32))
    mean, _ = vae.encoder(norm.forward(noisy))
    models = norm.inverse(network_output(vae.decoder(mean), meta["likelihood"])).numpy()
    r = val.bands.index("r")
    x, y = batch["truth"]["x"][batch["galaxy_offset"]], batch["truth"]["y"][batch["galaxy_offset"]]
    rows = [central_metrics(models[k, r], central[k, r], (x[k], y[k])) for k in range(len(central))]
    df = np.array([row["df"] for row in rows])
    dg = np.hypot([row["dg1"] for row in rows], [row["dg2"] for row in rows])
    return {"median_abs_df": float(np.median(np.abs(df))), "mean_abs_df": float(np.mean(np.abs(df))),
            "median_abs_dg": float(np.nanmedian(dg)), "n": len(df)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="runs/train")
    parser.add_argument("--val", default="runs/val")
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("runs/likelihood"))
    parser.add_argument("--out", type=Path, default=Path("bench/output/likelihood.json"))
    args = parser.parse_args()
    val = BlendDataset(args.val)
    results = []
    for likelihood, normalization in VARIANTS:
        run_dir = args.work / f"{likelihood}_{normalization}"
        summary = train(TrainConfig(kind="vae", train_dir=args.train, val_dir=args.val, out_dir=str(run_dir),
                                    likelihood=likelihood, normalization=normalization, epoch_size=10000,
                                    max_minutes=args.minutes, patience=100, seed=0), progress=False)
        row = {"likelihood": likelihood, "normalization": normalization, "epochs": summary["epochs"],
               "minutes": summary["minutes"], **reconstruct(run_dir, val, args.n)}
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"{'likelihood':12s} {'norm':7s} {'epochs':>6s} {'med|df/f|':>9s} {'mean|df/f|':>10s} "
          f"{'med|dg|':>8s}")
    for row in results:
        print(f"{row['likelihood']:12s} {row['normalization']:7s} {row['epochs']:6d} "
              f"{row['median_abs_df']:9.4f} "
              f"{row['mean_abs_df']:10.4f} {row['median_abs_dg']:8.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "command": " ".join(sys.argv)}, indent=2) + "\n")


if __name__ == "__main__":
    main()

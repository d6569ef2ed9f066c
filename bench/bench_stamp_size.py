"""Choosing the default stamp size: how much light each size keeps, and what it costs.

For blends made as by default (`BlendConfig`: central r <= 25.3, neighbours 0.325-1.5" away), every
galaxy is drawn on a large 129x129 stamp; for each candidate stamp size we count

- the fraction of central galaxies losing more than 1 % (and 5 %) of their r-band flux outside the stamp;
- the fraction of neighbours losing more than 5 % (their light outside the stamp is unseen by a deblender
  centred on the central galaxy);
- the rendering time per blend and the network input size (pixels x bands).

Usage::

    python bench/bench_stamp_size.py [--n 2000] [--out bench/output/stamp_size.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from lsst.meas.extensions.vae.sim.blend import BlendConfig, BlendMaker

CANDIDATES = (33, 45, 47, 59, 65, 79)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("bench/output/stamp_size.json"))
    args = parser.parse_args()

    big = BlendMaker(BlendConfig(stamp_size=129))
    r = big.survey.band_names.index("r")
    central_total, central_in = [], {s: [] for s in CANDIDATES}
    neigh_total, neigh_in = [], {s: [] for s in CANDIDATES}
    for i in range(args.n):
        blend = big.make(0, i)
        img = blend.truth_images[:, r].astype(np.float64)
        flux = blend.truth["flux"][:, r]
        for s in CANDIDATES:
            lo = 64 - s // 2
            inside = img[:, lo:lo + s, lo:lo + s].sum(axis=(1, 2))
            central_in[s].append(inside[0])
            neigh_in[s].extend(inside[1:])
        central_total.append(flux[0])
        neigh_total.extend(flux[1:])
    central_total, neigh_total = np.array(central_total), np.array(neigh_total)

    rows = []
    for s in CANDIDATES:
        c_frac = np.array(central_in[s]) / central_total
        n_frac = np.array(neigh_in[s]) / neigh_total
        maker = BlendMaker(dataclasses.replace(BlendConfig(), stamp_size=s))
        start = time.perf_counter()
        for i in range(300):
            maker.make(1, i)
        ms = (time.perf_counter() - start) / 300 * 1e3
        rows.append({"stamp": s, "central_lose_gt_1pct": float(np.mean(c_frac < 0.99)),
                     "central_lose_gt_5pct": float(np.mean(c_frac < 0.95)),
                     "neighbour_lose_gt_5pct": float(np.mean(n_frac < 0.95)),
                     "ms_per_blend": ms, "input_values": 6 * s * s})
    print(f"{'stamp':>5s} {'central>1%':>10s} {'central>5%':>10s} {'neigh>5%':>9s} {'ms/blend':>9s} "
          f"{'inputs':>7s}")
    for row in rows:
        print(f"{row['stamp']:5d} {row['central_lose_gt_1pct']:10.4f} {row['central_lose_gt_5pct']:10.4f} "
              f"{row['neighbour_lose_gt_5pct']:9.4f} {row['ms_per_blend']:9.2f} {row['input_values']:7d}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "n": args.n, "command": " ".join(sys.argv)}, indent=2)
                        + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The server's step at 16 machines against 64, side by side in one run.

    python asv_bench/reduction_scale.py --data DIR [--sets A B] [--draws 4] [--repeat 3]

On the reference data (DIR as for small_shards.py) it fits
``DistributedMoERegressor(5)`` with its defaults (seed 0, serial backend) on
the given splits at M=16 and M=64, keeps their messages, and then times
``aggregate_messages`` on them as the estimator calls it (M=16 at the default
MM tolerance; M=64, where the shards are refined, at ``AUTO_REFINE_MM_TOL``),
alternating the two over ``--draws`` support draws, ``--repeat`` times. It
prints the mean time of each and their ratio, and the estimators'
``reduction_time_`` (every aggregation each made).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from small_shards import _load  # asv_bench/small_shards.py, beside this script

from fastmoe import DistributedMoERegressor
from fastmoe.distributed import AUTO_REFINE_MM_TOL
from fastmoe.server import aggregate_messages

MACHINES = (16, 64)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--sets", nargs="+", default=["A", "B"])
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    print("| set | aggregate_messages M=16 (s) | M=64 (s) | ratio "
          "| reduction_time_ M=16, M=64 (s) |")
    print("|---|---|---|---|---|")
    for prefix in args.sets:
        X, y, _, _, _ = _load(args.data, prefix)
        messages, reduction = {}, {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for M in MACHINES:
                idx = np.load(args.data / f"{prefix}_M{M}_machine_indices.npy")
                est = DistributedMoERegressor(5, backend="serial", random_state=0)
                est.fit_shards([(X[i], y[i]) for i in idx])
                messages[M], reduction[M] = est.messages_, est.reduction_time_
            times = {M: [] for M in MACHINES}
            for _ in range(args.repeat):
                for draw in range(args.draws):
                    for M in MACHINES:
                        tol = {"tol": AUTO_REFINE_MM_TOL} if M == 64 else {}
                        t0 = time.perf_counter()
                        aggregate_messages(messages[M], 5, random_state=draw, **tol)
                        times[M].append(time.perf_counter() - t0)
        a, b = np.mean(times[16]), np.mean(times[64])
        print(f"| {prefix} | {a:.3f} | {b:.3f} | {b / a:.2f}x | {reduction[16]:.2f}, "
              f"{reduction[64]:.2f} |", flush=True)


if __name__ == "__main__":
    main()

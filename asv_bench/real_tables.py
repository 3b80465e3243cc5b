"""Real tables: the distributed fit against the centralised one, per split.

    python asv_bench/real_tables.py [--tables diamonds cps1988 cpssw8 ...]
                                    [--experts 5 4 5 ...] [--splits 16 64 group]

The tables come from Debian's R data packages (tests/realdata.py: R's
ggplot2 and AER, written to CSV once by Rscript): by default the three the
code was tuned on (realdata.TABLES) and three tried first afterwards
(realdata.MORE_TABLES: CPSSW9204, STAR, txhousing, K = 4), and four tried
first after later changes (realdata.FRESH_TABLES: spData's house, mlmRev's
Chem97 and star, dplyr's storms, K = 4). For each table: a random
20% of the rows is held out; ``GaussianMoERegressor(K)`` (defaults) is fitted
on the rest; then ``DistributedMoERegressor(K)`` (defaults, serial backend)
on the same rows split at random into 16 and 64 machines and by the table's
group column. Printed per split: the test log-likelihood per row, distributed
minus centralised; the rounds and whether they converged; the rows left out;
the fastmoe warnings; the learning time (the slowest local fit, the server
and the rounds' slowest machines) and the wall time, with the centralised
fit's; and the CPU.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import realdata  # noqa: E402

from fastmoe import DistributedMoERegressor, GaussianMoERegressor  # noqa: E402


def cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
        return f"{name}{' (AVX-512)' if 'avx512f' in out else ''}"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def shards_of(table, train, split: str, seed: int = 1):
    X, y, g = table.X[train], table.y[train], table.groups[train]
    if split == "group":
        return [(X[g == k], y[g == k]) for k in np.unique(g)]
    order = np.random.default_rng(seed).permutation(len(y))
    return [(X[i], y[i]) for i in np.array_split(order, int(split))]


def fit_distributed(K: int, shards, **options):
    """``DistributedMoERegressor(K)`` with the defaults (serial backend,
    random_state 0, and ``options``) fitted on ``shards``: (the model, the
    warnings it raised, its wall seconds)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        model = DistributedMoERegressor(K, backend="serial", random_state=0,
                                        **options).fit_shards(shards)
    return model, said, time.perf_counter() - t0


def held_out_gap(model, central, X, y) -> float:
    """The held-out log-likelihood per row of ``model`` minus ``central``'s."""
    return float(model.score_samples(X, y).mean() - central.score_samples(X, y).mean())


def table_arguments(parser) -> None:
    """The ``--tables`` and ``--experts`` options (the three Gaussian tables
    and their K by default)."""
    parser.add_argument("--tables", nargs="+",
                        default=[*realdata.TABLES, *realdata.MORE_TABLES,
                                 *realdata.FRESH_TABLES])
    parser.add_argument("--experts", nargs="+", type=int,
                        default=[5, 4, 5, *realdata.MORE_TABLES.values(),
                                 *realdata.FRESH_TABLES.values()])


def tables(names, experts):
    """(name, K, table) for each table of ``names`` that loads; a row saying
    why for each that does not."""
    for name, K in zip(names, experts):
        why = realdata.why_missing(name)
        if why:
            print(f"| {name} | {K} | skipped: {why} |")
            continue
        yield name, K, realdata.load(name)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    table_arguments(parser)
    parser.add_argument("--splits", nargs="+", default=["16", "64", "group"])
    args = parser.parse_args(argv)
    print(f"CPU: {cpu()}")
    print("| table | K | split | dist - central (nats/test row) | rounds | converged | "
          "rows left out | warnings | learning s (central) | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, K, table in tables(args.tables, args.experts):
        train, test = realdata.split(table)
        t0 = time.perf_counter()
        central = GaussianMoERegressor(K, random_state=0).fit(table.X[train], table.y[train])
        t_central = time.perf_counter() - t0
        ll_central = central.score_samples(table.X[test], table.y[test]).mean()
        for split in args.splits:
            shards = shards_of(table, train, split)
            model, said, wall = fit_distributed(K, shards)
            gap = model.score_samples(table.X[test], table.y[test]).mean() - ll_central
            print(f"| {name} | {K} | {split} ({len(shards)}) | {gap:+.4f} | "
                  f"{len(model.refine_history_)} | {model.refine_converged_} | "
                  f"{model.excluded_rows_ + model.dropped_rows_} | {len(said)} | "
                  f"{model.learning_time_:.1f} ({t_central:.1f}) | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()

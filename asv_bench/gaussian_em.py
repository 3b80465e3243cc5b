"""The Gaussian centralised EM with and without its SQUAREM acceleration,
side by side in one run, on real tables.

    python asv_bench/gaussian_em.py [--tables diamonds cps1988 cpssw8]
                                    [--experts 5 4 5] [--seeds 0 1 2]

For each table (tests/realdata.py) the 80% training rows are fitted by
``fastmoe.fit_moe`` with its defaults from the seeds' starts, plain EM and
accelerated. Printed per fit: the seconds, the EM iterations, whether EM
said it converged, the training log-likelihood, and what EM left to gain:
the log-likelihood that EM reaches from the fit with ``tol=1e-12`` (the
accelerated EM, at most 5000 iterations, no split-merge move) minus the
fit's. A fit that stops where EM crawls declares convergence while that is
large. With the CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import realdata  # noqa: E402
from real_tables import cpu, table_arguments, tables  # noqa: E402

from fastmoe import fit_moe  # noqa: E402


def left_to_gain(X, y, K: int, fit) -> float:
    """The log-likelihood EM reaches from ``fit`` at tol=1e-12, minus fit's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        more = fit_moe(X, y, K, init=fit.params, tol=1e-12, max_iter=5000, split_merge=False)
    return more.log_likelihood - fit.log_likelihood


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    table_arguments(parser)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args(argv)
    print(f"CPU: {cpu()}")
    print("| table | K | seed | EM | seconds | iterations | converged | log-likelihood | "
          "left to gain |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, K, table in tables(args.tables, args.experts):
        train, _ = realdata.split(table)
        X, y = table.X[train], table.y[train]
        for seed in args.seeds:
            for accelerated in (False, True):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # reported: converged
                    fit = fit_moe(X, y, K, random_state=seed, accelerate=accelerated)
                seconds = time.perf_counter() - t0
                left = left_to_gain(X, y, K, fit)
                print(f"| {name} | {K} | {seed} | {'SQUAREM' if accelerated else 'plain'} | "
                      f"{seconds:.2f} | {fit.n_iter} | {fit.converged} | "
                      f"{fit.log_likelihood:.2f} | {left:.3f} |", flush=True)


if __name__ == "__main__":
    main()

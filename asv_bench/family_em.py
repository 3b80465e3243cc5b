"""The families' centralised EM with and without its SQUAREM acceleration
(docs/method.rst, section 11), side by side in one run.

    python asv_bench/family_em.py [--n 100000 --d 4 --K 3 --repeat 2]

For each family (Poisson, Bernoulli, Gamma) a simulated mixture
(fastmoe.datasets.make_moe_regression, seed 1) is fitted by fastmoe.fit_moe
from the same start (seed 0), plain EM and accelerated; prints the best
seconds of ``--repeat`` fits, the EM iterations and the log-likelihoods,
with the CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_tables import cpu  # noqa: E402

from fastmoe import fit_moe  # noqa: E402
from fastmoe.datasets import make_moe_regression  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--d", type=int, default=4)
    parser.add_argument("--K", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"CPU: {cpu()}; n = {args.n}, d = {args.d}, K = {args.K}")
    print("| family | EM | seconds | iterations | converged | log-likelihood |")
    print("|---|---|---|---|---|---|")
    for family in ("poisson", "bernoulli", "gamma"):
        X, y, _, _ = make_moe_regression(args.n, args.d, args.K, family=family, random_state=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # three iterations: the kernels loaded, untimed
            fit_moe(X[:300], y[:300], args.K, family=family, max_iter=3, random_state=0)
        for accelerated in (False, True):
            best = None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # reported: converged
                    fit = fit_moe(X, y, args.K, family=family, random_state=0,
                                  accelerate=accelerated)
                seconds = time.perf_counter() - t0
                best = seconds if best is None else min(best, seconds)
            print(f"| {family} | {'SQUAREM' if accelerated else 'plain'} | {best:.2f} | "
                  f"{fit.n_iter} | {fit.converged} | {fit.log_likelihood:.3f} |", flush=True)


if __name__ == "__main__":
    main()

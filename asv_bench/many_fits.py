"""fit_many against a loop of fit_moe, side by side on one machine.

2 000 data sets of 400 rows (d = 2, K = 2, drawn by make_moe_regression), three
of them degenerate (a constant response, three rows, a NaN). Prints both
times, their ratio, and how the optima compare.

    python asv_bench/many_fits.py [n_sets]
"""

import sys
import time
import warnings

import numpy as np
from real_tables import cpu

from fastmoe import fit_many, fit_moe
from fastmoe.datasets import make_moe_regression


def main(n_sets: int = 2000) -> None:
    sets = [make_moe_regression(400, 2, 2, random_state=i)[:2] for i in range(n_sets)]
    sets[5] = (sets[5][0], np.full(400, 3.0))
    sets[17] = (sets[17][0][:3], sets[17][1][:3])
    y = sets[40][1].copy()
    y[7] = np.nan
    sets[40] = (sets[40][0], y)
    fit_many(sets[:4], 2, random_state=0)  # numba's cache loaded, untimed
    t0 = time.perf_counter()
    many = fit_many(sets, 2, random_state=0)
    t_many = time.perf_counter() - t0
    loop = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for X, y in sets:
            try:
                loop.append(fit_moe(X, y, 2, random_state=0).log_likelihood)
            except ValueError:
                loop.append(np.nan)
    t_loop = time.perf_counter() - t0
    a = np.array([r.log_likelihood for r in many])
    b = np.array(loop)
    both = np.isfinite(a) & np.isfinite(b)
    gap = (a - b)[both] / 400
    print(f"CPU: {cpu()}")
    print(f"{n_sets} data sets: fit_many {t_many:.2f} s, loop of fit_moe {t_loop:.2f} s, "
          f"ratio {t_loop / t_many:.1f}")
    print(f"statuses not ok: {[(i, r.status) for i, r in enumerate(many) if not r.ok]}")
    print(f"log-likelihood per row, fit_many - fit_moe: median {np.median(gap):+.2g}, "
          f"{np.mean(np.abs(gap) < 1e-4):.1%} within 1e-4, {np.mean(gap < -1e-3):.1%} "
          f"below by more than 1e-3, {np.mean(gap > 1e-3):.1%} above")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)

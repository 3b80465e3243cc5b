"""Why each kernel is in the technology it is: the E-step with the expert
statistics written once more in numba (same chunked accumulators, same
arithmetic, one row at a time where the Cython kernel adds the outer products
four rows at a time) and timed side by
side with the Cython kernel fastmoe ships, in one run; plus the cost of the
first call in a fresh process for each (Cython: none; numba: the disk-cache
load).

    python asv_bench/kernel_choice.py [--n 100000 --d 10 --K 3 --repeat 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numba
import numpy as np
from numba import prange

from fastmoe import _kernels
from fastmoe._linalg import chunk_size, n_chunks, resolve_threads


@numba.njit(parallel=True, cache=True, nogil=True)
def numba_e_step(X, y, w, alpha, beta, var, log_resp, row_ll, stats, chunk):
    n, d = X.shape
    K = alpha.shape[0]
    q = d + 2
    lnorm = -0.5 * np.log(2.0 * np.pi * var)
    inv_var = 1.0 / var
    for c in prange(stats.shape[0]):
        S = stats[c]
        S[:] = 0.0
        g = np.empty(K)
        lj = np.empty(K)
        e = np.empty(K)
        z = np.empty(q)
        u = np.empty(S.shape[1])
        for i in range(c * chunk, min((c + 1) * chunk, n)):
            gmax = -np.inf
            jmax = -np.inf
            for k in range(K):
                s = alpha[k, 0]
                m = beta[k, 0]
                for j in range(d):
                    s += alpha[k, j + 1] * X[i, j]
                    m += beta[k, j + 1] * X[i, j]
                r = y[i] - m
                g[k] = s
                lj[k] = s + lnorm[k] - 0.5 * r * r * inv_var[k]
                gmax = max(gmax, g[k])
                jmax = max(jmax, lj[k])
            sg = 0.0
            sj = 0.0
            for k in range(K):
                sg += np.exp(g[k] - gmax)
                e[k] = np.exp(lj[k] - jmax)
                sj += e[k]
            lse = jmax + np.log(sj)
            row_ll[i] = lse - gmax - np.log(sg)
            for k in range(K):
                log_resp[i, k] = lj[k] - lse
            z[0] = y[i]  # the shipped kernel's order, z = (y, 1, x)
            z[1] = 1.0
            for j in range(d):
                z[j + 2] = X[i, j]
            t = 0
            for a in range(q):
                for b in range(a, q):
                    u[t] = z[a] * z[b]
                    t += 1
            for k in range(K):
                cw = w[i] * e[k] / sj
                for t in range(u.shape[0]):
                    S[k, t] += cw * u[t]


FIRST_CALL = """
import time, numpy as np
t = time.perf_counter()
{imp}
X = np.zeros((4, 2)); y = np.zeros(4); w = np.ones(4); a = np.zeros((2, 3)); v = np.ones(2)
lr = np.empty((4, 2)); ll = np.empty(4); st = np.empty((1, 2, 10))
{call}
print(time.perf_counter() - t)
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--K", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    n, d, K = args.n, args.d, args.K
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    w = np.ones(n)
    alpha, beta = rng.standard_normal((K, d + 1)), rng.standard_normal((K, d + 1))
    var = np.ones(K)
    chunk = chunk_size(n)
    q = d + 2
    outs = [(np.empty((n, K)), np.empty(n), np.empty((n_chunks(n, chunk), K, q * (q + 1) // 2)))
            for _ in range(2)]
    nt = resolve_threads(None)
    numba.set_num_threads(nt)

    def cy():
        _kernels.e_step(X, y, w, alpha, beta, var, *outs[0], chunk, nt)

    def nb():
        numba_e_step(X, y, w, alpha, beta, var, *outs[1], chunk)

    cy()
    nb()
    t_cy, t_nb = [], []
    for _ in range(args.repeat):
        for f, acc in ((cy, t_cy), (nb, t_nb)):
            t = time.perf_counter()
            f()
            acc.append(time.perf_counter() - t)
    same = np.allclose(outs[0][2].sum(0), outs[1][2].sum(0), rtol=1e-12)
    first_cy = subprocess.run([sys.executable, "-c", FIRST_CALL.format(
        imp="from fastmoe._kernels import e_step",
        call="e_step(X, y, w, a, a, v, lr, ll, st, 4, 1)")], capture_output=True, text=True)
    first_nb = subprocess.run([sys.executable, "-c", FIRST_CALL.format(
        imp="import sys; sys.path.insert(0, 'asv_bench'); from kernel_choice import numba_e_step",
        call="numba_e_step(X, y, w, a, a, v, lr, ll, st, 4)")], capture_output=True, text=True)
    print(f"fused E-step with statistics, n={n} d={d} K={K}, {nt} threads (same results: "
          f"{same})")
    print("| implementation | ms per call | first call in a new process (s) |")
    print("|---|---|---|")
    print(f"| Cython (shipped) | {min(t_cy) * 1e3:.1f} | {first_cy.stdout.strip()} |")
    print(f"| numba | {min(t_nb) * 1e3:.1f} | {first_nb.stdout.strip()} |")


if __name__ == "__main__":
    main()

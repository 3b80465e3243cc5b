"""One MM iteration of the OT reduction: fastmoe's fused pass against a numpy
implementation that materialises the S x L x K cost and plan tensors (the
structure of the authors' code, vectorised), timed side by side in one run.

    python asv_bench/compare_reduction.py [--S 20000 --M 16 --K 5 --d 20 --repeat 3]
                                          [--blas-threads 1]

BLAS runs on one thread for both by default, as ``aggregate()`` runs its MM
loop (``single_threaded_blas``): idle OpenBLAS threads busy-wait for a while
after each call and take the cores from the compiled pass, while the dense
tensors gain nothing from more BLAS threads (they are bound by memory).
``--blas-threads 0`` leaves BLAS at its default.
"""

from __future__ import annotations

import argparse
import time

import blas_threads  # asv_bench/blas_threads.py, beside this script
import numpy as np

from fastmoe import MoEParams
from fastmoe._linalg import resolve_threads, solve_psd
from fastmoe._reduction import _update, large_mixture, mm_pass, support_cache


def local_weights(mix, Z):
    """(S, L) w_l(x_s) = lambda_m pi_k^(m)(x_s), machine by machine."""
    W = np.empty((Z.shape[0], mix.gate.shape[0]))
    for m in range(mix.n_machines):
        lo, hi = mix.starts[m], mix.starts[m + 1]
        logits = Z @ mix.gate[lo:hi].T
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        W[:, lo:hi] = mix.lam[m] * e / e.sum(axis=1, keepdims=True)
    return W


def tensor_iteration(mix, Xs, beta, var):
    """Costs, argmin plan, objective and the exact KL update with dense tensors."""
    Z = np.column_stack([np.ones(Xs.shape[0]), Xs])
    W = local_weights(mix, Z)  # (S, L)
    ml = Z @ mix.expert.T  # (S, L)
    mk = Z @ beta.T  # (S, K)
    vl = mix.var
    C = 0.5 * (np.log(var[None, None, :] / vl[None, :, None]) + vl[None, :, None] / var
               + (mk[:, None, :] - ml[:, :, None]) ** 2 / var - 1.0)  # (S, L, K)
    K = beta.shape[0]
    P = W[:, :, None] * (np.argmin(C, axis=2)[:, :, None] == np.arange(K))  # (S, L, K)
    objective = float(np.sum(P * C))
    new_beta, new_var = beta.copy(), var.copy()
    for k in range(K):
        D = P[:, :, k].sum(axis=1)
        G = Z.T @ (D[:, None] * Z)
        b = Z.T @ (P[:, :, k] * ml).sum(axis=1)
        new_beta[k] = solve_psd(G, b)
        gap = (Z @ new_beta[k])[:, None] - ml
        new_var[k] = np.sum(P[:, :, k] * (vl + gap**2)) / D.sum()
    return objective, new_beta, new_var


def problem(S, M, K, d):
    """M local models of K experts near K common ones, S support points, and
    the common experts as the targets."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((K, d + 1)) * 2
    models = [MoEParams(rng.integers(-3, 4, (K, d)), rng.standard_normal(K),
                        base[:, 1:] + 0.1 * rng.standard_normal((K, d)),
                        base[:, 0] + 0.1 * rng.standard_normal(K), rng.uniform(4, 5, K))
              for _ in range(M)]
    mix = large_mixture(models)
    Xs = rng.standard_normal((S, d))
    beta, var = base.copy(), np.full(K, 4.5)
    beta[:, 0] -= mix.shift
    return mix, Xs, beta, var


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--S", type=int, default=20_000)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--K", type=int, default=5)
    ap.add_argument("--d", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    blas_threads.add_option(ap)
    args = ap.parse_args(argv)
    return blas_threads.run_with(args, run)


def run(args):
    S, M, K, d = args.S, args.M, args.K, args.d
    mix, Xs, beta, var = problem(S, M, K, d)
    n_threads = resolve_threads(None)

    cache = support_cache(mix, Xs)  # once per aggregate() call, not per iteration
    # every iteration after the first takes the heaviest target's Gram matrix
    # from the cached total (``_run_mm``)
    skip = int(np.argmax(mm_pass(mix, Xs, beta, var, 0, n_threads, cache=cache).scal[:, 0]))

    def fast():
        st = mm_pass(mix, Xs, beta, var, 0, n_threads, cache=cache, skip=skip)
        b, v = _update(mix, st, beta, var, 0, "exact", [])
        return st.objective, b, v

    fast()  # warm the JIT cache
    t_fast, t_np = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        of, bf, vf = fast()
        t_fast.append(time.perf_counter() - t)
        t = time.perf_counter()
        on, bn, vn = tensor_iteration(mix, Xs, beta, var)
        t_np.append(time.perf_counter() - t)
    ratio = min(t_np) / min(t_fast)
    blas = blas_threads.label(args)
    print(f"S={S} M={M} K={K} d={d} (L={M * K}) threads={n_threads} BLAS threads={blas}")
    print("| implementation | ms / MM iteration | objective |")
    print("|---|---|---|")
    print(f"| numpy, dense S x L x K tensors | {min(t_np) * 1e3:.1f} | {on:.10g} |")
    print(f"| fastmoe fused pass | {min(t_fast) * 1e3:.1f} | {of:.10g} |")
    print(f"speed-up: {ratio:.1f}x; objective rel. difference {abs(of - on) / abs(on):.1e}; "
          f"updated experts max abs difference {np.abs(bf - bn).max():.1e}, "
          f"variances {np.abs(vf - vn).max():.1e}")
    return ratio


if __name__ == "__main__":
    main()

"""One EM iteration of fastmoe against a plain vectorised numpy implementation
of exactly the same iteration, timed side by side in one run.

Both sides start from the same parameters, do the same E-step, the same
closed-form expert update (with the same variance floor) and the same number
of gate Newton steps with step halving, so their log-likelihoods must agree to
rounding after any number of iterations.

    python asv_bench/compare.py [--n 100000 --d 10 --K 3 --iters 5 --repeat 5]

BLAS runs on one thread for both sides by default (``--blas-threads 0``
keeps BLAS's own default): that is how ``fit_moe`` runs its EM, and idle
OpenBLAS threads busy-wait after each call, taking a core from the compiled
kernels timed right after the numpy side.
"""

from __future__ import annotations

import argparse
import time
import warnings

import blas_threads  # asv_bench/blas_threads.py, beside this script
import numpy as np
from scipy.special import log_softmax, logsumexp

from fastmoe import fit_moe
from fastmoe._em import EMData, run_em
from fastmoe._linalg import resolve_threads, solve_psd
from fastmoe.datasets import make_moe_regression

HALVINGS = 30


def np_gate_objective(Xt, w, R, A):
    return float(np.sum(w[:, None] * R * log_softmax(Xt @ A.T, axis=1)))


def np_gate_newton(Xt, w, R, A, steps):
    K, p = A.shape
    for _ in range(steps):
        logpi = log_softmax(Xt @ A.T, axis=1)
        pi = np.exp(logpi)
        obj = float(np.sum(w[:, None] * R * logpi))
        s = R.sum(axis=1)
        grad = (Xt.T @ (w[:, None] * (R - s[:, None] * pi)))[:, :-1].T.ravel()
        H = np.zeros(((K - 1) * p, (K - 1) * p))
        ws = w * s
        for a in range(K - 1):
            for b in range(a, K - 1):
                c = ws * pi[:, a] * ((a == b) - pi[:, b])
                blk = Xt.T @ (c[:, None] * Xt)
                H[a * p:(a + 1) * p, b * p:(b + 1) * p] = blk
                H[b * p:(b + 1) * p, a * p:(a + 1) * p] = blk
        step = solve_psd(H, grad).reshape(K - 1, p)
        t = 1.0
        for _ in range(HALVINGS):
            trial = A.copy()
            trial[:-1] += t * step
            if np_gate_objective(Xt, w, R, trial) >= obj:
                break
            t *= 0.5
        else:
            break
        A = trial
    return A


def np_em(Xt, y, w, A, B, V, iters, gate_steps, var_floor):
    """Plain numpy EM (same maths as fastmoe); returns the log-likelihood history."""
    hist = []
    for it in range(iters + 1):
        logj = (log_softmax(Xt @ A.T, axis=1) - 0.5 * np.log(2 * np.pi * V)
                - 0.5 * (y[:, None] - Xt @ B.T) ** 2 / V)
        row = logsumexp(logj, axis=1)
        hist.append(float(w @ row))
        if it == iters:
            break
        R = np.exp(logj - row[:, None])
        WR = w[:, None] * R
        for k in range(A.shape[0]):
            G = Xt.T @ (WR[:, k:k + 1] * Xt)
            b = Xt.T @ (WR[:, k] * y)
            B[k] = solve_psd(G, b)
            r = y - Xt @ B[k]
            V[k] = max(float(WR[:, k] @ (r * r)) / WR[:, k].sum(), var_floor)
        A = np_gate_newton(Xt, w, R, A, gate_steps)
    return np.array(hist)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--K", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--gate-steps", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    blas_threads.add_option(ap)
    args = ap.parse_args(argv)
    return blas_threads.run_with(args, run)


def run(args):
    X, y, _, _ = make_moe_regression(args.n, args.d, args.K, random_state=0)
    with warnings.catch_warnings():  # one iteration: a ConvergenceWarning by design
        warnings.simplefilter("ignore")
        start = fit_moe(X, y, args.K, max_iter=1, random_state=0, tol=0.0)  # a shared start
    n_threads = resolve_threads(None)
    data = EMData(X, y, np.ones(args.n), args.K, n_threads)
    var_floor = 1e-6 * data.var_y
    A0 = start.params.gate_aug
    B0 = start.params.expert_aug
    B0[:, 0] -= data.y_shift
    V0 = start.params.expert_var.copy()
    Xt = np.column_stack([np.ones(args.n), X])

    def run_fast():
        out = run_em(data, A0.copy(), B0.copy(), V0.copy(), max_iter=args.iters, tol=-1.0,
                     gate_steps=args.gate_steps, var_floor=var_floor)
        return out[6]

    def run_numpy():
        return np_em(Xt, data.y, data.w, A0.copy(), B0.copy(), V0.copy(), args.iters,
                     args.gate_steps, var_floor)

    run_fast()  # warm the JIT cache
    t_fast, t_np = [], []
    for _ in range(args.repeat):  # interleaved, so both see the same machine load
        t = time.perf_counter()
        h_fast = run_fast()
        t_fast.append(time.perf_counter() - t)
        t = time.perf_counter()
        h_np = run_numpy()
        t_np.append(time.perf_counter() - t)
    per_fast = min(t_fast) / args.iters
    per_np = min(t_np) / args.iters
    rel = np.max(np.abs(h_fast - h_np) / np.abs(h_np))
    blas = blas_threads.label(args)
    print(f"n={args.n} d={args.d} K={args.K} gate_steps={args.gate_steps} "
          f"threads={n_threads} BLAS threads={blas} iterations={args.iters}")
    print("| implementation | ms / EM iteration | loglik after last iteration |")
    print("|---|---|---|")
    print(f"| numpy (vectorised, BLAS) | {per_np * 1e3:.1f} | {h_np[-1]:.6f} |")
    print(f"| fastmoe | {per_fast * 1e3:.1f} | {h_fast[-1]:.6f} |")
    print(f"speed-up: {per_np / per_fast:.1f}x; max relative log-likelihood difference "
          f"over the {args.iters} iterations: {rel:.1e}")
    return per_np / per_fast, rel


if __name__ == "__main__":
    main()

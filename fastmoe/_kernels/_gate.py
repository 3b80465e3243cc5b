"""numba kernels of the gate Newton (IRLS) step.

Why numba here: the side-by-side measurement of the fused E-step in both
technologies (``asv_bench/kernel_choice.py``) found the same speed for the same
arithmetic, so the choice rests on the rest: these kernels only run inside a
fit, which pays numba's one-off cache load (about 0.45 s in a new process,
measured by the asv ``timeraw_`` benchmark) once, and the Newton step's
several accumulators of different shapes read shorter in numba.

Conventions as in ``_estep.pyx``: X (n, d) without intercept, gate
coefficients ``alpha`` (K, d+1) with the intercept in column 0 and the last
row the zero reference, accumulators per chunk of rows (summed by the caller
in chunk order, so results do not depend on the thread count).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import jit_pair, njit_inline


@njit_inline
def packed_outer(z, u):
    """OUT u = the packed (row-major) upper triangle of z z^T."""
    t = 0
    for a in range(z.shape[0]):
        for b in range(a, z.shape[0]):
            u[t] = z[a] * z[b]
            t += 1


@njit_inline
def log_softmax_row(alpha, X, i, lp):
    """OUT lp (K,) = alpha . (1, X[i]); returns logsumexp(lp) (row max subtracted)."""
    d = X.shape[1]
    vmax = -np.inf
    for k in range(alpha.shape[0]):
        s = alpha[k, 0]
        for j in range(d):
            s += alpha[k, j + 1] * X[i, j]
        lp[k] = s
        vmax = max(vmax, s)
    tot = 0.0
    for k in range(alpha.shape[0]):
        tot += np.exp(lp[k] - vmax)
    return vmax + np.log(tot)


def _gate_newton_stats(X, w, R, alpha, chunk, grad, info, obj):
    """Objective, gradient and information matrix of the weighted multinomial
    logistic regression of soft targets R on xt = (1, x).

    IN: X (n, d), w (n,), R (n, K) targets, alpha (K, d+1), chunk (int).
    OUT: grad (n_chunks, K-1, d+1): sum_i w_i (R_ia - s_i pi_ia) xt_i, s_i = sum_k R_ik;
         info (n_chunks, J, T): packed upper triangles of
             sum_i w_i s_i pi_ia (delta_ab - pi_ib) xt_i xt_i^T for the J = (K-1)K/2
             pairs a <= b < K-1 (row-major order), T = (d+1)(d+2)/2;
         obj (n_chunks,): sum_i w_i sum_k R_ik log pi_ik.
    """
    n, d = X.shape
    K = alpha.shape[0]
    p = d + 1
    n_chunks = grad.shape[0]
    for c in prange(n_chunks):
        g = grad[c]
        h = info[c]
        g[:] = 0.0
        h[:] = 0.0
        acc = 0.0
        z = np.empty(p)
        u = np.empty(h.shape[1])
        lp = np.empty(K)
        pi = np.empty(K)
        z[0] = 1.0
        for i in range(c * chunk, min((c + 1) * chunk, n)):
            for j in range(d):
                z[j + 1] = X[i, j]
            lse = log_softmax_row(alpha, X, i, lp)
            s_i = 0.0
            for k in range(K):
                pi[k] = np.exp(lp[k] - lse)
                if R[i, k] != 0.0:
                    acc += w[i] * R[i, k] * (lp[k] - lse)
                s_i += R[i, k]
            ws = w[i] * s_i
            for a in range(K - 1):
                ca = w[i] * R[i, a] - ws * pi[a]
                for j in range(p):
                    g[a, j] += ca * z[j]
            packed_outer(z, u)
            jj = 0
            for a in range(K - 1):
                for b in range(a, K - 1):
                    cab = ws * pi[a] * ((1.0 if a == b else 0.0) - pi[b])
                    for t in range(u.shape[0]):
                        h[jj, t] += cab * u[t]
                    jj += 1
        obj[c] = acc


def _gate_objective(X, w, R, alpha, chunk, obj):
    """OUT obj (n_chunks,): sum_i w_i sum_k R_ik log pi_ik per chunk of rows."""
    n = X.shape[0]
    K = alpha.shape[0]
    n_chunks = obj.shape[0]
    for c in prange(n_chunks):
        acc = 0.0
        lp = np.empty(K)
        for i in range(c * chunk, min((c + 1) * chunk, n)):
            lse = log_softmax_row(alpha, X, i, lp)
            for k in range(K):
                if R[i, k] != 0.0:
                    acc += w[i] * R[i, k] * (lp[k] - lse)
        obj[c] = acc


gate_newton_stats = jit_pair(_gate_newton_stats)
gate_objective = jit_pair(_gate_objective)

"""What several numba kernels compute for one row, written once."""

from __future__ import annotations

import math

import numpy as np

from ._jit import jit_serial


@jit_serial
def log_gates(alpha, U, i, out):
    """out (K,) the log gate probabilities of row i."""
    d = U.shape[1]
    K = alpha.shape[0]
    top = -np.inf
    for k in range(K):
        t = alpha[k, 0]
        for j in range(d):
            t += alpha[k, j + 1] * U[i, j]
        out[k] = t
        top = max(top, t)
    s = 0.0
    for k in range(K):
        s += math.exp(out[k] - top)
    lse = top + math.log(s)
    for k in range(K):
        out[k] -= lse


@jit_serial
def louis_row(i, wi, pi, r, J, V, T, Di, g, DVV, DVT, TT, G):
    """Row i's part of Louis' identity, with ``Di`` holding sum_k r_k s_k
    s_k^T plus the complete-data Hessians of the expert blocks and ``g`` the
    score: fills the gates' block of Di, then writes G[i] = w g, DVV[i] and
    DVT[i] (w (D - g g^T) between the V vector blocks and the T scalar ones)
    and adds the scalar blocks' part to TT."""
    for j in range(J):
        for l in range(J):
            # sum_k r_k (d_jk - pi_j)(d_lk - pi_l), then the gates'
            # complete-data Hessian -pi_j (d_jl - pi_l)
            Di[j, l] = pi[j] * pi[l] - r[j] * pi[l] - pi[j] * r[l] \
                - pi[j] * ((1.0 if j == l else 0.0) - pi[l])
        Di[j, j] += r[j]
    for a in range(V + T):
        G[i, a] = wi * g[a]
    for a in range(V):
        for b in range(V):
            DVV[i, a, b] = wi * (Di[a, b] - g[a] * g[b])
        for k in range(T):
            DVT[i, a, k] = wi * (Di[a, V + k] - g[a] * g[V + k])
    for k in range(T):
        for l in range(T):
            TT[k, l] += wi * (Di[V + k, V + l] - g[V + k] * g[V + l])


@jit_serial
def normalise_row(r, K):
    """r[:K] holds a row's joint log-densities: turns them into the
    posteriors in place and returns their log-sum (the row's
    log-likelihood), taken from the largest."""
    top = -np.inf
    for k in range(K):
        top = max(top, r[k])
    tot = 0.0
    for k in range(K):
        r[k] = math.exp(r[k] - top)
        tot += r[k]
    for k in range(K):
        r[k] /= tot
    return top + math.log(tot)

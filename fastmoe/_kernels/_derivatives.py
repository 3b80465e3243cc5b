"""numba kernel of the observed-data derivatives' per-row coefficients
(docs/method.rst, section 10; ``fastmoe._information``).

For each row it computes the posterior r, the gate probabilities pi, the
row's log-likelihood, its score's coefficients g (B = 3K - 1 numbers: K - 1
free gates, K experts, K log-variances) and the B x B coefficient matrix D_i
of Louis' identity, both times the row's weight; ``_information`` turns them
into the (P, P) Hessian with two matrix products over the rows.

Why numba here: the coefficients are a few dozen scalars per row built from
K-vectors, which numpy could only write as (n, B, B) temporaries filled by
fancy indexing (35 ms on 16 368 rows of the flights table at K = 3 against
about 2 ms for this loop, AMD EPYC; asv_bench/real_tables.py's server-cost
table). The loop is serial: the caller's row blocks fix the order of every
sum, so the result does not depend on the thread count.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import jit_serial
from ._rows import log_gates, louis_row, normalise_row

_LOG_2PI = math.log(2.0 * math.pi)


@jit_serial
def derivative_coefficients(X, y, w, gate, expert, var, DVV, DVT, TT, G, row_ll):
    """OUT the rows' coefficient matrices D_i of Louis' identity split by
    block, DVV (n, V, V) between the 2K - 1 blocks of (1, x) (free gates, then
    experts) and DVT (n, V, K) between those and the log-variances; TT (K, K)
    ACCUMULATES (+=) their sum over the rows between the log-variances;
    G (n, B) the rows' scores; row_ll (n,) the rows' log-likelihoods.

    gate, expert (K, d+1) with the intercept in column 0; var (K,). DVV, DVT,
    TT and G are weighted by w; row_ll is not.
    """
    n, d = X.shape
    K = var.shape[0]
    J = K - 1
    V = 2 * K - 1
    B = V + K
    log_var = np.log(var)
    pi = np.empty(K)
    log_pi = np.empty(K)
    r = np.empty(K)
    e = np.empty(K)
    q = np.empty(K)
    g = np.empty(B)
    Di = np.empty((B, B))
    for i in range(n):
        log_gates(gate, X, i, log_pi)
        for k in range(K):
            pi[k] = math.exp(log_pi[k])
            m = expert[k, 0]
            for j in range(d):
                m += expert[k, j + 1] * X[i, j]
            e[k] = y[i] - m
            q[k] = e[k] * e[k] / var[k]
            r[k] = log_pi[k] - 0.5 * (_LOG_2PI + log_var[k] + q[k])  # log pi_k N_k
        row_ll[i] = normalise_row(r, K)
        Di[:, :] = 0.0
        for j in range(J):
            g[j] = r[j] - pi[j]
        for k in range(K):
            a = e[k] / var[k]
            b = 0.5 * (q[k] - 1.0)
            g[J + k] = r[k] * a
            g[V + k] = r[k] * b
            # sum_k r_k s_k s_k^T plus the complete-data Hessians: the expert
            # and log-variance blocks (diagonal in k)
            Di[J + k, J + k] = r[k] * a * a - r[k] / var[k]
            Di[J + k, V + k] = r[k] * a * b - r[k] * a
            Di[V + k, J + k] = Di[J + k, V + k]
            Di[V + k, V + k] = r[k] * b * b - 0.5 * r[k] * q[k]
            for j in range(J):
                c = (1.0 if j == k else 0.0) - pi[j]
                Di[j, J + k] = c * r[k] * a
                Di[J + k, j] = Di[j, J + k]
                Di[j, V + k] = c * r[k] * b
                Di[V + k, j] = Di[j, V + k]
        louis_row(i, w[i], pi, r, J, V, K, Di, g, DVV, DVT, TT, G)

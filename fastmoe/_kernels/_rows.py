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

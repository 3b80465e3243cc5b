"""numba kernel of the reduction's local support: the weights and means of
the L local experts at the support points (docs/method.rst, section 4),

    w_l(x) = lam_m pi_k^(m)(x),    m_l(x) = b_l . (1, x),

for the machines' experts stacked in order (machine m owns rows
starts[m]:starts[m+1]). The MM iterations read them from a cache when it fits,
else the server recomputes them block by block (memory flat in S).

Why numba here: the softmax runs over ragged groups (machines with different
numbers of experts), and the numba body reads like the maths. Measured against
numpy's per-machine products and exponentials on the reduction benchmark's
support (S=20000, L=80, d=20, ``asv_bench/kernel_choice.py``) it is faster
(numbers there), and the reduction runs only at the server, where the one-off
load of numba's disk cache does not matter.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import jit_pair


def _local_support(Xs, gate, expert, starts, lam, W, ML):
    """OUT W (S, L) local weights and ML (S, L) local means at the rows of Xs.

    gate, expert (L, d+1) with the intercept in column 0; starts (M+1,) int64;
    lam (M,) machine weights.
    """
    S, d = Xs.shape
    M = lam.shape[0]
    for s in prange(S):
        w = W[s]
        for m in range(M):
            lo = starts[m]
            hi = starts[m + 1]
            vmax = -np.inf
            for l in range(lo, hi):
                t = gate[l, 0]
                for j in range(d):
                    t += gate[l, j + 1] * Xs[s, j]
                w[l] = t
                vmax = max(vmax, t)
            tot = 0.0
            for l in range(lo, hi):
                w[l] = np.exp(w[l] - vmax)
                tot += w[l]
            for l in range(lo, hi):
                w[l] *= lam[m] / tot
        for l in range(expert.shape[0]):
            t = expert[l, 0]
            for j in range(d):
                t += expert[l, j + 1] * Xs[s, j]
            ML[s, l] = t


local_support = jit_pair(_local_support)

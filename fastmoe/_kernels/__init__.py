"""Compiled kernels of fastmoe: the only import surface of ``fastmoe._kernels``.

Cython (ahead-of-time): ``e_step``, ``gate_log_proba``, ``expert_log_density``.
numba (cached JIT): ``gate_newton_stats``, ``gate_objective``, ``mm_pass``.
Each kernel has exactly one implementation; module docstrings say why which.
"""

import numpy as np

from ._estep import e_step, expert_log_density, gate_log_proba
from ._gate import gate_newton_stats, gate_objective
from ._reduce import KL, W2, mm_pass


def warm_up(n_threads: int = 1, reduction: bool = False) -> None:
    """Compile, or load from numba's disk cache, the numba kernels of a local
    fit (and of the reduction) for ``n_threads`` (serial for 1) on the array
    types fastmoe passes them, so that a timed call pays no JIT cost (workers
    call this before they time their fit, the server before the reduction)."""
    X, w, R, alpha = np.zeros((2, 1)), np.ones(2), np.full((2, 2), 0.5), np.zeros((2, 2))
    gate_newton_stats(X, w, R, alpha, 2, np.empty((1, 1, 2)), np.empty((1, 1, 3)),
                      np.empty(1), n_threads=n_threads)
    gate_objective(X, w, R, alpha, 2, np.empty(1), n_threads=n_threads)
    if reduction:
        local = (alpha, alpha.copy(), np.ones(2), np.array([0, 2], dtype=np.int64), np.ones(1))
        for cost in (KL, W2):
            for cache in ((np.empty((0, 2)), np.empty((0, 2))), (np.ones((2, 2)), R)):
                out = (np.empty((1, 2, 3)), np.empty((1, 2, 2)), np.empty((1, 2, 4)),
                       np.empty((1, 2, 2)), np.empty((1, 2)), np.empty((2, 2), np.int16))
                mm_pass(X, local, cache, (alpha, np.ones(2)), cost, 2, out,
                        n_threads=n_threads)


__all__ = [
    "warm_up",
    "KL",
    "W2",
    "mm_pass",
    "e_step",
    "expert_log_density",
    "gate_log_proba",
    "gate_newton_stats",
    "gate_objective",
]

"""Compiled kernels of fastmoe: the only import surface of ``fastmoe._kernels``.

Cython (ahead-of-time): ``e_step``, ``em_pass`` (the fused EM pass),
``gate_newton_stats``, ``gate_objective``, ``gate_log_proba``,
``expert_log_density``: everything a local fit and a prediction run.
numba (cached JIT): ``mm_pass``, the reduction, run only at the server.
Each kernel has exactly one implementation; module docstrings say why which.
"""

import numpy as np

from ._estep import (
    e_step,
    em_pass,
    expert_log_density,
    gate_log_proba,
    gate_newton_stats,
    gate_objective,
)
from ._reduce import KL, W2, mm_pass


def warm_up(n_threads: int = 1) -> None:
    """Compile, or load from numba's disk cache, the reduction kernel for
    ``n_threads`` (serial for 1) on the array types fastmoe passes it, so that
    a timed reduction pays no JIT cost. The local fits need no warm-up: their
    kernels are compiled ahead of time."""
    X, R, alpha = np.zeros((2, 1)), np.full((2, 2), 0.5), np.zeros((2, 2))
    local = (alpha, alpha.copy(), np.ones(2), np.array([0, 2], dtype=np.int64), np.ones(1))
    for cost in (KL, W2):
        for cache in ((np.empty((0, 2)), np.empty((0, 2))), (np.ones((2, 2)), R)):
            out = (np.empty((1, 2, 3)), np.empty((1, 2, 2)), np.empty((1, 2, 2)),
                   np.empty((1, 2, 2)), np.empty((1, 2)), np.empty((2, 2), np.int16))
            mm_pass(X, local, cache, (alpha, np.ones(2)), cost, 2, out, n_threads=n_threads)


__all__ = [
    "warm_up",
    "KL",
    "W2",
    "mm_pass",
    "e_step",
    "em_pass",
    "expert_log_density",
    "gate_log_proba",
    "gate_newton_stats",
    "gate_objective",
]

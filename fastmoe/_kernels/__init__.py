"""Compiled kernels of fastmoe: the only import surface of ``fastmoe._kernels``.

Cython (ahead-of-time): ``e_step``, ``gate_log_proba``, ``expert_log_density``.
numba (cached JIT): ``gate_newton_stats``, ``gate_objective``, ``mm_pass``.
Each kernel has exactly one implementation; module docstrings say why which.
"""

from ._estep import e_step, expert_log_density, gate_log_proba
from ._gate import gate_newton_stats, gate_objective
from ._reduce import KL, W2, mm_pass

__all__ = [
    "KL",
    "W2",
    "mm_pass",
    "e_step",
    "expert_log_density",
    "gate_log_proba",
    "gate_newton_stats",
    "gate_objective",
]

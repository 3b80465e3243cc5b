"""Compiled kernels of fastmoe: the only import surface of ``fastmoe._kernels``.

C driven by Cython (ahead of time), each with an AVX2/FMA path chosen at run
time and a plain path (``set_simd``): ``e_step``, ``em_pass`` (the fused EM
pass), ``gate_newton_stats``, ``gate_objective``, ``gate_log_proba``
(``_estep.h``): everything a local fit and a prediction run; and ``mm_pass``,
the reduction's assignment step (``_reduce.h``). Cython: ``expert_log_density``,
``spd_solve`` (the fast path of ``_linalg.solve_psd`` for small systems).
numba (cached JIT): ``local_support``, the local weights and means on the
support, run only at the server; ``derivative_coefficients`` and
``family_coefficients``, the per-row coefficients of the observed
information of Gaussian experts and of the other families', run by the
machines in the refinement rounds.
Each kernel has exactly one implementation; module docstrings say why which.
"""

import numpy as np

from . import _estep, _reduce
from ._estep import (
    expert_log_density,
    gate_log_proba,
    gate_newton_stats,
    gate_objective,
    spd_solve,
)
from ._reduce import KL, W2, mm_pass, simd_available


def __getattr__(name: str):
    # the numba kernels are imported on first use (PEP 562): numba loads only
    # where the reduction or a refinement round runs, not with the engine's E-step
    if name == "local_support":
        from ._support import local_support

        return local_support
    if name == "derivative_coefficients":
        from ._derivatives import derivative_coefficients

        return derivative_coefficients
    if name in ("family_coefficients", "family_e_step", "family_objective", "family_assign"):
        from . import _family

        return getattr(_family, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def family_code(family: str) -> int:
    """The code of ``family_coefficients`` for a family's name (not the
    Gaussian's: ``derivative_coefficients`` serves it)."""
    codes = {"poisson": 1, "bernoulli": 2, "gamma": 3}
    if family not in codes:
        raise ValueError(f"family_coefficients serves {tuple(codes)}; got {family!r}.")
    return codes[family]


def check_rows(bad: int) -> int:
    """The one answer to a pass whose rows' log-likelihoods are not finite
    (returns 0, the kernel's status, when every row's is)."""
    if bad:
        raise FloatingPointError(f"the log-likelihood of {bad} row(s) is not finite at these "
                                 "parameters (they overflowed: rescale X or y, or start "
                                 "elsewhere).")
    return 0


def e_step(*args) -> int:
    """The E-step kernel (``_estep.e_step``; its arguments are the kernel's):
    raises FloatingPointError where a row's log-likelihood is not finite."""
    return check_rows(_estep.e_step(*args))


def em_pass(*args) -> int:
    """The fused EM pass (``_estep.em_pass``; its arguments are the kernel's):
    raises FloatingPointError where a row's log-likelihood is not finite."""
    return check_rows(_estep.em_pass(*args))


def set_simd(flag: bool) -> bool:
    """Run the C kernels on their AVX2/FMA path when the CPU has it (True, the
    default) or on their plain path (False). Returns the previous setting."""
    previous = _reduce.set_simd(flag)
    _estep.set_simd(flag)
    return previous


def warm_up(n_threads: int = 1) -> None:
    """Compile, or load from numba's disk cache, the numba kernels (the local
    support's for ``n_threads``, serial for 1) on the array types fastmoe
    passes them, so that a timed reduction or round pays no JIT cost. The
    other kernels are compiled ahead of time and need no warm-up."""
    from ._derivatives import derivative_coefficients
    from ._family import family_coefficients
    from ._support import local_support

    derivative_coefficients(np.zeros((1, 1)), np.zeros(1), np.ones(1), np.zeros((2, 2)),
                            np.zeros((2, 2)), np.ones(2), np.empty((1, 3, 3)),
                            np.empty((1, 3, 2)), np.zeros((2, 2)), np.empty((1, 5)),
                            np.empty(1))
    one = np.ones(2)
    family_coefficients(1, np.zeros((1, 1)), np.zeros(1), np.ones(1), np.zeros(1),
                        np.zeros((2, 2)), np.zeros((2, 2)), one, one, one, one,
                        np.empty((1, 3, 3)), np.empty((1, 3, 0)), np.zeros((0, 0)),
                        np.empty((1, 3)), np.empty(1), np.empty((1, 3, 3)),
                        np.empty((1, 3, 0)), np.zeros((0, 0)), True)

    X, alpha = np.zeros((2, 1)), np.zeros((2, 2))
    local_support(X, alpha, alpha.copy(), np.array([0, 2], dtype=np.int64), np.ones(1),
                  np.empty((2, 2)), np.empty((2, 2)), n_threads=n_threads)


__all__ = [  # noqa: F822 (local_support, derivative_coefficients: PEP 562)
    "warm_up",
    "KL",
    "W2",
    "mm_pass",
    "set_simd",
    "simd_available",
    "local_support",
    "derivative_coefficients",
    "family_coefficients",
    "family_e_step",
    "family_objective",
    "family_assign",
    "family_code",
    "check_rows",
    "e_step",
    "em_pass",
    "expert_log_density",
    "gate_log_proba",
    "gate_newton_stats",
    "gate_objective",
    "spd_solve",
]

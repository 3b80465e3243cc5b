"""The one place where numba flags are set.

``jit_pair(body)`` compiles one Python body twice, serial and parallel, lazily
and cached on disk (``cache=True``): the first fit in a fresh process loads
machine code from numba's cache instead of compiling. ``prange`` in the body
is a plain ``range`` in the serial variant.
"""

from __future__ import annotations

import types

import numba

_FLAGS = dict(cache=True, nogil=True, error_model="numpy")


class JitPair:
    """A kernel compiled serial and parallel from one body."""

    def __init__(self, body):
        self.__doc__ = body.__doc__
        self.__name__ = body.__name__
        self.serial = numba.njit(parallel=False, **_FLAGS)(body)
        self.parallel = numba.njit(parallel=True, **_FLAGS)(_renamed(body, "_parallel"))

    def __call__(self, *args, n_threads: int = 1):
        if n_threads <= 1:
            return self.serial(*args)
        from .._runtime import numba_threads

        with numba_threads(n_threads):
            return self.parallel(*args)


def _renamed(func, suffix: str):
    """A copy of ``func`` under another qualified name. numba's disk cache is
    keyed by the qualified name, source line and signature, not by the
    ``parallel`` flag: without this the serial and parallel variants would
    share one cache entry and load each other's machine code."""
    copy = types.FunctionType(func.__code__, func.__globals__, func.__name__ + suffix,
                              func.__defaults__, func.__closure__)
    copy.__qualname__ = func.__qualname__ + suffix
    copy.__doc__ = func.__doc__
    return copy


def jit_pair(body) -> JitPair:
    return JitPair(body)


def jit_serial(body):
    """``body`` compiled serial only, with the same flags (for kernels whose
    callers fix the order of their sums)."""
    return numba.njit(parallel=False, **_FLAGS)(body)

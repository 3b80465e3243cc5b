"""The thread policy: the one module that decides how many threads run where.

- OpenMP (the compiled kernels): ``resolve_threads`` turns ``n_threads`` into a
  count (None: the cores this process may use). OpenMP threads wait for work
  passively (``OMP_WAIT_POLICY=PASSIVE``, set below unless the user set it):
  libgomp's default spins at every barrier, and a thread that the OS has
  descheduled for a busy core holds the others up. Measured with
  ``asv_bench/contention.py`` (fit_moe, d=5, K=3, 30 iterations, AMD EPYC,
  2 cores, a Python loop busy on one core): all cores against one thread,
  spinning 1.76x at n=1e4, 1.12x at 3e4, 0.94x at 1e5; passive 0.99x, 1.01x,
  0.97x; on a quiet machine both policies run equally fast (31.2 against
  29.7 ms at n=1e4, 197 against 209 ms at 1e5).
- BLAS: ``blas_single_thread`` runs a function with BLAS on one thread
  (threadpoolctl). fastmoe's BLAS calls are small dense solves; extra BLAS
  threads only spin and take the cores from the kernels (measured: local fits
  in two worker processes ran 2-3x slower with OpenBLAS's default threads).
- numba (the server's support kernel): ``numba_threads`` sets its thread
  count for a block and restores the caller's after.
- Processes: ``split_cores`` gives each of n_jobs worker processes
  cores // n_jobs threads, so processes x threads never exceeds the cores.

The kernels' results do not depend on the thread count (their row chunks
depend on n alone), so no choice here changes a result.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

# before any OpenMP runtime is loaded (fastmoe/__init__.py imports this module
# first); libgomp reads it once, when it is loaded
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_threads(n_threads: int | None) -> int:
    """None -> all available cores; a positive int is taken as is (validated)."""
    if n_threads is None:
        return available_cores()
    import numpy as np

    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) \
            or n_threads < 1:
        raise ValueError(f"n_threads must be None or an int >= 1; got {n_threads!r}.")
    return int(n_threads)


def resolve_jobs(n_jobs: int, cores: int | None = None) -> int:
    """scikit-learn's convention: n_jobs >= 1 processes, or -1 for one per
    core, -2 for all cores but one, and so on (cores + 1 + n_jobs)."""
    from ._validation import check_int

    cores = available_cores() if cores is None else cores
    if isinstance(n_jobs, int) and not isinstance(n_jobs, bool) and n_jobs < 0:
        if cores + 1 + n_jobs < 1:
            raise ValueError(f"n_jobs={n_jobs} leaves no process on {cores} cores; use "
                             f"-1 to -{cores} or a positive number.")
        return int(cores + 1 + n_jobs)
    return check_int(n_jobs, "n_jobs")


def split_cores(n_tasks: int, n_jobs: int | None, n_threads: int | None) -> tuple[int, int]:
    """(processes, threads per process) for ``n_tasks`` independent fits.

    n_jobs None: one process per core, at most one per task; n_threads None:
    the cores shared out evenly between the processes (at least one each)."""

    cores = available_cores()
    jobs = min(n_tasks, cores) if n_jobs is None else resolve_jobs(n_jobs, cores)
    jobs = max(1, min(jobs, n_tasks))
    threads = max(1, cores // jobs) if n_threads is None else resolve_threads(n_threads)
    return jobs, threads


def blas_single_thread(func):
    """Decorator: run ``func`` with BLAS on one thread (see the module docstring)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with _blas_limited():
            return func(*args, **kwargs)

    return wrapper


#: threads of this process inside a blas_single_thread block, and the BLAS
#: limits to restore when the last one leaves (threadpoolctl's limits are
#: process-wide: two fits in two threads that each saved and restored them
#: left BLAS on one thread for good when their blocks overlapped)
_blas_lock = threading.Lock()
_blas_state = {"depth": 0, "limiter": None}


@contextlib.contextmanager
def _blas_limited():
    from threadpoolctl import threadpool_limits

    with _blas_lock:
        if _blas_state["depth"] == 0:
            _blas_state["limiter"] = threadpool_limits(limits=1, user_api="blas")
        _blas_state["depth"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_state["depth"] -= 1
            if _blas_state["depth"] == 0:
                _blas_state["limiter"].restore_original_limits()
                _blas_state["limiter"] = None


@contextlib.contextmanager
def numba_threads(n_threads: int):
    """numba's thread count set to ``n_threads`` (capped at its pool) for the
    block, the caller's restored after."""
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n_threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)

"""The ``--blas-threads`` option of the side-by-side scripts.

BLAS runs on one thread for both sides by default: that is how ``fit_moe``
and ``aggregate()`` run, and idle OpenBLAS threads busy-wait after each call,
taking a core from the compiled kernels timed right after the numpy side.
0 keeps BLAS's own default.
"""

from __future__ import annotations


def add_option(ap) -> None:
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="BLAS threads of both sides (0: BLAS's default)")


def run_with(args, run):
    """run(args) with BLAS limited to ``args.blas_threads`` threads (if > 0)."""
    if args.blas_threads > 0:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=args.blas_threads, user_api="blas"):
            return run(args)
    return run(args)


def label(args) -> str:
    return str(args.blas_threads) if args.blas_threads > 0 else "default"

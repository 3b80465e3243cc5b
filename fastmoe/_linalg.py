"""Small dense helpers shared by the EM, the gate IRLS and the reduction."""

from __future__ import annotations

import functools

import numpy as np

from . import _kernels
from ._runtime import blas_single_thread as single_threaded_blas  # noqa: F401 (re-export)
from ._runtime import resolve_threads  # noqa: F401 (re-export)

#: condition number below which solve_psd inverts instead of decomposing
WELL_CONDITIONED = 1e8
#: systems up to this size take the compiled fast path of solve_psd (numpy's
#: LAPACK calls cost about 100 us per solve_psd call on small systems, 3% of
#: an EM iteration at n=1e5, d=10, K=3; the compiled Cholesky is not blocked)
SMALL_SYSTEM = 64

#: Largest number of row chunks a kernel accumulates into.
MAX_CHUNKS = 256
MIN_CHUNK = 1024


def chunk_size(n: int) -> int:
    """Rows per accumulator chunk: depends on n only, so results do not depend
    on the thread count."""
    return max(MIN_CHUNK, -(-n // MAX_CHUNKS))


def n_chunks(n: int, chunk: int) -> int:
    return max(1, -(-n // chunk))


@functools.cache
def unpacking_index(q: int) -> np.ndarray:
    """(q*q,) the position in a packed row-major upper triangle of each entry
    of the full q x q symmetric matrix."""
    i, j = np.triu_indices(q)
    where = np.empty((q, q), dtype=np.intp)
    where[i, j] = where[j, i] = np.arange(i.size)
    where.setflags(write=False)
    return where.ravel()


def unpack_sym(packed: np.ndarray, q: int) -> np.ndarray:
    """(..., q(q+1)/2) packed row-major upper triangles -> (..., q, q) symmetric."""
    return np.take(packed, unpacking_index(q), axis=-1).reshape(packed.shape[:-1] + (q, q))


def solve_psd(A: np.ndarray, b: np.ndarray, rcond: float = 1e-12) -> np.ndarray:
    """Minimum-norm solution of A x = b for a symmetric positive semi-definite A,
    after scaling A to unit diagonal; A (..., q, q) and b (..., q) may be stacks
    of systems, solved in one call.

    Eigen-decomposition with eigenvalues below ``rcond * max eigenvalue``
    dropped: exact for well-conditioned systems, and a defined answer for
    singular ones (constant or duplicated covariate columns, an expert with
    fewer effective rows than coefficients; zero for A = 0). The diagonal
    scaling makes the answer independent of the units of the covariates:
    without it, columns on scales 1e8 apart put the intercept below the cut-off.
    """
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if A.shape[-1] == 0:
        return np.zeros_like(b)
    limit = min(WELL_CONDITIONED, 1.0 / rcond)
    # fast path: a Frobenius condition number below WELL_CONDITIONED bounds the
    # 2-norm one, so no eigenvalue would be dropped and the solution is unique
    if A.shape[-1] <= SMALL_SYSTEM:  # compiled: a call costs microseconds
        As = np.ascontiguousarray(A.reshape(-1, *A.shape[-2:]))
        x = np.empty(As.shape[:2])
        if _kernels.spd_solve(As, np.ascontiguousarray(b.reshape(x.shape)), x, limit):
            return x.reshape(b.shape)
    d = np.sqrt(np.diagonal(A, axis1=-2, axis2=-1))
    d = np.where(d > 0.0, d, 1.0)
    A = A / (d[..., :, None] * d[..., None, :])
    b = b / d
    if A.shape[-1] > SMALL_SYSTEM:
        try:
            inv = np.linalg.inv(A)
            cond = np.linalg.norm(A, axis=(-2, -1)) * np.linalg.norm(inv, axis=(-2, -1))
            if np.all(cond < limit):
                return np.einsum("...ij,...j->...i", inv, b) / d
        except np.linalg.LinAlgError:
            pass
    evals, evecs = np.linalg.eigh(A)
    top = evals[..., -1:]
    keep = (evals > rcond * top) & np.isfinite(top) & (top > 0.0)
    inv = np.divide(1.0, evals, out=np.zeros_like(evals), where=keep)
    proj = np.einsum("...ji,...j->...i", evecs, b) * inv
    return np.einsum("...ij,...j->...i", evecs, proj) / d


def row_log_normalise(log_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log sum_k exp(log_c[i, k]) per row, log_c less it): the rows'
    log-likelihoods and log posteriors of a mixture's joint log-densities,
    each row's sum taken from its largest entry; a FloatingPointError where
    a row's is not finite (no expert gives the row any density)."""
    top = np.max(log_c, axis=1, keepdims=True)
    with np.errstate(under="ignore", invalid="ignore"):
        row = top[:, 0] + np.log(np.sum(np.exp(log_c - top), axis=1))
    bad = int(np.sum(~np.isfinite(row)))
    if bad:
        raise FloatingPointError(f"the log-likelihood of {bad} row(s) is not finite at these "
                                 "parameters.")
    return row, log_c - row[:, None]


def squarem_point(x0, x1, x2, longest: float = np.inf):
    """The SQUAREM extrapolation from three successive EM points (Varadhan
    and Roland 2008, scheme S3): ``x0 - 2 a r + a^2 v`` with ``r = x1 - x0``,
    ``v = x2 - 2 x1 + x0`` and ``a = -|r| / |v|``, at most -1 (``x2``) and at
    least ``-longest``; and whether the step was held to ``longest``. (None,
    False) where the steps did not move or the point is not finite."""
    r, v = x1 - x0, x2 - 2 * x1 + x0
    vv = float(v @ v)
    if not vv > 0:
        return None, False
    length = float(np.sqrt(float(r @ r) / vv))
    a = -min(max(length, 1.0), longest)
    x = x0 - 2 * a * r + a * a * v
    if not np.all(np.isfinite(x)):
        return None, False
    return x, length >= longest

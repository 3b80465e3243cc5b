"""Weighted multinomial logistic regression for the gates (Newton-Raphson / IRLS).

Maximises  Q(alpha) = sum_i w_i sum_k R_ik log pi_k(x_i; alpha)  over the
(K-1)(d+1) free coefficients (the last gate is the zero reference), with step
halving whenever a full Newton step does not increase Q (docs/method.rst, section 2).
Used by the local EM fits and by the gate refit of the reduction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import _kernels
from ._linalg import chunk_size, n_chunks, solve_psd, unpacking_index

MAX_HALVINGS = 30


@dataclass(frozen=True)
class GateFit:
    """alpha (K, d+1) with the intercept in column 0 and a zero last row."""

    alpha: np.ndarray
    objective: float
    n_iter: int
    converged: bool


def gate_objective(X, w, R, alpha, chunk, nc, n_threads) -> float:
    """Q(alpha) for the targets R, summed over the kernel's chunks."""
    obj = np.empty(nc)
    _kernels.gate_objective(X, w, R, alpha, chunk, obj, n_threads=n_threads)
    with np.errstate(over="ignore"):  # a trial far out may overflow: -inf, rejected
        return float(obj.sum())


@functools.cache
def _information_layout(K: int, p: int) -> np.ndarray:
    """((K-1)p * (K-1)p,) the position of each entry of the information matrix
    in the kernels' packed blocks (J, p(p+1)/2) flattened: block (a, b),
    a <= b < K-1 in row-major order, and its mirror image."""
    T = p * (p + 1) // 2
    within = unpacking_index(p).reshape(p, p)
    where = np.empty(((K - 1) * p, (K - 1) * p), dtype=np.intp)
    jj = 0
    for a in range(K - 1):
        for b in range(a, K - 1):
            where[a * p:(a + 1) * p, b * p:(b + 1) * p] = jj * T + within
            where[b * p:(b + 1) * p, a * p:(a + 1) * p] = jj * T + within
            jj += 1
    where.setflags(write=False)
    return where.ravel()


def assemble_newton(grad, info, K: int, p: int):
    """Gradient (flattened (K-1)p) and information matrix ((K-1)p, (K-1)p) from
    the kernels' per-chunk accumulators, summed in chunk order."""
    H = info.sum(axis=0).ravel()[_information_layout(K, p)]
    return grad.sum(axis=0).ravel(), H.reshape((K - 1) * p, (K - 1) * p)


def newton_system(X, w, R, alpha, chunk, nc, n_threads, l2=0.0):
    """Q(alpha), its gradient (flattened (K-1)(d+1)) and the information matrix
    (the negated Hessian), summed over the kernel's chunks in order; with a
    ridge ``l2`` those of the penalised objective (see ``penalty``)."""
    K, p = alpha.shape
    grad = np.empty((nc, K - 1, p))
    info = np.empty((nc, (K - 1) * K // 2, p * (p + 1) // 2))
    obj = np.empty(nc)
    _kernels.gate_newton_stats(X, w, R, alpha, chunk, grad, info, obj, n_threads)
    obj, grad, H = (float(obj.sum()),) + assemble_newton(grad, info, K, p)
    return penalised(obj, grad, H, alpha, l2)


def slope_weights(l2, p: int) -> np.ndarray:
    """(p,) ridge weight of each gate coefficient: 0 for the intercept, then
    ``l2`` (a number, or one per covariate)."""
    out = np.zeros(p)
    out[1:] = l2
    return out


def penalty(alpha, l2) -> float:
    """The ridge term subtracted from Q: 1/2 sum_k sum_j l2_j a_kj^2 over the
    gate slopes (not the intercepts), the last gate the reference. ``l2`` is
    a number or one weight per covariate."""
    if np.all(np.asarray(l2) == 0.0):
        return 0.0
    return 0.5 * float(np.sum(slope_weights(l2, alpha.shape[1]) * alpha**2))


def penalised(obj, grad, H, alpha, l2):
    """(Q - penalty, its gradient, its information matrix) from those of Q."""
    if np.all(np.asarray(l2) == 0.0):
        return obj, grad, H
    K, p = alpha.shape
    weights = np.tile(slope_weights(l2, p), K - 1)
    H = H.copy()
    H[np.diag_indices_from(H)] += weights
    return obj - penalty(alpha, l2), grad - weights * alpha[:-1].ravel(), H


def newton_direction(grad, H, K: int, p: int) -> np.ndarray:
    """(K, p) Newton step (zero last row) from the gradient and information."""
    step = np.zeros((K, p))
    step[:-1] = solve_psd(H, grad).reshape(K - 1, p)
    return step


def gradient_direction(grad, H, K: int, p: int) -> np.ndarray:
    """(K, p) the gradient over the information's largest eigenvalue (zero
    last row): a step that ascends, by halving, where the information is
    nearly singular and Newton's step (:func:`newton_direction`) is
    unbounded."""
    step = np.zeros((K, p))
    top = float(np.linalg.eigvalsh(H)[-1]) if H.size else 0.0
    if top > 0:
        step[:-1] = (grad / top).reshape(K - 1, p)
    return step


def halve_step(X, w, R, alpha, step, obj, chunk, nc, n_threads, t: float = 1.0, l2=0.0,
               penalty_of=None):
    """Step halving from ``alpha + t step``: the first trial whose objective
    (penalised with ``l2``, or by ``penalty_of(trial)`` when given) is at
    least ``obj``, as (trial, objective), or None when none is found in
    MAX_HALVINGS halvings (no ascent direction left at machine precision)."""
    for _ in range(MAX_HALVINGS):
        trial = alpha + t * step
        pen = penalty(trial, l2) if penalty_of is None else penalty_of(trial)
        new = gate_objective(X, w, R, trial, chunk, nc, n_threads) - pen
        if np.isfinite(new) and new >= obj:
            return trial, new
        t *= 0.5
    return None


def fit_gates(X, R, w, alpha0, *, max_iter: int = 50, tol: float = 1e-8,
              n_threads: int = 1, l2=0.0) -> GateFit:
    """Newton-Raphson with step halving from ``alpha0``.

    Parameters
    ----------
    X : (n, d) C-contiguous covariates.
    R : (n, K) soft targets (rows usually sum to 1).
    w : (n,) non-negative sample weights.
    alpha0 : (K, d+1) start; its last row is ignored (kept at zero).
    max_iter : Newton steps at most.
    tol : stop when a step increases Q by less than ``tol * |Q|``.
    l2 : ridge penalty on the gate slopes (a number, or one per covariate):
        maximises Q - penalty(alpha, l2).
    """
    alpha = np.array(alpha0, dtype=np.float64, order="C")
    alpha[-1] = 0.0
    K, p = alpha.shape
    n = X.shape[0]
    chunk = chunk_size(n)
    nc = n_chunks(n, chunk)
    if K == 1:
        return GateFit(alpha, 0.0, 0, True)
    obj = None
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        obj, grad, H = newton_system(X, w, R, alpha, chunk, nc, n_threads, l2)
        found = halve_step(X, w, R, alpha, newton_direction(grad, H, K, p), obj, chunk, nc,
                           n_threads, l2=l2)
        if found is None:
            converged = True
            break
        trial, new = found
        gain = new - obj
        alpha, obj = trial, new
        if gain <= tol * max(abs(obj), 1e-300):
            converged = True
            break
    return GateFit(alpha, float(obj), it, converged)

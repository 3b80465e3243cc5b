"""Exact derivatives of the observed-data log-likelihood (docs/method.rst, section 10).

The parameters are flattened as

    theta = (alpha_1, ..., alpha_{K-1}, beta_1, ..., beta_K, tau_1, ..., tau_K)

with alpha_j the (d+1) free gate coefficients of gate j relative to the last
(reference) gate, beta_k = (intercept, slopes) of expert k and tau_k = log of
its variance: P = (K-1)(d+1) + K(d+1) + K numbers.

For one row, with c_k = log pi_k + log N(y; m_k, v_k) the complete-data log
density of component k, s_k its gradient in theta and r_k the posterior,
Louis' identity gives the observed-data Hessian

    H = sum_k r_k (d2 c_k + s_k s_k^T) - g g^T,     g = sum_k r_k s_k.

Every derivative of c_k is a scalar times (1, x) (gates and experts) or a
scalar (tau), so H is a sum over rows of small coefficient matrices, one
entry per pair of parameter blocks, times (1, x) (1, x)^T: the sums are two
matrix products over the rows (no per-row P x P matrices). They add over row
blocks, so machines send them and the server sums them, like EM's sufficient
statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ._params import MoEParams
from .families import get_family

#: rows per block of the derivative sums (their temporaries are
#: rows x (3K)^2 and rows x (d+1)^2)
ROWS = 4096


def n_theta(d: int, K: int) -> int:
    """P = (K-1)(d+1) + K(d+1) + K."""
    return (2 * K - 1) * (d + 1) + K


def theta_of(params: MoEParams) -> np.ndarray:
    """(P,) theta of a model (its gates relative to the last gate)."""
    alpha, beta = params.gate_aug, params.expert_aug
    return np.concatenate([(alpha[:-1] - alpha[-1]).ravel(), beta.ravel(),
                           np.log(params.expert_var)])


def params_of(theta: np.ndarray, d: int, K: int) -> MoEParams:
    """The model of theta (the inverse of :func:`theta_of`)."""
    p = d + 1
    alpha = np.zeros((K, p))
    alpha[:-1] = theta[:(K - 1) * p].reshape(K - 1, p)
    beta = theta[(K - 1) * p:(2 * K - 1) * p].reshape(K, p)
    with np.errstate(over="ignore"):
        var = np.exp(theta[(2 * K - 1) * p:])
    return MoEParams.from_aug(alpha, beta, var)


class Derivatives(NamedTuple):
    """Sums over rows of the log-likelihood and of its derivatives in theta.

    ``meat`` is sum_i w_i^2 g_i g_i^T (the sandwich estimator's middle), or
    None when not asked for. ``complete`` is the Hessian of EM's objective
    Q(theta' | theta) at theta' = theta (the complete-data log-likelihood's,
    the posteriors held), or None when not asked for
    (:func:`family_derivatives`). ``a + b`` adds two row blocks."""

    log_likelihood: float
    gradient: np.ndarray
    hessian: np.ndarray
    meat: np.ndarray | None = None
    complete: np.ndarray | None = None

    def __add__(self, other):  # noqa: D105
        if not isinstance(other, Derivatives):
            return NotImplemented

        def both(a, b):
            return None if a is None or b is None else a + b

        return Derivatives(self.log_likelihood + other.log_likelihood,
                           self.gradient + other.gradient, self.hessian + other.hessian,
                           both(self.meat, other.meat), both(self.complete, other.complete))


@dataclass(frozen=True)
class FamilyStatistics:
    """A machine's half of a refinement round for experts of a family other
    than Gaussian: its rows, their log-likelihood at the global model, and
    the log-likelihood's gradient and Hessian in
    ``fastmoe._information.family_theta_of`` (at the origin of the
    covariates), and the Hessian of EM's objective there
    (``derivatives.complete``, for generalised EM's step). Additive:
    ``a + b`` adds two machines'.

    Attributes
    ----------
    n : int
        The rows.
    log_likelihood : float
        Their log-likelihood.
    derivatives : Derivatives
        Its gradient and Hessian, and EM's objective's Hessian.
    """

    n: int
    log_likelihood: float
    derivatives: Derivatives

    def __add__(self, other):  # noqa: D105
        if not isinstance(other, FamilyStatistics):
            return NotImplemented
        return FamilyStatistics(self.n + other.n, self.log_likelihood + other.log_likelihood,
                                self.derivatives + other.derivatives)


def derivatives(X, y, w, params: MoEParams, *, meat: bool = False) -> Derivatives:
    """The log-likelihood, gradient and Hessian in theta of validated,
    C-contiguous float64 arrays (X (n, d), y (n,), weights w (n,))."""
    params.require_gaussian("the observed information")
    n, d = X.shape
    K, p = params.n_experts, d + 1
    V = 2 * K - 1  # blocks of (1, x): the free gates, then the experts
    total = Derivatives(0.0, np.zeros(V * p + K), np.zeros((V * p + K, V * p + K)),
                        np.zeros((V * p + K, V * p + K)) if meat else None)
    for start in range(0, n, ROWS):
        rows = slice(start, start + ROWS)
        total = total + _block(X[rows], y[rows], w[rows], params, meat)
    return total


def _block(X, y, w, params: MoEParams, meat: bool) -> Derivatives:
    """One row block's sums: the per-row coefficients from the compiled
    kernel (``fastmoe._kernels.derivative_coefficients``), their products
    with the features by :func:`_assemble`."""
    from ._kernels import derivative_coefficients

    n, d = X.shape
    K = params.n_experts
    V = 2 * K - 1
    DVV, DVT, TT = np.empty((n, V, V)), np.empty((n, V, K)), np.zeros((K, K))
    gw, row_ll = np.empty((n, V + K)), np.empty(n)
    # a writable copy of the (read-only) variances: the kernel's warmed-up signature
    derivative_coefficients(X, y, w, params.gate_aug, params.expert_aug,
                            params.expert_var.copy(), DVV, DVT, TT, gw, row_ll)
    return _sums(DVV, DVT, TT, gw, float(w @ row_ll), np.column_stack([np.ones(n), X]), meat)


def _sums(DVV, DVT, TT, gw, log_likelihood: float, Xt, meat: bool) -> Derivatives:
    """A row block's Derivatives from its weighted coefficient matrices (see
    :func:`_assemble`) and weighted scores ``gw`` (n, B)."""
    V = DVV.shape[1]
    hess = _assemble(DVV, DVT, TT, Xt)
    grad = np.concatenate([(gw[:, :V].T @ Xt).ravel(), gw[:, V:].sum(axis=0)])
    out_meat = None
    if meat:
        gv, gt = gw[:, :V], gw[:, V:]
        out_meat = _assemble(gv[:, :, None] * gv[:, None, :], gv[:, :, None] * gt[:, None, :],
                             gt.T @ gt, Xt)
    return Derivatives(log_likelihood, grad, hess, out_meat)


def _assemble(DVV, DVT, TT, Xt) -> np.ndarray:
    """(P, P) sum over rows i of the coefficient matrices D_i times the
    features: DVV (n, V, V) times (1, x)(1, x)^T between two vector blocks,
    DVT (n, V, K) times (1, x) between a vector block and a log-variance,
    and TT (K, K), the log-variances' block, already summed."""
    n, p = Xt.shape
    V, K = DVT.shape[1:]
    P = V * p + K
    out = np.empty((P, P))
    XX = (Xt[:, :, None] * Xt[:, None, :]).reshape(n, p * p)
    vv = (DVV.reshape(n, V * V).T @ XX).reshape(V, V, p, p)
    out[:V * p, :V * p] = vv.transpose(0, 2, 1, 3).reshape(V * p, V * p)
    vt = (DVT.reshape(n, V * K).T @ Xt).reshape(V, K, p)
    out[:V * p, V * p:] = vt.transpose(0, 2, 1).reshape(V * p, K)
    out[V * p:, :V * p] = out[:V * p, V * p:].T
    out[V * p:, V * p:] = TT
    return out


def family_theta_of(params: MoEParams) -> np.ndarray:
    """theta of :func:`family_derivatives`: the free gates, the experts'
    coefficients and, for a family with a dispersion, log phi."""
    alpha, beta = params.gate_aug, params.expert_aug
    parts = [(alpha[:-1] - alpha[-1]).ravel(), beta.ravel()]
    if get_family(params.family).has_dispersion:
        parts.append(np.log(params.expert_var))
    return np.concatenate(parts)


#: the log dispersions a step may reach (a Gamma shape in [1e-8, 1e8])
_LOG_PHI = 18.42


def family_params_of(theta: np.ndarray, like: MoEParams) -> MoEParams:
    """The model of ``theta`` (:func:`family_theta_of`'s inverse), with the
    shape and family of ``like``; log dispersions kept within +-_LOG_PHI."""
    K, p = like.n_experts, like.n_features + 1
    alpha = np.zeros((K, p))
    alpha[:-1] = theta[:(K - 1) * p].reshape(K - 1, p)
    beta = theta[(K - 1) * p:(2 * K - 1) * p].reshape(K, p)
    rest = theta[(2 * K - 1) * p:]
    phi = np.exp(np.clip(rest, -_LOG_PHI, _LOG_PHI)) if rest.size else np.ones(K)
    return MoEParams.from_aug(alpha, beta, phi, like.family)


def family_derivatives(X, y, w, params: MoEParams, offset=None, *,
                       meat: bool = False, complete: bool = False) -> Derivatives:
    """:func:`derivatives` for experts of the other families
    (fastmoe.families): theta holds the free gates, the experts'
    coefficients and, for a family with a dispersion, tau_k = log phi_k.
    Louis' identity as in :func:`derivatives`, with the expert's derivatives
    in its linear predictor (``Family.eta_derivatives``) and in tau
    (``Family.tau_derivatives``), by the compiled kernel
    ``fastmoe._kernels.family_coefficients`` over blocks of rows (its numpy
    reference, which also serves Gaussian experts, is in tests/naive.py).
    With ``complete``, also the Hessian of EM's objective
    (``Derivatives.complete``): the gates' multinomial Hessian and each
    expert's posterior-weighted second derivatives, the matrix of
    generalised EM's Newton step (docs/method.rst, section 11)."""
    from ._kernels import family_code, family_coefficients

    fam = get_family(params.family)
    code = family_code(fam.name)  # refuses the Gaussian family: derivatives() serves it
    n, d = X.shape
    K, p = params.n_experts, d + 1
    V, T = 2 * K - 1, K if fam.has_dispersion else 0
    P = V * p + T
    off = np.zeros(n) if offset is None else np.ascontiguousarray(offset, dtype=np.float64)
    nu = 1.0 / params.expert_var
    if fam.has_dispersion:
        from scipy import special

        consts = (special.gammaln(nu), special.psi(nu), special.polygamma(1, nu))
    else:
        consts = (np.zeros(K),) * 3
    gate, expert = params.gate_aug, params.expert_aug
    total = Derivatives(0.0, np.zeros(P), np.zeros((P, P)), np.zeros((P, P)) if meat else None,
                        np.zeros((P, P)) if complete else None)
    for start in range(0, n, ROWS):
        rows = slice(start, start + ROWS)
        m = X[rows].shape[0]
        DVV, DVT, TT = np.empty((m, V, V)), np.empty((m, V, T)), np.zeros((T, T))
        G, row_ll = np.empty((m, V + T)), np.empty(m)
        shape = (m, V) if complete else (0, 0)
        CVV, CVT, CTT = np.empty((*shape, V if complete else 0)), np.empty(
            (*shape, T if complete else 0)), np.zeros((T, T))
        family_coefficients(code, X[rows], y[rows], w[rows], off[rows], gate, expert, nu,
                            *consts, DVV, DVT, TT, G, row_ll, CVV, CVT, CTT, complete)
        Xt = np.column_stack([np.ones(m), X[rows]])
        part = _sums(DVV, DVT, TT, G, float(w[rows] @ row_ll), Xt, meat)
        if complete:
            part = part._replace(complete=_assemble(CVV, CVT, CTT, Xt))
        total = total + part
    return total


def origin_jacobian(delta: np.ndarray, K: int) -> np.ndarray:
    """(P, P) d theta(o) / d theta(o') for delta = o_x - o'_x: the parameters
    written with the covariates centred at o and at o' differ by alpha_0 +
    alpha . delta in each intercept (gates and experts); derivatives move as
    g' = M^T g and H' = M^T H M."""
    delta = np.asarray(delta, dtype=np.float64)
    p = delta.size + 1
    V = 2 * K - 1
    block = np.eye(p)
    block[0, 1:] = delta
    M = np.eye(V * p + K)
    for b in range(V):
        M[b * p:(b + 1) * p, b * p:(b + 1) * p] = block
    return M


def covariance(hessian: np.ndarray, meat: np.ndarray | None = None) -> np.ndarray:
    """The covariance of theta at the MLE: the inverse observed information
    (-H)^-1, or with ``meat`` the sandwich (-H)^-1 meat (-H)^-1."""
    info = -hessian
    scale = np.sqrt(np.abs(np.diagonal(info)))
    scale = np.where(scale > 0, scale, 1.0)
    inv = np.linalg.pinv(info / scale[:, None] / scale[None, :], hermitian=True)
    inv = inv / scale[:, None] / scale[None, :]
    return inv if meat is None else inv @ meat @ inv


def on_diagonal_scale(info: np.ndarray):
    """(scale, A): the square roots of the information's diagonal (1 where
    it is zero) and the information divided by them on both sides, the
    coordinates in which trust_step and saddle_free_step work."""
    scale = np.sqrt(np.abs(np.diagonal(info)))
    scale = np.where(scale > 0, scale, 1.0)
    return scale, info / scale[:, None] / scale[None, :]


def trust_step(gradient: np.ndarray, hessian: np.ndarray, radius: float | None,
               metric: np.ndarray | None = None):
    """(step, expected gain, length) maximising the quadratic model of the
    log-likelihood: the Newton step (``radius`` None; (None, inf, inf) where
    the information -H is not positive definite), or the best step whose
    length is at most ``radius`` (Levenberg-Marquardt: -H + mu M, mu found by
    bisection). Lengths are measured in ``metric`` M (EM's complete-data
    information, ``fastmoe.server.em_metric``), or without one on the scale of the
    information's diagonal; both make a unit about one standard error.
    Measured on three real tables (asv_bench/real_tables.py), EM's metric
    took 6 to 16 rounds where the diagonal took 7 to 19."""
    info = -hessian
    scale, A = on_diagonal_scale(info)
    lam = None
    if metric is not None:  # lengths in the metric: -H Q = M Q Lambda, Q^T M Q = I
        import scipy.linalg

        try:
            lam, Q = scipy.linalg.eigh((A + A.T) / 2, metric / scale[:, None] / scale[None, :])
        except (np.linalg.LinAlgError, ValueError):
            lam = None
    if lam is None:
        lam, Q = np.linalg.eigh((A + A.T) / 2)
    c = Q.T @ (gradient / scale)
    top = max(float(np.max(np.abs(lam))), 1e-300)
    definite = lam[0] > 1e-9 * top

    def length(mu):
        return float(np.linalg.norm(c / (lam + mu)))

    if radius is None:
        if not definite:
            return None, np.inf, np.inf
        mu = 0.0
    elif definite and length(0.0) <= radius:
        mu = 0.0
    else:
        lo = max(0.0, -float(lam[0])) + 1e-12 * top
        hi = lo + float(np.linalg.norm(c)) / radius + top
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if not lo < mid < hi:
                break
            lo, hi = (mid, hi) if length(mid) > radius else (lo, mid)
        mu = hi
    step = (Q @ (c / (lam + mu))) / scale
    return step, float(gradient @ step - 0.5 * step @ (info @ step)), length(mu)

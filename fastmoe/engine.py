"""The public, array-level engine of fastmoe: the pieces of EM and of the
optimal-transport reduction as plain functions, for other MoE tools to call.

Every function takes float64-convertible arrays in any layout (they are
copied once, only where they are not already C-contiguous float64), checks
them once here with one-line errors, and then calls the compiled kernels
unchecked. Inputs are never modified. Results are small frozen objects or
named tuples of new arrays.

Conventions
-----------
The model is the softmax-gated Gaussian mixture of experts of
:class:`fastmoe.MoEParams`:

    f(y | x) = sum_k pi_k(x) N(y; b_k + x . c_k, v_k),
    pi_k(x)  = softmax_k(g_k + x . a_k).

Softmax is unchanged by adding one vector to every gate, so one gate is a
zero reference. fastmoe stores the **last** gate as the reference;
``nnet::multinom``, flexmix and many R tools use the **first**.
:func:`fit_gates` takes ``reference=`` to return either, and
:meth:`fastmoe.MoEParams.rereference` converts a model's gates; every
function here accepts gates in any reference.

The statistics (:func:`expert_statistics`, :func:`gate_statistics`) are
sums over rows, so those of row blocks added with ``+`` equal those of all
rows: the map step of map-reduce, streaming or federated EM.

Examples
--------
One EM iteration written out with the pieces:

>>> import numpy as np
>>> from fastmoe import engine
>>> from fastmoe.datasets import make_moe_regression
>>> X, y, truth, _ = make_moe_regression(1000, 2, 3, random_state=0)
>>> e = engine.e_step(X, y, truth)
>>> experts = engine.update_experts(engine.expert_statistics(X, y, e.resp))
>>> gates = engine.fit_gates(X, e.resp, init=(truth.gate_coef, truth.gate_intercept))
>>> new = engine.params_from(gates, experts)
>>> bool(engine.e_step(X, y, new).log_likelihood >= e.log_likelihood)
True
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from . import _kernels
from ._em import experts_from_gram, weighted_gram
from ._frame import Frame, shift_matrix
from ._gating import assemble_newton, newton_system
from ._gating import fit_gates as _fit_gates
from ._information import Derivatives, origin_jacobian
from ._information import derivatives as _derivatives
from ._linalg import chunk_size, n_chunks, resolve_threads, unpack_sym
from ._params import MoEParams, _offset
from ._reduction import COSTS as _COST_CODES
from ._reduction import _check_support, _update, large_mixture, mm_pass, reduce_mixture
from ._validation import (
    _as_float_array,
    check_choice,
    check_float,
    check_int,
    check_random_state,
    check_sample_weight,
    check_X,
    check_X_y,
)
from .families import get_family

__all__ = [
    "EStep",
    "EMStep",
    "Experts",
    "ExpertStatistics",
    "GateFit",
    "GateStatistics",
    "LocalExperts",
    "MMStep",
    "StepStatistics",
    "Reduction",
    "e_step",
    "em_step",
    "expert_costs",
    "expert_statistics",
    "fit_family_experts",
    "fit_gates",
    "gate_statistics",
    "mm_step",
    "params_from",
    "reduce",
    "step_statistics",
    "update_experts",
]

#: largest (n, L, K) cost tensor expert_costs allocates
MAX_COST_BYTES = 2**30
COSTS = ("kl", "w2")
VARIANCE_UPDATES = ("exact", "published")


# ----------------------------------------------------------------------------
# checks at the boundary
# ----------------------------------------------------------------------------
def _check_params(params, any_family: bool = False) -> MoEParams:
    if not isinstance(params, MoEParams):
        raise TypeError(f"params must be a fastmoe.MoEParams; got {type(params).__name__}. "
                        "Build one with MoEParams(gate_coef, gate_intercept, expert_coef, "
                        "expert_intercept, expert_var).")
    return params if any_family else params.require_gaussian("fastmoe.engine")


def _check_matrix(a, n: int, name: str, columns: int | None = None) -> np.ndarray:
    """(n, columns) finite non-negative float64."""
    a = _as_float_array(a, name)
    if a.ndim != 2 or a.shape[0] != n or a.shape[1] < 1 \
            or (columns is not None and a.shape[1] != columns):
        want = f"({n}, {columns if columns is not None else 'n_experts'})"
        raise ValueError(f"{name} must have shape {want}; got {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinity.")
    if np.any(a < 0):
        raise ValueError(f"{name} must be >= 0; got a minimum of {a.min()}.")
    return a


def _gate_aug(gate_coef, gate_intercept, K: int | None, d: int) -> np.ndarray:
    """(K, d+1) gates with the intercept in column 0, the last gate zero."""
    coef = _as_float_array(gate_coef, "gate_coef")
    icpt = _as_float_array(gate_intercept, "gate_intercept")
    if coef.ndim != 2 or coef.shape[1] != d or (K is not None and coef.shape[0] != K):
        raise ValueError(f"gate_coef must have shape ({K if K is not None else 'K'}, {d}); "
                         f"got {coef.shape}.")
    if icpt.shape != (coef.shape[0],):
        raise ValueError(f"gate_intercept must have shape ({coef.shape[0]},); got {icpt.shape}.")
    if not (np.all(np.isfinite(coef)) and np.all(np.isfinite(icpt))):
        raise ValueError("gate_coef and gate_intercept must be finite.")
    alpha = np.column_stack([icpt, coef])
    return np.ascontiguousarray(alpha - alpha[-1])


# ----------------------------------------------------------------------------
# E-step
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class EStep:
    """Result of :func:`e_step`.

    Attributes
    ----------
    log_likelihood : float
        sum_i w_i log f(y_i | x_i).
    resp : ndarray of shape (n, K)
        Posterior responsibilities P(z_i = k | x_i, y_i); rows sum to 1.
    row_log_likelihood : ndarray of shape (n,)
        log f(y_i | x_i), unweighted.
    """

    log_likelihood: float
    resp: np.ndarray = field(repr=False)
    row_log_likelihood: np.ndarray = field(repr=False)


def e_step(X, y, params: MoEParams, *, sample_weight=None, offset=None,
           n_threads: int | None = None) -> EStep:
    """The E-step: log-likelihood and responsibilities at ``params``.

    For experts of any family (fastmoe.families; Poisson, Bernoulli and
    Gamma experts by ``fastmoe._kernels.family_e_step``).

    Parameters
    ----------
    X : array-like of shape (n, d)
        Covariates.
    y : array-like of shape (n,)
        Responses.
    params : MoEParams
        The model, with d features.
    sample_weight : array-like of shape (n,), optional
        Non-negative row weights (default ones); they weight the
        log-likelihood only.
    offset : array-like of shape (n,), optional
        Known offsets of the experts' linear predictors (a Poisson expert's
        log exposure; for Gaussian experts, of their means).
    n_threads : int, optional
        Threads of the compiled kernel (default: all cores).

    Returns
    -------
    EStep
        The log-likelihood, the responsibilities and the per-row log-likelihood.

    Examples
    --------
    >>> from fastmoe import engine
    >>> from fastmoe.datasets import make_moe_regression
    >>> X, y, truth, _ = make_moe_regression(500, 2, 2, random_state=0)
    >>> engine.e_step(X, y, truth).resp.shape
    (500, 2)
    """
    params = _check_params(params, any_family=True)
    X, y, w = check_X_y(X, y, sample_weight, n_features=params.n_features)
    n, K = X.shape[0], params.n_experts
    off = np.zeros(n) if offset is None else _offset(offset, n)
    if params.family != "gaussian":
        fam = get_family(params.family)
        fam.check_y(y[w > 0])
        from ._glm import e_step_rows

        R, _, row_ll = e_step_rows(fam, X, y, off, params.gate_aug, params.expert_aug,
                                   params.expert_var, fam.base(y), resolve_threads(n_threads))
        return EStep(float(w @ row_ll), R, row_ll)
    if offset is not None:
        y = y - off
    log_resp, row_ll = np.empty((n, K)), np.empty(n)
    _kernels.e_step(X, y, w, params.gate_aug, params.expert_aug, params.expert_var,
                    log_resp, row_ll, np.empty((0, 0, 0)), chunk_size(n),
                    resolve_threads(n_threads))
    return EStep(float(w @ row_ll), np.exp(log_resp), row_ll)


# ----------------------------------------------------------------------------
# experts
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpertStatistics:
    """Weighted sufficient statistics of K Gaussian experts (additive).

    Attributes
    ----------
    gram : ndarray of shape (K, d+2, d+2)
        sum_i w_i r_ik z_i z_i^T with z_i = (1, x_i, y_i).

    ``a + b`` adds the statistics of two row blocks.
    """

    gram: np.ndarray = field(repr=False)

    @property
    def n_experts(self) -> int:
        """Number of experts K.
        """
        return self.gram.shape[0]

    @property
    def n_features(self) -> int:
        """Number of covariates d.
        """
        return self.gram.shape[1] - 2

    @property
    def weight(self) -> np.ndarray:
        """(K,) sum_i w_i r_ik, the weight each expert holds."""
        return self.gram[:, 0, 0].copy()

    def __add__(self, other: ExpertStatistics) -> ExpertStatistics:
        if not isinstance(other, ExpertStatistics):
            return NotImplemented
        if other.gram.shape != self.gram.shape:
            raise ValueError(f"cannot add expert statistics of shapes {self.gram.shape} and "
                             f"{other.gram.shape}.")
        return ExpertStatistics(_frozen(self.gram + other.gram))


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def expert_statistics(X, y, resp, *, sample_weight=None) -> ExpertStatistics:
    """The experts' weighted sufficient statistics for responsibilities ``resp``.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Covariates.
    y : array-like of shape (n,)
        Responses.
    resp : array-like of shape (n, K)
        Non-negative responsibilities (or any weights per row and expert;
        rows need not sum to 1).
    sample_weight : array-like of shape (n,), optional
        Row weights, multiplied into ``resp``.

    Returns
    -------
    ExpertStatistics
        Additive over row blocks: ``expert_statistics(X[:m], ...) +
        expert_statistics(X[m:], ...)`` equals the statistics of all rows.

    Examples
    --------
    >>> import numpy as np
    >>> from fastmoe import engine
    >>> X, y = np.arange(8.0).reshape(4, 2), np.arange(4.0)
    >>> engine.expert_statistics(X, y, np.full((4, 2), 0.5)).weight
    array([2., 2.])
    """
    X, y, w = check_X_y(X, y, sample_weight)
    R = _check_matrix(resp, X.shape[0], "resp")
    return ExpertStatistics(_frozen(weighted_gram(X, y, w, R)))


class Experts(NamedTuple):
    """K Gaussian experts N(y; intercept_k + x . coef_k, var_k)."""

    coef: np.ndarray  #: (K, d)
    intercept: np.ndarray  #: (K,)
    var: np.ndarray  #: (K,)


def fit_family_experts(X, y, resp, family: str, *, sample_weight=None, offset=None,
                       init: Experts | None = None, max_iter: int = 100,
                       tol: float = 1e-10) -> Experts:
    """The M-step of K experts of a family other than the Gaussian.

    Each expert's weighted GLM (weights sample_weight times its column of
    ``resp``) is fitted to convergence by IRLS with step halving, on
    standardised covariates (the fit does not depend on their units); a
    Gamma expert's shape is then its maximum-likelihood value. ``var`` of
    the result holds the dispersions (1 for Poisson and Bernoulli, 1/shape
    for Gamma).

    Parameters
    ----------
    X : array-like of shape (n, d)
        Covariates.
    y : array-like of shape (n,)
        Responses (counts, 0/1, or positive for Gamma).
    resp : array-like of shape (n, K)
        Responsibilities (any non-negative weights).
    family : {"poisson", "bernoulli", "gamma"}
        The experts' family (fastmoe.families).
    sample_weight : array-like of shape (n,), optional
        Row weights.
    offset : array-like of shape (n,), optional
        Known offsets of the linear predictors.
    init : Experts, optional
        The start (the previous iteration's experts); default the pooled
        GLM's intercept.
    max_iter : int, default=100
        IRLS steps per expert at most.
    tol : float, default=1e-10
        Stop an expert when its coefficients change by less than this
        (relative).

    Returns
    -------
    Experts
        (coef (K, d), intercept (K,), var (K,)).

    Examples
    --------
    >>> from fastmoe import engine
    >>> from fastmoe.datasets import make_moe_regression
    >>> X, y, truth, _ = make_moe_regression(2000, 2, 2, family="poisson", random_state=0)
    >>> e = engine.e_step(X, y, truth)
    >>> engine.fit_family_experts(X, y, e.resp, "poisson").coef.shape
    (2, 2)
    """
    if get_family(family).name == "gaussian":
        raise ValueError("fit_family_experts serves the poisson, bernoulli and gamma "
                         "families; update_experts serves Gaussian experts.")
    design = _family_design(X, y, family, offset, sample_weight)
    R = _check_matrix(resp, design.data.n, "resp")
    if np.any(R < 0):
        raise ValueError("resp must be non-negative.")
    if init is not None:
        init = _check_experts(init, design.data.d, "init")
    return design.fit(design.weights[:, None] * R, init, check_int(max_iter, "max_iter"),
                      check_float(tol, "tol", 0.0, inclusive=True))


class _FamilyDesign(NamedTuple):
    """Rows of experts of a family other than the Gaussian, checked and put
    in a frame once, for many M-steps on the same rows: ``fit(W)`` is
    :func:`fit_family_experts` with ``sample_weight[:, None] * resp`` as W
    (the flexmix drivers keep one per data set, fastmoe._r)."""

    frame: Frame
    data: object  #: fastmoe._glm._Data in the frame (its own row weights unused)
    weights: np.ndarray  #: the checked sample weights
    pooled: float  #: the link of the responses' weighted mean: the start without init

    def fit(self, W, init: Experts | None = None, max_iter: int = 100,
            tol: float = 1e-10) -> Experts:
        """Each expert's weighted GLM, row weights the columns of ``W`` (n, K),
        by IRLS from ``init`` (checked by the caller) or the pooled start."""
        from ._glm import fit_expert

        data, fam = self.data, self.data.family
        K, d = W.shape[1], data.d
        if init is None:
            start = MoEParams.from_aug(np.zeros((K, d + 1)), np.column_stack(
                [np.full(K, self.pooled), np.zeros((K, d))]), np.ones(K), fam.name)
        else:
            coef, intercept, var = init
            if coef.shape[0] != K:
                raise ValueError(f"init holds {coef.shape[0]} experts; resp has {K} columns.")
            start = MoEParams(np.zeros((K, d)), np.zeros(K), coef, intercept,
                              var if fam.has_dispersion else np.ones(K), fam.name)
        local = self.frame.params_in(start)
        beta = local.expert_aug.copy()
        for k in range(K):
            beta[k] = fit_expert(data, W[:, k], beta[k], local.expert_var[k], max_iter, tol, tol)
        phi = fam.dispersion(data.y1, fam.mean(data.linear(beta)), W) if fam.has_dispersion \
            else np.ones(K)
        out = self.frame.params_out(MoEParams.from_aug(np.zeros((K, d + 1)), beta, phi,
                                                       fam.name))
        return Experts(out.expert_coef.copy(), out.expert_intercept.copy(), out.expert_var.copy())


def _family_design(X, y, family: str, offset=None, sample_weight=None) -> _FamilyDesign:
    """X, y (and the weights and offset) checked for experts of ``family``,
    and X standardised by its unweighted frame (the fit does not depend on
    it; an unweighted frame serves every M-step on these rows)."""
    from ._glm import _Data

    fam = get_family(family)
    X, y, w = check_X_y(X, y, sample_weight)
    fam.check_y(y[w > 0])
    n = X.shape[0]
    off = np.zeros(n) if offset is None else _offset(offset, n)
    frame = Frame.of(X)
    pooled = float(np.average(fam.link(y) - off, weights=w))
    return _FamilyDesign(frame, _Data(frame.X(X), y, w, off, fam, 1, 1), w, pooled)


def _check_experts(experts, d: int, name: str = "experts") -> Experts:
    try:
        coef, intercept, var = experts
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (coef, intercept, var) triple.") from None
    coef, intercept = _as_float_array(coef, f"{name}.coef"), _as_float_array(intercept,
                                                                            f"{name}.intercept")
    var = _as_float_array(var, f"{name}.var")
    if coef.ndim != 2 or coef.shape[1] != d or coef.shape[0] < 1:
        raise ValueError(f"{name}.coef must have shape (K, {d}); got {coef.shape}.")
    K = coef.shape[0]
    if intercept.shape != (K,) or var.shape != (K,):
        raise ValueError(f"{name}.intercept and {name}.var must have shape ({K},); got "
                         f"{intercept.shape} and {var.shape}.")
    if not (np.all(np.isfinite(coef)) and np.all(np.isfinite(intercept))):
        raise ValueError(f"{name} coefficients must be finite.")
    if not (np.all(np.isfinite(var)) and np.all(var > 0)):
        raise ValueError(f"{name}.var must be finite and > 0.")
    return Experts(coef, intercept, var)


def variance_floor(stats: ExpertStatistics, reg_var: float) -> float:
    """``reg_var`` times the weighted variance of y over all the experts'
    statistics (times 1 where that is not positive): the experts' variance
    floor of :func:`update_experts` and of the server's steps."""
    total = stats.gram.sum(axis=0)
    W = total[0, 0]
    var_y = total[-1, -1] / W - (total[0, -1] / W) ** 2
    return reg_var * (var_y if var_y > 0 else 1.0)


def update_experts(stats: ExpertStatistics, *, reg_var: float = 1e-6,
                   previous=None) -> Experts:
    """The experts' M-step: weighted least squares and maximum-likelihood variance.

    For expert k, with the Gram matrix G_k of z = (1, x, y), the coefficients
    solve (sum_i w_i r_ik xt_i xt_i^T) beta_k = sum_i w_i r_ik xt_i y_i and the
    variance is the weighted mean squared residual (divided by the weight,
    not by weight - rank), floored at ``reg_var`` times the weighted
    variance of y over all experts' statistics.

    Parameters
    ----------
    stats : ExpertStatistics
        The experts' statistics (:func:`expert_statistics`, summed over blocks).
    reg_var : float, default 1e-6
        Variance floor, relative to the weighted variance of y.
    previous : (coef, intercept, var), optional
        Experts kept where an expert holds no weight; without it such an
        expert is an error.

    Returns
    -------
    Experts
        ``(coef (K, d), intercept (K,), var (K,))``. Centre y first if its
        mean is large against its spread: the variance is a difference of
        sums of squares.

    Examples
    --------
    >>> import numpy as np
    >>> from fastmoe import engine
    >>> X = np.arange(10.0)[:, None]
    >>> stats = engine.expert_statistics(X, 1.0 + 2.0 * X[:, 0], np.ones((10, 1)))
    >>> coef, intercept, var = engine.update_experts(stats)
    >>> np.round([coef[0, 0], intercept[0]], 12).tolist()
    [2.0, 1.0]
    """
    if not isinstance(stats, ExpertStatistics):
        raise TypeError(f"stats must be ExpertStatistics; got {type(stats).__name__}.")
    reg_var = check_float(reg_var, "reg_var", 0.0, inclusive=True)
    G = stats.gram
    K, d = stats.n_experts, stats.n_features
    W = G[:, 0, 0].sum()
    if not W > 0:
        raise ValueError("the statistics hold no weight; every expert is empty.")
    floor = variance_floor(stats, reg_var)
    empty = ~(G[:, 0, 0] > 0)
    if previous is not None:
        prev = _check_experts(previous, d, "previous")
        if prev.coef.shape[0] != K:
            raise ValueError(f"previous has {prev.coef.shape[0]} experts; the statistics {K}.")
        beta_prev = np.column_stack([prev.intercept, prev.coef])
        var_prev = prev.var
    elif empty.any():
        raise ValueError(f"expert {int(np.argmax(empty))} holds no weight; pass previous= to "
                         "keep its parameters, or fewer experts.")
    else:
        beta_prev, var_prev = np.zeros((K, d + 1)), np.ones(K)
    beta, var, _ = experts_from_gram(G, beta_prev, var_prev, floor, W)
    return Experts(np.ascontiguousarray(beta[:, 1:]), beta[:, 0].copy(), var)


# ----------------------------------------------------------------------------
# gates
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GateStatistics:
    """Objective, gradient and Hessian of the gate objective (additive).

    The objective is the weighted multinomial-logistic log-likelihood
    Q(alpha) = sum_i w_i sum_k R_ik log pi_k(x_i).

    The free parameters are the first K-1 gates relative to the last, each as
    (intercept, slopes): theta = (g_k - g_K, a_k - a_K) for k < K, flattened
    gate by gate, length (K-1)(d+1).

    Attributes
    ----------
    objective : float
    gradient : ndarray of shape ((K-1)(d+1),)
    hessian : ndarray of shape ((K-1)(d+1), (K-1)(d+1))
        Negative semi-definite.

    ``a + b`` adds the statistics of two row blocks.
    """

    objective: float
    gradient: np.ndarray = field(repr=False)
    hessian: np.ndarray = field(repr=False)

    def __add__(self, other: GateStatistics) -> GateStatistics:
        if not isinstance(other, GateStatistics):
            return NotImplemented
        if other.hessian.shape != self.hessian.shape:
            raise ValueError(f"cannot add gate statistics of sizes {self.gradient.size} and "
                             f"{other.gradient.size}.")
        return GateStatistics(self.objective + other.objective,
                              _frozen(self.gradient + other.gradient),
                              _frozen(self.hessian + other.hessian))


def gate_statistics(X, targets, gate_coef, gate_intercept, *, sample_weight=None,
                    n_threads: int | None = None) -> GateStatistics:
    """Objective, gradient and Hessian of the gate objective at the given gates.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Covariates.
    targets : array-like of shape (n, K)
        Non-negative soft targets (responsibilities); rows need not sum to 1.
    gate_coef : array-like of shape (K, d)
        Gate slopes, in any reference.
    gate_intercept : array-like of shape (K,)
        Gate intercepts, in the same reference.
    sample_weight : array-like of shape (n,), optional
        Non-negative row weights (default ones).
    n_threads : int, optional
        Threads of the compiled kernels (default: all cores).

    Returns
    -------
    GateStatistics
        Additive over row blocks. A Newton step is
        ``-solve(hessian, gradient)`` on the free parameters.

    Examples
    --------
    >>> import numpy as np
    >>> from fastmoe import engine
    >>> X = np.linspace(-1, 1, 6)[:, None]
    >>> T = np.column_stack([X[:, 0] > 0, X[:, 0] <= 0]).astype(float)
    >>> s = engine.gate_statistics(X, T, np.zeros((2, 1)), np.zeros(2))
    >>> s.gradient.shape, s.hessian.shape
    ((2,), (2, 2))
    """
    X = check_X(X)
    n, d = X.shape
    w = check_sample_weight(sample_weight, n)
    R = _check_matrix(targets, n, "targets")
    K = R.shape[1]
    alpha = _gate_aug(gate_coef, gate_intercept, K, d)
    if K == 1:
        return GateStatistics(0.0, _frozen(np.zeros(0)), _frozen(np.zeros((0, 0))))
    chunk = chunk_size(n)
    obj, grad, info = newton_system(X, w, R, alpha, chunk, n_chunks(n, chunk),
                                    resolve_threads(n_threads))
    return GateStatistics(obj, _frozen(grad), _frozen(-info))


@dataclass(frozen=True)
class GateFit:
    """Result of :func:`fit_gates`.

    Attributes
    ----------
    gate_coef : ndarray of shape (K, d)
    gate_intercept : ndarray of shape (K,)
        The fitted gates, gate ``reference`` zero.
    objective : float
        The (penalised) objective at the fit.
    n_iter : int
        Newton steps taken.
    converged : bool
        Whether a step gained less than ``tol * |objective|`` before
        ``max_iter``.
    """

    gate_coef: np.ndarray
    gate_intercept: np.ndarray
    objective: float
    n_iter: int
    converged: bool


def fit_gates(X, targets, *, sample_weight=None, init=None, l2: float = 0.0,
              max_iter: int = 100, tol: float = 1e-10, reference: int = -1,
              n_threads: int | None = None) -> GateFit:
    """Fit the softmax gates to soft targets: Newton/IRLS with step halving.

    Maximises Q(alpha) - l2/2 sum_k ||a_k||^2 over the free parameters, with
    Q(alpha) = sum_i w_i sum_k R_ik log pi_k(x_i). Every accepted step
    increases the objective. This is what ``nnet::multinom`` does for
    flexmix's concomitant model, for any weights and with no limit on their
    number.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Covariates.
    targets : array-like of shape (n, K)
        Non-negative soft targets; rows need not sum to 1.
    sample_weight : array-like of shape (n,), optional
        Non-negative row weights (default ones).
    init : (gate_coef, gate_intercept), optional
        Starting gates in any reference (default zero: equal gates).
    l2 : float, default 0
        Ridge penalty on the gate slopes relative to the last gate (the
        intercepts are not penalised).
    max_iter : int, default 100
        Newton steps at most.
    tol : float, default 1e-10
        Stop when a step gains less than ``tol * |objective|``.
    reference : int, default -1
        The gate set to zero in the result: -1 (or K-1) is fastmoe's
        convention, 0 that of ``nnet::multinom`` and flexmix. The model,
        and the objective without a penalty, do not depend on it.
    n_threads : int, optional
        Threads of the compiled kernels (default: all cores).

    Returns
    -------
    GateFit
        The gates, the objective and the convergence of the Newton run.

    Examples
    --------
    >>> import numpy as np
    >>> from fastmoe import engine
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((2000, 1))
    >>> p = 1 / (1 + np.exp(-(0.5 + 2 * X[:, 0])))
    >>> T = np.column_stack([p, 1 - p])
    >>> fit = engine.fit_gates(X, T)
    >>> np.round(fit.gate_coef[0], 6).tolist(), round(float(fit.gate_intercept[0]), 6)
    ([2.0], 0.5)
    """
    X = check_X(X)
    n, d = X.shape
    w = check_sample_weight(sample_weight, n)
    R = _check_matrix(targets, n, "targets")
    K = R.shape[1]
    l2 = check_float(l2, "l2", 0.0, inclusive=True)
    max_iter = check_int(max_iter, "max_iter")
    tol = check_float(tol, "tol", 0.0, inclusive=True)
    reference = _check_reference(reference, K)
    alpha0 = np.zeros((K, d + 1)) if init is None else _init_gates(init, K, d)
    # the covariates centred (the slopes, the penalty and the objective do
    # not change; the intercepts move): an offset of 1e6 costs no precision
    centre = np.average(X, axis=0, weights=w)
    alpha0 = alpha0.copy()
    alpha0[:, 0] += alpha0[:, 1:] @ centre
    fit = _fit_gates(np.ascontiguousarray(X - centre), R, w, alpha0, max_iter=max_iter,
                     tol=tol, n_threads=resolve_threads(n_threads), l2=l2)
    alpha = fit.alpha.copy()
    alpha[:, 0] -= alpha[:, 1:] @ centre
    alpha = alpha - alpha[reference]
    return GateFit(np.ascontiguousarray(alpha[:, 1:]), alpha[:, 0].copy(), fit.objective,
                   fit.n_iter, fit.converged)


def _check_reference(reference, K: int) -> int:
    if isinstance(reference, bool) or not isinstance(reference, (int, np.integer)) \
            or not -K <= reference < K:
        raise ValueError(f"reference must be a gate index in [-{K}, {K - 1}]; got "
                         f"{reference!r}.")
    return int(reference) % K


def _init_gates(init, K: int, d: int) -> np.ndarray:
    try:
        coef, intercept = init
    except (TypeError, ValueError):
        raise ValueError("init must be a (gate_coef, gate_intercept) pair.") from None
    return _gate_aug(coef, intercept, K, d)


# ----------------------------------------------------------------------------
# one EM iteration
# ----------------------------------------------------------------------------
def params_from(gates: GateFit, experts) -> MoEParams:
    """The MoEParams of fitted gates and experts (any gate reference).

    Parameters
    ----------
    gates : GateFit
        Fitted gates (:func:`fit_gates`).
    experts : Experts or (coef, intercept, var)
        Fitted experts (:func:`update_experts`).

    Returns
    -------
    MoEParams
        The model, last gate the reference.
    """
    coef, intercept, var = experts
    return MoEParams(gates.gate_coef, gates.gate_intercept, coef, intercept, var)


@dataclass(frozen=True)
class StepStatistics:
    """Result of :func:`step_statistics`: everything an M-step needs (additive).

    Attributes
    ----------
    log_likelihood : float
        sum_i w_i log f(y_i | x_i) at the parameters of the pass.
    experts : ExpertStatistics
        The experts' statistics for the pass's responsibilities, of the
        centred z = (1, x - origin[:d], y - origin[d]).
    gates : GateStatistics
        The gate objective, gradient and Hessian at the pass's gates, for its
        responsibilities as targets, with respect to the gates written with
        the intercept at x = origin[:d].
    n : int
        Rows summed.
    derivatives : Derivatives or None
        With ``derivatives=True``: the log-likelihood's gradient and Hessian
        in theta (``fastmoe._information``: the gates relative to the last,
        the experts, the log variances), the covariates written centred at
        ``origin[:d]``.
    origin : ndarray of shape (d+1,)
        The point (x, y) the statistics are centred at: sums of squares of
        data with a large offset keep their precision (zeros: not centred).

    ``a + b`` adds the statistics of two row blocks (two machines), moving
    ``b`` to the origin of ``a`` exactly (:meth:`moved`).
    """

    log_likelihood: float
    experts: ExpertStatistics
    gates: GateStatistics
    n: int
    origin: np.ndarray | None = field(default=None, repr=False)
    derivatives: Derivatives | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.origin is None:
            object.__setattr__(self, "origin", _frozen(np.zeros(self.experts.n_features + 1)))

    def __add__(self, other: StepStatistics) -> StepStatistics:
        if not isinstance(other, StepStatistics):
            return NotImplemented
        if other.origin.shape != self.origin.shape:
            raise ValueError(f"cannot add step statistics of {self.origin.size - 1} and "
                             f"{other.origin.size - 1} features.")
        other = other.moved(self.origin)
        both = self.derivatives is not None and other.derivatives is not None
        return StepStatistics(self.log_likelihood + other.log_likelihood,
                              self.experts + other.experts, self.gates + other.gates,
                              self.n + other.n, self.origin,
                              self.derivatives + other.derivatives if both else None)

    def moved(self, origin) -> StepStatistics:
        """The same statistics centred at ``origin`` instead.

        Gram matrices become T G T^T and gate derivatives T g, T H T^T, with T
        the shift of (1, x, y) (``fastmoe._frame.shift_matrix``).

        Parameters
        ----------
        origin : array-like of shape (d + 1,)
            The new origin of (x, y).

        Returns
        -------
        StepStatistics
            The moved statistics (self when ``origin`` is the current one).
        """
        origin = np.asarray(origin, dtype=np.float64)
        delta = origin - self.origin
        if not np.any(delta):
            return self
        T = shift_matrix(delta)
        G = np.einsum("ij,kjl,ml->kim", T, self.experts.gram, T)
        K = self.experts.n_experts
        gates = self.gates
        if K > 1:
            Tg = np.kron(np.eye(K - 1), T[:-1, :-1])
            gates = GateStatistics(gates.objective, _frozen(Tg @ gates.gradient),
                                   _frozen(Tg @ gates.hessian @ Tg.T))
        der = self.derivatives
        if der is not None:
            J = origin_jacobian(self.origin[:-1] - origin[:-1], K)
            der = Derivatives(der.log_likelihood, J.T @ der.gradient, J.T @ der.hessian @ J,
                              None if der.meat is None else J.T @ der.meat @ J)
        return StepStatistics(self.log_likelihood, ExpertStatistics(_frozen(G)), gates, self.n,
                              _frozen(origin.copy()), der)

    def at_own_mean(self, params: MoEParams):
        """The statistics, a frame and the model, all at the statistics' own mean.

        Where the server's solves are made.

        Parameters
        ----------
        params : MoEParams
            The model at which the statistics were computed.

        Returns
        -------
        stats : StepStatistics
            The statistics moved to their own mean (:meth:`centred`).
        frame : Frame
            The frame that moves (x, y) there.
        model : MoEParams
            ``params`` written in that frame.
        """
        stats = self.centred()
        frame = origin_frame(stats.origin)
        return stats, frame, frame.params_in(params)

    def centred(self) -> StepStatistics:
        """The statistics moved to their own weighted mean of (x, y): the
        origin at which the server's solves are best conditioned.

        Returns
        -------
        StepStatistics
            The moved statistics (self when they carry no weight).
        """
        total = self.experts.gram.sum(axis=0)
        if not total[0, 0] > 0:
            return self
        return self.moved(self.origin + total[0, 1:] / total[0, 0])

    @property
    def n_bytes(self) -> int:
        """Bytes of the numbers a machine sends for them (float64)."""
        der = 0 if self.derivatives is None else (self.derivatives.gradient.size
                                                  + self.derivatives.hessian.size)
        return 8 * (self.experts.gram.size + self.gates.gradient.size
                    + self.gates.hessian.size + self.origin.size + der + 3)


def origin_frame(origin) -> Frame:
    """The frame that only moves (x, y) to ``origin`` (d+1,)."""
    origin = np.asarray(origin, dtype=np.float64)
    return Frame(origin[:-1], np.ones(origin.size - 1), float(origin[-1]), 1.0)


def _fused_pass(X, y, w, params: MoEParams, n_threads, keep_resp: bool):
    """One compiled pass (``_kernels.em_pass``) at ``params`` over validated
    arrays: (StepStatistics, the responsibilities or None)."""
    n, d = X.shape
    K, p, q = params.n_experts, d + 1, d + 2
    chunk = chunk_size(n)
    nc = n_chunks(n, chunk)
    alpha = params.gate_aug
    resp = np.empty((n, K) if keep_resp else (0, K))
    stats, obj = np.empty((nc, K, q * (q + 1) // 2)), np.empty((nc, 2))
    grad = np.empty((nc, K - 1, p))
    info = np.empty((nc, (K - 1) * K // 2, p * (p + 1) // 2))
    _kernels.em_pass(X, y, w, alpha, params.expert_aug, params.expert_var, resp,
                     np.empty(0), stats, grad, info, obj, chunk, resolve_threads(n_threads))
    G = unpack_sym(stats.sum(axis=0), q)
    if K == 1:
        gates = GateStatistics(0.0, _frozen(np.zeros(0)), _frozen(np.zeros((0, 0))))
    else:
        # for targets whose rows sum to 1, Q = sum_k alpha_k . m_k - sum_i w_i lse_i,
        # m_k = sum_i w_i r_ik (1, x_i) the first row of expert k's Gram matrix
        g, H = assemble_newton(grad, info, K, p)
        Q = float(np.sum(alpha * G[:, 0, :p])) - float(obj[:, 1].sum())
        gates = GateStatistics(Q, _frozen(g), _frozen(-H))
    step = StepStatistics(float(obj[:, 0].sum()), ExpertStatistics(_frozen(G)), gates, n)
    return step, (resp if keep_resp else None)


def step_statistics(X, y, params: MoEParams, *, sample_weight=None,
                    n_threads: int | None = None, derivatives: bool = False) -> StepStatistics:
    """The E-step and the statistics of the M-step in one compiled pass.

    Equal to :func:`e_step`, :func:`expert_statistics` and
    :func:`gate_statistics` (at the gates of ``params``, the responsibilities
    as targets) called in turn, in one pass over the data instead of three:
    what a machine of map-reduce or federated EM sends.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Covariates.
    y : array-like of shape (n,)
        Responses.
    params : MoEParams
        The model, with d features and finite gates.
    sample_weight : array-like of shape (n,), optional
        Non-negative row weights (default ones).
    n_threads : int, optional
        Threads of the compiled kernel (default: all cores).
    derivatives : bool, default False
        Also the gradient and Hessian of the log-likelihood in all the
        parameters (``StepStatistics.derivatives``): Newton steps on the
        server, and the observed information for standard errors.

    Returns
    -------
    StepStatistics
        Additive over row blocks; :func:`update_experts` and a Newton step on
        ``gates`` take the M-step from their sum.

    Examples
    --------
    >>> from fastmoe import engine
    >>> from fastmoe.datasets import make_moe_regression
    >>> X, y, truth, _ = make_moe_regression(600, 2, 2, random_state=0)
    >>> s = engine.step_statistics(X[:300], y[:300], truth) + engine.step_statistics(
    ...     X[300:], y[300:], truth)
    >>> s.n, round(s.log_likelihood, 6) == round(engine.e_step(X, y, truth).log_likelihood, 6)
    (600, True)
    """
    params = _check_params(params)
    X, y, w = check_X_y(X, y, sample_weight, n_features=params.n_features)
    _gate_aug(params.gate_coef, params.gate_intercept, params.n_experts, params.n_features)
    # centred at the block's own mean (x, y): see StepStatistics
    frame = origin_frame(np.append(np.average(X, axis=0, weights=w),
                                   np.average(y, weights=w)))
    Xc, yc, local = frame.X(X), frame.y(y), frame.params_in(params)
    step = _fused_pass(Xc, yc, w, local, n_threads, keep_resp=False)[0]
    der = _derivatives(Xc, yc, w, local) if derivatives else None
    return replace(step, origin=_frozen(np.append(frame.x_mean, frame.y_mean)),
                   derivatives=der)


class EMStep(NamedTuple):
    """Result of :func:`em_step`.

    ``params``: the new parameters; ``log_likelihood``: that of the
    parameters it started from (its E-step).
    """

    params: MoEParams
    log_likelihood: float


def em_step(X, y, params: MoEParams, *, sample_weight=None, gate_steps: int = 1,
            reg_var: float = 1e-6, n_threads: int | None = None) -> EMStep:
    """One (generalised) EM iteration from ``params``.

    The E-step, the experts' closed-form M-step (:func:`update_experts`;
    an expert with no weight keeps its parameters) and ``gate_steps``
    Newton steps with step halving on the gates (:func:`fit_gates`), so the
    log-likelihood never decreases. ``fastmoe.fit_moe`` runs the same
    iteration fused into one pass per iteration.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Covariates.
    y : array-like of shape (n,)
        Responses.
    params : MoEParams
        The parameters the iteration starts from.
    sample_weight : array-like of shape (n,), optional
        Non-negative row weights (default ones).
    gate_steps : int, default 1
        Newton steps on the gates.
    reg_var : float, default 1e-6
        Variance floor, relative to the weighted variance of y.
    n_threads : int, optional
        Threads of the compiled kernels (default: all cores).

    Returns
    -------
    EMStep
        ``(params, log_likelihood)``, the log-likelihood at the input params.

    Examples
    --------
    >>> from fastmoe import engine
    >>> from fastmoe.datasets import make_moe_regression
    >>> X, y, truth, _ = make_moe_regression(1000, 2, 2, random_state=0)
    >>> new, ll = engine.em_step(X, y, truth)
    >>> bool(engine.e_step(X, y, new).log_likelihood >= ll)
    True
    """
    params = _check_params(params)
    X, y, w = check_X_y(X, y, sample_weight, n_features=params.n_features)
    gate_steps = check_int(gate_steps, "gate_steps")
    _gate_aug(params.gate_coef, params.gate_intercept, params.n_experts, params.n_features)
    # in the data's standardised frame (fastmoe._frame), reported in its units
    frame = Frame.of(X, y, w)
    X, y, local = frame.X(X), frame.y(y), frame.params_in(params)
    step, resp = _fused_pass(X, y, w, local, n_threads, keep_resp=True)  # E-step + experts
    experts = update_experts(step.experts, reg_var=reg_var,
                             previous=(local.expert_coef, local.expert_intercept,
                                       local.expert_var))
    gates = fit_gates(X, resp, sample_weight=w, init=(local.gate_coef, local.gate_intercept),
                      max_iter=gate_steps, tol=0.0, n_threads=n_threads)
    ll = step.log_likelihood + frame.log_jacobian(w.sum())
    return EMStep(frame.params_out(params_from(gates, experts)), ll)


# ----------------------------------------------------------------------------
# the reduction
# ----------------------------------------------------------------------------
def expert_costs(source: MoEParams, target: MoEParams, X, *, cost: str = "kl") -> np.ndarray:
    """Closed-form costs between the experts of two models at each row of X.

    For source expert l and target expert k at x, with means m(x) = b + x . c:
    "kl" is KL(N(m_l, v_l) || N(m_k, v_k)) =
    (log(v_k / v_l) + v_l / v_k + (m_l - m_k)^2 / v_k - 1) / 2, and "w2" the
    squared Wasserstein-2 distance (m_l - m_k)^2 + (sqrt v_l - sqrt v_k)^2.
    For Poisson, Bernoulli and Gamma experts, the KL divergence between
    their conditional distributions (docs/method.rst, section 11; "kl"
    only). Meant for small n; the reduction never forms this tensor.

    Parameters
    ----------
    source : MoEParams
        L experts.
    target : MoEParams
        K experts, with the same number of features.
    X : array-like of shape (n, d)
        Covariates.
    cost : {"kl", "w2"}

    Returns
    -------
    ndarray of shape (n, L, K)
        c_lk(x_i) for every row i, source expert l and target expert k.

    Examples
    --------
    >>> from fastmoe import engine
    >>> from fastmoe.datasets import make_moe_regression
    >>> X, _, truth, _ = make_moe_regression(10, 2, 3, random_state=0)
    >>> float(abs(engine.expert_costs(truth, truth, X)[:, [0, 1, 2], [0, 1, 2]]).max())
    0.0
    """
    source, target = _check_params(source, True), _check_params(target, True)
    check_choice(cost, "cost", COSTS)
    if source.n_features != target.n_features:
        raise ValueError(f"source has {source.n_features} features, target "
                         f"{target.n_features}.")
    if source.family != target.family:
        raise ValueError(f"source holds {source.family} experts, target {target.family}.")
    X = check_X(X, source.n_features)
    n, L, K = X.shape[0], source.n_experts, target.n_experts
    if n * L * K * 8 > MAX_COST_BYTES:
        raise ValueError(f"the cost tensor ({n}, {L}, {K}) would take more than "
                         f"{MAX_COST_BYTES >> 20} MiB; use fewer rows (the reduction, "
                         "engine.reduce, never forms it).")
    eta_k = X @ target.expert_coef.T + target.expert_intercept
    eta_l = X @ source.expert_coef.T + source.expert_intercept
    if source.family != "gaussian":
        if cost != "kl":
            raise ValueError(f"cost={cost!r} serves Gaussian experts; {source.family} "
                             "experts' cost is their KL divergence.")
        from .families import kl_costs

        return kl_costs(source.family, eta_l[:, :, None], 1.0 / source.expert_var[None, :, None],
                        eta_k[:, None, :], 1.0 / target.expert_var[None, None, :])
    gap = eta_k[:, None, :] - eta_l[:, :, None]
    vl, vk = source.expert_var[:, None], target.expert_var[None, :]
    if cost == "kl":
        return 0.5 * (np.log(vk / vl) + vl / vk + gap**2 / vk - 1.0)
    return gap**2 + (np.sqrt(vl) - np.sqrt(vk)) ** 2


@dataclass(frozen=True)
class LocalExperts:
    """The L local experts of M machines, stacked: what the reduction reads.

    Machine m owns ``n_experts[m]`` consecutive rows and weight ``weights[m]``;
    within a machine the gates are a softmax (in any reference).

    Attributes
    ----------
    gate_coef : ndarray of shape (L, d)
    gate_intercept : ndarray of shape (L,)
    expert_coef : ndarray of shape (L, d)
    expert_intercept : ndarray of shape (L,)
    expert_var : ndarray of shape (L,)
    n_experts : tuple of int
        Experts per machine, summing to L.
    weights : ndarray of shape (M,)
        Machine weights lambda_m (normalised to sum to 1).
    """

    gate_coef: np.ndarray
    gate_intercept: np.ndarray
    expert_coef: np.ndarray
    expert_intercept: np.ndarray
    expert_var: np.ndarray
    n_experts: tuple
    weights: np.ndarray

    def __post_init__(self):
        counts = self.n_experts
        if isinstance(counts, (int, np.integer)) or len(counts) == 0 or not all(
                isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1
                for k in counts):
            raise ValueError(f"n_experts must be a non-empty sequence of positive ints; got "
                             f"{counts!r}.")
        counts = tuple(int(k) for k in counts)
        L = sum(counts)
        coef = _as_float_array(self.expert_coef, "expert_coef")
        if coef.ndim != 2 or coef.shape[0] != L:
            raise ValueError(f"expert_coef must have shape ({L}, d) for n_experts summing to "
                             f"{L}; got {coef.shape}.")
        models = []
        lo = 0
        for k in counts:  # MoEParams checks each machine's block
            models.append(MoEParams(np.asarray(self.gate_coef)[lo:lo + k],
                                    np.asarray(self.gate_intercept)[lo:lo + k],
                                    coef[lo:lo + k], np.asarray(self.expert_intercept)[lo:lo + k],
                                    np.asarray(self.expert_var)[lo:lo + k]))
            lo += k
        w = _as_float_array(self.weights, "weights")
        if w.shape != (len(counts),) or not (np.all(np.isfinite(w)) and np.all(w > 0)):
            raise ValueError(f"weights must be {len(counts)} positive finite numbers; got "
                             f"shape {w.shape}.")
        for name, value in (("gate_coef", np.vstack([m.gate_coef for m in models])),
                            ("gate_intercept", np.concatenate([m.gate_intercept
                                                               for m in models])),
                            ("expert_coef", coef.copy()),
                            ("expert_intercept", np.concatenate([m.expert_intercept
                                                                 for m in models])),
                            ("expert_var", np.concatenate([m.expert_var for m in models])),
                            ("weights", w / w.sum())):
            object.__setattr__(self, name, _frozen(np.array(value, dtype=np.float64)))
        object.__setattr__(self, "n_experts", counts)
        object.__setattr__(self, "_models", tuple(models))

    @classmethod
    def from_models(cls, models: Sequence[MoEParams], sample_sizes=None) -> LocalExperts:
        """Stack the local models.

        Parameters
        ----------
        models : sequence of MoEParams
            The local models, on the same covariates; their numbers of experts
            may differ.
        sample_sizes : array-like of shape (M,), optional
            Their weights (default equal).

        Returns
        -------
        LocalExperts
            The M*K local experts with their gates and machine weights.
        """
        if isinstance(models, MoEParams) or len(models) == 0:
            raise ValueError("models must be a non-empty sequence of MoEParams.")
        models = [_check_params(m) for m in models]
        sizes = np.ones(len(models)) if sample_sizes is None else sample_sizes
        return cls(np.vstack([m.gate_coef for m in models]),
                   np.concatenate([m.gate_intercept for m in models]),
                   np.vstack([m.expert_coef for m in models]),
                   np.concatenate([m.expert_intercept for m in models]),
                   np.concatenate([m.expert_var for m in models]),
                   tuple(m.n_experts for m in models), sizes)

    @property
    def n_features(self) -> int:
        """Number of covariates d.
        """
        return self.expert_coef.shape[1]

    @functools.cached_property
    def _mixture(self):
        """The stacked mixture the reduction's kernels read, built once."""
        return large_mixture(self._models, self.weights)


def _check_local(local) -> None:
    if not isinstance(local, LocalExperts):
        raise TypeError(f"local must be LocalExperts (LocalExperts.from_models(models, "
                        f"sample_sizes)); got {type(local).__name__}.")


def _reduction_inputs(local: LocalExperts, X_support, K: int):
    _check_local(local)
    mix = local._mixture
    return mix, _check_support(X_support, mix, K)


class MMStep(NamedTuple):
    """Result of :func:`mm_step`.

    experts : the updated targets; objective : the transport divergence R at
    the input targets; local_mass : (L, K) the mass each local expert sends
    to each input target; notes : targets that received no mass and were
    re-seeded.
    """

    experts: Experts
    objective: float
    local_mass: np.ndarray
    notes: tuple


def _centred(experts: Experts, shift: float):
    beta = np.column_stack([experts.intercept - shift, experts.coef])
    return np.ascontiguousarray(beta), np.ascontiguousarray(experts.var)


def _uncentred(beta, var, shift: float) -> Experts:
    return Experts(np.ascontiguousarray(beta[:, 1:]), beta[:, 0] + shift, np.array(var))


def mm_step(local: LocalExperts, X_support, experts, *, cost: str = "kl",
            variance_update: str = "exact", n_threads: int | None = None) -> MMStep:
    """One MM iteration of the reduction from the targets ``experts``.

    The assignment step sends every local expert l at every support point s
    to its cheapest target; the update is the closed-form minimiser of
    R = sum_s sum_l w_l(x_s) c_{l k*}(x_s) for that plan (weighted least
    squares for the coefficients; for "kl" the variance that minimises the
    KL costs, for "w2" the square of the mean local standard deviation).

    Parameters
    ----------
    local : LocalExperts
        The local experts and machine weights (:meth:`LocalExperts.from_models`).
    X_support : array-like of shape (S, d)
        Support covariates.
    experts : Experts or (coef (K, d), intercept (K,), var (K,))
        The current targets.
    cost : {"kl", "w2"}
    variance_update : {"exact", "published"}
        "published" takes the plan-weighted mean of the local variances, as
        the authors' code does.
    n_threads : int, optional
        Threads of the compiled kernels (default: all cores).

    Returns
    -------
    MMStep
        The updated targets, R at the input targets and the plan's masses.
    """
    check_choice(cost, "cost", COSTS)
    check_choice(variance_update, "variance_update", VARIANCE_UPDATES)
    _check_local(local)
    experts = _check_experts(experts, local.n_features)
    mix, Xs = _reduction_inputs(local, X_support, experts.coef.shape[0])
    beta, var = _centred(experts, mix.shift)
    st = mm_pass(mix, Xs, beta, var, _COST_CODES[cost], resolve_threads(n_threads))
    notes: list[str] = []
    beta, var = _update(mix, st, beta, var, _COST_CODES[cost], variance_update, notes)
    return MMStep(_uncentred(beta, var, mix.shift), st.objective, st.mass, tuple(notes))


@dataclass(frozen=True)
class Reduction:
    """Result of :func:`reduce`.

    Attributes
    ----------
    experts : Experts
        The K global experts, in canonical order (increasing intercept).
    objective : float
        R at ``experts``.
    history : ndarray of shape (n_iter + 1,)
        R after each MM iteration of the best start.
    n_iter : int
    converged : bool
    notes : tuple of str
        Targets re-seeded on the way.
    """

    experts: Experts
    objective: float
    history: np.ndarray = field(repr=False)
    n_iter: int
    converged: bool
    notes: tuple = ()


def reduce(local: LocalExperts, n_experts: int, X_support, *, cost: str = "kl", init=None,
           n_init: int = 3, max_iter: int = 300, tol: float = 1e-10,
           variance_update: str = "exact", random_state=None,
           n_threads: int | None = None) -> Reduction:
    """Reduce the L local experts to K global experts by MM (no gates).

    Minimises the composite transportation divergence R over the support
    from each start (:func:`mm_step` repeated until R changes by less than
    ``tol * R``) and keeps the smallest. ``fastmoe.aggregate`` is this
    reduction followed by the gate refit.

    Parameters
    ----------
    local : LocalExperts
        The local experts and machine weights (:meth:`LocalExperts.from_models`).
    n_experts : int
        K, at most L.
    X_support : array-like of shape (S, d)
        At least (d+1)(K-1) rows.
    cost : {"kl", "w2"}
    init : Experts or (coef, intercept, var), optional
        The only start. Default: the aligned average of the local models when
        every machine has K experts, then k-means starts on the local experts
        up to ``n_init``.
    n_init : int, default 3
        Starts; the smallest R is kept.
    max_iter : int, default 300
        MM iterations at most per start.
    tol : float, default 1e-10
        Stop when R changes by less than ``tol * R``.
    variance_update : {"exact", "published"}
    random_state : None, int or numpy Generator
        Seeds the k-means starts.
    n_threads : int, optional
        Threads of the compiled kernels (default: all cores).

    Returns
    -------
    Reduction
        The global experts and the MM run that found them.

    Examples
    --------
    >>> from fastmoe import engine, fit_moe
    >>> from fastmoe.datasets import make_moe_regression
    >>> X, y, _, _ = make_moe_regression(4000, 2, 2, random_state=0)
    >>> fits = [fit_moe(X[i::2], y[i::2], 2, random_state=0).params for i in range(2)]
    >>> red = engine.reduce(engine.LocalExperts.from_models(fits), 2, X[:500])
    >>> red.experts.coef.shape
    (2, 2)
    """
    check_choice(cost, "cost", COSTS)
    check_choice(variance_update, "variance_update", VARIANCE_UPDATES)
    K = check_int(n_experts, "n_experts")
    n_init = check_int(n_init, "n_init")
    max_iter = check_int(max_iter, "max_iter", 0)
    tol = check_float(tol, "tol", 0.0, inclusive=True)
    mix, Xs = _reduction_inputs(local, X_support, K)
    if K > mix.gate.shape[0]:
        raise ValueError(f"n_experts={K} is more than the {mix.gate.shape[0]} local experts.")
    start = "aligned"
    if init is not None:
        start = _centred(_check_experts(init, mix.n_features, "init"), mix.shift)
        if start[0].shape[0] != K:
            raise ValueError(f"init has {start[0].shape[0]} experts; n_experts is {K}.")
    beta, var, history, n_iter, converged, notes, _ = reduce_mixture(
        mix, Xs, K, cost=_COST_CODES[cost], init=start, n_init=n_init, max_iter=max_iter, tol=tol,
        variance_update=variance_update, rng=check_random_state(random_state),
        n_threads=resolve_threads(n_threads))
    history.setflags(write=False)
    return Reduction(_uncentred(beta, var, mix.shift), float(history[-1]), history, n_iter,
                     converged, tuple(notes))

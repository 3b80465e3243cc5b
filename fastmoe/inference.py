"""Standard errors and a coefficient table (docs/method.rst, section 10).

Bootstrapping a mixture is unsafe (the experts' labels switch between
resamples); the answer is the observed information: the negated Hessian of
the observed-data log-likelihood at the fit (Louis' identity,
``fastmoe._information``). Its inverse is the covariance of the estimates;
the sandwich H^-1 (sum_i g_i g_i^T) H^-1 (``robust=True``) stays valid when
the model is misspecified. Both are sums over rows, so a distributed fit
gets them from one round of its machines.

Standard errors are reported in the stored convention of
:class:`fastmoe.MoEParams`: the last gate is the zero reference (its
standard errors are zero), variances in variance units (the delta method
from the log variance the derivatives are taken in).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from ._frame import Frame
from ._information import covariance, derivatives, family_derivatives
from ._params import MoEParams
from ._validation import check_X_y
from .families import get_family

__all__ = ["standard_errors", "summary"]


def standard_errors(params: MoEParams, X, y, *, sample_weight=None, offset=None,
                    robust: bool = False) -> MoEParams:
    """Standard errors of a model fitted by maximum likelihood to (X, y).

    Parameters
    ----------
    params : MoEParams
        The fitted model (at the maximum of the likelihood: elsewhere the
        inverse information is no covariance).
    X : array-like of shape (n, d)
        The covariates it was fitted on.
    y : array-like of shape (n,)
        The responses.
    sample_weight : array-like of shape (n,), optional
        The row weights of the fit.
    offset : array-like of shape (n,), optional
        The offset of the fit (experts of a family other than Gaussian).
    robust : bool, default False
        The sandwich (Huber-White) estimate instead of the inverse observed
        information.

    Returns
    -------
    MoEParams
        The standard error of every parameter, in the fields of ``params``
        (the last gate's are zero; for Poisson and Bernoulli experts, which
        have no dispersion, ``expert_var`` holds the smallest positive float).

    Examples
    --------
    >>> from fastmoe import fit_moe
    >>> from fastmoe.inference import standard_errors
    >>> from fastmoe.datasets import make_moe_regression
    >>> X, y, _, _ = make_moe_regression(2000, 2, 2, random_state=0)
    >>> fit = fit_moe(X, y, 2, random_state=0)
    >>> se = standard_errors(fit.params, X, y)
    >>> bool(se.expert_coef.max() < 0.2)
    True
    """
    return _both(params, X, y, sample_weight, robust, offset)[1 if robust else 0]


def _both(params: MoEParams, X, y, sample_weight=None, robust: bool = True, offset=None):
    """(standard errors, sandwich standard errors or None) from one pass."""
    X, y, w = check_X_y(X, y, sample_weight, n_features=params.n_features)
    if params.family == "gaussian":
        if offset is not None:
            y = y - np.asarray(offset, dtype=np.float64)
        frame = Frame.of(X, y, w)
        local = frame.params_in(params)
        der = derivatives(frame.X(X), frame.y(y), w, local, meat=robust)
    else:  # the response keeps its units: only the covariates are standardised
        frame = Frame.of(X, None, w)
        local = frame.params_in(params)
        der = family_derivatives(frame.X(X), y, w, local, offset, meat=robust)
    plain = errors_in_units(frame, local, covariance(der.hessian))
    sandwich = errors_in_units(frame, local, covariance(der.hessian, der.meat)) if robust \
        else None
    return plain, sandwich


def errors_in_units(frame: Frame, local: MoEParams, cov: np.ndarray) -> MoEParams:
    """Standard errors, in the user's units, of the model whose parameters in
    ``frame`` are ``local`` and have covariance ``cov`` in theta (the
    derivatives' parameters): the delta method through
    :meth:`fastmoe._frame.Frame.params_out`, which is linear in the
    coefficients and multiplies the variances by ``y_scale**2``."""
    K, d = local.n_experts, local.n_features
    p = d + 1
    J = jacobian_out(frame, local)
    se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", J, cov, J), 0.0))
    gates = np.zeros((K, p))
    gates[:-1] = se[:(K - 1) * p].reshape(K - 1, p)
    experts = se[(K - 1) * p:(2 * K - 1) * p].reshape(K, p)
    var = se[(2 * K - 1) * p:] if se.size > (2 * K - 1) * p else np.zeros(K)
    return MoEParams(gates[:, 1:], gates[:, 0], experts[:, 1:], experts[:, 0],
                     np.maximum(var, np.finfo(float).tiny))


def jacobian_out(frame: Frame, local: MoEParams) -> np.ndarray:
    """(P, P) d(user parameters) / d theta: per gate and expert, (intercept,
    slopes) in the user's units from (intercept, slopes) in the frame; the
    variances from the log variances."""
    K, d = local.n_experts, local.n_features
    p = d + 1
    block = np.zeros((p, p))
    block[0, 0] = 1.0
    block[0, 1:] = -frame.x_mean / frame.x_scale
    block[1:, 1:] = np.diag(1.0 / frame.x_scale)
    T = K if get_family(local.family).has_dispersion else 0
    P = (2 * K - 1) * p + T
    J = np.zeros((P, P))
    for b in range(2 * K - 1):
        rows = slice(b * p, (b + 1) * p)
        J[rows, rows] = block * (1.0 if b < K - 1 else frame.y_scale)
    if T:
        var_user = local.expert_var * frame.y_scale**2
        J[(2 * K - 1) * p:, (2 * K - 1) * p:] = np.diag(var_user)
    return J


def summary(params: MoEParams, se: MoEParams, feature_names=None) -> str:
    """A coefficient table per gate and expert: estimate, standard error, z
    and the two-sided p-value of estimate = 0 (for a variance, of nothing:
    it is shown without z and p).

    Parameters
    ----------
    params : MoEParams
        The fitted model.
    se : MoEParams
        Its standard errors (:func:`standard_errors`).
    feature_names : sequence of str, optional
        Names of the d covariates (default x0, x1, ...).

    Returns
    -------
    str
        The table, one block per gate (the last is the reference) and per
        expert.
    """
    d, K = params.n_features, params.n_experts
    names = ["(intercept)"] + (list(feature_names) if feature_names is not None
                               else [f"x{j}" for j in range(d)])
    if len(names) != d + 1:
        raise ValueError(f"feature_names has {len(names) - 1} names for {d} covariates.")
    width = max(12, max(len(n) for n in names))
    head = f"{'':<{width}} {'estimate':>12} {'std. err.':>12} {'z':>9} {'P>|z|':>9}"
    lines = []

    def row(name, est, err, test=True):
        if test and err > 0:
            z = est / err
            return (f"{name:<{width}} {est:>12.6g} {err:>12.4g} {z:>9.3f} "
                    f"{2 * norm.sf(abs(z)):>9.3g}")
        return f"{name:<{width}} {est:>12.6g} {err:>12.4g} {'':>9} {'':>9}"

    for k in range(K - 1):
        lines += [f"gate {k} (against gate {K - 1}, the reference)", head]
        est = np.concatenate([[params.gate_intercept[k]], params.gate_coef[k]])
        err = np.concatenate([[se.gate_intercept[k]], se.gate_coef[k]])
        lines += [row(n, e, s) for n, e, s in zip(names, est, err)] + [""]
    for k in range(K):
        lines += [f"expert {k}", head]
        est = np.concatenate([[params.expert_intercept[k]], params.expert_coef[k]])
        err = np.concatenate([[se.expert_intercept[k]], se.expert_coef[k]])
        lines += [row(n, e, s) for n, e, s in zip(names, est, err)]
        if params.family == "gaussian":
            lines.append(row("variance", params.expert_var[k], se.expert_var[k], test=False))
        elif get_family(params.family).has_dispersion:
            lines.append(row("dispersion", params.expert_var[k], se.expert_var[k], test=False))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"

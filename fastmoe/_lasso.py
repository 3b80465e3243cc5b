"""The LASSO option of a fit (``fit_moe(..., penalty="l1")``): EM on the
log-likelihood minus an L1 penalty on the slopes of the experts and of the
gates, in standard-deviation units, started from the plain fit.

The penalised objective is

    L(theta) - lam * sum_k sum_j s_j (|b_kj| / sigma + |a_kj|)

with s_j the (weighted) standard deviation of covariate j, sigma the noise
standard deviation of the starting fit (the root of its experts' variances
averaged with their weights; held fixed, so the objective is), b_kj the
expert slopes and a_kj the gate slopes relative to the last gate
(intercepts free): slopes in units of noise per standard deviation of their
covariate.

It is meant for sparse truths. With the variances free the penalised
log-likelihood is not concave, and on a dense truth the penalty saved by
zeroing every slope can outweigh the log-likelihood lost: on the reference
data (d=20, K=5, 100 expert slopes of 1 to 5 standard deviations, 5625-row
shards) the "auto" strength set nearly every slope to zero (log-likelihood
-22242 against -13080), with either this penalty or one divided by each
expert's own sigma_k (Stadler, Buhlmann and van de Geer 2010).

Each EM iteration keeps the E-step and replaces each M-step block by a step
that increases the penalised objective, so the objective never decreases (a
generalised EM):

- experts: coordinate descent on the weighted lasso of expert k, with its
  variance held (the closed-form Gram matrices of the plain M-step), then
  its variance in closed form;
- gates: one proximal Newton step (coordinate descent on the L1-penalised
  quadratic model, as glmnet does) with step halving on the penalised gate
  objective.

This path runs through the model's own E-step, the gates' Newton statistics
and numpy, not the fused EM pass: it costs a few times a plain EM iteration.
"""

from __future__ import annotations

import numpy as np

from ._gating import halve_step, newton_system
from ._linalg import chunk_size, n_chunks, resolve_threads
from ._params import MoEParams

#: coordinate-descent sweeps at most per M-step block, and their tolerance
CD_SWEEPS, CD_TOL = 200, 1e-10


def l1_strength(n: float, n_features: int, n_experts: int) -> float:
    """The default ``l1_strength="auto"``: the universal threshold
    sqrt(2 (n / K) log p) over the p = (2K - 1) d penalised slopes, in
    log-likelihood units per standard deviation: n / K is an expert's typical
    sample, so each expert's slopes are thresholded at about sigma_k
    sqrt(2 log p / n_k), the lasso's universal rule for its own rows. (With
    all n rows instead, on the reference data at 16 machines of 5625 rows,
    d=20, K=5, the penalty outweighed the log-likelihood and the local fits
    collapsed.) Its effect on an estimate shrinks like sqrt(log p / n)."""
    p = max(2, (2 * n_experts - 1) * n_features)
    return float(np.sqrt(2.0 * n / n_experts * np.log(p)))


def soft_threshold_quadratic(A, b, z, pen):
    """argmin_z 0.5 z'Az - b'z + sum_j pen_j |z_j| by cyclic coordinate
    descent from ``z`` (A symmetric positive semi-definite; pen_j >= 0). The
    objective never increases."""
    z = z.copy()
    diag = np.diag(A)
    for _ in range(CD_SWEEPS):
        top = 0.0
        for j in range(z.size):
            if diag[j] <= 0.0:
                continue
            rho = b[j] - A[j] @ z + diag[j] * z[j]
            new = np.sign(rho) * max(abs(rho) - pen[j], 0.0) / diag[j]
            top = max(top, abs(new - z[j]) * np.sqrt(diag[j]))
            z[j] = new
        if top <= CD_TOL * (1.0 + np.abs(z).max()):
            break
    return z


def l1_penalty(params: MoEParams, lam: float, x_sd, noise_sd: float) -> float:
    """lam * sum_k sum_j s_j (|b_kj| / sigma + |a_kj|)."""
    return float(lam * (np.sum(np.abs(params.expert_coef) * x_sd) / noise_sd
                        + np.sum(np.abs(params.gate_coef) * x_sd)))


def _experts(Z, y, w, R, beta, var, lam, x_sd, noise_sd, var_floor):
    beta, var = beta.copy(), var.copy()
    pen_unit = np.concatenate([[0.0], lam * x_sd / noise_sd])
    for k in range(beta.shape[0]):
        rk = w * R[:, k]
        total = rk.sum()
        if total <= 0.0:
            continue
        G = (Z * rk[:, None]).T @ Z
        c = Z.T @ (rk * y)
        beta[k] = soft_threshold_quadratic(G, c, beta[k], pen_unit * var[k])
        var[k] = max(float(rk @ (y - Z @ beta[k]) ** 2) / total, var_floor)
    return beta, var


def _gates(X, w, R, alpha, lam, x_sd, n_threads):
    """One proximal Newton step on the gates, with step halving on the
    L1-penalised gate objective (``_gating.halve_step``)."""
    K, p = alpha.shape
    alpha = alpha - alpha[-1]  # the last gate the reference
    weights = np.concatenate([[0.0], lam * x_sd])  # per coefficient of one gate

    def penalty_of(a):
        return float(np.sum(weights * np.abs(a[:-1])))

    chunk = chunk_size(X.shape[0])
    nc, threads = n_chunks(X.shape[0], chunk), resolve_threads(n_threads)
    q, grad, info = newton_system(X, w, R, alpha, chunk, nc, threads)
    free = alpha[:-1].ravel()
    target = soft_threshold_quadratic(info, info @ free + grad, free, np.tile(weights, K - 1))
    step = np.vstack([target.reshape(K - 1, p), np.zeros(p)]) - alpha
    found = halve_step(X, w, R, alpha, step, q - penalty_of(alpha), chunk, nc, threads,
                       penalty_of=penalty_of)
    return alpha if found is None else found[0]


def lasso_em(X, y, w, params: MoEParams, lam: float, *, max_iter: int, tol: float,
             reg_var: float, n_threads=None):
    """EM on the L1-penalised log-likelihood from ``params``: (params,
    log-likelihood, penalty, n_iter, converged, history of the penalised
    objective)."""
    x_sd = np.sqrt(np.average((X - np.average(X, axis=0, weights=w)) ** 2, axis=0, weights=w))
    x_sd = np.where(x_sd > 0, x_sd, 1.0)
    y_var = float(np.average((y - np.average(y, weights=w)) ** 2, weights=w))
    var_floor = reg_var * (y_var if y_var > 0 else 1.0)
    Z = np.column_stack([np.ones(X.shape[0]), X])
    row_ll, log_resp = params.e_step(X, y, n_threads=n_threads)
    R = np.exp(log_resp)
    share = w @ R
    noise_sd = float(np.sqrt(share @ params.expert_var / share.sum()))
    history, converged, it = [], False, 0
    for it in range(1, max_iter + 1):
        objective = float(w @ row_ll) - l1_penalty(params, lam, x_sd, noise_sd)
        if history and objective - history[-1] <= tol * abs(objective):
            history.append(objective)
            converged = True
            break
        history.append(objective)
        beta, var = _experts(Z, y, w, R, params.expert_aug, params.expert_var, lam, x_sd,
                             noise_sd, var_floor)
        alpha = _gates(X, w, R, params.gate_aug, lam, x_sd, n_threads)
        params = MoEParams.from_aug(alpha, beta, var)
        row_ll, log_resp = params.e_step(X, y, n_threads=n_threads)  # one pass: both
        R = np.exp(log_resp)
    ll = float(w @ row_ll)
    if not converged:
        history.append(ll - l1_penalty(params, lam, x_sd, noise_sd))
    return (params, ll, l1_penalty(params, lam, x_sd, noise_sd), it, converged,
            np.array(history))

"""Slow, obviously correct versions of every compiled kernel (loops, scipy)."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from scipy.stats import norm


def xt(X):
    return np.column_stack([np.ones(X.shape[0]), X])


def gate_log_proba(X, alpha):
    Z = xt(X)
    out = np.empty((X.shape[0], alpha.shape[0]))
    for i in range(X.shape[0]):
        logits = np.array([Z[i] @ alpha[k] for k in range(alpha.shape[0])])
        out[i] = logits - logsumexp(logits)
    return out


def expert_log_density(X, y, beta, var):
    Z = xt(X)
    out = np.empty((X.shape[0], beta.shape[0]))
    for i in range(X.shape[0]):
        for k in range(beta.shape[0]):
            out[i, k] = norm.logpdf(y[i], loc=Z[i] @ beta[k], scale=np.sqrt(var[k]))
    return out


def e_step(X, y, w, alpha, beta, var):
    """(log_resp, row_ll, gram) with gram[k] = sum_i w_i r_ik z z^T, z = (1, x, y)."""
    joint = gate_log_proba(X, alpha) + expert_log_density(X, y, beta, var)
    row_ll = np.array([logsumexp(joint[i]) for i in range(X.shape[0])])
    log_resp = joint - row_ll[:, None]
    Z = np.column_stack([xt(X), y])
    K = alpha.shape[0]
    gram = np.zeros((K, Z.shape[1], Z.shape[1]))
    for i in range(X.shape[0]):
        for k in range(K):
            gram[k] += w[i] * np.exp(log_resp[i, k]) * np.outer(Z[i], Z[i])
    return log_resp, row_ll, gram


def gate_objective(X, w, R, alpha):
    lp = gate_log_proba(X, alpha)
    total = 0.0
    for i in range(X.shape[0]):
        for k in range(alpha.shape[0]):
            if R[i, k] != 0:
                total += w[i] * R[i, k] * lp[i, k]
    return total


def gate_newton(X, w, R, alpha):
    """(objective, gradient (K-1, p), information matrix ((K-1)p, (K-1)p)),
    the information being minus the Hessian of the objective."""
    Z = xt(X)
    K, p = alpha.shape
    pi = np.exp(gate_log_proba(X, alpha))
    grad = np.zeros((K - 1, p))
    info = np.zeros(((K - 1) * p, (K - 1) * p))
    for i in range(X.shape[0]):
        s = R[i].sum()
        for a in range(K - 1):
            grad[a] += w[i] * (R[i, a] - s * pi[i, a]) * Z[i]
            for b in range(K - 1):
                c = w[i] * s * pi[i, a] * ((a == b) - pi[i, b])
                info[a * p:(a + 1) * p, b * p:(b + 1) * p] += c * np.outer(Z[i], Z[i])
    return gate_objective(X, w, R, alpha), grad, info

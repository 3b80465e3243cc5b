"""The gate refit of the aggregate (docs/method.rst, section 5): soft
targets for the global gates on the support, from the transport plan
("assigned", "plan"), from the responses ("posterior") or by minimising the
KL divergence of the large mixture to the aggregate ("kl", by Gauss-Hermite
quadrature over y).
"""

from __future__ import annotations

import numpy as np

from ._gating import fit_gates
from ._reduction import support_blocks

GATE_TARGETS = ("assigned", "kl", "plan", "posterior")
#: Gauss-Hermite nodes per local expert for the "kl" gate target
GH_NODES = 10
#: support points per block when gate targets are built (bounds memory)
TARGET_BLOCK = 2048


def _target_assigned(mix, Xs, mass, K, cache=None):
    owner = np.argmax(mass, axis=1)  # a_l
    onehot = np.zeros((mass.shape[0], K))
    onehot[np.arange(mass.shape[0]), owner] = 1.0
    T = np.empty((Xs.shape[0], K))
    for lo, hi, W, _ in support_blocks(mix, Xs, TARGET_BLOCK, cache):
        T[lo:hi] = (W @ onehot) / W.sum(axis=1, keepdims=True)
    return T


def _target_plan(mix, Xs, assign, K, cache=None):
    T = np.zeros((Xs.shape[0], K))
    for lo, hi, W, _ in support_blocks(mix, Xs, TARGET_BLOCK, cache):
        b = slice(lo, hi)
        A = assign[b]
        for k in range(K):
            T[b, k] = np.sum(W * (A == k), axis=1)
        T[b] /= T[b].sum(axis=1, keepdims=True)
    return T


def _log_expert(y, mean, var):
    return -0.5 * (np.log(2 * np.pi * var) + (y - mean) ** 2 / var)


def _target_posterior(mix, Xs, ys, assign, beta, var, K, cache=None):
    prior = _target_plan(mix, Xs, assign, K, cache)
    mk = Xs @ beta[:, 1:].T + beta[:, 0]
    with np.errstate(divide="ignore"):
        logj = np.log(prior) + _log_expert(ys[:, None], mk, var)
    logj -= logj.max(axis=1, keepdims=True)
    T = np.exp(logj)
    return T / T.sum(axis=1, keepdims=True)


def _kl_targets(mix, Xs, alpha, beta, var, nodes, weights, cache=None):
    """Soft targets of the KL-projection EM and its expected log-likelihood
    sum_s sum_l w_l sum_q omega_q log f_red(m_l + sd_l z_q | x_s)."""
    K = beta.shape[0]
    T = np.empty((Xs.shape[0], K))
    total = 0.0
    sd_l = np.sqrt(mix.var)
    for lo, hi, W, ml in support_blocks(mix, Xs, TARGET_BLOCK, cache):  # (s, L) each
        b = slice(lo, hi)
        X = Xs[b]
        Y = ml[:, :, None] + sd_l[None, :, None] * nodes[None, None, :]  # (s, L, Q)
        logit = X @ alpha[:, 1:].T + alpha[:, 0]
        logpi = logit - np.logaddexp.reduce(logit, axis=1, keepdims=True)  # (s, K)
        mk = X @ beta[:, 1:].T + beta[:, 0]  # (s, K)
        logj = logpi[:, None, None, :] + _log_expert(Y[..., None], mk[:, None, None, :], var)
        lse = np.logaddexp.reduce(logj, axis=3, keepdims=True)
        r = np.exp(logj - lse)  # (s, L, Q, K)
        T[b] = np.einsum("sl,q,slqk->sk", W, weights, r, optimize=True)
        total += float(np.einsum("sl,q,slq->", W, weights, lse[..., 0], optimize=True))
    T /= T.sum(axis=1, keepdims=True)
    return T, total


def _fit_gates_kl(mix, Xs, alpha, beta, var, *, max_iter, tol, n_threads, cache=None):
    nodes, weights = np.polynomial.hermite_e.hermegauss(GH_NODES)
    weights = weights / weights.sum()
    w = np.ones(Xs.shape[0])
    prev = -np.inf
    converged = False
    for _ in range(max_iter):
        T, value = _kl_targets(mix, Xs, alpha, beta, var, nodes, weights, cache)
        if value - prev <= tol * abs(value):
            converged = True
            break
        prev = value
        alpha = fit_gates(Xs, T, w, alpha, max_iter=5, n_threads=n_threads).alpha
    return alpha, converged

"""numba kernel of :func:`fastmoe.fit_many`: EM for many small Gaussian
mixtures of experts, each data set fitted whole in compiled code.

A host that runs thousands of small fits (single-cell quality control fits
one per sample) pays, with :func:`fastmoe.fit_moe`, Python's cost per EM
iteration (a few hundred microseconds) many times over rows that take
microseconds. Here one call fits every data set: the E-step, the experts'
weighted least squares, the gates' Newton step with step halving and the
convergence check all run in the loop over a data set's rows, and the data
sets are spread over the threads (``prange``); each data set's arithmetic is
the same whatever the thread count, so the results do not depend on it.

The data arrive standardised (each data set's covariates and response
centred and of unit spread), concatenated, with ``starts`` giving each data
set's rows; every start's random gate directions come from the caller
(drawn from ``random_state``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import jit_pair, jit_serial
from ._rows import log_gates

_LOG_2PI = math.log(2.0 * math.pi)
#: halvings of the gates' Newton step at most
_HALVINGS = 30
#: an expert whose share of a data set's weight falls below this is empty
_EMPTY = 1e-8


@jit_serial
def _solve(A, b):
    """x with A x = b for a symmetric positive definite A (a ridge of
    1e-10 of its largest diagonal keeps a near-singular A solvable)."""
    n = A.shape[0]
    M = A.copy()
    top = 0.0
    for i in range(n):
        top = max(top, M[i, i])
    for i in range(n):
        M[i, i] += 1e-10 * top + 1e-300
    return np.linalg.solve(M, b)


@jit_serial
def _normalise_row(R, i):
    """R[i] <- softmax(R[i]); returns the log of the sum of exp(R[i])."""
    K = R.shape[1]
    top = -np.inf
    for k in range(K):
        top = max(top, R[i, k])
    tot = 0.0
    for k in range(K):
        R[i, k] = math.exp(R[i, k] - top)
        tot += R[i, k]
    for k in range(K):
        R[i, k] /= tot
    return top + math.log(tot)


@jit_serial
def _e_step(U, v, alpha, beta, var, R):
    """R (n, K) posteriors at the parameters; returns the log-likelihood."""
    n, d = U.shape
    K = var.shape[0]
    lp = np.empty(K)
    ll = 0.0
    for i in range(n):
        log_gates(alpha, U, i, lp)
        for k in range(K):
            m = beta[k, 0]
            for j in range(d):
                m += beta[k, j + 1] * U[i, j]
            e = v[i] - m
            R[i, k] = lp[k] - 0.5 * (_LOG_2PI + math.log(var[k]) + e * e / var[k])
        ll += _normalise_row(R, i)
    return ll


@jit_serial
def _experts(U, v, R, beta, var, var_floor):
    """The experts' weighted least squares; False when an expert is empty."""
    n, d = U.shape
    K = var.shape[0]
    p = d + 1
    z = np.empty(p)
    for k in range(K):
        G = np.zeros((p, p))
        b = np.zeros(p)
        mass = 0.0
        for i in range(n):
            r = R[i, k]
            mass += r
            z[0] = 1.0
            for j in range(d):
                z[j + 1] = U[i, j]
            for a in range(p):
                b[a] += r * z[a] * v[i]
                for c in range(p):
                    G[a, c] += r * z[a] * z[c]
        if mass <= _EMPTY * n:
            return False
        beta[k] = _solve(G, b)
        s = 0.0
        for i in range(n):
            m = beta[k, 0]
            for j in range(d):
                m += beta[k, j + 1] * U[i, j]
            e = v[i] - m
            s += R[i, k] * e * e
        var[k] = max(s / mass, var_floor)
    return True


@jit_serial
def _gate_objective(U, R, alpha):
    """sum_i sum_k R_ik log pi_k(x_i)."""
    n = U.shape[0]
    K = alpha.shape[0]
    lp = np.empty(K)
    total = 0.0
    for i in range(n):
        log_gates(alpha, U, i, lp)
        for k in range(K):
            total += R[i, k] * lp[k]
    return total


@jit_serial
def _gates(U, R, alpha):
    """One Newton step on the gates (the last is the reference), halved
    until the gate objective does not decrease."""
    n, d = U.shape
    K = alpha.shape[0]
    p = d + 1
    P = (K - 1) * p
    g = np.zeros(P)
    H = np.zeros((P, P))
    z = np.empty(p)
    pi = np.empty(K)
    for i in range(n):
        z[0] = 1.0
        for j in range(d):
            z[j + 1] = U[i, j]
        log_gates(alpha, U, i, pi)
        for k in range(K):
            pi[k] = math.exp(pi[k])
        for jg in range(K - 1):
            for a in range(p):
                g[jg * p + a] += (R[i, jg] - pi[jg]) * z[a]
            for lg in range(K - 1):
                c = pi[jg] * ((1.0 if jg == lg else 0.0) - pi[lg])
                for a in range(p):
                    for b in range(p):
                        H[jg * p + a, lg * p + b] += c * z[a] * z[b]
    step = _solve(H, g)
    old = _gate_objective(U, R, alpha)
    trial = alpha.copy()
    t = 1.0
    for _ in range(_HALVINGS):
        for jg in range(K - 1):
            for a in range(p):
                trial[jg, a] = alpha[jg, a] + t * step[jg * p + a]
        if _gate_objective(U, R, trial) >= old:
            return trial
        t *= 0.5
    return alpha


@jit_serial
def _fit_one(U, v, gate_dirs, max_iter, tol, var_floor, alpha_out, beta_out, var_out):
    """EM from each start (its random gate directions gate_dirs[s]); the best
    start's parameters into the outputs. Returns (log-likelihood, iterations,
    converged, status: 0 ok, 1 an expert lost its rows in every start)."""
    n, d = U.shape
    n_init, K = gate_dirs.shape[0], gate_dirs.shape[1]
    p = d + 1
    R = np.empty((n, K))
    best_ll, best_it, best_conv, found = -np.inf, 0, False, False
    for s in range(n_init):
        # the experts fitted on the soft regions of random gates, EM from
        # uniform gates (fastmoe._fit.random_regions)
        for i in range(n):
            for k in range(K):
                t = 0.0
                for j in range(d):
                    t += gate_dirs[s, k, j] * U[i, j]
                R[i, k] = t
            _normalise_row(R, i)
        alpha = np.zeros((K, p))
        beta = np.zeros((K, p))
        var = np.ones(K)
        if not _experts(U, v, R, beta, var, var_floor):
            continue
        ll = _e_step(U, v, alpha, beta, var, R)
        it, conv, ok = 0, False, True
        while it < max_iter:
            it += 1
            if not _experts(U, v, R, beta, var, var_floor):
                ok = False
                break
            if K > 1:
                alpha = _gates(U, R, alpha)
            new = _e_step(U, v, alpha, beta, var, R)
            gain = new - ll
            ll = new
            if gain <= tol * abs(ll):
                conv = True
                break
        if ok and ll > best_ll:
            best_ll, best_it, best_conv, found = ll, it, conv, True
            alpha_out[:, :] = alpha
            beta_out[:, :] = beta
            var_out[:] = var
    return best_ll, best_it, best_conv, 0 if found else 1


def _fit_batch(U, v, starts, gate_dirs, max_iter, tol, var_floor, alpha, beta, var, ll,
               n_iter, converged, status):
    """OUT per data set b (rows starts[b]:starts[b+1]): alpha (B, K, d+1),
    beta (B, K, d+1), var (B, K), ll (B,), n_iter (B,), converged (B,),
    status (B,) (0 ok, 1 an expert lost its rows)."""
    B = starts.shape[0] - 1
    for b in prange(B):
        lo, hi = starts[b], starts[b + 1]
        out = _fit_one(U[lo:hi], v[lo:hi], gate_dirs[b], max_iter, tol, var_floor, alpha[b],
                       beta[b], var[b])
        ll[b] = out[0]
        n_iter[b] = out[1]
        converged[b] = out[2]
        status[b] = out[3]


fit_batch = jit_pair(_fit_batch)

"""numba kernel of the observed-data derivatives' per-row coefficients for
experts of the other families (Poisson, Bernoulli, Gamma; docs/method.rst,
section 11; ``fastmoe._information.family_derivatives``).

The Gaussian kernel's twin (``_derivatives.derivative_coefficients``): for
each row the posterior, the gate probabilities, the row's log-likelihood,
its score's coefficients g (B = 2K - 1 + T numbers: K - 1 free gates, K
experts' linear predictors, T = K log dispersions for Gamma, none
otherwise) and the B x B matrix of Louis' identity, both times the row's
weight; with ``complete`` also the coefficients of the Hessian of EM's
objective (the server's generalised EM step). The families' derivatives in
the linear predictor and in the log dispersion are those of
``fastmoe.families`` (the numpy version in tests/naive.py is the
reference). The Gamma shape's log Gamma, digamma and trigamma are per
expert, not per row: the caller passes them.

Why numba: as for the Gaussian kernel, a few dozen scalars per row from
K-vectors, which numpy builds as (n, B, B) temporaries by fancy indexing
(40 ms on 17 000 rows at d = 5, K = 3 for Gamma experts against a few for
this loop, AMD EPYC). The loop is serial: the caller's row blocks fix the
order of every sum.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import jit_pair, jit_serial
from ._rows import log_gates, louis_row, normalise_row

#: family codes of the kernel
POISSON, BERNOULLI, GAMMA = 1, 2, 3
#: as fastmoe.families.MAX_ETA
_MAX_ETA = 700.0


@jit_serial
def _log_kernel(code, yi, eta, nu, lg_nu):
    """log f(y; eta, phi) less its terms in y alone (``Family.log_kernel``)."""
    if code == POISSON:
        e = min(eta, _MAX_ETA)
        return (yi * e if yi > 0 else 0.0) - math.exp(e)
    if code == BERNOULLI:
        soft = eta + math.log1p(math.exp(-eta)) if eta >= 0 else math.log1p(math.exp(eta))
        return yi * eta - soft
    e = min(max(eta, -_MAX_ETA), _MAX_ETA)  # GAMMA
    return nu * (math.log(nu * yi) - e) - nu * yi * math.exp(-e) - lg_nu


def _family_e_step(code, X, y, off, gate, expert, nu, lg_nu, base, R, eta_out, kern, row_ll):
    """OUT R (n, K) the posteriors, eta_out (n, K) the linear predictors,
    kern (n, K) the experts' log-densities less the terms in y alone, and
    row_ll (n,) the rows' log-likelihoods (with ``base``, those terms);
    returns the rows whose log-likelihood is not finite. Rows are
    independent: the result does not depend on the thread count."""
    n, d = X.shape
    K = expert.shape[0]
    bad = 0
    for i in prange(n):
        log_pi = np.empty(K)
        log_gates(gate, X, i, log_pi)
        for k in range(K):
            eta = expert[k, 0] + off[i]
            for j in range(d):
                eta += expert[k, j + 1] * X[i, j]
            eta_out[i, k] = eta
            kern[i, k] = _log_kernel(code, y[i], eta, nu[k], lg_nu[k])
            R[i, k] = log_pi[k] + kern[i, k]
        row_ll[i] = normalise_row(R[i], K) + base[i]
        if not math.isfinite(row_ll[i]):
            bad += 1
    return bad


family_e_step = jit_pair(_family_e_step)


@jit_serial
def family_objective(code, y, eta, a, nu, lg_nu):
    """sum_i a_i log f(y_i; eta_i, phi) less the terms in y alone: one
    expert's weighted log-likelihood (serial, so its sum's order is fixed)."""
    total = 0.0
    for i in range(y.shape[0]):
        if a[i] != 0.0:
            total += a[i] * _log_kernel(code, y[i], eta[i], nu, lg_nu)
    return total


@jit_serial
def _expert_terms(code, yi, eta, nu, lg_nu, psi_nu, tri_nu, out):
    """out[:] = (log f, d/deta, d2/deta2, d/dtau, d2/dtau2, d2/deta dtau) of
    one expert at one row (the tau terms zero without a dispersion)."""
    out[3] = out[4] = out[5] = 0.0
    if code == POISSON:
        e = min(eta, _MAX_ETA)
        mu = math.exp(e)
        out[0] = (yi * e if yi > 0 else 0.0) - mu - math.lgamma(yi + 1.0)
        out[1] = yi - mu
        out[2] = -mu
    elif code == BERNOULLI:
        if eta >= 0:
            z = math.exp(-eta)
            mu = 1.0 / (1.0 + z)
            soft = eta + math.log1p(z)
        else:
            z = math.exp(eta)
            mu = z / (1.0 + z)
            soft = math.log1p(z)
        out[0] = yi * eta - soft
        out[1] = yi - mu
        out[2] = -mu * (1.0 - mu)
    else:  # GAMMA, shape nu, mean exp(eta)
        e = min(max(eta, -_MAX_ETA), _MAX_ETA)
        ratio = yi * math.exp(-e)
        log_nu_y = math.log(nu * yi)
        out[0] = nu * (log_nu_y - e) - nu * ratio - lg_nu - math.log(yi)
        out[1] = nu * (ratio - 1.0)
        out[2] = -nu * ratio
        d_nu = log_nu_y + 1.0 - e - ratio - psi_nu
        out[3] = -nu * d_nu
        out[4] = nu * d_nu + nu * nu * (1.0 / nu - tri_nu)
        out[5] = -nu * (ratio - 1.0)


@jit_serial
def family_coefficients(code, X, y, w, off, gate, expert, nu, lg_nu, psi_nu, tri_nu,
                        DVV, DVT, TT, G, row_ll, CVV, CVT, CTT, complete):
    """OUT the rows' coefficient matrices of Louis' identity split by block:
    DVV (n, V, V) between the V = 2K - 1 blocks of (1, x) (free gates, then
    experts), DVT (n, V, T) between those and the T log dispersions, TT
    (T, T) ACCUMULATES (+=) their sum over the rows; G (n, B) the rows'
    scores; row_ll (n,) the rows' log-likelihoods. With ``complete``, CVV,
    CVT and CTT (+=) likewise for EM's objective's Hessian (otherwise they
    are not touched and may be empty).

    gate, expert (K, d+1) with the intercept in column 0; off (n,) offsets of
    the linear predictors; nu, lg_nu, psi_nu, tri_nu (K,) each expert's
    Gamma shape and its log Gamma, digamma and trigamma (any values for the
    other families). Everything but row_ll is weighted by w.
    """
    n, d = X.shape
    K = expert.shape[0]
    J = K - 1
    V = 2 * K - 1
    T = TT.shape[0]
    B = V + T
    pi = np.empty(K)
    log_pi = np.empty(K)
    r = np.empty(K)
    terms = np.empty((K, 6))
    g = np.empty(B)
    Di = np.empty((B, B))
    for i in range(n):
        log_gates(gate, X, i, log_pi)
        for k in range(K):
            pi[k] = math.exp(log_pi[k])
            eta = expert[k, 0] + off[i]
            for j in range(d):
                eta += expert[k, j + 1] * X[i, j]
            _expert_terms(code, y[i], eta, nu[k], lg_nu[k], psi_nu[k], tri_nu[k], terms[k])
            r[k] = log_pi[k] + terms[k, 0]
        row_ll[i] = normalise_row(r, K)
        Di[:, :] = 0.0
        for j in range(J):
            g[j] = r[j] - pi[j]
        for k in range(K):
            a, s = terms[k, 1], terms[k, 3]
            g[J + k] = r[k] * a
            # sum_k r_k s_k s_k^T plus the complete-data Hessians (the
            # experts' and dispersions' blocks are diagonal in k)
            Di[J + k, J + k] = r[k] * (a * a + terms[k, 2])
            for j in range(J):
                c = (1.0 if j == k else 0.0) - pi[j]
                Di[j, J + k] = Di[J + k, j] = c * r[k] * a
            if T:
                g[V + k] = r[k] * s
                Di[J + k, V + k] = Di[V + k, J + k] = r[k] * (a * s + terms[k, 5])
                Di[V + k, V + k] = r[k] * (s * s + terms[k, 4])
                for j in range(J):
                    c = (1.0 if j == k else 0.0) - pi[j]
                    Di[j, V + k] = Di[V + k, j] = c * r[k] * s
        wi = w[i]
        louis_row(i, wi, pi, r, J, V, T, Di, g, DVV, DVT, TT, G)
        if complete:
            # EM's objective: the gates' multinomial Hessian, each expert's
            # posterior-weighted second derivatives
            for a_ in range(V):
                for b_ in range(V):
                    CVV[i, a_, b_] = 0.0
                for k in range(T):
                    CVT[i, a_, k] = 0.0
            for j in range(J):
                for l in range(J):
                    CVV[i, j, l] = -wi * pi[j] * ((1.0 if j == l else 0.0) - pi[l])
            for k in range(K):
                CVV[i, J + k, J + k] = wi * r[k] * terms[k, 2]
                if T:
                    CVT[i, J + k, k] = wi * r[k] * terms[k, 5]
                    CTT[k, k] += wi * r[k] * terms[k, 4]


def _family_assign(P, a, b, c, d, e, f, A, cmin):
    """The reduction's assignment step for experts of these families
    (``fastmoe._family_reduction``): for each support point s and local
    expert l, the target k of least cost

        P[l, k] + a[s, k] + b[s, l] c[s, k] + d[s, l] e[k] + f[s, l]

    (the KL divergence split into terms of the local experts and of the
    targets), OUT A (S, L) its index and cmin (S, L) the cost, without the
    (S, L, K) array. Points are independent: the result does not depend on
    the thread count."""
    S, L = b.shape
    K = a.shape[1]
    for s in prange(S):
        for l in range(L):
            best, arg = np.inf, 0
            for k in range(K):
                v = P[l, k] + a[s, k] + b[s, l] * c[s, k] + d[s, l] * e[k] + f[s, l]
                if v < best:
                    best, arg = v, k
            A[s, l] = arg
            cmin[s, l] = best


family_assign = jit_pair(_family_assign)

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


def local_weights(models, lam, Xs):
    """(S, L) w_l(x_s) = lam_m pi_k^(m)(x_s), models stacked in order."""
    cols = [lam[m] * np.exp(gate_log_proba(Xs, mod.gate_aug)) for m, mod in enumerate(models)]
    return np.hstack(cols)


def cost_tensor(models, Xs, beta, var, cost):
    """(S, L, K) costs c_lk(x_s) between local and target experts."""
    Z = xt(Xs)
    ml = np.hstack([Z @ m.expert_aug.T for m in models])  # (S, L)
    vl = np.concatenate([m.expert_var for m in models])
    mk = Z @ beta.T  # (S, K)
    gap = mk[:, None, :] - ml[:, :, None]
    if cost == "kl":
        return 0.5 * (np.log(var[None, None, :] / vl[None, :, None])
                      + vl[None, :, None] / var[None, None, :] + gap**2 / var[None, None, :] - 1)
    return gap**2 + (np.sqrt(var)[None, None, :] - np.sqrt(vl)[None, :, None]) ** 2


def mm_pass(models, lam, Xs, beta, var, cost):
    """The reduction's assignment step with the full S x L x K tensors, as in
    the authors' code: (objective, plan (S, L, K), gram (K, p, p), lin (K, p),
    scal (K, 4): sum P, sum P m_l^2, sum P var_l, sum P sqrt(var_l))."""
    W = local_weights(models, lam, Xs)
    C = cost_tensor(models, Xs, beta, var, cost)
    kstar = np.argmin(C, axis=2)
    K = beta.shape[0]
    P = W[:, :, None] * (kstar[:, :, None] == np.arange(K))
    objective = float(np.sum(P * C))
    Z = xt(Xs)
    ml = np.hstack([Z @ m.expert_aug.T for m in models])
    vl = np.concatenate([m.expert_var for m in models])
    D = P.sum(axis=1)  # (S, K)
    gram = np.einsum("sk,si,sj->kij", D, Z, Z)
    lin = np.einsum("slk,sl,si->ki", P, ml, Z)
    scal = np.stack([P.sum(axis=(0, 1)), np.einsum("slk,sl->k", P, ml**2),
                     np.einsum("slk,l->k", P, vl), np.einsum("slk,l->k", P, np.sqrt(vl))],
                    axis=1)
    return objective, P, gram, lin, scal


def weighted_least_squares(X, y, w):
    """(coef (d,), intercept, ML variance) of the weighted regression of y on
    (1, X), by the normal equations written out."""
    Z = xt(X)
    A = sum(w[i] * np.outer(Z[i], Z[i]) for i in range(len(y)))
    b = sum(w[i] * Z[i] * y[i] for i in range(len(y)))
    beta = np.linalg.solve(A, b)
    resid = y - Z @ beta
    return beta[1:], beta[0], float(np.sum(w * resid**2) / np.sum(w))


def fit_gates_bfgs(X, w, R, l2=0.0):
    """The gates maximising sum_i w_i sum_k R_ik log pi_k(x_i) - l2/2 |slopes|^2
    (last gate zero), by scipy's BFGS from zero: (K, d+1) alpha."""
    from scipy.optimize import minimize

    K, p = R.shape[1], X.shape[1] + 1

    def loss(theta):
        alpha = np.vstack([theta.reshape(K - 1, p), np.zeros(p)])
        return -gate_objective(X, w, R, alpha) + 0.5 * l2 * np.sum(alpha[:, 1:] ** 2)

    theta = minimize(loss, np.zeros((K - 1) * p), method="BFGS", options={"gtol": 1e-10}).x
    return np.vstack([theta.reshape(K - 1, p), np.zeros(p)])


def expert_costs(source, target, X, cost):
    """(n, L, K) costs, one entry at a time."""
    n, L, K = X.shape[0], source.n_experts, target.n_experts
    out = np.empty((n, L, K))
    for i in range(n):
        for l in range(L):
            ml = source.expert_intercept[l] + X[i] @ source.expert_coef[l]
            vl = source.expert_var[l]
            for k in range(K):
                mk = target.expert_intercept[k] + X[i] @ target.expert_coef[k]
                vk = target.expert_var[k]
                if cost == "kl":  # KL(N(ml, vl) || N(mk, vk))
                    out[i, l, k] = 0.5 * (np.log(vk / vl) + vl / vk + (ml - mk) ** 2 / vk - 1)
                else:
                    out[i, l, k] = (ml - mk) ** 2 + (np.sqrt(vl) - np.sqrt(vk)) ** 2
    return out


def mixture_quantile(pi, mean, sd, q):
    """The q-quantile of sum_k pi_k N(mean_k, sd_k^2), by scipy's brentq."""
    from scipy.optimize import brentq

    lo, hi = np.min(mean - 40 * sd), np.max(mean + 40 * sd)
    return brentq(lambda y: np.sum(pi * norm.cdf((y - mean) / sd)) - q, lo, hi, xtol=1e-14,
                  rtol=1e-15)


def stacked_rows(W, ml, group):
    """The support rows of local experts ``group`` stacked: (weights W[s, l],
    means m_l(x_s), support index s, local expert l) per row."""
    S = W.shape[0]
    rows = np.concatenate([np.full(S, l) for l in group])
    pts = np.concatenate([np.arange(S) for _ in group])
    w, y = W[pts, rows], ml[pts, rows]
    return w, y, pts, rows


def greedy_merge(models, lam, Xs, K):
    """Greedy pairwise merging by Runnalls' bound, every pair's merged expert
    refitted from the stacked support rows at every step: the experts
    (beta (K, d+1), var (K,)) and each local expert's group (L,)."""
    Z = xt(Xs)
    W = local_weights(models, lam, Xs)
    ml = np.hstack([Z @ m.expert_aug.T for m in models])
    vl = np.concatenate([m.expert_var for m in models])

    def fit(group):  # weighted least squares; the variance adds the spread of the means
        w, y, pts, rows = stacked_rows(W, ml, group)
        coef, intercept, _ = weighted_least_squares(Xs[pts], y, w)
        beta = np.concatenate([[intercept], coef])
        var = np.sum(w * (vl[rows] + (y - Z[pts] @ beta) ** 2)) / np.sum(w)
        return beta, var, np.sum(w)

    groups = [[l] for l in range(W.shape[1])]
    while len(groups) > K:
        best = None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                _, v, m = fit(groups[a] + groups[b])
                _, va, ma = fit(groups[a])
                _, vb, mb = fit(groups[b])
                c = 0.5 * (m * np.log(v) - ma * np.log(va) - mb * np.log(vb))
                if best is None or c < best[0]:
                    best = (c, a, b)
        _, a, b = best
        groups[a] = groups[a] + groups[b]
        del groups[b]
    fits = [fit(g) for g in groups]
    label = np.empty(W.shape[1], dtype=int)
    for k, g in enumerate(groups):
        label[g] = k
    return np.array([f[0] for f in fits]), np.array([f[1] for f in fits]), label


def l1_quadratic(A, b, pen):
    """argmin 0.5 z'Az - b'z + sum_j pen_j |z_j| by a bound-constrained smooth
    solver on z = u - v, u, v >= 0 (a different route from coordinate descent)."""
    from scipy.optimize import minimize

    p = len(b)

    def f(uv):
        z = uv[:p] - uv[p:]
        g = A @ z - b
        return 0.5 * z @ A @ z - b @ z + pen @ (uv[:p] + uv[p:]), np.concatenate(
            [g + pen, -g + pen])

    res = minimize(f, np.zeros(2 * p), jac=True, method="L-BFGS-B",
                   bounds=[(0, None)] * (2 * p), options={"ftol": 1e-15, "gtol": 1e-12,
                                                         "maxiter": 10000})
    return res.x[:p] - res.x[p:]


def observed_log_likelihood(theta, X, y, w, d, K):
    """sum_i w_i log f(y_i | x_i) at theta (gates relative to the last, experts,
    log variances), by loops over the experts."""
    p = d + 1
    alpha = np.zeros((K, p))
    alpha[:-1] = theta[:(K - 1) * p].reshape(K - 1, p)
    beta = theta[(K - 1) * p:(2 * K - 1) * p].reshape(K, p)
    var = np.exp(theta[(2 * K - 1) * p:])
    Xt = np.column_stack([np.ones(len(y)), X])
    eta = Xt @ alpha.T
    log_pi = eta - logsumexp(eta, axis=1, keepdims=True)
    dens = [log_pi[:, k] + norm.logpdf(y, Xt @ beta[k], np.sqrt(var[k])) for k in range(K)]
    return float(w @ logsumexp(np.column_stack(dens), axis=1))


def finite_difference_derivatives(theta, X, y, w, d, K, h=1e-4):
    """(gradient, Hessian) of observed_log_likelihood by central differences
    (fourth-order for the gradient, second-order for the Hessian)."""
    P = theta.size
    f = lambda t: observed_log_likelihood(t, X, y, w, d, K)
    E = np.eye(P) * h
    grad = np.array([(-f(theta + 2 * E[i]) + 8 * f(theta + E[i]) - 8 * f(theta - E[i])
                      + f(theta - 2 * E[i])) / (12 * h) for i in range(P)])
    H = np.empty((P, P))
    for i in range(P):
        for j in range(i, P):
            H[i, j] = H[j, i] = (f(theta + E[i] + E[j]) - f(theta + E[i] - E[j])
                                 - f(theta - E[i] + E[j]) + f(theta - E[i] - E[j])) / (4 * h * h)
    return grad, H


def standard_errors_by_differences(params, X, y, h=1e-4):
    """Standard errors of ``params`` (fitted to X, y in their own units) from
    the inverse of the finite-difference Hessian in theta, mapped to the
    stored parameters by fastmoe's delta-method Jacobian, flattened as
    :func:`flat_errors` does."""
    from fastmoe._frame import Frame
    from fastmoe._information import covariance, theta_of
    from fastmoe.inference import jacobian_out

    K, d = params.n_experts, params.n_features
    _, H = finite_difference_derivatives(theta_of(params), X, y, np.ones(len(y)), d, K, h=h)
    J = jacobian_out(Frame(np.zeros(d), np.ones(d), 0.0, 1.0), params)
    return np.sqrt(np.diag(J @ covariance(H) @ J.T))


def flat_errors(se):
    """A MoEParams of standard errors flattened as theta is: the free gates,
    the experts (intercept, slopes), the variances."""
    return np.concatenate([np.column_stack([se.gate_intercept, se.gate_coef])[:-1].ravel(),
                           np.column_stack([se.expert_intercept, se.expert_coef]).ravel(),
                           se.expert_var])


def derivatives_numpy(X, y, w, params):
    """The observed-data log-likelihood, gradient and Hessian in theta
    (fastmoe._information's layout) by numpy over (n, B, B) temporaries: the
    reference of the compiled coefficients (Louis' identity, written out
    block by block)."""
    from fastmoe._information import _assemble

    n, d = X.shape
    K = params.n_experts
    V = 2 * K - 1
    Xt = np.column_stack([np.ones(n), X])
    eta = Xt @ params.gate_aug.T
    log_pi = eta - logsumexp(eta, axis=1, keepdims=True)
    pi = np.exp(log_pi)
    var = params.expert_var
    e = y[:, None] - Xt @ params.expert_aug.T  # (n, K) residuals
    q = e * e / var  # squared standardised residuals
    log_c = log_pi - 0.5 * (np.log(2 * np.pi) + np.log(var) + q)
    row_ll = logsumexp(log_c, axis=1)
    r = np.exp(log_c - row_ll[:, None])
    # the complete-data scores' coefficients over the 3K-1 blocks (K-1 gates,
    # K experts, K taus): for component k, (delta_jk - pi_j) on gate j,
    # a_k = e_k / v_k on expert k and b_k = (q_k - 1) / 2 on tau k, so
    # sum_k r_k s_k s_k^T is built block by block in O(K^2) per row
    B, J = V + K, K - 1
    ra, rb = r * (e / var), r * (0.5 * (q - 1.0))
    eye = np.eye(K)[None, :J, :]  # delta_jk for the free gates
    D = np.zeros((n, B, B))
    gg = pi[:, :J, None] * pi[:, None, :J] - r[:, :J, None] * pi[:, None, :J] \
        - pi[:, :J, None] * r[:, None, :J]
    gg[:, np.arange(J), np.arange(J)] += r[:, :J]
    D[:, :J, :J] = gg
    D[:, :J, J:V] = (eye - pi[:, :J, None]) * ra[:, None, :]
    D[:, :J, V:] = (eye - pi[:, :J, None]) * rb[:, None, :]
    D[:, J:V, :J] = D[:, :J, J:V].transpose(0, 2, 1)
    D[:, V:, :J] = D[:, :J, V:].transpose(0, 2, 1)
    ks = np.arange(K)
    D[:, J + ks, J + ks] = ra * (e / var)
    D[:, J + ks, V + ks] = D[:, V + ks, J + ks] = ra * (0.5 * (q - 1.0))
    D[:, V + ks, V + ks] = rb * (0.5 * (q - 1.0))
    g = np.concatenate([r[:, :J] - pi[:, :J], ra, rb], axis=1)  # the row's score
    D -= g[:, :, None] * g[:, None, :]
    # the complete-data Hessians, posterior-weighted: gates (the same for
    # every component), expert-expert, expert-tau and tau-tau
    D[:, :J, :J] -= (pi[:, :J, None] * (np.eye(J)[None] - pi[:, None, :J]))
    # d2 c_k / d beta_k^2 = -(1, x)(1, x)^T / v_k, d2 c_k / d beta_k d tau_k =
    # -e_k / v_k (1, x), d2 c_k / d tau_k^2 = -q_k / 2
    D[:, K - 1 + ks, K - 1 + ks] -= r / var
    D[:, K - 1 + ks, V + ks] -= r * e / var
    D[:, V + ks, K - 1 + ks] -= r * e / var
    D[:, V + ks, V + ks] -= 0.5 * r * q
    D *= w[:, None, None]
    hess = _assemble(D[:, :V, :V], D[:, :V, V:], D[:, V:, V:].sum(axis=0), Xt)
    gw = g * w[:, None]
    grad = np.concatenate([(gw[:, :V].T @ Xt).ravel(), gw[:, V:].sum(axis=0)])
    return float(w @ row_ll), grad, hess


# ----------------------------------------------------------------------------
# experts of other families (fastmoe.families, fastmoe._glm)
# ----------------------------------------------------------------------------
def family_log_density(family, y, eta, phi):
    """(n, K) log f(y_i; eta_ik, phi_k) from scipy.stats' distributions."""
    from scipy import stats

    y, phi = np.asarray(y, dtype=float)[:, None], np.asarray(phi, dtype=float)[None, :]
    if family == "poisson":
        return stats.poisson.logpmf(y, np.exp(eta))
    if family == "bernoulli":
        return stats.bernoulli.logpmf(y, 1.0 / (1.0 + np.exp(-eta)))
    if family == "gamma":
        return stats.gamma.logpdf(y, 1.0 / phi, scale=np.exp(eta) * phi)
    return norm.logpdf(y, eta, np.sqrt(phi))


def family_log_likelihood(params, X, y, offset=None):
    """(n,) log f(y_i | x_i) of a model of any family, by scipy.stats."""
    eta = xt(X) @ params.expert_aug.T + (0.0 if offset is None else offset[:, None])
    joint = gate_log_proba(X, params.gate_aug) + family_log_density(
        params.family, y, eta, params.expert_var)
    return np.array([logsumexp(joint[i]) for i in range(X.shape[0])])


def family_em(X, y, params, n_iter, offset=None):
    """EM with exact M-steps by scipy's BFGS (every expert's weighted
    log-likelihood, its dispersion, and the gates), from ``params``: the
    slow reference of fastmoe._glm. Returns the model after n_iter
    iterations."""
    from scipy.optimize import minimize

    from fastmoe import MoEParams

    fam, K, d = params.family, params.n_experts, params.n_features
    Z = xt(X)
    off = np.zeros(len(y)) if offset is None else offset
    alpha, beta, phi = params.gate_aug, params.expert_aug, params.expert_var.copy()
    for _ in range(n_iter):
        eta = Z @ beta.T + off[:, None]
        joint = gate_log_proba(X, alpha) + family_log_density(fam, y, eta, phi)
        R = np.exp(joint - logsumexp(joint, axis=1, keepdims=True))
        for k in range(K):
            def nll(v, k=k, r=R[:, k]):
                b, p = v[:d + 1], (np.exp(v[-1]) if fam == "gamma" else phi[k])
                e = (Z @ b + off)[:, None]
                return -r @ family_log_density(fam, y, e, [p])[:, 0]
            start = np.r_[beta[k], np.log(phi[k])] if fam == "gamma" else beta[k]
            with np.errstate(all="ignore"):  # BFGS's trial points may overflow
                v = minimize(nll, start, method="BFGS", options={"gtol": 1e-10}).x
            beta[k] = v[:d + 1]
            if fam == "gamma":
                phi[k] = np.exp(v[-1])
        if K > 1:
            def gate_loss(theta, R=R):
                a = np.vstack([theta.reshape(K - 1, d + 1), np.zeros(d + 1)])
                logits = Z @ a.T
                return -np.sum(R * (logits - logsumexp(logits, axis=1, keepdims=True)))
            theta = minimize(gate_loss, (alpha[:-1] - alpha[-1]).ravel(), method="BFGS",
                             options={"gtol": 1e-10}).x
            alpha = np.vstack([theta.reshape(K - 1, d + 1), np.zeros(d + 1)])
    return MoEParams.from_aug(alpha, beta, phi, fam)


def family_theta(params):
    """theta of fastmoe._information.family_derivatives: the free gates, the
    experts, and log phi for a family with a dispersion."""
    from fastmoe.families import get_family

    alpha, beta = params.gate_aug, params.expert_aug
    parts = [(alpha[:-1] - alpha[-1]).ravel(), beta.ravel()]
    if get_family(params.family).has_dispersion:
        parts.append(np.log(params.expert_var))
    return np.concatenate(parts)


def family_params(theta, like):
    """The model of ``theta`` (the inverse of family_theta), shaped as ``like``."""
    from fastmoe import MoEParams

    K, p = like.n_experts, like.n_features + 1
    alpha = np.zeros((K, p))
    alpha[:-1] = theta[:(K - 1) * p].reshape(K - 1, p)
    beta = theta[(K - 1) * p:(2 * K - 1) * p].reshape(K, p)
    rest = theta[(2 * K - 1) * p:]
    phi = np.exp(rest) if rest.size else np.ones(K)
    return MoEParams.from_aug(alpha, beta, phi, like.family)


def family_finite_differences(params, X, y, w, offset=None, h=1e-4):
    """(gradient, Hessian) in family_theta of the weighted log-likelihood
    (scipy's densities), by central differences."""
    theta = family_theta(params)

    def ll(t):
        return float(w @ family_log_likelihood(family_params(t, params), X, y, offset))

    P = theta.size
    E = np.eye(P) * h
    grad = np.array([(ll(theta + E[i]) - ll(theta - E[i])) / (2 * h) for i in range(P)])
    H = np.empty((P, P))
    for i in range(P):
        for j in range(i, P):
            H[i, j] = H[j, i] = (ll(theta + E[i] + E[j]) - ll(theta + E[i] - E[j])
                                 - ll(theta - E[i] + E[j]) + ll(theta - E[i] - E[j])) / (4 * h * h)
    return grad, H


def family_q_hessian(params, X, y, w, offset=None, h=1e-4):
    """(P, P) Hessian in family_theta of EM's objective Q(theta' | theta) at
    theta' = theta: the posteriors at ``params`` held, the complete-data
    log-likelihood sum_i w_i sum_k r_ik (log pi_k + log f_k) differentiated
    by central differences."""
    off = np.zeros(len(y)) if offset is None else offset
    Z = xt(X)

    def joint(p):
        eta = Z @ p.expert_aug.T + off[:, None]
        return gate_log_proba(X, p.gate_aug) + family_log_density(p.family, y, eta,
                                                                  p.expert_var)

    at = joint(params)
    R = np.exp(at - logsumexp(at, axis=1, keepdims=True))
    theta = family_theta(params)

    def q(t):
        return float(w @ np.sum(R * joint(family_params(t, params)), axis=1))

    P = theta.size
    E = np.eye(P) * h
    H = np.empty((P, P))
    for i in range(P):
        for j in range(i, P):
            H[i, j] = H[j, i] = (q(theta + E[i] + E[j]) - q(theta + E[i] - E[j])
                                 - q(theta - E[i] + E[j]) + q(theta - E[i] - E[j])) / (4 * h * h)
    return H


# ----------------------------------------------------------------------------
# the observed information of experts of any family, by numpy
# ----------------------------------------------------------------------------
def family_derivatives_numpy(X, y, w, params, offset=None, *, meat=False, complete=False):
    """The numpy version of fastmoe._information.family_derivatives: the
    reference of its compiled kernel (fastmoe._kernels.family_coefficients),
    for every family, the Gaussian included (where it is
    fastmoe._information.derivatives)."""
    from fastmoe._information import ROWS, Derivatives
    from fastmoe.families import get_family

    fam = get_family(params.family)
    n, d = X.shape
    K, p = params.n_experts, d + 1
    V, T = 2 * K - 1, K if fam.has_dispersion else 0
    P = V * p + T
    off = np.zeros(n) if offset is None else np.asarray(offset, dtype=np.float64)
    total = Derivatives(0.0, np.zeros(P), np.zeros((P, P)), np.zeros((P, P)) if meat else None,
                        np.zeros((P, P)) if complete else None)
    for start in range(0, n, ROWS):
        rows = slice(start, start + ROWS)
        total = total + _family_block_numpy(X[rows], y[rows], w[rows], off[rows], params,
                                            fam, meat, complete)
    return total


def _family_block_numpy(X, y, w, off, params, fam, meat, complete=False):
    n = X.shape[0]
    K = params.n_experts
    J, V = K - 1, 2 * K - 1
    T = K if fam.has_dispersion else 0
    Xt = np.column_stack([np.ones(n), X])
    log_pi = params.gate_log_proba(X, n_threads=1)
    pi = np.exp(log_pi)
    eta = Xt @ params.expert_aug.T + off[:, None]
    phi, y1 = params.expert_var, y[:, None]
    row_ll, log_r = _row_log_normalise(log_pi + fam.log_density(y1, eta, phi))
    r = np.exp(log_r)
    a, h = fam.eta_derivatives(y1, eta, phi)
    ks, eye = np.arange(K), np.eye(K)[None, :J, :]
    D = np.zeros((n, V + T, V + T))
    # sum_k r_k s_k s_k^T block by block (the experts' blocks are diagonal in k)
    D[:, :J, :J] = (pi[:, :J, None] * pi[:, None, :J] - r[:, :J, None] * pi[:, None, :J]
                    - pi[:, :J, None] * r[:, None, :J])
    D[:, np.arange(J), np.arange(J)] += r[:, :J]
    D[:, :J, J:V] = (eye - pi[:, :J, None]) * (r * a)[:, None, :]
    D[:, J + ks, J + ks] = r * a * a + r * h  # with the complete-data Hessian
    g = [r[:, :J] - pi[:, :J], r * a]
    if T:
        s_, tt, et = fam.tau_derivatives(y1, eta, phi)
        D[:, :J, V:] = (eye - pi[:, :J, None]) * (r * s_)[:, None, :]
        D[:, J + ks, V + ks] = r * a * s_ + r * et
        D[:, V + ks, V + ks] = r * s_ * s_ + r * tt
        g.append(r * s_)
    upper = np.triu_indices(V + T, 1)
    D[:, upper[1], upper[0]] = D[:, upper[0], upper[1]]
    g = np.concatenate(g, axis=1)
    D -= g[:, :, None] * g[:, None, :]
    gates = pi[:, :J, None] * (np.eye(J)[None] - pi[:, None, :J])
    D[:, :J, :J] -= gates
    D *= w[:, None, None]
    from fastmoe._information import _assemble, _sums

    out = _sums(D[:, :V, :V], D[:, :V, V:], D[:, V:, V:].sum(axis=0), g * w[:, None],
                float(w @ row_ll), Xt, meat)
    if not complete:
        return out
    # EM's objective: sum_k r_k c_k with r held; its blocks are diagonal in k
    C = np.zeros((n, V + T, V + T))
    C[:, :J, :J] = -gates
    C[:, J + ks, J + ks] = r * h
    if T:
        C[:, J + ks, V + ks] = C[:, V + ks, J + ks] = r * et
        C[:, V + ks, V + ks] = r * tt
    C *= w[:, None, None]
    return out._replace(complete=_assemble(C[:, :V, :V], C[:, :V, V:],
                                           C[:, V:, V:].sum(axis=0), Xt))


def _row_log_normalise(joint):
    """(row log-sums, log posteriors) of (n, K) joint log-densities."""
    row = logsumexp(joint, axis=1)
    return row, joint - row[:, None]


# ----------------------------------------------------------------------------
# the families' transport reduction (fastmoe._family_reduction)
# ----------------------------------------------------------------------------
def family_kl_textbook(family, eta_l, nu_l, eta_k, nu_k):
    """KL(f_l || f_k) in the textbook forms: Poisson mu_l log(mu_l/mu_k) +
    mu_k - mu_l; Bernoulli p log(p/q) + (1-p) log((1-p)/(1-q)); Gamma in
    shape a and scale theta = mu / a."""
    from scipy.special import expit, gammaln, psi

    if family == "poisson":
        ml, mk = np.exp(eta_l), np.exp(eta_k)
        return ml * np.log(ml / mk) + mk - ml
    if family == "bernoulli":
        p, q = expit(eta_l), expit(eta_k)
        return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    al, ak = nu_l, nu_k
    tl, tk = np.exp(eta_l) / al, np.exp(eta_k) / ak
    return ((al - ak) * psi(al) - gammaln(al) + gammaln(ak) + ak * (np.log(tk) - np.log(tl))
            + al * (tl - tk) / tk)


def family_kl_by_sum(family, eta_l, nu_l, eta_k, nu_k):
    """KL(f_l || f_k) of scalars from its definition: a sum over the counts
    (Poisson), the two outcomes (Bernoulli) or a quadrature (Gamma)."""
    from scipy import integrate

    def logf(y, eta, nu):
        return family_log_density(family, np.atleast_1d(y), np.array([[eta]]), [1.0 / nu])[:, 0]

    if family == "gamma":
        def term(y):
            a, b = logf(y, eta_l, nu_l)[0], logf(y, eta_k, nu_k)[0]
            return np.exp(a) * (a - b)
        mean = np.exp(eta_l)
        return (integrate.quad(term, 0, mean, limit=200)[0]
                + integrate.quad(term, mean, np.inf, limit=200)[0])
    ys = np.arange(0, 400.0) if family == "poisson" else np.array([0.0, 1.0])
    a, b = logf(ys, eta_l, nu_l), logf(ys, eta_k, nu_k)
    return float(np.sum(np.exp(a) * (a - b)))


def family_transport_objective(models, lam, Xs, beta, phi):
    """R = sum_s sum_l w_l(x_s) min_k KL(f_l || f_k) at the targets (beta
    (K, d+1), phi (K,)), by the textbook KL and plain loops over machines."""
    Z = xt(Xs)
    total = 0.0
    eta_k = Z @ beta.T
    for w, m in zip(lam, models):
        W = w * np.exp(gate_log_proba(Xs, m.gate_aug))
        eta_l = Z @ m.expert_aug.T
        for l in range(m.n_experts):
            C = family_kl_textbook(m.family, eta_l[:, [l]], 1.0 / m.expert_var[l], eta_k,
                                   1.0 / phi[None, :])
            total += float(W[:, l] @ C.min(axis=1))
    return total

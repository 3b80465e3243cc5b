"""The optimal-transport reduction for experts of the other families
(Poisson, Bernoulli, Gamma; docs/method.rst, section 11).

As for Gaussian experts (``fastmoe._reduction``), the M machines' L local
experts, weighted by w_l(x) = lambda_m pi_l(x), are reduced to K experts by
minimising the composite transportation divergence

    R = sum_s sum_l w_l(x_s) min_k KL( f_l(. | x_s) || f_k(. | x_s) )

with an MM algorithm: each local expert at each support point goes to the
target it costs least, then each target minimises its transported cost.
The costs are the KL divergences between the experts' conditional
distributions of y, in closed form (:func:`fastmoe.families.kl_costs`). For a canonical
family, KL(f_l || f_k) = A(eta_k) - A(eta_l) - mu_l (eta_k - eta_l) with A
the cumulant function, so a target's cost is, up to terms free of it, the
negative log-likelihood of a GLM whose response is the local experts' mean
mu_l: summed at each support point, one pseudo-row with weight D_k(s) =
sum of the weights sent to k and response the weighted mean of their mu_l
(moment matching in the mean parameter), fitted by IRLS. For Gamma experts
(log link, a shape nu per expert) the same holds for the coefficients at
any shape, and the target's shape solves log nu - psi(nu) = E[y/mu_k -
log(y/mu_k) - 1], the expectation under the local experts sent to it.

The reduction is written in numpy: its arrays are support x local experts
x targets, as the Gaussian one's, and it runs once per aggregation. The
gates are then refitted to the plan as for Gaussian experts (each support
point's share of weight sent to each target).
"""

from __future__ import annotations

import numpy as np

from . import _kernels
from ._fit import EMPTY_SHARE
from ._glm import _Data, fit_expert
from ._linalg import resolve_threads
from .families import _gamma_shape, get_family, local_terms, pair_terms, target_terms
from .metrics import alignment

#: IRLS steps of a target's coefficients per MM iteration at most
TARGET_IRLS = 25


class FamilyMixture:
    """The local experts of M models of one family at the support points:
    their weights w_l(x_s) (S, L), linear predictors (S, L) and shapes (L,)."""

    def __init__(self, models, lam, Xs, n_threads: int | None = None):
        self.family, self.n_threads = models[0].family, resolve_threads(n_threads)
        self.models, self.lam = list(models), np.asarray(lam, dtype=np.float64)
        Z = np.column_stack([np.ones(Xs.shape[0]), Xs])
        self.W = np.hstack([w * np.exp(m.gate_log_proba(Xs, n_threads=1))
                            for w, m in zip(self.lam, self.models)])
        self.expert = np.vstack([m.expert_aug for m in self.models])
        self.eta = _within_bulk(Z @ self.expert.T, self.W)
        self.nu = 1.0 / np.concatenate([m.expert_var for m in self.models])
        self.machine = np.repeat(np.arange(len(self.models)),
                                 [m.n_experts for m in self.models])
        self.Z = Z
        self.mu, self.d, self.f = local_terms(self.family, self.eta, self.nu)
        self.mu = np.ascontiguousarray(self.mu)

    def cost_terms(self, beta, phi):
        """The KL cost of local expert l and target k at support point s as
        P[l, k] + a[s, k] + b[s, l] c[s, k] + d[s, l] e[k] + f[s, l]
        (:func:`kl_costs`): the terms of the local experts alone (b, d, f,
        computed once), of the targets alone and their products, so that the
        assignment never holds the (S, L, K) array
        (``fastmoe._kernels.family_assign``)."""
        nu_k = 1.0 / phi
        a, c, e = target_terms(self.family, self.Z @ beta.T, nu_k)
        return (pair_terms(self.family, self.nu[:, None], nu_k[None, :]), a, self.mu, c, self.d,
                e, self.f)

    def costs(self, beta, phi) -> np.ndarray:
        """(S, L, K) the costs from :meth:`cost_terms` (for tests and small
        supports)."""
        P, a, b, c, d, e, f = self.cost_terms(beta, phi)
        return (P[None] + a[:, None, :] + b[:, :, None] * c[:, None, :]
                + d[:, :, None] * e[None, None, :] + f[:, :, None])

    def assign(self, beta, phi):
        """(A (S, L), cmin (S, L)): each local expert's least-cost target at
        each support point, and that cost."""
        S, L = self.eta.shape
        A, cmin = np.empty((S, L), dtype=np.int64), np.empty((S, L))
        terms = [np.ascontiguousarray(t, dtype=np.float64) for t in self.cost_terms(beta, phi)]
        _kernels.family_assign(*terms, A, cmin, n_threads=self.n_threads)
        return A, cmin


#: the share of the local experts' weight whose linear predictors bound the
#: others' (at each end)
BULK_TAIL = 1e-3
#: and this share of that range beyond it at each end (a well-fitted model's
#: predictors on covariates like its own's are never clipped)
BULK_MARGIN = 0.5


def _within_bulk(eta, W):
    """The local experts' linear predictors at the support points, each
    kept within the range that holds all but BULK_TAIL of their weight at
    each end, widened by BULK_MARGIN of it. A local expert fitted on a few
    hundred rows extrapolates to the other machines' covariates: on
    DoctorVisits over 16 machines one reached eta = 101 (a mean of 7e43
    visits) where the others stay within [-10, 20], and its costs,
    exponentials of that, swamped the objective in rounding (MM ran its 300
    iterations through costs of -2e23)."""
    order = np.argsort(eta, axis=None)
    cum = np.cumsum(W.ravel()[order])
    cum /= cum[-1]
    flat = eta.ravel()[order]
    lo = flat[min(np.searchsorted(cum, BULK_TAIL), flat.size - 1)]
    hi = flat[min(np.searchsorted(cum, 1.0 - BULK_TAIL), flat.size - 1)]
    margin = BULK_MARGIN * (hi - lo)
    return np.clip(eta, lo - margin, hi + margin)


def _target_fit(mix: FamilyMixture, fam, D, mean, b, phi_k, Xs):
    """A target's coefficients: IRLS on the pseudo-rows (weight D, response
    ``mean``) from ``b``, each step not raising the transported cost."""
    data = _Data(Xs, np.where(D > 0, mean, 1.0), D, np.zeros(Xs.shape[0]), fam, 1, 1)
    return fit_expert(data, D, b, phi_k, TARGET_IRLS)


def _mm(mix: FamilyMixture, Xs, beta, phi, *, max_iter: int, tol: float):
    """MM from (beta, phi): (beta, phi, history, iterations, converged,
    notes, assignment (S, L), its costs (S, L))."""
    fam = get_family(mix.family)
    K = beta.shape[0]
    total = float(mix.W.sum())
    mu_l = mix.mu
    if fam.has_dispersion:
        from scipy.special import psi

        # E_l[log y] less eta_l for a Gamma expert: psi(nu_l) - log nu_l
        log_y = psi(mix.nu) - np.log(mix.nu)
    history, notes, converged, it = [], [], False, 0
    while True:
        A, cmin = mix.assign(beta, phi)
        history.append(float(np.sum(mix.W * cmin)))
        # (the second term: costs of models that agree are zero up to rounding)
        if len(history) > 1 and abs(history[-2] - history[-1]) <= tol * abs(history[-2]) \
                + 1e-14 * total:
            converged = True
            break
        if it == max_iter:
            break
        beta, phi = beta.copy(), phi.copy()
        for k in range(K):
            P = np.where(A == k, mix.W, 0.0)
            D = P.sum(axis=1)
            if not D.sum() > EMPTY_SHARE * total:  # re-seed at the worst-served expert
                l = int(np.argmax(np.sum(mix.W * cmin, axis=0)))
                beta[k], phi[k] = mix.expert[l], 1.0 / mix.nu[l]
                notes.append(f"global expert {k} received no mass and was re-seeded at local "
                             f"expert {l} (machine {mix.machine[l]})")
                continue
            mean = np.divide((P * mu_l).sum(axis=1), D, out=np.ones_like(D), where=D > 0)
            beta[k] = _target_fit(mix, fam, D, mean, beta[k], phi[k], Xs)
            if fam.has_dispersion:
                eta_k = mix.Z @ beta[k]
                s = np.sum(P * (np.exp(mix.eta - eta_k[:, None]) - log_y - mix.eta
                                + eta_k[:, None] - 1.0)) / D.sum()
                phi[k] = 1.0 / float(_gamma_shape(np.array([max(s, 1e-300)]))[0])
        it += 1
    return beta, phi, np.array(history), it, converged, notes, A, cmin


def aligned_start(models, lam) -> tuple[np.ndarray, np.ndarray]:
    """(beta, phi): the local models' experts aligned to the largest one's
    (the Hungarian method on their coefficients) and averaged by weight; the
    dispersions averaged as shapes."""
    ref = models[int(np.argmax(lam))]
    aligned = [m.permute(alignment(m, ref)) for m in models]
    beta = sum(w * m.expert_aug for w, m in zip(lam, aligned)) / np.sum(lam)
    nu = sum(w / m.expert_var for w, m in zip(lam, aligned)) / np.sum(lam)
    return beta, 1.0 / nu


def kmeans_start(mix: FamilyMixture, K: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(beta, phi) from k-means on the local experts' coefficients, weighted
    by their machines' weights."""
    from sklearn.cluster import KMeans

    coef = mix.expert
    w = mix.lam[mix.machine]
    labels = KMeans(n_clusters=K, n_init=1, random_state=int(rng.integers(2**31 - 1))).fit(
        coef, sample_weight=w).labels_
    beta, nu = np.empty((K, coef.shape[1])), np.empty(K)
    for k in range(K):
        sel = labels == k
        if not sel.any():
            sel = np.arange(len(w)) == rng.integers(len(w))
        beta[k] = np.average(coef[sel], axis=0, weights=w[sel])
        nu[k] = np.average(mix.nu[sel], weights=w[sel])
    return beta, 1.0 / nu


def reduce_family(models, lam, Xs, K: int, *, init=None, n_init: int = 3,
                  max_iter: int = 300, tol: float = 1e-10, rng, n_threads: int | None = None):
    """The reduction of ``models`` (one family, standardised covariates) to
    K experts on the support ``Xs``: MM from the aligned average (where
    every model has K experts) and k-means starts, the smallest transported
    cost kept; or from ``init`` = (beta, phi) alone. Returns (beta, phi,
    history, n_iter, converged, notes, assignment, its costs, mixture)."""
    mix = FamilyMixture(models, lam, Xs, n_threads)
    if init is not None:
        starts = [init]
    else:
        starts = []
        if all(m.n_experts == K for m in models):
            starts.append(aligned_start(models, mix.lam))
        while len(starts) < max(n_init, 1):
            starts.append(kmeans_start(mix, K, rng))
    fixed = not get_family(mix.family).has_dispersion  # phi is 1, not an average near it
    best = None
    for beta, phi in starts:
        out = _mm(mix, Xs, np.array(beta, dtype=np.float64),
                  np.ones(K) if fixed else np.array(phi, dtype=np.float64),
                  max_iter=max_iter, tol=tol)
        if best is None or out[2][-1] < best[2][-1]:
            best = out
    return (*best, mix)

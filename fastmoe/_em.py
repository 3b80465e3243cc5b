"""EM for a softmax-gated Gaussian mixture of experts, as plain functions.

One EM iteration (method.md section 2):

1. E-step (one compiled pass): log-likelihood, log responsibilities, and per
   expert the weighted Gram matrix of z = (1, x, y), from which
2. the experts follow in closed form (weighted least squares and variance,
   floored at ``reg_var * Var(y)``), and
3. the gates take ``gate_steps`` Newton steps with step halving on the
   weighted multinomial logistic objective (a generalised EM: the
   log-likelihood still never decreases).

The response is centred internally (its weighted mean is added back to the
expert intercepts), which keeps the variance formula from the Gram matrix
accurate when y has a large offset; the log-likelihood is unchanged by it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _kernels
from ._gating import fit_gates
from ._linalg import (
    chunk_size,
    n_chunks,
    resolve_threads,
    single_threaded_blas,
    solve_psd,
    unpack_sym,
)
from ._params import MoEParams
from ._validation import (
    check_choice,
    check_float,
    check_int,
    check_random_state,
    check_X_y,
)
from .exceptions import ConvergenceWarning, DegenerateExpertWarning

INITS = ("random", "kmeans")
#: Newton steps on the gates of a k-means start (hard labels).
INIT_GATE_STEPS = 5
#: An expert whose total responsibility falls below this share of the total
#: weight is treated as empty (its previous parameters are kept).
EMPTY_SHARE = 1e-10


@dataclass(frozen=True)
class MoEFit:
    """Result of :func:`fit_moe`.

    Attributes
    ----------
    params : the fitted MoEParams of the best start, experts in canonical order
        (increasing intercept, MoEParams.canonical).
    log_likelihood : weighted log-likelihood of ``params`` on the data.
    n_iter : EM iterations of the best start.
    converged : whether the best start met ``tol`` before ``max_iter``.
    history : (n_iter + 1,) log-likelihood at the start and after each iteration.
    init_log_likelihoods : final log-likelihood of every start, in order.
    degenerate : messages about experts that collapsed in the best start.
    """

    params: MoEParams
    log_likelihood: float
    n_iter: int
    converged: bool
    history: np.ndarray = field(repr=False)
    init_log_likelihoods: tuple
    degenerate: tuple = ()


class EMData:
    """Validated data and the buffers one EM run reuses across iterations."""

    def __init__(self, X, y, w, n_experts: int, n_threads: int):
        self.X, self.w = X, w
        self.y_shift = float(np.average(y, weights=w))
        self.y = y - self.y_shift
        n, d = X.shape
        self.n, self.d, self.K = n, d, n_experts
        self.n_threads = n_threads
        self.chunk = chunk_size(n)
        self.nc = n_chunks(n, self.chunk)
        q = d + 2
        self.log_resp = np.empty((n, n_experts))
        self.row_ll = np.empty(n)
        self.stats = np.empty((self.nc, n_experts, q * (q + 1) // 2))
        self.total_weight = float(w.sum())
        self.var_y = float(np.average(self.y**2, weights=w))

    def e_step(self, alpha, beta, var) -> float:
        """Weighted log-likelihood; fills log_resp, row_ll and stats."""
        bad = _kernels.e_step(self.X, self.y, self.w, alpha, beta, var, self.log_resp,
                              self.row_ll, self.stats, self.chunk, self.n_threads)
        if bad:
            raise FloatingPointError(f"the log-likelihood of {bad} row(s) is not finite; "
                                     "the parameters overflowed (rescale X or y).")
        return float(np.dot(self.w, self.row_ll))

    def gram(self) -> np.ndarray:
        """(K, d+2, d+2) sum_i w_i r_ik z_i z_i^T with z = (1, x, y)."""
        return unpack_sym(self.stats.sum(axis=0), self.d + 2)


def experts_from_gram(G, beta_prev, var_prev, var_floor, total_weight):
    """Closed-form expert update from per-expert Gram matrices of z = (1, x, y).

    Returns (beta (K, d+1), var (K,), list of degeneracy messages).
    """
    K, q, _ = G.shape
    p = q - 1
    beta = np.array(beta_prev, dtype=np.float64, copy=True)
    var = np.array(var_prev, dtype=np.float64, copy=True)
    notes = []
    for k in range(K):
        mass = G[k, 0, 0]
        if not mass > EMPTY_SHARE * total_weight:
            notes.append(f"expert {k} received no responsibility; its parameters were kept")
            continue
        A, b, syy = G[k, :p, :p], G[k, :p, p], G[k, p, p]
        beta[k] = solve_psd(A, b)
        v = (syy - b @ beta[k]) / mass
        if not v > var_floor:
            notes.append(f"expert {k}'s variance collapsed to the floor {var_floor:.3g}")
            v = var_floor
        var[k] = v
    return beta, var, notes


def weighted_gram(X, y, w, R) -> np.ndarray:
    """(K, d+2, d+2) sum_i w_i R_ik z_i z_i^T, for initialisation from given labels."""
    Z = np.column_stack([np.ones(X.shape[0]), X, y])
    return np.einsum("ik,ia,ib->kab", R * w[:, None], Z, Z, optimize=True)


def _initial_params(data: EMData, init, rng, var_floor):
    """(alpha, beta, var) for one start."""
    n, K = data.n, data.K
    if isinstance(init, MoEParams):
        if init.n_experts != K or init.n_features != data.d:
            raise ValueError(f"init MoEParams has {init.n_experts} experts and "
                             f"{init.n_features} features; expected {K} and {data.d}.")
        beta = init.expert_aug.copy()
        beta[:, 0] -= data.y_shift
        return init.gate_aug.copy(), beta, np.maximum(init.expert_var, var_floor)
    alpha = np.zeros((K, data.d + 1))
    if init == "kmeans":
        from sklearn.cluster import KMeans

        scale = data.X.std(axis=0)
        scale[scale == 0] = 1.0
        km = KMeans(n_clusters=K, n_init=1, random_state=int(rng.integers(2**31 - 1)))
        labels = km.fit(data.X / scale, sample_weight=data.w).labels_
        R = np.zeros((n, K))
        R[np.arange(n), labels] = 1.0
    else:  # "random"
        R = rng.dirichlet(np.ones(K), size=n)
    beta0 = np.zeros((K, data.d + 1))
    var0 = np.full(K, max(data.var_y, var_floor))
    beta, var, _ = experts_from_gram(weighted_gram(data.X, data.y, data.w, R), beta0, var0,
                                     var_floor, data.total_weight)
    if init == "kmeans":
        alpha = fit_gates(data.X, R, data.w, alpha, max_iter=INIT_GATE_STEPS,
                          n_threads=data.n_threads).alpha
    return alpha, beta, var


def run_em(data: EMData, alpha, beta, var, *, max_iter, tol, gate_steps, var_floor):
    """EM from (alpha, beta, var); returns the final state and its history."""
    ll = data.e_step(alpha, beta, var)
    history = [ll]
    converged = False
    notes: list[str] = []
    it = 0
    for it in range(1, max_iter + 1):
        beta, var, notes = experts_from_gram(data.gram(), beta, var, var_floor,
                                             data.total_weight)
        R = np.exp(data.log_resp)
        alpha = fit_gates(data.X, R, data.w, alpha, max_iter=gate_steps, tol=0.0,
                          n_threads=data.n_threads).alpha
        ll_new = data.e_step(alpha, beta, var)
        history.append(ll_new)
        change, ll = ll_new - ll, ll_new
        if abs(change) <= tol * abs(ll):
            converged = True
            break
    return alpha, beta, var, ll, it, converged, np.array(history), notes


@single_threaded_blas
def fit_moe(X, y, n_experts: int, *, sample_weight=None, max_iter: int = 200,
            tol: float = 1e-7, n_init: int = 1, init="random", reg_var: float = 1e-6,
            gate_steps: int = 1, random_state=None, n_threads: int | None = None) -> MoEFit:
    """Fit a Gaussian mixture of experts by EM (centralised).

    Parameters
    ----------
    X : (n, d) covariates.
    y : (n,) responses.
    n_experts : number of experts K (1 <= K <= n).
    sample_weight : (n,) non-negative weights (default ones).
    max_iter : EM iterations at most per start.
    tol : stop when the log-likelihood changes by less than ``tol * |loglik|``.
    n_init : number of starts; the best log-likelihood is kept.
    init : "random" (Dirichlet(1) responsibilities, the default), "kmeans"
        (k-means on standardised X, per-cluster least squares, a few Newton
        steps for the gates: the authors' start), or a MoEParams to start from
        (used for every start). On covariates drawn from a mixture, k-means
        finds the covariate clusters rather than the experts and EM stays in a
        poor optimum (the authors' fit of the reference data set B, 29%
        clustering error); random starts do not have that bias.
    reg_var : variance floor, relative to the weighted variance of y.
    gate_steps : Newton steps on the gates per EM iteration.
    random_state : None, int or numpy Generator.
    n_threads : threads of the compiled kernels (None: all cores).

    Returns
    -------
    MoEFit

    Examples
    --------
    >>> from fastmoe import fit_moe
    >>> from fastmoe.datasets import make_moe_regression
    >>> X, y, truth, _ = make_moe_regression(2000, 2, 2, random_state=0)
    >>> fit = fit_moe(X, y, 2, random_state=0)
    >>> fit.converged
    True
    """
    X, y, w = check_X_y(X, y, sample_weight)
    K = check_int(n_experts, "n_experts")
    n = X.shape[0]
    if K > n:
        raise ValueError(f"n_experts={K} is more than the number of samples "
                         f"(n_samples = {n}); use n_experts <= n_samples.")
    max_iter = check_int(max_iter, "max_iter")
    n_init = check_int(n_init, "n_init")
    gate_steps = check_int(gate_steps, "gate_steps")
    tol = check_float(tol, "tol", 0.0, inclusive=True)
    reg_var = check_float(reg_var, "reg_var")
    if not isinstance(init, MoEParams):
        check_choice(init, "init", INITS)
    n_threads = resolve_threads(n_threads)
    rng = check_random_state(random_state)

    data = EMData(X, y, w, K, n_threads)
    var_floor = reg_var * (data.var_y if data.var_y > 0 else 1.0)
    best = None
    finals = []
    for _ in range(n_init):
        start_rng = np.random.default_rng(int(rng.integers(2**63 - 1)))
        alpha, beta, var = _initial_params(data, init, start_rng, var_floor)
        out = run_em(data, alpha, beta, var, max_iter=max_iter, tol=tol,
                     gate_steps=gate_steps, var_floor=var_floor)
        finals.append(out[3])
        if best is None or out[3] > best[3]:
            best = out
    alpha, beta, var, ll, it, converged, history, notes = best
    beta = beta.copy()
    beta[:, 0] += data.y_shift
    if not converged:
        warnings.warn(f"EM did not converge in max_iter={max_iter} iterations (relative "
                      f"change still above tol={tol:g}); increase max_iter or tol.",
                      ConvergenceWarning, stacklevel=2)
    if notes:
        warnings.warn("; ".join(notes) + ". Consider fewer experts or a larger reg_var.",
                      DegenerateExpertWarning, stacklevel=2)
    history.setflags(write=False)
    return MoEFit(MoEParams.from_aug(alpha, beta, var).canonical(), ll, it, converged, history,
                  tuple(finals), tuple(notes))

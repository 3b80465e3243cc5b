"""The comparators of the aggregate: the one-shot baselines (aligned
average, naive average, medoid, greedy merging), which return the same
AggregationResult as :func:`fastmoe.aggregate`, and FedAvg, which needs the
machines for several rounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import engine
from ._em import fit_moe
from ._gate_refit import TARGET_BLOCK, _target_assigned
from ._gating import fit_gates
from ._params import MoEParams
from ._reduction import (
    COSTS,
    LargeMixture,
    _aligned_average_params,
    _check_support,
    large_mixture,
    mm_pass,
    reduced_size,
    support_blocks,
    support_cache,
)
from ._runtime import blas_single_thread as single_threaded_blas
from ._runtime import resolve_threads
from ._validation import check_int, check_random_state, check_X, check_X_y
from .aggregation import AggregationResult, divergence_matrix

__all__ = ["aligned_average", "naive_average", "medoid", "greedy_merge", "fedavg", "FedAvgResult"]


def _baseline(mix: LargeMixture, X_support, params: MoEParams, method, cost, n_threads,
              t_start, cache=None):
    Xs = _check_support(X_support, mix, params.n_experts)
    beta = params.expert_aug
    beta[:, 0] -= mix.shift
    final = mm_pass(mix, Xs, beta, params.expert_var, COSTS[cost], resolve_threads(n_threads),
                    want_assign=True, cache=cache)
    total = time.perf_counter() - t_start
    return AggregationResult(params, final.objective, np.array([final.objective]), 0, True,
                             final.assign, final.mass, final.mass.sum(axis=0), final.lobj,
                             mix.machine, method, {"reduction": total, "gates": 0.0,
                                                   "total": total})


def _equal_k(models):
    ks = {m.n_experts for m in models}
    if len(ks) != 1:
        raise ValueError(f"this baseline needs local models with equal numbers of experts; "
                         f"got {sorted(ks)}. Use aggregate() instead.")


def aligned_average(local_models, *, sample_sizes=None, X_support, cost: str = "kl",
                    n_threads: int | None = None) -> AggregationResult:
    """Align each local model to the one with the largest sample (Hungarian
    method on expert coefficients), then average all parameters with weights
    lambda_m. ``X_support`` only serves to report the transport divergence.

    Parameters
    ----------
    local_models : sequence of MoEParams
        The machines' models (fitted estimators and LocalMessages are
        accepted too), all with the same number of experts.
    sample_sizes : array-like of shape (M,), optional
        n_m; weights lambda_m = n_m / n (default equal).
    X_support : array-like of shape (S, d)
        Support covariates (only for the reported divergence and transport plan).
    cost : {"kl", "w2"}, default="kl"
        The cost of the transport divergence reported in the result.
    n_threads : int, optional
        Threads of the compiled passes (None: all cores).

    Returns
    -------
    AggregationResult
        The averaged model, with the divergence and the plan from the local
        models to it.
    """
    t0 = time.perf_counter()
    mix = large_mixture(local_models, sample_sizes)
    models = mix.models
    _equal_k(models)
    params = _aligned_average_params(models, mix.lam).canonical()
    return _baseline(mix, X_support, params, "aligned_average", cost, n_threads, t0)


def naive_average(local_models, *, sample_sizes=None, X_support, cost: str = "kl",
                  n_threads: int | None = None) -> AggregationResult:
    """Average the parameters of the local models in their given order (no
    alignment): wrong under label switching, kept as the authors' baseline.

    Parameters
    ----------
    local_models : sequence of MoEParams
        The machines' models (fitted estimators and LocalMessages are
        accepted too), all with the same number of experts.
    sample_sizes : array-like of shape (M,), optional
        n_m; weights lambda_m = n_m / n (default equal).
    X_support : array-like of shape (S, d)
        Support covariates (only for the reported divergence and transport plan).
    cost : {"kl", "w2"}, default="kl"
        The cost of the transport divergence reported in the result.
    n_threads : int, optional
        Threads of the compiled passes (None: all cores).

    Returns
    -------
    AggregationResult
        The averaged model, with the divergence and the plan from the local
        models to it.
    """
    t0 = time.perf_counter()
    mix = large_mixture(local_models, sample_sizes)
    models = mix.models
    _equal_k(models)
    return _baseline(mix, X_support, _average(models, mix.lam).canonical(), "naive_average",
                     cost, n_threads, t0)


def medoid(local_models, *, sample_sizes=None, X_support, cost: str = "kl",
           n_threads: int | None = None) -> AggregationResult:
    """The local model with the smallest weighted transport divergence from
    the other local models: argmin_i sum_j lambda_j R(theta_j -> theta_i).

    Parameters
    ----------
    local_models : sequence of MoEParams
        The machines' models (fitted estimators and LocalMessages are
        accepted too), all with the same number of experts.
    sample_sizes : array-like of shape (M,), optional
        n_m; weights lambda_m = n_m / n (default equal).
    X_support : array-like of shape (S, d)
        Support covariates, over which the pairwise divergences are computed.
    cost : {"kl", "w2"}, default="kl"
        The cost of the transport divergence reported in the result.
    n_threads : int, optional
        Threads of the compiled passes (None: all cores).

    Returns
    -------
    AggregationResult
        The chosen local model (canonical order), with the divergence and
        the plan from the local models to it.
    """
    t0 = time.perf_counter()
    mix = large_mixture(local_models, sample_sizes)
    models = mix.models
    Xs = check_X(X_support, mix.n_features, name="X_support")
    scores = mix.lam @ divergence_matrix(models, Xs, cost=cost, n_threads=n_threads)
    return _baseline(mix, X_support, models[int(np.argmin(scores))].canonical(), "medoid",
                     cost, n_threads, t0)


# ----------------------------------------------------------------------------
# greedy merging
# ----------------------------------------------------------------------------
class _Groups:
    """Groups of local experts merged so far, as additive statistics over the
    support: for group G of local experts l with weights W_l(s), ``A`` =
    sum_l sum_s W_l(s) xt_s xt_s^T, ``b`` = sum_l A_l beta_l, ``q`` = sum_l
    (W_l var_l + beta_l^T A_l beta_l) and ``mass`` W = sum_l sum_s W_l(s). A group's expert is the
    weighted least-squares fit beta_G = A^-1 b with variance (q - b . beta_G) /
    mass: the Gaussian linear expert closest in KL, over the support, to the
    merged local experts (the MM update of the reduction for one target)."""

    def __init__(self, A, beta, var, mass):
        self.A = A.copy()
        self.b = np.einsum("lij,lj->li", A, beta)
        self.q = mass * var + np.einsum("li,li->l", self.b, beta)
        self.mass = mass.copy()
        self.var = var.copy()
        self.beta = beta.copy()

    def merged(self, i, js):
        """(beta, var, mass) of group i merged with each group in ``js``."""
        A = self.A[i] + self.A[js]
        b = self.b[i] + self.b[js]
        ridge = 1e-12 * np.trace(A, axis1=1, axis2=2)[:, None, None] * np.eye(A.shape[1])
        beta = np.linalg.solve(A + ridge, b[..., None])[..., 0]
        mass = self.mass[i] + self.mass[js]
        var = (self.q[i] + self.q[js] - np.einsum("li,li->l", b, beta)) / mass
        floor = 1e-12 * np.maximum(self.var[i], self.var[js])
        return beta, np.maximum(var, floor), mass

    def cost(self, i, js):
        """Runnalls' bound on the KL divergence that merging group i with each
        of ``js`` adds: 0.5 [W_ij log v_ij - W_i log v_i - W_j log v_j]."""
        _, var, mass = self.merged(i, js)
        return 0.5 * (mass * np.log(var) - self.mass[i] * np.log(self.var[i])
                      - self.mass[js] * np.log(self.var[js]))

    def merge(self, i, j):
        beta, var, mass = self.merged(i, np.array([j]))
        self.A[i] += self.A[j]
        self.b[i] += self.b[j]
        self.q[i] += self.q[j]
        self.mass[i], self.var[i], self.beta[i] = mass[0], var[0], beta[0]


@single_threaded_blas
def greedy_merge(local_models, n_experts: int | None = None, *, sample_sizes=None, X_support,
                 cost: str = "kl", gate_max_iter: int = 100,
                 n_threads: int | None = None) -> AggregationResult:
    """Greedy pairwise merging of the M*K local experts down to K (Runnalls).

    Every local expert l starts as its own group, with its weight w_l(x_s)
    over the support. At each step the two groups whose merge adds the least
    to Runnalls' upper bound on the KL divergence,
    0.5 [W_ij log v_ij - W_i log v_i - W_j log v_j] (W the mass of a group over
    the support, v its variance), are merged into the Gaussian linear expert
    that is closest to both in expected KL over the support (weighted least
    squares of their means, their variances and the spread of their means
    around the fit). When K groups remain, the gates are refitted on the
    support as for the OT aggregate ("assigned": each local expert to its
    group). Costs are computed for every pair once, then only for the new
    group: O(L^2) solves of size d+1 in all, L = M*K.

    Parameters
    ----------
    local_models : sequence of MoEParams
        The machines' models (fitted estimators and LocalMessages are
        accepted too).
    n_experts : int, optional
        K of the result (default: the common K of the local models).
    sample_sizes : array-like of shape (M,), optional
        n_m; weights lambda_m = n_m / n (default equal).
    X_support : array-like of shape (S, d)
        Support covariates.
    cost : {"kl", "w2"}, default="kl"
        The cost of the transport divergence reported in the result (the
        merging itself follows Runnalls' KL bound).
    gate_max_iter : int, default=100
        Newton steps at most in the gate refit.
    n_threads : int, optional
        Threads of the compiled passes (None: all cores).

    Returns
    -------
    AggregationResult
        The merged K-expert model with its refitted gates, the divergence
        and the plan from the local models to it.
    """
    t0 = time.perf_counter()
    mix = large_mixture(local_models, sample_sizes)
    L = mix.gate.shape[0]
    K = reduced_size(mix, n_experts, cost)
    gate_max_iter = check_int(gate_max_iter, "gate_max_iter")
    Xs = _check_support(X_support, mix, K)
    n_threads = resolve_threads(n_threads)
    cache = support_cache(mix, Xs, n_threads)  # the local weights, once for every pass
    Xt = np.column_stack([np.ones(Xs.shape[0]), Xs])
    A = np.zeros((L, Xt.shape[1], Xt.shape[1]))
    for lo, hi, W, _ in support_blocks(mix, Xs, TARGET_BLOCK, cache, n_threads):
        A += np.einsum("sl,si,sj->lij", W, Xt[lo:hi], Xt[lo:hi], optimize=True)
    mass = A[:, 0, 0].copy()
    groups = _Groups(A, mix.expert, mix.var, mass)
    # pair costs: row i holds the costs to the groups after it; inf elsewhere
    C = np.full((L, L), np.inf)
    for i in range(L - 1):
        C[i, i + 1:] = groups.cost(i, np.arange(i + 1, L))
    alive = np.ones(L, dtype=bool)
    owner = np.arange(L)
    for _ in range(L - K):
        i, j = divmod(int(np.argmin(C)), L)
        groups.merge(i, j)
        alive[j] = False
        owner[owner == j] = i
        C[j, :] = C[:, j] = np.inf
        others = np.flatnonzero(alive)
        others = others[others != i]
        if others.size:
            c = groups.cost(i, others)
            before, after = others < i, others > i
            C[others[before], i] = c[before]
            C[i, others[after]] = c[after]
    keep = np.flatnonzero(alive)
    label = np.searchsorted(keep, owner)  # group of each local expert, 0..K-1
    onehot = np.zeros((L, K))
    onehot[np.arange(L), label] = 1.0
    T = _target_assigned(mix, Xs, onehot, K, cache)
    alpha = fit_gates(Xs, T, np.ones(Xs.shape[0]), np.zeros((K, Xs.shape[1] + 1)),
                      max_iter=gate_max_iter, tol=1e-12, n_threads=n_threads).alpha
    beta = groups.beta[keep].copy()
    beta[:, 0] += mix.shift
    params = MoEParams.from_aug(alpha, beta, groups.var[keep]).canonical()
    return _baseline(mix, Xs, params, "greedy_merge", cost, n_threads, t0, cache)


# ----------------------------------------------------------------------------
# FedAvg
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FedAvgResult:
    """The result of :func:`fedavg`.

    Attributes
    ----------
    params : MoEParams
        The global model after the last round.
    log_likelihood : ndarray of shape (rounds + 1,)
        The total log-likelihood of the global model over all shards at the
        start of each round and after the last (each machine reports its own,
        the server adds them).
    learning_time : float
        Seconds: the start's fit, then per round the slowest machine's local
        iterations plus the server's average (what the rounds take with every
        shard on its own machine).
    message_bytes : int
        Bytes each machine sends per round (its model's float64 arrays and
        its log-likelihood).
    n_rounds : int
        Rounds run.
    """

    params: MoEParams
    log_likelihood: np.ndarray
    learning_time: float
    message_bytes: int
    n_rounds: int


def _average(models, weights) -> MoEParams:
    """The parameters of same-labelled models averaged with ``weights``."""
    return MoEParams(**{name: sum(w * getattr(m, name) for w, m in zip(weights, models))
                        for name in ("gate_coef", "gate_intercept", "expert_coef",
                                     "expert_intercept", "expert_var")})


@single_threaded_blas
def fedavg(shards, n_experts: int, *, rounds: int = 10, local_iter: int = 5, init=None,
           n_init: int = 3, reg_var: float = 1e-6, random_state=None,
           n_threads: int | None = None) -> FedAvgResult:
    """FedAvg for the mixture of experts: ``rounds`` rounds in which every
    machine runs ``local_iter`` EM iterations from the global model on its
    shard and the server averages the resulting parameters, weighted by n_m.

    All machines start each round from the same global model, so their
    experts keep its labels and the average is meaningful (the local
    iterations are :func:`fastmoe.engine.em_step`, which never reorders the
    experts). Unlike the one-shot estimators it needs the machines for every
    round; each round's message is one model.

    Parameters
    ----------
    shards : sequence of (X, y) pairs
        One pair of arrays per machine.
    n_experts : int
        K.
    rounds : int, default=10
        Communication rounds.
    local_iter : int, default=5
        EM iterations per machine and round.
    init : MoEParams, optional
        The first global model; by default a fit (``n_init`` starts) on the
        largest shard, counted in ``learning_time``.
    n_init : int, default=3
        Starts of that first fit.
    reg_var : float, default=1e-6
        Variance floor of the local iterations, relative to each shard's
        variance of y.
    random_state : None, int or Generator
        Seeds the first fit.
    n_threads : int, optional
        Threads of the compiled kernels (None: all cores).

    Returns
    -------
    FedAvgResult
        The last global model, the log-likelihood after each round and the
        learning time.
    """
    pairs = [check_X_y(X, y)[:2] for X, y in shards]
    if not pairs:
        raise ValueError("fedavg needs at least one shard.")
    if len({X.shape[1] for X, _ in pairs}) != 1:
        raise ValueError("the shards have different numbers of covariates.")
    K = check_int(n_experts, "n_experts")
    rounds = check_int(rounds, "rounds", 0)
    local_iter = check_int(local_iter, "local_iter")
    rng = check_random_state(random_state)
    sizes = np.array([len(y) for _, y in pairs], dtype=float)
    lam = sizes / sizes.sum()
    t0 = time.perf_counter()
    if init is None:
        X0, y0 = pairs[int(np.argmax(sizes))]
        model = fit_moe(X0, y0, K, n_init=n_init, reg_var=reg_var, random_state=rng,
                        n_threads=n_threads).params
    else:
        if not isinstance(init, MoEParams) or init.n_experts != K \
                or init.n_features != pairs[0][0].shape[1]:
            raise ValueError(f"init must be a MoEParams with {K} experts on "
                             f"{pairs[0][0].shape[1]} covariates.")
        model = init
    learning_time = time.perf_counter() - t0
    history = []
    for _ in range(rounds):
        local, lls, times = [], [], []
        for X, y in pairs:
            t = time.perf_counter()
            p = model
            for it in range(local_iter):
                p, ll = engine.em_step(X, y, p, reg_var=reg_var, n_threads=n_threads)
                if it == 0:
                    lls.append(ll)
            local.append(p)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        history.append(float(np.sum(lls)))
        model = _average(local, lam)
        learning_time += max(times) + time.perf_counter() - t
    history.append(float(sum(model.log_likelihood(X, y, n_threads=n_threads) for X, y in pairs)))
    nbytes = 8 * (2 * K * (pairs[0][0].shape[1] + 1) + K + 1)
    return FedAvgResult(model.canonical(), np.array(history), learning_time, nbytes, rounds)

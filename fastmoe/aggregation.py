"""One-shot aggregation of local MoE models by optimal transport (method.md 3-4).

M local models theta_m fitted on n_m rows each define the large mixture

    f_W(y | x) = sum_m lambda_m f(y | x; theta_m),   lambda_m = n_m / n,

with L = sum_m K_m components. :func:`aggregate` reduces it to K experts by
minimising the composite transportation divergence

    R(beta, var) = sum_s sum_l w_l(x_s) min_k c_lk(x_s)

over the support covariates x_s (a sum over s, not a mean) with an MM
algorithm whose every iteration is one compiled pass (``_kernels.mm_pass``),
then refits the gates by weighted multinomial logistic regression on the
support. Baselines (:func:`aligned_average`, :func:`naive_average`,
:func:`medoid`) return the same :class:`AggregationResult`.
"""

from __future__ import annotations

import time
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
    check_X,
    check_y,
)
from .diagnostics import alignment
from .exceptions import ConvergenceWarning, DegenerateExpertWarning

COSTS = {"kl": _kernels.KL, "w2": _kernels.W2}
GATE_TARGETS = ("assigned", "kl", "plan", "posterior")
INITS = ("aligned", "kmeans")
VARIANCE_UPDATES = ("exact", "published")
#: Gauss-Hermite nodes per local expert for the "kl" gate target
GH_NODES = 10
#: support points per block when gate targets are built (bounds memory)
TARGET_BLOCK = 2048
#: largest cache of local weights and means on the support reused by every MM
#: iteration; beyond it they are recomputed in the pass
CACHE_BYTES = 256 * 2**20
#: local weights and means held at once when they are recomputed in the pass
BLOCK_BYTES = 4 * 2**20


# ----------------------------------------------------------------------------
# the large mixture
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LargeMixture:
    """The L local experts stacked (intercepts centred by ``shift``)."""

    gate: np.ndarray  # (L, d+1)
    expert: np.ndarray  # (L, d+1), intercept minus shift
    var: np.ndarray  # (L,)
    starts: np.ndarray  # (M+1,) int64
    lam: np.ndarray  # (M,) machine weights, sum 1
    shift: float
    n_experts: tuple  # K_m per machine
    models: tuple  # the validated local MoEParams

    @property
    def n_machines(self) -> int:
        return len(self.lam)

    @property
    def n_features(self) -> int:
        return self.gate.shape[1] - 1

    @property
    def machine(self) -> np.ndarray:
        """(L,) machine index of each local expert."""
        return np.repeat(np.arange(self.n_machines), np.diff(self.starts))

    def support(self, Xs: np.ndarray, n_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(W, ML): the (S, L) local weights w_l(x_s) = lambda_m pi_k^(m)(x_s)
        and the local expert means (centred) at the rows of ``Xs``."""
        Xs = np.ascontiguousarray(Xs, dtype=np.float64)
        S, L = Xs.shape[0], self.gate.shape[0]
        W, ML = np.empty((S, L)), np.empty((S, L))
        _kernels.local_support(Xs, self.gate, self.expert, self.starts, self.lam, W, ML,
                               n_threads=n_threads)
        return W, ML


def _as_params(model, index: int) -> MoEParams:
    if isinstance(model, MoEParams):
        return model
    if isinstance(model, dict):
        try:
            return MoEParams.from_dict(model)
        except ValueError as exc:
            raise ValueError(f"local_models[{index}]: {exc}") from None
    params = getattr(model, "params_", None) or getattr(model, "params", None)
    if isinstance(params, MoEParams):
        return params
    raise ValueError(f"local_models[{index}] is a {type(model).__name__}; expected MoEParams, "
                     "a fitted estimator, a LocalMessage or a MoEParams.to_dict() record.")


def large_mixture(local_models, sample_sizes=None) -> LargeMixture:
    """Validate the local models and stack them."""
    if isinstance(local_models, MoEParams) or not hasattr(local_models, "__len__"):
        raise ValueError("local_models must be a non-empty sequence of models.")
    if len(local_models) == 0:
        raise ValueError("local_models is empty; give at least one local model.")
    models = [_as_params(m, i) for i, m in enumerate(local_models)]
    d = models[0].n_features
    for i, m in enumerate(models):
        if m.n_features != d:
            raise ValueError(f"local_models[{i}] has {m.n_features} features but "
                             f"local_models[0] has {d}; all must match.")
    M = len(models)
    if sample_sizes is None:
        sizes = np.ones(M)
    else:
        sizes = np.asarray(sample_sizes, dtype=np.float64).ravel()
        if sizes.shape != (M,):
            raise ValueError(f"sample_sizes has {sizes.size} entries for {M} local models.")
        bad = np.flatnonzero(~(np.isfinite(sizes) & (sizes > 0)))
        if bad.size:
            raise ValueError(f"sample_sizes[{bad[0]}] = {sizes[bad[0]]}; every sample size "
                             "must be a positive number.")
    lam = sizes / sizes.sum()
    gate = np.vstack([m.gate_aug for m in models])
    expert = np.vstack([m.expert_aug for m in models])
    var = np.concatenate([m.expert_var for m in models])
    counts = [m.n_experts for m in models]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    shift = float(np.sum(np.repeat(lam, counts) * expert[:, 0]) / np.sum(np.repeat(lam, counts)))
    expert[:, 0] -= shift
    gate = np.where(np.isfinite(gate), gate, -1e300)  # a -inf gate is a zero weight
    return LargeMixture(np.ascontiguousarray(gate), np.ascontiguousarray(expert), var,
                        starts, lam, shift, tuple(counts), tuple(models))


# ----------------------------------------------------------------------------
# the compiled pass and the closed-form update
# ----------------------------------------------------------------------------
@dataclass
class _Pass:
    objective: float
    gram: np.ndarray  # (K, p, p)
    lin: np.ndarray  # (K, p)
    scal: np.ndarray  # (K, 4)
    mass: np.ndarray  # (L, K)
    lobj: np.ndarray  # (L,)
    assign: np.ndarray | None


@dataclass(frozen=True)
class SupportCache:
    """What every MM pass over one support reuses.

    W, ML: the (S, L) local weights and means, when they fit in
    ``CACHE_BYTES``; else (0, L) arrays, and each pass recomputes them block by
    block (memory flat in S).
    gram_total: (p, p) sum_s Lambda(s) xt_s xt_s^T with Lambda(s) = sum_l
    w_l(x_s). Since the targets' weights D_k(s) sum to Lambda(s), a pass can
    skip one target's Gram matrix and take it as this total minus the others.
    """

    W: np.ndarray
    ML: np.ndarray
    gram_total: np.ndarray


def support_blocks(mix: LargeMixture, Xs, rows: int, cache: SupportCache | None = None,
                   n_threads: int = 1):
    """(lo, hi, W, ML) for the blocks of ``rows`` support points: the local
    weights and means, sliced from ``cache`` when it holds them, else computed
    block by block."""
    S = Xs.shape[0]
    held = cache is not None and cache.W.shape[0] == S
    for lo in range(0, S, rows):
        hi = min(S, lo + rows)
        if held:
            yield lo, hi, cache.W[lo:hi], cache.ML[lo:hi]
        else:
            yield (lo, hi) + mix.support(Xs[lo:hi], n_threads)


def support_cache(mix: LargeMixture, Xs, n_threads: int = 1) -> SupportCache:
    """The :class:`SupportCache` of one support, built once per aggregation."""
    S, L = Xs.shape[0], mix.gate.shape[0]
    keep = 2 * S * L * 8 <= CACHE_BYTES
    rows = S if keep else max(1, BLOCK_BYTES // (2 * 8 * L))
    gram_total = np.zeros((Xs.shape[1] + 1,) * 2)
    for lo, hi, W, ML in support_blocks(mix, Xs, rows, n_threads=n_threads):
        Z = np.column_stack([np.ones(W.shape[0]), Xs[lo:hi]])
        gram_total += Z.T @ (W.sum(axis=1)[:, None] * Z)
    if not keep:
        W = ML = np.empty((0, L))
    return SupportCache(W, ML, gram_total)


def mm_pass(mix: LargeMixture, Xs, beta, var, cost: int, n_threads: int,
            want_assign: bool = False, cache: SupportCache | None = None,
            skip: int = -1) -> _Pass:
    """One compiled pass (``_kernels.mm_pass``), its chunks summed in order.

    Without cached local weights and means they are computed for blocks of
    whole chunks, so the chunks, and the results, are the same either way.
    ``skip`` >= 0 (needs ``cache``): that target's Gram matrix is the cache's
    total minus the others' (use a heavy target: the difference loses the
    digits of the total that the target does not carry)."""
    S, d = Xs.shape
    K, p = beta.shape
    L = mix.gate.shape[0]
    chunk = chunk_size(S)
    nc = n_chunks(S, chunk)
    out = (np.empty((nc, K, p * (p + 1) // 2)), np.empty((nc, K, p)), np.empty((nc, K, 2)),
           np.empty((nc, K, L)), np.empty((nc, L)),
           np.empty((S, L) if want_assign else (0, L), dtype=np.int16))
    targets = (np.ascontiguousarray(beta, dtype=np.float64),
               np.ascontiguousarray(var, dtype=np.float64))
    if cache is not None and cache.W.shape[0] == S:
        _kernels.mm_pass(Xs, cache.W, cache.ML, mix.var, targets, cost, chunk, out, skip,
                         n_threads=n_threads)
    else:
        rows = chunk * max(1, BLOCK_BYTES // (2 * 8 * L * chunk))
        for lo, hi, W, ML in support_blocks(mix, Xs, rows, n_threads=n_threads):
            c = slice(lo // chunk, n_chunks(hi - lo, chunk) + lo // chunk)
            block = tuple(a[c] for a in out[:5]) + (out[5][lo:hi] if want_assign else out[5],)
            _kernels.mm_pass(Xs[lo:hi], W, ML, mix.var, targets, cost, chunk, block, skip,
                             n_threads=n_threads)
    gram, lin, scal, mass, lobj, assign = out
    gram = unpack_sym(gram.sum(axis=0), p)
    if skip >= 0:
        gram[skip] = cache.gram_total - gram.sum(axis=0)  # the kernel left it zero
    lobj = lobj.sum(axis=0)
    mass = mass.sum(axis=0).T
    # sum P var_l and sum P sqrt(var_l) per target, from the (L, K) mass
    scal = np.column_stack([scal.sum(axis=0), mass.T @ mix.var, mass.T @ np.sqrt(mix.var)])
    return _Pass(float(lobj.sum()), gram, lin.sum(axis=0), scal, mass, lobj,
                 assign if want_assign else None)


def _update(mix, st: _Pass, beta, var, cost: int, variance_update: str, notes: list):
    """Closed-form minimiser of R over the targets for a fixed plan."""
    K = beta.shape[0]
    beta = beta.copy()
    var = var.copy()
    floor = 1e-12 * float(mix.var.max())
    empty = [k for k in range(K) if not st.scal[k, 0] > 0.0]
    solved = solve_psd(st.gram, st.lin)
    for k in range(K):
        D = st.scal[k, 0]
        if not D > 0.0:
            continue
        beta[k] = solved[k]
        if cost == _kernels.W2:
            v = (st.scal[k, 3] / D) ** 2
        elif variance_update == "published":
            v = st.scal[k, 2] / D
        else:
            v = (st.scal[k, 2] + st.scal[k, 1] - beta[k] @ st.lin[k]) / D
        var[k] = max(v, floor)
    if empty:
        # re-seed each empty target at the local expert that is worst represented
        order = np.argsort(-st.lobj)
        for k, l in zip(empty, order):
            beta[k] = mix.expert[l]
            var[k] = mix.var[l]
            notes.append(f"global expert {k} received no mass and was re-seeded at local "
                         f"expert {l} (machine {mix.machine[l]})")
    return beta, var


def _run_mm(mix, Xs, beta, var, *, cost, variance_update, max_iter, tol, n_threads,
            cache=None):
    history = []
    notes: list[str] = []
    converged = False
    it = 0
    skip = -1
    while True:
        st = mm_pass(mix, Xs, beta, var, cost, n_threads, cache=cache, skip=skip)
        if skip >= 0 and not st.scal[skip, 0] * 4 * len(var) >= st.scal[:, 0].sum():
            # the skipped target lost most of its mass: take its Gram matrix directly
            st = mm_pass(mix, Xs, beta, var, cost, n_threads, cache=cache)
        if cache is not None:
            skip = int(np.argmax(st.scal[:, 0]))  # the heaviest target, next time
        history.append(st.objective)
        if len(history) > 1:
            prev = history[-2]
            if abs(prev - st.objective) <= tol * max(abs(prev), 1e-300):
                converged = True
                break
        if it == max_iter:
            break
        beta, var = _update(mix, st, beta, var, cost, variance_update, notes)
        it += 1
    return beta, var, np.array(history), it, converged, notes


# ----------------------------------------------------------------------------
# starts
# ----------------------------------------------------------------------------
def _aligned_average_params(models, lam) -> MoEParams:
    # reference: the largest sample; ties broken by the canonical expert
    # intercepts, so that the result does not depend on the order of the models
    keys = [(-w, tuple(np.sort(m.expert_intercept))) for w, m in zip(lam, models)]
    ref = models[min(range(len(models)), key=keys.__getitem__)]
    aligned = [m.permute(alignment(m, ref)) for m in models]
    avg = {name: sum(w * getattr(m, name) for w, m in zip(lam, aligned))
           for name in ("gate_coef", "gate_intercept", "expert_coef", "expert_intercept",
                        "expert_var")}
    return MoEParams(**avg)


def _kmeans_start(mix, K, rng):
    from sklearn.cluster import KMeans

    feats = np.column_stack([mix.expert, np.sqrt(mix.var)])
    w = np.repeat(mix.lam, np.diff(mix.starts))
    km = KMeans(n_clusters=K, n_init=1, random_state=int(rng.integers(2**31 - 1)))
    labels = km.fit(feats, sample_weight=w).labels_
    beta = np.empty((K, mix.expert.shape[1]))
    var = np.empty(K)
    for k in range(K):
        sel = labels == k
        if not sel.any():  # k-means leaves a cluster empty on duplicate experts
            sel = np.arange(len(w)) == rng.integers(len(w))
        beta[k] = np.average(mix.expert[sel], axis=0, weights=w[sel])
        var[k] = np.average(mix.var[sel], weights=w[sel])
    return beta, var


# ----------------------------------------------------------------------------
# gate targets
# ----------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class AggregationResult:
    """Result of :func:`aggregate` and of the baselines.

    Attributes
    ----------
    params : MoEParams, the aggregated K-expert model (canonical order).
    objective : transport divergence R from the large mixture to ``params`` on
        the support (a sum over support points).
    history : (n_iter + 1,) R at the start and after each MM iteration.
    n_iter, converged : of the best start's MM loop.
    assignment : (S, L) int16, the global expert k*(s, l) that receives local
        expert l at support point s (the transport plan in compact form:
        P_lks = w_l(x_s) 1{k = assignment[s, l]}).
    local_mass : (L, K) sum_s P_lks, the mass each local expert sends to each
        global expert.
    expert_mass : (K,) total mass received by each global expert.
    local_objective : (L,) each local expert's share of R.
    machine : (L,) machine index of each local expert.
    method : "ot-kl", "ot-w2", "aligned_average", "naive_average" or "medoid".
    timings : seconds per stage ("reduction", "gates", "total").
    notes : what was repaired on the way (re-seeded experts, ...).
    excluded : indices of input models left out as failed local fits
        (:func:`fastmoe.aggregate_messages` with ``exclude_failed``); ``machine``
        then numbers the models that were kept, in order.
    implausible : indices of input models whose claimed sample size is out of
        line with the others' or with their own covariate sample
        (:func:`fastmoe.aggregate_messages`); the reasons are in ``notes``.
    """

    params: MoEParams
    objective: float
    history: np.ndarray = field(repr=False)
    n_iter: int
    converged: bool
    assignment: np.ndarray = field(repr=False)
    local_mass: np.ndarray = field(repr=False)
    expert_mass: np.ndarray
    local_objective: np.ndarray = field(repr=False)
    machine: np.ndarray = field(repr=False)
    method: str
    timings: dict
    notes: tuple = ()
    excluded: tuple = ()
    implausible: tuple = ()

    def report(self) -> str:
        """Aggregation health report (:func:`fastmoe.diagnostics.health_report`)."""
        from .diagnostics import health_report

        return health_report(self)

    def health(self) -> dict:
        """Structured health (:func:`fastmoe.diagnostics.aggregation_health`)."""
        from .diagnostics import aggregation_health

        return aggregation_health(self)


def _canonical_targets(beta, var):
    order = np.lexsort((var, beta[:, 0]))
    return beta[order].copy(), var[order].copy()


def _check_support(Xs, mix, K):
    Xs = check_X(Xs, mix.n_features, name="X_support")
    need = (mix.n_features + 1) * (K - 1)
    if Xs.shape[0] < max(need, 1):
        raise ValueError(f"X_support has {Xs.shape[0]} points; the gate regression of {K} "
                         f"experts on {mix.n_features} features needs at least "
                         f"(d+1)(K-1) = {need}. Send larger covariate samples.")
    return Xs


@single_threaded_blas
def aggregate(local_models, n_experts: int | None = None, *, sample_sizes=None, X_support,
              cost: str = "kl", init: str = "aligned", n_init: int = 3, max_iter: int = 300,
              tol: float = 1e-10, gate_target: str = "assigned", y_support=None,
              variance_update: str = "exact", gate_max_iter: int = 100, random_state=None,
              n_threads: int | None = None) -> AggregationResult:
    """Reduce M local MoE models to one K-expert MoE by optimal transport.

    Parameters
    ----------
    local_models : sequence of MoEParams (or fitted estimators, LocalMessages,
        ``to_dict`` records); their numbers of experts may differ.
    n_experts : K of the result (default: the common K of the local models).
    sample_sizes : (M,) n_m; weights lambda_m = n_m / n (default equal).
    X_support : (S, d) support covariates.
    cost : "kl" or "w2", the cost between Gaussian experts.
    init : "aligned" (the Hungarian-aligned average of the local models as the
        first start, k-means for the others; needs equal K_m) or "kmeans"
        (k-means on the local expert coefficients for every start).
    n_init : number of starts; the smallest objective is kept.
    max_iter, tol : MM stops when R changes by less than ``tol * R``.
    gate_target : "assigned" (default), "kl", "plan" or "posterior"
        (method.md section 4, step 4); "posterior" needs ``y_support``.
    y_support : (S,) responses at the support points, for "posterior" only.
    variance_update : "exact" (the minimiser of R) or "published" (the
        authors' code: plan-weighted mean of the local variances).
    gate_max_iter : Newton steps at most in the gate refit.
    random_state : None, int or Generator.
    n_threads : threads of the compiled pass (None: all cores).

    Returns
    -------
    AggregationResult
    """
    t_start = time.perf_counter()
    mix = large_mixture(local_models, sample_sizes)
    if n_experts is None:
        if len(set(mix.n_experts)) != 1:
            raise ValueError(f"the local models have different numbers of experts "
                             f"{sorted(set(mix.n_experts))}; pass n_experts.")
        n_experts = mix.n_experts[0]
    K = check_int(n_experts, "n_experts")
    if K > mix.gate.shape[0]:
        raise ValueError(f"n_experts={K} is more than the {mix.gate.shape[0]} local experts "
                         "in all; cannot reduce to more experts than there are.")
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {sorted(COSTS)}; got {cost!r}.")
    check_choice(init, "init", INITS)
    check_choice(gate_target, "gate_target", GATE_TARGETS)
    check_choice(variance_update, "variance_update", VARIANCE_UPDATES)
    n_init = check_int(n_init, "n_init")
    max_iter = check_int(max_iter, "max_iter", 0)
    gate_max_iter = check_int(gate_max_iter, "gate_max_iter")
    tol = check_float(tol, "tol", 0.0, inclusive=True)
    Xs = _check_support(X_support, mix, K)
    if gate_target == "posterior":
        if y_support is None:
            raise ValueError('gate_target="posterior" needs y_support (responses at the '
                             'support points); use "assigned" or "kl" without responses.')
        ys = check_y(y_support, Xs.shape[0], name="y_support") - mix.shift
    elif y_support is not None:
        raise ValueError('y_support is used only with gate_target="posterior".')
    n_threads = resolve_threads(n_threads)
    rng = check_random_state(random_state)
    code = COSTS[cost]

    starts = []
    models = mix.models
    if init == "aligned" and len(set(mix.n_experts)) == 1 and mix.n_experts[0] == K:
        avg = _aligned_average_params(models, mix.lam)
        b0 = avg.expert_aug
        b0[:, 0] -= mix.shift
        starts.append((b0, avg.expert_var.copy()))
    while len(starts) < n_init:
        starts.append(_kmeans_start(mix, K, rng))

    t0 = time.perf_counter()
    cache = support_cache(mix, Xs, n_threads)
    best = None
    for beta, var in starts:
        out = _run_mm(mix, Xs, beta, var, cost=code, variance_update=variance_update,
                      max_iter=max_iter, tol=tol, n_threads=n_threads, cache=cache)
        if best is None or out[2][-1] < best[2][-1]:
            best = out
    beta, var, history, n_iter, converged, notes = best
    beta, var = _canonical_targets(beta, var)
    t_reduction = time.perf_counter() - t0
    if not converged and max_iter > 0:
        warnings.warn(f"the MM reduction did not converge in max_iter={max_iter} iterations; "
                      "increase max_iter or tol.", ConvergenceWarning, stacklevel=2)
    if notes:
        warnings.warn("; ".join(notes) + ".", DegenerateExpertWarning, stacklevel=2)

    t0 = time.perf_counter()
    final = mm_pass(mix, Xs, beta, var, code, n_threads, want_assign=True, cache=cache)
    w = np.ones(Xs.shape[0])
    alpha0 = np.zeros((K, Xs.shape[1] + 1))
    if gate_target == "plan":
        T = _target_plan(mix, Xs, final.assign, K, cache)
    elif gate_target == "posterior":
        T = _target_posterior(mix, Xs, ys, final.assign, beta, var, K, cache)
    else:
        T = _target_assigned(mix, Xs, final.mass, K, cache)
    gfit = fit_gates(Xs, T, w, alpha0, max_iter=gate_max_iter, tol=1e-12, n_threads=n_threads)
    alpha = gfit.alpha
    if gate_target == "kl":
        alpha, _ = _fit_gates_kl(mix, Xs, alpha, beta, var, max_iter=gate_max_iter, tol=1e-10,
                                 n_threads=n_threads, cache=cache)
    del cache
    t_gates = time.perf_counter() - t0
    timings = {"reduction": t_reduction, "gates": t_gates,
               "total": time.perf_counter() - t_start}
    b = beta.copy()
    b[:, 0] += mix.shift
    return AggregationResult(MoEParams.from_aug(alpha, b, var), final.objective, history,
                             n_iter, converged, final.assign, final.mass,
                             final.mass.sum(axis=0), final.lobj, mix.machine, f"ot-{cost}",
                             timings, tuple(notes))


# ----------------------------------------------------------------------------
# transport divergence and baselines
# ----------------------------------------------------------------------------
def transport_divergence(source, target: MoEParams, X, *, cost: str = "kl",
                         source_weights=None, n_threads: int | None = None) -> float:
    """R(source -> target) = sum_s sum_l w_l(x_s) min_k c_lk(x_s) over the rows of X.

    ``source`` is a MoEParams or a sequence of them (a weighted collection,
    weights ``source_weights``, default equal); ``target`` a MoEParams. Only
    the target's experts enter (the divergence does not involve its gates).
    """
    if isinstance(source, MoEParams):
        source = [source]
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {sorted(COSTS)}; got {cost!r}.")
    mix = large_mixture(source, source_weights)
    if target.n_features != mix.n_features:
        raise ValueError(f"target has {target.n_features} features, the source "
                         f"{mix.n_features}.")
    X = check_X(X, mix.n_features)
    beta = target.expert_aug
    beta[:, 0] -= mix.shift
    return mm_pass(mix, X, beta, target.expert_var, COSTS[cost],
                   resolve_threads(n_threads)).objective


def _baseline(mix: LargeMixture, X_support, params: MoEParams, method, cost, n_threads,
              t_start):
    Xs = _check_support(X_support, mix, params.n_experts)
    beta = params.expert_aug
    beta[:, 0] -= mix.shift
    final = mm_pass(mix, Xs, beta, params.expert_var, COSTS[cost], resolve_threads(n_threads),
                    want_assign=True)
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
    lambda_m. ``X_support`` only serves to report the transport divergence."""
    t0 = time.perf_counter()
    mix = large_mixture(local_models, sample_sizes)
    models = mix.models
    _equal_k(models)
    params = _aligned_average_params(models, mix.lam).canonical()
    return _baseline(mix, X_support, params, "aligned_average", cost, n_threads, t0)


def naive_average(local_models, *, sample_sizes=None, X_support, cost: str = "kl",
                  n_threads: int | None = None) -> AggregationResult:
    """Average the parameters of the local models in their given order (no
    alignment): wrong under label switching, kept as the authors' baseline."""
    t0 = time.perf_counter()
    mix = large_mixture(local_models, sample_sizes)
    models = mix.models
    _equal_k(models)
    avg = {name: sum(w * getattr(m, name) for w, m in zip(mix.lam, models))
           for name in ("gate_coef", "gate_intercept", "expert_coef", "expert_intercept",
                        "expert_var")}
    return _baseline(mix, X_support, MoEParams(**avg).canonical(), "naive_average", cost,
                     n_threads, t0)


def medoid(local_models, *, sample_sizes=None, X_support, cost: str = "kl",
           n_threads: int | None = None) -> AggregationResult:
    """The local model with the smallest weighted transport divergence from
    the other local models: argmin_i sum_j lambda_j R(theta_j -> theta_i)."""
    t0 = time.perf_counter()
    mix = large_mixture(local_models, sample_sizes)
    models = mix.models
    Xs = check_X(X_support, mix.n_features, name="X_support")
    scores = [sum(lam_j * transport_divergence(mj, mi, Xs, cost=cost, n_threads=n_threads)
                  for j, (lam_j, mj) in enumerate(zip(mix.lam, models)) if j != i)
              for i, mi in enumerate(models)]
    return _baseline(mix, X_support, models[int(np.argmin(scores))].canonical(), "medoid",
                     cost, n_threads, t0)

"""One-shot aggregation of local MoE models by optimal transport (docs/method.rst, sections 3-4).

:func:`aggregate` reduces the M*K local experts to K global experts by
minimising the composite transportation divergence with an MM algorithm
(``_reduction``), then refits the gates on the support (``_gate_refit``).
The baselines (``aligned_average``, ``naive_average``, ``medoid``) live in
:mod:`fastmoe.baselines` and return the same :class:`AggregationResult`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from ._frame import Frame
from ._gate_refit import (
    GATE_TARGETS,
    TARGET_BLOCK,
    _fit_gates_kl,
    _target_assigned,
    _target_plan,
    _target_posterior,
)
from ._gating import fit_gates
from ._params import MoEParams
from ._reduction import (
    COSTS,
    INITS,
    VARIANCE_UPDATES,
    LargeMixture,
    _as_params,
    _check_support,
    centred_start,
    checked_models,
    large_mixture,
    mm_pass,
    mm_rows,
    reduce_mixture,
    reduced_size,
    subset_cache,
    support_blocks,
    support_cache,
)
from ._runtime import blas_single_thread as single_threaded_blas
from ._runtime import resolve_threads
from ._validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_random_state,
    check_X,
    check_y,
)
from .exceptions import ConvergenceWarning, DegenerateExpertWarning, ExclusionLimitError
from .health import FAILED_COST_FACTOR, aggregation_health, health_report, local_fit_issues

__all__ = ["AggregationResult", "aggregate", "transport_divergence"]


#: by default the models left out as failed local fits may hold at most this
#: share of the rows (the sample-size weights); beyond it ``aggregate`` raises
#: instead of losing data unasked
MAX_EXCLUDED_FRACTION = 0.05


@dataclass(frozen=True)
class AggregationResult:
    """Result of :func:`aggregate` and of the baselines.

    Attributes
    ----------
    params : MoEParams
        The aggregated K-expert model (canonical order).
    objective : float
        Transport divergence R from the large mixture to ``params`` on the
        support (a sum over support points).
    history : ndarray of shape (n_iter + 1,)
        R at the start and after each MM iteration, over the support points
        the iterations visited (all of them unless support x local experts
        exceeds ``_reduction.MM_PAIRS``; see ``_reduction.mm_rows``).
    n_iter : int
        MM iterations of the best start.
    converged : bool
        Whether the best start's MM loop met its tolerance.
    assignment : ndarray of shape (S, L), int16
        The global expert k*(s, l) that receives local expert l at support
        point s (the transport plan in compact form:
        P_lks = w_l(x_s) 1{k = assignment[s, l]}).
    local_mass : ndarray of shape (L, K)
        sum_s P_lks, the mass each local expert sends to each global expert.
    expert_mass : ndarray of shape (K,)
        Total mass received by each global expert.
    local_objective : ndarray of shape (L,)
        Each local expert's share of R.
    machine : ndarray of shape (L,)
        Machine index of each local expert.
    method : str
        "ot-kl", "ot-w2", "aligned_average", "naive_average", "medoid" or
        "greedy_merge".
    timings : dict
        Seconds per stage ("reduction", "gates", "total").
    notes : tuple of str
        What was repaired or left out on the way (re-seeded experts, ...).
    excluded : tuple of int
        Indices of input models left out, as failed local fits
        (``exclude_failed``) or as inconsistent with the consensus
        (:func:`fastmoe.aggregate_messages` with ``robust=True``); ``machine``
        then numbers the models that were kept, in order.
    implausible : tuple of int
        Indices of input models whose claimed sample size is out of line with
        the others' or with their own covariate sample
        (:func:`fastmoe.aggregate_messages`); the reasons are in ``notes``.
    inconsistent : tuple of int
        Indices of input models left out by ``robust=True``; the reasons are
        in ``notes``.
    excluded_fraction : float
        Share of the rows (by the sample sizes) that the ``excluded`` models
        hold.
    local_issues : dict
        Machines whose local fits look degenerate, by kind
        (:func:`fastmoe.health.local_fit_issues`):
        {kind: {machine: description}}.
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
    inconsistent: tuple = ()
    excluded_fraction: float = 0.0
    local_issues: dict = field(default_factory=dict, repr=False)

    def report(self) -> str:
        """Aggregation health report (:func:`fastmoe.diagnostics.health_report`).

        Returns
        -------
        str
            The report, one line per finding.
        """
        return health_report(self)

    def health(self) -> dict:
        """Structured health of the aggregation.

        Returns
        -------
        dict
            As :func:`fastmoe.health.aggregation_health` describes it.
        """
        return aggregation_health(self)


@single_threaded_blas
def aggregate(local_models, n_experts: int | None = None, *, sample_sizes=None, X_support,
              cost: str = "kl", init: str = "aligned", n_init: int = 3, max_iter: int = 300,
              tol: float = 1e-10, gate_target: str = "assigned", y_support=None,
              variance_update: str = "exact", gate_max_iter: int = 100,
              exclude_failed: bool = False, max_excluded: float = MAX_EXCLUDED_FRACTION,
              random_state=None, n_threads: int | None = None) -> AggregationResult:
    """Reduce M local MoE models to one K-expert MoE by optimal transport.

    Parameters
    ----------
    local_models : sequence of MoEParams
        The machines' models (fitted estimators, LocalMessages and ``to_dict``
        records are accepted too); their numbers of experts may differ. Their
        experts are of one family: Poisson, Bernoulli and Gamma experts are
        reduced by the KL divergence between their conditional distributions
        (docs/method.rst, section 11; ``cost="kl"``, ``gate_target="assigned"``
        and ``variance_update="exact"`` only, and ``exclude_failed`` finds
        nothing to leave out: their local fits are not checked yet).
    n_experts : int, optional
        K of the result (default: the common K of the local models).
    sample_sizes : array-like of shape (M,), optional
        The machines' sizes n_m; weights lambda_m = n_m / n (default equal).
    X_support : array-like of shape (S, d)
        Support covariates.
    cost : {"kl", "w2"}, default="kl"
        The cost between Gaussian experts: closed-form KL or squared
        Wasserstein-2.
    init : {"aligned", "kmeans"} or MoEParams, default="aligned"
        "aligned" (the Hungarian-aligned average of the local models as the
        first start, k-means for the others; needs equal K_m), "kmeans" (k-means
        on the local expert coefficients for every start), or an MoEParams with
        ``n_experts`` experts on the same features, whose experts are the only
        start (a warm start: an earlier aggregate's ``params`` when a few
        messages changed).
    n_init : int, default=3
        Number of starts; the smallest objective is kept (unused when ``init``
        is an MoEParams).
    max_iter : int, default=300
        MM iterations at most per start.
    tol : float, default=1e-10
        MM stops when R changes by less than ``tol * R``.
    gate_target : {"assigned", "kl", "plan", "posterior"}, default="assigned"
        "assigned" (default), "kl", "plan" or "posterior" (docs/method.rst,
        section 5); "posterior" needs ``y_support``.
    y_support : array-like of shape (S,), optional
        Responses at the support points, for ``gate_target="posterior"`` only.
    variance_update : {"exact", "published"}, default="exact"
        "exact" (the minimiser of R) or "published" (the authors' code:
        plan-weighted mean of the local variances).
    gate_max_iter : int, default=100
        Newton steps at most in the gate refit.
    exclude_failed : bool, default=False
        Leave out the models that look like failed local fits and reduce the
        others again, on the same support. A model is taken for a failed fit
        when the aggregation health
        (:func:`fastmoe.diagnostics.aggregation_health`, ``failed``) finds its
        experts collapsed onto fewer global experts than it has and its
        transport cost per unit mass above ``FAILED_COST_FACTOR`` times the
        median machine's. ``excluded`` lists the indices left out (with two
        models nothing can be excluded); ``machine`` then numbers the models
        kept. Only a model with evidence of failure in itself is left out (see
        ``failed`` there); a model that is merely different is kept and reported
        as heterogeneous.
    max_excluded : float, default=MAX_EXCLUDED_FRACTION
        Share of the weight (the rows, by ``sample_sizes``) that
        ``exclude_failed`` may leave out, default ``MAX_EXCLUDED_FRACTION``
        (0.05). If the failed models hold more, an ExclusionLimitError (a
        ValueError) says which and how much: pass a larger ``max_excluded`` to
        leave them out anyway, or ``exclude_failed=False`` to keep them.
        ``excluded_fraction`` reports the share left out.
    random_state : None, int or numpy Generator, default=None
        Seeds the k-means starts; the result is reproducible from it.
    n_threads : int, optional
        Threads of the compiled pass (None: all cores).

    Returns
    -------
    AggregationResult
        The K-expert model (canonical order) with the transport divergence, its
        history, the plan in compact form, the timings and what was left out.
    """
    exclude_failed = check_bool(exclude_failed, "exclude_failed")
    family = _family_of(local_models)
    if family != "gaussian":
        return _aggregate_family(local_models, n_experts, sample_sizes, X_support, family,
                                 cost=cost, init=init, n_init=n_init, max_iter=max_iter,
                                 tol=tol, gate_target=gate_target, y_support=y_support,
                                 variance_update=variance_update,
                                 gate_max_iter=gate_max_iter,
                                 random_state=random_state, n_threads=n_threads)
    options = dict(cost=cost, init=init, n_init=n_init, max_iter=max_iter, tol=tol,
                   gate_target=gate_target, y_support=y_support,
                   variance_update=variance_update, gate_max_iter=gate_max_iter,
                   n_threads=n_threads)
    rng = check_random_state(random_state)
    max_excluded = check_float(max_excluded, "max_excluded", 0.0, inclusive=True)
    # the reduction runs in the frame of the support and of the local experts
    # (fastmoe._frame): its least squares and gate refit do not depend on the
    # units or offsets of the covariates and of the response
    mix = large_mixture(local_models, sample_sizes)
    frame = reduction_frame(mix, check_X(X_support, mix.n_features, name="X_support"))
    models = [frame.params_in(m) for m in mix.models]
    Xs = frame.X(X_support)
    if isinstance(init, MoEParams) and init.n_features == mix.n_features:
        options["init"] = frame.params_in(init)
    if y_support is not None:
        options["y_support"] = frame.y(check_y(y_support, Xs.shape[0], name="y_support"))
    result = _aggregate(models, n_experts, mix.lam, Xs, rng, **options)
    failed = result.health()["failed"] if exclude_failed else []
    if failed:
        share = float(np.sum(mix.lam[failed]))
        if share > max_excluded:
            raise ExclusionLimitError(failed, share, max_excluded)
        kept = [i for i in range(mix.n_machines) if i not in failed]
        result = _aggregate([models[i] for i in kept], n_experts, [mix.lam[i] for i in kept],
                            Xs, rng, **options)
        note = (f"model(s) {failed} were left out as failed local fits (experts collapsed "
                f"onto fewer global experts, transport cost per unit mass over "
                f"{FAILED_COST_FACTOR:g} times the median)")
        result = replace(result, excluded=tuple(failed), excluded_fraction=share,
                         notes=result.notes + (note,))
    return result_out(result, frame, cost)


def transport_divergence(source, target: MoEParams, X, *, cost: str = "kl",
                         source_weights=None, n_threads: int | None = None) -> float:
    """The transport divergence R(source -> target) over the rows of X.

    R = sum_s sum_l w_l(x_s) min_k c_lk(x_s): each source expert l, with its
    gate weight at x_s, is sent whole to the target expert k that is cheapest
    for it. Only the target's experts enter (the divergence does not involve
    its gates).

    Parameters
    ----------
    source : MoEParams or sequence of MoEParams
        One model, or a weighted collection of models (the large mixture).
    target : MoEParams
        The model the source is transported to.
    X : array-like of shape (S, d)
        The support points.
    cost : {"kl", "w2"}, default="kl"
        The cost between two Gaussian linear experts at a support point.
    source_weights : array-like of shape (M,), optional
        Weights of the source models (default equal).
    n_threads : int, optional
        Threads of the compiled pass (None: all cores).

    Returns
    -------
    float
        R, a sum over the support points (not a mean).
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


def divergence_matrix(models, X, *, cost: str = "kl", n_threads: int | None = None):
    """(M, M) D[i, j] = R(models[i] -> models[j]) over the rows of X (zero on
    the diagonal): the pairwise transport divergences of the medoid and of
    the robust filter (``fastmoe.server.inconsistent_machines``)."""
    M = len(models)
    D = np.zeros((M, M))
    for i in range(M):
        for j in range(M):
            if i != j:
                D[i, j] = transport_divergence(models[i], models[j], X, cost=cost,
                                               n_threads=n_threads)
    return D


def _family_of(local_models) -> str:
    """The experts' family of the local models (one for all: a ValueError of
    one line otherwise); "gaussian" where they cannot be read here (the
    Gaussian path checks them)."""
    try:
        models = [_as_params(m, i, gaussian=False) for i, m in enumerate(local_models)]
    except (TypeError, ValueError):
        return "gaussian"
    families = sorted({m.family for m in models})
    if len(families) > 1:
        raise ValueError(f"the local models mix experts of families {families}; a reduction "
                         "needs one family.")
    return families[0] if families else "gaussian"


def _aggregate_family(local_models, n_experts, sample_sizes, X_support, family, *, cost,
                      init, n_init, max_iter, tol, gate_target, y_support, variance_update,
                      gate_max_iter, random_state, n_threads) -> AggregationResult:
    """:func:`aggregate` for experts of the other families
    (``fastmoe._family_reduction``): the KL reduction and the gates refitted
    to the plan's assigned shares; the options that serve Gaussian experts
    alone are refused in one line."""
    from ._family_reduction import reduce_family

    t_start = time.perf_counter()
    for name, value, allowed in (("cost", cost, "kl"), ("gate_target", gate_target, "assigned"),
                                 ("variance_update", variance_update, "exact")):
        if value != allowed:
            raise ValueError(f"{name}={value!r} serves Gaussian experts; experts of family "
                             f"{family!r} are reduced with {name}={allowed!r}.")
    if y_support is not None:
        raise ValueError("y_support serves Gaussian experts (gate_target='posterior').")
    models, lam = checked_models(local_models, sample_sizes, gaussian=False)
    d = models[0].n_features
    if n_experts is None:
        if len({m.n_experts for m in models}) != 1:
            raise ValueError("the local models have different numbers of experts; pass "
                             "n_experts.")
        n_experts = models[0].n_experts
    K = check_int(n_experts, "n_experts")
    if K > sum(m.n_experts for m in models):
        raise ValueError(f"n_experts={K} is more than the local experts in all; cannot "
                         "reduce to more experts than there are.")
    Xs = check_X(X_support, d, name="X_support")
    if Xs.shape[0] < max((d + 1) * (K - 1), 1):
        raise ValueError(f"X_support has {Xs.shape[0]} points; the gate regression of {K} "
                         f"experts on {d} features needs at least (d+1)(K-1) = "
                         f"{(d + 1) * (K - 1)}. Send larger covariate samples.")
    n_init = check_int(n_init, "n_init")
    max_iter = check_int(max_iter, "max_iter", 0)
    tol = check_float(tol, "tol", 0.0, inclusive=True)
    frame = Frame.of(Xs)
    inside = [frame.params_in(m) for m in models]
    start = None
    if isinstance(init, MoEParams):
        if (init.n_experts, init.n_features, init.family) != (K, d, family):
            raise ValueError(f"init has {init.n_experts} {init.family} experts on "
                             f"{init.n_features} features; the aggregate needs {K} {family} "
                             f"experts on {d}.")
        local = frame.params_in(init)
        start = (local.expert_aug, local.expert_var)
    else:
        check_choice(init, "init", INITS)
    Xf = frame.X(Xs)
    t0 = time.perf_counter()
    beta, phi, history, n_iter, converged, notes, A, cmin, mix = reduce_family(
        inside, lam, Xf, K, init=start, n_init=n_init, max_iter=max_iter, tol=tol,
        rng=check_random_state(random_state), n_threads=n_threads)
    t_reduction = time.perf_counter() - t0
    _warn_mm(converged, max_iter, notes, stacklevel=4)
    t0 = time.perf_counter()
    # targets in canonical order (MoEParams.canonical, in the user's units), the plan with them
    user = frame.params_out(MoEParams.from_aug(np.zeros((K, d + 1)), beta, phi, family))
    order = np.lexsort((user.expert_var, user.expert_intercept))
    beta, phi = beta[order], phi[order]
    A = np.argsort(order)[A]
    # the plan's mass per point and target (S, K) and per local expert and
    # target (L, K), one target at a time (never the (S, L, K) plan)
    T, local_mass = np.empty((Xf.shape[0], K)), np.empty((mix.W.shape[1], K))
    for k in range(K):
        sent = np.where(A == k, mix.W, 0.0)
        T[:, k], local_mass[:, k] = sent.sum(axis=1), sent.sum(axis=0)
    T /= mix.W.sum(axis=1, keepdims=True)
    gates = fit_gates(Xf, T, np.ones(Xf.shape[0]), np.zeros((K, d + 1)),
                      max_iter=check_int(gate_max_iter, "gate_max_iter"), tol=1e-12,
                      n_threads=resolve_threads(n_threads))
    t_gates = time.perf_counter() - t0
    params = frame.params_out(MoEParams.from_aug(gates.alpha, beta, phi, family))
    lobj = np.sum(mix.W * cmin, axis=0)
    return AggregationResult(params.canonical(), float(history[-1]), history, n_iter, converged,
                             A.astype(np.int16), local_mass, local_mass.sum(axis=0), lobj,
                             mix.machine, "ot-kl",
                             {"reduction": t_reduction, "gates": t_gates,
                              "total": time.perf_counter() - t_start}, tuple(notes))


def _warn_mm(converged: bool, max_iter: int, notes, stacklevel: int) -> None:
    """The reduction's warnings: MM stopped at max_iter, targets re-seeded."""
    if not converged and max_iter > 0:
        warnings.warn(f"the MM reduction did not converge in max_iter={max_iter} iterations; "
                      "increase max_iter or tol.", ConvergenceWarning, stacklevel=stacklevel)
    if notes:
        warnings.warn("; ".join(notes) + ".", DegenerateExpertWarning, stacklevel=stacklevel)


def reduction_frame(mix: LargeMixture, Xs: np.ndarray) -> Frame:
    """The frame of a reduction: the support's covariate means and standard
    deviations, and the local experts' mean intercept (``mix.shift``) and
    root mean variance for the response."""
    frame = Frame.of(Xs)
    weight = np.repeat(mix.lam, mix.n_experts)
    y_scale = float(np.sqrt(weight @ mix.var / weight.sum()))
    y_scale = y_scale if np.isfinite(y_scale) and y_scale > 0 else 1.0
    return replace(frame, y_mean=mix.shift, y_scale=y_scale)


def result_out(result: AggregationResult, frame: Frame, cost: str) -> AggregationResult:
    """An aggregation in the frame, written in the user's units: the model
    mapped back, W2 costs times ``y_scale**2`` (KL costs do not change)."""
    c = frame.y_scale**2 if cost == "w2" else 1.0
    return replace(result, params=frame.params_out(result.params).canonical(),
                   objective=result.objective * c, history=result.history * c,
                   local_objective=result.local_objective * c)


def _check_init(init, mix, K):
    """The reduction's start: a name in INITS, or an MoEParams with K experts
    on the mixture's features as one (beta, var) start in its centred units."""
    if not isinstance(init, MoEParams):
        check_choice(init, "init", INITS)
        return init
    if init.n_experts != K or init.n_features != mix.n_features:
        raise ValueError(f"init has {init.n_experts} experts on {init.n_features} features; "
                         f"the aggregate needs {K} on {mix.n_features}.")
    return centred_start(mix, init)


def _aggregate(local_models, n_experts, sample_sizes, X_support, rng, *, cost, init, n_init,
               max_iter, tol, gate_target, y_support, variance_update, gate_max_iter,
               n_threads) -> AggregationResult:
    """One reduction and gate refit (:func:`aggregate` without exclusion)."""
    t_start = time.perf_counter()
    mix = large_mixture(local_models, sample_sizes)
    K = reduced_size(mix, n_experts, cost)
    init = _check_init(init, mix, K)
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
    code = COSTS[cost]

    t0 = time.perf_counter()
    cache = support_cache(mix, Xs, n_threads)
    rows = mm_rows(Xs.shape[0], mix.gate.shape[0])
    Xmm, cache_mm = (Xs, cache) if rows is None else (
        Xs[rows], subset_cache(mix, Xs, rows, cache, n_threads))
    beta, var, history, n_iter, converged, notes, _ = reduce_mixture(
        mix, Xmm, K, cost=code, init=init, n_init=n_init, max_iter=max_iter, tol=tol,
        variance_update=variance_update, rng=rng, n_threads=n_threads, cache=cache_mm)
    del cache_mm
    t_reduction = time.perf_counter() - t0
    _warn_mm(converged, max_iter, notes, stacklevel=3)

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
    weight = sum(W.sum(axis=0) for _, _, W, _ in support_blocks(mix, Xs, TARGET_BLOCK, cache))
    # the cache's total Gram matrix weighs each point by sum_l w_l(x_s) = 1: the
    # support's moments E[xt xt^T]
    issues = local_fit_issues(mix.gate, mix.var, mix.starts, mix.lam, weight / Xs.shape[0],
                              Xs.std(axis=0), mix.expert, cache.gram_total / Xs.shape[0])
    del cache
    t_gates = time.perf_counter() - t0
    timings = {"reduction": t_reduction, "gates": t_gates,
               "total": time.perf_counter() - t_start}
    b = beta.copy()
    b[:, 0] += mix.shift
    return AggregationResult(MoEParams.from_aug(alpha, b, var), final.objective, history,
                             n_iter, converged, final.assign, final.mass,
                             final.mass.sum(axis=0), final.lobj, mix.machine, f"ot-{cost}",
                             timings, tuple(notes), local_issues=issues)

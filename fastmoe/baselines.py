"""The comparators of the aggregate: the transport divergence between models,
and the baselines (aligned average, naive average, medoid), which return the
same AggregationResult as :func:`fastmoe.aggregate`.
"""

from __future__ import annotations

import time

import numpy as np

from ._params import MoEParams
from ._reduction import (
    COSTS,
    LargeMixture,
    _aligned_average_params,
    _check_support,
    large_mixture,
    mm_pass,
)
from ._runtime import resolve_threads
from ._validation import check_X
from .health import AggregationResult


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

"""Model selection at the server: the number of global experts by BIC of the
expected log-likelihood, or by the machines' held-out log-likelihoods.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._gate_refit import GH_NODES, _kl_targets
from ._reduction import large_mixture
from ._validation import check_choice, check_int, check_random_state
from .aggregation import AggregationResult, aggregate
from .server import aggregate_messages, pooled_support, read_messages

__all__ = ["ModelSelection", "select_n_experts"]


@dataclass(frozen=True)
class ModelSelection:
    """Result of :func:`select_n_experts`: the chosen K, the criterion per
    candidate (lower is better for "bic", higher for "heldout") and the
    aggregation of every candidate."""

    n_experts: int
    criterion: str
    scores: dict
    results: dict

    @property
    def best(self) -> AggregationResult:
        """The aggregate with the chosen number of experts.
        """
        return self.results[self.n_experts]


def expected_loglik(result: AggregationResult, messages, X_support) -> float:
    """Estimate of the total log-likelihood of the aggregated model on all n
    rows: n / S * sum_s sum_l w_l(x_s) E_{y ~ N(m_l(x_s), var_l)} log f(y | x_s),
    the expectation by Gauss-Hermite quadrature (the data never reach the
    server; the large mixture of local models stands in for them)."""
    mix = large_mixture([m.params for m in messages], [m.n for m in messages])
    nodes, weights = np.polynomial.hermite_e.hermegauss(GH_NODES)
    weights = weights / weights.sum()
    p = result.params
    beta = p.expert_aug
    beta[:, 0] -= mix.shift
    _, total = _kl_targets(mix, np.asarray(X_support, float), p.gate_aug, beta, p.expert_var,
                           nodes, weights)
    n = sum(m.n for m in messages)
    return total * n / len(X_support)


def select_n_experts(messages, candidates, *, criterion: str = "bic", random_state=None,
                     **aggregate_options) -> ModelSelection:
    """Choose the number of global experts at the server.

    Parameters
    ----------
    messages : list or dict
        With ``criterion="bic"``, one list of messages (LocalMessage, bytes or
        paths). With ``criterion="heldout"``, a dict {K: list of messages from
        local fits with K experts, made with ``fit_local(..., heldout=f)``}.
    candidates : sequence of int
        The numbers of global experts K to compare.
    criterion : {"bic", "heldout"}, default="bic"
        "bic": aggregate the messages to every K and pick the smallest
        BIC = -2 L_K + k_K log n, with L_K the :func:`expected_loglik` of the
        K-expert aggregate and k_K its number of free parameters; it needs
        nothing beyond the usual messages. "heldout": pick the K whose local
        models have the largest total held-out log-likelihood (the one extra
        number each message carries), and aggregate the messages of every K.
    random_state : None, int or numpy.random.Generator
        Seeds every aggregation.
    **aggregate_options
        Passed to :func:`fastmoe.aggregate_messages`.

    Returns
    -------
    ModelSelection
        The chosen K, every candidate's score and aggregate.
    """
    check_choice(criterion, "criterion", ("bic", "heldout"))
    rng = check_random_state(random_state)
    scores, results = {}, {}
    if criterion == "heldout":
        if not isinstance(messages, dict):
            raise ValueError('criterion="heldout" needs messages as a dict {K: messages}.')
        for k, msgs in messages.items():
            msgs = read_messages(msgs, k)
            if any(m.heldout_n == 0 for m in msgs):
                raise ValueError(f"messages for K={k} carry no held-out log-likelihood; "
                                 "make them with fit_local(..., heldout=0.1).")
            scores[k] = float(sum(m.heldout_loglik for m in msgs))
            results[k] = aggregate_messages(msgs, k, random_state=rng, **aggregate_options)
        best = max(scores, key=scores.get)
    else:
        msgs = read_messages(messages, mixed_experts=True)
        Xs = pooled_support(msgs, None, rng)
        n = sum(m.n for m in msgs)
        for k in candidates:
            k = check_int(k, "candidate n_experts")
            res = aggregate([m.params for m in msgs], k, sample_sizes=[m.n for m in msgs],
                            X_support=Xs, random_state=rng, **aggregate_options)
            results[k] = res
            scores[k] = (-2.0 * expected_loglik(res, msgs, Xs)
                         + res.params.n_parameters * np.log(n))
        best = min(scores, key=scores.get)
    return ModelSelection(int(best), criterion, scores, results)

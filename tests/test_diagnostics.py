"""Metrics against hand-computed values and scikit-learn; alignment; health report."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, rand_score

from fastmoe import MoEParams, aggregate, fit_moe
from fastmoe.datasets import make_moe_regression
from fastmoe.diagnostics import (
    aggregation_health,
    align_to,
    alignment,
    clustering_scores,
    correlation,
    parameter_rmse,
    relative_prediction_error,
    stacked_mse,
)


def test_prediction_metrics_by_hand():
    y = np.array([1.0, 2.0, 3.0])
    yp = np.array([1.0, 1.0, 4.0])
    assert relative_prediction_error(y, yp) == pytest.approx(2.0 / 14.0)
    assert correlation(y, yp) == pytest.approx(np.corrcoef(y, yp)[0, 1])
    with pytest.raises(ValueError, match="different lengths: 3 and 2"):
        relative_prediction_error(y, yp[:2])


def test_clustering_scores_against_sklearn():
    t = np.array([0, 0, 1, 1, 2, 2, 2])
    p = np.array([1, 1, 0, 0, 2, 2, 0])
    s = clustering_scores(t, p)
    assert s["rand"] == pytest.approx(rand_score(t, p))
    assert s["ari"] == pytest.approx(adjusted_rand_score(t, p))
    assert s["clustering_error"] == pytest.approx(1 / 7)
    with pytest.raises(ValueError, match="different lengths"):
        clustering_scores(t, p[:3])


def test_alignment_recovers_a_known_permutation(rng):
    X, y, truth, _ = make_moe_regression(100, 2, 4, random_state=1)
    perm = np.array([2, 0, 3, 1])
    shuffled = truth.permute(perm)
    np.testing.assert_array_equal(shuffled.permute(alignment(shuffled, truth)).expert_aug,
                                  truth.expert_aug)
    back = align_to(shuffled, truth)
    np.testing.assert_allclose(back.gate_aug, truth.gate_aug, atol=1e-12)
    for v in parameter_rmse(shuffled, truth).values():
        assert v < 1e-12
    assert stacked_mse(shuffled, truth) < 1e-24


def test_stacked_mse_by_hand():
    a = MoEParams(np.zeros((2, 1)), np.zeros(2), np.array([[1.0], [2.0]]), np.array([0.0, 5.0]),
                  np.ones(2))
    b = MoEParams(np.zeros((2, 1)), np.zeros(2), np.array([[1.0], [2.0]]), np.array([0.0, 5.0]),
                  np.array([1.0, 3.0]))
    # stacked: 4 expert numbers, 2 variances, 2 free gate numbers; one differs by 2
    assert stacked_mse(a, b) == pytest.approx(4.0 / 8.0)


def test_alignment_needs_equal_k():
    a = make_moe_regression(10, 1, 2, random_state=0)[2]
    b = make_moe_regression(10, 1, 3, random_state=0)[2]
    with pytest.raises(ValueError, match="transport_divergence instead"):
        alignment(a, b)


def test_health_report_flags_a_heterogeneous_shard():
    truth = make_moe_regression(10, 2, 2, random_state=0)[2]
    other = make_moe_regression(10, 2, 2, random_state=99)[2]  # a different population
    locals_, Xs = [], []
    for m in range(5):
        params = other if m == 3 else truth
        X, y, _, _ = make_moe_regression(3000, 2, 2, params=params, random_state=m)
        locals_.append(fit_moe(X, y, 2, random_state=m, n_init=2).params)
        Xs.append(X[:300])
    res = aggregate(locals_, X_support=np.vstack(Xs), random_state=0)
    health = aggregation_health(res)
    assert health["heterogeneous"] == [3]
    assert "machine(s) [3]" in res.report()
    healthy = aggregate([p for i, p in enumerate(locals_) if i != 3],
                        X_support=np.vstack(Xs), random_state=0)
    assert aggregation_health(healthy)["warnings"] == []
    assert "Healthy" in healthy.report()

"""The authors' remaining comparators: greedy pairwise merging (Runnalls) and
FedAvg, on known cases and against the slow implementations of naive.py."""

import naive
import numpy as np
import pytest

from fastmoe import MoEParams, engine, fedavg, fit_local, greedy_merge
from fastmoe.datasets import make_moe_regression


def _shards(n=6000, d=2, K=3, M=4, seed=0):
    X, y, truth, _ = make_moe_regression(n, d, K, random_state=seed)
    return [(X[i::M], y[i::M]) for i in range(M)], truth


def test_greedy_merge_matches_naive_merging():
    shards, _ = _shards(n=1600, M=3, K=2)
    msgs = [fit_local(X, y, 2, n_support=60, random_state=i) for i, (X, y) in enumerate(shards)]
    models = [m.params for m in msgs]
    sizes = np.array([m.n for m in msgs], dtype=float)
    Xs = np.vstack([m.support for m in msgs])
    result = greedy_merge(models, sample_sizes=sizes, X_support=Xs)
    beta, var, label = naive.greedy_merge(models, sizes / sizes.sum(), Xs, 2)
    order = np.argsort(beta[:, 0])
    np.testing.assert_allclose(result.params.expert_aug, beta[order], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.params.expert_var, var[order], rtol=1e-8)
    # the gates are refitted to each local expert's group
    owner = np.argmax(result.local_mass, axis=1)
    relabel = np.argsort(order)
    np.testing.assert_array_equal(owner, relabel[label])


def test_greedy_merge_of_identical_models_returns_the_model():
    [(X, y)], _ = _shards(n=3000, M=1)
    fit = fit_local(X, y, 3, n_support=800, random_state=0)
    result = greedy_merge([fit.params] * 4, X_support=fit.support)
    p, q = result.params, fit.params
    np.testing.assert_allclose(p.expert_aug, q.expert_aug, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(p.expert_var, q.expert_var, rtol=1e-9)
    # the average of four identical gate functions is that gate function
    np.testing.assert_allclose(p.gate_aug, q.gate_aug, rtol=1e-5, atol=1e-5)
    assert result.health()["warnings"] == []


def test_greedy_merge_input_checks():
    shards, _ = _shards(n=1200, M=2, K=2)
    msgs = [fit_local(X, y, 2, random_state=i) for i, (X, y) in enumerate(shards)]
    Xs = np.vstack([m.support for m in msgs])
    with pytest.raises(ValueError, match="more than the 4 local experts"):
        greedy_merge([m.params for m in msgs], 5, X_support=Xs)
    with pytest.raises(ValueError, match="cost must be one of"):
        greedy_merge([m.params for m in msgs], X_support=Xs, cost="l1")


def test_fedavg_on_one_shard_is_em():
    [(X, y)], truth = _shards(n=2000, M=1)
    result = fedavg([(X, y)], 3, rounds=3, local_iter=2, init=truth)
    p = truth
    for _ in range(6):
        p, _ = engine.em_step(X, y, p)
    np.testing.assert_allclose(result.params.expert_aug, p.canonical().expert_aug, rtol=1e-12)
    np.testing.assert_allclose(result.params.gate_aug, p.canonical().gate_aug, rtol=1e-12,
                               atol=1e-12)
    assert result.log_likelihood.shape == (4,)
    assert result.log_likelihood[-1] == pytest.approx(engine.e_step(X, y, p).log_likelihood)


def test_fedavg_of_identical_shards_is_the_single_shard_path():
    [(X, y)], _ = _shards(n=2000, M=1)
    one = fedavg([(X, y)], 3, rounds=2, local_iter=3, random_state=5)
    three = fedavg([(X, y)] * 3, 3, rounds=2, local_iter=3, random_state=5)
    # the average of three identical models is the model to rounding (1e-15),
    # and a gate step's halving decision can turn that into 1e-8 (measured
    # from this start: 3e-8 after the second round's three EM steps)
    for name in ("gate_aug", "expert_aug", "expert_var"):
        np.testing.assert_allclose(getattr(three.params, name), getattr(one.params, name),
                                   rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(three.log_likelihood, 3 * one.log_likelihood, rtol=1e-12)


def test_fedavg_reaches_the_centralised_fit_on_a_separated_design():
    shards, truth = _shards(n=16000, M=4)
    X = np.vstack([s[0] for s in shards])
    y = np.concatenate([s[1] for s in shards])
    result = fedavg(shards, 3, rounds=20, local_iter=2, random_state=0)
    central = engine.e_step(X, y, truth).log_likelihood
    assert result.log_likelihood[-1] > central - 5.0
    assert isinstance(result.params, MoEParams) and result.n_rounds == 20


def test_fedavg_input_checks():
    shards, truth = _shards(n=1200, M=2)
    with pytest.raises(ValueError, match="at least one shard"):
        fedavg([], 3)
    with pytest.raises(ValueError, match="different numbers of covariates"):
        fedavg([shards[0], (shards[1][0][:, :1], shards[1][1])], 3)
    with pytest.raises(ValueError, match="init must be a MoEParams with 2 experts"):
        fedavg(shards, 2, init=truth)
    with pytest.raises(ValueError, match="rounds must be an int"):
        fedavg(shards, 3, rounds=-1)

"""MoEParams: ordering, model functions, serialisation."""

import naive
import numpy as np
import pytest
from scipy.stats import norm

from fastmoe import MoEParams
from fastmoe.datasets import make_moe_regression


@pytest.fixture
def params(rng):
    K, d = 3, 2
    return MoEParams(rng.standard_normal((K, d)), rng.standard_normal(K),
                     rng.standard_normal((K, d)), np.array([1.0, -2.0, 0.5]),
                     rng.uniform(0.5, 2, K))


def test_last_gate_is_reference(params):
    np.testing.assert_array_equal(params.gate_coef[-1], 0.0)
    assert params.gate_intercept[-1] == 0.0


def test_arrays_are_read_only_copies(rng):
    gc = np.zeros((2, 1))
    p = MoEParams(gc, np.zeros(2), np.ones((2, 1)), np.zeros(2), np.ones(2))
    gc[0, 0] = 5.0
    assert p.gate_coef[0, 0] == 0.0
    with pytest.raises(ValueError):
        p.expert_var[0] = 3.0


def test_canonical_order_keeps_the_model(params, rng):
    can = params.canonical()
    assert np.all(np.diff(can.expert_intercept) >= 0)
    X = rng.standard_normal((50, 2))
    y = rng.standard_normal(50)
    np.testing.assert_allclose(can.score_samples(X, y), params.score_samples(X, y), rtol=1e-12)
    np.testing.assert_allclose(can.gate_proba(X), params.gate_proba(X)[:, [1, 2, 0]],
                               rtol=1e-12)


def test_model_functions_against_naive(params, rng):
    X = rng.standard_normal((30, 2))
    y = rng.standard_normal(30)
    lp = naive.gate_log_proba(X, params.gate_aug)
    np.testing.assert_allclose(params.gate_log_proba(X), lp, rtol=1e-12)
    dens = np.exp(lp) * norm.pdf(y[:, None], params.expert_mean(X), np.sqrt(params.expert_var))
    np.testing.assert_allclose(params.score_samples(X, y), np.log(dens.sum(axis=1)), rtol=1e-12)
    np.testing.assert_allclose(params.posterior(X, y), dens / dens.sum(axis=1, keepdims=True),
                               rtol=1e-12)
    m = params.expert_mean(X)
    pi = np.exp(lp)
    mean = (pi * m).sum(axis=1)
    np.testing.assert_allclose(params.predict_mean(X), mean, rtol=1e-12)
    np.testing.assert_allclose(params.predict_var(X),
                               (pi * (params.expert_var + m**2)).sum(axis=1) - mean**2,
                               rtol=1e-10)


def test_sample_matches_model():
    X, y, truth, labels = make_moe_regression(40000, 1, 2, random_state=0)
    freq = np.bincount(labels, minlength=2) / len(labels)
    np.testing.assert_allclose(freq, truth.gate_proba(X).mean(axis=0), atol=0.01)
    np.testing.assert_allclose(y.mean(), truth.predict_mean(X).mean(), atol=0.03)


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_save_load_round_trip_is_exact(params, tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    params.save(path)
    back = MoEParams.load(path)
    for name in ("gate_coef", "gate_intercept", "expert_coef", "expert_intercept",
                 "expert_var"):
        np.testing.assert_array_equal(getattr(back, name), getattr(params, name))
    assert MoEParams.from_dict(params.to_dict()).to_dict() == params.to_dict()


def test_load_errors(params, tmp_path):
    bad = params.to_dict() | {"version": 99}
    with pytest.raises(ValueError, match="version 99 is not supported"):
        MoEParams.from_dict(bad)
    with pytest.raises(ValueError, match="not a fastmoe.MoEParams record"):
        MoEParams.from_dict({"format": "other"})
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read model file"):
        MoEParams.load(tmp_path / "x.json")
    with pytest.raises(ValueError, match="unknown file type"):
        params.save(tmp_path / "x.txt")
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read model file"):
        MoEParams.load(tmp_path / "x.npz")


@pytest.mark.parametrize("field,value,match", [
    ("expert_var", [1.0, -1.0], "expert_var must be finite and > 0"),
    ("expert_coef", [[np.nan], [1.0]], "expert_coef must be finite"),
    ("gate_intercept", [0.0], r"gate_intercept must have shape \(2,\)"),
])
def test_invalid_params(field, value, match):
    kw = dict(gate_coef=np.zeros((2, 1)), gate_intercept=np.zeros(2),
              expert_coef=np.ones((2, 1)), expert_intercept=np.zeros(2), expert_var=np.ones(2))
    kw[field] = np.array(value)
    with pytest.raises(ValueError, match=match):
        MoEParams(**kw)

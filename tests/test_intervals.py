"""Predictive quantiles and intervals of the mixture f(y | x)."""

import naive
import numpy as np
import pytest

from fastmoe import GaussianMoERegressor, MoEParams
from fastmoe.cli import main
from fastmoe.datasets import make_moe_regression
from fastmoe.io import write_table


@pytest.fixture(scope="module")
def model():
    X, y, truth, _ = make_moe_regression(2000, 2, 3, random_state=0)
    return X, y, truth


@pytest.mark.parametrize("q", [0.001, 0.05, 0.5, 0.9, 0.999])
def test_quantiles_against_a_root_finder(model, q):
    X, _, truth = model
    got = truth.predict_quantile(X[:40], q)
    pi, m, sd = truth.gate_proba(X[:40]), truth.expert_mean(X[:40]), np.sqrt(truth.expert_var)
    want = [naive.mixture_quantile(pi[i], m[i], sd, q) for i in range(40)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_one_expert_gives_the_gaussian_quantiles():
    p = MoEParams([[0.0]], [0.0], [[2.0]], [1.0], [4.0])
    X = np.array([[0.0], [1.0]])
    np.testing.assert_allclose(p.predict_interval(X, 0.95),
                               [[1 - 2 * 1.959963984540054, 1 + 2 * 1.959963984540054],
                                [3 - 2 * 1.959963984540054, 3 + 2 * 1.959963984540054]],
                               rtol=1e-12)


def test_the_90_percent_interval_covers_90_percent_of_new_responses(model):
    _, _, truth = model
    X, y, _, _ = make_moe_regression(20000, 2, 3, params=truth, random_state=1)
    iv = truth.predict_interval(X, 0.9)
    covered = np.mean((y >= iv[:, 0]) & (y <= iv[:, 1]))
    assert abs(covered - 0.9) < 4 * np.sqrt(0.9 * 0.1 / len(y))  # 4 standard errors
    assert np.all(iv[:, 0] < truth.predict_quantile(X, 0.5)) and np.all(iv[:, 0] < iv[:, 1])


def test_estimators_predict_intervals_and_check_their_levels(model, tmp_path):
    X, y, truth = model
    est = GaussianMoERegressor(3, random_state=0).fit(X, y)
    np.testing.assert_allclose(est.predict_interval(X[:5], 0.8),
                               est.params_.predict_interval(X[:5], 0.8), rtol=1e-12)
    assert est.predict_quantile(X[:5], [0.1, 0.9]).shape == (5, 2)
    for bad in (0.0, 1.0, [0.2, 1.5], [[0.5]]):
        with pytest.raises(ValueError, match="levels in"):
            truth.predict_quantile(X[:5], bad)
    with pytest.raises(ValueError, match="level must be"):
        truth.predict_interval(X[:5], 1.0)
    # the other convention (a miscoverage alpha) is refused with the fix
    with pytest.raises(ValueError, match="pass level=0.9"):
        truth.predict_interval(X[:5], 0.1)
    with pytest.raises(ValueError, match="pass level=0.95"):
        est.predict_interval(X[:5], 0.05)
    data, model_file, out = tmp_path / "d.npz", tmp_path / "m.json", tmp_path / "p.csv"
    write_table(data, X, y)
    truth.save(model_file)
    assert main(["predict", "--model", str(model_file), "--data", str(data), "--output",
                 str(out), "--interval", "0.9"]) == 0
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    header = out.read_text().splitlines()[0]
    assert header == "y_pred,y_var,y_lower,y_upper" and table.shape == (len(y), 4)
    np.testing.assert_allclose(table[:, 2:], truth.predict_interval(X, 0.9), rtol=1e-12)

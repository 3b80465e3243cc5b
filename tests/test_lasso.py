"""The LASSO option (penalty="l1"): its coordinate descent against a slow
solver, a penalised objective that never decreases, exact zeros where the
truth has them, and its plumbing through the estimators and the CLI."""

import naive
import numpy as np
import pytest

from fastmoe import GaussianMoERegressor, MoEParams, fit_local, fit_moe
from fastmoe._lasso import l1_penalty, l1_strength, soft_threshold_quadratic
from fastmoe.datasets import make_moe_regression

SPARSE = MoEParams(np.array([[2.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]), np.zeros(2),
                   np.array([[1.5, 0, 0, -1, 0, 0], [-1, 0, 0, 0, 2, 0]]),
                   np.array([-2.0, 2.0]), np.array([0.5, 0.5]))


def test_coordinate_descent_matches_a_slow_solver(rng):
    for _ in range(5):
        B = rng.normal(size=(30, 6))
        A = B.T @ B
        b = rng.normal(size=6) * 5
        pen = np.abs(rng.normal(size=6)) * 3
        pen[0] = 0.0
        z = soft_threshold_quadratic(A, b, np.zeros(6), pen)
        ref = naive.l1_quadratic(A, b, pen)
        np.testing.assert_allclose(z, ref, atol=1e-5)


@pytest.mark.parametrize("n", [500, 5000])
def test_penalised_em_increases_its_objective_and_finds_the_zeros(n):
    X, y, _, _ = make_moe_regression(n, 6, 2, params=SPARSE, random_state=1)
    fit = fit_moe(X, y, 2, n_init=3, random_state=0, penalty="l1")
    h = fit.history
    assert np.all(np.diff(h) >= -1e-9 * abs(h[-1]))
    assert fit.converged and fit.penalty > 0
    assert fit.log_likelihood - fit.penalty == pytest.approx(h[-1], rel=1e-12)
    truth_zero = SPARSE.expert_coef == 0
    order = np.argsort(fit.params.expert_intercept)
    est = fit.params.expert_coef[order]
    assert np.mean(np.abs(est[truth_zero]) < 1e-12) >= 0.75  # most are exactly zero
    assert np.all(np.abs(est[~truth_zero]) > 0.5)
    assert np.count_nonzero(fit.params.gate_coef) <= 2


def test_the_penalty_fades_as_the_sample_grows():
    """Its shrinkage of the true slopes falls like sqrt(log p / n): 16 times
    the rows, about a quarter of the gap to the plain fit."""
    gaps = []
    for n in (2500, 40000):
        X, y, _, _ = make_moe_regression(n, 6, 2, params=SPARSE, random_state=2)
        plain = fit_moe(X, y, 2, n_init=2, random_state=0)
        lasso = fit_moe(X, y, 2, n_init=2, random_state=0, penalty="l1")
        gaps.append(np.abs(lasso.params.expert_coef - plain.params.expert_coef).max())
        loss = (lasso.log_likelihood - plain.log_likelihood) / n
    assert gaps[1] < 0.4 * gaps[0]
    assert loss > -0.01  # nats per row at 40000 rows


def test_strength_rule_and_units():
    assert l1_strength(10000, 5, 3) == pytest.approx(np.sqrt(2 * 10000 / 3 * np.log(25)))
    p = MoEParams(np.array([[1.0, -2.0], [0, 0]]), np.zeros(2), np.array([[3.0, 0], [0, 1]]),
                  np.zeros(2), np.array([4.0, 1.0]))
    # lam * (sum |b| s / sigma + sum |a| s)
    assert l1_penalty(p, 2.0, np.array([1.0, 0.5]), 2.0) == pytest.approx(
        2.0 * ((3 * 1 + 1 * 0.5) / 2 + (1 * 1 + 2 * 0.5)))


def test_zero_strength_is_the_plain_fit():
    X, y, _, _ = make_moe_regression(3000, 6, 2, params=SPARSE, random_state=3)
    plain = fit_moe(X, y, 2, random_state=0)
    zero = fit_moe(X, y, 2, random_state=0, penalty="l1", l1_strength=0.0)
    np.testing.assert_allclose(zero.params.expert_aug, plain.params.expert_aug, atol=1e-4)
    assert zero.penalty == 0.0


def test_plumbing_and_bad_input():
    X, y, _, _ = make_moe_regression(3000, 6, 2, params=SPARSE, random_state=4)
    est = GaussianMoERegressor(2, penalty="l1", random_state=0).fit(X, y)
    assert np.count_nonzero(est.expert_coef_ == 0) >= 4
    msg = fit_local(X, y, 2, penalty="l1", l1_strength=50.0, random_state=0)
    assert np.count_nonzero(msg.params.expert_coef == 0) >= 4
    with pytest.raises(ValueError, match='penalty must be None or "l1"'):
        fit_moe(X, y, 2, penalty="l2")
    with pytest.raises(ValueError, match="l1_strength must be"):
        fit_moe(X, y, 2, penalty="l1", l1_strength=-1.0)


def test_cli_fit_with_the_lasso(tmp_path, capsys):
    from fastmoe.cli import main

    X, y, _, _ = make_moe_regression(3000, 6, 2, params=SPARSE, random_state=5)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    assert main(["fit", "--data", str(tmp_path / "d.npz"), "--n-experts", "2", "--penalty",
                 "l1", "--output", str(tmp_path / "m.json")]) == 0
    capsys.readouterr()
    model = MoEParams.load(tmp_path / "m.json")
    assert np.count_nonzero(model.expert_coef == 0) >= 4

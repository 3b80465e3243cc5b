"""Standard errors against the finite-difference observed information
(tests/naive.py) and, for one expert, ordinary least squares."""

import warnings

import naive
import numpy as np
import pytest

from fastmoe import DistributedMoERegressor, GaussianMoERegressor
from fastmoe.datasets import make_moe_regression
from fastmoe.inference import standard_errors


@pytest.fixture(scope="module")
def fitted():
    X, y, _, _ = make_moe_regression(1500, 2, 2, random_state=3)
    X = X * [3.0, 0.5] + [100.0, -7.0]  # units and offsets of its own
    model = GaussianMoERegressor(2, random_state=0, tol=1e-12, max_iter=5000).fit(X, y)
    return X, y, model


def test_standard_errors_match_the_finite_difference_information(fitted):
    X, y, model = fitted
    assert model.converged_
    want = naive.standard_errors_by_differences(model.params_, X, y)
    se = model.standard_errors_
    np.testing.assert_allclose(naive.flat_errors(se), want, rtol=0.02)
    assert np.all(se.gate_coef[-1] == 0) and se.gate_intercept[-1] == 0


def test_one_expert_gives_the_least_squares_standard_errors():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2)) + [5.0, 1e4]
    y = 1.0 + X @ [2.0, -0.5] + rng.normal(size=400)
    fit = GaussianMoERegressor(1).fit(X, y)
    Z = np.column_stack([np.ones(400), X])
    resid = y - Z @ np.linalg.lstsq(Z, y, rcond=None)[0]
    sigma2 = resid @ resid / 400  # the maximum-likelihood variance
    want = np.sqrt(np.diag(sigma2 * np.linalg.inv(Z.T @ Z)))
    se = fit.standard_errors_
    np.testing.assert_allclose([se.expert_intercept[0], *se.expert_coef[0]], want, rtol=1e-6)
    # the variance's: sqrt(2 sigma^4 / n)
    assert se.expert_var[0] == pytest.approx(np.sqrt(2 * sigma2**2 / 400), rel=1e-6)


def test_summary_and_the_sandwich(fitted):
    X, y, model = fitted
    table = model.summary()
    assert table.count("expert ") == 2 and "gate 0 (against gate 1" in table
    assert "P>|z|" in table and "variance" in table
    robust = standard_errors(model.params_, X, y, robust=True)
    # a well-specified model: the sandwich agrees with the information to
    # sampling noise
    np.testing.assert_allclose(robust.expert_coef, model.standard_errors_.expert_coef,
                               rtol=0.3)
    assert model.summary(robust=True) != table


def test_distributed_standard_errors_equal_the_centralised_at_the_same_fit():
    X, y, _, _ = make_moe_regression(4000, 2, 2, random_state=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist = DistributedMoERegressor(2, 8, backend="serial", random_state=0).fit(X, y)
    assert dist.refine_converged_
    direct = standard_errors(dist.params_, X, y)
    np.testing.assert_allclose(dist.standard_errors_.expert_coef, direct.expert_coef,
                               rtol=1e-6)
    np.testing.assert_allclose(dist.standard_errors_.gate_coef, direct.gate_coef, rtol=1e-6,
                               atol=1e-12)
    once = DistributedMoERegressor(2, 8, backend="serial", random_state=0,
                                   refine_rounds=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        once.fit(X, y)
    assert once.standard_errors_ is None
    with pytest.raises(ValueError, match="not the maximum-likelihood fit"):
        once.summary()

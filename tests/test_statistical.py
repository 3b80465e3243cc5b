"""Slow statistical checks against known truth on the authors' synthetic design."""

import numpy as np
import pytest

from fastmoe import DistributedMoERegressor, fit_moe
from fastmoe.datasets import make_moe_regression
from fastmoe.diagnostics import stacked_mse


@pytest.fixture(scope="module")
def authors_design():
    X, y, truth, _ = make_moe_regression(100_000, 20, 5, design="authors", random_state=2)
    return X[:90_000], y[:90_000], X[90_000:], y[90_000:], truth


@pytest.fixture(scope="module")
def centralised(authors_design):
    X, y, _, _, _ = authors_design
    return fit_moe(X, y, 5, n_init=3, random_state=0, max_iter=500).params


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("M", [4, 16])
def test_aggregate_close_to_centralised(authors_design, centralised, M):
    X, y, Xte, yte, truth = authors_design
    dist = DistributedMoERegressor(5, M, backend="serial", n_init=3, max_iter=500,
                                   random_state=0).fit(X, y)
    err_c = np.sqrt(stacked_mse(centralised, truth))
    err_d = np.sqrt(stacked_mse(dist.params_, truth))
    assert err_d <= 1.5 * err_c, (err_d, err_c)
    ll_c = centralised.log_likelihood(Xte, yte)
    ll_d = dist.params_.log_likelihood(Xte, yte)
    assert abs(ll_d - ll_c) <= 0.01 * abs(ll_c)

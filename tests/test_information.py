"""The observed-data derivatives (fastmoe._information) against finite
differences of a slow log-likelihood (tests/naive.py)."""

import naive
import numpy as np
import pytest

from fastmoe import MoEParams
from fastmoe._information import derivatives, n_theta, origin_jacobian, params_of, theta_of
from fastmoe.datasets import make_moe_regression
from fastmoe.server import trust_step


@pytest.fixture(scope="module", params=[(1, 1), (2, 2), (3, 3)], ids=["K1d1", "K2d2", "K3d3"])
def case(request):
    K, d = request.param
    X, y, truth, _ = make_moe_regression(300, d, K, random_state=K)
    rng = np.random.default_rng(0)
    w = rng.uniform(0.5, 2.0, len(y))
    # away from the truth, so that the gradient is not near zero
    theta = theta_of(truth) + 0.1 * rng.standard_normal(n_theta(d, K))
    return X, y, w, theta, d, K


def test_theta_round_trip(case):
    *_, theta, d, K = case
    np.testing.assert_allclose(theta_of(params_of(theta, d, K)), theta, rtol=1e-12, atol=1e-12)


def test_derivatives_match_finite_differences(case):
    X, y, w, theta, d, K = case
    got = derivatives(X, y, w, params_of(theta, d, K), meat=True)
    assert got.log_likelihood == pytest.approx(
        naive.observed_log_likelihood(theta, X, y, w, d, K), rel=1e-12)
    grad, H = naive.finite_difference_derivatives(theta, X, y, w, d, K)
    np.testing.assert_allclose(got.gradient, grad, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(got.hessian, H, rtol=1e-4, atol=1e-3 * np.abs(H).max())
    # the meat is the sum of the rows' score outer products
    rows = [derivatives(X[i:i + 1], y[i:i + 1], w[i:i + 1], params_of(theta, d, K)).gradient
            for i in range(len(y))]
    np.testing.assert_allclose(got.meat, sum(np.outer(g, g) for g in rows), rtol=1e-9,
                               atol=1e-9)


def test_the_compiled_coefficients_match_numpys(case):
    """The kernel's per-row coefficients against the numpy reference's
    (tests/naive.py), here and where a gate or an expert is far off (tiny
    posteriors and gate probabilities: their logarithms are kept exact)."""
    X, y, w, theta, d, K = case
    for shift in (0.0, 30.0):
        far = theta.copy()
        far[:d + 1] += shift  # the first free gate's intercept
        p = params_of(far, d, K)
        got = derivatives(X, y, w, p)
        ll, grad, H = naive.derivatives_numpy(X, y, w, p)
        assert got.log_likelihood == pytest.approx(ll, rel=1e-12)
        np.testing.assert_allclose(got.gradient, grad, rtol=1e-9, atol=1e-9 * np.abs(grad).max())
        np.testing.assert_allclose(got.hessian, H, rtol=1e-9, atol=1e-9 * np.abs(H).max())


def test_derivatives_add_over_row_blocks(case):
    X, y, w, theta, d, K = case
    p = params_of(theta, d, K)
    whole = derivatives(X, y, w, p)
    parts = derivatives(X[:100], y[:100], w[:100], p) + derivatives(X[100:], y[100:], w[100:], p)
    np.testing.assert_allclose(parts.hessian, whole.hessian, rtol=1e-12, atol=1e-9)


def test_moving_the_origin_is_exact(case):
    X, y, w, theta, d, K = case
    p = params_of(theta, d, K)
    o = X.mean(axis=0) + 3.0
    moved = MoEParams(p.gate_coef, p.gate_intercept + p.gate_coef @ o, p.expert_coef,
                      p.expert_intercept + p.expert_coef @ o, p.expert_var)
    at_o = derivatives(X - o, y, w, moved)
    M = origin_jacobian(o - 0.0, K)  # theta(o) against theta(0)
    raw = derivatives(X, y, w, p)
    np.testing.assert_allclose(M.T @ at_o.gradient, raw.gradient, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(M.T @ at_o.hessian @ M, raw.hessian, rtol=1e-8,
                               atol=1e-8 * np.abs(raw.hessian).max())


def test_newton_converges_from_near_the_optimum():
    X, y, truth, _ = make_moe_regression(3000, 2, 2, random_state=4)
    w = np.ones(len(y))
    theta = theta_of(truth)
    for _ in range(8):
        der = derivatives(X, y, w, params_of(theta, 2, 2))
        step, gain, _ = trust_step(der.gradient, der.hessian, None)  # the Newton step
        assert step is not None
        theta = theta + step
    assert gain < 1e-10
    assert np.max(np.abs(der.gradient)) < 1e-6

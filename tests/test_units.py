"""Invariance to the units and offsets of the covariates and of the response.

Real covariates sit far from zero (years, timestamps, UTM coordinates,
prices) and on any scale: every path fits in a standardised frame
(fastmoe._frame) and reports in the user's units, so R^2 and the model
mapped back do not change under x -> a x + b, y -> c y + e.
"""

import warnings

import numpy as np
import pytest

from fastmoe import DistributedMoERegressor, GaussianMoERegressor, aggregate, engine, fit_moe
from fastmoe._frame import Frame
from fastmoe.datasets import make_moe_regression
from fastmoe.machine import round_statistics
from fastmoe.server import refine_step

AFFINE = [(1.0, 5e8), (1.0, 1e6), (1e-6, 0.0), (1e4, 0.0), (1e-3, -3e5)]


@pytest.fixture(scope="module")
def data():
    X, y, truth, _ = make_moe_regression(3000, 3, 3, random_state=0)
    return X, y, truth


def _mapped(params, a, b, c=1.0, e=0.0):
    """The model of (a x + b, c y + e) given that of (x, y)."""
    d = params.n_features
    frame = Frame(np.full(d, b), np.full(d, a), e, c)  # u = (x' - b) / a is x
    return frame.params_out(params)


@pytest.mark.parametrize("a, b", AFFINE)
def test_centralised_fit_is_invariant(data, a, b):
    X, y, _ = data
    base = GaussianMoERegressor(3, random_state=0).fit(X, y)
    moved = GaussianMoERegressor(3, random_state=0).fit(a * X + b, 10.0 * y - 4e7)
    assert moved.score(a * X + b, 10.0 * y - 4e7) == pytest.approx(base.score(X, y), abs=1e-6)
    want = _mapped(base.params_, a, b, 10.0, -4e7)
    # the canonical order sorts intercepts, which an offset changes: compare as sets
    np.testing.assert_allclose(np.sort(moved.params_.expert_var), np.sort(want.expert_var),
                               rtol=1e-5)
    np.testing.assert_allclose(moved.predict(a * X[:50] + b), 10.0 * base.predict(X[:50]) - 4e7,
                               rtol=1e-9, atol=1e-5 * np.std(10 * y))
    # the log-likelihood moves by the Jacobian of y only
    assert moved.log_likelihood_ == pytest.approx(base.log_likelihood_ - len(y) * np.log(10.0),
                                                  rel=1e-6)


def test_one_expert_matches_least_squares_at_a_large_offset(data):
    X, y, _ = data
    Xb = X + 1e6
    fit = fit_moe(Xb, y, 1)
    Z = np.column_stack([np.ones(len(y)), X])
    beta = np.linalg.lstsq(Z, y, rcond=None)[0]
    np.testing.assert_allclose(fit.params.expert_coef[0], beta[1:], rtol=1e-8)


@pytest.mark.parametrize("a, b", AFFINE[:3])
def test_distributed_fit_is_invariant(data, a, b):
    X, y, _ = data
    kw = dict(n_machines=8, random_state=0, backend="serial")
    base = DistributedMoERegressor(3, **kw).fit(X, y)
    moved = DistributedMoERegressor(3, **kw).fit(a * X + b, y + 1e7)
    assert moved.score(a * X + b, y + 1e7) == pytest.approx(base.score(X, y), abs=1e-5)


@pytest.mark.parametrize("cost", ["kl", "w2"])
def test_aggregate_is_invariant(data, cost):
    X, y, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = [fit_moe(X[m::4], y[m::4], 3, random_state=m).params for m in range(4)]
    # local models written at a large offset carry its rounding (eps * offset /
    # scale in their intercepts), so the inputs themselves limit the agreement
    a, b, c, e = 0.5, 1e5, 100.0, 1e7
    base = aggregate(local, X_support=X[::5], random_state=0, cost=cost)
    moved = aggregate([_mapped(p, a, b, c, e) for p in local], X_support=a * X[::5] + b,
                      random_state=0, cost=cost)
    want = _mapped(base.params, a, b, c, e)
    np.testing.assert_allclose(np.sort(moved.params.expert_var), np.sort(want.expert_var),
                               rtol=1e-6)
    np.testing.assert_allclose(moved.params.predict_mean(a * X[:50] + b),
                               want.predict_mean(a * X[:50] + b), rtol=1e-8, atol=1e-4 * c)
    scale = c**2 if cost == "w2" else 1.0
    assert moved.objective == pytest.approx(base.objective * scale, rel=1e-6)


def test_round_statistics_keep_their_precision_at_a_large_offset(data):
    X, y, truth = data
    start = fit_moe(X[::3], y[::3], 3, random_state=0).params
    want = engine.em_step(X, y, start).params
    b, e = 5e8, 1e9
    moved_start = _mapped(start, 1.0, b, 1.0, e)
    parts = [round_statistics(X[m::4] + b, y[m::4] + e, moved_start) for m in range(4)]
    total = parts[0] + parts[1] + parts[2] + parts[3]
    got = refine_step(moved_start, total)
    back = Frame(np.full(3, b), np.ones(3), e, 1.0).params_in(got)
    np.testing.assert_allclose(back.expert_coef, want.expert_coef, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(back.expert_var, want.expert_var, rtol=1e-6)
    np.testing.assert_allclose(back.gate_coef, want.gate_coef, rtol=1e-6, atol=1e-8)


def test_frame_maps_are_inverse(data):
    *_, truth = data
    frame = Frame(np.array([1e6, -3.0, 0.5]), np.array([1e-3, 2.0, 1e4]), 7.0, 0.01)
    back = frame.params_in(frame.params_out(truth))
    for name in ("gate_coef", "gate_intercept", "expert_coef", "expert_intercept",
                 "expert_var"):
        # the intercepts pass through 1e9-sized numbers: float64 keeps 1e-7 of them
        np.testing.assert_allclose(getattr(back, name), getattr(truth, name), rtol=1e-9,
                                   atol=1e-6)


def test_engine_em_step_and_gate_fit_are_invariant(data):
    X, y, truth = data
    b, e = 5e8, 1e9
    base = engine.em_step(X, y, truth).params
    moved = engine.em_step(X + b, y + e, _mapped(truth, 1.0, b, 1.0, e)).params
    back = Frame(np.full(3, b), np.ones(3), e, 1.0).params_in(moved)
    np.testing.assert_allclose(back.expert_coef, base.expert_coef, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(back.gate_coef, base.gate_coef, rtol=1e-6, atol=1e-8)
    resp = engine.e_step(X, y, truth).resp
    g0 = engine.fit_gates(X, resp)
    g1 = engine.fit_gates(X + 1e6, resp)
    np.testing.assert_allclose(g1.gate_coef, g0.gate_coef, rtol=1e-7, atol=1e-9)

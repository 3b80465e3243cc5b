"""Small shards: the penalised local fit, what the server reports about
degenerate local fits, exclusion in aggregate(), and the bounded support."""

import warnings

import numpy as np
import pytest

from fastmoe import MoEParams, aggregate, aggregate_messages, fit_local, fit_moe
from fastmoe._em import LOCAL_GATE_PENALTY
from fastmoe.datasets import make_moe_regression
from fastmoe.diagnostics import parameter_rmse
from fastmoe.health import DIVERGED_GATE_SLOPE
from fastmoe.server import pooled_support, support_size


@pytest.fixture(scope="module")
def separable():
    """Two experts on the two halves of the x axis, no overlap: the gate's
    maximum-likelihood slope is infinite."""
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(-3, 3, 300))[:, None]
    y = np.where(x[:, 0] < 0, -2.0 + x[:, 0], 3.0 - x[:, 0]) + 0.1 * rng.standard_normal(300)
    return x, y


def _steepest(params: MoEParams, X) -> float:
    return float(np.max(np.abs(params.gate_coef) * X.std(axis=0)))


def test_the_gate_penalty_keeps_separable_gates_finite(separable):
    X, y = separable
    plain = fit_moe(X, y, 2, random_state=0, max_iter=500)
    fit = fit_moe(X, y, 2, random_state=0, max_iter=500, gate_penalty=LOCAL_GATE_PENALTY)
    assert _steepest(plain.params, X) > 10 * DIVERGED_GATE_SLOPE  # the MLE runs off
    assert _steepest(fit.params, X) < DIVERGED_GATE_SLOPE
    # EM climbs the penalised log-likelihood, and reports both parts
    assert np.all(np.diff(fit.history) >= -1e-10 * abs(fit.history[-1]))
    assert fit.log_likelihood - fit.penalty == pytest.approx(fit.history[-1], rel=1e-12)
    slopes = fit.params.gate_coef - fit.params.gate_coef[-1]
    assert fit.penalty == pytest.approx(
        0.5 * LOCAL_GATE_PENALTY * np.sum((slopes * X.std(axis=0)) ** 2), rel=1e-9)
    # the experts are those of the two halves either way
    np.testing.assert_allclose(fit.params.expert_coef, plain.params.expert_coef, atol=1e-3)


def test_the_gate_penalty_is_in_standard_deviation_units(separable):
    X, y = separable
    a = fit_moe(X, y, 2, random_state=0, gate_penalty=1.0)
    b = fit_moe(X * 1000.0, y, 2, random_state=0, gate_penalty=1.0)
    np.testing.assert_allclose(b.params.gate_coef * 1000.0, a.params.gate_coef, rtol=1e-6)
    assert b.penalty == pytest.approx(a.penalty, rel=1e-6)


def test_the_local_default_leaves_a_large_shard_unchanged():
    X, y, truth, _ = make_moe_regression(20000, 3, 3, random_state=4)
    plain = fit_moe(X, y, 3, random_state=0, gate_penalty=0.0)
    pen = fit_moe(X, y, 3, random_state=0, gate_penalty=LOCAL_GATE_PENALTY)
    a, b = parameter_rmse(plain.params, truth), parameter_rmse(pen.params, truth)
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=0.02, abs=1e-4), key
    assert pen.log_likelihood == pytest.approx(plain.log_likelihood, rel=1e-5)


def test_fit_local_penalises_only_the_shards_whose_gates_diverge(separable):
    X, y = separable
    msg = fit_local(X, y, 2, random_state=0)
    assert msg.meta["gate_penalty"] == LOCAL_GATE_PENALTY
    assert _steepest(msg.params, X) < DIVERGED_GATE_SLOPE
    assert _steepest(fit_local(X, y, 2, random_state=0, gate_penalty=0.0,
                               max_iter=500).params, X) > DIVERGED_GATE_SLOPE
    Xg, yg, _, _ = make_moe_regression(3000, 2, 3, random_state=5)  # gates well determined
    healthy = fit_local(Xg, yg, 3, random_state=0)
    assert healthy.meta["gate_penalty"] == 0.0
    plain = fit_local(Xg, yg, 3, random_state=0, gate_penalty=0.0)
    np.testing.assert_array_equal(healthy.params.gate_coef, plain.params.gate_coef)


def _models(seed=0):
    X, y, truth, _ = make_moe_regression(9000, 2, 3, random_state=seed)
    fits = [fit_moe(X[i::3], y[i::3], 3, random_state=i).params for i in range(3)]
    return X, y, fits


def test_the_health_report_names_degenerate_local_fits():
    X, _, fits = _models()
    good = fits[0]
    diverged = MoEParams(good.gate_coef * 100.0, good.gate_intercept, good.expert_coef,
                         good.expert_intercept, good.expert_var)
    collapsed = MoEParams(good.gate_coef, good.gate_intercept, good.expert_coef,
                          good.expert_intercept, good.expert_var * [1.0, 1e-9, 1.0])
    starved = MoEParams(good.gate_coef, good.gate_intercept + [-40.0, 0.0, 0.0],
                        good.expert_coef, good.expert_intercept, good.expert_var)
    models = fits + [diverged, collapsed, starved]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = aggregate(models, X_support=X[::10], random_state=0)
    h = res.health()
    assert h["diverged_gates"] == [3]
    assert h["collapsed_experts"] == [4]
    assert h["starved_experts"] == [5]
    text = res.report()
    assert "machine 3: gate slope" in text and "machine 4: expert(s) [1]" in text
    assert "machine 5: expert(s) [0]" in text
    assert aggregate(fits, X_support=X[::10], random_state=0).health()["warnings"] == []


def test_aggregate_excludes_failed_fits_by_the_rule_of_aggregate_messages():
    X, y, fits = _models(1)
    # a failed local fit: two experts on one, the third far off
    bad = MoEParams(fits[0].gate_coef, fits[0].gate_intercept,
                    fits[0].expert_coef[[0, 0, 1]], fits[0].expert_intercept[[0, 0, 1]] + [0, 0, 9],
                    fits[0].expert_var[[0, 0, 1]] * 4)
    models = fits + [fits[1], bad]
    Xs = X[::10]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = aggregate(models, X_support=Xs, random_state=0, exclude_failed=True,
                         max_excluded=0.2)
        every = aggregate(models, X_support=Xs, random_state=0)
    assert every.health()["failed"] == [4]
    assert kept.excluded == (4,)
    assert "left out as failed local fits" in kept.notes[-1]
    direct = aggregate(models[:4], X_support=Xs, random_state=np.random.default_rng(0))
    assert kept.params.expert_coef.shape == direct.params.expert_coef.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msgs = [fit_local(X[i::5], y[i::5], 3, random_state=i) for i in range(5)]
        via = aggregate_messages(msgs, exclude_failed=True, random_state=0)
    assert via.excluded == ()  # healthy machines are never left out


def test_the_support_is_bounded_and_drawn_evenly():
    X, y, _ = _models(2)
    msgs = [fit_local(X[i::8], y[i::8], 3, n_support=1000, random_state=i) for i in range(8)]
    every = pooled_support(msgs)
    assert every.shape[0] == 8 * 1000
    bounded = pooled_support(msgs, random_state=0, max_support=2000)
    assert bounded.shape[0] == 2000
    for m in msgs:  # 250 rows from each machine, each one of its own
        rows = {tuple(r) for r in m.support}
        assert sum(tuple(r) in rows for r in bounded) == 250
    np.testing.assert_array_equal(bounded, pooled_support(msgs, random_state=0,
                                                          max_support=2000))
    assert support_size(20, 5) == 8400 and support_size(2, 3) == 5000
    res = aggregate_messages(msgs, random_state=0)
    assert res.assignment.shape[0] == 5000
    assert aggregate_messages(msgs, random_state=0, max_support=None).assignment.shape[0] == 8000


def test_both_estimators_and_the_cli_take_the_gate_penalty(separable, tmp_path):
    from fastmoe import DistributedMoERegressor, GaussianMoERegressor
    from fastmoe.cli import main
    from fastmoe.io import write_table

    X, y = separable
    est = GaussianMoERegressor(2, gate_penalty=1.0, random_state=0).fit(X, y)
    assert est.fit_.penalty > 0 and _steepest(est.params_, X) < DIVERGED_GATE_SLOPE
    assert DistributedMoERegressor(2).get_params()["gate_penalty"] == "auto"
    data = tmp_path / "d.npz"
    write_table(data, X, y)
    for value in ("0", "auto"):
        assert main(["fit-local", "--data", str(data), "--n-experts", "2", "--gate-penalty",
                     value, "--output", str(tmp_path / "m.npz")]) == 0
    with pytest.raises(SystemExit) as info:
        main(["fit", "--data", str(data), "--n-experts", "2", "--gate-penalty", "-1",
              "--output", str(tmp_path / "f.json")])
    assert info.value.code == 2


def test_the_mm_iterations_visit_a_bounded_number_of_pairs(monkeypatch):
    from fastmoe import _reduction

    assert _reduction.mm_rows(10000, 100) is None  # 1e6 pairs: all points
    rows = _reduction.mm_rows(10000, 1000)
    assert rows.shape == (4000,) and rows[0] == 0 and rows[-1] == 9999
    assert np.all(np.diff(rows) > 0)
    X, _, fits = _models(3)
    full = aggregate(fits, X_support=X[::3], random_state=0)
    monkeypatch.setattr(_reduction, "MM_PAIRS", 9 * 1500)
    monkeypatch.setattr(_reduction, "MM_MIN_POINTS", 1500)
    part = aggregate(fits, X_support=X[::3], random_state=0)
    assert part.assignment.shape == full.assignment.shape  # the final pass sees every point
    np.testing.assert_allclose(part.params.expert_coef, full.params.expert_coef, atol=0.05)
    assert part.objective == pytest.approx(full.objective, rel=0.01)

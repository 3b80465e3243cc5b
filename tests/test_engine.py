"""fastmoe.engine, the public array-level engine, against tests/naive.py."""

import subprocess
import sys

import naive
import numpy as np
import pytest

from fastmoe import MoEParams, aggregate, engine, fit_moe
from fastmoe.datasets import make_moe_regression


@pytest.fixture(scope="module")
def data():
    X, y, truth, _ = make_moe_regression(300, 2, 3, random_state=1)
    w = np.random.default_rng(2).uniform(0.2, 3.0, size=300)
    return X, y, truth, w


def _away(p: MoEParams, rng) -> MoEParams:
    """``p`` moved off the truth, so that an iteration has something to do."""
    return MoEParams(p.gate_coef + 0.3 * rng.standard_normal(p.gate_coef.shape),
                     p.gate_intercept + 0.2, p.expert_coef * 0.9, p.expert_intercept + 0.1,
                     p.expert_var * 1.5)


def test_e_step_against_naive(data):
    X, y, truth, w = data
    log_resp, row_ll, _ = naive.e_step(X, y, w, truth.gate_aug, truth.expert_aug,
                                       truth.expert_var)
    Xf = np.asfortranarray(X)  # any layout
    before = Xf.copy()
    e = engine.e_step(Xf, list(y), truth, sample_weight=w)
    np.testing.assert_allclose(e.row_log_likelihood, row_ll, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(e.resp, np.exp(log_resp), rtol=1e-9, atol=1e-12)
    assert e.log_likelihood == pytest.approx(float(w @ row_ll), rel=1e-12)
    np.testing.assert_array_equal(Xf, before)
    assert engine.e_step(X, y, truth, n_threads=1).log_likelihood == pytest.approx(
        float(row_ll.sum()), rel=1e-12)


def test_expert_statistics_are_the_weighted_gram_and_additive(data):
    X, y, truth, w = data
    log_resp, _, gram = naive.e_step(X, y, w, truth.gate_aug, truth.expert_aug,
                                     truth.expert_var)
    R = np.exp(log_resp)
    stats = engine.expert_statistics(X, y, R, sample_weight=w)
    np.testing.assert_allclose(stats.gram, gram, rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(stats.weight, (w[:, None] * R).sum(axis=0), rtol=1e-12)
    parts = [engine.expert_statistics(X[s], y[s], R[s], sample_weight=w[s])
             for s in (slice(0, 70), slice(70, 211), slice(211, None))]
    np.testing.assert_allclose((parts[0] + parts[1] + parts[2]).gram, stats.gram, rtol=1e-12,
                               atol=1e-10)
    with pytest.raises(ValueError, match="cannot add"):
        stats + engine.expert_statistics(X, y, R[:, :2])


def test_update_experts_is_weighted_least_squares(data):
    X, y, truth, w = data
    R = np.random.default_rng(3).dirichlet(np.ones(3), size=len(y))
    coef, intercept, var = engine.update_experts(engine.expert_statistics(X, y, R,
                                                                          sample_weight=w),
                                                 reg_var=0.0)
    for k in range(3):
        c, b, v = naive.weighted_least_squares(X, y, w * R[:, k])
        np.testing.assert_allclose(coef[k], c, rtol=1e-9)
        assert intercept[k] == pytest.approx(b, rel=1e-9, abs=1e-12)
        assert var[k] == pytest.approx(v, rel=1e-9)


def test_update_experts_floor_and_empty_experts(data):
    X, y, truth, _ = data
    exact = 1.0 + X @ np.array([2.0, -1.0])
    _, _, var = engine.update_experts(engine.expert_statistics(X, exact, np.ones((300, 1))),
                                      reg_var=1e-6)
    assert var[0] == pytest.approx(1e-6 * np.var(exact), rel=1e-6)
    R = np.column_stack([np.ones(300), np.zeros(300)])
    stats = engine.expert_statistics(X, y, R)
    with pytest.raises(ValueError, match="expert 1 holds no weight; pass previous="):
        engine.update_experts(stats)
    prev = (np.ones((2, 2)), np.array([5.0, 6.0]), np.array([0.5, 0.7]))
    coef, intercept, var = engine.update_experts(stats, previous=prev)
    assert intercept[1] == 6.0 and var[1] == 0.7 and np.all(coef[1] == 1.0)


def test_gate_statistics_against_naive_and_additive(data):
    X, y, truth, w = data
    R = np.random.default_rng(4).uniform(0.0, 2.0, size=(len(y), 3))  # rows need not sum to 1
    obj, grad, info = naive.gate_newton(X, w, R, truth.gate_aug)
    s = engine.gate_statistics(X, R, truth.gate_coef, truth.gate_intercept, sample_weight=w)
    assert s.objective == pytest.approx(obj, rel=1e-11)
    np.testing.assert_allclose(s.gradient, grad.ravel(), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(s.hessian, -info, rtol=1e-10, atol=1e-9)
    first = engine.gate_statistics(X, R, *truth.rereference(0), sample_weight=w)
    np.testing.assert_allclose(first.gradient, s.gradient, rtol=1e-12, atol=1e-12)
    halves = [engine.gate_statistics(X[h], R[h], truth.gate_coef, truth.gate_intercept,
                                     sample_weight=w[h]) for h in (slice(0, 123), slice(123, None))]
    total = halves[0] + halves[1]
    assert total.objective == pytest.approx(s.objective, rel=1e-12)
    np.testing.assert_allclose(total.hessian, s.hessian, rtol=1e-11, atol=1e-10)


@pytest.mark.parametrize("l2", [0.0, 5.0])
def test_fit_gates_reaches_the_optimum_of_bfgs(data, l2):
    X, y, truth, w = data
    R = np.random.default_rng(5).uniform(0.0, 2.0, size=(len(y), 3))
    fit = engine.fit_gates(X, R, sample_weight=w, l2=l2)
    want = naive.fit_gates_bfgs(X, w, R, l2)
    assert fit.converged
    alpha = np.column_stack([fit.gate_intercept, fit.gate_coef])
    np.testing.assert_allclose(alpha, want, atol=1e-5)
    penalised = naive.gate_objective(X, w, R, want) - 0.5 * l2 * np.sum(want[:, 1:] ** 2)
    assert fit.objective == pytest.approx(penalised, rel=1e-10)
    assert fit.objective >= penalised - 1e-9 * abs(penalised)


def test_fit_gates_reference_and_warm_start(data):
    X, _, truth, _ = data
    R = truth.gate_proba(X)
    last = engine.fit_gates(X, R)
    first = engine.fit_gates(X, R, reference=0, init=truth.rereference(0))
    assert np.all(first.gate_intercept[0] == 0.0) and np.all(first.gate_coef[0] == 0.0)
    np.testing.assert_allclose(first.gate_coef - first.gate_coef[-1], last.gate_coef,
                               atol=1e-7)
    # the targets are the truth's own gate probabilities: the fit is the truth
    np.testing.assert_allclose(last.gate_coef, truth.gate_coef, atol=1e-6)
    assert first.n_iter <= last.n_iter


def test_em_step_is_one_iteration_of_the_naive_em(data):
    X, y, truth, w = data
    start = _away(truth, np.random.default_rng(6))
    new, ll = engine.em_step(X, y, start, sample_weight=w)
    log_resp, row_ll, _ = naive.e_step(X, y, w, start.gate_aug, start.expert_aug,
                                       start.expert_var)
    assert ll == pytest.approx(float(w @ row_ll), rel=1e-12)
    R = np.exp(log_resp)
    for k in range(3):
        c, b, v = naive.weighted_least_squares(X, y, w * R[:, k])
        np.testing.assert_allclose(new.expert_coef[k], c, rtol=1e-8)
        assert new.expert_var[k] == pytest.approx(v, rel=1e-8)
    _, grad, info = naive.gate_newton(X, w, R, start.gate_aug)
    step = np.linalg.solve(info, grad.ravel()).reshape(2, 3)
    np.testing.assert_allclose(new.gate_aug[:2], start.gate_aug[:2] + step, rtol=1e-7,
                               atol=1e-9)
    lls = [ll]
    p = new
    for _ in range(5):
        p, value = engine.em_step(X, y, p, sample_weight=w, gate_steps=2)
        lls.append(value)
    assert np.all(np.diff(lls) >= -1e-9 * abs(lls[-1]))


@pytest.mark.parametrize("cost", ["kl", "w2"])
def test_expert_costs_against_naive(data, cost):
    X, _, truth, _ = data
    other = _away(truth, np.random.default_rng(7))
    np.testing.assert_allclose(engine.expert_costs(other, truth, X[:25], cost=cost),
                               naive.expert_costs(other, truth, X[:25], cost), rtol=1e-12,
                               atol=1e-12)
    with pytest.raises(ValueError, match="would take more than"):
        engine.expert_costs(other, truth, np.zeros((2**26, 2)))


@pytest.fixture(scope="module")
def local():
    X, y, truth, _ = make_moe_regression(6000, 2, 3, random_state=8)
    fits = [fit_moe(X[i::3], y[i::3], 3, random_state=i).params for i in range(3)]
    return fits, [1800, 2000, 2200], X[::20]


@pytest.mark.parametrize("cost", ["kl", "w2"])
def test_mm_step_against_naive(local, cost):
    fits, sizes, Xs = local
    loc = engine.LocalExperts.from_models(fits, sizes)
    lam = np.asarray(sizes) / sum(sizes)
    start = _away(fits[0], np.random.default_rng(9))
    experts = (start.expert_coef, start.expert_intercept, start.expert_var)
    step = engine.mm_step(loc, Xs, experts, cost=cost)
    obj, P, gram, lin, scal = naive.mm_pass(fits, lam, Xs, start.expert_aug, start.expert_var,
                                            cost)
    assert step.objective == pytest.approx(obj, rel=1e-10)
    np.testing.assert_allclose(step.local_mass, P.sum(axis=0), rtol=1e-10, atol=1e-14)
    beta = np.linalg.solve(gram, lin[..., None])[..., 0]
    np.testing.assert_allclose(step.experts.intercept, beta[:, 0], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(step.experts.coef, beta[:, 1:], rtol=1e-7, atol=1e-9)
    D = scal[:, 0]
    if cost == "kl":
        var = (scal[:, 2] + scal[:, 1] - np.einsum("kj,kj->k", beta, lin)) / D
    else:
        var = (scal[:, 3] / D) ** 2
    np.testing.assert_allclose(step.experts.var, var, rtol=1e-7)
    again = engine.mm_step(loc, Xs, step.experts, cost=cost)
    assert again.objective <= step.objective * (1 + 1e-12)


def test_reduce_is_the_reduction_behind_aggregate(local):
    fits, sizes, Xs = local
    loc = engine.LocalExperts.from_models(fits, sizes)
    red = engine.reduce(loc, 3, Xs, random_state=0)
    agg = aggregate(fits, sample_sizes=sizes, X_support=Xs, random_state=0)
    np.testing.assert_allclose(red.experts.coef, agg.params.expert_coef, rtol=1e-12)
    np.testing.assert_allclose(red.experts.var, agg.params.expert_var, rtol=1e-12)
    assert red.objective == pytest.approx(agg.objective, rel=1e-12)
    assert np.all(np.diff(red.history) <= 1e-12 * red.history[0])
    # a reduction of M copies of one model is that model
    same = engine.reduce(engine.LocalExperts.from_models([fits[0]] * 3), 3, Xs,
                         init=(fits[0].expert_coef, fits[0].expert_intercept,
                               fits[0].expert_var))
    np.testing.assert_allclose(same.experts.coef, fits[0].expert_coef, rtol=1e-9, atol=1e-12)
    assert same.objective == pytest.approx(0.0, abs=1e-9)


def test_local_experts_from_arrays_with_mixed_numbers_of_experts(local):
    fits, sizes, Xs = local
    two = MoEParams(fits[1].gate_coef[:2], fits[1].gate_intercept[:2], fits[1].expert_coef[:2],
                    fits[1].expert_intercept[:2], fits[1].expert_var[:2])
    loc = engine.LocalExperts.from_models([fits[0], two], [1.0, 3.0])
    assert loc.n_experts == (3, 2) and loc.weights.tolist() == [0.25, 0.75]
    direct = engine.LocalExperts(loc.gate_coef, loc.gate_intercept, loc.expert_coef,
                                 loc.expert_intercept, loc.expert_var, (3, 2), [1, 3])
    assert engine.reduce(direct, 2, Xs, random_state=0).objective == pytest.approx(
        engine.reduce(loc, 2, Xs, random_state=0).objective, rel=1e-12)
    with pytest.raises(ValueError, match="n_experts must be"):
        engine.LocalExperts(loc.gate_coef, loc.gate_intercept, loc.expert_coef,
                            loc.expert_intercept, loc.expert_var, 5, [1])
    with pytest.raises(ValueError, match=r"expert_coef must have shape \(4, d\)"):
        engine.LocalExperts(loc.gate_coef, loc.gate_intercept, loc.expert_coef,
                            loc.expert_intercept, loc.expert_var, (2, 2), [1, 1])


@pytest.mark.parametrize("call, match", [
    (lambda X, y, p: engine.e_step(X, y, p.to_dict()), "params must be a fastmoe.MoEParams"),
    (lambda X, y, p: engine.e_step(X[:, :1], y, p), "X has 1 features"),
    (lambda X, y, p: engine.expert_statistics(X, y, -np.ones((len(y), 2))), "resp must be >= 0"),
    (lambda X, y, p: engine.expert_statistics(X, y, np.ones(len(y))), "resp must have shape"),
    (lambda X, y, p: engine.fit_gates(X, np.full((len(y), 2), np.nan)), "targets contains NaN"),
    (lambda X, y, p: engine.fit_gates(X, np.ones((len(y), 2)), reference=2), "reference must"),
    (lambda X, y, p: engine.fit_gates(X, np.ones((len(y), 3)), init=(p.gate_coef,)),
     "init must be a"),
    (lambda X, y, p: engine.gate_statistics(X, np.ones((len(y), 3)), p.gate_coef[:2],
                                            p.gate_intercept), "gate_coef must have shape"),
    (lambda X, y, p: engine.expert_costs(p, p, X, cost="l2"), "cost must be one of"),
    (lambda X, y, p: engine.mm_step(p, X, p), "local must be LocalExperts"),
])
def test_engine_errors_are_one_line(data, call, match):
    X, y, truth, _ = data
    with pytest.raises((ValueError, TypeError), match=match) as info:
        call(X, y, truth)
    assert "\n" not in str(info.value)


def test_rereference_round_trips(data):
    X, _, truth, _ = data
    coef, intercept = truth.rereference(0)
    assert np.all(coef[0] == 0) and intercept[0] == 0
    again = MoEParams(coef, intercept, truth.expert_coef, truth.expert_intercept,
                      truth.expert_var)
    np.testing.assert_allclose(again.gate_coef, truth.gate_coef, atol=1e-15)
    np.testing.assert_allclose(again.gate_proba(X), truth.gate_proba(X), rtol=1e-13)
    with pytest.raises(ValueError, match="reference must be an expert index"):
        truth.rereference(3)


@pytest.mark.integration
def test_engine_import_loads_no_sklearn_dask_matplotlib_or_numba(tmp_path):
    code = ("import sys, fastmoe.engine; print(sorted(m for m in ('sklearn', 'dask', "
            "'matplotlib', 'numba', 'pandas') if m in sys.modules))")
    # from another folder: the installed package, not the source tree in the checkout
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout.strip()
    assert out == "[]"


def test_the_examples_in_the_engine_docstrings_run():
    import doctest

    assert doctest.testmod(engine, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def test_engine_docstrings_pass_numpydoc_validation():
    """Every parameter and return value of the engine's functions is
    described; summaries fit one line (numpydoc's checks, less the optional
    sections See Also, Examples on result classes and Extended Summary)."""
    import inspect

    validate = pytest.importorskip("numpydoc.validate").validate
    found = []
    full = {"PR01", "PR02", "PR07", "RT01", "RT03", "GL02", "SS06"}
    names = [f"fastmoe.engine.{name}" for name in engine.__all__]
    names += [f"fastmoe.MoEParams.{m}" for m in (  # the model's own functions
        "gate_log_proba", "gate_proba", "expert_mean", "predict_mean", "predict_var",
        "predict_quantile", "predict_interval", "e_step", "score_samples", "log_likelihood",
        "posterior", "sample", "permute")]
    for name in names:
        module, _, attr = name.rpartition(".")
        obj = getattr(engine if module == "fastmoe.engine" else MoEParams, attr)
        codes = full if inspect.isfunction(obj) else {"GL02", "SS06"}
        found += [(name, code, msg) for code, msg in validate(name)["errors"] if code in codes]
    assert found == []


def test_step_statistics_are_the_three_passes_in_one(data):
    X, y, truth, w = data
    centred = engine.step_statistics(X, y, truth, sample_weight=w)
    np.testing.assert_allclose(centred.origin[:-1], np.average(X, axis=0, weights=w))
    s = centred.moved(np.zeros(X.shape[1] + 1))  # exact algebra: the raw sums
    log_resp, row_ll, gram = naive.e_step(X, y, w, truth.gate_aug, truth.expert_aug,
                                          truth.expert_var)
    obj, grad, info = naive.gate_newton(X, w, np.exp(log_resp), truth.gate_aug)
    assert s.log_likelihood == pytest.approx(float(w @ row_ll), rel=1e-12)
    np.testing.assert_allclose(s.experts.gram, gram, rtol=1e-11, atol=1e-9)
    assert s.gates.objective == pytest.approx(obj, rel=1e-11)
    np.testing.assert_allclose(s.gates.gradient, grad.ravel(), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(s.gates.hessian, -info, rtol=1e-10, atol=1e-9)
    halves = (engine.step_statistics(X[:100], y[:100], truth, sample_weight=w[:100])
              + engine.step_statistics(X[100:], y[100:], truth, sample_weight=w[100:]))
    assert halves.n == len(y)
    halves = halves.moved(np.zeros(X.shape[1] + 1))
    np.testing.assert_allclose(halves.experts.gram, s.experts.gram, rtol=1e-12, atol=1e-10)

"""Refinement rounds: exact distributed computation from the one-shot aggregate
(fastmoe.server) to the maximum-likelihood fit of all the rows."""

import io
import json
import warnings
from dataclasses import replace

import numpy as np
import pytest

from fastmoe import DistributedMoERegressor, MoEParams, distributed, engine, fit_moe
from fastmoe.datasets import make_moe_regression
from fastmoe.distributed import AUTO_REFINE_MAX_ROUNDS, AUTO_REFINE_MM_TOL
from fastmoe.machine import round_statistics
from fastmoe.message import load_round, round_from_bytes, round_to_bytes, save_round
from fastmoe.server import aggregate_messages, refine_step


@pytest.fixture(scope="module")
def data():
    X, y, truth, _ = make_moe_regression(8000, 2, 3, random_state=0)
    return X, y, truth


def test_a_round_on_shards_is_one_em_iteration_on_all_rows(data):
    X, y, _ = data
    start = fit_moe(X[::4], y[::4], 3, random_state=0).params
    parts = [round_statistics(X[i::4], y[i::4], start) for i in range(4)]
    total = parts[0] + parts[1] + parts[2] + parts[3]
    assert total.n == len(y)
    new = refine_step(start, total)
    want, ll = engine.em_step(X, y, start)
    assert total.log_likelihood == pytest.approx(ll, rel=1e-12)
    np.testing.assert_allclose(new.expert_coef, want.expert_coef, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(new.expert_var, want.expert_var, rtol=1e-9)
    np.testing.assert_allclose(new.gate_coef, want.gate_coef, rtol=1e-9, atol=1e-12)
    # + the origin (d+1), the gradient and Hessian in all P = 18 parameters
    assert total.n_bytes == 8 * (3 * 4 * 4 + 2 * 3 + 36 + 3 + 3 + 18 + 18 * 18)


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["serial", "local"])
def test_rounds_climb_to_the_centralised_fit(data, backend):
    X, y, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # small shards (200 rows): the one-shot aggregate is well below the optimum
        once = DistributedMoERegressor(3, 40, backend=backend, random_state=0,
                                       refine_rounds=0).fit(X, y)
        refined = DistributedMoERegressor(3, 40, backend=backend, random_state=0).fit(X, y)
    central = fit_moe(X, y, 3, n_init=3, random_state=0)
    lls = [h["log_likelihood"] for h in refined.refine_history_]
    assert refined.refine_converged_ and 2 <= len(lls) <= 15
    assert np.all(np.diff(lls) >= 0)  # every round keeps a model at least as good
    # the first round starts from the best of the aggregate and the machines' models
    starts = [refined.aggregation_.params, *refined.local_models_]
    start_lls = [p.log_likelihood(X, y) for p in starts]
    assert lls[0] == pytest.approx(max(start_lls), rel=1e-12)
    final = refined.params_.log_likelihood(X, y)
    assert final == pytest.approx(lls[-1], rel=1e-12)
    assert final >= central.log_likelihood - 1e-7 * abs(central.log_likelihood)
    assert final > once.params_.log_likelihood(X, y)
    # the rounds are counted in the learning time (accounting, not a timing)
    rounds = sum(h["machine_seconds"] + h["server_seconds"] for h in refined.refine_history_)
    assert refined.learning_time_ == pytest.approx(
        refined.local_fit_times_.max() + refined.reduction_time_ + refined.recheck_time_
        + refined.start_time_ + rounds)
    assert once.refine_history_ == [] and not once.refine_converged_


@pytest.mark.integration
def test_rounds_on_every_backend_give_the_same_model(data):
    X, y, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = DistributedMoERegressor(3, 4, backend="serial", random_state=1,
                                    refine_rounds=3).fit(X, y)
        b = DistributedMoERegressor(3, 4, backend="local", random_state=1,
                                    refine_rounds=3).fit(X, y)
    np.testing.assert_array_equal(a.params_.expert_aug, b.params_.expert_aug)
    assert a.rechecked_shards_ == b.rechecked_shards_


def test_rounds_start_from_a_cheap_aggregate_and_stop_at_the_cap(data, monkeypatch):
    X, y, _ = data
    tols = []

    def spy(*args, **kwargs):
        tols.append(kwargs.get("tol"))
        return aggregate_messages(*args, **kwargs)

    monkeypatch.setattr(distributed, "aggregate_messages", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        capped = DistributedMoERegressor(3, 40, backend="serial", random_state=0,
                                         refine_rounds=2).fit(X, y)
        capped_tols, tols[:] = list(tols), []
        once = DistributedMoERegressor(3, 40, backend="serial", random_state=0,
                                       refine_rounds=0).fit(X, y)
    assert len(capped.refine_history_) == 2 and not capped.refine_converged_
    # the rounds start from an aggregate whose MM stopped early; the one-shot
    # estimator keeps aggregate's own tolerance
    assert capped_tols == [AUTO_REFINE_MM_TOL] and set(tols) == {None}
    assert capped.params_.log_likelihood(X, y) > once.params_.log_likelihood(X, y)
    assert AUTO_REFINE_MAX_ROUNDS >= 15


def test_rounds_that_stop_at_the_cap_say_so_and_local_warnings_do_not_repeat(data):
    """Rounds capped before converging warn once (a ConvergenceWarning that
    names refine_rounds); the local fits' own warnings stay in their
    messages when rounds follow (the rounds, on every row, decide the
    model), and are raised by the one-shot estimator."""
    from fastmoe.exceptions import ConvergenceWarning

    X, y, _ = data
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        capped = DistributedMoERegressor(3, 8, backend="serial", random_state=0, max_iter=3,
                                         refine_rounds=2).fit(X, y)
    texts = [str(w.message) for w in said if issubclass(w.category, ConvergenceWarning)]
    assert not capped.refine_converged_
    assert len(texts) == 1 and "refine_rounds=2" in texts[0]
    assert all(m.meta["warnings"] for m in capped.messages_)  # three EM iterations each
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        DistributedMoERegressor(3, 8, backend="serial", random_state=0, max_iter=3,
                                refine_rounds=0).fit(X, y)
    assert any("local fits of shard(s)" in str(w.message) for w in said)


@pytest.mark.parametrize("value", [-1, 1.5, "always", None])
def test_refine_rounds_must_be_a_count_or_auto(data, value):
    X, y, _ = data
    with pytest.raises(ValueError, match="refine_rounds"):
        DistributedMoERegressor(3, 4, backend="serial", refine_rounds=value).fit(X, y)


def test_auto_rounds_replace_the_check_round(data, monkeypatch):
    """On small shards the automatic rounds follow the first aggregate and the
    check round is not run: rounds on every row repair a poor local fit."""
    X, y, truth = data
    poor = MoEParams(truth.gate_coef, truth.gate_intercept, 0.3 * truth.expert_coef[::-1],
                     truth.expert_intercept[::-1], 4 * truth.expert_var)
    fit_shard, aggregate = distributed.fit_shard, distributed.aggregate_messages
    calls = {"recheck": 0, "aggregate": 0}

    def poor_fit(index, *args):
        i, msg = fit_shard(index, *args)
        return i, (replace(msg, params=poor) if index == 3 else msg)

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(distributed, "fit_shard", poor_fit)
    monkeypatch.setattr(distributed, "recheck_shard",
                        counted("recheck", distributed.recheck_shard))
    monkeypatch.setattr(distributed, "aggregate_messages", counted("aggregate", aggregate))
    shards = [(X[i::40], y[i::40]) for i in range(40)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        once = DistributedMoERegressor(3, backend="serial", random_state=0,
                                       refine_rounds=0).fit_shards(shards)
        assert calls["recheck"] >= 1  # without rounds the poor fit is asked again
        calls.update(recheck=0, aggregate=0)
        auto = DistributedMoERegressor(3, backend="serial", random_state=0).fit_shards(shards)
    assert calls == {"recheck": 0, "aggregate": 1}
    assert auto.rechecked_shards_ == [] and len(auto.refine_history_) >= 2
    assert auto.params_.log_likelihood(X, y) > once.params_.log_likelihood(X, y)


# -- the round statistics file (fastmoe round / fastmoe refine) ----------------
@pytest.fixture(scope="module")
def at_model(data):
    X, y, _ = data
    params = fit_moe(X[::4], y[::4], 3, random_state=0).params
    return params, round_statistics(X[1::4], y[1::4], params)


def _archive(data: bytes, **change) -> bytes:
    """``data`` (a valid round file) with header fields or arrays changed;
    an array given as None is dropped."""
    with np.load(io.BytesIO(data)) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes())
    for key, value in change.items():
        if key != "header" and (key in arrays or isinstance(value, np.ndarray)):
            if value is None:
                del arrays[key]
            else:
                arrays[key] = value
        else:
            header[key] = value
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_round_statistics_survive_their_file(at_model):
    params, stats = at_model
    back = round_from_bytes(round_to_bytes(stats, params), params)
    assert back.n == stats.n and back.log_likelihood == stats.log_likelihood
    np.testing.assert_array_equal(back.experts.gram, stats.experts.gram)
    np.testing.assert_array_equal(back.gates.hessian, stats.gates.hessian)
    np.testing.assert_array_equal(back.gates.gradient, stats.gates.gradient)
    assert back.gates.objective == stats.gates.objective


def _tampered(stats, params):
    good = round_to_bytes(stats, params)
    gram = stats.experts.gram.copy()
    asym = gram.copy()
    asym[0, 1, 2] += 1.0
    negative = gram.copy()
    negative[0, 0, 0] = -1.0
    hess = stats.gates.hessian.copy()
    grad = stats.gates.gradient.copy()
    grad[0] = np.nan
    big_grad = stats.gates.gradient.copy()
    big_grad[0] = 1e200
    not_psd = gram.copy()
    not_psd[0, -1, -1] = -1000.0  # an expert's sum of y^2
    huge = gram.copy()
    huge[1, 1, 2] = huge[1, 2, 1] = 1e300  # beyond what the diagonal allows
    return [
        (_archive(good, expert_gram=not_psd), "negative sum of squares"),
        (_archive(good, expert_gram=huge), "semi-definite"),
        (_archive(good, gate_gradient=big_grad), "larger than the rows allow"),
        (_archive(good, log_likelihood=1.7e308), "more than the model allows"),
        (_archive(good, origin=np.zeros(5)), "shape"),
        (_archive(good, model="0" * 64), "another model"),
        (_archive(good, version=1), "version 1"),
        (_archive(good, format="fastmoe.LocalMessage"), "format"),
        (_archive(good, n=0), "field n"),
        (_archive(good, n=stats.n + 5), "sum to"),
        (_archive(good, n=True), "field n"),
        (_archive(good, gate_objective=1.0), "positive"),
        (_archive(good, log_likelihood="high"), "log_likelihood"),
        (_archive(good, expert_gram=asym), "not symmetric"),
        (_archive(good, expert_gram=negative), "negative"),
        (_archive(good, expert_gram=gram[:2]), "shape"),
        (_archive(good, gate_gradient=grad), "NaN"),
        (_archive(good, gate_hessian=-hess), "negative semi-definite"),
        (_archive(good, gate_hessian=None), "expected header"),
        (_archive(good, extra=np.zeros(3)), "expected header"),
        (_archive(good, gate_hessian=np.array([{"a": 1}], dtype=object)), "dtype object"),
        (good[:200], "not a fastmoe.RoundStatistics"),
        (good + b"\0" * (2 * len(good) + 2**17), "more than the limit"),
    ]


def test_a_round_file_is_checked_before_use(at_model):
    params, stats = at_model
    for data, match in _tampered(stats, params):
        with pytest.raises(ValueError, match=match) as err:
            round_from_bytes(data, params)
        assert "\n" not in str(err.value)


def test_round_files_at_another_model_or_twice_are_refused(data, at_model, tmp_path):
    params, stats = at_model
    other = replace(params, expert_var=params.expert_var * 1.5)
    save_round(tmp_path / "s.npz", stats, params)
    with pytest.raises(ValueError, match="another model"):
        load_round(tmp_path / "s.npz", other)
    with pytest.raises(ValueError, match="use .npz"):
        save_round(tmp_path / "s.json", stats, params)


def test_the_first_round_starts_from_the_best_model_it_is_given(data):
    from fastmoe.server import refine

    X, y, _ = data
    # fits to 160 rows each, the first the poorest on all the rows
    models = [fit_moe(X[i::50], y[i::50], 3, random_state=i).params for i in (1, 0, 2, 3)]
    evaluated = []

    def evaluate(candidates):
        evaluated.append(len(candidates))
        return [round_statistics(X, y, m) for m in candidates], 0.0

    out = refine(models[0], evaluate, max_rounds=1, alternatives=models[1:])
    lls = [m.log_likelihood(X, y) for m in models]
    assert np.argmin(lls) == 0 and np.argmax(lls) > 0
    assert evaluated == [4] and out.history[0]["start"] == int(np.argmax(lls))
    assert out.params is models[int(np.argmax(lls))]
    assert out.history[0]["log_likelihood"] == pytest.approx(max(lls), rel=1e-12)


def test_the_first_round_tries_the_servers_fits_from_the_largest_shards(data, monkeypatch):
    """The first round evaluates the aggregate, the server's fits to the
    messages from it and from the SERVER_STARTS largest shards' models
    (those on MESSAGE_FIT_EXTRA_ROWS points), and ROUND_STARTS of the
    machines' own models."""
    from fastmoe import server
    from fastmoe.distributed import ROUND_STARTS, SERVER_STARTS

    X, y, _ = data
    calls = []
    fit = server.message_fit

    def counted(messages, start, **kw):
        calls.append((start, kw["rows"]))
        return fit(messages, start, **kw)

    monkeypatch.setattr(distributed, "message_fit", counted)
    model = DistributedMoERegressor(3, n_machines=8, backend="serial",
                                    random_state=0).fit(X, y)
    assert [rows for _, rows in calls] == [server.MESSAGE_FIT_ROWS] + \
        [server.MESSAGE_FIT_EXTRA_ROWS] * SERVER_STARTS
    assert model.refine_history_[0]["candidates"] == 1 + 1 + SERVER_STARTS + ROUND_STARTS
    assert server.MESSAGE_FIT_EXTRA_ROWS < server.MESSAGE_FIT_ROWS
    with pytest.raises(ValueError, match="rows"):
        fit([], calls[0][0], rows=0)


def test_trust_steps_are_measured_in_the_metric():
    from fastmoe.server import trust_step

    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 6))
    info = A @ A.T + 6 * np.eye(6)  # -H, positive definite
    B = rng.standard_normal((6, 6))
    metric = B @ B.T + np.eye(6)
    g = rng.standard_normal(6) * 10
    newton, _, length = trust_step(g, -info, None)
    np.testing.assert_allclose(info @ newton, g, rtol=1e-10)
    for radius in (0.05, 0.5):
        step, gain, got = trust_step(g, -info, radius, metric)
        # the length is measured in the metric scaled like the information
        scale = np.sqrt(np.diagonal(info))
        x = step * scale
        assert np.sqrt(x @ (metric / np.outer(scale, scale)) @ x) == pytest.approx(radius,
                                                                                   rel=1e-6)
        assert got == pytest.approx(radius, rel=1e-6) and gain > 0
    # a radius longer than the Newton step gives the Newton step
    step, _, _ = trust_step(g, -info, 1e6, metric)
    np.testing.assert_allclose(step, newton, rtol=1e-8)


def test_the_saddle_free_step_is_newtons_where_the_information_is_definite():
    """|H|^-1 g: Newton's step for a definite information; where it is
    indefinite, the direction of upward curvature is followed uphill, not
    down (known answers on a diagonal information)."""
    from fastmoe.server import saddle_free_step

    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 6))
    info = A @ A.T + 6 * np.eye(6)
    g = rng.standard_normal(6)
    np.testing.assert_allclose(saddle_free_step(g, -info), np.linalg.solve(info, g),
                               rtol=1e-10)
    # information diag(2, -1): Newton's step (1, -1) goes down the second
    # direction; the saddle-free step (1, 1) goes up it
    np.testing.assert_allclose(saddle_free_step(np.array([2.0, 1.0]), -np.diag([2.0, -1.0])),
                               [1.0, 1.0], rtol=1e-12)


def test_the_servers_own_start_fits_all_rows_better_than_the_reduction():
    """message_fit uses the messages alone (the machines' models and
    covariate samples), is reproducible from its seed, and on small shards
    of the authors' design fits all the rows better than the one-shot
    aggregate it starts from (four seeds, 16 shards of 500 rows)."""
    from fastmoe import fit_local
    from fastmoe.server import message_fit

    for seed in range(4):
        X, y, _, _ = make_moe_regression(8000, 3, 3, design="authors", random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            msgs = [fit_local(Xs, ys, 3, random_state=seed)
                    for Xs, ys in zip(np.array_split(X, 16), np.array_split(y, 16))]
            agg = aggregate_messages(msgs, random_state=0).params
            start = message_fit(msgs, agg, random_state=0)
            again = message_fit(msgs, agg, random_state=0)
        assert start.log_likelihood(X, y) > agg.log_likelihood(X, y)
        np.testing.assert_array_equal(start.expert_coef, again.expert_coef)


def test_rounds_that_creep_stop_where_the_extrapolated_gain_is_below_newtons_bound():
    """The gain left after two accepted rounds is extrapolated as a geometric
    tail (Aitken): gains 10 then 5 leave 5; gains that do not shrink leave
    an unknown amount (inf); a rejected round is not a gain."""
    from fastmoe.server import Rounds

    X, y, truth, _ = make_moe_regression(200, 1, 2, random_state=0)
    rounds = Rounds.start(truth, tol=1e-7)
    assert rounds._remaining() == np.inf  # no gains yet
    rounds.history = [{"log_likelihood": v, "step": s} for v, s in
                      [(0.0, "start"), (10.0, "trust"), (15.0, "em")]]
    assert rounds._remaining() == pytest.approx(5.0)
    rounds.history.insert(2, {"log_likelihood": 9.0, "step": "rejected"})
    assert rounds._remaining() == pytest.approx(5.0)
    rounds.history.append({"log_likelihood": 21.0, "step": "trust"})  # 5 then 6
    assert rounds._remaining() == np.inf
    rounds.history = [{"log_likelihood": None, "step": "start"},  # as a state file reads
                      {"log_likelihood": 10.0, "step": "trust"},  # back a start that was
                      {"log_likelihood": 15.0, "step": "em"}]  # not finite
    assert rounds._remaining() == np.inf


def test_where_the_rounds_stop_does_not_depend_on_the_units_of_y():
    """The rounds' tolerance is relative to the log-likelihood of the
    standardised response, as the centralised EM's: y in other units, with
    an offset, takes the same rounds and steps to the same model. (With the
    tolerance relative to the log-likelihood in y's units, y / 1000 took 2
    rounds and 1000 y + 10 000 one.)"""
    X, y, _, _ = make_moe_regression(4000, 2, 3, random_state=2)
    fits = []
    for scale, shift in ((1.0, 0.0), (1e-3, 0.0), (1e3, 1e4)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits.append(DistributedMoERegressor(3, 16, backend="serial", random_state=0)
                        .fit(X, scale * y + shift))
    ref = fits[0]
    assert len(ref.refine_history_) >= 2
    for (scale, shift), fit in zip(((1e-3, 0.0), (1e3, 1e4)), fits[1:]):
        assert [h["step"] for h in fit.refine_history_] == [h["step"] for h in
                                                            ref.refine_history_]
        np.testing.assert_allclose(fit.predict(X), scale * ref.predict(X) + shift,
                                   rtol=1e-6, atol=1e-6 * scale)

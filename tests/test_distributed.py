"""Distributed pipeline: shards, messages, backends, faults."""

import os
import warnings

import numpy as np
import pytest
from conftest import scale_mixture
from sklearn.base import clone

from fastmoe import (
    DistributedMoEClassifier,
    DistributedMoERegressor,
    GaussianMoERegressor,
    LocalMessage,
    MoEParams,
    ShardError,
    aggregate_messages,
    fit_local,
)
from fastmoe.datasets import make_moe_regression
from fastmoe.io import write_table


@pytest.fixture(scope="module")
def data():
    X, y, truth, _ = make_moe_regression(6000, 2, 2, random_state=3)
    return X, y, truth


def _model(**kw):
    base = dict(n_experts=2, n_machines=3, n_support=300, random_state=0, backend="serial")
    base.update(kw)
    return DistributedMoERegressor(**base)


def test_split_keeps_every_row(data):
    X, y, _ = data
    m = _model(n_machines=7).fit(X[:5000], y[:5000])
    assert m.shard_sizes_.sum() == 5000
    assert m.shard_sizes_.max() - m.shard_sizes_.min() <= 1
    assert m.dropped_shards_ == [] and m.dropped_rows_ == 0 and m.excluded_shards_ == []
    rounds = sum(h["machine_seconds"] + h["server_seconds"] for h in m.refine_history_)
    assert m.learning_time_ == pytest.approx(m.local_fit_times_.max() + m.reduction_time_
                                             + m.recheck_time_ + m.start_time_ + rounds)
    assert len(m.local_models_) == 7 and np.all(m.message_bytes_ > 0)


DASK_NOISE = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("ignore::ResourceWarning")]


@pytest.mark.integration
@DASK_NOISE[0]
@DASK_NOISE[1]
def test_backends_give_identical_models(data):
    X, y, _ = data
    serial = _model().fit(X, y)
    local = _model(backend="local", n_jobs=2).fit(X, y)
    dask = _model(backend="dask").fit(X, y)
    for other in (local, dask):
        np.testing.assert_array_equal(other.params_.expert_aug, serial.params_.expert_aug)
        np.testing.assert_array_equal(other.params_.gate_aug, serial.params_.gate_aug)
        np.testing.assert_array_equal(other.params_.expert_var, serial.params_.expert_var)


def test_message_round_trip(tmp_path, data):
    X, y, _ = data
    msg = fit_local(X[:2000], y[:2000], 2, n_support=100, heldout=0.1, random_state=0)
    assert msg.heldout_n == 200 and msg.n == 1800 and msg.support.shape == (100, 2)
    for back in (LocalMessage.from_bytes(msg.to_bytes()),):
        np.testing.assert_array_equal(back.support, msg.support)
        assert back.params.to_dict() == msg.params.to_dict()
        assert (back.n, back.heldout_loglik) == (msg.n, msg.heldout_loglik)
    for suffix in (".npz", ".json"):
        msg.save(tmp_path / f"m{suffix}")
        back = LocalMessage.load(tmp_path / f"m{suffix}")
        np.testing.assert_array_equal(back.support_cov, msg.support_cov)
        assert back.params.to_dict() == msg.params.to_dict()


def test_gaussian_support_sends_no_rows(data):
    X, y, _ = data
    msg = fit_local(X[:2000], y[:2000], 2, support="gaussian", random_state=0)
    other = fit_local(X[2000:4000], y[2000:4000], 2, support="gaussian", random_state=1)
    assert msg.support is None
    np.testing.assert_allclose(msg.support_mean, X[:2000].mean(axis=0))
    res = aggregate_messages([msg, other], random_state=0)
    assert res.assignment.shape[0] == 2000  # drawn by the server, 1000 per machine
    m = _model(support="gaussian").fit(X, y)
    assert all(mm.support is None for mm in m.messages_)


def test_bad_message_files(tmp_path, data):
    X, y, _ = data
    msg = fit_local(X[:500], y[:500], 2, random_state=0)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a fastmoe.LocalMessage"):
        LocalMessage.load(tmp_path / "bad.npz")
    d = msg._fields() | {"version": 7}
    import json

    (tmp_path / "v.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="version 7 is not supported"):
        LocalMessage.load(tmp_path / "v.json")
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        aggregate_messages([msg, str(tmp_path / "v.json")])


def _faulty_shards(X, y):
    bad = X[:100].copy()
    bad[5, 0] = np.nan
    return [(X[:2000], y[:2000]), (X[:0], y[:0]), (X[2000:2004], y[2000:2004]),
            (bad, y[:100]), (X[3000:5000], y[3000:5000])]


@pytest.mark.parametrize("index,reason", [(1, "the shard is empty"),
                                          (2, "4 rows are fewer than the 6 needed"),
                                          (3, "NaN")])
def test_faulty_shard_raises_with_its_index(data, index, reason):
    X, y, _ = data
    shards = _faulty_shards(X, y)
    shards = [shards[0], shards[index], shards[4]]
    with pytest.raises(ShardError, match=f"shard 1: .*{reason}"):
        _model(refine_rounds=0).fit_shards(shards)


@pytest.mark.parametrize("small", ["rows", "constant"])
def test_a_shard_too_small_for_a_local_model_takes_part_in_the_rounds(data, small):
    """A natural group with fewer rows than K(d+1), or one response value,
    has no local model; its rows still count in every round: the last
    round's statistics cover every row, and their log-likelihood is the
    model's on all of them."""
    X, y, _ = data
    n = 4 if small == "rows" else 10  # (K(d+1) = 6)
    few = (X[2000:2000 + n], y[2000:2000 + n] if small == "rows" else np.full(n, 0.5))
    shards = [(X[:2000], y[:2000]), few, (X[3000:5000], y[3000:5000])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = _model().fit_shards(shards)
    assert m.round_only_shards_ == [1] and m.round_only_rows_ == n
    assert m.dropped_rows_ == 0 and m.excluded_rows_ == 0 and m.refine_converged_
    assert m.shard_sizes_.sum() + m.round_only_rows_ == 4000 + n
    X_all, y_all = np.vstack([s[0] for s in shards]), np.concatenate([s[1] for s in shards])
    last = m.round_statistics_
    assert sorted(i for i, _ in last) == [0, 1, 2]
    assert sum(s.n for _, s in last) == 4000 + n
    assert sum(s.log_likelihood for _, s in last) == pytest.approx(
        m.params_.log_likelihood(X_all, y_all), rel=1e-10)


def test_faulty_shards_are_skipped_and_recorded(data):
    X, y, _ = data
    shards = _faulty_shards(X, y)

    def boom():
        raise RuntimeError("disk on fire")

    shards.append(boom)
    with pytest.warns(UserWarning, match="dropped shard"):
        m = _model(on_shard_error="skip").fit_shards(shards)
    assert m.dropped_shards_ == [1, 3, 5] and m.round_only_shards_ == [2]
    assert m.shard_sizes_.tolist() == [2000, 2000]
    assert m.shard_sizes_.sum() + m.round_only_rows_ + m.dropped_rows_ == 2000 + 0 + 4 + 100 + 2000
    np.testing.assert_allclose(m.aggregation_.expert_mass.sum(), 2 * 300)


def test_shards_from_files(tmp_path, data):
    X, y, _ = data
    paths = []
    for m, suffix in enumerate([".npz", ".csv", ".parquet"]):
        idx = slice(2000 * m, 2000 * (m + 1))
        if suffix == ".parquet":
            pytest.importorskip("pyarrow")
        write_table(tmp_path / f"s{m}{suffix}", X[idx], y[idx])
        paths.append(tmp_path / f"s{m}{suffix}")
    np.save(tmp_path / "x.npy", X[:2000])
    np.save(tmp_path / "y.npy", y[:2000])
    paths.append((str(tmp_path / "x.npy"), str(tmp_path / "y.npy")))
    from_files = _model().fit_shards(paths)
    in_memory = _model().fit_shards([(X[:2000], y[:2000]), (X[2000:4000], y[2000:4000]),
                                     (X[4000:6000], y[4000:6000]), (X[:2000], y[:2000])])
    np.testing.assert_allclose(from_files.params_.expert_aug, in_memory.params_.expert_aug,
                               rtol=1e-12)


def test_dask_partitions_are_machines(data):
    dd = pytest.importorskip("dask.dataframe")
    import pandas as pd

    X, y, _ = data
    frame = pd.DataFrame(X, columns=["a", "b"]).assign(y=y)
    ddf = dd.from_pandas(frame, npartitions=3, sort=False)
    m = _model().fit_shards(ddf)
    assert m.shard_sizes_.sum() == 6000 and len(m.shard_sizes_) == 3
    da = pytest.importorskip("dask.array")
    m2 = _model().fit_shards((da.from_array(X, chunks=(2000, 2)), da.from_array(y, chunks=2000)))
    np.testing.assert_allclose(m2.params_.expert_aug, m.params_.expert_aug, rtol=1e-12)


class _DieOnce:
    """A shard loader that kills its worker process the first time it runs."""

    def __init__(self, marker, X, y):
        self.marker, self.X, self.y = str(marker), X, y

    def __call__(self):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return self.X, self.y


@pytest.mark.integration
@DASK_NOISE[0]
@DASK_NOISE[1]
def test_dask_retries_a_dead_worker(tmp_path, data):
    distributed = pytest.importorskip("dask.distributed")
    X, y, _ = data
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        shards = [(X[:3000], y[:3000]), _DieOnce(tmp_path / "died", X[3000:], y[3000:])]
        m = _model(backend="dask", client=client).fit_shards(shards)
    assert (tmp_path / "died").exists()
    assert m.shard_sizes_.tolist() == [3000, 3000]


def test_estimator_predicts(data):
    X, y, truth = data
    m = _model().fit(X, y)
    central = GaussianMoERegressor(2, random_state=0).fit(X, y)
    assert m.score(X, y) > central.score(X, y) - 0.01
    assert m.predict_gate_proba(X).shape == (6000, 2)
    assert "global expert" in m.aggregation_.report()


@pytest.mark.parametrize("kwargs,match", [
    (dict(backend="mpi"), "backend must be one of"),
    (dict(on_shard_error="ignore"), "on_shard_error must be one of"),
    (dict(n_machines=0), "n_machines must be an int >= 1"),
    (dict(support="median"), "support must be one of"),
])
def test_bad_options(data, kwargs, match):
    X, y, _ = data
    with pytest.raises(ValueError, match=match):
        _model(**kwargs).fit(X[:600], y[:600])


@pytest.fixture(scope="module")
def three_experts():
    X, y, truth, _ = make_moe_regression(8000, 2, 3, random_state=1)
    msgs = [fit_local(X[i::4], y[i::4], 3, n_support=300, random_state=i) for i in range(4)]
    return X, y, truth, msgs


def _with_params(msg, params):
    from dataclasses import replace

    return replace(msg, params=params)


def test_failed_local_fit_is_excluded(three_experts):
    X, y, truth, msgs = three_experts
    b, v = truth.expert_aug, truth.expert_var
    # a failed local fit: two experts on the middle group, one broad expert on the outer two
    trap = np.array([b[1], b[1] + 0.01, (b[0] + b[2]) / 2])
    failed = MoEParams(np.zeros((3, 2)), np.zeros(3), trap[:, 1:], trap[:, 0],
                       np.array([v[1], v[1], 30.0]))
    msgs = msgs[:2] + [_with_params(msgs[2], failed)] + msgs[3:]
    kept = aggregate_messages(msgs, random_state=0)
    health = kept.health()
    cost = health["machine_cost"]
    assert health["collapsed"] == [2] and cost[2] > 2 * np.median(cost) and kept.excluded == ()
    with pytest.raises(ValueError, match=r"model\(s\) \[2\], which look like failed fits "
                       r"but hold 25.0% of the rows, more than max_excluded=0.05: pass "
                       r"max_excluded=0.25 \(or more\)"):
        aggregate_messages(msgs, exclude_failed=True, random_state=0)
    out = aggregate_messages(msgs, exclude_failed=True, max_excluded=0.25, random_state=0)
    assert out.excluded == (2,) and "failed local fits" in out.notes[-1]
    assert out.excluded_fraction == pytest.approx(0.25)
    assert "duplicate_experts" in kept.local_issues and 2 in kept.health()["duplicate_experts"]
    assert out.local_mass.shape[0] == 9  # three models of three experts were aggregated
    ll_out, ll_kept = out.params.log_likelihood(X, y), kept.params.log_likelihood(X, y)
    assert ll_out > ll_kept + 100
    assert ll_out > truth.log_likelihood(X, y) - 0.01 * abs(truth.log_likelihood(X, y))
    good = aggregate_messages(msgs, exclude_failed=True, max_excluded=0.25,
                              random_state=0)  # reproducible
    np.testing.assert_array_equal(good.params.expert_aug, out.params.expert_aug)


def test_other_population_is_kept(three_experts):
    _, _, _, msgs = three_experts
    p = msgs[2].params
    other = MoEParams(p.gate_coef, p.gate_intercept, 1.6 * p.expert_coef, p.expert_intercept,
                      p.expert_var)
    msgs = msgs[:2] + [_with_params(msgs[2], other)] + msgs[3:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = aggregate_messages(msgs, exclude_failed=True, random_state=0)
    health = out.health()
    cost = health["machine_cost"]
    assert out.excluded == () and cost[2] > 2 * np.median(cost) and health["collapsed"] == []


def test_the_machines_run_plain_em_unless_asked():
    """fit_local's Gaussian EM is plain by default (machine.LOCAL_ACCELERATE),
    accelerated when asked; the distributed estimator's accelerate="auto"
    leaves it to fit_local, and a bad value is one line naming it."""
    X, y = scale_mixture(8000, 0)
    plain = fit_local(X, y, 2, random_state=0, accelerate=False)
    default = fit_local(X, y, 2, random_state=0)
    fast = fit_local(X, y, 2, random_state=0, accelerate=True)
    assert default.meta["n_iter"] == plain.meta["n_iter"]
    np.testing.assert_array_equal(default.params.expert_coef, plain.params.expert_coef)
    # another path to the same optimum, which plain EM stops short of
    np.testing.assert_allclose(fast.params.expert_coef, plain.params.expert_coef, atol=1e-2)
    assert not np.array_equal(fast.params.expert_coef, plain.params.expert_coef)
    assert fast.meta["log_likelihood"] >= plain.meta["log_likelihood"]
    est = DistributedMoERegressor(2, 2, backend="serial", random_state=0, refine_rounds=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the health report: a scale mixture's pair
        asked = clone(est).set_params(accelerate=True).fit(X, y)
        auto = clone(est).fit(X, y)
    for a, b in zip(asked.messages_, auto.messages_):
        assert not np.array_equal(a.params.expert_coef, b.params.expert_coef)
    with pytest.raises(ValueError, match="accelerate"):
        est.set_params(accelerate="fast").fit(X, y)


def test_a_group_with_one_class_takes_part_in_the_classifiers_rounds():
    """A group of a binary response in which every row is 0 has no local
    logistic model; its rows count in the rounds."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 2))
    y = (rng.random(3000) < 1 / (1 + np.exp(-2 * X[:, 0]))).astype(float)
    shards = [(X[:1400], y[:1400]), (X[1400:1420], np.zeros(20)), (X[1420:], y[1420:])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = DistributedMoEClassifier(2, backend="serial", random_state=0).fit_shards(shards)
    assert m.round_only_shards_ == [1] and m.round_only_rows_ == 20
    assert sum(s.n for _, s in m.round_statistics_) == 3000

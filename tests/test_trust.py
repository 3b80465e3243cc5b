"""Untrusted input and ordinary use: messages, files, pickling, backends, scripts.

Each case of the trust issue is a test here: a message or file a user or a
remote machine could send is either read correctly or refused with one clear
line; every backend reports shard failures by index; the README quickstart
runs as a plain script.
"""

import io
import json
import pickle
import re
import subprocess
import sys
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import fastmoe
from fastmoe import (
    DistributedMoERegressor,
    LocalMessage,
    MoEParams,
    ShardError,
    aggregate_messages,
    fit_local,
    fit_moe,
)
from fastmoe.datasets import make_moe_regression
from fastmoe.message import MAX_MESSAGE_BYTES, MAX_N

DASK_NOISE = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("ignore::ResourceWarning")]
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def messages():
    X, y, truth, _ = make_moe_regression(8000, 2, 2, random_state=5)
    return [fit_local(X[i::4], y[i::4], 2, n_support=200, random_state=i) for i in range(4)]


# ----------------------------------------------------------------------------
# exceptions survive pickling
# ----------------------------------------------------------------------------
def test_every_exception_pickles():
    err = pickle.loads(pickle.dumps(ShardError(3, "the shard is empty", 7)))
    assert (err.index, err.reason, err.n_rows, str(err)) == (3, "the shard is empty", 7,
                                                             "shard 3: the shard is empty")
    for cls in (fastmoe.ConvergenceWarning, fastmoe.DegenerateExpertWarning):
        assert str(pickle.loads(pickle.dumps(cls("x")))) == "x"


# ----------------------------------------------------------------------------
# messages
# ----------------------------------------------------------------------------
def _mutated(msg, **fields):
    return replace(msg, **fields)


@pytest.mark.parametrize("fields,match", [
    (dict(n=2.7), r"field n must be an integer"),
    (dict(n=1e30), r"field n must be an integer in \[1, 1e\+12\]"),
    (dict(n=0), r"field n must be an integer"),
    (dict(n=True), r"field n must be an integer"),
    (dict(heldout_n=-400), r"field heldout_n must be an integer in \[0"),
    (dict(heldout_loglik=float("nan")), r"heldout_loglik must be a finite number"),
    (dict(fit_time=-1.0), r"fit_time must be a finite number >= 0"),
    (dict(support_cov=1e300 * np.eye(2)), r"support_cov has a value beyond"),
    (dict(support_cov=np.array([[1.0, 2.0], [2.0, 1.0]])), r"not positive semi-definite"),
    (dict(support_cov=np.array([[1.0, 0.5], [0.0, 1.0]])), r"not symmetric"),
    (dict(support_mean=np.array([np.nan, 0.0])), r"support_mean contains NaN"),
    (dict(support_mean=np.zeros(3)), r"support moments must have shapes \(2,\)"),
    (dict(support=np.full((5, 2), np.inf)), r"support contains NaN or infinity"),
    (dict(support=np.zeros((5, 3))), r"support sample must have shape \(s, 2\)"),
    (dict(support=1e60 * np.ones((5, 2))), r"support sample has a value beyond"),
    (dict(n=10), r"sample has 200 rows but the shard claims 10"),
    (dict(meta=[1]), r"meta must be a dict"),
])
def test_message_fields_are_checked(messages, fields, match):
    bad = _mutated(messages[0], **fields)
    with pytest.raises(ValueError, match=match):
        bad.validate()
    with pytest.raises(ValueError, match=r"messages\[1\]: .*" + match):
        aggregate_messages([messages[0], bad])


def test_model_out_of_range_is_refused(messages):
    p = messages[0].params
    huge = MoEParams(p.gate_coef, p.gate_intercept, 1e300 * p.expert_coef, p.expert_intercept,
                     p.expert_var)
    with pytest.raises(ValueError, match="expert means reach .* beyond"):
        _mutated(messages[0], params=huge).validate()
    wide = MoEParams(p.gate_coef, p.gate_intercept, p.expert_coef, p.expert_intercept,
                     1e200 * p.expert_var)
    with pytest.raises(ValueError, match="expert variance of"):
        _mutated(messages[0], params=wide).validate()
    gates = MoEParams(1e300 * p.gate_coef, p.gate_intercept, p.expert_coef, p.expert_intercept,
                      p.expert_var)
    gaussian = _mutated(messages[0], params=gates, support=None)
    with pytest.raises(ValueError, match="gate logits reach"):
        gaussian.validate()


def test_messages_must_agree_on_d_and_k():
    X, y, _, _ = make_moe_regression(3000, 3, 3, random_state=0)
    m3 = fit_local(X[:1500], y[:1500], 3, n_support=100, random_state=0)
    m_d = fit_local(X[1500:, :2], y[1500:], 3, n_support=100, random_state=0)
    with pytest.raises(ValueError, match=r"messages\[1\] has 2 covariates but messages\[0\] "
                                         r"has 3"):
        aggregate_messages([m3, m_d])
    m_k = fit_local(X[1500:], y[1500:], 2, n_support=100, random_state=0)
    with pytest.raises(ValueError, match=r"messages\[1\] has 2 experts but messages\[0\] has "
                                         r"3; pass n_experts"):
        aggregate_messages([m3, m_k])
    assert aggregate_messages([m3, m_k], 3, random_state=0).params.n_experts == 3


def test_message_round_trips_stay_exact(tmp_path, messages):
    msg = messages[1]
    for back in (LocalMessage.from_bytes(msg.to_bytes()),
                 LocalMessage.load(_saved(tmp_path, msg, ".json"))):
        assert back.n == msg.n and isinstance(back.n, int)
        np.testing.assert_array_equal(back.support, msg.support)
        assert back.params.to_dict() == msg.params.to_dict()


def _saved(tmp_path, msg, suffix):
    path = tmp_path / f"msg{suffix}"
    msg.save(path)
    return path


def _npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def test_zip_bomb_is_refused_quickly(messages):
    header = np.frombuffer(json.dumps({k: v for k, v in messages[0]._fields().items()
                                       if not k.startswith("support")}).encode(), np.uint8)
    bomb = _npz_bytes(header=header, support_mean=np.zeros(2), support_cov=np.eye(2),
                      support=np.zeros((25_000_000, 2)))
    assert len(bomb) < 1_000_000
    # refused from the declared size, before anything is decompressed (the
    # memory it would take is the point; no test here times it)
    with pytest.raises(ValueError, match=r"not a fastmoe.LocalMessage \(member 'support.npy' "
                                         r"declares 400000128 bytes"):
        LocalMessage.from_bytes(bomb)


def test_archive_lies_and_objects_are_refused(messages):
    good = messages[0].to_bytes()
    with pytest.raises(ValueError, match="not a fastmoe.LocalMessage"):
        LocalMessage.from_bytes(good[: len(good) // 2])
    # an object array (a pickle inside the archive) is never loaded
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        with z.open("header.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="dtype object are not accepted"):
        LocalMessage.from_bytes(buf.getvalue())
    # a header that declares more rows than the data holds
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        with z.open("header.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False,
                                                     "shape": (1000,)})
            f.write(b"\0" * 80)
    with pytest.raises(ValueError, match="truncated array data"):
        LocalMessage.from_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="more than the limit"):
        LocalMessage.from_bytes(b"\0" * (MAX_MESSAGE_BYTES + 1))


def test_implausible_n_is_flagged_and_can_be_capped(messages):
    liar = _mutated(messages[3], n=messages[3].n * 1000)
    msgs = messages[:3] + [liar]
    with pytest.warns(UserWarning, match=r"implausible sample size.*messages\[3\] claims"):
        res = aggregate_messages(msgs, random_state=0)
    health = res.health()
    assert res.implausible == (3,) and health["implausible"] == [3]
    assert any("claim sample sizes out of line" in w for w in health["warnings"])
    assert "claim sample sizes out of line" in res.report()
    with pytest.warns(UserWarning, match="implausible"):
        capped = aggregate_messages(msgs, max_weight=0.25, random_state=0)
    mass = [capped.local_mass[capped.machine == m].sum() for m in range(4)]
    np.testing.assert_allclose(np.array(mass) / np.sum(mass), 0.25, rtol=1e-12)
    assert MAX_N == 10**12
    with pytest.raises(ValueError, match="max_weight=0.1 is below 1/M"):
        aggregate_messages(messages, max_weight=0.1)


def test_a_sample_smaller_than_the_claim_is_flagged(messages):
    short = _mutated(messages[2], support=messages[2].support[:50])
    with pytest.warns(UserWarning, match=r"messages\[2\] claims 2000 rows but sampled only 50"):
        aggregate_messages(messages[:2] + [short] + messages[3:], random_state=0)


# ----------------------------------------------------------------------------
# input checks of the fits
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("heldout", [-0.2, 1.0, 1.5, float("nan"), 1e-9])
def test_heldout_must_be_a_usable_fraction(heldout):
    X, y, _, _ = make_moe_regression(2000, 3, 3, random_state=0)
    with pytest.raises(ValueError, match="heldout"):
        fit_local(X, y, 3, heldout=heldout)


def test_fits_do_not_depend_on_the_units_of_x_or_y():
    X, y, _, _ = make_moe_regression(3000, 2, 2, random_state=0)
    # converged tightly: the scaled data are in other units (1e-300 is no power
    # of two), so EM's path differs; its optimum does not
    opts = dict(tol=1e-13, max_iter=3000, random_state=0)
    ref = fit_moe(X, y, 2, **opts)
    for sx, sy in ((1e-300, 1.0), (1e300, 1.0), (1.0, 1e-100), (3e-200, 1e-120)):
        fit = fit_moe(X * sx, y * sy, 2, **opts)
        p = fit.params
        np.testing.assert_allclose(p.expert_coef * sx / sy, ref.params.expert_coef, rtol=1e-6)
        np.testing.assert_allclose(p.gate_coef * sx, ref.params.gate_coef, rtol=1e-6)
        np.testing.assert_allclose(p.expert_var / sy**2, ref.params.expert_var, rtol=1e-6)
        np.testing.assert_allclose(fit.log_likelihood + len(y) * np.log(sy),
                                   ref.log_likelihood, rtol=1e-11)
    with pytest.raises(ValueError, match="cannot be written in the units of X and y"):
        fit_moe(X * 1e-200, y * 1e150, 2, random_state=0)


# ----------------------------------------------------------------------------
# backends
# ----------------------------------------------------------------------------
def _faulty(X, y):
    bad = X[:100].copy()
    bad[5, 0] = np.nan
    return [(X[:2000], y[:2000]), (X[:0], y[:0]), (bad, y[:100]), (X[2000:4000], y[2000:4000])]


@pytest.mark.integration
@DASK_NOISE[0]
@DASK_NOISE[1]
@pytest.mark.parametrize("backend", ["serial", "local", "dask"])
def test_shard_failures_on_every_backend(backend):
    X, y, _, _ = make_moe_regression(4000, 2, 2, random_state=3)
    opts = dict(n_experts=2, n_support=200, n_init=1, backend=backend, random_state=0)
    with pytest.raises(ShardError, match="shard 1: the shard is empty"):
        DistributedMoERegressor(**opts).fit_shards(_faulty(X, y))
    with pytest.warns(UserWarning, match="dropped shard"):
        m = DistributedMoERegressor(on_shard_error="skip", **opts).fit_shards(_faulty(X, y))
    assert m.dropped_shards_ == [1, 2]
    assert m.shard_sizes_.sum() + m.dropped_rows_ == 2000 + 0 + 100 + 2000
    assert m.n_iter_ == m.aggregation_.n_iter >= 1


@pytest.mark.integration
@DASK_NOISE[0]
@DASK_NOISE[1]
def test_concurrent_dask_fits_on_one_client_are_isolated():
    distributed = pytest.importorskip("dask.distributed")
    from concurrent.futures import ThreadPoolExecutor

    data = [make_moe_regression(3000, 2, 2, random_state=s)[:2] for s in (1, 2)]
    opts = dict(n_experts=2, n_machines=3, n_support=200, n_init=1, random_state=0)
    serial = [DistributedMoERegressor(backend="serial", **opts).fit(X, y) for X, y in data]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        def fit(X, y):
            return DistributedMoERegressor(backend="dask", client=client, **opts).fit(X, y)

        with ThreadPoolExecutor(2) as pool:
            fits = list(pool.map(lambda xy: fit(*xy), data))
        assert client.status == "running"  # the user's client is left open
    for got, want in zip(fits, serial):
        np.testing.assert_array_equal(got.params_.expert_aug, want.params_.expert_aug)
        np.testing.assert_array_equal(got.params_.gate_aug, want.params_.gate_aug)


# ----------------------------------------------------------------------------
# the README quickstart as a user runs it: a plain script, and from stdin
# ----------------------------------------------------------------------------
def _quickstart() -> str:
    text = README.read_text()
    block = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S)
    assert block, "README has no Quickstart code block"
    return block.group(1)


@pytest.mark.integration
@pytest.mark.parametrize("how", ["script", "stdin"])
def test_readme_quickstart_runs_without_a_main_guard(tmp_path, how):
    code = _quickstart()
    assert "__main__" not in code
    script = tmp_path / "q.py"
    script.write_text(code)
    argv = [sys.executable, str(script)] if how == "script" else [sys.executable, "-"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = subprocess.run(argv, input=None if how == "script" else code, text=True,
                             capture_output=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BrokenProcessPool" not in out.stderr
    assert (tmp_path / "model.json").exists()

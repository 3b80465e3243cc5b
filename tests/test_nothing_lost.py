"""Nothing lost, nothing silently wrong: outputs written whole or not at all,
inputs never overwritten, ambiguous files refused, one convention for
intervals, degenerate data named."""

import io
import json
import os
import warnings
import zipfile

import numpy as np
import pytest

from fastmoe import DistributedMoERegressor, MoEParams, fit_moe
from fastmoe.cli import main
from fastmoe.datasets import make_moe_regression
from fastmoe.io import atomic_path, parse_json, read_npz, read_table, write_table


@pytest.fixture(scope="module")
def data():
    X, y, truth, _ = make_moe_regression(600, 2, 2, random_state=0)
    return X, y, truth


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.npz"
    target.write_bytes(b"the good earlier output")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"the good earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]  # no temporary left


def test_an_unwritable_folder_is_named(tmp_path, data, capsys):
    X, y, _ = data
    write_table(tmp_path / "d.npz", X, y)
    assert main(["fit", "--data", str(tmp_path / "d.npz"), "--n-experts", "2",
                 "--output", str(tmp_path / "missing" / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "does not exist" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", [
    ["fit", "--data", "{d}", "--n-experts", "2", "--output", "{d}"],
    ["predict", "--model", "{m}", "--data", "{d}", "--output", "{d}"],
    ["fit-local", "--data", "{d}", "--n-experts", "2", "--output", "{m}"],
])
def test_an_output_that_is_an_input_is_refused_before_any_work(tmp_path, data, capsys,
                                                               command):
    X, y, truth = data
    d, m = tmp_path / "d.npz", tmp_path / "m.npz"
    write_table(d, X, y)
    truth.save(m)
    before = {p: p.read_bytes() for p in (d, m)}
    args = [a.format(d=d, m=m) for a in command]
    if command[0] == "fit-local":
        args = [a.replace(str(m), str(d)) if a == str(m) else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "also an input" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in (d, m)} == before


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        read_table(fifo)  # would hang if opened
    with pytest.raises(ValueError, match="not a regular file"):
        read_npz("/dev/zero", "message file", 1000)  # would grow without end if read


def test_a_switched_off_gate_survives_its_file(tmp_path, data):
    *_, truth = data
    off = MoEParams(truth.gate_coef, [-np.inf, 0.0], truth.expert_coef, truth.expert_intercept,
                    truth.expert_var)
    off.save(tmp_path / "m.json")
    json.loads((tmp_path / "m.json").read_text())  # strict JSON: no -Infinity
    back = MoEParams.load(tmp_path / "m.json")
    assert back.gate_intercept[0] == -np.inf


def test_ambiguous_files_are_refused(tmp_path, data):
    *_, truth = data
    with pytest.raises(ValueError, match="appears more than once"):
        parse_json(b'{"a": 1, "a": 2}')
    record = truth.to_dict()
    record["expert_coef"] = np.asarray(record["expert_coef"]).T.tolist()  # (d, K) for (K, d)
    with pytest.raises(ValueError, match="must have shape"):
        MoEParams.from_dict({**record, "n_features": 2, "n_experts": 2,
                             "expert_coef": [[1.0, 2.0, 3.0, 4.0]]})
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        with zipfile.ZipFile(buf, "w") as z:
            for value in (1.0, 2.0):
                arr = io.BytesIO()
                np.save(arr, np.array(value))
                z.writestr("x.npy", arr.getvalue())
    with pytest.raises(ValueError, match="appears more than once"):
        read_npz(buf.getvalue(), "archive", 10_000)


def test_csv_with_a_byte_order_mark_and_quoted_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'\xef\xbb\xbf"x0","y"\n1,2\n3,4\n')
    X, y = read_table(path)
    np.testing.assert_array_equal(y, [2.0, 4.0])
    path.write_text("x0,y\n1,2\n3,\n")
    with pytest.raises(ValueError, match="line 3, column 'y': an empty field is not a number"):
        read_table(path)


def test_a_constant_response_is_named(data):
    X, _, _ = data
    with pytest.raises(ValueError, match="y is constant"):
        fit_moe(X, np.full(len(X), 3.0), 2)


@pytest.mark.integration
def test_n_jobs_follows_scikit_learn(data):
    X, y, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = DistributedMoERegressor(2, 2, backend="local", n_jobs=-1, random_state=0).fit(X, y)
        b = DistributedMoERegressor(2, 2, backend="serial", random_state=0).fit(X, y)
    np.testing.assert_allclose(a.params_.expert_aug, b.params_.expert_aug)
    with pytest.raises(ValueError, match="no effect with backend='serial'"):
        DistributedMoERegressor(2, 2, backend="serial", n_jobs=4).fit(X, y)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("fastmoe ")


def test_a_message_counts_once_whatever_its_bytes(tmp_path, data):
    from fastmoe import aggregate_messages, fit_local

    X, y, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msgs = [fit_local(X[m::2], y[m::2], 2, random_state=m) for m in range(2)]
    msgs[0].save(tmp_path / "a.npz")
    msgs[0].save(tmp_path / "a.json")
    with pytest.raises(ValueError, match=r"messages\[2\] is the same message as messages\[0\]"):
        aggregate_messages([tmp_path / "a.npz", msgs[1], tmp_path / "a.json"])


def test_a_subnormal_local_variance_is_refused(data):
    from dataclasses import replace

    from fastmoe import LocalMessage, fit_local

    X, y, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msg = fit_local(X, y, 2, random_state=0)
    p = msg.params
    tiny = MoEParams(p.gate_coef, p.gate_intercept, p.expert_coef, p.expert_intercept,
                     [5e-324, p.expert_var[1]])
    with pytest.raises(ValueError, match="below 1e-100"):
        LocalMessage.from_bytes(replace(msg, params=tiny).to_bytes())


def test_a_loader_that_exits_is_one_failed_shard(data):
    X, y, _ = data

    def bad():
        raise SystemExit(3)

    shards = [(X[:300], y[:300]), bad, (X[300:], y[300:])]
    with pytest.warns(UserWarning, match=r"dropped shard\(s\) shard 1"):
        m = DistributedMoERegressor(2, backend="serial", on_shard_error="skip",
                                    random_state=0).fit_shards(shards)
    assert m.dropped_rows_ == 0 and m.n_features_in_ == 2


def test_fits_in_two_threads_leave_blas_as_they_found_it(data):
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    X, y, _ = data
    fit_moe(X, y, 2, random_state=0)  # every BLAS library loaded first
    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: fit_moe(X, y, 2, random_state=s), range(6)))
    after = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert after == before


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["serial", "local"])
def test_a_shard_that_hangs_is_a_shard_error_after_its_timeout(data, backend):
    import functools
    import time

    X, y, _ = data
    hangs = functools.partial(time.sleep, 30)  # a loader that does not return in time
    shards = [(X[:300], y[:300]), hangs, (X[300:], y[300:])]
    est = DistributedMoERegressor(2, backend=backend, on_shard_error="skip", random_state=0,
                                  shard_timeout=3.0)
    with pytest.warns(UserWarning, match=r"dropped shard\(s\) shard 1: timed out after 3 s"):
        est.fit_shards(shards)
    assert est.dropped_shards_ == [1] and est.n_features_in_ == 2


def test_a_sparse_or_binary_csv_is_refused_in_bounded_memory(tmp_path):
    sparse = tmp_path / "sparse.csv"
    with open(sparse, "wb") as f:
        f.truncate(64 * 2**20)  # a file of holes: NUL bytes
    with pytest.raises(ValueError, match="NUL bytes"):
        read_table(sparse)
    long = tmp_path / "long.csv"
    long.write_bytes(b"x0,y\n" + b"1," * (2**20) + b"1\n")
    with pytest.raises(ValueError, match="line longer than"):
        read_table(long)


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")
def test_sigterm_to_the_command_line_leaves_no_worker(tmp_path):
    """A SIGTERM to ``fastmoe demo`` (local process pool) ends its workers too."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "fastmoe", "demo"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    group = os.getpgid(proc.pid)

    def members():
        out = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    deadline = time.monotonic() + 120
    while len(members()) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)  # until the pool's workers have started
    if proc.poll() is not None:
        pytest.skip("the demo ended before its workers could be seen")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    deadline = time.monotonic() + 20
    while members() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = members()
    if left:
        os.killpg(group, signal.SIGKILL)
    assert left == []

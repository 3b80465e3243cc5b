"""Property-based tests of every reader of untrusted input (hypothesis).

Mutations of real messages, model files and data files (fields dropped, types
changed, values scaled by 1e300, NaN, negative, huge declared shapes,
compressed zeros, flipped bytes) must give either a valid result or the
documented one-line error: never another exception, a hang or a non-finite
model. The CLI entry points must answer exit code 0 or 2 with one line on
stderr, never a traceback, and never write non-finite predictions.
"""

import io
import json
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmoe import LocalMessage, MoEParams, aggregate_messages, fit_local
from fastmoe.cli import main
from fastmoe.datasets import make_moe_regression
from fastmoe.io import read_table

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def clean():
    X, y, _, _ = make_moe_regression(3000, 2, 2, random_state=7)
    msgs = [fit_local(X[i::3], y[i::3], 2, n_support=100, random_state=i) for i in range(3)]
    return X, y, msgs


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
    st.lists(st.floats(allow_nan=True), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                       st.integers(), max_size=2),
    st.sampled_from([1e300, -1e300, 1e400, 2.7, 0, -1, 10**30, "NaN", [[1e300]]]))
FACTORS = st.sampled_from([1e300, -1e300, 1e-300, 0.0, -1.0, float("nan"), float("inf"), 1e6])
TOP = ["format", "version", "n", "heldout_n", "heldout_loglik", "fit_time", "meta", "params"]
PARAM = ["format", "version", "n_experts", "n_features", "gate_coef", "gate_intercept",
         "expert_coef", "expert_intercept", "expert_var"]
ARRAYS = ["support", "support_mean", "support_cov"]


def _scaled(value, factor):
    with np.errstate(all="ignore"):
        return (np.asarray(value, dtype=float) * factor).tolist()


@st.composite
def header_mutations(draw):
    """A list of (path, op, value) edits of the JSON header."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        inner = draw(st.booleans())
        key = draw(st.sampled_from(PARAM if inner else TOP))
        op = draw(st.sampled_from(["drop", "set", "scale"]))
        value = draw(FACTORS if op == "scale" else VALUES)
        edits.append((("params", key) if inner else (key,), op, value))
    return edits


def _edit(fields: dict, edits) -> dict:
    for path, op, value in edits:
        where = fields
        for key in path[:-1]:
            where = where.get(key) if isinstance(where, dict) else None
        if not isinstance(where, dict):
            continue
        key = path[-1]
        if op == "drop":
            where.pop(key, None)
        elif op == "set":
            where[key] = value
        elif key in where:
            try:
                where[key] = _scaled(where[key], value)
            except (TypeError, ValueError):
                where[key] = value
    return fields


def _npy(arr=None, *, shape=None, descr="<f8", payload=b"") -> bytes:
    buf = io.BytesIO()
    if arr is not None:
        np.lib.format.write_array(buf, arr, allow_pickle=False)
    else:  # a header that declares ``shape`` over ``payload``
        np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                                   "shape": shape})
        buf.write(payload)
    return buf.getvalue()


ARRAY_EDITS = st.one_of(
    st.tuples(st.just("fill"), st.sampled_from([np.nan, np.inf, 1e300, -1e300, 0.0, 1e-320])),
    st.tuples(st.just("shape"), st.sampled_from(["T", "ravel", "empty", "3d", "wide"])),
    st.tuples(st.just("dtype"), st.sampled_from(["int64", "bool", "<U3", "float32", "complex"])),
    st.tuples(st.just("declare"), st.sampled_from([(10**9, 2), (2**40,), (10**6, 10**6),
                                                   (-1, 2), (3, 2)])),
    st.tuples(st.just("zeros"), st.integers(10**5, 10**8)),
    st.tuples(st.just("drop"), st.just(None)),
)


def _array_member(arr, edit) -> bytes | None:
    kind, arg = edit
    if kind == "drop":
        return None
    if kind == "fill":
        return _npy(np.full(arr.shape, arg))
    if kind == "shape":
        new = {"T": arr.T, "ravel": arr.ravel(), "empty": arr[:0], "3d": arr[None],
               "wide": np.hstack([arr, arr]) if arr.ndim == 2 else np.append(arr, 1.0)}[arg]
        return _npy(np.ascontiguousarray(new))
    if kind == "dtype":
        if arg == "<U3":
            return _npy(np.full(arr.shape, "abc"))
        return _npy(arr.astype(arg))
    if kind == "declare":
        try:
            return _npy(shape=arg, payload=b"\0" * 64)
        except ValueError:
            return _npy(shape=(3, 2), payload=b"\0" * 8)
    return _npy(np.zeros((arg // 2, 2)))  # compressed zeros: tiny archive, large array


def _archive(header: dict, arrays: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("header.npy", _npy(np.frombuffer(json.dumps(header).encode(), np.uint8)))
        for name, member in arrays.items():
            z.writestr(f"{name}.npy", member)
    return buf.getvalue()


def _read_or_refuse(data: bytes):
    """A valid message, or None after a one-line ValueError."""
    try:
        msg = LocalMessage.from_bytes(data)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None
    msg.validate()
    return msg


def _aggregates_finitely(msgs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = aggregate_messages(msgs, random_state=0, n_init=1)
        except ValueError as exc:
            assert "\n" not in str(exc)
            return
    p = res.params
    for a in (p.gate_coef, p.expert_coef, p.expert_intercept, p.expert_var):
        assert np.all(np.isfinite(a))
    assert np.all(p.expert_var > 0)


@FUZZ
@given(edits=header_mutations(), array_edit=st.one_of(st.none(), st.tuples(
    st.sampled_from(ARRAYS), ARRAY_EDITS)))
def test_mutated_messages_are_read_or_refused(clean, edits, array_edit):
    _, _, msgs = clean
    msg = msgs[0]
    fields = msg._fields()
    arrays = {name: _npy(np.asarray(fields.pop(name), float)) for name in ARRAYS}
    if array_edit is not None:
        name, edit = array_edit
        member = _array_member(np.asarray(getattr(msg, name)), edit)
        if member is None:
            arrays.pop(name)
        else:
            arrays[name] = member
    got = _read_or_refuse(_archive(_edit(fields, edits), arrays))
    if got is not None:
        _aggregates_finitely([got, *msgs[1:]])


@FUZZ
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_corrupted_message_bytes_are_read_or_refused(clean, flips, cut):
    _, _, msgs = clean
    data = bytearray(msgs[1].to_bytes())
    for where, byte in flips:
        data[int(where * len(data))] = byte
    if cut is not None:
        data = data[: int(cut * len(data))]
    got = _read_or_refuse(bytes(data))
    if got is not None:
        _aggregates_finitely([msgs[0], got, msgs[2]])


def _cli(argv):
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    text = err.getvalue()
    assert code in (0, 2), (code, text)
    assert "Traceback" not in text
    if code == 2:
        errors = [line for line in text.splitlines() if ": error: " in line]
        assert len(errors) == 1 and text.strip().splitlines()[-1] == errors[0], text
    return code


@FUZZ
@given(edits=header_mutations(), suffix=st.sampled_from([".json", ".npz"]))
def test_cli_predict_on_mutated_models(clean, edits, suffix):
    X, _, msgs = clean
    record = msgs[0].params.to_dict()
    record = _edit({"params": record}, [(("params", *p[1:]), op, v) if p[0] == "params"
                                        else (("params", p[0]), op, v) for p, op, v in edits])
    record = record.get("params", {})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / f"m{suffix}"
        if suffix == ".json":
            model.write_text(json.dumps(record))
        else:
            arrays = {}
            for k, v in record.items():
                try:
                    a = np.asarray(v)
                except ValueError:
                    a = np.asarray(str(v))
                arrays[k] = a if a.dtype != object else np.asarray(str(v))
            np.savez(model, **arrays)
        np.savez(tmp / "x.npz", X=X[:50])
        code = _cli(["predict", "--model", str(model), "--data", str(tmp / "x.npz"),
                     "--output", str(tmp / "p.csv")])
        if code == 0:
            pred = np.loadtxt(tmp / "p.csv", delimiter=",", skiprows=1)
            assert pred.shape == (50, 2) and np.all(np.isfinite(pred))
            MoEParams.load(model)  # what predict accepted loads
        else:
            assert not (tmp / "p.csv").exists()


@FUZZ
@given(edits=header_mutations())
def test_cli_aggregate_on_mutated_json_messages(clean, edits):
    _, _, msgs = clean
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = []
        for i, m in enumerate(msgs):
            fields = m._fields()
            if i == 1:
                fields = _edit(fields, edits)
            paths.append(tmp / f"m{i}.json")
            paths[-1].write_text(json.dumps(fields))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = _cli(["aggregate", *map(str, paths), "--output", str(tmp / "a.json")])
        if code == 0:
            p = MoEParams.load(tmp / "a.json")
            assert np.all(np.isfinite(p.expert_coef)) and np.all(p.expert_var > 0)


CELLS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["", "y", "x0", "nan", "1e400", "abc", "1,2", "\"3\"", " "]),
                  st.integers(-10, 10).map(str))


@FUZZ
@given(rows=st.lists(st.lists(CELLS, min_size=0, max_size=4), min_size=0, max_size=6),
       header=st.sampled_from(["x0,x1,y", "x0,y", "y", "", "a,b", "y,y", "x0,x1,x2,y"]))
def test_mutated_csv_tables_are_read_or_refused(rows, header):
    text = header + "\n" + "\n".join(",".join(r) for r in rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        path.write_text(text)
        try:
            X, y = read_table(path)
        except ValueError as exc:
            assert "\n" not in str(exc)
        else:
            assert X.ndim == 2 and (y is None or y.shape == (X.shape[0],))
        code = _cli(["fit", "--data", str(path), "--n-experts", "1", "--n-init", "1",
                     "--output", str(Path(tmp) / "m.json")])
        if code == 0:
            assert np.all(np.isfinite(MoEParams.load(Path(tmp) / "m.json").expert_var))


@FUZZ
@given(name=st.sampled_from(["X", "y"]), edit=ARRAY_EDITS)
def test_mutated_npz_tables_are_read_or_refused(clean, name, edit):
    X, y, _ = clean
    arrays = {"X": _npy(X[:40]), "y": _npy(y[:40])}
    member = _array_member({"X": X[:40], "y": y[:40]}[name], edit)
    if member is None:
        arrays.pop(name)
    else:
        arrays[name] = member
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.npz"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for k, v in arrays.items():
                z.writestr(f"{k}.npy", v)
        path.write_bytes(buf.getvalue())
        _cli(["fit-local", "--data", str(path), "--n-experts", "1", "--n-init", "1",
              "--output", str(Path(tmp) / "m.npz")])


ROUND_TOP = ["format", "version", "model", "n", "log_likelihood", "gate_objective"]
ROUND_ARRAYS = ["expert_gram", "gate_gradient", "gate_hessian"]


@pytest.fixture(scope="module")
def round_at():
    from fastmoe.machine import round_statistics

    X, y, _, _ = make_moe_regression(2000, 2, 3, random_state=3)
    params = aggregate_messages([fit_local(X[i::2], y[i::2], 3, n_support=100, random_state=i)
                                 for i in range(2)], random_state=0).params
    return params, round_statistics(X[::2], y[::2], params)


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(ROUND_TOP), st.sampled_from(["drop", "set"]),
                                VALUES), max_size=2),
       array_edit=st.one_of(st.none(), st.tuples(st.sampled_from(ROUND_ARRAYS), ARRAY_EDITS)),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      max_size=3))
def test_mutated_round_statistics_are_read_or_refused(round_at, edits, array_edit, flips):
    from fastmoe.message import round_from_bytes, round_to_bytes
    from fastmoe.server import refine_step

    params, stats = round_at
    with np.load(io.BytesIO(round_to_bytes(stats, params))) as z:
        arrays = {k: _npy(z[k]) for k in ROUND_ARRAYS}
        header = json.loads(z["header"].tobytes())
    header = _edit(header, [((key,), op, value) for key, op, value in edits])
    if array_edit is not None:
        name, edit = array_edit
        member = _array_member(np.asarray(stats.experts.gram if name == "expert_gram"
                                          else getattr(stats.gates, name[5:])), edit)
        if member is None:
            arrays.pop(name)
        else:
            arrays[name] = member
    data = bytearray(_archive(header, arrays))
    for where, byte in flips:
        data[int(where * len(data))] = byte
    try:
        got = round_from_bytes(bytes(data), params)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    try:
        new = refine_step(params, got)
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    for a in (new.gate_aug, new.expert_aug, new.expert_var):
        assert np.all(np.isfinite(a))

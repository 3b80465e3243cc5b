"""The command line: round trip, errors, demo."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fastmoe import MoEParams
from fastmoe.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_round_trip(tmp_path, capsys):
    d = tmp_path
    code, out, _ = run(capsys, "simulate", "--n-samples", "6000", "--n-features", "2",
                       "--n-experts", "2", "--shards", "3", "--output", str(d / "data.npz"),
                       "--truth", str(d / "truth.json"))
    assert code == 0 and "data_2.npz" in out
    for m in range(3):
        code, out, _ = run(capsys, "fit-local", "--data", str(d / f"data_{m}.npz"),
                           "--n-experts", "2", "--n-support", "200", "--seed", str(m),
                           "--output", str(d / f"msg_{m}.npz"))
        assert code == 0, out
    code, out, _ = run(capsys, "aggregate", *[str(d / f"msg_{m}.npz") for m in range(3)],
                       "--output", str(d / "model.json"))
    assert code == 0 and "| global expert |" in out
    code, out, _ = run(capsys, "evaluate", "--model", str(d / "model.json"), "--data",
                       str(d / "data_0.npz"), "--truth", str(d / "truth.json"), "--json")
    metrics = json.loads(out)
    assert code == 0 and metrics["rmse_experts"] < 0.1
    code, out, _ = run(capsys, "predict", "--model", str(d / "model.json"), "--data",
                       str(d / "data_1.npz"), "--output", str(d / "pred.csv"))
    pred = np.loadtxt(d / "pred.csv", delimiter=",", skiprows=1)
    assert code == 0 and pred.shape == (2000, 2)
    code, out, _ = run(capsys, "fit", "--data", str(d / "data_0.npz"), "--n-experts", "2",
                       "--output", str(d / "central.npz"))
    assert code == 0 and MoEParams.load(d / "central.npz").n_experts == 2


@pytest.mark.parametrize("argv,match", [
    (["evaluate", "--model", "missing.json", "--data", "x.npz"], "cannot read model file"),
    (["fit", "--data", "missing.csv", "--n-experts", "2", "--output", "m.json"],
     "does not exist"),
    (["aggregate", "nothere.npz", "--output", "m.json"], "does not exist"),
])
def test_user_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_malformed_message_file(tmp_path, capsys):
    (tmp_path / "m.npz").write_bytes(b"junk")
    code, _, err = run(capsys, "aggregate", str(tmp_path / "m.npz"), "--output",
                       str(tmp_path / "o.json"))
    assert code == 2 and "not a fastmoe.LocalMessage" in err


def test_help_of_every_command(tmp_path):
    # run outside the source tree, so that the installed package is the one imported
    for cmd in ["demo", "simulate", "fit", "fit-local", "aggregate", "predict", "evaluate",
                "study"]:
        res = subprocess.run([sys.executable, "-m", "fastmoe", cmd, "--help"], cwd=tmp_path,
                             capture_output=True, text=True, check=True)
        assert "usage: fastmoe " + cmd in res.stdout


def test_demo_prints_its_table(capsys):
    code, out, _ = run(capsys, "demo", "--n-samples", "3000", "--n-features", "2",
                       "--n-experts", "2", "--n-machines", "2", "--backend", "serial",
                       "--design", "separated", "--costs", "kl", "w2")
    assert code == 0
    for row in ("centralised EM", "distributed OT-KL", "distributed OT-W2", "truth",
                "learning time", "bytes sent", "ARI"):
        assert row in out

"""The command line: round trip, errors, demo."""

import argparse
import json
import re
import subprocess
import sys
import warnings

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


@pytest.mark.integration
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
    for row in ("centralised", "distributed KL", "distributed W2", "truth",
                "learn s", "sent kB", "ARI", "Lower is better", "Higher is better",
                "Verdict: with the rows kept on 2 machines"):
        assert row in out
    verdict = " ".join(out.split("Verdict:")[1].split())
    assert re.search(r"the KL fit (came within [0-9.]+ nats per test row of the centralised "
                     r"fit \((above|below) it\)|matched the centralised fit's test "
                     r"log-likelihood to [0-9.e+-]+ nats per row), with [0-9.]+ times its "
                     r"prediction error\. (It learned in|Its learning time was) [0-9.]+ times "
                     r"the centralised fit's", verdict), verdict
    # an 80-column terminal shows every line whole
    assert max(len(line) for line in out.splitlines()) <= 80
    # every column of the table is defined below it
    header = next(line for line in out.splitlines() if line.startswith("estimator"))
    for name in ("learn s", "gates", "experts", "var", "RPE", "ARI", "loglik", "sent kB"):
        assert name in header and f"  {name:<8}  " in out.split(header)[1]


def test_the_demo_progress_bar_reads_well_and_its_clock_ticks():
    """On a terminal the bar says what runs and how long it has run, with
    no doubled separators, and refreshes during a step."""
    import io
    import time

    from fastmoe.cli import _Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stderr", term)
        with _Progress(2) as progress:
            progress.step("centralised EM on all training rows")
            time.sleep(2.5)  # a long step: the clock goes on
            progress.done()
    shown = term.getvalue()
    assert "fitting: centralised EM on all training rows (step 0 of 2, 00:00 so far)" in shown
    assert "00:02 so far" in shown
    assert ": :" not in shown


def test_every_option_has_help_and_shows_its_default():
    from fastmoe.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "demo" in a.choices)
    for name, p in sub.choices.items():
        text = " ".join(p.format_help().split())
        for action in p._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            if not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
                assert f"(default: {action.default})" in text, (name, action.dest)


def test_simulate_from_truth_draws_from_that_truth(tmp_path, capsys):
    truth_file, data = tmp_path / "truth.json", tmp_path / "new.npz"
    code, *_ = run(capsys, "simulate", "--n-samples", "100", "--n-features", "3",
                   "--n-experts", "2", "--output", str(tmp_path / "train.npz"),
                   "--truth", str(truth_file))
    assert code == 0
    # sizes come from the model, not from the (contradicting) defaults
    code, *_ = run(capsys, "simulate", "--from-truth", str(truth_file), "--n-samples",
                   "40000", "--seed", "7", "--output", str(data), "--truth",
                   str(tmp_path / "copy.json"))
    assert code == 0
    truth = MoEParams.load(truth_file)
    assert MoEParams.load(tmp_path / "copy.json").to_dict() == truth.to_dict()
    with np.load(data) as f:
        X, y = f["X"], f["y"]
    assert X.shape == (40000, 3)
    # the data are those of the truth: a fit recovers it
    from fastmoe import fit_moe
    from fastmoe.metrics import parameter_rmse

    fit = fit_moe(X, y, 2, random_state=0)
    assert parameter_rmse(fit.params, truth)["experts"] < 0.05
    code, _, err = run(capsys, "simulate", "--from-truth", str(tmp_path / "none.json"),
                       "--output", str(data))
    assert code == 2 and "none.json" in err and err.count("\n") == 1


def test_rounds_of_another_family_climb_two_tracks_by_files(tmp_path, capsys):
    """For Poisson experts `fastmoe refine` climbs from the first round's two
    best starts side by side, as the estimator does (fastmoe.server.Tracks,
    state version 2), and reaches its model in its rounds; a state of tracks
    that does not hold together is refused with one line."""
    from fastmoe.datasets import make_moe_regression
    from fastmoe.machine import round_statistics
    from fastmoe.server import default_tracks, refine

    d = tmp_path
    X, y, _, _ = make_moe_regression(3000, 2, 2, family="poisson", random_state=3)
    data = [(X[i], y[i]) for i in np.array_split(np.arange(len(y)), 3)]
    shards = []
    for m, (Xm, ym) in enumerate(data):
        shards.append(str(d / f"data_{m}.npz"))
        np.savez(shards[-1], X=Xm, y=ym)
    with warnings.catch_warnings():  # unconverged on purpose: poor starts
        warnings.simplefilter("ignore")
        for m in range(3):
            assert run(capsys, "fit", "--data", shards[m], "--n-experts", "2", "--family",
                       "poisson", "--max-iter", "2", "--seed", str(m), "--output",
                       str(d / f"m{m}.json"))[0] == 0
    starts = [MoEParams.load(d / f"m{m}.json") for m in range(3)]

    def evaluate(models):
        return [sum((round_statistics(Xm, ym, model) for Xm, ym in data[1:]),
                    round_statistics(*data[0], model)) for model in models], 0.0

    assert default_tracks("poisson") == 2
    want = refine(starts[0], evaluate, alternatives=starts[1:], tracks=2, max_rounds=30)
    code, out, _ = run(capsys, "refine", "--start", str(d / "m0.json"), "--also",
                       str(d / "m1.json"), str(d / "m2.json"), "--output", str(d / "r0.json"))
    assert code == 0 and "best 2" in out
    assert json.loads((d / "r0.json").read_text())["version"] == 2
    k = 0
    while "rounds over" not in out:
        stats = _round_files(capsys, d, k, shards)
        code, out, err = run(capsys, "refine", *stats, "--state", str(d / f"r{k}.json"),
                             "--output", str(d / f"r{k + 1}.json"), "--model",
                             str(d / "m.json"))
        assert code == 0, err
        k += 1
    assert k == len(want.history) >= 3
    got = MoEParams.load(d / "m.json")
    np.testing.assert_allclose(got.expert_aug, want.params.expert_aug, rtol=1e-12)
    np.testing.assert_allclose(got.gate_aug, want.params.gate_aug, rtol=1e-12, atol=1e-14)

    state = json.loads((d / "r1.json").read_text())
    for change, words in [({"tracks": 99}, "more than"),
                          ({"starts": [state["live"][0]["model"]]}, "not both"),
                          ({"live": state["live"][:1] * 3}, "at most 2")]:
        (d / "bad.json").write_text(json.dumps({**state, **change}))
        code, _, err = run(capsys, "refine", *stats, "--state", str(d / "bad.json"),
                           "--output", str(d / "x.json"))
        assert code == 2 and words in err and err.count("\n") == 1, (words, err)
    code, _, err = run(capsys, "refine", *stats, "--state", str(d / "r1.json"), "--tracks",
                       "2", "--output", str(d / "x.json"))
    assert code == 2 and "--tracks goes with --start" in err
    assert not (d / "x.json").exists()


def _round_files(capsys, d, k, shards) -> list:
    """`fastmoe round` on every shard at every candidate of round ``k``
    (``r{k}.candidate_*.json`` in ``d``): the statistics files, by shard."""
    stats = []
    for m, shard in enumerate(shards):
        for j, cand in enumerate(sorted(d.glob(f"r{k}.candidate_*.json"))):
            stats.append(str(d / f"s{k}_{m}_{j}.npz"))
            assert run(capsys, "round", "--data", shard, "--model", str(cand),
                       "--output", stats[-1])[0] == 0
    return stats


def test_refinement_rounds_by_files(tmp_path, capsys):
    """`fastmoe refine` at the server and `fastmoe round` on every shard at
    every candidate run the estimator's server loop (fastmoe.server.refine)
    and reach the same model in the same rounds; bad files are refused with
    one line."""
    from fastmoe.machine import round_statistics
    from fastmoe.server import refine

    d = tmp_path
    code, _, _ = run(capsys, "simulate", "--n-samples", "4000", "--n-features", "2",
                     "--n-experts", "2", "--shards", "4", "--output", str(d / "data.npz"))
    assert code == 0
    shards = [str(d / f"data_{m}.npz") for m in range(4)]
    # a poor start (three EM iterations on one shard): several rounds, of
    # every kind of step
    with warnings.catch_warnings():  # unconverged on purpose
        warnings.simplefilter("ignore")
        assert run(capsys, "fit", "--data", shards[0], "--n-experts", "2", "--max-iter", "3",
                   "--output", str(d / "m0.json"))[0] == 0
    start = MoEParams.load(d / "m0.json")

    # the estimator's loop in Python, over the same shards in the same order
    data = []
    for shard in shards:
        with np.load(shard) as z:
            data.append((z["X"], z["y"]))

    def evaluate(models):
        totals = []
        for model in models:
            parts = [round_statistics(X, y, model) for X, y in data]
            totals.append(parts[0] + parts[1] + parts[2] + parts[3])
        return totals, 0.0

    want = refine(start, evaluate, max_rounds=30)

    code, out, _ = run(capsys, "refine", "--start", str(d / "m0.json"),
                       "--output", str(d / "r0.json"))
    assert code == 0 and (d / "r0.candidate_0.json").exists()
    k, stats = 0, []
    while "rounds over" not in out:
        stats = _round_files(capsys, d, k, shards)
        code, out, _ = run(capsys, "refine", *stats, "--state", str(d / f"r{k}.json"),
                           "--output", str(d / f"r{k + 1}.json"), "--model", str(d / "m.json"))
        assert code == 0, out
        k += 1
    assert k == len(want.history) >= 4 and "converged" in out
    got = MoEParams.load(d / "m.json")
    np.testing.assert_array_equal(got.expert_aug, want.params.expert_aug)
    np.testing.assert_array_equal(got.gate_aug, want.params.gate_aug)
    np.testing.assert_array_equal(got.expert_var, want.params.expert_var)

    # refused, one line each, and nothing written
    state = str(d / f"r{k - 1}.json")
    for args, words in [((*stats, "--state", state, "--output", state), "never"),
                        ((*stats, "--state", str(d / f"r{k}.json"), "--output",
                          str(d / "x.json")), "over"),
                        ((*stats, stats[0], "--state", state, "--output", str(d / "x.json")),
                         "counts once"),
                        ((*stats[1:], "--state", state, "--output", str(d / "x.json")),
                         "machine"),
                        ((str(d / "s0_0_0.npz"), "--state", state, "--output",
                          str(d / "x.json")), "none of this round"),
                        (("--output", str(d / "x.json")), "--start")]:
        code, _, err = run(capsys, "refine", *args)
        assert code == 2 and words in err and err.count("\n") == 1, (words, err)
    assert not (d / "x.json").exists()
    (d / "bad.json").write_text('{"format": "fastmoe-rounds", "version": 1, "model": 3}')
    code, _, err = run(capsys, "refine", *stats, "--state", str(d / "bad.json"),
                       "--output", str(d / "x.json"))
    assert code == 2 and "bad.json" in err and err.count("\n") == 1


def test_fit_local_defaults_are_those_of_fit_local():
    import inspect

    from fastmoe import fit_local
    from fastmoe.cli import build_parser

    args = build_parser().parse_args(["fit-local", "--data", "d.npz", "--n-experts", "2",
                                      "--output", "m.npz"])
    defaults = inspect.signature(fit_local).parameters
    for name in ("n_init", "gate_penalty", "n_support", "support", "heldout"):
        assert getattr(args, name) == defaults[name].default, name
    from fastmoe import fit_moe

    assert args.max_iter == inspect.signature(fit_moe).parameters["max_iter"].default


def test_experts_of_other_families_from_the_command_line(tmp_path, capsys):
    from fastmoe.datasets import make_moe_regression

    X, y, _, _ = make_moe_regression(3000, 2, 2, family="poisson", random_state=0)
    np.savez(tmp_path / "counts.npz", X=X, y=y)
    code, out, _ = run(capsys, "fit", "--data", str(tmp_path / "counts.npz"), "--n-experts",
                       "2", "--family", "poisson", "--output", str(tmp_path / "m.json"))
    assert code == 0, out
    assert MoEParams.load(tmp_path / "m.json").family == "poisson"
    for m in range(2):
        np.savez(tmp_path / f"counts_{m}.npz", X=X[m::2], y=y[m::2])
        code, out, _ = run(capsys, "fit-local", "--data", str(tmp_path / f"counts_{m}.npz"),
                           "--n-experts", "2", "--family", "poisson",
                           "--output", str(tmp_path / f"msg_{m}.npz"))
        assert code == 0, out
    code, out, err = run(capsys, "aggregate", str(tmp_path / "msg_0.npz"),
                         str(tmp_path / "msg_1.npz"), "--output", str(tmp_path / "agg.json"))
    assert code == 0, err  # the families' KL reduction
    assert MoEParams.load(tmp_path / "agg.json").family == "poisson"

    # the rounds by files reach the estimator's loop's model (fastmoe.server.refine)
    from fastmoe.machine import round_statistics
    from fastmoe.server import refine

    parts = [(X[m::2], y[m::2]) for m in range(2)]

    def evaluate(models):
        return [round_statistics(*parts[0], mo) + round_statistics(*parts[1], mo)
                for mo in models], 0.0

    want = refine(MoEParams.load(tmp_path / "agg.json"), evaluate, max_rounds=30)
    code, out, err = run(capsys, "refine", "--start", str(tmp_path / "agg.json"),
                         "--output", str(tmp_path / "r0.json"))
    assert code == 0, err
    k = 0
    while "rounds over" not in out:
        files = []
        for m in range(2):
            for j, cand in enumerate(sorted(tmp_path.glob(f"r{k}.candidate_*.json"))):
                files.append(str(tmp_path / f"s{k}_{m}_{j}.npz"))
                code, _, err = run(capsys, "round", "--data", str(tmp_path / f"counts_{m}.npz"),
                                   "--model", str(cand), "--output", files[-1])
                assert code == 0, err
        code, out, err = run(capsys, "refine", *files, "--state", str(tmp_path / f"r{k}.json"),
                             "--output", str(tmp_path / f"r{k + 1}.json"), "--model",
                             str(tmp_path / "refined.json"))
        assert code == 0, err
        k += 1
    assert k == len(want.history) and "converged" in out
    got = MoEParams.load(tmp_path / "refined.json")
    assert got.family == "poisson"
    np.testing.assert_array_equal(got.expert_aug, want.params.expert_aug)
    np.testing.assert_array_equal(got.gate_aug, want.params.gate_aug)
    # a round file of these experts is checked before use
    with np.load(files[0]) as z:
        arrays = dict(z)
    arrays["complete"][0, 1] += 1.0
    np.savez(tmp_path / "forged.npz", **arrays)
    code, _, err = run(capsys, "refine", str(tmp_path / "forged.npz"), "--state",
                       str(tmp_path / f"r{k - 1}.json"), "--output", str(tmp_path / "x.json"))
    assert code == 2 and "symmetric" in err and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()
    code, out, err = run(capsys, "fit", "--data", str(tmp_path / "counts.npz"), "--n-experts",
                         "2", "--family", "gamma", "--output", str(tmp_path / "g.json"))
    assert code == 2 and "y > 0" in err


def test_a_machine_without_a_message_takes_part_in_a_round_by_files(tmp_path, capsys):
    """A shard too small for `fastmoe fit-local` runs `fastmoe round`, and
    `fastmoe refine` counts its rows with the others' (round files are not
    tied to messages)."""
    d = tmp_path
    assert run(capsys, "simulate", "--n-samples", "2000", "--n-features", "2",
               "--n-experts", "2", "--shards", "2", "--output", str(d / "data.npz"))[0] == 0
    rng = np.random.default_rng(0)
    np.savez(d / "tiny.npz", X=rng.normal(size=(5, 2)), y=rng.normal(size=5))
    shards = [str(d / "data_0.npz"), str(d / "data_1.npz"), str(d / "tiny.npz")]
    assert run(capsys, "fit", "--data", shards[0], "--n-experts", "2",
               "--output", str(d / "m0.json"))[0] == 0
    assert run(capsys, "refine", "--start", str(d / "m0.json"),
               "--output", str(d / "r0.json"))[0] == 0
    stats = _round_files(capsys, d, 0, shards)
    code, out, _ = run(capsys, "refine", *stats, "--state", str(d / "r0.json"),
                       "--output", str(d / "r1.json"))
    assert code == 0 and "2005 rows" in out, out

"""Command line: ``fastmoe <command> [options]`` (``fastmoe <command> --help``).

Data files are .npz (arrays X and y), .csv or .parquet (response in the column
"y"); models are written as .json or .npz, messages as .npz or .json. A user
mistake (a missing, empty, truncated or malformed file, a wrong key or shape,
an overflow, a bad option value) is reported as one line on stderr with exit
code 2, never a traceback (``FASTMOE_TRACEBACK=1`` shows one for an error
that is not a user mistake). Warnings are one line each on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

#: exit status of a user mistake
USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (it prints usage and the error)."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(USAGE_ERROR)


__all__ = ["main"]


def _checked(convert, ok, expected: str):
    """An argparse type: ``convert(text)`` where ``ok`` holds of it, else a
    one-line error saying what was expected."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value:g}")
        return value
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "an integer >= 1")
_fraction = _checked(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
_non_negative = _checked(float, lambda v: 0.0 <= v < float("inf"), "a finite number >= 0")
_level = _checked(float, lambda v: 0.5 <= v < 1.0, "a level in [0.5, 1) (0.9: a 90% interval)")


def _auto_or_non_negative(text: str):
    return "auto" if text == "auto" else _non_negative(text)


def _auto_or_positive_int(text: str):
    return "auto" if text == "auto" else _positive_int(text)


def _suffix(path, allowed, what) -> Path:
    """Check an output path's type before any work is done."""
    path = Path(path)
    if path.suffix not in allowed:
        raise ValueError(f"unknown {what} type {path.suffix!r} ({str(path)!r}); use "
                         f"{' or '.join(allowed)}.")
    return path


def _table(rows, header) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def _read(path, need_y=True):
    from ._validation import check_X, check_y
    from .io import read_table

    X, y = read_table(path)
    if need_y and y is None:
        raise ValueError(f"{path} has no response (an array or column named 'y').")
    X = check_X(X, name=f"X of {path}")
    return X, None if y is None else check_y(y, X.shape[0], name=f"y of {path}")


def _load_model(path):
    from . import MoEParams

    return MoEParams.load(path)


# ----------------------------------------------------------------------------
# demo: the main job
# ----------------------------------------------------------------------------
#: the demo's output fits an 80-column terminal
DEMO_WIDTH = 79

#: the demo table's columns: header and the line that defines it
_DEMO_COLUMNS = (
    ("learn s", "learning time in seconds: EM on all training rows; for a distributed fit "
     "the slowest local fit plus the server's reduction (the paper's figure), and the "
     "refinement rounds. Lower is better."),
    ("gates", "root mean squared error of the gate coefficients against the true model, "
     "after matching estimated to true experts. Lower is better."),
    ("experts", "the same for the experts' intercepts and slopes. Lower is better."),
    ("var", "the same for the experts' noise variances. Lower is better."),
    ("RPE", "relative prediction error on the test rows, sum (y - E[y|x])^2 / sum y^2. "
     "Lower is better; the truth's is the noise floor."),
    ("ARI", "adjusted Rand index of each test row's most probable expert against the "
     "expert that drew it (1 is perfect). Higher is better."),
    ("loglik", "mean log-likelihood of a test row, in nats. Higher is better."),
    ("sent kB", "kilobytes of the machines' one-shot messages, all machines together "
     "(each round's statistics are counted in the notes below)."),
)
_CENTRAL = "centralised"


def _demo_table(rows) -> str:
    """Right-aligned columns (the estimator's name left-aligned), two spaces apart."""
    header = ["estimator", *(name for name, _ in _DEMO_COLUMNS)]
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join([r[0].ljust(widths[0])] +
                               [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip()
                     for r in cells)


class _Progress:
    """A tqdm bar over the demo's steps, on a terminal only, whose clock keeps
    ticking during a long step (a thread refreshes it every second)."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, file=sys.stderr, disable=not sys.stderr.isatty(),
                        leave=False, bar_format="{desc} (step {n_fmt} of {total_fmt}, "
                        "{elapsed} so far)")
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)

    def _tick(self):
        while not self._stop.wait(1.0):
            self.bar.refresh()

    def step(self, what: str):
        """Show what runs now."""
        self.bar.set_description_str(f"fitting: {what}")

    def done(self):
        self.bar.update()

    def __enter__(self):
        if not self.bar.disable:
            self._ticker.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.bar.close()


def cmd_demo(args) -> int:
    import textwrap

    from . import DistributedMoERegressor, fit_moe
    from ._linalg import resolve_threads
    from .datasets import make_moe_regression
    from .diagnostics import model_metrics

    def say(text, **kw):
        print(textwrap.fill(text, DEMO_WIDTH, break_on_hyphens=False, **kw), flush=True)

    X, y, truth, labels = make_moe_regression(args.n_samples, args.n_features, args.n_experts,
                                              design=args.design, random_state=args.seed)
    n_train = int(0.9 * len(y))
    Xtr, ytr, Xte, yte, lte = X[:n_train], y[:n_train], X[n_train:], y[n_train:], \
        labels[n_train:]
    say(f"fastmoe demo: the {args.design} design, d={args.n_features} covariates, "
        f"K={args.n_experts} experts; {n_train} training rows, fitted on one machine "
        f"(centralised EM) and split over M={args.n_machines} machines (one message each, "
        f"optimal-transport aggregation, then refinement rounds; backend={args.backend}); "
        f"{len(yte)} test rows.")
    rows, metrics, notes = [], {}, []

    def add(name, params, learn, sent):
        m = metrics[name] = model_metrics(params, Xte, yte, truth=truth, labels=lte)
        rows.append([name, "-" if learn is None else f"{learn:.2f}", f"{m['rmse_gates']:.3f}",
                     f"{m['rmse_experts']:.3f}", f"{m['rmse_variances']:.3f}",
                     f"{m['rpe']:.4f}", f"{m['ari']:.3f}", f"{m['loglik'] / len(yte):.4f}",
                     "-" if sent is None else f"{sent / 1e3:.0f}"])

    from . import _kernels

    _kernels.warm_up(resolve_threads(None))  # the reduction kernel: JIT, untimed
    times, fits = {}, {}
    with warnings.catch_warnings(), _Progress(1 + len(args.costs)) as progress:
        warnings.simplefilter("ignore")  # convergence is reported in the table's numbers
        progress.step("centralised EM on all training rows")
        t0 = time.perf_counter()
        central = fit_moe(Xtr, ytr, args.n_experts, n_init=args.n_init, random_state=args.seed)
        times[_CENTRAL] = time.perf_counter() - t0
        progress.done()
        add(_CENTRAL, central.params, times[_CENTRAL], None)
        notes.append(f"centralised EM: {args.n_init} starts, {central.n_iter} iterations of "
                     f"the best, {times[_CENTRAL]:.2f} s.")
        for cost in args.costs:
            name = f"distributed {cost.upper()}"
            progress.step(f"{args.n_machines} local fits, the {cost.upper()} reduction and "
                          "the rounds")
            t0 = time.perf_counter()
            dist = fits[name] = DistributedMoERegressor(
                args.n_experts, args.n_machines, cost=cost, backend=args.backend,
                n_init=args.n_init, random_state=args.seed).fit(Xtr, ytr)
            wall = time.perf_counter() - t0
            progress.done()
            times[name] = dist.learning_time_
            add(name, dist.params_, dist.learning_time_, dist.message_bytes_.sum())
            rounds = dist.refine_history_
            refined = "" if not rounds else (
                f" + {len(rounds)} refinement rounds "
                f"{sum(r['machine_seconds'] + r['server_seconds'] for r in rounds):.2f} s "
                f"(statistics of {_round_bytes(dist) / 1e3:.0f} kB per machine and model "
                "tried)")
            notes.append(f"{name}: slowest local fit {dist.local_fit_times_.max():.2f} s + "
                         f"reduction {dist.reduction_time_:.2f} s + the server's start of the "
                         f"rounds {dist.start_time_:.2f} s{refined}; wall time "
                         f"{wall:.2f} s (with starting any worker processes).")
    add("truth", truth, None, None)
    print()
    print(_demo_table(rows))
    print()
    print("Columns (on the test rows; parameter errors against the true model):")
    for name, text in _DEMO_COLUMNS:
        say(text, initial_indent=f"  {name:<8}  ", subsequent_indent=" " * 12)
    print()
    for note in notes:
        say(note, subsequent_indent="  ")
    print()
    say(_demo_verdict(args, metrics, times, fits, len(yte)))
    return 0


def _round_bytes(dist) -> float:
    """Bytes one machine's statistics take at the final model, as the file
    path sends them (fastmoe.message.round_to_bytes), on average."""
    from .message import round_to_bytes

    sizes = [len(round_to_bytes(stats, dist.params_)) for _, stats in dist.round_statistics_]
    return float(np.mean(sizes)) if sizes else 0.0


def _demo_verdict(args, metrics, times, fits, n_test) -> str:
    """What the distributed fit gave the user, and what it cost on this machine."""
    name = f"distributed {args.costs[0].upper()}"
    central, dist, est = metrics[_CENTRAL], metrics[name], fits[name]
    gap = (dist["loglik"] - central["loglik"]) / n_test
    closeness = (f"matched the centralised fit's test log-likelihood to {abs(gap):.1e} nats "
                 "per row" if abs(gap) < 5e-5 else
                 f"came within {abs(gap):.4f} nats per test row of the centralised fit "
                 f"({'above' if gap > 0 else 'below'} it)")
    rounds = len(est.refine_history_)
    sent = (f"one message of {est.message_bytes_.mean() / 1e3:.0f} kB each"
            + (f" and {rounds} rounds of statistics" if rounds else ""))
    ratio = times[name] / times[_CENTRAL]
    cores = os.cpu_count() or 1
    if ratio <= 1:
        cost = (f"It learned in {ratio:.2f} times the centralised fit's time (the slowest "
                "local fit plus the server's work): each machine fits only its own rows.")
    elif args.n_machines > cores or args.backend == "serial":
        cost = (f"Its learning time was {ratio:.2f} times the centralised fit's: here the "
                f"{args.n_machines} local fits shared this computer's {cores} cores"
                + (" one after another" if args.backend == "serial" else "")
                + ", each with its own EM starts; on machines of their own they run side "
                "by side, each on a share of the rows, and no row is moved.")
    else:
        cost = (f"Its learning time was {ratio:.2f} times the centralised fit's: on rows "
                "this few, the local fits' own starts and the rounds cost more than they "
                "save; the gain is that no row left its machine.")
    return (f"Verdict: with the rows kept on {args.n_machines} machines ({sent}), the "
            f"{args.costs[0].upper()} fit {closeness}, with {dist['rpe'] / central['rpe']:.3f} "
            f"times its prediction error. {cost}")


# ----------------------------------------------------------------------------
# the other commands
# ----------------------------------------------------------------------------
def cmd_simulate(args) -> int:
    from .datasets import make_moe_regression
    from .io import write_table

    out = _suffix(args.output, (".npz", ".csv", ".parquet"), "data file")
    if args.truth:
        _suffix(args.truth, (".json", ".npz"), "model file")
    if args.shards > args.n_samples:
        raise ValueError(f"--shards {args.shards} is more than --n-samples {args.n_samples}; "
                         "every shard needs at least one row.")
    truth = _load_model(args.from_truth) if args.from_truth else None
    d, K = (truth.n_features, truth.n_experts) if truth else (args.n_features, args.n_experts)
    X, y, truth, labels = make_moe_regression(args.n_samples, d, K, design=args.design,
                                              params=truth, random_state=args.seed)
    if args.shards > 1:
        parts = np.array_split(np.arange(len(y)), args.shards)
        for m, idx in enumerate(parts):
            path = out.with_name(f"{out.stem}_{m}{out.suffix}")
            write_table(path, X[idx], y[idx])
            print(path)
    else:
        write_table(out, X, y)
        print(out)
    if args.truth:
        truth.save(args.truth)
    return 0


def _fit_options(args) -> dict:
    return dict(max_iter=args.max_iter, n_init=args.n_init, gate_penalty=args.gate_penalty,
                penalty=args.penalty, l1_strength=args.l1_strength, random_state=args.seed,
                family=args.family)


def cmd_fit(args) -> int:
    from . import fit_moe

    _suffix(args.output, (".json", ".npz"), "model file")
    X, y = _read(args.data)
    fit = fit_moe(X, y, args.n_experts, **_fit_options(args))
    fit.params.save(args.output)
    print(f"log-likelihood {fit.log_likelihood:.6f} after {fit.n_iter} iterations "
          f"(converged: {fit.converged}); model written to {args.output}")
    return 0


def cmd_fit_local(args) -> int:
    from .machine import fit_local

    _suffix(args.output, (".npz", ".json"), "message file")
    X, y = _read(args.data)
    msg = fit_local(X, y, args.n_experts, n_support=args.n_support, support=args.support,
                    heldout=args.heldout, **_fit_options(args))
    msg.save(args.output)
    print(f"n={msg.n}, fit time {msg.fit_time:.2f} s, {len(msg.to_bytes())} bytes; "
          f"message written to {args.output}")
    return 0


def cmd_aggregate(args) -> int:
    from .server import aggregate_messages

    _suffix(args.output, (".json", ".npz"), "model file")
    result = aggregate_messages(args.messages, args.n_experts, cost=args.cost,
                                gate_target=args.gate_target,
                                exclude_failed=not args.keep_failed, robust=args.robust,
                                random_state=args.seed)
    result.params.save(args.output)
    print(result.report())
    failed = [args.messages[i] for i in result.excluded if i not in result.inconsistent]
    if failed:
        print(f"left out as failed local fits: {', '.join(failed)} (--keep-failed keeps them)")
    if result.inconsistent:
        named = ", ".join(args.messages[i] for i in result.inconsistent)
        print(f"left out as inconsistent with the others (--robust): {named}")
    print(f"model written to {args.output}")
    return 0


def cmd_round(args) -> int:
    from .machine import round_statistics
    from .message import save_round

    out = _suffix(args.output, (".npz",), "round statistics file")
    params = _load_model(args.model)
    X, y = _read(args.data)
    stats = round_statistics(X, y, params)
    size = save_round(out, stats, params)
    print(f"n={stats.n}, log-likelihood {stats.log_likelihood:.6f} at {args.model} "
          f"({stats.log_likelihood / stats.n:.6f} nats per row), {size} bytes; "
          f"round statistics written to {out}")
    return 0


def cmd_refine(args) -> int:
    """The server's half of the rounds: start them, or take one round's
    statistics, with the estimator's server loop (fastmoe.server.Rounds, or
    Tracks where they climb from several starts)."""
    out = _suffix(args.output, (".json",), "rounds state file")
    rounds = _start_rounds(args) if args.start else _take_round(args, out)
    _write_state(rounds, out)
    if rounds.pending:
        stem = str(Path(out).with_suffix(""))
        models = _distinct(rounds.models())
        for j, model in enumerate(models):
            model.save(f"{stem}.candidate_{j}.json")
        print(f"next round: every machine runs `fastmoe round` on its shard at each of the "
              f"{len(models)} models {stem}.candidate_0.json ... "
              f"{stem}.candidate_{len(models) - 1}.json; then `fastmoe refine "
              f"--state {out}` on all their files")
    else:
        print(f"rounds over after {len(rounds.history)} rounds ("
              + ("converged" if rounds.converged else f"not converged: --max-rounds "
                 f"{rounds.max_rounds} reached") + f"); the model kept is in {out}"
              + (f" and {args.model}" if args.model else ""))
    return 0


def _start_rounds(args):
    """``fastmoe refine --start``: the rounds before the first."""
    from .server import default_tracks, start_rounds

    if args.statistics or args.state:
        raise ValueError("--start begins the rounds: give no --state and no statistics "
                         "files with it.")
    models = [_load_model(path) for path in [args.start, *args.also]]
    if len({m.family for m in models}) > 1:
        raise ValueError("the starting models mix experts of families "
                         f"{sorted({m.family for m in models})}.")
    tracks = args.tracks or default_tracks(models[0].family)
    rounds = start_rounds(models[0], models[1:], tracks=tracks, tol=args.tol,
                          max_rounds=args.max_rounds)
    print(f"rounds started at {args.start}" + (f" and {len(args.also)} other model(s)"
                                               if args.also else "")
          + (f", climbing from the best {tracks}" if tracks > 1 else ""))
    return rounds


def _take_round(args, out: str):
    """``fastmoe refine --state``: the state after one round's files."""
    if args.tracks is not None:
        raise ValueError("--tracks goes with --start: the state holds the tracks.")
    if not (args.state and args.statistics):
        raise ValueError("give --start MODEL to begin the rounds, or --state and the "
                         "machines' round statistics files to take a round.")
    if Path(args.state).resolve() == Path(out).resolve():
        raise ValueError("--output must differ from --state: an input is never "
                         "overwritten.")
    rounds = _read_state(args.state)
    if not rounds.pending:
        raise ValueError(f"{args.state!r} holds rounds that are over; nothing to take.")
    totals = _round_totals(rounds, args.statistics)
    before = len(rounds.history)
    rounds.receive(totals, 0.0)
    last = rounds.history[-1]
    print(f"round {before + 1}: {len(args.statistics)} files, {last['rows']} rows; "
          f"log-likelihood {last['log_likelihood']:.6f} "
          f"({last['log_likelihood'] / last['rows']:.6f} nats per row), kept: "
          f"{last['step']}")
    if args.model:
        rounds.params.save(args.model)
        print(f"model kept so far written to {args.model}")
    return rounds


def _read_state(path):
    from .io import check_file
    from .server import rounds_from_dict

    check_file(path, "rounds state file", MAX_STATE_BYTES)
    try:
        data = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path!r} is not a rounds state file (not JSON: {exc}).") from None
    try:
        return rounds_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path!r}: {exc}") from None


def _write_state(rounds, path) -> None:
    from .io import write_bytes

    write_bytes(path, json.dumps(rounds.to_dict(), allow_nan=False).encode(),
                "rounds state file")


def _model_key(model) -> str:
    return json.dumps(model.to_dict(), sort_keys=True)


def _distinct(models) -> list:
    """``models`` without repeats (two tracks can propose the same model),
    in order."""
    first = {}
    for model in models:
        first.setdefault(_model_key(model), model)
    return list(first.values())


def _match_round(path, models) -> tuple:
    """(the model of ``models`` that the round file at ``path`` was computed
    at, its statistics)."""
    from .message import OtherModelError, load_round

    for model in models:
        try:
            return model, load_round(path, model)
        except OtherModelError:
            continue
    raise ValueError(f"{path!r} was computed at none of this round's {len(models)} models; "
                     "every machine must run the round at the candidate files the last "
                     "refine wrote.")


def _round_totals(rounds, paths) -> list:
    """The machines' statistics summed per pending model: each file is
    matched to the model it was computed at, counted once, and every model
    must have the same machines' rows. Two tracks can propose the same
    model: the files at it (written once, :func:`_distinct`) serve both."""
    from .message import round_digest

    models = rounds.models()
    distinct = _distinct(models)
    sums, counts, seen = {}, {}, {}
    for path in paths:
        model, stats = _match_round(path, distinct)
        digest = round_digest(stats)
        if digest in seen:
            raise ValueError(f"{path!r} holds the same statistics as {seen[digest]!r}: each "
                             "machine's round counts once.")
        seen[digest] = path
        key = _model_key(model)
        sums[key] = stats if key not in sums else sums[key] + stats
        counts[key] = counts.get(key, 0) + 1
    keys = [_model_key(m) for m in models]
    totals, files = [sums.get(k) for k in keys], [counts.get(k, 0) for k in keys]
    missing = [j for j, t in enumerate(totals) if t is None]
    if missing:
        raise ValueError(f"no statistics for candidate(s) {missing}: every machine runs the "
                         "round at every candidate model.")
    if len(set(files)) > 1 or len({t.n for t in totals}) > 1:
        raise ValueError(f"the candidates have statistics from different machines (files "
                         f"{files}, rows {[t.n for t in totals]}): every machine runs the "
                         "round at every candidate model.")
    if rounds.history and totals[0].n != rounds.history[0]["rows"]:
        raise ValueError(f"these files hold {totals[0].n} rows, the first round's "
                         f"{rounds.history[0]['rows']}: a machine is missing or extra.")
    if not all(np.isfinite(t.log_likelihood) for t in totals):
        raise ValueError("the machines' log-likelihoods do not sum to a finite number.")
    return totals


#: the largest rounds state file read (its candidates and history)
MAX_STATE_BYTES = 16 * 2**20


def cmd_predict(args) -> int:
    out = _suffix(args.output, (".csv", ".npz"), "output")
    params = _load_model(args.model)
    X, _ = _read(args.data, need_y=False)
    if X.shape[1] != params.n_features:
        raise ValueError(f"{args.data} has {X.shape[1]} covariates but the model expects "
                         f"{params.n_features}.")
    with np.errstate(over="ignore", invalid="ignore"):
        pred, var = params.predict_mean(X), params.predict_var(X)
    bad = ~(np.isfinite(pred) & np.isfinite(var))
    if bad.any():
        raise ValueError(f"the model's predictions overflow at {int(bad.sum())} of {len(pred)} "
                         f"rows (first: row {int(np.argmax(bad))}); its coefficients are too "
                         "large for these covariates. Nothing was written.")
    columns = {"y_pred": pred, "y_var": var}
    if args.interval is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            bounds = params.predict_interval(X, args.interval)
        columns.update(y_lower=bounds[:, 0], y_upper=bounds[:, 1])
    from .io import atomic_path

    with atomic_path(out, "predictions file") as tmp:
        if out.suffix == ".npz":
            np.savez(tmp, **columns)
        else:
            np.savetxt(tmp, np.column_stack(list(columns.values())), delimiter=",",
                       header=",".join(columns), comments="", fmt="%.17g")
    print(f"{len(pred)} predictions written to {out}")
    return 0


def cmd_evaluate(args) -> int:
    from .diagnostics import model_metrics

    params = _load_model(args.model)
    X, y = _read(args.data)
    truth = _load_model(args.truth) if args.truth else None
    with np.errstate(all="ignore"):
        metrics = model_metrics(params, X, y, truth=truth)
    if not np.isfinite(metrics["loglik"]):
        raise ValueError(f"the model's log-likelihood on {args.data} is not finite: its "
                         "coefficients overflow at these covariates.")
    if args.json:
        print(json.dumps(metrics))
    else:
        print(_table([[k, f"{v:.6g}"] for k, v in metrics.items()], ["metric", "value"]))
    return 0


def cmd_study(args) -> int:
    from .diagnostics import authors_comparison, consistency_study

    def progress(row):
        print(f"  N={row['n']} M={row['n_machines']} rep={row['repetition']} "
              f"{row['estimator']}: RMSE {row['rmse']:.4f}, learning time "
              f"{row['learning_time']:.2f} s", file=sys.stderr, flush=True)

    if args.design == "authors":
        res = authors_comparison(args.repetitions, n_machines=args.machines or (4, 16, 64),
                                 random_state=args.seed, progress=progress)
    else:
        res = consistency_study(args.n_grid, args.machines or (4,),
                                n_features=args.n_features, n_experts=args.n_experts,
                                design=args.design, repetitions=args.repetitions,
                                random_state=args.seed, progress=progress)
    table = res.to_markdown()
    print(table)
    if args.output:
        from .io import write_bytes

        prefix = Path(args.output)
        write_bytes(f"{prefix}.md", (table + "\n").encode(), "study table")
        res.to_csv(f"{prefix}.csv")
        for path in [f"{prefix}.md", f"{prefix}.csv", *res.plot(str(prefix))]:
            print(f"wrote {path}")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default (none for a required option or a flag)."""

    def _get_help_string(self, action):
        if action.required or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return action.help
        return super()._get_help_string(action)


_DESIGN_HELP = ("'authors': the authors' simulation design (covariates from a K-component "
                "Gaussian mixture, integer coefficients, variances 4-5); 'separated': N(0, I) "
                "covariates and well-separated experts")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fastmoe", description="Fast Gaussian mixture-of-experts regression, "
        "centralised and distributed (optimal-transport aggregation).")
    from . import __version__
    from ._options import CENTRAL_N_INIT, EM_DEFAULTS
    from .server import MAX_ROUNDS

    parser.add_argument("--version", action="version", version=f"fastmoe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def add(name, func, help_, description=None):
        p = sub.add_parser(name, help=help_, description=description or help_,
                           formatter_class=_HelpFormatter)
        p.set_defaults(func=func)
        return p

    def seed(p):
        p.add_argument("--seed", type=int, default=0,
                       help="random seed; the same seed gives the same result")

    def fit_opts(p, local=False):
        from .families import FAMILIES

        p.add_argument("--n-experts", type=_positive_int, required=True,
                       help="number of experts K")
        p.add_argument("--family", choices=FAMILIES, default="gaussian",
                       help="the experts' family: Gaussian, Poisson (counts), Bernoulli "
                            "(0/1) or Gamma (y > 0); see fastmoe.families")
        if local:
            p.add_argument("--n-init", type=_auto_or_positive_int, default="auto",
                           help="EM starts; the fit of highest log-likelihood is kept; 'auto': "
                                "round(15000 / rows) within [3, 10] (see fastmoe.fit_local)")
            p.add_argument("--gate-penalty", type=_auto_or_non_negative, default="auto",
                           help="ridge penalty on the gate slopes in standard-deviation units, "
                                "or 'auto': only where the gates diverge (see "
                                "fastmoe.fit_local)")
        else:
            p.add_argument("--n-init", type=_positive_int, default=CENTRAL_N_INIT,
                           help="EM starts, each run to convergence; the fit of highest "
                                "log-likelihood is kept")
            p.add_argument("--gate-penalty", type=_non_negative, default=EM_DEFAULTS.gate_penalty,
                           help="ridge penalty on the gate slopes in standard-deviation units "
                                "(see fastmoe.fit_moe)")
        p.add_argument("--penalty", choices=["l1"], default=None,
                       help="the LASSO option: an L1 penalty on the expert and gate slopes "
                            "in standard-deviation units (see fastmoe.fit_moe)")
        p.add_argument("--l1-strength", type=_auto_or_non_negative, default="auto",
                       help="strength of --penalty l1 in log-likelihood units, or 'auto': "
                            "sqrt(2 (n / K) log p) over the p penalised slopes")
        p.add_argument("--max-iter", type=_positive_int, default=EM_DEFAULTS.max_iter,
                       help="EM iterations per start")
        seed(p)

    p = add("demo", cmd_demo, "the main job: simulate, fit distributed and centralised, "
            "compare", "Simulate the authors' design, fit it centrally and distributed "
            "(one message per machine, OT aggregation), and print a comparison table on "
            "held-out rows, each column defined below it.")
    p.add_argument("--n-samples", type=_positive_int, default=50000,
                   help="rows simulated (90%% to train, 10%% to test)")
    p.add_argument("--n-features", type=_positive_int, default=20, help="covariates d")
    p.add_argument("--n-experts", type=_positive_int, default=5, help="experts K")
    p.add_argument("--n-machines", type=_positive_int, default=4,
                   help="machines M the training rows are split over")
    p.add_argument("--design", choices=["authors", "separated"], default="authors",
                   help=_DESIGN_HELP)
    p.add_argument("--backend", choices=["local", "serial", "dask"], default="local",
                   help="where the local fits run: a local process pool, one after another "
                        "in this process, or a Dask cluster")
    p.add_argument("--costs", nargs="+", choices=["kl", "w2"], default=["kl"],
                   help="transport costs between experts to aggregate with (each its own row)")
    p.add_argument("--n-init", type=_positive_int, default=3, help="EM starts per fit")
    seed(p)

    p = add("simulate", cmd_simulate, "write a simulated data set",
            "Draw a data set from a mixture of experts: a new true model of the design, or "
            "the saved true model given by --from-truth (for a held-out set from the same "
            "truth). Covariates follow the design; with --from-truth the model's sizes are "
            "used and --n-features, --n-experts are ignored.")
    p.add_argument("--n-samples", type=_positive_int, default=10000, help="rows")
    p.add_argument("--n-features", type=_positive_int, default=5, help="covariates d")
    p.add_argument("--n-experts", type=_positive_int, default=3, help="experts K")
    p.add_argument("--design", choices=["authors", "separated"], default="separated",
                   help=_DESIGN_HELP)
    p.add_argument("--from-truth", metavar="MODEL",
                   help="draw the responses from this saved true model (.json or .npz), "
                        "e.g. one written by --truth")
    p.add_argument("--shards", type=_positive_int, default=1,
                   help="write this many files OUTPUT_0, OUTPUT_1, ... (one per machine)")
    seed(p)
    p.add_argument("--output", required=True, help="data file to write: .npz, .csv or .parquet")
    p.add_argument("--truth", help="also write the true model (.json or .npz)")

    p = add("fit", cmd_fit, "centralised EM fit of a data file")
    p.add_argument("--data", required=True, help="data file (.npz, .csv or .parquet, with y)")
    fit_opts(p)
    p.add_argument("--output", required=True, help="model file to write (.json or .npz)")

    p = add("fit-local", cmd_fit_local, "fit one shard and write its message",
            "Fit one machine's shard and write the one message it sends to the server: its "
            "local model, its sample size and a sample of its covariates.")
    p.add_argument("--data", required=True, help="the shard's data file")
    fit_opts(p, local=True)
    p.add_argument("--n-support", type=_positive_int, default=1000,
                   help="covariate rows sent as the support of the gate refit")
    p.add_argument("--support", choices=["sample", "gaussian"], default="sample",
                   help="send sampled rows, or only their mean and covariance")
    p.add_argument("--heldout", type=_fraction, default=0.0,
                   help="fraction of rows held out to report a held-out log-likelihood")
    p.add_argument("--output", required=True, help="message file to write (.npz or .json)")

    p = add("aggregate", cmd_aggregate, "aggregate message files into one model",
            "The server: reduce the machines' local experts to K global experts by "
            "optimal transport, refit the gates, and print the health report.")
    p.add_argument("messages", nargs="+", help="message files")
    p.add_argument("--n-experts", type=_positive_int, default=None,
                   help="global experts K (default: the machines' K, which must then agree)")
    p.add_argument("--cost", choices=["kl", "w2"], default="kl",
                   help="transport cost between Gaussian experts: Kullback-Leibler or "
                        "Wasserstein-2")
    p.add_argument("--gate-target", choices=["assigned", "kl", "plan"], default="assigned",
                   help="what the gate refit fits on the support (see fastmoe.aggregate)")
    p.add_argument("--keep-failed", action="store_true",
                   help="aggregate every message, also those that look like failed local fits")
    p.add_argument("--robust", action="store_true",
                   help="leave out messages whose models are inconsistent with the others beyond "
                        "what their sample sizes explain (a corrupted or lying machine)")
    seed(p)
    p.add_argument("--output", required=True, help="model file to write (.json or .npz)")

    p = add("round", cmd_round, "one machine's half of a refinement round",
            "One machine's half of a refinement round (exact distributed EM from the "
            "aggregate): the E-step on the shard at the global model and the additive "
            "statistics of the M-step, written for the server's `fastmoe refine`. The file "
            "names the model it was computed at; nothing else about the rows leaves them.")
    p.add_argument("--data", required=True, help="the shard's data file (with y)")
    p.add_argument("--model", required=True,
                   help="the current global model (.json or .npz), the same file on every "
                        "machine")
    p.add_argument("--output", required=True, help="round statistics file to write (.npz)")

    p = add("refine", cmd_refine, "the server's half of the refinement rounds",
            "The server's half of the refinement rounds, the same loop as "
            "DistributedMoERegressor's (fastmoe.server.Rounds: Newton, trust-region, "
            "saddle-free and EM steps, the best kept). --start MODEL begins them and writes "
            "the first round's candidate models beside --output; each machine then runs "
            "`fastmoe round` on its shard at every candidate, and `fastmoe refine --state` "
            "takes all their files (each checked, matched to its candidate, counted once), "
            "keeps the best candidate and writes the next round's candidates and state, "
            "until the rounds converge.")
    p.add_argument("statistics", nargs="*", help="round statistics files: every machine's, "
                   "at every candidate of the round")
    p.add_argument("--start", default=None, help="begin the rounds from this model "
                   "(.json or .npz), e.g. the one-shot aggregate")
    p.add_argument("--also", nargs="*", default=[], help="with --start: other models the "
                   "first round also evaluates (e.g. machines' own models); the best starts")
    p.add_argument("--state", default=None, help="the rounds state the last refine wrote")
    p.add_argument("--output", required=True,
                   help="the rounds state to write (.json); the next round's candidate models "
                        "are written beside it, as <output>.candidate_<j>.json")
    p.add_argument("--model", default=None,
                   help="also write the model kept so far to this file (.json or .npz)")
    p.add_argument("--tol", type=_non_negative, default=EM_DEFAULTS.tol,
                   help="with --start: the rounds stop when the Newton step expects to gain "
                        "less than 100 tol times the log-likelihood")
    p.add_argument("--max-rounds", type=_positive_int, default=MAX_ROUNDS,
                   help="with --start: rounds at most, the first included")
    p.add_argument("--tracks", type=_positive_int, default=None,
                   help="with --start: climb from this many of the first round's best "
                        "starts side by side and keep the highest (default: the "
                        "estimator's, 1 for Gaussian experts and 2 for the other families)")

    p = add("predict", cmd_predict, "predict E[y|x] and Var[y|x] for a data file")
    p.add_argument("--model", required=True, help="model file (.json or .npz)")
    p.add_argument("--data", required=True, help="data file (a column y is not needed)")
    p.add_argument("--interval", type=_level, default=None,
                   help="also write the equal-tailed predictive interval of this level "
                        "(e.g. 0.9) as y_lower, y_upper")
    p.add_argument("--output", required=True, help="predictions to write: .csv or .npz")

    p = add("evaluate", cmd_evaluate, "metrics of a model on a data file",
            "Metrics of a model on a data file: loglik (the sum of the rows' log-likelihoods; "
            "higher is better), rpe (relative prediction error, sum (y - E[y|x])^2 / sum "
            "y^2; lower is better), corr (correlation of y and E[y|x]); with --truth the "
            "root mean squared error against the true model of the gate coefficients "
            "(rmse_gates), expert coefficients (rmse_experts) and variances "
            "(rmse_variances) after matching experts, and mse, the authors' mean squared "
            "error of all parameters stacked.")
    p.add_argument("--model", required=True, help="model file (.json or .npz)")
    p.add_argument("--data", required=True, help="data file (.npz, .csv or .parquet, with y)")
    p.add_argument("--truth", help="true model file, for parameter errors")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("study", cmd_study, "consistency study or the authors' comparison",
            "On simulated data, over a grid of N (and M) and repetitions: parameter error, "
            "log-likelihood and learning time of the centralised, aggregated and baseline "
            "estimators, and the log-log slope of error against N. --design authors runs "
            "the authors' comparison (K=5, d=20, N=100k, M in 4, 16, 64).")
    p.add_argument("--design", choices=["authors", "separated"], default="separated",
                   help=_DESIGN_HELP)
    p.add_argument("--n-grid", type=_positive_int, nargs="+", default=[2000, 8000, 32000],
                   help="training sizes N (the separated design)")
    p.add_argument("--machines", type=_positive_int, nargs="+", default=None,
                   help="machine counts M (default: 4; 4 16 64 for the authors' design)")
    p.add_argument("--n-features", type=_positive_int, default=3, help="covariates d")
    p.add_argument("--n-experts", type=_positive_int, default=3, help="experts K")
    p.add_argument("--repetitions", type=_positive_int, default=3,
                   help="simulated data sets per (N, M)")
    seed(p)
    p.add_argument("--output", help="prefix of the .md, .csv (and .png) files to write")

    return parser


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _paths(args) -> tuple[list, list]:
    """(inputs, outputs) a command names."""
    inputs = [getattr(args, k, None) for k in ("data", "model")]
    inputs += list(getattr(args, "messages", None) or []) + list(
        getattr(args, "statistics", None) or [])
    output = getattr(args, "output", None)
    if args.command == "study":
        outputs = [f"{output}{end}" for end in (".md", ".csv", "_error_vs_n.png",
                                                  "_time_vs_m.png")] if output else []
    else:
        outputs = [output]
    (outputs if args.command == "simulate" else inputs).append(getattr(args, "truth", None))
    return [p for p in inputs if p], [p for p in outputs if p]


def check_outputs(args) -> None:
    """Before any work: every output's folder is writable, and no output is an
    input (fastmoe never overwrites what it reads)."""
    from .io import check_writable, same_file

    inputs, outputs = _paths(args)
    for out in outputs:
        check_writable(out)
        for path in inputs:
            if Path(path).exists() and Path(out).exists() and same_file(out, path):
                raise ValueError(f"the output {out!r} is also an input ({path!r}); fastmoe never "
                                 "overwrites its inputs: choose another output path.")
    if len({str(Path(o).resolve()) for o in outputs}) != len(outputs):
        raise ValueError("two outputs name the same file; give each its own path.")


def _terminated(signum, frame):
    """SIGTERM as an exception, so that worker processes are stopped and no
    output is left half written (the writers write whole or not at all)."""
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    """Run the ``fastmoe`` command line.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0, 2 for a user mistake (one line on stderr), 130
        when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"fastmoe {args.command}"
    if argv is None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)  # the command line's own process only

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{name}: warning: {_one_line(Warning(message))}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            check_outputs(args)
            return args.func(args)
        except KeyboardInterrupt:
            print(f"{name}: interrupted", file=sys.stderr)
            return 130
        except (ValueError, OSError, TypeError, KeyError, IndexError, OverflowError,
                FloatingPointError, MemoryError, RecursionError) as exc:
            if os.environ.get("FASTMOE_TRACEBACK") == "1":
                raise
            print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
            return USAGE_ERROR
        except Exception as exc:  # not a user mistake we know of: still one line
            if os.environ.get("FASTMOE_TRACEBACK") == "1":
                raise
            print(f"{name}: error: unexpected {type(exc).__name__}: {_one_line(exc)} "
                  "(FASTMOE_TRACEBACK=1 shows the traceback; please report it)",
                  file=sys.stderr)
            return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""Many small shards: the distributed fit against the centralised one on the
reference data sets (90 000 training rows, d=20, K=5, given machine splits),
or on fresh draws of the authors' design.

    python asv_bench/small_shards.py --data DIR [--sets A B] [--machines 4 16 64]
                                     [--seeds 0 1] [--option key=value ...]
    python asv_bench/small_shards.py --draws 100 107 [--n 20000] [--machines 8]

DIR holds {A,B}_X.npy, {A,B}_Y.npy, {A,B}_true_{gates,experts,variances}.npy
and {A,B}_M{M}_machine_indices.npy (the layout of the authors' code: (d+1) x K
parameter matrices, row 0 the intercepts). For each set, M and seed it fits
``DistributedMoERegressor(5, **options).fit_shards(splits)`` on the serial
backend and a centralised ``fit_moe`` (once per set and seed), and prints the
parameter RMSE against the truth per block (gates, experts, variances), the
ratio distributed / centralised, the test log-likelihood per row (the last
10 000 rows), the learning time, the reduction time (the estimator's
``reduction_time_``: every aggregation, two where the check round replaced a
message) and the refinement rounds taken (``refine_rounds="auto"`` refines
small shards).

``--draws FIRST LAST``: for every seed in FIRST..LAST, a true model of the
authors' design (``authors_truth(20, 5)``, covariates from a 5-component
Gaussian mixture), ``--n`` training and 10 000 test rows drawn from it, split
at random over each M; the same report, one row per seed.
"""

from __future__ import annotations

import argparse
import ast
import warnings
from pathlib import Path

import numpy as np

from fastmoe import DistributedMoERegressor, MoEParams, fit_moe
from fastmoe.datasets import authors_truth, make_moe_regression
from fastmoe.diagnostics import parameter_rmse

N_TRAIN = 90000
N_TEST = 10000


def _load(directory: Path, prefix: str):
    a = {k: np.load(directory / f"{prefix}_{k}.npy") for k in
         ("X", "Y", "true_gates", "true_experts", "true_variances")}
    truth = MoEParams.from_aug(a["true_gates"].T, a["true_experts"].T, a["true_variances"])
    X, y = a["X"], a["Y"].ravel()
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:], truth


def _draw(seed: int, n: int):
    rng = np.random.default_rng(seed)
    truth = authors_truth(20, 5, rng)
    X, y = make_moe_regression(n + N_TEST, 20, 5, design="authors", params=truth,
                               random_state=rng)[:2]
    return X[:n], y[:n], X[n:], y[n:], truth


def _options(pairs):
    out = {}
    for pair in pairs or ():
        key, value = pair.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _report(name, seed, data, splits, options, central=True):
    """One centralised fit and one distributed fit per M on ``splits[M]``
    (lists of row indices), printed as table rows."""
    X, y, Xte, yte, truth = data
    ce = None
    if central:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_moe(X, y, 5, n_init=3, random_state=seed).params
        ce = parameter_rmse(fit, truth)
        cll = fit.log_likelihood(Xte, yte) / len(yte)
        print(f"| {name} | central | {seed} | {ce['gates']:.4f} | {ce['experts']:.4f} "
              f"| {ce['variances']:.4f} | - | - | - | - | - |")
    for M, idx in splits.items():
        est = DistributedMoERegressor(5, backend="serial", random_state=seed, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit_shards([(X[i], y[i]) for i in idx])
        de = parameter_rmse(est.params_, truth)
        dll = est.params_.log_likelihood(Xte, yte) / len(yte)
        cell = {key: f"{de[key]:.4f}" + ("" if ce is None else f" ({de[key] / ce[key]:.2f}x)")
                for key in de}
        gap = f"{dll - cll:+.5f}" if ce is not None else f"{dll:.4f} (dist)"
        print(f"| {name} | {M} | {seed} | {cell['gates']} | {cell['experts']} | "
              f"{cell['variances']} | {gap} | {est.learning_time_:.2f} | "
              f"{est.reduction_time_:.2f} | {len(est.refine_history_)} | "
              f"{list(est.excluded_shards_)} |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="the reference data's directory")
    source.add_argument("--draws", nargs=2, type=int, metavar=("FIRST", "LAST"),
                        help="seeds of fresh draws of the authors' design")
    ap.add_argument("--n", type=int, default=20000, help="training rows of a draw")
    ap.add_argument("--sets", nargs="+", default=["A", "B"])
    ap.add_argument("--machines", nargs="+", type=int, default=None,
                    help="default: 4 16 64 on the reference data, 8 on draws")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--option", nargs="*", help="estimator options, key=value")
    ap.add_argument("--no-central", action="store_true", help="skip the centralised fits")
    args = ap.parse_args(argv)
    options = _options(args.option)
    print(f"options: {options or 'defaults'}")
    print("| set | M | seed | gates dist (ratio) | experts dist (ratio) | variances dist (ratio) "
          "| test ll/row dist - central | learning (s) | reduction (s) | rounds | excluded |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    if args.draws:
        machines = args.machines or [8]
        for seed in range(args.draws[0], args.draws[1] + 1):
            order = np.random.default_rng([seed, 1]).permutation(args.n)
            splits = {M: np.array_split(order, M) for M in machines}
            _report("draw", seed, _draw(seed, args.n), splits, options, not args.no_central)
        return
    machines = args.machines or [4, 16, 64]
    for prefix in args.sets:
        data = _load(args.data, prefix)
        splits = {M: np.load(args.data / f"{prefix}_M{M}_machine_indices.npy")
                  for M in machines}
        for seed in args.seeds:
            _report(prefix, seed, data, splits, options, not args.no_central)


if __name__ == "__main__":
    main()

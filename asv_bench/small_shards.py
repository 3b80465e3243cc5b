"""Many small shards: the distributed fit against the centralised one on the
reference data sets (90 000 training rows, d=20, K=5, given machine splits).

    python asv_bench/small_shards.py --data DIR [--sets A B] [--machines 4 16 64]
                                     [--seeds 0 1] [--option key=value ...]

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
"""

from __future__ import annotations

import argparse
import ast
import time
import warnings
from pathlib import Path

import numpy as np

from fastmoe import DistributedMoERegressor, MoEParams, fit_moe
from fastmoe.diagnostics import parameter_rmse

N_TRAIN = 90000


def _load(directory: Path, prefix: str):
    a = {k: np.load(directory / f"{prefix}_{k}.npy") for k in
         ("X", "Y", "true_gates", "true_experts", "true_variances")}
    truth = MoEParams.from_aug(a["true_gates"].T, a["true_experts"].T, a["true_variances"])
    X, y = a["X"], a["Y"].ravel()
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:], truth


def _options(pairs):
    out = {}
    for pair in pairs or ():
        key, value = pair.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--sets", nargs="+", default=["A", "B"])
    ap.add_argument("--machines", nargs="+", type=int, default=[4, 16, 64])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--option", nargs="*", help="estimator options, key=value")
    ap.add_argument("--no-central", action="store_true", help="skip the centralised fits")
    args = ap.parse_args(argv)
    options = _options(args.option)
    print(f"options: {options or 'defaults'}")
    print("| set | M | seed | gates dist (ratio) | experts dist (ratio) | variances dist (ratio) "
          "| test ll/row dist - central | learning (s) | reduction (s) | rounds | excluded |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for prefix in args.sets:
        X, y, Xte, yte, truth = _load(args.data, prefix)
        for seed in args.seeds:
            central = None
            if not args.no_central:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    central = fit_moe(X, y, 5, n_init=3, random_state=seed).params
                ce = parameter_rmse(central, truth)
                cll = central.log_likelihood(Xte, yte) / len(yte)
                print(f"| {prefix} | central | {seed} | {ce['gates']:.4f} | {ce['experts']:.4f} "
                      f"| {ce['variances']:.4f} | - | - | - | - | - |")
            for M in args.machines:
                idx = np.load(args.data / f"{prefix}_M{M}_machine_indices.npy")
                shards = [(X[i], y[i]) for i in idx]
                est = DistributedMoERegressor(5, backend="serial", random_state=seed,
                                              **options)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0 = time.perf_counter()
                    est.fit_shards(shards)
                    wall = time.perf_counter() - t0
                de = parameter_rmse(est.params_, truth)
                dll = est.params_.log_likelihood(Xte, yte) / len(yte)

                cell = {key: f"{de[key]:.4f}" + ("" if central is None else
                                                 f" ({de[key] / ce[key]:.2f}x)") for key in de}
                gap = f"{dll - cll:+.4f}" if central is not None else f"{dll:.4f} (dist)"
                red = est.reduction_time_
                print(f"| {prefix} | {M} | {seed} | {cell['gates']} | {cell['experts']} | "
                      f"{cell['variances']} | {gap} | {est.learning_time_:.2f} | {red:.2f} | "
                      f"{len(est.refine_history_)} | {list(est.excluded_shards_)} |", flush=True)
                del wall


if __name__ == "__main__":
    main()

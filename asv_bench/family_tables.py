"""Mixtures of experts of other families on real tables (tests/realdata.py,
20% of the rows held out): Poisson experts on AER's DoctorVisits (visits to a
doctor in two weeks), Bernoulli experts on AER's CreditCard (was the card
granted), Gamma experts on ggplot2's diamonds (the price itself).

    python asv_bench/family_tables.py [--tables doctorvisits creditcard diamonds]

Prints, per table and for K = 1 (the GLM) to 3, the fit's time, EM
iterations, whether it converged, BIC and the held-out log-likelihood per
row, with the CPU. With ``--distributed``: per table (K = 2, diamonds K = 3)
and split (16 random machines, the group column), the distributed fit's
held-out log-likelihood minus the centralised fit's, both fits' training
log-likelihoods, the rounds, the learning times and the warnings.

    python asv_bench/family_tables.py --distributed
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import realdata  # noqa: E402
from real_tables import cpu, fit_distributed, held_out_gap, shards_of  # noqa: E402

from fastmoe import MoEClassifier, MoERegressor  # noqa: E402

#: table: (family, response transform)
SETUPS = {"doctorvisits": ("poisson", None), "nmes1988": ("poisson", None),
          "creditcard": ("bernoulli", None), "hmda": ("bernoulli", None),
          "diamonds": ("gamma", np.exp)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--distributed", action="store_true",
                        help="distributed against centralised fits instead")
    args = parser.parse_args(argv)
    print(f"CPU: {cpu()}")
    if args.distributed:
        distributed(args.tables)
        return
    print("| table | family | K | seconds | EM iterations | converged | BIC (train) | "
          "log-likelihood per test row |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.tables:
        why = realdata.why_missing(name)
        if why is not None:
            print(f"| {name} | unavailable: {why} |")
            continue
        family, transform = SETUPS[name]
        table = realdata.load(name)
        train, test = realdata.split(table)
        X, y = table.X, table.y if transform is None else transform(table.y)
        for K in (1, 2, 3):
            model = (MoEClassifier(K, n_init=3, random_state=0) if family == "bernoulli" else
                     MoERegressor(K, family=family, n_init=3, random_state=0))
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # reported in the table: converged
                model.fit(X[train], y[train])
            seconds = time.perf_counter() - t0
            print(f"| {name} | {family} | {K} | {seconds:.2f} | {model.n_iter_} | "
                  f"{model.converged_} | {model.bic(X[train], y[train]):.1f} | "
                  f"{model.score_samples(X[test], y[test]).mean():.4f} |")


def distributed(tables) -> None:
    """The distributed-minus-centralised table of the docstring."""
    print("| table | family | K | split | dist - central (nats/test row) | train ll dist | "
          "train ll central | rounds | converged | learning s | central s | warnings |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in tables:
        why = realdata.why_missing(name)
        if why is not None:
            print(f"| {name} | unavailable: {why} |")
            continue
        family, transform = SETUPS[name]
        K = 3 if name == "diamonds" else 2
        table = realdata.load(name)
        if transform is not None:
            table = realdata.Table(table.name, table.X, transform(table.y), table.groups,
                                   table.group_names)
        train, test = realdata.split(table)
        X, y = table.X, table.y
        t0 = time.perf_counter()
        central = MoERegressor(K, family=family, random_state=0).fit(X[train], y[train])
        central_s = time.perf_counter() - t0
        for split in ("16", "group"):
            dist, said, _ = fit_distributed(K, shards_of(table, train, split), family=family)
            gap = held_out_gap(dist, central, X[test], y[test])
            print(f"| {name} | {family} | {K} | {split} | {gap:+.4f} | "
                  f"{dist.refine_history_[-1]['log_likelihood']:.1f} | "
                  f"{central.log_likelihood_:.1f} | {len(dist.refine_history_)} | "
                  f"{dist.refine_converged_} | {dist.learning_time_:.2f} | {central_s:.2f} | "
                  f"{len(said)} |", flush=True)


if __name__ == "__main__":
    main()

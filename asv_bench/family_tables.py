"""Mixtures of experts of other families on real tables (tests/realdata.py,
20% of the rows held out): Poisson experts on AER's DoctorVisits (visits to a
doctor in two weeks), Bernoulli experts on AER's CreditCard (was the card
granted), Gamma experts on ggplot2's diamonds (the price itself).

    python asv_bench/family_tables.py [--tables doctorvisits creditcard diamonds]

Prints, per table and for K = 1 (the GLM) to 3, the fit's time, EM
iterations, whether it converged, BIC and the held-out log-likelihood per
row, with the CPU.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import realdata  # noqa: E402
from real_tables import cpu  # noqa: E402

from fastmoe import MoEClassifier, MoERegressor  # noqa: E402

#: table: (family, response transform)
SETUPS = {"doctorvisits": ("poisson", None), "creditcard": ("bernoulli", None),
          "diamonds": ("gamma", np.exp)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    args = parser.parse_args(argv)
    print(f"CPU: {cpu()}")
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


if __name__ == "__main__":
    main()

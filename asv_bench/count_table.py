"""Poisson mixtures of experts on a real table of counts: AER's DoctorVisits
(5 190 rows: visits to a doctor in two weeks; age, income, illnesses, days of
reduced activity, health score), 20% held out (tests/realdata.py).

    python asv_bench/count_table.py

Prints, for K = 1 (the Poisson GLM) to 3, the fit's time, EM iterations,
BIC and held-out log-likelihood per row, with the CPU.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import realdata  # noqa: E402
from real_tables import cpu  # noqa: E402

from fastmoe import MoERegressor  # noqa: E402


def main() -> None:
    why = realdata.why_missing("doctorvisits")
    if why is not None:
        sys.exit(f"DoctorVisits unavailable: {why}")
    table = realdata.load("doctorvisits")
    train, test = realdata.split(table)
    X, y = table.X, table.y
    print(f"CPU: {cpu()}")
    print("| K | seconds | EM iterations | BIC (train) | log-likelihood per test row |")
    print("|---|---|---|---|---|")
    for K in (1, 2, 3):
        t0 = time.perf_counter()
        model = MoERegressor(K, family="poisson", n_init=3, random_state=0).fit(X[train],
                                                                               y[train])
        seconds = time.perf_counter() - t0
        print(f"| {K} | {seconds:.2f} | {model.n_iter_} | {model.bic(X[train], y[train]):.1f} | "
              f"{model.score_samples(X[test], y[test]).mean():.4f} |")


if __name__ == "__main__":
    main()

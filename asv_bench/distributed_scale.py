"""Distributed learning at scale, measured side by side in one run.

    python asv_bench/distributed_scale.py speed  [--n 1000000 --machines 16]
    python asv_bench/distributed_scale.py machines [--n 1000000 --machine-grid 4 16 64 256]
    python asv_bench/distributed_scale.py scale  [--n 10000000 --machines 64 --dir /tmp/shards]

speed: the authors' parameters (K=5, d=20) at N rows; the distributed fit (M
machines) against the centralised EM fit on the same rows: learning time
(slowest local fit + reduction, the paper's figure), actual wall time on this
machine, and test log-likelihood on 10000 held-out rows. The distributed fit
runs twice, with the same model: on the serial backend each local fit has all
the cores, as the centralised fit has (so its learning time is that of M
machines like this one); on the local backend the fits share the cores, one
process per core (the shortest wall time here).

machines: the same at N rows for every M in --machine-grid (default 4 16 64
256), serial backend, the local fits with the estimator's defaults: learning
time, reduction time and test log-likelihood per M beside the centralised
fit's, to see how the learning time falls as the shards shrink.

scale: N rows written to disk as M shard files (never all in memory), fitted
through Dask (LocalCluster, one process per core) from the files; reports the
peak resident memory of every process (workers and this client).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import warnings
from pathlib import Path

import numpy as np

from fastmoe import DistributedMoERegressor, fit_moe
from fastmoe.datasets import authors_truth, make_moe_regression


def _data(n, truth, seed):
    return make_moe_regression(n, truth.n_features, truth.n_experts, design="separated",
                               params=truth, random_state=seed)[:2]


def speed(args):
    truth = authors_truth(20, 5, random_state=2036)
    X, y = _data(args.n, truth, 0)
    Xte, yte = _data(10000, truth, 1)
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for backend in ("serial", "local"):
            t0 = time.perf_counter()
            model = DistributedMoERegressor(5, args.machines, backend=backend,
                                            n_init=args.n_init, random_state=0).fit(X, y)
            fits[backend] = (model, time.perf_counter() - t0)
        t0 = time.perf_counter()
        central = fit_moe(X, y, 5, n_init=args.n_init, random_state=0)
        t_central = time.perf_counter() - t0
    ll_c = central.params.log_likelihood(Xte, yte)
    (dist, wall_serial), (par, wall_local) = fits["serial"], fits["local"]
    ll_d = dist.params_.log_likelihood(Xte, yte)
    same = np.array_equal(dist.params_.expert_aug, par.params_.expert_aug)
    cores = len(os.sched_getaffinity(0))
    print(f"N={args.n}, d=20, K=5, M={args.machines}, n_init={args.n_init}, cores={cores}")
    print("| estimator | learning time (s) | wall time (s) | test loglik (10k rows) |")
    print("|---|---|---|---|")
    print(f"| centralised EM ({cores} threads) | {t_central:.1f} | {t_central:.1f} | {ll_c:.1f} |")
    print(f"| distributed OT-KL, serial backend ({cores} threads per local fit) | "
          f"{dist.learning_time_:.1f} | {wall_serial:.1f} | {ll_d:.1f} |")
    print(f"| distributed OT-KL, local backend ({cores} processes x 1 thread) | "
          f"{par.learning_time_:.1f} | {wall_local:.1f} | "
          f"{par.params_.log_likelihood(Xte, yte):.1f} |")
    print(f"learning-time ratio centralised / distributed (each local fit on the resources of "
          f"the centralised one): {t_central / dist.learning_time_:.1f}x; wall-time ratios: "
          f"serial {t_central / wall_serial:.1f}x, local {t_central / wall_local:.1f}x; test "
          f"loglik relative difference {abs(ll_d - ll_c) / abs(ll_c):.2e}; local fits: max "
          f"{dist.local_fit_times_.max():.1f} s, median {np.median(dist.local_fit_times_):.1f} s;"
          f" reduction {dist.reduction_time_:.2f} s; both backends gave the same model: {same}")


def machines(args):
    truth = authors_truth(20, 5, random_state=2036)
    X, y = _data(args.n, truth, 0)
    Xte, yte = _data(10000, truth, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        central = fit_moe(X, y, 5, n_init=args.n_init, random_state=0)
        t_central = time.perf_counter() - t0
    ll_c = central.params.log_likelihood(Xte, yte)
    cores = len(os.sched_getaffinity(0))
    print(f"N={args.n}, d=20, K=5, centralised n_init={args.n_init}, local fits with the "
          f"estimator's defaults, serial backend, cores={cores}")
    print("| M | rows per machine | learning time (s) | slowest local fit (s) | reduction (s) "
          "| support | test loglik (10k rows) | minus centralised |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| centralised | {args.n} | {t_central:.2f} | - | - | - | {ll_c:.1f} | - |")
    for M in args.machine_grid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = DistributedMoERegressor(5, M, backend="serial",
                                            random_state=0).fit(X, y)  # local defaults
        ll = model.params_.log_likelihood(Xte, yte)
        print(f"| {M} | {args.n // M} | {model.learning_time_:.2f} | "
              f"{model.local_fit_times_.max():.2f} | {model.reduction_time_:.2f} | "
              f"{model.aggregation_.assignment.shape[0]} | {ll:.1f} | {ll - ll_c:+.1f} |",
              flush=True)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def scale(args):
    from dask.distributed import Client, LocalCluster

    truth = authors_truth(20, 5, random_state=2036)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = []
    sizes = np.diff(np.linspace(0, args.n, args.machines + 1).astype(int))
    for m, n_m in enumerate(sizes):
        path = out / f"shard_{m}.npz"
        if not path.exists():
            X, y = _data(int(n_m), truth, 1000 + m)
            np.savez(path, X=X, y=y)
        paths.append(str(path))
    t_write = time.perf_counter() - t0
    Xte, yte = _data(10000, truth, 1)
    with LocalCluster(processes=True, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            model = DistributedMoERegressor(5, backend="dask", client=client, n_init=args.n_init,
                                            random_state=0).fit_shards(paths)
            wall = time.perf_counter() - t0
        worker_rss = client.run(_rss_mb)
    print(f"N={args.n} in {args.machines} shard files ({t_write:.0f} s to write), Dask "
          f"LocalCluster with {len(worker_rss)} worker processes")
    print(f"wall time {wall:.0f} s, learning time {model.learning_time_:.1f} s (slowest local "
          f"fit {model.local_fit_times_.max():.1f} s, reduction {model.reduction_time_:.2f} s)")
    print(f"peak RSS: workers {', '.join(f'{v:.0f} MB' for v in worker_rss.values())}; "
          f"client {_rss_mb():.0f} MB")
    print(f"test loglik (10k rows): {model.params_.log_likelihood(Xte, yte):.1f}; truth "
          f"{truth.log_likelihood(Xte, yte):.1f}; bytes sent {int(model.message_bytes_.sum())}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["speed", "machines", "scale"])
    ap.add_argument("--machine-grid", type=int, nargs="+", default=[4, 16, 64, 256])
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--machines", type=int, default=None)
    ap.add_argument("--n-init", type=int, default=1)
    ap.add_argument("--dir", default="/tmp/fastmoe-shards")
    args = ap.parse_args(argv)
    if args.what == "speed":
        args.n = args.n or 1_000_000
        args.machines = args.machines or 16
        speed(args)
    elif args.what == "machines":
        args.n = args.n or 1_000_000
        machines(args)
    else:
        args.n = args.n or 10_000_000
        args.machines = args.machines or 64
        scale(args)


if __name__ == "__main__":
    main()

"""A fit beside a busy core: the default thread count against one thread.

Another process keeps one core busy (a Python loop) while ``fit_moe`` runs
30 EM iterations (d=5, K=3, one start) with the default thread count (all
cores) and with one thread; the ratio default / one thread is what a user
who shares the machine pays for the default. Each configuration runs in a
fresh process, so OpenMP's environment (``--env``) takes effect.

    python asv_bench/contention.py [--n 10000 100000] [--repeat 9]
    python asv_bench/contention.py --env OMP_WAIT_POLICY=active   # the libgomp default
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time, warnings
import numpy as np
from fastmoe import fit_moe
from fastmoe.datasets import make_moe_regression
n, threads, repeat = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
threads = None if threads == "default" else int(threads)
X, y, _, _ = make_moe_regression(n, 5, 3, random_state=0)
def fit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_moe(X, y, 3, n_init=1, max_iter=30, tol=0.0, split_merge=False,
                random_state=0, n_threads=threads)
fit()
times = []
for _ in range(repeat):
    t0 = time.perf_counter(); fit(); times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""


def measure(n: int, threads: str, repeat: int, env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), threads, str(repeat)],
                         capture_output=True, text=True, check=True, env=env)
    times = json.loads(out.stdout)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--env", nargs="*", default=[], help="NAME=VALUE set in the fits' processes")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in args.env)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU") if os.path.exists(
        "/proc/cpuinfo") else "unknown CPU"
    print(f"{cpu}, {os.cpu_count()} cores; env {args.env or 'as is'}")
    print("| n | quiet, 1 thread | quiet, default | busy core, 1 thread | busy core, default "
          "| busy: default / 1 thread |")
    print("|---|---|---|---|---|---|")
    for n in args.n:
        q1, qd = (measure(n, t, args.repeat, env) for t in ("1", "default"))
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            b1, bd = (measure(n, t, args.repeat, env) for t in ("1", "default"))
        finally:
            busy.kill()
            busy.wait()
        print(f"| {n} | {q1 * 1e3:.1f} ms | {qd * 1e3:.1f} ms | {b1 * 1e3:.1f} ms "
              f"| {bd * 1e3:.1f} ms | {bd / b1:.2f} |", flush=True)


if __name__ == "__main__":
    main()

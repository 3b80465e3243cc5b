"""Cached deterministic problems for the benchmarks (sizes are append-only)."""

import functools

import numpy as np

from fastmoe.datasets import make_moe_regression

#: (n, d, K) of the engine benchmarks
SIZES = [(10_000, 2, 2), (100_000, 10, 3), (1_000_000, 20, 5)]
SIZE_NAMES = [f"{n}x{d}x{K}" for n, d, K in SIZES]


@functools.cache
def problem(n, d, K):
    X, y, truth, _ = make_moe_regression(n, d, K, random_state=0)
    return np.ascontiguousarray(X), y, truth

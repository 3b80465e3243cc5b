"""Reduction benchmarks: one MM iteration (cost + assignment + update), a full
aggregate(), the transport objective as a quality track, and peak memory of
the MM loop against the number of support points S."""

import functools

import numpy as np

from fastmoe import MoEParams, aggregate
from fastmoe._linalg import resolve_threads
from fastmoe._reduction import _run_mm, _update, large_mixture, mm_pass, support_cache


@functools.cache
def _problem(S, M=16, K=5, d=20):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((K, d + 1)) * 2
    models = [MoEParams(rng.integers(-3, 4, (K, d)), rng.standard_normal(K),
                        base[:, 1:] + 0.1 * rng.standard_normal((K, d)),
                        base[:, 0] + 0.1 * rng.standard_normal(K), rng.uniform(4, 5, K))
              for _ in range(M)]
    Xs = rng.standard_normal((S, d))
    return models, Xs, base


class MMIteration:
    params = [[10_000, 20_000]]
    param_names = ["S"]

    def setup(self, S):
        self.models, self.Xs, base = _problem(S)
        self.mix = large_mixture(self.models)
        self.cache = support_cache(self.mix, self.Xs)
        self.beta = base.copy()
        self.beta[:, 0] -= self.mix.shift
        self.var = np.full(5, 4.5)
        self.n_threads = resolve_threads(None)
        st = mm_pass(self.mix, self.Xs, self.beta, self.var, 0, self.n_threads, cache=self.cache)
        # every iteration after the first takes the heaviest target's Gram
        # matrix from the cached total, as _run_mm does
        self.skip = int(np.argmax(st.scal[:, 0]))

    def time_mm_iteration(self, S):
        st = mm_pass(self.mix, self.Xs, self.beta, self.var, 0, self.n_threads,
                     cache=self.cache, skip=self.skip)
        _update(self.mix, st, self.beta, self.var, 0, "exact", [])

    def track_objective(self, S):
        return mm_pass(self.mix, self.Xs, self.beta, self.var, 0, self.n_threads,
                       cache=self.cache).objective


class Aggregate:
    params = [["kl", "w2"]]
    param_names = ["cost"]
    timeout = 600

    def setup(self, cost):
        self.models, self.Xs, _ = _problem(20_000)
        aggregate(self.models[:2], X_support=self.Xs[:200], cost=cost, n_init=1, max_iter=2)

    def time_aggregate(self, cost):
        aggregate(self.models, X_support=self.Xs, cost=cost, random_state=0)

    def track_aggregate_objective(self, cost):
        return aggregate(self.models, X_support=self.Xs, cost=cost, random_state=0).objective


class ReductionMemory:
    """Peak memory of 10 MM iterations without the cache (the path taken when
    the support is large): flat in S beyond the support array itself
    (S * d * 8 bytes: 1.6 MB at S=1e4, 160 MB at S=1e6)."""

    params = [[10_000, 1_000_000]]
    param_names = ["S"]
    timeout = 900

    def setup(self, S):
        self.models, self.Xs, base = _problem(S)
        self.mix = large_mixture(self.models)
        self.beta = base.copy()
        self.beta[:, 0] -= self.mix.shift
        mm_pass(self.mix, self.Xs[:100], self.beta, np.full(5, 4.5), 0, 1)

    def peakmem_mm_loop(self, S):
        _run_mm(self.mix, self.Xs, self.beta, np.full(5, 4.5), cost=0,
                variance_update="exact", max_iter=10, tol=0.0, n_threads=resolve_threads(None))

"""Engine benchmarks: the fused EM pass, the standalone gate Newton step (used
by the k-means start and the reduction's gate refit), one EM iteration, a fit."""

import numpy as np

from fastmoe import fit_moe
from fastmoe._em import EMData, run_em
from fastmoe._gating import newton_system
from fastmoe._linalg import resolve_threads

from .common import SIZE_NAMES, SIZES, problem


class _Stage:
    params = [SIZE_NAMES]
    param_names = ["n x d x K"]
    timeout = 600

    def setup(self, size):
        n, d, K = SIZES[SIZE_NAMES.index(size)]
        X, y, truth = problem(n, d, K)
        self.data = EMData(X, y, np.ones(n), K, resolve_threads(None))
        self.alpha = truth.gate_aug
        self.beta = truth.expert_aug
        self.beta[:, 0] -= self.data.y_shift
        self.var = truth.expert_var.copy()
        self.data.e_step(self.alpha, self.beta, self.var)
        self.R = self.data.resp.copy()
        newton_system(X, self.data.w, self.R, self.alpha, self.data.chunk, self.data.nc,
                      self.data.n_threads)


class EStep(_Stage):
    """The fused pass (``_kernels.em_pass``) that is an EM iteration's cost."""

    def time_e_step(self, size):
        self.data.e_step(self.alpha, self.beta, self.var)

    def peakmem_e_step(self, size):
        self.data.e_step(self.alpha, self.beta, self.var)

    def track_loglik(self, size):
        return self.data.e_step(self.alpha, self.beta, self.var)


class GateNewton(_Stage):
    def time_newton_step(self, size):
        d = self.data
        newton_system(d.X, d.w, self.R, self.alpha, d.chunk, d.nc, d.n_threads)


class EMIteration(_Stage):
    def time_em_iteration(self, size):
        run_em(self.data, self.alpha, self.beta, self.var, max_iter=1, tol=-1.0,
               gate_steps=1, var_floor=1e-9)

    def peakmem_em_iteration(self, size):
        run_em(self.data, self.alpha, self.beta, self.var, max_iter=1, tol=-1.0,
               gate_steps=1, var_floor=1e-9)


class Fit:
    """Ten EM iterations from a random start (a fixed amount of work)."""

    params = [SIZE_NAMES]
    param_names = ["n x d x K"]
    timeout = 1200

    def setup(self, size):
        self.n, self.d, self.K = SIZES[SIZE_NAMES.index(size)]
        self.X, self.y, _ = problem(self.n, self.d, self.K)
        fit_moe(self.X[:1000], self.y[:1000], self.K, max_iter=2, tol=0.0, random_state=0)

    def _fit(self):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fit_moe(self.X, self.y, self.K, max_iter=10, tol=0.0, random_state=0)

    def time_fit(self, size):
        self._fit()

    def peakmem_fit(self, size):
        self._fit()

    def track_fit_loglik(self, size):
        return self._fit().log_likelihood


def timeraw_import_and_first_fit():
    """`import fastmoe` and a first small fit in a fresh process (no JIT: the
    fit's kernels are compiled ahead of time)."""
    return """
    import warnings
    import numpy as np
    import fastmoe
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 3))
    y = X[:, 0] + rng.standard_normal(2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fastmoe.fit_moe(X, y, 2, max_iter=3, random_state=0)
    """


def timeraw_import_engine():
    """`import fastmoe.engine` in a fresh process: no scikit-learn, SciPy,
    Dask or numba (the engine issue asks for under 0.5 s)."""
    return """
    import fastmoe.engine
    """


class RoundStatistics:
    """A machine's half of a refinement round at one candidate model:
    the E-step, EM's statistics and the observed-data gradient and Hessian
    (``fastmoe.machine.round_statistics``)."""

    params = [[16384], [3, 5]]
    param_names = ["rows", "K"]
    timeout = 600

    def setup(self, n, K):
        from fastmoe._kernels import warm_up

        self.X, self.y, self.truth = problem(n, 4, K)
        warm_up()

    def time_round_statistics(self, n, K):
        from fastmoe.machine import round_statistics

        round_statistics(self.X, self.y, self.truth)


class FamilyRoundStatistics:
    """:class:`RoundStatistics` for experts of the other families: the
    log-likelihood, its gradient and Hessian and EM's objective's Hessian
    (the compiled ``family_coefficients``)."""

    params = [["poisson", "bernoulli", "gamma"], [3]]
    param_names = ["family", "K"]
    timeout = 600

    def setup(self, family, K):
        from fastmoe._kernels import warm_up
        from fastmoe.datasets import make_moe_regression

        self.X, self.y, self.truth, _ = make_moe_regression(16384, 4, K, family=family,
                                                            random_state=0)
        warm_up()

    def time_round_statistics(self, family, K):
        from fastmoe.machine import round_statistics

        round_statistics(self.X, self.y, self.truth)

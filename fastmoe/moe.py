"""scikit-learn compatible estimators (thin wrappers over the functions)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._em import fit_moe
from ._options import EM_DEFAULTS as _EM
from ._params import MoEParams
from ._validation import check_X, check_y

__all__ = ["GaussianMoERegressor"]


class _MoEPredictMixin:
    """Prediction methods shared by every estimator with a fitted ``params_``."""

    def _params(self) -> MoEParams:
        check_is_fitted(self, "params_")
        return self.params_

    def _X(self, X):
        self._params()
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return check_X(X, self.n_features_in_)

    def _Xy(self, X, y):
        X = self._X(X)
        if y is None:
            raise ValueError("y is required: posteriors and densities are of (x, y) pairs; "
                             "use predict_gate_proba(X) for the gates alone.")
        return X, check_y(y, X.shape[0])

    def predict_quantile(self, X, q):
        """(n,) or (n, m) quantiles of f(y | x) (:meth:`MoEParams.predict_quantile`)."""
        return self._params().predict_quantile(self._X(X), q, n_threads=self.n_threads)

    def predict_interval(self, X, level=0.9):
        """(n, 2) equal-tailed predictive intervals holding probability
        ``level`` (0.9: 90% intervals; :meth:`MoEParams.predict_interval`)."""
        return self._params().predict_interval(self._X(X), level, n_threads=self.n_threads)

    def _set_params_attributes(self, params: MoEParams):
        self.params_ = params
        self.gate_coef_ = params.gate_coef
        self.gate_intercept_ = params.gate_intercept
        self.expert_coef_ = params.expert_coef
        self.expert_intercept_ = params.expert_intercept
        self.expert_var_ = params.expert_var
        self.n_features_in_ = params.n_features

    def predict(self, X) -> np.ndarray:
        """(n,) conditional mean E[y | x]."""
        return self._params().predict_mean(self._X(X), n_threads=self.n_threads)

    def predict_var(self, X) -> np.ndarray:
        """(n,) conditional variance Var[y | x]."""
        return self._params().predict_var(self._X(X), n_threads=self.n_threads)

    def predict_gate_proba(self, X) -> np.ndarray:
        """(n, K) gate probabilities pi_k(x)."""
        return self._params().gate_proba(self._X(X), n_threads=self.n_threads)

    def predict_proba(self, X, y=None) -> np.ndarray:
        """(n, K) posterior responsibilities P(expert k | x, y).

        Without ``y`` this is the posterior given x alone, which is the gate
        probability pi_k(x) (as ``predict_gate_proba``).
        """
        if y is None:
            return self.predict_gate_proba(X)
        return self._params().posterior(*self._Xy(X, y), n_threads=self.n_threads)

    def score_samples(self, X, y=None) -> np.ndarray:
        """(n,) log f(y_i | x_i)."""
        return self._params().score_samples(*self._Xy(X, y), n_threads=self.n_threads)

    def log_likelihood(self, X, y) -> float:
        """Total log-likelihood sum_i log f(y_i | x_i)."""
        return float(np.sum(self.score_samples(X, y)))

    def bic(self, X, y) -> float:
        """Bayesian information criterion (lower is better)."""
        n = self._X(X).shape[0]
        return -2.0 * self.log_likelihood(X, y) + self._params().n_parameters * np.log(n)

    def aic(self, X, y) -> float:
        """Akaike information criterion (lower is better)."""
        return -2.0 * self.log_likelihood(X, y) + 2.0 * self._params().n_parameters

    def summary(self, feature_names=None, robust: bool = False) -> str:
        """A coefficient table per gate and expert: estimate, standard error,
        z and p (:func:`fastmoe.inference.summary`).

        Parameters
        ----------
        feature_names : sequence of str, optional
            Names of the covariates (default: ``feature_names_in_`` when the
            fit saw a DataFrame, else x0, x1, ...).
        robust : bool, default False
            The sandwich standard errors (``robust_standard_errors_``)
            instead of those of the observed information.

        Returns
        -------
        str
            The table.
        """
        from .inference import summary

        se = self.robust_standard_errors_ if robust else self.standard_errors_
        if se is None:
            raise ValueError("no standard errors: " + (
                "this fit kept no sandwich (robust) estimate" if robust else
                "the one-shot estimator (refine_rounds=0) is not the maximum-likelihood fit "
                "of the rows; refine to get them"))
        if feature_names is None:
            feature_names = getattr(self, "feature_names_in_", None)
        return summary(self._params(), se, feature_names)

    def sample(self, X, random_state=None):
        """Draw y ~ f(. | x) for each row of X; returns (y, labels)."""
        return self._params().sample(self._X(X), random_state)


class GaussianMoERegressor(_MoEPredictMixin, RegressorMixin, BaseEstimator):
    """Softmax-gated Gaussian mixture-of-experts regression fitted by EM.

    Parameters
    ----------
    n_experts : int, default=2
        Number of experts K.
    max_iter : int, default=2000
        EM iterations at most per start (see :data:`fastmoe._options.MAX_ITER`).
    tol : float, default=1e-7
        Stop when the log-likelihood changes by less than ``tol * |loglik|``.
    n_init : int, default=1
        Starts; the best log-likelihood is kept.
    init : {"random", "kmeans"} or MoEParams, default="random"
        See :func:`fastmoe.fit_moe`.
    init_iter : int or None, default=20
        With n_init > 1, EM iterations of every start before only the best
        goes on (see :func:`fastmoe.fit_moe`); None: every start to the end.
    reg_var : float, default=1e-6
        Variance floor relative to Var(y).
    gate_penalty : float, default=0.0
        Ridge penalty on the gate slopes in standard-deviation units (see
        :func:`fastmoe.fit_moe`); 0 is the plain MLE.
    penalty : None or "l1", default=None
        "l1": the LASSO option on the expert and gate slopes, of strength
        ``l1_strength`` (see :func:`fastmoe.fit_moe`).
    l1_strength : float or "auto", default="auto"
        The L1 strength in log-likelihood units ("auto": the universal
        threshold, see :func:`fastmoe.fit_moe`).
    gate_steps : int, default=1
        Newton steps on the gates per EM iteration.
    split_merge : bool, default=True
        Merge duplicated experts and split the broadest one when EM has
        found two experts with the same density (see :func:`fastmoe.fit_moe`).
    random_state : None, int or numpy Generator, default=None
        Seeds the starts; the fit is reproducible from it.
    n_threads : int, optional
        Threads of the compiled kernels (None: all cores).

    Attributes
    ----------
    params_ : MoEParams
        The fitted model.
    gate_coef_ : ndarray of shape (K, d)
        Gate slopes (the last gate is the zero reference).
    gate_intercept_ : ndarray of shape (K,)
        Gate intercepts.
    expert_coef_ : ndarray of shape (K, d)
        Expert slopes.
    expert_intercept_ : ndarray of shape (K,)
        Expert intercepts.
    expert_var_ : ndarray of shape (K,)
        Expert noise variances.
    log_likelihood_ : float
        Training log-likelihood.
    n_iter_ : int
        EM iterations of the kept start.
    converged_ : bool
        Whether EM met ``tol`` within ``max_iter``.
    history_ : ndarray of shape (n_iter + 1,)
        Log-likelihood per iteration (less the gate penalty, when there is
        one).
    fit_ : MoEFit
        The full result of :func:`fastmoe.fit_moe` (starts, moves, notes).
    standard_errors_ : MoEParams
        Standard errors of every parameter from the observed information
        (:mod:`fastmoe.inference`): the last gate's are zero, variances in
        variance units. Valid at the maximum-likelihood fit (not with a
        gate penalty or the L1 option, where they ignore the penalty).
    robust_standard_errors_ : MoEParams
        The sandwich estimate, for a misspecified model.
    n_features_in_ : int
        Number of covariates seen by ``fit``.

    Examples
    --------
    >>> from fastmoe import GaussianMoERegressor
    >>> from fastmoe.datasets import make_moe_regression
    >>> X, y, _, _ = make_moe_regression(2000, 2, 2, random_state=0)
    >>> model = GaussianMoERegressor(n_experts=2, random_state=0).fit(X, y)
    >>> model.score(X, y) > 0.9
    True
    """

    def __init__(self, n_experts=2, *, max_iter=_EM.max_iter, tol=_EM.tol, n_init=_EM.n_init,
                 init=_EM.init, init_iter=_EM.init_iter, reg_var=_EM.reg_var,
                 gate_penalty=_EM.gate_penalty, penalty=_EM.penalty,
                 l1_strength=_EM.l1_strength, gate_steps=_EM.gate_steps,
                 split_merge=_EM.split_merge, random_state=None, n_threads=None):
        self.n_experts = n_experts
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.init = init
        self.init_iter = init_iter
        self.reg_var = reg_var
        self.gate_penalty = gate_penalty
        self.penalty = penalty
        self.l1_strength = l1_strength
        self.gate_steps = gate_steps
        self.split_merge = split_merge
        self.random_state = random_state
        self.n_threads = n_threads

    def fit(self, X, y, sample_weight=None):
        """Fit by EM.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        y : array-like of shape (n,)
            Responses.
        sample_weight : array-like of shape (n,), optional
            Non-negative weights of the rows (default ones).

        Returns
        -------
        GaussianMoERegressor
            The fitted estimator (self).
        """
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        fit = fit_moe(X, y, self.n_experts, sample_weight=sample_weight,
                      max_iter=self.max_iter, tol=self.tol, n_init=self.n_init,
                      init=self.init, init_iter=self.init_iter, reg_var=self.reg_var,
                      gate_penalty=self.gate_penalty, penalty=self.penalty,
                      l1_strength=self.l1_strength, gate_steps=self.gate_steps,
                      split_merge=self.split_merge,
                      random_state=self.random_state, n_threads=self.n_threads)
        self._set_params_attributes(fit.params)
        from .inference import _both

        self.standard_errors_, self.robust_standard_errors_ = _both(
            fit.params, X, y, sample_weight)
        self.log_likelihood_ = fit.log_likelihood
        self.n_iter_ = fit.n_iter
        self.converged_ = fit.converged
        self.history_ = fit.history
        self.fit_ = fit
        return self

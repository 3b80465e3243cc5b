"""scikit-learn compatible estimators (thin wrappers over the functions)."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._em import fit_moe
from ._options import CENTRAL_N_INIT, EMOptions
from ._options import EM_DEFAULTS as _EM
from ._params import MoEParams
from ._validation import check_X, check_y
from .families import get_family

__all__ = ["GaussianMoERegressor", "MoERegressor", "MoEClassifier"]


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

    def predict(self, X, offset=None) -> np.ndarray:
        """(n,) conditional mean E[y | x] (``offset``: a known term added to
        the experts' linear predictors, such as a log exposure)."""
        return self._params().predict_mean(self._X(X), offset=offset, n_threads=self.n_threads)

    def predict_var(self, X, offset=None) -> np.ndarray:
        """(n,) conditional variance Var[y | x] (``offset`` as in :meth:`predict`)."""
        return self._params().predict_var(self._X(X), offset=offset, n_threads=self.n_threads)

    def predict_gate_proba(self, X) -> np.ndarray:
        """(n, K) gate probabilities pi_k(x)."""
        return self._params().gate_proba(self._X(X), n_threads=self.n_threads)

    def predict_proba(self, X, y=None, offset=None) -> np.ndarray:
        """(n, K) posterior responsibilities P(expert k | x, y).

        Without ``y`` this is the posterior given x alone, which is the gate
        probability pi_k(x) (as ``predict_gate_proba``).
        """
        if y is None:
            return self.predict_gate_proba(X)
        return self._params().posterior(*self._Xy(X, y), offset=offset,
                                        n_threads=self.n_threads)

    def score_samples(self, X, y=None, offset=None) -> np.ndarray:
        """(n,) log f(y_i | x_i) (``offset`` as in :meth:`predict`)."""
        return self._params().score_samples(*self._Xy(X, y), offset=offset,
                                            n_threads=self.n_threads)

    def log_likelihood(self, X, y, offset=None) -> float:
        """Total log-likelihood sum_i log f(y_i | x_i)."""
        return float(np.sum(self.score_samples(X, y, offset)))

    def bic(self, X, y, offset=None) -> float:
        """Bayesian information criterion (lower is better)."""
        n = self._X(X).shape[0]
        return -2.0 * self.log_likelihood(X, y, offset) \
            + self._params().n_parameters * np.log(n)

    def aic(self, X, y, offset=None) -> float:
        """Akaike information criterion (lower is better)."""
        return -2.0 * self.log_likelihood(X, y, offset) + 2.0 * self._params().n_parameters

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

    def sample(self, X, random_state=None, offset=None):
        """Draw y ~ f(. | x) for each row of X; returns (y, labels)."""
        return self._params().sample(self._X(X), random_state, offset=offset)


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
    n_init : int, default=3
        Starts, each run to convergence; the best log-likelihood is kept
        (``fastmoe._options.CENTRAL_N_INIT``: on four of eight real tables
        one start ended 32 to 277 nats lower).
    init : {"random", "kmeans"} or MoEParams, default="random"
        See :func:`fastmoe.fit_moe`.
    init_iter : int or None, default=None
        None runs every start to convergence; an int runs every start that
        many iterations and only the best goes on (em-EM, see
        :func:`fastmoe.fit_moe`).
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
    accelerate : bool, default=True
        SQUAREM extrapolations of EM (see :func:`fastmoe.fit_moe`); False
        runs plain EM.
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

    def __init__(self, n_experts=2, *, max_iter=_EM.max_iter, tol=_EM.tol, n_init=CENTRAL_N_INIT,
                 init=_EM.init, init_iter=_EM.init_iter, reg_var=_EM.reg_var,
                 gate_penalty=_EM.gate_penalty, penalty=_EM.penalty,
                 l1_strength=_EM.l1_strength, gate_steps=_EM.gate_steps,
                 split_merge=_EM.split_merge, accelerate=_EM.accelerate, random_state=None,
                 n_threads=None):
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
        self.accelerate = accelerate
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
        return _fit_em(self, X, y, sample_weight, "gaussian", None)


def _fit_em(est, X, y, sample_weight, family: str, offset):
    """``est`` fitted by :func:`fastmoe.fit_moe` with its options: the
    fitted attributes, and the standard errors where the family has them."""
    # the EM options the estimator has; fit_moe's defaults for the others
    params = est.get_params()
    options = {f.name: params[f.name] for f in fields(EMOptions) if f.name in params}
    fit = fit_moe(X, y, est.n_experts, sample_weight=sample_weight, family=family, offset=offset,
                  random_state=est.random_state, n_threads=est.n_threads, **options)
    est._set_params_attributes(fit.params)
    from .inference import _both

    est.standard_errors_, est.robust_standard_errors_ = _both(
        fit.params, X, y, sample_weight, offset=offset)
    est.log_likelihood_ = fit.log_likelihood
    est.n_iter_ = fit.n_iter
    est.converged_ = fit.converged
    est.history_ = fit.history
    est.fit_ = fit
    return est


class MoERegressor(_MoEPredictMixin, RegressorMixin, BaseEstimator):
    """Softmax-gated mixture-of-experts regression with experts of any
    family, fitted by EM.

    Gaussian experts for a real response (the model of
    :class:`GaussianMoERegressor`), Poisson experts (log link) for counts,
    Gamma experts (log link, a shape per expert) for a positive response
    (:mod:`fastmoe.families`; for a 0/1 response, :class:`MoEClassifier`).

    Parameters
    ----------
    n_experts : int, default=2
        Number of experts K.
    family : {"gaussian", "poisson", "gamma", "bernoulli"}, default="gaussian"
        The experts' family.
    max_iter : int, default=2000
        EM iterations at most per start.
    tol : float, default=1e-7
        Stop when the log-likelihood changes by less than ``tol * |loglik|``.
    n_init : int, default=3
        Starts, each run to convergence; the best log-likelihood is kept
        (``fastmoe._options.CENTRAL_N_INIT``: on four of eight real tables
        one start ended 32 to 277 nats lower).
    init : {"random", "kmeans"} or MoEParams, default="random"
        See :func:`fastmoe.fit_moe` (a MoEParams of the same family).
    init_iter : int or None, default=None
        None runs every start to convergence; an int runs every start that
        many iterations and only the best goes on (em-EM, see
        :func:`fastmoe.fit_moe`).
    reg_var : float, default=1e-6
        Variance floor relative to Var(y) (Gaussian experts).
    gate_penalty : float, default=0.0
        Ridge penalty on the gate slopes in standard-deviation units; 0 is
        the plain MLE.
    gate_steps : int, default=1
        Newton steps on the gates per EM iteration.
    split_merge : bool, default=True
        The split-merge move of :func:`fastmoe.fit_moe`.
    accelerate : bool, default=True
        SQUAREM extrapolations of EM (see :func:`fastmoe.fit_moe`); False
        runs plain EM.
    random_state : None, int or numpy Generator, default=None
        Seeds the starts; the fit is reproducible from it.
    n_threads : int, optional
        Threads of the compiled kernels (None: all cores).

    Attributes
    ----------
    params_ : MoEParams
        The fitted model (``params_.family`` names the family).
    gate_coef_ : ndarray of shape (K, d)
        Gate slopes (the last gate is the zero reference).
    gate_intercept_ : ndarray of shape (K,)
        Gate intercepts.
    expert_coef_ : ndarray of shape (K, d)
        Expert slopes of the linear predictor.
    expert_intercept_ : ndarray of shape (K,)
        Expert intercepts of the linear predictor.
    expert_var_ : ndarray of shape (K,)
        Expert dispersions: Gaussian variances, Gamma 1/shape, 1 for Poisson.
    log_likelihood_ : float
        Training log-likelihood.
    n_iter_ : int
        EM iterations of the kept start.
    converged_ : bool
        Whether EM met ``tol`` within ``max_iter``.
    history_ : ndarray of shape (n_iter + 1,)
        Log-likelihood per iteration.
    fit_ : MoEFit
        The full result of :func:`fastmoe.fit_moe`.
    standard_errors_ : MoEParams
        Standard errors from the observed information (:mod:`fastmoe.inference`;
        Gamma dispersions in dispersion units).
    robust_standard_errors_ : MoEParams
        The sandwich estimate, for a misspecified model.
    n_features_in_ : int
        Number of covariates seen by ``fit``.

    Examples
    --------
    >>> from fastmoe import MoERegressor
    >>> from fastmoe.datasets import make_moe_regression
    >>> X, y, _, _ = make_moe_regression(3000, 2, 2, family="poisson", random_state=0)
    >>> model = MoERegressor(n_experts=2, family="poisson", random_state=0).fit(X, y)
    >>> model.params_.family
    'poisson'
    """

    def __init__(self, n_experts=2, *, family="gaussian", max_iter=_EM.max_iter, tol=_EM.tol,
                 n_init=CENTRAL_N_INIT, init=_EM.init, init_iter=_EM.init_iter,
                 reg_var=_EM.reg_var, gate_penalty=_EM.gate_penalty,
                 gate_steps=_EM.gate_steps, split_merge=_EM.split_merge,
                 accelerate=_EM.accelerate, random_state=None, n_threads=None):
        self.n_experts = n_experts
        self.family = family
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.init = init
        self.init_iter = init_iter
        self.reg_var = reg_var
        self.gate_penalty = gate_penalty
        self.gate_steps = gate_steps
        self.split_merge = split_merge
        self.accelerate = accelerate
        self.random_state = random_state
        self.n_threads = n_threads

    def fit(self, X, y, sample_weight=None, offset=None):
        """Fit by EM.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        y : array-like of shape (n,)
            Responses (counts for Poisson experts, > 0 for Gamma experts).
        sample_weight : array-like of shape (n,), optional
            Non-negative weights of the rows (default ones).
        offset : array-like of shape (n,), optional
            A known term added to every expert's linear predictor (the log
            exposure of Poisson counts); pass it to the predictions too.

        Returns
        -------
        MoERegressor
            The fitted estimator (self).
        """
        family = get_family(self.family).name
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        return _fit_em(self, X, y, sample_weight, family, offset)


class _BinaryMixin:
    """The label handling of the binary classifiers (Bernoulli experts):
    ``classes_``, class probabilities, labels in and out."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.regressor_tags = None
        return tags

    def _set_classes(self, y) -> np.ndarray:
        """``classes_`` from the labels y (exactly two); the events (y = classes_[1])."""
        from sklearn.utils.multiclass import type_of_target

        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind != "binary":
            raise ValueError(f"Only binary classification is supported ({type(self).__name__} "
                             f"needs exactly two classes); the type of the target is {kind}.")
        self.classes_ = np.unique(y)
        if self.classes_.size != 2:
            raise ValueError(f"Only binary classification is supported ({type(self).__name__} "
                             "needs exactly two classes); y has 1 class.")
        return self._events(y)

    def _events(self, y) -> np.ndarray:
        """(n,) 1.0 where y is ``classes_[1]``, 0.0 where it is ``classes_[0]``."""
        check_is_fitted(self, "classes_")
        y = np.asarray(y)
        known = np.isin(y, self.classes_)
        if not np.all(known):
            raise ValueError(f"y holds labels outside classes_ {self.classes_.tolist()}.")
        return (y == self.classes_[1]).astype(np.float64)

    def predict_proba(self, X, offset=None) -> np.ndarray:
        """(n, 2) class probabilities, in the order of ``classes_``.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        offset : array-like of shape (n,), optional
            Added to the experts' log-odds.

        Returns
        -------
        ndarray of shape (n, 2)
            P(y = classes_[0] | x), P(y = classes_[1] | x).
        """
        p = np.clip(super().predict(X, offset), 0.0, 1.0)
        return np.column_stack([1.0 - p, p])

    def predict(self, X, offset=None) -> np.ndarray:
        """(n,) the more probable label of each row.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        offset : array-like of shape (n,), optional
            Added to the experts' log-odds.

        Returns
        -------
        ndarray of shape (n,)
            Labels from ``classes_``.
        """
        event = self.predict_proba(X, offset)[:, 1] > 0.5
        return self.classes_[event.astype(int)]

    def predict_posterior(self, X, y, offset=None) -> np.ndarray:
        """(n, K) the experts' posteriors P(expert k | x, y).

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        y : array-like of shape (n,)
            Labels from ``classes_``.
        offset : array-like of shape (n,), optional
            Added to the experts' log-odds.

        Returns
        -------
        ndarray of shape (n, K)
            Rows sum to 1.
        """
        return super().predict_proba(X, self._events(y), offset)

    def score_samples(self, X, y=None, offset=None) -> np.ndarray:
        """(n,) log P(y_i | x_i).

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        y : array-like of shape (n,)
            Labels from ``classes_``.
        offset : array-like of shape (n,), optional
            Added to the experts' log-odds.

        Returns
        -------
        ndarray of shape (n,)
            The rows' log-likelihoods.
        """
        check_is_fitted(self, "classes_")
        return super().score_samples(X, None if y is None else self._events(y), offset)

    def sample(self, X, random_state=None, offset=None):
        """Draw a label for each row of X; returns (labels, experts).

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        random_state : None, int or numpy Generator
            Seeds the draw.
        offset : array-like of shape (n,), optional
            Added to the experts' log-odds.

        Returns
        -------
        labels : ndarray of shape (n,)
            Labels from ``classes_``.
        experts : ndarray of shape (n,)
            The expert that drew each.
        """
        y, experts = super().sample(X, random_state, offset)
        check_is_fitted(self, "classes_")
        return self.classes_[y.astype(int)], experts


class MoEClassifier(_BinaryMixin, _MoEPredictMixin, ClassifierMixin, BaseEstimator):
    """Softmax-gated mixture of logistic-regression experts for a binary
    response, fitted by EM (Bernoulli experts, :mod:`fastmoe.families`).

    ``predict_proba(X)`` gives the class probabilities sum_k pi_k(x)
    mu_k(x) of ``classes_``, as scikit-learn's classifiers do; the experts'
    posteriors are :meth:`predict_posterior`.

    Parameters
    ----------
    n_experts : int, default=2
        Number of experts K.
    max_iter : int, default=2000
        EM iterations at most per start.
    tol : float, default=1e-7
        Stop when the log-likelihood changes by less than ``tol * |loglik|``.
    n_init : int, default=3
        Starts, each run to convergence; the best log-likelihood is kept
        (``fastmoe._options.CENTRAL_N_INIT``: on four of eight real tables
        one start ended 32 to 277 nats lower).
    init : {"random", "kmeans"} or MoEParams, default="random"
        See :func:`fastmoe.fit_moe` (a MoEParams of Bernoulli experts).
    init_iter : int or None, default=None
        None runs every start to convergence; an int runs every start that
        many iterations and only the best goes on (em-EM, see
        :func:`fastmoe.fit_moe`).
    gate_penalty : float, default=0.0
        Ridge penalty on the gate slopes in standard-deviation units; 0 is
        the plain MLE.
    gate_steps : int, default=1
        Newton steps on the gates per EM iteration.
    accelerate : bool, default=True
        SQUAREM extrapolations of EM (see :func:`fastmoe.fit_moe`); False
        runs plain EM.
    random_state : None, int or numpy Generator, default=None
        Seeds the starts; the fit is reproducible from it.
    n_threads : int, optional
        Threads of the compiled kernels (None: all cores).

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        The two labels; the second is the event the experts model (y = 1).
    params_ : MoEParams
        The fitted model (``family="bernoulli"``).
    gate_coef_ : ndarray of shape (K, d)
        Gate slopes (the last gate is the zero reference).
    gate_intercept_ : ndarray of shape (K,)
        Gate intercepts.
    expert_coef_ : ndarray of shape (K, d)
        Expert slopes (log-odds of ``classes_[1]``).
    expert_intercept_ : ndarray of shape (K,)
        Expert intercepts (log-odds).
    log_likelihood_ : float
        Training log-likelihood.
    n_iter_ : int
        EM iterations of the kept start.
    converged_ : bool
        Whether EM met ``tol`` within ``max_iter``.
    history_ : ndarray of shape (n_iter + 1,)
        Log-likelihood per iteration.
    fit_ : MoEFit
        The full result of :func:`fastmoe.fit_moe`.
    n_features_in_ : int
        Number of covariates seen by ``fit``.

    Examples
    --------
    >>> from fastmoe import MoEClassifier
    >>> from fastmoe.datasets import make_moe_regression
    >>> X, y, _, _ = make_moe_regression(3000, 2, 2, family="bernoulli", random_state=0)
    >>> model = MoEClassifier(n_experts=2, random_state=0).fit(X, y)
    >>> model.predict_proba(X[:3]).shape
    (3, 2)
    """

    def __init__(self, n_experts=2, *, max_iter=_EM.max_iter, tol=_EM.tol, n_init=CENTRAL_N_INIT,
                 init=_EM.init, init_iter=_EM.init_iter, gate_penalty=_EM.gate_penalty,
                 gate_steps=_EM.gate_steps, accelerate=_EM.accelerate, random_state=None,
                 n_threads=None):
        self.n_experts = n_experts
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.init = init
        self.init_iter = init_iter
        self.gate_penalty = gate_penalty
        self.gate_steps = gate_steps
        self.accelerate = accelerate
        self.random_state = random_state
        self.n_threads = n_threads

    def fit(self, X, y, sample_weight=None, offset=None):
        """Fit by EM.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        y : array-like of shape (n,)
            Two labels (any two values).
        sample_weight : array-like of shape (n,), optional
            Non-negative weights of the rows (default ones).
        offset : array-like of shape (n,), optional
            A known term added to every expert's log-odds.

        Returns
        -------
        MoEClassifier
            The fitted estimator (self).
        """
        X, y = validate_data(self, X, y, dtype=np.float64)
        events = self._set_classes(y)
        return _fit_em(self, X, events, sample_weight, "bernoulli", offset)

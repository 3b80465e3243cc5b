"""Simulated mixture-of-experts regression data with known truth."""

from __future__ import annotations

import numpy as np

from ._params import MoEParams
from ._validation import check_choice, check_int, check_random_state
from .families import get_family

__all__ = ["make_moe_regression", "authors_truth"]

DESIGNS = ("separated", "authors")


def authors_truth(n_features: int = 20, n_experts: int = 5, random_state=None) -> MoEParams:
    """True parameters drawn as in the authors' simulations (docs/method.rst, section 7).

    Intercepts of the experts linspace(-5, 5, K); expert slopes and gate
    coefficients integers in [-5, 5]; variances drawn from {4, 5}.

    Parameters
    ----------
    n_features : int, default=20
        The number of covariates d.
    n_experts : int, default=5
        The number of experts K.
    random_state : None, int or numpy.random.Generator
        The seed.

    Returns
    -------
    MoEParams
        The true model.
    """
    rng = check_random_state(random_state)
    K, d = n_experts, n_features
    gates = rng.integers(-5, 6, size=(K, d + 1)).astype(float)
    gates[-1] = 0.0
    slopes = rng.integers(-5, 6, size=(K, d)).astype(float)
    return MoEParams(gates[:, 1:], gates[:, 0], slopes, np.linspace(-5, 5, K),
                     rng.choice([4.0, 5.0], size=K))


def make_moe_regression(n_samples: int, n_features: int, n_experts: int, *,
                        design: str = "separated", params: MoEParams | None = None,
                        family: str = "gaussian", random_state=None):
    """Draw (X, y) from a mixture of experts (Gaussian unless ``family`` says).

    Parameters
    ----------
    n_samples : int
        The number of rows n.
    n_features : int
        The number of covariates d.
    n_experts : int
        The number of experts K.
    design : {"separated", "authors"}, default="separated"
        "separated": X ~ N(0, I); expert intercepts spread 4 apart, slopes
        N(0, 1), variances 0.25 to 0.5, gates with slopes of size 3 so that
        every expert owns a region of covariate space (an easy, identifiable
        problem for recovery tests).
        "authors": the authors' synthetic design (K-component Gaussian mixture
        covariates with correlation ``4**-abs(i - j)``, integer coefficients,
        variances 4-5, X z-scored), docs/method.rst, section 7.
    params : MoEParams, optional
        True parameters to use instead of drawing them (their family is the
        data's).
    family : {"gaussian", "poisson", "bernoulli", "gamma"}, default="gaussian"
        The experts' family of the drawn truth (design "separated"): the
        gates as above; Poisson experts with log-means spread over [0, 2.5]
        and slopes N(0, 0.3^2); Bernoulli experts with log-odds spread over
        [-2.5, 2.5] and slopes N(0, 1); Gamma experts as the Poisson ones,
        with shapes 2 to 5.
    random_state : None, int or numpy.random.Generator
        The seed.

    Returns
    -------
    X : ndarray of shape (n, d)
        The covariates.
    y : ndarray of shape (n,)
        The responses.
    truth : MoEParams
        The true model.
    labels : ndarray of int, shape (n,)
        The expert that drew each row.
    """
    n = check_int(n_samples, "n_samples")
    d = check_int(n_features, "n_features")
    K = check_int(n_experts, "n_experts")
    check_choice(design, "design", DESIGNS)
    family = get_family(family).name
    if family != "gaussian" and design != "separated" and params is None:
        raise ValueError(f"design={design!r} draws Gaussian experts; use design='separated' "
                         f"or params for family={family!r}.")
    rng = check_random_state(random_state)
    if design == "authors":
        truth = params if params is not None else authors_truth(d, K, rng)
        cov = 4.0 ** -np.abs(np.subtract.outer(np.arange(d), np.arange(d)))
        means = rng.integers(-4, 5, size=(K, d)).astype(float)
        comp = rng.integers(K, size=n)
        X = means[comp] + rng.multivariate_normal(np.zeros(d), cov, size=n, method="cholesky")
        X = (X - X.mean(axis=0)) / X.std(axis=0)
    else:
        if params is None:
            directions = rng.standard_normal((K, d))
            directions /= np.linalg.norm(directions, axis=1, keepdims=True)
            gate_coef = 3.0 * directions
            gate_coef -= gate_coef[-1]
            truth = _separated_experts(gate_coef, family, K, d, rng)
        else:
            truth = params
        X = rng.standard_normal((n, d))
    if truth.n_features != d or truth.n_experts != K:
        raise ValueError(f"params has {truth.n_experts} experts and {truth.n_features} "
                         f"features; expected {K} and {d}.")
    y, labels = truth.sample(X, rng)
    return X, y, truth, labels


def _separated_experts(gate_coef, family: str, K: int, d: int, rng) -> MoEParams:
    """The "separated" design's truth for ``family`` (see make_moe_regression)."""
    spread = np.linspace(0.0, 1.0, K) if K > 1 else np.zeros(1)
    if family == "gaussian":
        return MoEParams(gate_coef, np.zeros(K), rng.standard_normal((K, d)),
                         4.0 * (np.arange(K) - (K - 1) / 2.0), rng.uniform(0.25, 0.5, size=K))
    if family == "bernoulli":
        return MoEParams(gate_coef, np.zeros(K), rng.standard_normal((K, d)),
                         5.0 * spread - 2.5, np.ones(K), family)
    slopes = 0.3 * rng.standard_normal((K, d))
    var = 1.0 / rng.uniform(2.0, 5.0, size=K) if family == "gamma" else np.ones(K)
    return MoEParams(gate_coef, np.zeros(K), slopes, 2.5 * spread, var, family)

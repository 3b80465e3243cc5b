"""Expert families: the conditional distribution of y given x within one
expert (docs/method.rst, section 11).

Each expert k is a generalised linear model: a linear predictor
eta_k = b_k + x . c_k (plus an optional per-row offset, such as the log
exposure of a count), a mean mu_k = h(eta_k) through the family's inverse
link h, and a dispersion phi_k where the family has one:

=============  =============  ==================  ==========================
family         y              mean mu = h(eta)    dispersion phi (expert_var)
=============  =============  ==================  ==========================
``gaussian``   real           eta (identity)      the variance
``poisson``    0, 1, 2, ...   exp(eta) (log)      none (1)
``bernoulli``  0 or 1         1/(1+exp(-eta))     none (1)
``gamma``      > 0            exp(eta) (log)      1/shape: Var = phi mu^2
=============  =============  ==================  ==========================

A family gives what EM and the predictions need: the log-density at the
linear predictor, the mean and variance, the working response and weights of
iteratively reweighted least squares (IRLS, the experts' M-step), the
maximum-likelihood dispersion, and draws. Every function takes a linear
predictor ``eta`` of shape (n, K) and responses ``y`` of shape (n, 1) or
(n,); none modifies its inputs.
"""

from __future__ import annotations

import numpy as np


def _special():
    """scipy.special, imported where a family first needs it: the model
    module imports this one, and ``import fastmoe.engine`` should not pay
    for SciPy's special functions (about 0.2 s)."""
    import scipy.special

    return scipy.special

__all__ = ["FAMILIES", "get_family", "Family"]

#: the expert families fastmoe fits
FAMILIES = ("gaussian", "poisson", "bernoulli", "gamma")

#: the largest linear predictor the log-link families exponentiate (exp(700)
#: is near float64's largest number)
MAX_ETA = 700.0
#: gamma shapes are kept in [1/MAX_SHAPE, MAX_SHAPE] (a perfect fit would send
#: the shape to infinity)
MAX_SHAPE = 1e8


class Family:
    """One expert family (see the module's table).

    Attributes
    ----------
    name : str
        One of :data:`FAMILIES`.
    has_dispersion : bool
        Whether each expert has a fitted dispersion phi_k (Gaussian, Gamma);
        otherwise phi_k is 1.
    """

    name = ""
    has_dispersion = False

    def check_y(self, y: np.ndarray) -> None:
        """Raise a ValueError of one line when ``y`` is outside the family's
        support.

        Parameters
        ----------
        y : ndarray of shape (n,)
            Finite responses.
        """

    def mean(self, eta: np.ndarray) -> np.ndarray:
        """The mean h(eta).

        Parameters
        ----------
        eta : ndarray
            Linear predictors.

        Returns
        -------
        ndarray
            The means, of eta's shape.
        """
        raise NotImplementedError

    def variance(self, mu: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Var[y] at mean ``mu`` and dispersion ``phi`` (broadcast).

        Parameters
        ----------
        mu : ndarray
            Means.
        phi : ndarray
            Dispersions.

        Returns
        -------
        ndarray
            The variances.
        """
        raise NotImplementedError

    def log_density(self, y: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """log f(y | eta, phi), broadcast over ``y`` (n, 1) and ``eta`` (n, K).

        Parameters
        ----------
        y : ndarray
            Responses.
        eta : ndarray
            Linear predictors.
        phi : ndarray
            Dispersions, one per column of ``eta``.

        Returns
        -------
        ndarray
            The log-densities.
        """
        return self.log_kernel(y, eta, phi) + self.base(y)

    def log_kernel(self, y: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """log f(y | eta, phi) less :meth:`base` (the terms of y alone, which
        EM computes once per fit).

        Parameters
        ----------
        y : ndarray
            Responses.
        eta : ndarray
            Linear predictors.
        phi : ndarray
            Dispersions, one per column of ``eta``.

        Returns
        -------
        ndarray
            The log-densities less the terms of y alone.
        """
        raise NotImplementedError

    def base(self, y: np.ndarray) -> np.ndarray:
        """The terms of log f that depend on y alone (log y! for Poisson,
        -log y for Gamma, 0 otherwise).

        Parameters
        ----------
        y : ndarray
            Responses.

        Returns
        -------
        ndarray
            Of y's shape.
        """
        return np.zeros(np.shape(y))

    def working(self, y: np.ndarray, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """IRLS's working response z and weight W at ``eta`` (Fisher
        scoring: one weighted least-squares solve of z on (1, x) with
        weights W is one scoring step; for the canonical links of Poisson and
        Bernoulli it is Newton's step). W omits the constant 1/phi.

        Parameters
        ----------
        y : ndarray
            Responses.
        eta : ndarray
            Linear predictors.

        Returns
        -------
        z, W : ndarray
            Working responses and weights, of the broadcast shape.
        """
        raise NotImplementedError

    def dispersion(self, y: np.ndarray, mu: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """The maximum-likelihood dispersion of each expert given its means
        and row weights (ones for the families without one).

        Parameters
        ----------
        y : ndarray of shape (n, 1)
            Responses.
        mu : ndarray of shape (n, K)
            Each expert's means.
        weight : ndarray of shape (n, K)
            Each row's weight for each expert (the sample weight times the
            posterior).

        Returns
        -------
        ndarray of shape (K,)
            phi_k.
        """
        return np.ones(mu.shape[1])

    def eta_derivatives(self, y, eta, phi) -> tuple[np.ndarray, np.ndarray]:
        """First and second derivatives of log f in the linear predictor.

        Parameters
        ----------
        y : ndarray of shape (n, 1)
            Responses.
        eta : ndarray of shape (n, K)
            Linear predictors.
        phi : ndarray of shape (K,)
            Dispersions.

        Returns
        -------
        a, h : ndarray of shape (n, K)
            d log f / d eta and d2 log f / d eta2.
        """
        raise NotImplementedError

    def tau_derivatives(self, y, eta, phi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Derivatives of log f in tau = log phi (families with a dispersion).

        Parameters
        ----------
        y : ndarray of shape (n, 1)
            Responses.
        eta : ndarray of shape (n, K)
            Linear predictors.
        phi : ndarray of shape (K,)
            Dispersions.

        Returns
        -------
        s, tt, et : ndarray of shape (n, K)
            d log f / d tau, d2 log f / d tau2 and d2 log f / d eta d tau.
        """
        raise NotImplementedError

    def link(self, y: np.ndarray) -> np.ndarray:
        """The responses mapped to the scale of the linear predictor, kept
        finite (for starts).

        Parameters
        ----------
        y : ndarray
            Responses.

        Returns
        -------
        ndarray
            g(y), shrunk away from the support's edges.
        """
        raise NotImplementedError

    def draw(self, mu: np.ndarray, phi: np.ndarray, rng) -> np.ndarray:
        """One response per mean.

        Parameters
        ----------
        mu : ndarray of shape (n,)
            Means.
        phi : ndarray of shape (n,)
            Dispersions.
        rng : numpy Generator
            The random numbers.

        Returns
        -------
        ndarray of shape (n,)
            The draws.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Family({self.name!r})"


class _Gaussian(Family):
    name, has_dispersion = "gaussian", True

    def mean(self, eta):
        return np.array(eta, dtype=np.float64)

    def variance(self, mu, phi):
        return np.broadcast_to(phi, np.shape(mu)).astype(np.float64)

    def log_kernel(self, y, eta, phi):
        return -0.5 * (np.log(2.0 * np.pi * phi) + (y - eta) ** 2 / phi)

    def working(self, y, eta):
        return np.broadcast_arrays(np.asarray(y, dtype=np.float64), np.ones_like(eta))

    def dispersion(self, y, mu, weight):
        return np.sum(weight * (y - mu) ** 2, axis=0) / np.sum(weight, axis=0)

    def eta_derivatives(self, y, eta, phi):
        return (y - eta) / phi, np.broadcast_to(-1.0 / phi, np.shape(eta))

    def tau_derivatives(self, y, eta, phi):
        q = (y - eta) ** 2 / phi
        return 0.5 * (q - 1.0), -0.5 * q, -(y - eta) / phi

    def link(self, y):
        return np.array(y, dtype=np.float64)

    def draw(self, mu, phi, rng):
        return mu + np.sqrt(phi) * rng.standard_normal(mu.shape)


class _Poisson(Family):
    name = "poisson"

    def check_y(self, y):
        if np.any(y < 0):
            raise ValueError("family='poisson' needs counts y >= 0; got a negative y.")

    def mean(self, eta):
        return np.exp(np.minimum(eta, MAX_ETA))

    def variance(self, mu, phi):
        return np.array(mu, dtype=np.float64)

    def log_kernel(self, y, eta, phi):
        eta = np.minimum(eta, MAX_ETA)
        # y log mu - mu, with 0 log 0 = 0 where mu underflows
        return np.where(y > 0, y * eta, 0.0) - np.exp(eta)

    def base(self, y):
        return -_special().gammaln(np.asarray(y, dtype=np.float64) + 1.0)

    def working(self, y, eta):
        mu = self.mean(eta)
        return eta + (y - mu) / mu, mu

    def eta_derivatives(self, y, eta, phi):
        mu = self.mean(eta)
        return y - mu, -mu

    def link(self, y):
        return np.log(np.asarray(y, dtype=np.float64) + 0.5)

    def draw(self, mu, phi, rng):
        return rng.poisson(mu).astype(np.float64)


class _Bernoulli(Family):
    name = "bernoulli"

    def check_y(self, y):
        if np.any((y != 0) & (y != 1)):
            raise ValueError("family='bernoulli' needs y in {0, 1}; got other values.")

    def mean(self, eta):
        return _special().expit(eta)

    def variance(self, mu, phi):
        return mu * (1.0 - mu)

    def log_kernel(self, y, eta, phi):
        return y * eta - np.logaddexp(0.0, eta)

    def working(self, y, eta):
        mu = _special().expit(eta)
        W = np.maximum(mu * (1.0 - mu), 1e-12)
        return eta + (y - mu) / W, W

    def eta_derivatives(self, y, eta, phi):
        mu = _special().expit(eta)
        return y - mu, -mu * (1.0 - mu)

    def link(self, y):
        p = 0.25 + 0.5 * np.asarray(y, dtype=np.float64)
        return np.log(p / (1.0 - p))

    def draw(self, mu, phi, rng):
        return (rng.random(mu.shape) < mu).astype(np.float64)


class _Gamma(Family):
    name, has_dispersion = "gamma", True

    def check_y(self, y):
        if np.any(y <= 0):
            raise ValueError("family='gamma' needs y > 0; got y <= 0.")

    def mean(self, eta):
        return np.exp(np.clip(eta, -MAX_ETA, MAX_ETA))

    def variance(self, mu, phi):
        return phi * mu * mu

    def log_kernel(self, y, eta, phi):
        nu = 1.0 / phi
        eta = np.clip(eta, -MAX_ETA, MAX_ETA)
        # shape nu, mean mu: nu log(nu y / mu) - nu y / mu - log y - log Gamma(nu)
        return nu * (np.log(nu * y) - eta) - nu * y * np.exp(-eta) - _special().gammaln(nu)

    def base(self, y):
        return -np.log(np.asarray(y, dtype=np.float64))

    def working(self, y, eta):
        eta = np.clip(eta, -MAX_ETA, MAX_ETA)
        return eta + y * np.exp(-eta) - 1.0, np.ones(np.broadcast_shapes(np.shape(y),
                                                                          np.shape(eta)))

    def eta_derivatives(self, y, eta, phi):
        nu, ratio = 1.0 / phi, y * np.exp(-np.clip(eta, -MAX_ETA, MAX_ETA))
        return nu * (ratio - 1.0), -nu * ratio

    def tau_derivatives(self, y, eta, phi):
        # tau = log phi, nu = exp(-tau): d/dtau = -nu d/dnu
        nu = 1.0 / phi
        eta = np.clip(eta, -MAX_ETA, MAX_ETA)
        ratio = y * np.exp(-eta)
        d_nu = np.log(nu * y) + 1.0 - eta - ratio - _special().psi(nu)
        d2_nu = 1.0 / nu - _special().polygamma(1, nu)
        return -nu * d_nu, nu * d_nu + nu * nu * d2_nu, -nu * (ratio - 1.0)

    def dispersion(self, y, mu, weight):
        # the shape's likelihood equation: log nu - psi(nu) = s, s >= 0 the
        # weighted mean of y/mu - log(y/mu) - 1
        ratio = y / mu
        s = np.sum(weight * (ratio - np.log(ratio) - 1.0), axis=0) / np.sum(weight, axis=0)
        return 1.0 / _gamma_shape(np.maximum(s, 1.0 / MAX_SHAPE))

    def link(self, y):
        return np.log(np.asarray(y, dtype=np.float64))

    def draw(self, mu, phi, rng):
        return rng.gamma(1.0 / phi, phi * mu)


def _gamma_shape(s: np.ndarray) -> np.ndarray:
    """The root nu of log nu - psi(nu) = s (> 0) by Newton's method from
    Minka's approximation (the function is convex and decreasing in nu)."""
    nu = (3.0 - s + np.sqrt((s - 3.0) ** 2 + 24.0 * s)) / (12.0 * s)
    for _ in range(50):
        f = np.log(nu) - _special().psi(nu) - s
        step = f / (1.0 / nu - _special().polygamma(1, nu))
        nu_new = np.clip(nu - step, nu / 10.0, nu * 10.0)
        if np.all(np.abs(nu_new - nu) <= 1e-12 * nu):
            nu = nu_new
            break
        nu = nu_new
    return np.clip(nu, 1.0 / MAX_SHAPE, MAX_SHAPE)


_INSTANCES = {f.name: f for f in (_Gaussian(), _Poisson(), _Bernoulli(), _Gamma())}


# the KL divergence between two experts' distributions of y (the cost of the
# reduction, fastmoe._family_reduction, and the split-merge move's test for
# duplicates, fastmoe._glm)

def kl_costs(family: str, eta_l, nu_l, eta_k, nu_k) -> np.ndarray:
    """KL( f(.; eta_l, nu_l) || f(.; eta_k, nu_k) ), broadcast over the
    arguments: Poisson and Bernoulli by their cumulant functions, Gamma
    (shape nu, mean exp(eta)) in closed form. nu is ignored by the families
    without a dispersion. Written as the terms of :func:`local_terms`,
    :func:`target_terms` and :func:`pair_terms`,

        KL = P + a + b c + d e + f,

    so that the reduction computes the local experts' terms once."""
    b, d, f = local_terms(family, eta_l, nu_l)
    a, c, e = target_terms(family, eta_k, nu_k)
    return pair_terms(family, nu_l, nu_k) + a + b * c + d * e + f


def _check_family(family: str) -> None:
    if family not in ("poisson", "bernoulli", "gamma"):
        raise ValueError(f"kl_costs serves the poisson, bernoulli and gamma families; got "
                         f"{family!r}.")


def local_terms(family: str, eta_l, nu_l):
    """(b, d, f) of the KL that depend on the local expert alone: its mean
    b = mu_l, and d = eta_l (Gamma) or 0, f = mu_l eta_l - A(eta_l) (the
    canonical families) or 0."""
    _check_family(family)
    if family == "gamma":
        el = np.clip(eta_l, -MAX_ETA, MAX_ETA)
        return np.exp(el), el, np.zeros_like(el)
    el = np.minimum(eta_l, MAX_ETA) if family == "poisson" else np.asarray(eta_l, float)
    mu = get_family(family).mean(el)
    return mu, np.zeros_like(el), mu * el - _cumulant(family, el)


def target_terms(family: str, eta_k, nu_k):
    """(a, c, e) of the KL that depend on the target alone: A(eta_k),
    -eta_k and 0 for the canonical families; nu_k eta_k, nu_k exp(-eta_k)
    and -nu_k for Gamma."""
    _check_family(family)
    if family == "gamma":
        ek = np.clip(eta_k, -MAX_ETA, MAX_ETA)
        return nu_k * ek, nu_k * np.exp(-ek), -np.asarray(nu_k, float)
    ek = np.minimum(eta_k, MAX_ETA) if family == "poisson" else np.asarray(eta_k, float)
    return _cumulant(family, ek), -ek, np.zeros_like(np.asarray(nu_k, float))


def pair_terms(family: str, nu_l, nu_k):
    """P of the KL, which depends on the two shapes alone (Gamma; 0 otherwise)."""
    _check_family(family)
    if family != "gamma":
        return np.zeros(np.broadcast(nu_l, nu_k).shape)
    from scipy.special import gammaln, psi

    return ((nu_l - nu_k) * psi(nu_l) - gammaln(nu_l) + gammaln(nu_k)
            + nu_k * (np.log(nu_l) - np.log(nu_k)) - nu_l)


def _cumulant(family: str, eta):
    """A(eta) of a canonical family: exp for Poisson, log(1 + exp) for Bernoulli."""
    return np.exp(eta) if family == "poisson" else np.logaddexp(0.0, eta)


def get_family(family) -> Family:
    """The :class:`Family` of a name (or a Family itself).

    Parameters
    ----------
    family : str or Family
        One of :data:`FAMILIES`.

    Returns
    -------
    Family
        The family.
    """
    if isinstance(family, Family):
        return family
    if not isinstance(family, str) or family not in _INSTANCES:
        raise ValueError(f"family must be one of {FAMILIES}; got {family!r}.")
    return _INSTANCES[family]

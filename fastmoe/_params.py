"""MoEParams: the parameters of a softmax-gated mixture of experts.

    f(y | x) = sum_k pi_k(x) f_k(y; h(b_k + x . c_k), v_k),
    pi_k(x)  = softmax_k(g_k + x . a_k),   (a_K, g_K) = 0  (the reference gate)

with f_k the experts' family (:mod:`fastmoe.families`): Gaussian by default
(f_k = N(y; b_k + x . c_k, v_k)), or Poisson, Bernoulli or Gamma experts, v_k
then their dispersion.

Immutable; arrays are stored as read-only float64 copies. The serialised form
is a versioned dict of plain lists (JSON) or arrays (.npz) that round-trips
exactly (float64 values are written with ``repr`` precision).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _kernels
from ._linalg import chunk_size, resolve_threads, row_log_normalise
from ._validation import check_level, check_random_state, check_X, check_X_y
from .families import FAMILIES, get_family
from .io import read_json, read_npz, write_bytes

FORMAT = "fastmoe.MoEParams"
FORMAT_VERSION = 1
#: the version of records whose experts are not Gaussian (they name their
#: family; a reader of version 1 alone refuses them instead of reading them
#: as Gaussian)
FAMILY_FORMAT_VERSION = 2
#: largest model file read by MoEParams.load
MAX_MODEL_BYTES = 64 * 2**20
#: largest n_experts or n_features a record may declare
MAX_RECORD_EXPERTS_OR_FEATURES = 100_000
_FIELDS = ("gate_coef", "gate_intercept", "expert_coef", "expert_intercept", "expert_var")
#: values a prediction's temporaries hold at most per block of rows (MoEParams._by_rows)
PREDICT_BLOCK = 2**20


def free_parameters(n_features: int, n_experts: int) -> int:
    """Free parameters of a K-expert model on d covariates: (K-1)(d+1) gates
    + K(d+1) experts + K variances."""
    K, p = n_experts, n_features + 1
    return (K - 1) * p + K * p + K


def _record_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 1 <= value <= MAX_RECORD_EXPERTS_OR_FEATURES:
        raise ValueError(f"{FORMAT} field {name} must be an int in [1, "
                         f"{MAX_RECORD_EXPERTS_OR_FEATURES}]; got {value!r}.")
    return int(value)


def _frozen(a) -> np.ndarray:
    out = np.array(a, dtype=np.float64, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class MoEParams:
    """Parameters of a K-expert MoE on d covariates.

    Parameters
    ----------
    gate_coef : (K, d) gate slopes.
    gate_intercept : (K,) gate intercepts; -inf switches an expert off.
    expert_coef : (K, d) expert slopes (of the linear predictor).
    expert_intercept : (K,) expert intercepts.
    expert_var : (K,) dispersions, > 0: the noise variances of Gaussian
        experts, 1/shape of Gamma experts (Var = v mu^2), and 1 for Poisson
        and Bernoulli experts, which have none.
    family : {"gaussian", "poisson", "bernoulli", "gamma"}, default "gaussian"
        The experts' family (:mod:`fastmoe.families`).

    The gates are re-referenced on construction so that the last gate is zero
    (softmax is invariant to a common shift, so the model is unchanged): gates
    given with another reference, such as the first gate zero of
    ``nnet::multinom`` and flexmix, are accepted as they are, and
    :meth:`rereference` returns them in any reference.
    """

    gate_coef: np.ndarray
    gate_intercept: np.ndarray
    expert_coef: np.ndarray
    expert_intercept: np.ndarray
    expert_var: np.ndarray
    family: str = "gaussian"

    def __post_init__(self):
        gc = np.array(self.gate_coef, dtype=np.float64)
        gi = np.array(self.gate_intercept, dtype=np.float64)
        ec = np.array(self.expert_coef, dtype=np.float64)
        ei = np.array(self.expert_intercept, dtype=np.float64)
        ev = np.array(self.expert_var, dtype=np.float64)
        if ec.ndim != 2 or ec.shape[0] < 1:
            raise ValueError("expert_coef must have shape (n_experts, n_features); "
                             f"got {ec.shape}.")
        K, d = ec.shape
        for name, arr, shape in (("gate_coef", gc, (K, d)), ("gate_intercept", gi, (K,)),
                                 ("expert_intercept", ei, (K,)), ("expert_var", ev, (K,))):
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape} to match expert_coef; "
                                 f"got {arr.shape}.")
        for name, arr in (("gate_coef", gc), ("expert_coef", ec), ("expert_intercept", ei)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be finite; got NaN or inf.")
        if np.any(np.isnan(gi)) or np.any(gi == np.inf):
            raise ValueError("gate_intercept must not be NaN or +inf "
                             "(-inf switches an expert off).")
        if not np.all(np.isfinite(ev)) or np.any(ev <= 0):
            raise ValueError(f"expert_var must be finite and > 0; got {ev}.")
        if not get_family(self.family).has_dispersion and np.any(ev != 1.0):
            raise ValueError(f"{self.family} experts have no dispersion: expert_var must be "
                             f"1; got {ev}.")
        if not np.isfinite(gi[-1]):
            raise ValueError("the last gate (the reference) must have a finite intercept; "
                             "reorder the experts so that an active one is last.")
        gc = gc - gc[-1]
        gi = gi - gi[-1]
        for name, arr in zip(_FIELDS, (gc, gi, ec, ei, ev)):
            object.__setattr__(self, name, _frozen(arr))

    # -- shape -----------------------------------------------------------------
    @property
    def n_experts(self) -> int:
        """Number of experts K.
        """
        return self.expert_coef.shape[0]

    @property
    def n_features(self) -> int:
        """Number of covariates d.
        """
        return self.expert_coef.shape[1]

    @property
    def n_parameters(self) -> int:
        """Free parameters (:func:`free_parameters`, less the K dispersions
        of a family without them)."""
        fixed = 0 if get_family(self.family).has_dispersion else self.n_experts
        return free_parameters(self.n_features, self.n_experts) - fixed

    def require_gaussian(self, what: str) -> MoEParams:
        """``self``, or a ValueError of one line naming ``what`` when the
        experts are not Gaussian (for the paths that serve Gaussian experts
        alone).

        Parameters
        ----------
        what : str
            What needs Gaussian experts (named in the error).

        Returns
        -------
        MoEParams
            ``self``.
        """
        if self.family != "gaussian":
            raise ValueError(f"{what} serves Gaussian experts only; this model's experts are "
                             f"{self.family}.")
        return self

    # -- augmented (intercept in column 0) form used by the kernels ------------
    @property
    def gate_aug(self) -> np.ndarray:
        """Gates as a (K, d + 1) array, the intercept in column 0 (a new copy).
        """
        return np.ascontiguousarray(np.column_stack([self.gate_intercept, self.gate_coef]))

    @property
    def expert_aug(self) -> np.ndarray:
        """Experts as a (K, d + 1) array, the intercept in column 0 (a new copy).
        """
        return np.ascontiguousarray(np.column_stack([self.expert_intercept, self.expert_coef]))

    @classmethod
    def from_aug(cls, gate_aug, expert_aug, expert_var, family: str = "gaussian") -> MoEParams:
        """Build from the augmented form (intercepts in column 0).

        Parameters
        ----------
        gate_aug : array-like of shape (K, d + 1)
            Gate intercepts and slopes (any gate may be the reference: the
            constructor subtracts the last).
        expert_aug : array-like of shape (K, d + 1)
            Expert intercepts and slopes.
        expert_var : array-like of shape (K,)
            Expert dispersions (noise variances of Gaussian experts).
        family : str, default "gaussian"
            The experts' family.

        Returns
        -------
        MoEParams
            The model, checked as by the constructor.
        """
        gate_aug = np.asarray(gate_aug)
        expert_aug = np.asarray(expert_aug)
        return cls(gate_aug[:, 1:], gate_aug[:, 0], expert_aug[:, 1:], expert_aug[:, 0],
                   expert_var, family)

    def rereference(self, reference: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The gates with gate ``reference`` as the zero reference.

        fastmoe stores the last gate as the zero reference; ``reference=0``
        gives the first-gate convention of ``nnet::multinom`` and flexmix.
        The model does not change: pass the result back to the constructor
        and the same MoEParams comes out. -inf intercepts (experts switched
        off) stay -inf; the reference must be an active expert.

        Parameters
        ----------
        reference : int, default=0
            Index of the gate whose coefficients become zero.

        Returns
        -------
        gate_coef : ndarray of shape (K, d)
            Gate slopes relative to gate ``reference``.
        gate_intercept : ndarray of shape (K,)
            Gate intercepts relative to gate ``reference``.
        """
        K = self.n_experts
        if isinstance(reference, bool) or not isinstance(reference, (int, np.integer)) \
                or not -K <= reference < K:
            raise ValueError(f"reference must be an expert index in [-{K}, {K - 1}]; got "
                             f"{reference!r}.")
        if not np.isfinite(self.gate_intercept[reference]):
            raise ValueError(f"expert {reference} is switched off (gate intercept -inf); "
                             "choose an active expert as the reference.")
        return (self.gate_coef - self.gate_coef[reference],
                self.gate_intercept - self.gate_intercept[reference])

    # -- ordering --------------------------------------------------------------
    def permute(self, order) -> MoEParams:
        """Experts reordered.

        Parameters
        ----------
        order : array-like of shape (K,)
            A permutation of range(K): expert ``order[j]`` becomes expert j.

        Returns
        -------
        MoEParams
            The same model with its experts reordered.
        """
        order = np.asarray(order)
        if sorted(order.tolist()) != list(range(self.n_experts)):
            raise ValueError(f"order must be a permutation of range({self.n_experts}); "
                             f"got {order}.")
        return MoEParams(self.gate_coef[order], self.gate_intercept[order],
                         self.expert_coef[order], self.expert_intercept[order],
                         self.expert_var[order], self.family)

    def canonical(self) -> MoEParams:
        """Experts sorted by increasing intercept (ties by variance), gates
        re-referenced to the new last expert (docs/method.rst, section 1).

        Returns
        -------
        MoEParams
            The same model in canonical order.
        """
        order = np.lexsort((self.expert_var, self.expert_intercept))
        if not np.isfinite(self.gate_intercept[order[-1]]):
            active = order[np.isfinite(self.gate_intercept[order])]
            order = np.concatenate([order[~np.isin(order, active[-1:])], active[-1:]])
        return self.permute(order)

    # -- model functions -------------------------------------------------------
    def _prep(self, X):
        X = check_X(X, self.n_features)
        return X

    def gate_log_proba(self, X, *, n_threads: int | None = None) -> np.ndarray:
        """Log gate probabilities log pi_k(x).

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        n_threads : int, optional
            Threads of the compiled kernel (default: all cores).

        Returns
        -------
        ndarray of shape (n, K)
            log pi_k(x_i).
        """
        X = self._prep(X)
        out = np.empty((X.shape[0], self.n_experts))
        _kernels.gate_log_proba(X, self.gate_aug, out, resolve_threads(n_threads))
        return out

    def gate_proba(self, X, *, n_threads: int | None = None) -> np.ndarray:
        """Gate probabilities pi_k(x).

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        n_threads : int, optional
            Threads of the compiled kernel (default: all cores).

        Returns
        -------
        ndarray of shape (n, K)
            pi_k(x_i); rows sum to 1.
        """
        return np.exp(self.gate_log_proba(X, n_threads=n_threads))

    def expert_linear(self, X, offset=None) -> np.ndarray:
        """Experts' linear predictors b_k + x . c_k (+ the row's offset).

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        offset : array-like of shape (n,), optional
            A known term added to every expert's linear predictor (the log
            exposure of Poisson counts).

        Returns
        -------
        ndarray of shape (n, K)
            eta_k(x_i).
        """
        X = self._prep(X)
        eta = X @ self.expert_coef.T + self.expert_intercept
        if offset is not None:
            eta += _offset(offset, X.shape[0])[:, None]
        return eta

    def expert_mean(self, X, offset=None) -> np.ndarray:
        """Expert means h(b_k + x . c_k), h the family's inverse link.

        The identity for Gaussian experts, exp for Poisson and Gamma, the
        logistic function for Bernoulli.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        offset : array-like of shape (n,), optional
            Added to the linear predictors (:meth:`expert_linear`).

        Returns
        -------
        ndarray of shape (n, K)
            The mean of each expert at each row.
        """
        eta = self.expert_linear(X, offset)
        return eta if self.family == "gaussian" else get_family(self.family).mean(eta)

    def predict_mean(self, X, *, offset=None, n_threads: int | None = None) -> np.ndarray:
        """Predictive mean E[y | x] = sum_k pi_k(x) mu_k(x).

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        offset : array-like of shape (n,), optional
            Added to the experts' linear predictors (:meth:`expert_linear`).
        n_threads : int, optional
            Threads of the compiled kernel (default: all cores).

        Returns
        -------
        ndarray of shape (n,)
            E[y | x_i].
        """
        X = self._prep(X)
        if offset is not None:
            off = _offset(offset, X.shape[0])
            return np.sum(self.gate_proba(X, n_threads=n_threads)
                          * self.expert_mean(X, off), axis=1)
        return self._by_rows(X, lambda B: np.sum(self.gate_proba(B, n_threads=n_threads)
                                                 * self.expert_mean(B), axis=1))

    def _by_rows(self, X, per_block, width: int = 1):
        """``per_block`` applied to blocks of rows of X and concatenated: a
        prediction's temporaries are (rows, K, width), so blocks keep them
        near PREDICT_BLOCK values whatever n and K (a model of 100 000
        experts predicts 1 000 rows in bounded memory)."""
        rows = max(1, PREDICT_BLOCK // (self.n_experts * width))
        if X.shape[0] <= rows:
            return per_block(X)
        return np.concatenate([per_block(X[i:i + rows]) for i in range(0, X.shape[0], rows)])

    def predict_var(self, X, *, offset=None, n_threads: int | None = None) -> np.ndarray:
        """Predictive variance Var[y | x] = sum_k pi_k (V_k + m_k^2) - E[y | x]^2.

        V_k is the expert's own variance: v_k for Gaussian experts, m_k for
        Poisson, m_k (1 - m_k) for Bernoulli, v_k m_k^2 for Gamma.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        offset : array-like of shape (n,), optional
            Added to the experts' linear predictors (:meth:`expert_linear`).
        n_threads : int, optional
            Threads of the compiled kernel (default: all cores).

        Returns
        -------
        ndarray of shape (n,)
            Var[y | x_i].
        """
        fam = get_family(self.family)

        def block(B, off=None):
            pi = self.gate_proba(B, n_threads=n_threads)
            m = self.expert_mean(B, off)
            mean = np.sum(pi * m, axis=1)
            own = fam.variance(m, self.expert_var)
            return np.maximum(np.sum(pi * (own + m * m), axis=1) - mean * mean, 0.0)

        X = self._prep(X)
        if offset is not None:
            return block(X, _offset(offset, X.shape[0]))
        return self._by_rows(X, block)

    def predict_quantile(self, X, q, *, n_threads: int | None = None) -> np.ndarray:
        """Quantiles of the predictive mixture f(y | x) at each row of X.

        The q-quantile solves sum_k pi_k(x) Phi((y - m_k(x)) / s_k) = q; it
        lies between the smallest and the largest of the experts' own
        q-quantiles, and is found there by bisection to machine precision
        (vectorised over rows and levels).

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        q : float or array-like of shape (m,)
            Levels in (0, 1).
        n_threads : int, optional
            Threads of the gate kernel (default: all cores).

        Returns
        -------
        ndarray of shape (n,) for a scalar ``q``, else (n, m)
            The quantiles.
        """
        self.require_gaussian("predict_quantile")
        levels = np.asarray(q, dtype=np.float64)
        if levels.ndim > 1 or levels.size == 0 or not np.all((levels > 0) & (levels < 1)):
            raise ValueError(f"q must be a level or a 1-D array of levels in (0, 1); got {q!r}.")
        lv = np.atleast_1d(levels)
        out = self._by_rows(self._prep(X), lambda B: self._quantiles(B, lv, n_threads),
                            width=lv.size)
        return out[:, 0] if levels.ndim == 0 else out

    def _quantiles(self, X, lv, n_threads) -> np.ndarray:
        """(n, m) quantiles at levels lv (see predict_quantile)."""
        from scipy.special import ndtr, ndtri

        pi = self.gate_proba(X, n_threads=n_threads)[:, None, :]  # (n, 1, K)
        m = self.expert_mean(X)[:, None, :]
        sd = np.sqrt(self.expert_var)[None, None, :]
        own = m + sd * ndtri(lv)[None, :, None]  # (n, m, K) each expert's quantile
        lo, hi = own.min(axis=2), own.max(axis=2)
        target = lv[None, :]
        for _ in range(200):  # the bracket halves each time: 200 steps pass float64's range
            mid = 0.5 * (lo + hi)
            if np.all((mid <= lo) | (mid >= hi)):  # no float between the ends: converged
                break
            below = np.sum(pi * ndtr((mid[..., None] - m) / sd), axis=2) < target
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def predict_interval(self, X, level: float = 0.9, *,
                         n_threads: int | None = None) -> np.ndarray:
        """The equal-tailed predictive interval holding ``level`` of f(y | x).

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        level : float, default 0.9
            The probability the interval holds (0.9: a 90% interval), in
            [0.5, 1). A value below 0.5 is refused: it is almost surely a
            miscoverage alpha (0.1 for a 90% interval), the other convention.
        n_threads : int, optional
            Threads of the gate kernel (default: all cores).

        Returns
        -------
        ndarray of shape (n, 2)
            The (1 - level)/2 and (1 + level)/2 quantiles
            (:meth:`predict_quantile`).
        """
        level = check_level(level)
        return self.predict_quantile(X, [(1 - level) / 2, (1 + level) / 2],
                                     n_threads=n_threads)

    def e_step(self, X, y, *, offset=None,
               n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-row log-likelihood and log responsibilities.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        y : array-like of shape (n,)
            Responses.
        offset : array-like of shape (n,), optional
            Added to the experts' linear predictors (:meth:`expert_linear`).
        n_threads : int, optional
            Threads of the compiled kernel (default: all cores).

        Returns
        -------
        row_log_likelihood : ndarray of shape (n,)
            log f(y_i | x_i).
        log_resp : ndarray of shape (n, K)
            log P(z_i = k | x_i, y_i).
        """
        X, y, _ = check_X_y(X, y, n_features=self.n_features)
        n = X.shape[0]
        if self.family != "gaussian":
            return self._family_e_step(X, y, offset, n_threads)
        if offset is not None:
            y = y - _offset(offset, n)
        log_resp = np.empty((n, self.n_experts))
        row_ll = np.empty(n)
        _kernels.e_step(X, y, np.ones(n), self.gate_aug, self.expert_aug, self.expert_var,
                        log_resp, row_ll, np.empty((0, 0, 0)), chunk_size(n),
                        resolve_threads(n_threads))
        return row_ll, log_resp

    def _family_e_step(self, X, y, offset, n_threads):
        """e_step for the experts of a family other than Gaussian."""
        fam = get_family(self.family)
        fam.check_y(y)
        return row_log_normalise(self.gate_log_proba(X, n_threads=n_threads) + fam.log_density(
            y[:, None], self.expert_linear(X, offset), self.expert_var))

    def score_samples(self, X, y, *, offset=None, n_threads: int | None = None) -> np.ndarray:
        """Per-row log-likelihood log f(y_i | x_i).

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        y : array-like of shape (n,)
            Responses.
        offset : array-like of shape (n,), optional
            Added to the experts' linear predictors (:meth:`expert_linear`).
        n_threads : int, optional
            Threads of the compiled kernel (default: all cores).

        Returns
        -------
        ndarray of shape (n,)
            log f(y_i | x_i).
        """
        return self.e_step(X, y, offset=offset, n_threads=n_threads)[0]

    def log_likelihood(self, X, y, *, offset=None, n_threads: int | None = None) -> float:
        """Log-likelihood sum_i log f(y_i | x_i).

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        y : array-like of shape (n,)
            Responses.
        offset : array-like of shape (n,), optional
            Added to the experts' linear predictors (:meth:`expert_linear`).
        n_threads : int, optional
            Threads of the compiled kernel (default: all cores).

        Returns
        -------
        float
            The log-likelihood of the rows.
        """
        return float(np.sum(self.score_samples(X, y, offset=offset, n_threads=n_threads)))

    def posterior(self, X, y, *, offset=None, n_threads: int | None = None) -> np.ndarray:
        """Posterior responsibilities P(z = k | x, y).

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        y : array-like of shape (n,)
            Responses.
        offset : array-like of shape (n,), optional
            Added to the experts' linear predictors (:meth:`expert_linear`).
        n_threads : int, optional
            Threads of the compiled kernel (default: all cores).

        Returns
        -------
        ndarray of shape (n, K)
            Rows sum to 1.
        """
        return np.exp(self.e_step(X, y, offset=offset, n_threads=n_threads)[1])

    def sample(self, X, random_state=None, *, offset=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw y ~ f(. | x) for each row of X.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        random_state : None, int or numpy Generator
            Seeds the draw.
        offset : array-like of shape (n,), optional
            Added to the experts' linear predictors (:meth:`expert_linear`).

        Returns
        -------
        y : ndarray of shape (n,)
            The responses drawn.
        labels : ndarray of shape (n,)
            The expert that drew each.
        """
        X = self._prep(X)
        rng = check_random_state(random_state)
        pi = self.gate_proba(X)
        cum = np.cumsum(pi, axis=1)
        u = rng.random(X.shape[0])[:, None]
        labels = np.minimum(np.sum(cum < u * cum[:, -1:], axis=1), self.n_experts - 1)
        eta = np.einsum("ij,ij->i", X, self.expert_coef[labels]) + self.expert_intercept[labels]
        if offset is not None:
            eta = eta + _offset(offset, X.shape[0])
        fam = get_family(self.family)
        return fam.draw(fam.mean(eta), self.expert_var[labels], rng), labels

    # -- (de)serialisation -----------------------------------------------------
    def to_dict(self) -> dict:
        """Versioned dict of plain Python lists; exact round trip via from_dict.

        Returns
        -------
        dict
            ``format``, ``version``, ``n_experts``, ``n_features`` and the five
            parameter arrays as nested lists of floats (JSON-ready).
        """
        out = {"format": FORMAT, "version": FORMAT_VERSION,
               "n_experts": self.n_experts, "n_features": self.n_features}
        if self.family != "gaussian":  # a Gaussian record stays readable by version 1 readers
            out.update(version=FAMILY_FORMAT_VERSION, family=self.family)
        for name in _FIELDS:
            out[name] = getattr(self, name).tolist()
        # JSON has no infinity: a switched-off gate (-inf) is written "-inf"
        out["gate_intercept"] = [v if np.isfinite(v) else "-inf" for v in out["gate_intercept"]]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> MoEParams:
        """Read a :meth:`to_dict` record (untrusted: every field is checked,
        each failure is a ValueError of one line).

        Parameters
        ----------
        data : dict
            A record written by :meth:`to_dict`.

        Returns
        -------
        MoEParams
            The model it holds.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} record (missing or wrong 'format' field).")
        version = data.get("version")
        if version not in (FORMAT_VERSION, FAMILY_FORMAT_VERSION) or isinstance(version, bool):
            raise ValueError(f"{FORMAT} version {version!r} is not supported by this fastmoe "
                             f"(reads versions {FORMAT_VERSION} and {FAMILY_FORMAT_VERSION}); "
                             "upgrade fastmoe.")
        family = "gaussian"
        if version == FAMILY_FORMAT_VERSION:
            family = data.get("family")
            if not isinstance(family, str) or family not in FAMILIES:
                raise ValueError(f"{FORMAT} field family must be one of {FAMILIES}; got "
                                 f"{family!r:.40}.")
        missing = [f for f in ("n_experts", "n_features", *_FIELDS) if f not in data]
        if missing:
            raise ValueError(f"{FORMAT} record lacks fields {missing}.")
        K, d = (_record_int(data[k], k) for k in ("n_experts", "n_features"))

        def arr(name, shape):
            value = data[name]
            if name == "gate_intercept" and isinstance(value, list):
                value = [-np.inf if v == "-inf" else v for v in value]
            try:
                a = np.asarray(value)
            except (TypeError, ValueError, OverflowError) as exc:
                raise ValueError(f"{FORMAT} field {name} is not an array ({exc}).") from None
            if a.dtype.kind not in "biuf":
                raise ValueError(f"{FORMAT} field {name} must hold numbers; got dtype "
                                 f"{a.dtype}.")
            if a.shape != shape:  # never reshaped: (d, K) for (K, d) is an error
                raise ValueError(f"{FORMAT} field {name} must have shape {shape} for "
                                 f"n_experts={K}, n_features={d}; got {a.shape}.")
            return a.astype(np.float64)

        return cls(arr("gate_coef", (K, d)), arr("gate_intercept", (K,)),
                   arr("expert_coef", (K, d)), arr("expert_intercept", (K,)),
                   arr("expert_var", (K,)), family)

    def save(self, path) -> None:
        """Write to ``.json`` or ``.npz`` (chosen by the suffix).

        Written whole or not at all (a temporary file renamed into place).

        Parameters
        ----------
        path : str or path-like
            Where to write; the suffix, ``.json`` or ``.npz``, chooses the format.
        """
        path = Path(path)
        if path.suffix == ".json":
            write_bytes(path, json.dumps(self.to_dict(), allow_nan=False).encode(), "model file")
        elif path.suffix == ".npz":
            d = self.to_dict()
            buf = io.BytesIO()
            extra = {} if self.family == "gaussian" else {"family": np.array(self.family)}
            np.savez(buf, format=np.array(FORMAT), version=np.array(d["version"]),
                     **{f: getattr(self, f) for f in _FIELDS}, **extra,
                     n_experts=np.array(d["n_experts"]), n_features=np.array(d["n_features"]))
            write_bytes(path, buf.getvalue(), "model file")
        else:
            raise ValueError(f"unknown file type {path.suffix!r}; use .json or .npz.")

    @classmethod
    def load(cls, path) -> MoEParams:
        """Read a file written by :meth:`save` (at most ``MAX_MODEL_BYTES``;
        every field checked).

        Parameters
        ----------
        path : str or path-like
            A ``.json`` or ``.npz`` file written by :meth:`save`.

        Returns
        -------
        MoEParams
            The model it holds.
        """
        path = Path(path)
        if path.suffix not in (".json", ".npz"):
            raise ValueError(f"unknown file type {path.suffix!r}; use .json or .npz.")
        if path.suffix == ".json":
            data = read_json(path, "model file", MAX_MODEL_BYTES)
        else:
            data = read_npz(path, "model file", MAX_MODEL_BYTES)
            for k, v in list(data.items()):
                if v.ndim == 0:  # the scalars of the record
                    data[k] = v.item()
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"model file {str(path)!r}: {exc}") from None

    def __repr__(self) -> str:
        family = "" if self.family == "gaussian" else f", family={self.family!r}"
        return f"MoEParams(n_experts={self.n_experts}, n_features={self.n_features}{family})"


def _offset(offset, n: int) -> np.ndarray:
    """A per-row offset checked: (n,) finite float64."""
    off = np.asarray(offset, dtype=np.float64)
    if off.shape != (n,):
        raise ValueError(f"offset must have shape ({n},) to match X; got {off.shape}.")
    if not np.all(np.isfinite(off)):
        raise ValueError("offset must be finite; got NaN or inf.")
    return off

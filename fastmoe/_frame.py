"""Affine frames: where every fit works, whatever the user's units.

A model of (x, y) maps exactly onto the model of standardised data
u = (x - x_mean) / x_scale, v = (y - y_mean) / y_scale (docs/method.rst,
"Units"). Every path that solves least squares or takes Newton steps does so
in a frame in which the covariates and the response are centred and of unit
spread, and reports the model in the user's units: a covariate with an
offset of 1e9 (a timestamp, a UTM coordinate) or a scale of 1e-6 is fitted
as well as one of mean 0 and variance 1.

The maps are exact in real arithmetic, so an estimate does not depend on the
units beyond float64 rounding. Log-likelihoods of v and of y differ by the
Jacobian ``n log(y_scale)``; KL divergences between conditional densities do
not change, and W2 costs scale with ``y_scale**2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._params import MoEParams


def robust_scale(a: np.ndarray, mean, w=None, axis=0):
    """Weighted standard deviation of ``a`` about ``mean``, computed so that
    it neither overflows nor underflows (a column times 1e300 or 1e-300 has
    the scale it should); 0 for a constant column."""
    dev = np.asarray(a, dtype=np.float64) - mean
    top = np.max(np.abs(dev), axis=axis)
    safe = np.where(top > 0, top, 1.0)
    return top * np.sqrt(np.average((dev / safe) ** 2, axis=axis, weights=w))


@dataclass(frozen=True)
class Frame:
    """Location and scale of the covariates and of the response.

    Attributes
    ----------
    x_mean, x_scale : ndarray of shape (d,)
        A covariate u_j = (x_j - x_mean_j) / x_scale_j; x_scale > 0.
    y_mean, y_scale : float
        The response v = (y - y_mean) / y_scale; y_scale > 0.
    """

    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: float = 0.0
    y_scale: float = 1.0

    @classmethod
    def of(cls, X, y=None, w=None) -> Frame:
        """The frame of data: weighted means and standard deviations (a
        constant column or response keeps scale 1 and is only centred)."""
        X = np.asarray(X, dtype=np.float64)
        x_mean = np.average(X, axis=0, weights=w)
        x_scale = _positive(robust_scale(X, x_mean, w))
        if y is None:
            return cls(x_mean, x_scale)
        y_mean = float(np.average(y, weights=w))
        y_scale = float(_positive(robust_scale(y, y_mean, w, axis=None)))
        return cls(x_mean, x_scale, y_mean, y_scale)

    def X(self, X) -> np.ndarray:
        """(n, d) covariates in the frame (a new C-contiguous array)."""
        return np.ascontiguousarray((np.asarray(X, dtype=np.float64) - self.x_mean)
                                    / self.x_scale)

    def y(self, y) -> np.ndarray:
        """(n,) responses in the frame (a new array)."""
        return (np.asarray(y, dtype=np.float64) - self.y_mean) / self.y_scale

    def log_jacobian(self, weight: float) -> float:
        """log f(y) = log f(v) - log(y_scale), summed over ``weight`` rows."""
        return -float(weight) * float(np.log(self.y_scale))

    # -- models ---------------------------------------------------------------
    def params_in(self, p: MoEParams) -> MoEParams:
        """The model of (u, v) given the model ``p`` of (x, y)."""
        gc = p.gate_coef * self.x_scale
        gi = p.gate_intercept + p.gate_coef @ self.x_mean
        ec = p.expert_coef * self.x_scale / self.y_scale
        ei = (p.expert_intercept + p.expert_coef @ self.x_mean - self.y_mean) / self.y_scale
        return MoEParams(gc, gi, ec, ei, p.expert_var / self.y_scale**2, p.family)

    def params_out(self, p: MoEParams) -> MoEParams:
        """The model of (x, y) given the model ``p`` of (u, v); a ValueError
        when it cannot be written in float64 (it overflows the user's units)."""
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            gc = p.gate_coef / self.x_scale
            gi = p.gate_intercept - gc @ self.x_mean
            ec = p.expert_coef * self.y_scale / self.x_scale
            ei = p.expert_intercept * self.y_scale + self.y_mean - ec @ self.x_mean
            ev = p.expert_var * self.y_scale**2
        try:
            return MoEParams(gc, gi, ec, ei, ev, p.family)
        except ValueError:
            raise ValueError("the fitted model cannot be written in the units of X and y: its "
                             "coefficients or variances overflow or underflow float64; "
                             "rescale X or y.") from None


def _positive(s):
    """Scales: 1 where a column is constant (or its scale is not finite)."""
    s = np.asarray(s, dtype=np.float64)
    return np.where(np.isfinite(s) & (s > 0), s, 1.0)


def shift_matrix(delta: np.ndarray) -> np.ndarray:
    """(q, q) T with (1, v - o - delta) = T (1, v - o): statistics of (1, v)
    centred at o move to o + delta as T G T^T (Gram matrices) and T g
    (gradients)."""
    delta = np.asarray(delta, dtype=np.float64)
    T = np.eye(delta.size + 1)
    T[1:, 0] = -delta
    return T

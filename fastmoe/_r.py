"""The Python side of the flexmix drivers in interop/flexmix/fastmoe.R.

R hands arrays over as raw float64 bytes in R's column-major order, and gets
plain lists of numbers back: reticulate converts NumPy 2 arrays only from
version 1.36 on (Debian 12 ships 1.28), and bytes and lists need no
conversion of arrays at all. Each function is one call of ``fastmoe.engine``.
"""

from __future__ import annotations

import numpy as np

from . import engine


def _array(data, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) array, or (rows,) for cols == 0, from R's column-major bytes."""
    a = np.frombuffer(data, dtype=np.float64)
    size = rows * max(cols, 1)
    if a.size != size:
        raise ValueError(f"expected {size} numbers from R; got {a.size}.")
    return a.reshape(cols, rows).T if cols else a


def experts(x, y, w, n: int, d: int) -> list:
    """One Gaussian expert fitted by weighted least squares with the
    maximum-likelihood variance: [intercept, coef_1..coef_d, variance]."""
    X, y, w = _array(x, n, d), _array(y, n, 0), _array(w, n, 0)
    coef, intercept, var = engine.update_experts(engine.expert_statistics(X, y, w[:, None]))
    return [float(intercept[0])] + coef[0].tolist() + [float(var[0])]


def gates(x, t, w, n: int, d: int, k: int, init=None) -> list:
    """Softmax gates fitted to the (n, k) soft targets t, the first gate the
    zero reference: for each gate its intercept then its d slopes. ``w``:
    row weights, None for ones. ``init`` is a previous result (warm start)
    or None."""
    X, T = _array(x, n, d), _array(t, n, k)
    w = np.ones(n) if w is None else _array(w, n, 0)
    if init is not None:
        B = np.asarray(init, dtype=np.float64).reshape(k, d + 1)
        init = (B[:, 1:], B[:, 0])
    fit = engine.fit_gates(X, T, sample_weight=w, init=init, reference=0)
    return np.column_stack([fit.gate_intercept, fit.gate_coef]).ravel().tolist()


#: the rows of the last glm_expert call, prepared (flexmix sends the same
#: covariates and responses in every M-step of a fit, only new weights)
_design: dict = {}


def glm_expert(x, y, w, n: int, d: int, family: str, start=None) -> list:
    """One expert of ``family`` ("poisson", "bernoulli" or "gamma") fitted
    to the rows with weights w: the weighted GLM's maximum-likelihood
    coefficients by IRLS (fastmoe.engine.fit_family_experts), [intercept,
    coef_1..coef_d], and for "gamma" then its maximum-likelihood dispersion
    1/shape; from ``start`` (the previous EM iteration's coefficients, in
    that order) where given. The covariates and responses are checked and
    standardised once while the same ones come back."""
    key = (bytes(x), bytes(y), n, d, family)
    if _design.get("key") != key:
        _design.clear()
        _design.update(key=key, design=engine._family_design(_array(x, n, d), _array(y, n, 0),
                                                             family))
    w = _array(w, n, 0)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("the weights must be finite and non-negative.")
    init = None
    if start is not None:
        b = np.asarray(start, dtype=np.float64)
        if b.shape == (d + 1,) and np.all(np.isfinite(b)):
            init = (b[None, 1:], b[:1], np.ones(1))
    fit = _design["design"].fit(w[:, None], init)
    dispersion = [float(fit.var[0])] if family == "gamma" else []
    return [float(fit.intercept[0])] + fit.coef[0].tolist() + dispersion


def warm_up() -> None:
    """Load the compiled kernels the drivers call (numba's, from its disk
    cache, compiled on the first call after an install) once per R session,
    so that the first EM iteration does not pay for them."""
    from . import _kernels

    _kernels.warm_up()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 1))
    for family, y in (("poisson", rng.poisson(1.0, 50)), ("bernoulli", rng.random(50) < 0.5),
                      ("gamma", rng.gamma(2.0, 1.0, 50))):
        glm_expert(X.tobytes(), y.astype(np.float64).tobytes(), np.ones(50).tobytes(), 50, 1,
                   family)

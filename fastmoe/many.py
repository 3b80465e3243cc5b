"""Many small fits at once: :func:`fit_many`, the batch engine for hosts that
fit one small mixture per sample, thousands of times (single-cell quality
control, per-group models)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ._fit import START_GATE_SCALE
from ._frame import Frame
from ._options import EM_DEFAULTS as _EM
from ._params import MoEParams
from ._runtime import resolve_threads
from ._validation import check_float, check_int, check_random_state
from .families import get_family

__all__ = ["fit_many", "ManyResult"]

#: a response whose spread is below this share of its magnitude (float64
#: rounding) is taken for constant
_CONSTANT = 64 * np.finfo(float).eps


@dataclass(frozen=True)
class ManyResult:
    """One data set's fit by :func:`fit_many`.

    Attributes
    ----------
    status : str
        ``"ok"``, or why there is no fit (one line: a NaN, too few rows, a
        constant response, an expert that lost its rows).
    params : MoEParams or None
        The fitted model with exactly ``n_experts`` experts (canonical
        order), or None.
    log_likelihood : float
        The training log-likelihood (NaN without a fit).
    n_iter : int
        EM iterations of the kept start.
    converged : bool
        Whether EM met ``tol`` within ``max_iter``.
    """

    status: str
    params: MoEParams | None = None
    log_likelihood: float = float("nan")
    n_iter: int = 0
    converged: bool = False

    @property
    def ok(self) -> bool:
        """Whether the data set was fitted."""
        return self.status == "ok"


def _prepare(data, K: int, d0: int | None):
    """(X, y, reason): the data set as float64 arrays, or why it cannot be fitted."""
    try:
        X, y = data
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return None, None, f"not an (X, y) pair of numeric arrays ({type(exc).__name__})"
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        return None, None, f"X of shape {X.shape} and y of shape {y.shape} do not match"
    n, d = X.shape
    if d0 is not None and d != d0:
        return None, None, f"X has {d} covariates, the first data set {d0}"
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        return None, None, "X or y holds NaN or inf"
    if n < K * (d + 2):
        return None, None, (f"{n} rows are too few for {K} experts on {d} covariates (at "
                            f"least K(d+2) = {K * (d + 2)})")
    return X, y, None


def fit_many(datasets, n_experts: int, *, family: str = "gaussian", n_jobs: int | None = None,
             random_state=None, max_iter: int = _EM.max_iter, tol: float = _EM.tol,
             n_init: int = _EM.n_init, reg_var: float = _EM.reg_var) -> list[ManyResult]:
    """Fit a K-expert mixture to each of many small, independent data sets.

    Gaussian experts are fitted by one compiled call over every data set
    (``fastmoe._kernels._batch``: EM per data set in the loop over its rows,
    the data sets spread over ``n_jobs`` threads), which removes Python's cost
    per EM iteration: on data sets of a few hundred rows that cost is most of
    :func:`fastmoe.fit_moe`'s. The EM is that of :func:`fastmoe.fit_moe`
    (random starts on standardised data, one Newton step on the gates per
    iteration, the same ``tol``) without its split-merge move. Other families
    run :func:`fastmoe.fit_moe` per data set on ``n_jobs`` processes.

    It never raises for one bad data set and never drops a component: a data
    set that cannot be fitted with ``n_experts`` experts (a NaN, too few rows,
    a constant response, an expert that loses its rows in every start) gets
    a result whose ``status`` says why and whose ``params`` is None.

    Parameters
    ----------
    datasets : sequence of (X, y)
        The data sets; X of shape (n_b, d) with the same d for all (or 1-D
        for one covariate), y of shape (n_b,).
    n_experts : int
        K of every fit.
    family : {"gaussian", "poisson", "bernoulli", "gamma"}, default="gaussian"
        The experts' family.
    n_jobs : int, optional
        Threads (Gaussian) or processes (other families); None: all cores.
        The results do not depend on it.
    random_state : None, int or numpy Generator, default=None
        Seeds every data set's starts; the results are reproducible from it.
    max_iter : int, default=2000
        EM iterations at most per start.
    tol : float, default=1e-7
        Stop when the log-likelihood changes by less than ``tol * |loglik|``.
    n_init : int, default=1
        Starts per data set; the best log-likelihood is kept.
    reg_var : float, default=1e-6
        Variance floor relative to each data set's Var(y) (Gaussian experts).

    Returns
    -------
    list of ManyResult
        One per data set, in order.

    Examples
    --------
    >>> from fastmoe import fit_many
    >>> from fastmoe.datasets import make_moe_regression
    >>> sets = [make_moe_regression(400, 2, 2, random_state=i)[:2] for i in range(3)]
    >>> [r.status for r in fit_many(sets, 2, random_state=0)]
    ['ok', 'ok', 'ok']
    """
    K = check_int(n_experts, "n_experts")
    fam = get_family(family)
    max_iter = check_int(max_iter, "max_iter")
    tol = check_float(tol, "tol", 0.0, inclusive=True)
    n_init = check_int(n_init, "n_init")
    reg_var = check_float(reg_var, "reg_var")
    threads = resolve_threads(n_jobs)
    rng = check_random_state(random_state)
    datasets = list(datasets)
    if fam.name != "gaussian":
        return _fit_family(datasets, K, fam.name, threads, rng, max_iter, tol, n_init)
    return _fit_gaussian(datasets, K, threads, rng, max_iter, tol, n_init, reg_var)


def _fit_gaussian(datasets, K, threads, rng, max_iter, tol, n_init, reg_var):
    from ._kernels._batch import fit_batch

    results: list[ManyResult | None] = [None] * len(datasets)
    frames, parts, kept, d0 = [], [], [], None
    for b, data in enumerate(datasets):
        X, y, why = _prepare(data, K, d0)
        if why is not None:
            results[b] = ManyResult(why)
            continue
        d0 = X.shape[1]
        if np.ptp(y) <= _CONSTANT * max(np.abs(y).max(), 1e-300):
            results[b] = ManyResult("y is constant: a mixture of experts needs a response "
                                    "that varies")
            continue
        frame = Frame.of(X, y)
        frames.append(frame)
        parts.append((frame.X(X), frame.y(y)))
        kept.append(b)
    if not kept:
        return results
    B, d, p = len(kept), d0, d0 + 1
    starts = np.zeros(B + 1, dtype=np.int64)
    starts[1:] = np.cumsum([u.shape[0] for u, _ in parts])
    U = np.ascontiguousarray(np.vstack([u for u, _ in parts]))
    v = np.concatenate([w for _, w in parts])
    dirs = rng.standard_normal((len(datasets), n_init, K, d))[kept] * (START_GATE_SCALE
                                                                       / np.sqrt(d))
    alpha, beta = np.zeros((B, K, p)), np.zeros((B, K, p))
    var, ll = np.ones((B, K)), np.full(B, np.nan)
    n_iter, converged = np.zeros(B, dtype=np.int64), np.zeros(B, dtype=np.bool_)
    status = np.zeros(B, dtype=np.int64)
    fit_batch(U, v, starts, np.ascontiguousarray(dirs), max_iter, tol, reg_var, alpha, beta,
              var, ll, n_iter, converged, status, n_threads=threads)
    for j, b in enumerate(kept):
        if status[j] != 0:
            results[b] = ManyResult(f"an expert lost its rows in every start: these data do "
                                    f"not support {K} experts")
            continue
        frame = frames[j]
        try:
            params = frame.params_out(MoEParams.from_aug(alpha[j], beta[j], var[j]))
        except ValueError as exc:
            results[b] = ManyResult(str(exc))
            continue
        n = int(starts[j + 1] - starts[j])
        results[b] = ManyResult("ok", params.canonical(),
                                float(ll[j] + frame.log_jacobian(n)), int(n_iter[j]),
                                bool(converged[j]))
    return results


def _one_family(data, K, family, seed, max_iter, tol, n_init):
    """One data set of a family other than Gaussian: its ManyResult."""
    from ._em import fit_moe

    X, y, why = _prepare(data, K, None)
    if why is not None:
        return ManyResult(why)
    try:
        with warnings.catch_warnings():
            # reported in the result: an empty expert by its status, a fit
            # that did not converge by ``converged``
            warnings.simplefilter("ignore")
            fit = fit_moe(X, y, K, family=family, random_state=seed, max_iter=max_iter,
                          tol=tol, n_init=n_init, n_threads=1)
    except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
        return ManyResult(str(exc).splitlines()[0])
    if fit.degenerate:
        return ManyResult("; ".join(fit.degenerate) + f": these data do not support {K} experts")
    return ManyResult("ok", fit.params, fit.log_likelihood, fit.n_iter, fit.converged)


def _fit_family(datasets, K, family, n_jobs, rng, max_iter, tol, n_init):
    from joblib import Parallel, delayed

    seeds = rng.integers(0, 2**63 - 1, size=len(datasets))
    return Parallel(n_jobs=n_jobs)(
        delayed(_one_family)(data, K, family, int(s), max_iter, tol, n_init)
        for data, s in zip(datasets, seeds))

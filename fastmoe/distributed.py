"""Distributed learning in one communication step (method.md section 3).

Each machine fits a local MoE on its shard and sends ONE :class:`LocalMessage`
(its parameters, its sample size and a covariate sample, or only the mean and
covariance of its covariates); the server reduces the messages with
:func:`fastmoe.aggregate`. :func:`fit_local` and :func:`aggregate_messages`
are the two halves, to run by hand on different machines;
:class:`DistributedMoERegressor` runs the whole pipeline serially, on a local
process pool, or on a Dask cluster.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import validate_data

from . import _backends, _kernels
from ._backends import BACKENDS
from ._em import fit_moe
from ._runtime import resolve_threads, split_cores
from ._validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_random_state,
    check_X_y,
)
from .aggregation import AggregationResult, aggregate
from .diagnostics import FAILED_COST_FACTOR
from .exceptions import ConvergenceWarning, ShardError
from .io import read_npy, read_table, write_table
from .message import MESSAGE_FORMAT, MESSAGE_VERSION, LocalMessage
from .moe import _MoEPredictMixin

SUPPORTS = ("sample", "gaussian")
#: a machine claiming more than this multiple of the median sample size is
#: flagged as implausible (a warning and the health report; its weight is kept
#: unless ``max_weight`` caps it)
PLAUSIBLE_N_RATIO = 100.0

__all__ = ["BACKENDS", "MESSAGE_FORMAT", "MESSAGE_VERSION", "DistributedMoERegressor",
           "LocalMessage", "ShardError", "aggregate_messages", "fit_local", "fit_shard",
           "load_shard", "pooled_support", "read_messages", "read_table", "select_n_experts",
           "write_table"]


def fit_local(X, y, n_experts: int, *, n_support: int = 1000, support: str = "sample",
              heldout: float = 0.0, random_state=None, **fit_options) -> LocalMessage:
    """Fit a local MoE on one shard and build its message.

    Parameters
    ----------
    X : array-like of shape (n, d)
        The shard's covariates.
    y : array-like of shape (n,)
        The shard's responses.
    n_experts : int
        K of the local model.
    n_support : int, default=1000
        Covariate rows sampled into the message (at most the shard size).
    support : {"sample", "gaussian"}, default="sample"
        "sample" sends the rows; "gaussian" sends only their mean and
        covariance (no raw row leaves the machine).
    heldout : float, default=0.0
        Fraction of rows in (0, 1) kept out of the fit to report a held-out
        log-likelihood (for model selection at the server); 0 for none.
    random_state : None, int or Generator
        Seeds the support sample and the fit.
    **fit_options
        Passed to :func:`fastmoe.fit_moe`; ``tol`` is relative to this shard's
        log-likelihood (DistributedMoERegressor passes ``tol * M`` for M
        machines, the centralised fit's absolute precision).

    Returns
    -------
    LocalMessage
    """
    X, y, _ = check_X_y(X, y)
    check_choice(support, "support", SUPPORTS)
    n_support = check_int(n_support, "n_support")
    heldout = check_float(heldout, "heldout", 0.0, inclusive=True)
    if heldout >= 1.0:
        raise ValueError(f"heldout must be 0 (none) or a fraction in (0, 1); got {heldout!r}.")
    rng = check_random_state(random_state)
    n = X.shape[0]
    n_out = int(round(heldout * n)) if heldout else 0
    if heldout and not 1 <= n_out < n:
        raise ValueError(f"heldout={heldout:g} of {n} rows holds out {n_out} rows; it must "
                         "leave at least one row on each side.")
    t0 = time.perf_counter()
    order = rng.permutation(n)
    fit_rows, out_rows = np.sort(order[n_out:]), order[:n_out]
    fit = fit_moe(X[fit_rows], y[fit_rows], n_experts, random_state=rng, **fit_options)
    fit_time = time.perf_counter() - t0
    ll_out = fit.params.log_likelihood(X[out_rows], y[out_rows]) if n_out else 0.0
    take = np.sort(rng.choice(n, size=min(n_support, n), replace=False))
    mean = X.mean(axis=0)
    cov = np.atleast_2d(np.cov(X, rowvar=False)) if n > 1 else np.zeros((X.shape[1],) * 2)
    msg = LocalMessage(fit.params, len(fit_rows), X[take].copy() if support == "sample"
                       else None, mean, (cov + cov.T) / 2, float(ll_out), n_out, fit_time,
                       {"converged": bool(fit.converged), "n_iter": int(fit.n_iter)})
    msg.validate()
    return msg


def pooled_support(messages, n_support: int | None = None, random_state=None) -> np.ndarray:
    """The server's support covariates: the machines' samples pooled, and for
    a message without a sample, ``n_support`` (default: the largest sample
    size among the messages, or 1000) points drawn from N(mean, cov)."""
    rng = check_random_state(random_state)
    sizes = [m.support.shape[0] for m in messages if m.support is not None]
    draw = n_support or (max(sizes) if sizes else 1000)
    parts = []
    for m in messages:
        if m.support is not None:
            parts.append(m.support)
        else:
            parts.append(rng.multivariate_normal(m.support_mean, m.support_cov, size=draw,
                                                 method="eigh"))
    return np.ascontiguousarray(np.vstack(parts))


def read_messages(messages, n_experts: int | None = None, *,
                  mixed_experts: bool = False) -> list[LocalMessage]:
    """Messages (LocalMessages, bytes or file paths) read and validated, with
    the same number of covariates (and of experts, unless ``n_experts`` is
    given or ``mixed_experts`` is set, to reduce models of different sizes);
    errors name the message."""
    if isinstance(messages, (str, os.PathLike, bytes, LocalMessage)) \
            or not hasattr(messages, "__iter__"):
        raise ValueError("messages must be a list of LocalMessages, message bytes or file "
                         "paths.")
    msgs = []
    for i, m in enumerate(messages):
        try:
            if isinstance(m, (str, os.PathLike)):
                m = LocalMessage.load(m)
            elif isinstance(m, (bytes, bytearray, memoryview)):
                m = LocalMessage.from_bytes(m)
            elif isinstance(m, LocalMessage):
                m.validate()
                m = m._normalised()
            else:
                raise ValueError(f"is a {type(m).__name__}; expected a LocalMessage, its bytes "
                                 "or a message file path")
        except (ValueError, FileNotFoundError) as exc:
            where = f" ({m})" if isinstance(m, (str, os.PathLike)) else ""
            raise ValueError(f"messages[{i}]{where}: {exc}") from None
        msgs.append(m)
    if not msgs:
        raise ValueError("messages is empty; give at least one message.")
    d0, k0 = msgs[0].params.n_features, msgs[0].params.n_experts
    for i, m in enumerate(msgs[1:], 1):
        d, k = m.params.n_features, m.params.n_experts
        if d != d0:
            raise ValueError(f"messages[{i}] has {d} covariates but messages[0] has {d0}; all "
                             "messages must describe the same covariates.")
        if k != k0 and n_experts is None and not mixed_experts:
            raise ValueError(f"messages[{i}] has {k} experts but messages[0] has {k0}; pass "
                             "n_experts to reduce local models of different sizes.")
    return msgs


def implausible_sizes(messages) -> dict:
    """{index: reason} for machines whose claimed n is out of line: more than
    ``PLAUSIBLE_N_RATIO`` times the median claim, or a covariate sample
    smaller than the others' while the claim says the shard had rows to spare
    (a machine samples min(n_support, its rows))."""
    claims = np.array([m.n + m.heldout_n for m in messages], dtype=float)
    out = {}
    if len(messages) >= 3:
        med = float(np.median(claims))
        for i, c in enumerate(claims):
            if c > PLAUSIBLE_N_RATIO * med:
                out[i] = f"claims {int(c)} rows, {c / med:.3g} times the median claim"
    sizes = [m.support.shape[0] for m in messages if m.support is not None]
    if len(sizes) >= 2:
        top = max(sizes)
        for i, m in enumerate(messages):
            if m.support is not None and m.support.shape[0] < min(top, claims[i]):
                out.setdefault(i, f"claims {int(claims[i])} rows but sampled only "
                                  f"{m.support.shape[0]} where others sampled {top}")
    return out


def capped_weights(sizes, max_weight: float) -> np.ndarray:
    """Machine weights n_m / n with none above ``max_weight``: capped weights
    are set to the cap and the rest renormalised, until none exceeds it."""
    lam = np.asarray(sizes, dtype=float)
    lam = lam / lam.sum()
    M = len(lam)
    if max_weight * M < 1.0 - 1e-12:
        raise ValueError(f"max_weight={max_weight:g} is below 1/M = {1 / M:.4g} for {M} "
                         "machines; the weights could not sum to 1.")
    capped = np.zeros(M, dtype=bool)
    for _ in range(M):
        over = ~capped & (lam > max_weight)
        if not over.any():
            break
        capped |= over
        free = ~capped
        rest = 1.0 - max_weight * capped.sum()
        lam[capped] = max_weight
        if free.any():
            lam[free] *= rest / lam[free].sum()
    return lam


def aggregate_messages(messages, n_experts: int | None = None, *, n_support: int | None = None,
                       exclude_failed: bool = False, max_weight: float | None = None,
                       random_state=None, **aggregate_options) -> AggregationResult:
    """Server side: check the messages, pool the supports and aggregate the
    local models.

    Parameters
    ----------
    messages : list of LocalMessage, bytes or str paths
        One message per machine (see :mod:`fastmoe.message` for the checks
        every message passes first).
    n_experts : int, optional
        K of the aggregate (default: the common K of the local models).
    n_support : int, optional
        Support points drawn for a message without a covariate sample.
    exclude_failed : bool, default=False
        Leave out the models that look like failed local fits and aggregate
        the others again. A model is taken for a failed fit when the
        aggregation health (:func:`fastmoe.diagnostics.aggregation_health`,
        ``failed``) finds its experts collapsed onto fewer global experts than
        it has and its transport cost per unit mass above
        ``FAILED_COST_FACTOR`` times the median machine's. Measured in
        ``fastmoe demo``: one such machine of 4 cost the aggregate 0.6% of
        test log-likelihood. The result's ``excluded`` lists the indices left
        out; with two models nothing can be excluded.
    max_weight : float in (0, 1], optional
        Cap on any one machine's weight n_m / n (the others renormalised):
        bounds what a machine that overstates its n can do. A machine whose
        claimed n is out of line (:func:`implausible_sizes`) is flagged in
        ``implausible``, the health report and a warning either way.
    random_state : None, int or Generator
    **aggregate_options
        Passed to :func:`fastmoe.aggregate`.

    Returns
    -------
    AggregationResult
    """
    msgs = read_messages(messages, n_experts)
    exclude_failed = check_bool(exclude_failed, "exclude_failed")
    if max_weight is not None:
        max_weight = check_float(max_weight, "max_weight")
        if max_weight > 1.0:
            raise ValueError(f"max_weight must be in (0, 1]; got {max_weight!r}.")
    rng = check_random_state(random_state)
    odd = implausible_sizes(msgs)
    if odd:
        warnings.warn("implausible sample size(s): " + "; ".join(
            f"messages[{i}] {why}" for i, why in odd.items())
            + ". Check those machines; max_weight caps any machine's weight.",
            UserWarning, stacklevel=2)

    def run(kept):
        Xs = pooled_support([msgs[i] for i in kept], n_support, rng)
        sizes = [msgs[i].n for i in kept]
        if max_weight is not None:
            sizes = capped_weights(sizes, max_weight)
        res = aggregate([msgs[i].params for i in kept], n_experts, sample_sizes=sizes,
                        X_support=Xs, random_state=rng, **aggregate_options)
        notes = tuple(f"messages[{i}] {why}" for i, why in odd.items())
        return replace(res, implausible=tuple(odd), notes=res.notes + notes)

    every = list(range(len(msgs)))
    result = run(every)
    if not exclude_failed:
        return result
    failed = result.health()["failed"]
    if not failed:
        return result
    result = run([i for i in every if i not in failed])
    note = (f"model(s) {failed} were left out as failed local fits (experts collapsed "
            f"onto fewer global experts, transport cost per unit mass over "
            f"{FAILED_COST_FACTOR:g} times the median)")
    return replace(result, excluded=tuple(failed), notes=result.notes + (note,))


# ----------------------------------------------------------------------------
# shards
# ----------------------------------------------------------------------------
def _require_y(X, y, source):
    if y is None:
        raise ValueError(f"{source} has no response (an array or column named 'y').")
    return X, y


def load_shard(shard):
    """A shard given as (X, y) arrays, a data file path, a pair of .npy paths,
    or a callable returning (X, y) -> (X, y)."""
    if callable(shard):
        shard = shard()
    if isinstance(shard, (str, os.PathLike)):
        return _require_y(*read_table(shard), shard)
    if isinstance(shard, (tuple, list)) and len(shard) == 2:
        X, y = shard
        if isinstance(X, (str, os.PathLike)) and isinstance(y, (str, os.PathLike)):
            return read_npy(X, "covariate file"), read_npy(y, "response file")
        return X, y
    raise ValueError(f"a shard must be (X, y), a data file path, a pair of .npy paths or a "
                     f"callable; got {type(shard).__name__}.")


def fit_shard(index: int, shard, n_experts: int, seed: int, options: dict):
    """Load, check and fit one shard; the plain, picklable function every
    backend runs (call it from joblib, Ray or Spark too).

    Returns ``(index, LocalMessage)`` or ``(index, ShardError)``: a failed
    shard is reported, not raised, so the caller decides what to do with it.
    """
    n = 0
    try:
        X, y = load_shard(shard)
        X = np.asarray(X)
        n = int(X.shape[0]) if X.ndim else 0
        if n == 0:
            raise ShardError(index, "the shard is empty")
        d = X.shape[1] if X.ndim == 2 else 1
        need = n_experts * (d + 1)
        if n < need:
            raise ShardError(index, f"{n} rows are fewer than the {need} needed for "
                                    f"{n_experts} experts on {d} features (K(d+1))", n)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            msg = fit_local(X, y, n_experts, random_state=seed, **options)
        msg.meta["warnings"] = sorted({str(w.message) for w in caught})
        return index, msg
    except ShardError as exc:
        return index, exc
    except Exception as exc:  # any failure of one shard is reported by its index
        reason = str(exc).splitlines()[0] if str(exc) else ""
        return index, ShardError(index, f"{type(exc).__name__}: {reason}", n)


def _progress(total: int, verbose: int):
    if not verbose or not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="local fits", unit="shard")


def _dask_partitions(shards):
    """Dask collections -> one loader per partition (a machine)."""
    try:
        import dask
        import dask.array as da
        import dask.dataframe as dd
    except ImportError:
        return None
    if isinstance(shards, dd.DataFrame):
        cols = list(shards.columns)
        ycol = "y" if "y" in cols else cols[-1]
        return [dask.delayed(_frame_to_xy)(p, ycol) for p in shards.to_delayed()]
    if (isinstance(shards, tuple) and len(shards) == 2
            and isinstance(shards[0], da.Array) and isinstance(shards[1], da.Array)):
        X, y = shards
        if X.chunks[0] != y.chunks[0]:
            raise ValueError("the Dask arrays X and y must have the same row chunks "
                             f"({X.chunks[0]} vs {y.chunks[0]}).")
        X = X.rechunk({1: -1})
        return [dask.delayed(_pair)(xp, yp)
                for xp, yp in zip(X.to_delayed().ravel(), y.to_delayed().ravel())]
    return None


def _frame_to_xy(df, ycol):
    return df.drop(columns=[ycol]).to_numpy(float), df[ycol].to_numpy(float)


def _pair(a, b):
    return a, b


class _DelayedShard:
    """A Dask partition computed where the shard is fitted."""

    def __init__(self, delayed):
        self.delayed = delayed

    def __call__(self):
        return self.delayed.compute(scheduler="sync")


# ----------------------------------------------------------------------------
# the estimator
# ----------------------------------------------------------------------------
class DistributedMoERegressor(_MoEPredictMixin, RegressorMixin, BaseEstimator):
    """Mixture of experts learned from shards in one communication step.

    Parameters
    ----------
    n_experts : int, default=2
    n_machines : int, default=4
        Shards ``fit(X, y)`` splits the rows into (ignored by ``fit_shards``).
    cost : {"kl", "w2"}, default="kl"
    n_support : int, default=1000
        Covariate rows each machine sends (or the server draws per machine
        with ``support="gaussian"``).
    support : {"sample", "gaussian"}, default="sample"
    backend : {"local", "serial", "dask"}, default="local"
        "local": a process pool on this machine (joblib's loky: works from a
        plain script, ``python -`` or a notebook, with no main guard);
        "serial": one fit after another in this process; "dask": a
        dask.distributed Client (``client``, never closed by fastmoe, or a
        LocalCluster started and closed for the fit).
    n_jobs : int or None
        Worker processes of the "local" backend (None: min(shards, cores)).
    client : dask.distributed.Client or None
    on_shard_error : {"raise", "skip"}, default="raise"
        "skip" drops a failed shard with a warning, renormalises the weights
        over the others and records it in ``dropped_shards_``.
    max_iter, tol, n_init, init, init_iter, reg_var, gate_steps, split_merge :
        local EM options (see :func:`fastmoe.fit_moe`). Three starts per machine by default: one
        local fit stuck in a poor optimum spoils the aggregate (measured: 3 of
        16 single-start fits of the authors' design did, and the test
        log-likelihood of the aggregate fell by 8%). ``tol`` is relative to
        the log-likelihood of all the data, as for a centralised fit: each of
        the M machines stops when its own log-likelihood changes by less than
        ``tol * M`` of itself, the same absolute precision for equal shards.
        (A machine held to ``tol`` of its own 1/M share of the log-likelihood
        is held to a precision M times finer than the centralised fit, and
        spends most of its iterations there: measured on the authors' design,
        62500 rows, 3 starts, local fits took 9 to 10 s instead of 15 to 25 s,
        for test log-likelihoods equal to 0.05 in 22,800.)
    agg_init, agg_n_init, agg_max_iter, gate_target, variance_update :
        aggregation options (see :func:`fastmoe.aggregate`).
    exclude_failed : bool, default=True
        Leave out local models that look like failed local fits and aggregate
        the others again (see :func:`fastmoe.aggregate_messages`); the shards
        left out are listed in ``excluded_shards_``, with a warning.
    random_state : None, int or Generator
    n_threads : threads per local fit and of the reduction (None: cores / jobs)

    Attributes
    ----------
    params_, gate_coef_, gate_intercept_, expert_coef_, expert_intercept_, expert_var_ :
        the aggregated model.
    n_iter_ : MM iterations of the reduction.
    aggregation_ : the AggregationResult (``aggregation_.report()``).
    messages_, local_models_ : the messages of the shards that were fitted.
    shard_sizes_, dropped_shards_, dropped_rows_, excluded_shards_ : what
        each shard contributed; ``shard_sizes_.sum() + dropped_rows_`` is the
        number of rows given.
    local_fit_times_, reduction_time_, learning_time_, wall_time_,
    message_bytes_ : the costs.
    verbose : int, default=0
        1 shows a progress bar over the shard fits (on a terminal, with tqdm).
    """

    def __init__(self, n_experts=2, n_machines=4, *, cost="kl", n_support=1000,
                 support="sample", backend="local", n_jobs=None, client=None,
                 on_shard_error="raise", max_iter=200, tol=1e-7, n_init=3, init="random",
                 init_iter=20, reg_var=1e-6, gate_steps=1, split_merge=True, agg_init="aligned",
                 agg_n_init=3, agg_max_iter=300, gate_target="assigned", variance_update="exact",
                 exclude_failed=True, random_state=None, n_threads=None, verbose=0):
        self.n_experts = n_experts
        self.n_machines = n_machines
        self.cost = cost
        self.n_support = n_support
        self.support = support
        self.backend = backend
        self.n_jobs = n_jobs
        self.client = client
        self.on_shard_error = on_shard_error
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.init = init
        self.init_iter = init_iter
        self.reg_var = reg_var
        self.gate_steps = gate_steps
        self.split_merge = split_merge
        self.exclude_failed = exclude_failed
        self.agg_init = agg_init
        self.agg_n_init = agg_n_init
        self.agg_max_iter = agg_max_iter
        self.gate_target = gate_target
        self.variance_update = variance_update
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose

    def fit(self, X, y):
        """Split the rows at random into ``n_machines`` disjoint shards (sizes
        differ by at most one) and fit them; returns self."""
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        M = check_int(self.n_machines, "n_machines")
        n = X.shape[0]
        if M > n:
            raise ValueError(f"n_machines={M} is more than the number of samples "
                             f"(n_samples = {n}).")
        K, d = check_int(self.n_experts, "n_experts"), X.shape[1]
        if n // M < K * (d + 1):
            raise ValueError(f"n_samples = {n} rows over {M} machines leave {n // M} per shard, "
                             f"fewer than the K(d+1) = {K * (d + 1)} a local fit of {K} experts "
                             f"on {d} features needs; use fewer machines or experts.")
        rng = check_random_state(self.random_state)
        order = rng.permutation(n)
        shards = [(X[idx], y[idx]) for idx in np.array_split(order, M)]
        return self._fit(shards, rng)

    def fit_shards(self, shards):
        """Fit shards the user already has: a list of (X, y) arrays, data file
        paths (.npz, .csv, .parquet), pairs of .npy paths or callables, or a
        Dask dataframe / (X, y) pair of Dask arrays whose partitions are the
        machines; returns self."""
        parts = _dask_partitions(shards)
        if parts is not None:
            shards = [_DelayedShard(p) for p in parts]
        if isinstance(shards, (str, os.PathLike)) or not hasattr(shards, "__len__"):
            raise ValueError("shards must be a list of shards or a Dask collection.")
        if len(shards) == 0:
            raise ValueError("shards is empty; give at least one shard.")
        return self._fit(list(shards), check_random_state(self.random_state))

    def _fit(self, shards, rng):
        t_wall = time.perf_counter()
        K = check_int(self.n_experts, "n_experts")
        check_choice(self.backend, "backend", BACKENDS)
        check_choice(self.on_shard_error, "on_shard_error", ("raise", "skip"))
        check_choice(self.support, "support", SUPPORTS)
        M = len(shards)
        # processes x threads never exceed the cores (_runtime.split_cores); the
        # kernels' results do not depend on the thread count, so every backend
        # gives the same model
        if self.backend == "serial":  # one fit at a time: all cores to it
            n_jobs, threads = split_cores(1, 1, self.n_threads)
        elif self.backend == "local":
            n_jobs, threads = split_cores(M, self.n_jobs, self.n_threads)
        else:  # a Dask worker's own core
            n_jobs, threads = 1, resolve_threads(self.n_threads or 1)
        tol = check_float(self.tol, "tol", 0.0, inclusive=True)
        options = dict(n_support=self.n_support, support=self.support, max_iter=self.max_iter,
                       tol=tol * M, n_init=self.n_init, init=self.init,
                       init_iter=self.init_iter, reg_var=self.reg_var,
                       gate_steps=self.gate_steps, split_merge=self.split_merge,
                       n_threads=threads)
        seeds = rng.integers(0, 2**63 - 1, size=M)
        tasks = [(i, s, K, int(seeds[i]), options) for i, s in enumerate(shards)]
        bar = _progress(M, self.verbose)
        try:
            results = _backends.run(self.backend, fit_shard, tasks, n_jobs=n_jobs,
                                    client=self.client, bar=bar)
        finally:
            if bar is not None:
                bar.close()
        results = sorted(results, key=lambda r: r[0])
        failed = [(i, r) for i, r in results if isinstance(r, ShardError)]
        if failed and self.on_shard_error == "raise":
            raise failed[0][1]
        if failed:
            warnings.warn("dropped shard(s) " + "; ".join(str(e) for _, e in failed)
                          + "; the weights were renormalised over the others.",
                          UserWarning, stacklevel=3)
        fitted = [i for i, r in results if not isinstance(r, ShardError)]  # shard indices
        messages = [r for _, r in results if not isinstance(r, ShardError)]
        if not messages:
            raise ValueError("every shard failed; nothing to aggregate.")
        noisy = [i for i, m in zip(fitted, messages) if m.meta["warnings"]]
        if noisy:
            first = messages[fitted.index(noisy[0])]
            warnings.warn(f"local fits of shard(s) {noisy} warned (first: "
                          f"{first.meta['warnings'][0]}); see messages_[i].meta['warnings'].",
                          ConvergenceWarning, stacklevel=3)
        _kernels.warm_up(resolve_threads(self.n_threads))  # JIT, untimed
        t0 = time.perf_counter()
        agg = aggregate_messages(messages, K, n_support=self.n_support, random_state=rng,
                                 exclude_failed=self.exclude_failed, cost=self.cost,
                                 init=self.agg_init, n_init=self.agg_n_init,
                                 max_iter=self.agg_max_iter, gate_target=self.gate_target,
                                 variance_update=self.variance_update,
                                 n_threads=self.n_threads)
        reduction_time = time.perf_counter() - t0
        self._set_params_attributes(agg.params)
        self.aggregation_ = agg
        self.n_iter_ = int(agg.n_iter)
        self.messages_ = messages
        self.local_models_ = [m.params for m in messages]
        self.shard_sizes_ = np.array([m.n + m.heldout_n for m in messages])
        self.dropped_shards_ = [i for i, _ in failed]
        self.excluded_shards_ = [fitted[j] for j in agg.excluded]
        if self.excluded_shards_:
            warnings.warn(f"the local models of shard(s) {self.excluded_shards_} look like failed "
                          "local fits (a poor EM optimum) and were left out of the aggregate; "
                          "see aggregation_.report() for the others, exclude_failed=False to "
                          "keep them.", UserWarning, stacklevel=3)
        self.local_fit_times_ = np.array([m.fit_time for m in messages])
        self.reduction_time_ = reduction_time
        self.learning_time_ = float(self.local_fit_times_.max()) + reduction_time
        self.message_bytes_ = np.array([len(m.to_bytes()) for m in messages])
        self.dropped_rows_ = int(sum(e.n_rows for _, e in failed))
        self.wall_time_ = time.perf_counter() - t_wall
        health = agg.health()
        if health["warnings"]:
            warnings.warn("aggregation health: " + "; ".join(health["warnings"])
                          + ". See aggregation_.report().", UserWarning, stacklevel=3)
        return self


# ----------------------------------------------------------------------------
# model selection at the server
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSelection:
    """Result of :func:`select_n_experts`: the chosen K, the criterion per
    candidate (lower is better for "bic", higher for "heldout") and the
    aggregation of every candidate."""

    n_experts: int
    criterion: str
    scores: dict
    results: dict

    @property
    def best(self) -> AggregationResult:
        return self.results[self.n_experts]


def expected_loglik(result: AggregationResult, messages, X_support) -> float:
    """Estimate of the total log-likelihood of the aggregated model on all n
    rows: n / S * sum_s sum_l w_l(x_s) E_{y ~ N(m_l(x_s), var_l)} log f(y | x_s),
    the expectation by Gauss-Hermite quadrature (the data never reach the
    server; the large mixture of local models stands in for them)."""
    from .aggregation import GH_NODES, _kl_targets, large_mixture

    mix = large_mixture([m.params for m in messages], [m.n for m in messages])
    nodes, weights = np.polynomial.hermite_e.hermegauss(GH_NODES)
    weights = weights / weights.sum()
    p = result.params
    beta = p.expert_aug
    beta[:, 0] -= mix.shift
    _, total = _kl_targets(mix, np.asarray(X_support, float), p.gate_aug, beta, p.expert_var,
                           nodes, weights)
    n = sum(m.n for m in messages)
    return total * n / len(X_support)


def select_n_experts(messages, candidates, *, criterion: str = "bic", random_state=None,
                     **aggregate_options) -> ModelSelection:
    """Choose the number of global experts at the server.

    criterion="bic": ``messages`` is one list; aggregate it to every K in
        ``candidates`` and pick the smallest BIC = -2 L_K + k_K log n, with
        L_K the :func:`expected_loglik` of the K-expert aggregate and k_K its
        number of free parameters. Needs nothing beyond the usual messages.
    criterion="heldout": ``messages`` is a dict {K: list of messages from
        local fits with K experts, made with ``fit_local(..., heldout=f)``};
        pick the K whose local models have the largest total held-out
        log-likelihood (the one extra number each message carries), and
        aggregate the messages of every K.
    """
    check_choice(criterion, "criterion", ("bic", "heldout"))
    rng = check_random_state(random_state)
    scores, results = {}, {}
    if criterion == "heldout":
        if not isinstance(messages, dict):
            raise ValueError('criterion="heldout" needs messages as a dict {K: messages}.')
        for k, msgs in messages.items():
            msgs = read_messages(msgs, k)
            if any(m.heldout_n == 0 for m in msgs):
                raise ValueError(f"messages for K={k} carry no held-out log-likelihood; "
                                 "make them with fit_local(..., heldout=0.1).")
            scores[k] = float(sum(m.heldout_loglik for m in msgs))
            results[k] = aggregate_messages(msgs, k, random_state=rng, **aggregate_options)
        best = max(scores, key=scores.get)
    else:
        msgs = read_messages(messages, mixed_experts=True)
        Xs = pooled_support(msgs, None, rng)
        n = sum(m.n for m in msgs)
        for k in candidates:
            k = check_int(k, "candidate n_experts")
            res = aggregate([m.params for m in msgs], k, sample_sizes=[m.n for m in msgs],
                            X_support=Xs, random_state=rng, **aggregate_options)
            results[k] = res
            scores[k] = (-2.0 * expected_loglik(res, msgs, Xs)
                         + res.params.n_parameters * np.log(n))
        best = min(scores, key=scores.get)
    return ModelSelection(int(best), criterion, scores, results)

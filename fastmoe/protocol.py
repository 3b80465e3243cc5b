"""The protocol of one-shot distributed learning (docs/method.rst, section 3): the
machine's half, :func:`fit_local` (fit a local MoE, return ONE
:class:`~fastmoe.LocalMessage`), and the server's half,
:func:`aggregate_messages` (check every message, pool the covariate samples,
reduce with :func:`fastmoe.aggregate`, and leave out failed local fits).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import replace

import numpy as np

from . import engine
from ._em import LOCAL_GATE_PENALTY, duplicate_pair, fit_moe
from ._gating import newton_direction
from ._params import MoEParams
from ._validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_random_state,
    check_X_y,
)
from .aggregation import AggregationResult, aggregate, divergence_matrix
from .health import DIVERGED_GATE_SLOPE, steepest_gate_slope
from .message import LocalMessage

__all__ = ["fit_local", "aggregate_messages", "read_messages", "recheck_local", "round_statistics",
           "refine_step"]

SUPPORTS = ("sample", "gaussian")
#: the default bound on the server's support (support_size): points per free
#: gate parameter, and the least
SUPPORT_PER_PARAMETER = 100
MIN_SUPPORT = 5000
#: a machine claiming more than this multiple of the median sample size is
#: flagged as implausible (a warning and the health report; its weight is kept
#: unless ``max_weight`` caps it)
PLAUSIBLE_N_RATIO = 100.0
#: with ``robust=True``, a machine whose model's divergence from the medoid
#: model, times its claimed n, exceeds this multiple of the median machine's
#: is left out as inconsistent with the consensus. Honest machines' scores
#: spread like a chi-square on the model's parameters (measured: at most 1.9
#: times the median over 16 honest machines of 2000 rows, 5 seeds, d=3, K=3).
ROBUST_FACTOR = 10.0


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
        machines, the centralised fit's absolute precision).

    Returns
    -------
    LocalMessage
        The machine's one message: its model, row count, covariate sample
        or moments, and facts about the fit.
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


def _doubt(fit, moments) -> str | None:
    """Why a local fit looks unfinished or stuck, or None: EM stopped before
    converging, or two of its experts describe the same data (the poor
    optimum that EM cannot leave; ``fastmoe._em.duplicate_pair``, over the
    covariates' ``moments``)."""
    if not fit.converged:
        return "EM did not converge"
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
    optimum (-25259.4 against the truth's -25355.6 on its rows)."""
    why = _doubt(fit, moments)
    if why is None:
        return fit, said, "passed"
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


def support_size(n_features: int, n_experts: int) -> int:
    """The default bound on the server's support: ``SUPPORT_PER_PARAMETER``
    points per free gate parameter, (d+1)(K-1), and at least
    ``MIN_SUPPORT``."""
    return max(MIN_SUPPORT, SUPPORT_PER_PARAMETER * (n_features + 1) * (n_experts - 1))


def pooled_support(messages, n_support: int | None = None, random_state=None,
                   max_support: int | None = None) -> np.ndarray:
    """The server's support covariates: the machines' samples pooled, and for
    a message without a sample, ``n_support`` (default: the largest sample
    size among the messages, or 1000) points drawn from N(mean, cov).

    With ``max_support``, each machine gives at most ceil(max_support / M)
    of its points (a random subset, in their order), so that the support,
    and the reduction's cost, stop growing with M."""
    parts = support_parts(messages, n_support, random_state, max_support)
    return np.ascontiguousarray(np.vstack(parts))


def support_parts(messages, n_support: int | None = None, random_state=None,
                  max_support: int | None = None) -> list:
    """Each message's part of :func:`pooled_support`, in order."""
    rng = check_random_state(random_state)
    sizes = [m.support.shape[0] for m in messages if m.support is not None]
    draw = n_support or (max(sizes) if sizes else 1000)
    share = None if max_support is None else -(-int(max_support) // len(messages))
    if share is not None:
        draw = min(draw, share)
    parts = []
    for m in messages:
        if m.support is None:
            parts.append(rng.multivariate_normal(m.support_mean, m.support_cov, size=draw,
                                                 method="eigh"))
        elif share is not None and m.support.shape[0] > share:
            rows = np.sort(rng.choice(m.support.shape[0], share, replace=False))
            parts.append(m.support[rows])
        else:
            parts.append(m.support)
    return parts


#: the most bytes of covariate samples the server holds over all messages (a
#: message may hold up to MAX_MESSAGE_BYTES; thirty such would take 2 GB)
MAX_TOTAL_SUPPORT_BYTES = 512 * 2**20


def read_messages(messages, n_experts: int | None = None, *,
                  mixed_experts: bool = False) -> list[LocalMessage]:
    """Messages read and validated, with errors that name the message.

    Parameters
    ----------
    messages : list of LocalMessage, bytes or str paths
        One message per machine.
    n_experts : int, optional
        K of the aggregate: local models may then have any number of experts.
    mixed_experts : bool, default=False
        Accept local models of different sizes without ``n_experts``.

    Returns
    -------
    list of LocalMessage
        The messages, with the same number of covariates (and of experts,
        unless ``n_experts`` or ``mixed_experts`` says otherwise).
    """
    if isinstance(messages, (str, os.PathLike, bytes, LocalMessage)) \
            or not hasattr(messages, "__iter__"):
        raise ValueError("messages must be a list of LocalMessages, message bytes or file "
                         "paths.")
    msgs, held = [], 0
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
        held += 0 if m.support is None else m.support.nbytes
        if held > MAX_TOTAL_SUPPORT_BYTES:
            raise ValueError(f"messages[{i}]: the covariate samples of messages[0..{i}] hold "
                             f"{held} bytes, more than the server's limit of "
                             f"{MAX_TOTAL_SUPPORT_BYTES}; send smaller samples (n_support).")
    if not msgs:
        raise ValueError("messages is empty; give at least one message.")
    seen = {}
    for i, m in enumerate(msgs):
        first = seen.setdefault(m.digest(), i)
        if first != i:
            raise ValueError(f"messages[{i}] is the same message as messages[{first}] (the same "
                             "model, rows and covariate sample): each machine counts once.")
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


def inconsistent_machines(messages, X_support, *, cost: str = "kl",
                          n_threads: int | None = None) -> dict:
    """{index: reason} for the machines whose models are inconsistent with the
    consensus beyond what their sample size explains (``robust=True``).

    As in the Byzantine-tolerant split-and-conquer estimator (DFMR, arXiv
    2407.13980), the consensus is the medoid: the model with the smallest
    total symmetrised transport divergence (per support point) to the
    others, every machine counted once whatever its claimed n. An honest
    machine's divergence from it shrinks like 1/n_m, so the score is the
    divergence times the claimed n_m: a machine that forges its model, or
    inflates its n, scores high on both counts. Machines scoring above
    ``ROBUST_FACTOR`` times the median of the others are named. Needs at
    least three machines; returns {} with fewer.
    """
    M = len(messages)
    if M < 3:
        return {}
    D = divergence_matrix([m.params for m in messages], X_support, cost=cost,
                          n_threads=n_threads)
    D = (D + D.T) / (2 * X_support.shape[0])
    center = int(np.argmin(D.sum(axis=1)))
    n = np.array([m.n + m.heldout_n for m in messages], dtype=float)
    score = D[:, center] * n
    typical = float(np.median(np.delete(score, center)))
    return {i: f"divergence {D[i, center]:.3g} per point from the medoid model (machine "
               f"{center}) times its claimed n={int(n[i])} is {score[i] / typical:.3g} times "
               f"the median machine's" for i in range(M)
            if i != center and score[i] > ROBUST_FACTOR * typical}


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
                       max_support="auto", exclude_failed: bool = False,
                       max_weight: float | None = None, robust: bool = False,
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
    max_support : int, "auto" or None, default="auto"
        Bound on the support, drawn evenly over the machines
        (:func:`pooled_support`): "auto" is :func:`support_size` (100 points
        per free gate parameter, at least 5000), None pools every point sent.
        The reduction's cost grows with the support times the number of local
        experts: without a bound, quadratically in M.
    exclude_failed : bool, default=False
        Leave out the models that look like failed local fits and aggregate
        the others again (at most ``max_excluded`` of the rows, an aggregate
        option: see :func:`fastmoe.aggregate`). A model is taken for a failed fit when the
        aggregation health (:func:`fastmoe.diagnostics.aggregation_health`,
        ``failed``) finds its experts collapsed onto fewer global experts than
        it has and its transport cost per unit mass above
        ``FAILED_COST_FACTOR`` times the median machine's (the rule of
        :func:`fastmoe.aggregate`'s ``exclude_failed``, which this calls; the
        support keeps every machine's covariate sample). Measured in
        ``fastmoe demo``: one such machine of 4 cost the aggregate 0.6% of
        test log-likelihood. The result's ``excluded`` lists the indices left
        out; with two models nothing can be excluded.
    max_weight : float in (0, 1], optional
        Cap on any one machine's weight n_m / n (the others renormalised):
        bounds what a machine that overstates its n can do. A machine whose
        claimed n is out of line (:func:`implausible_sizes`) is flagged in
        ``implausible``, the health report and a warning either way.
    robust : bool, default=False
        Leave out the machines whose models are inconsistent with the
        consensus beyond what their sample size explains
        (:func:`inconsistent_machines`: a forged model, an inflated n), and
        aggregate the others on a support drawn from their samples alone.
        ``inconsistent`` names them (with the reason in ``notes``); they are
        also in ``excluded``. A machine from a genuinely different population
        is inconsistent too: use it where machines may be corrupted or lie,
        not to summarise heterogeneous data.
    random_state : None, int or Generator
        Seeds the support drawn and the reduction's starts.
    **aggregate_options
        Passed to :func:`fastmoe.aggregate`.

    Returns
    -------
    AggregationResult
        The aggregate, the support it was fitted on, and its health.
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

    if isinstance(max_support, str):
        check_choice(max_support, "max_support", ("auto",))
        K = n_experts if n_experts is not None else msgs[0].params.n_experts
        max_support = support_size(msgs[0].params.n_features, check_int(K, "n_experts"))
    elif max_support is not None:
        max_support = check_int(max_support, "max_support")
    robust = check_bool(robust, "robust")
    Xs = pooled_support(msgs, n_support, rng, max_support)
    kept, bad = list(range(len(msgs))), {}
    if robust:
        bad = inconsistent_machines(msgs, Xs, cost=aggregate_options.get("cost", "kl"),
                                    n_threads=aggregate_options.get("n_threads"))
        if bad:
            kept = [i for i in kept if i not in bad]
            Xs = pooled_support([msgs[i] for i in kept], n_support, rng, max_support)
    sizes = [msgs[i].n for i in kept]
    if max_weight is not None:
        sizes = capped_weights(sizes, max_weight)
    result = aggregate([msgs[i].params for i in kept], n_experts, sample_sizes=sizes,
                       X_support=Xs, exclude_failed=exclude_failed, random_state=rng,
                       **aggregate_options)
    notes = tuple(f"messages[{i}] {why}" for i, why in odd.items())
    notes += tuple(f"messages[{i}] left out as inconsistent (robust=True): {why}"
                   for i, why in bad.items())
    excluded = tuple(sorted(set(bad) | {kept[j] for j in result.excluded}))
    claims = np.array([m.n for m in msgs], dtype=float)
    share = float(claims[list(excluded)].sum() / claims.sum()) if excluded else 0.0
    return replace(result, implausible=tuple(odd), inconsistent=tuple(bad), excluded=excluded,
                   excluded_fraction=share, notes=result.notes + notes)


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
        Passed to :func:`fastmoe.fit_moe` (not ``init`` or ``n_init``).

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


# ----------------------------------------------------------------------------
# refinement rounds: exact distributed EM from the aggregate
# ----------------------------------------------------------------------------
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
    StepStatistics
        Additive over machines: ``+`` sums them.
    """
    return engine.step_statistics(X, y, params, n_threads=n_threads, derivatives=True)


def refine_step(params, stats: RoundStatistics, *, reg_var: float = 1e-6,
                gate_step: float = 1.0):
    """The server's half of an EM round, from the machines' summed statistics.

    The experts' closed-form M-step and one Newton step (times
    ``gate_step``) on the gates. With all machines' statistics this is one EM
    iteration of :func:`fastmoe.engine.em_step` on all the rows. The solves are
    made at the statistics' own mean (x, y) (``StepStatistics.centred``), so
    large offsets of the covariates or of the response cost no precision.

    Parameters
    ----------
    params : MoEParams
        The model the round was run at.
    stats : StepStatistics
        The machines' statistics at ``params``, summed.
    reg_var : float, default=1e-6
        Variance floor, relative to the response's variance.
    gate_step : float, default=1.0
        Multiple of the gates' Newton step.

    Returns
    -------
    MoEParams
        The next model.
    """
    stats, frame, local = stats.at_own_mean(params)
    coef, intercept, var = engine.update_experts(
        stats.experts, reg_var=reg_var,
        previous=(local.expert_coef, local.expert_intercept, local.expert_var))
    alpha = local.gate_aug
    K, p = alpha.shape
    if K > 1:
        alpha += gate_step * newton_direction(stats.gates.gradient, -stats.gates.hessian, K, p)
    return frame.params_out(MoEParams(alpha[:, 1:], alpha[:, 0], coef, intercept, var))

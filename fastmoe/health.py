"""The health of an aggregation: which machines' experts went where, what
it cost, and sentences naming the likely cause of anything out of line.
"""

from __future__ import annotations

import numpy as np

from ._em import duplicate_pair
from ._reduction import mapped_one_to_one

__all__ = ["aggregation_health", "health_report"]

OUTLIER_FACTOR = 5.0
#: a collapsed machine whose transport cost per unit mass exceeds this multiple
#: of the median is taken for a failed local fit. Measured: 5.6 times in
#: ``fastmoe demo`` (one of 4 machines), 3.2 times in the constructed case of
#: tests/test_distributed.py (a failed fit drags the aggregate, and so the
#: median, towards itself).
FAILED_COST_FACTOR = 2.0
#: support points per free gate parameter below which the gate refit is flagged
SUPPORT_PER_GATE_PARAMETER = 10
#: a local gate slope above this many log-odds per standard deviation of a
#: covariate (on the support) is taken for a diverged gate: the authors'
#: design has slopes of at most 5, and diverged local fits of 1406 rows
#: reached hundreds
DIVERGED_GATE_SLOPE = 30.0
#: a local expert whose variance is below this multiple of the median local
#: variance has collapsed onto a few rows
COLLAPSED_VARIANCE_RATIO = 1e-3
#: a local expert whose gate gives it less than this share of its machine's
#: weight on the support is starved
STARVED_SHARE = 1e-3


def steepest_gate_slope(gate_coef, sd) -> float:
    """The largest slope of the gates ``gate_coef`` (K, d) relative to the
    last gate, in log-odds per standard deviation ``sd`` (d,) of a covariate."""
    slopes = np.abs(gate_coef - gate_coef[-1]) * sd
    return float(slopes.max()) if slopes.size else 0.0


def local_fit_issues(gate, var, starts, lam, weight, sd, expert=None, moments=None) -> dict:
    """Machines whose local fits look degenerate, from the stacked local
    models: ``diverged_gates`` (largest gate slope in log-odds per standard
    deviation ``sd`` of the covariates above ``DIVERGED_GATE_SLOPE``),
    ``collapsed_experts`` (an expert's variance below
    ``COLLAPSED_VARIANCE_RATIO`` times the median local variance) and
    ``starved_experts`` (an expert with less than ``STARVED_SHARE`` of its
    machine's weight lam[m]; ``weight`` (L,) is each local expert's mean
    weight w_l(x_s) over the support) and, given the stacked ``expert``
    coefficients (L, d+1) and the support's ``moments`` E[xt xt^T],
    ``duplicate_experts`` (two experts of one machine that describe the same
    data: ``fastmoe._em.duplicate_pair``). Each maps machine index -> a short
    description."""
    out = {"diverged_gates": {}, "collapsed_experts": {}, "starved_experts": {},
           "duplicate_experts": {}}
    floor = COLLAPSED_VARIANCE_RATIO * float(np.median(var))
    for m in range(len(starts) - 1):
        lo, hi = starts[m], starts[m + 1]
        top = steepest_gate_slope(gate[lo:hi, 1:], sd)
        if top > DIVERGED_GATE_SLOPE:
            out["diverged_gates"][m] = f"gate slope {top:.3g} per standard deviation"
        low = [k for k in range(hi - lo) if var[lo + k] < floor]
        if low:
            out["collapsed_experts"][m] = f"expert(s) {low}"
        starved = [k for k in range(hi - lo) if weight[lo + k] < STARVED_SHARE * lam[m]]
        if starved:
            out["starved_experts"][m] = f"expert(s) {starved}"
        pair = None if expert is None else duplicate_pair(expert[lo:hi], var[lo:hi], moments)
        if pair is not None:
            out["duplicate_experts"][m] = f"experts {pair[1]} and {pair[0]} (KL {pair[2]:.3g})"
    return out


#: the local fit issues that count as evidence of a failed fit
FAILURE_EVIDENCE = ("diverged_gates", "collapsed_experts", "starved_experts",
                    "duplicate_experts")


def aggregation_health(result) -> dict:
    """Structured health of an :class:`~fastmoe.AggregationResult`.

    Each local expert l is owned by the global expert a_l that receives most
    of its mass.

    Parameters
    ----------
    result : AggregationResult
        The aggregation to judge.

    Returns
    -------
    dict
        With the keys:

        - ``counts`` (K, M): local experts of machine m owned by global expert k
          (a healthy reduction of equal-K models owns about one per machine);
        - ``mass`` (K,) and ``objective_share`` (K,): mass received and share of
          the objective R of each global expert;
        - ``machine_cost`` (M,): each machine's transport cost per unit of mass;
        - ``collapsed`` : machines whose experts land on fewer distinct global
          experts than they have (min(K_m, K));
        - ``heterogeneous`` : machines whose cost per unit mass exceeds
          ``OUTLIER_FACTOR`` times the median machine's, or collapsed machines
          above ``FAILED_COST_FACTOR`` times it whose models show no evidence of
          failure (a different population);
        - ``failed`` : collapsed machines whose cost per unit mass exceeds
          ``FAILED_COST_FACTOR`` times the median machine's and whose own model
          shows evidence of failure (``FAILURE_EVIDENCE``: diverged gates,
          collapsed, starved or duplicated experts), taken for failed local fits
          (``exclude_failed``); a machine that is merely different (a confident
          fit of another population) is reported as ``heterogeneous``, never
          failed;
        - ``suspect`` : machines above ``FAILED_COST_FACTOR`` times the median
          cost, collapsed or not, failed or not: the machines
          :func:`fastmoe.machine.recheck_local` asks to look at their fits again
          (a poor local optimum whose experts still map one-to-one is costly
          too: on 64 shards of 1406 rows of the reference data set B, rechecking
          the two such machines took the aggregate's variance error from 2.8 to
          1.1 times the centralised fit's);
        - ``implausible`` : input indices of machines whose claimed sample size
          is out of line (``AggregationResult.implausible``);
        - ``diverged_gates``, ``collapsed_experts``, ``starved_experts``,
          ``duplicate_experts`` :
          machines whose local fits look degenerate (:func:`local_fit_issues`);
        - ``warnings`` : sentences naming the likely cause.
    """
    K = result.params.n_experts
    machine = np.asarray(result.machine)
    M = int(machine.max()) + 1
    owner = np.argmax(result.local_mass, axis=1)
    counts = np.zeros((K, M), dtype=int)
    np.add.at(counts, (owner, machine), 1)
    total = float(result.local_objective.sum())
    share = np.array([result.local_objective[owner == k].sum() for k in range(K)])
    share = share / total if total > 0 else np.zeros(K)
    lam = np.array([result.local_mass[machine == m].sum() for m in range(M)])
    cost = np.array([result.local_objective[machine == m].sum() for m in range(M)]) / lam
    collapsed = np.flatnonzero(~mapped_one_to_one(owner, machine, K)).tolist()
    issues = dict(getattr(result, "local_issues", {}) or {})
    # a model is left out only on evidence of failure, never for being different
    evidence = {m for kind in FAILURE_EVIDENCE for m in issues.get(kind, {})}
    med, suspect, failed, hetero = _classify(cost, collapsed, evidence)
    implausible = list(getattr(result, "implausible", ()))
    notes = (_local_issue_notes(issues) + _machine_notes(cost, med, hetero, evidence,
                                                        implausible, collapsed)
             + _structure_notes(result, counts, collapsed))
    return {"counts": counts, "mass": result.expert_mass.copy(), "objective_share": share,
            "machine_cost": cost, "collapsed": collapsed, "heterogeneous": hetero,
            "failed": failed, "suspect": suspect, "implausible": implausible,
            **{kind: sorted(issues.get(kind, {})) for kind in FAILURE_EVIDENCE},
            "warnings": notes}


def _classify(cost, collapsed, evidence):
    """(median cost, suspect, failed, heterogeneous) machines from their
    transport costs per unit mass: costly is a poor optimum or a different
    population (the machine can tell); collapsed and costly with evidence of
    failure is failed."""
    M = len(cost)
    med = float(np.median(cost))
    costly = cost > FAILED_COST_FACTOR * med
    suspect = [m for m in range(M) if costly[m]]
    failed = [m for m in collapsed if costly[m] and m in evidence]
    hetero = [m for m in range(M) if M > 2 and (cost[m] > OUTLIER_FACTOR * max(med, 1e-300)
                                                or (m in collapsed and costly[m]
                                                    and m not in evidence))]
    return med, suspect, failed, hetero


#: what each kind of local-fit issue means, for the health's warnings
_ISSUE_TEXT = {
    "diverged_gates": "local gates that diverged (nearly separable shards: fit them with a "
                      "larger gate_penalty)",
    "collapsed_experts": "local experts whose variance collapsed",
    "starved_experts": "local experts their own gates give almost no weight (too many "
                       "experts for the shard)",
    "duplicate_experts": "pairs of local experts that describe the same data (a poor EM "
                         "optimum)",
}


def _local_issue_notes(issues) -> list:
    return [f"{what}: " + "; ".join(f"machine {m}: {why}" for m, why in issues[kind].items())
            for kind, what in _ISSUE_TEXT.items() if issues.get(kind)]


def _machine_notes(cost, med, hetero, evidence, implausible, collapsed) -> list:
    notes = []
    if implausible:
        notes.append(f"machine(s) {implausible} claim sample sizes out of line with the others' "
                     "or with their own covariate samples: their weight in the aggregate may be "
                     "forged (aggregate_messages(max_weight=...) caps any machine's weight)")
    if hetero:
        sound = [m for m in hetero if m not in evidence]
        notes.append(f"machine(s) {hetero} fit the aggregate far worse than the others "
                     f"(cost per unit mass {np.round(cost[hetero], 4).tolist()} vs median "
                     f"{med:.4g}): their shards look heterogeneous"
                     + (f"; the models of {sound} show no sign of a failed fit, so they look "
                        "like a different population and are kept (leave them out yourself "
                        "if they should not count)" if sound else "")
                     + (f"; {[m for m in hetero if m in evidence]} also show signs of a failed "
                        "local fit (above)" if len(sound) < len(hetero) else ""))
    if collapsed:
        notes.append(f"machine(s) {collapsed} map their experts onto fewer global experts "
                     "than they have: too many experts locally (or too few globally), or "
                     "local fits that found duplicate experts")
    return notes


def _structure_notes(result, counts, collapsed) -> list:
    """Warnings about the global experts and the support."""
    K = counts.shape[0]
    notes = []
    empty = [k for k in range(K) if counts[k].sum() == 0]
    if empty:
        notes.append(f"global expert(s) {empty} own no local expert: too many global experts "
                     "for what the machines found")
    crowded = [k for k in range(K) if counts[k].max() > 1]
    if crowded and not collapsed:
        notes.append(f"global expert(s) {crowded} own several experts of one machine: too "
                     "few global experts, or machines with extra experts")
    S = result.assignment.shape[0]
    need = SUPPORT_PER_GATE_PARAMETER * (result.params.n_features + 1) * (K - 1)
    if S < need:
        notes.append(f"the support has {S} points, fewer than {need} "
                     f"({SUPPORT_PER_GATE_PARAMETER} per free gate parameter): the gate "
                     "regression may be noisy; send larger covariate samples")
    return notes


def health_report(result) -> str:
    """Human-readable aggregation health report (see :func:`aggregation_health`).

    Parameters
    ----------
    result : AggregationResult
        The aggregation to judge.

    Returns
    -------
    str
        A table per machine and global expert, and the warnings, one per line.
    """
    h = aggregation_health(result)
    K, M = h["counts"].shape
    lines = [f"Aggregation ({result.method}): {M} machines, {len(result.machine)} local "
             f"experts -> {K} global experts; objective R = {result.objective:.6g} after "
             f"{result.n_iter} MM iterations (converged: {result.converged}).",
             "", "| global expert | local experts per machine | mass | share of R |",
             "|---|---|---|---|"]
    for k in range(K):
        per = " ".join(str(c) for c in h["counts"][k])
        lines.append(f"| {k} | {per} | {h['mass'][k]:.4g} | {h['objective_share'][k]:.3f} |")
    lines.append("")
    if h["warnings"]:
        lines += [f"WARNING: {w}." for w in h["warnings"]]
    else:
        lines.append("Healthy: every machine's experts map one-to-one onto the global experts.")
    # what the server left out or repaired on the way (robust=True, exclude_failed, ...)
    lines += [f"NOTE: {n}." for n in result.notes]
    return "\n".join(lines)

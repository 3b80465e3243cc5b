"""Diagnostics: label alignment, parameter errors and prediction metrics.

Functions over arrays and MoEParams; each documents its formula.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from ._params import MoEParams


def _check_same_shape(estimate: MoEParams, reference: MoEParams):
    if estimate.n_experts != reference.n_experts:
        raise ValueError(
            f"alignment needs the same number of experts; got {estimate.n_experts} and "
            f"{reference.n_experts}. Compare models with different K by "
            "fastmoe.transport_divergence instead.")
    if estimate.n_features != reference.n_features:
        raise ValueError(f"the models have {estimate.n_features} and {reference.n_features} "
                         "features; they must match.")


def alignment(estimate: MoEParams, reference: MoEParams) -> np.ndarray:
    """Permutation ``perm`` such that expert ``perm[k]`` of ``estimate`` matches
    expert k of ``reference``: the Hungarian method on the squared distance
    between expert coefficient vectors (intercept, slopes, variance)."""
    _check_same_shape(estimate, reference)
    a = np.column_stack([estimate.expert_aug, estimate.expert_var])
    b = np.column_stack([reference.expert_aug, reference.expert_var])
    cost = ((b[:, None, :] - a[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    return cols[np.argsort(rows)]


def align_to(estimate: MoEParams, reference: MoEParams) -> MoEParams:
    """``estimate`` with its experts reordered to match ``reference`` (and its
    gates re-referenced to the matched last expert)."""
    return estimate.permute(alignment(estimate, reference))


def parameter_rmse(estimate: MoEParams, reference: MoEParams) -> dict:
    """Root mean squared error per block after alignment:
    sqrt(mean((theta_hat - theta)^2)) over the gates (K, d+1), the experts
    (K, d+1) and the variances (K,)."""
    est = align_to(estimate, reference)

    def rmse(a, b):
        return float(np.sqrt(np.mean((a - b) ** 2)))

    return {
        "gates": rmse(est.gate_aug, reference.gate_aug),
        "experts": rmse(est.expert_aug, reference.expert_aug),
        "variances": rmse(est.expert_var, reference.expert_var),
    }


def stacked_mse(estimate: MoEParams, reference: MoEParams) -> float:
    """The authors' parameter MSE: mean over the stacked vector
    (expert coefficients, variances, gate coefficients) of the squared
    difference after alignment, ||theta_hat - theta||^2 / dim(theta)."""
    est = align_to(estimate, reference)
    a = np.concatenate([est.expert_aug.ravel(), est.expert_var, est.gate_aug[:-1].ravel()])
    b = np.concatenate([reference.expert_aug.ravel(), reference.expert_var,
                        reference.gate_aug[:-1].ravel()])
    return float(np.mean((a - b) ** 2))


def relative_prediction_error(y, y_pred) -> float:
    """sum (y - y_pred)^2 / sum y^2."""
    y, y_pred = _same_length(y, y_pred, "y", "y_pred")
    return float(np.sum((y - y_pred) ** 2) / np.sum(y**2))


def correlation(y, y_pred) -> float:
    """Pearson correlation of y and y_pred."""
    y, y_pred = _same_length(y, y_pred, "y", "y_pred")
    return float(np.corrcoef(y, y_pred)[0, 1])


def map_labels(params: MoEParams, X, y) -> np.ndarray:
    """Maximum a posteriori expert of each (x, y): argmax_k P(k | x, y)."""
    return np.argmax(params.e_step(X, y)[1], axis=1)


def _same_length(a, b, na, nb):
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} have different lengths: {a.size} and {b.size}.")
    return a, b


def clustering_scores(labels_true, labels_pred) -> dict:
    """Rand index, adjusted Rand index (scikit-learn) and clustering error:
    the share of points misclassified under the best one-to-one matching of
    predicted to true labels (Hungarian method on the confusion matrix)."""
    from sklearn.metrics import adjusted_rand_score, confusion_matrix, rand_score

    t = np.asarray(labels_true).ravel()
    p = np.asarray(labels_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"labels_true and labels_pred have different lengths: {t.size} and "
                         f"{p.size}.")
    cm = confusion_matrix(t, p)
    rows, cols = linear_sum_assignment(-cm)
    return {"rand": float(rand_score(t, p)), "ari": float(adjusted_rand_score(t, p)),
            "clustering_error": float(1.0 - cm[rows, cols].sum() / t.size)}


def model_metrics(params: MoEParams, X, y, *, truth: MoEParams | None = None,
                  labels=None) -> dict:
    """Every metric the authors report for one model on test data (X, y):
    log-likelihood, relative prediction error, correlation, and with the truth
    the parameter RMSE per block and the stacked MSE, with true labels the
    clustering scores of the MAP labels."""
    y_pred = params.predict_mean(X)
    out = {"loglik": params.log_likelihood(X, y),
           "rpe": relative_prediction_error(y, y_pred),
           "corr": correlation(y, y_pred)}
    if truth is not None:
        out.update({f"rmse_{k}": v for k, v in parameter_rmse(params, truth).items()})
        out["mse"] = stacked_mse(params, truth)
    if labels is not None:
        out.update(clustering_scores(labels, map_labels(params, X, y)))
    return out


#: a machine whose transport cost per unit of mass exceeds this multiple of
#: the median machine's is reported as heterogeneous
OUTLIER_FACTOR = 3.0
#: support points per free gate parameter below which the gate refit is flagged
SUPPORT_PER_GATE_PARAMETER = 10


def aggregation_health(result) -> dict:
    """Structured health of an :class:`~fastmoe.AggregationResult`.

    Each local expert l is owned by the global expert a_l that receives most
    of its mass. Returns

    - ``counts`` (K, M): local experts of machine m owned by global expert k
      (a healthy reduction of equal-K models owns about one per machine);
    - ``mass`` (K,) and ``objective_share`` (K,): mass received and share of
      the objective R of each global expert;
    - ``machine_cost`` (M,): each machine's transport cost per unit of mass;
    - ``collapsed`` : machines whose experts land on fewer distinct global
      experts than they have (min(K_m, K));
    - ``heterogeneous`` : machines whose cost per unit mass exceeds
      ``OUTLIER_FACTOR`` times the median machine's;
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
    k_m = np.bincount(machine, minlength=M)
    distinct = np.array([np.unique(owner[machine == m]).size for m in range(M)])
    collapsed = [m for m in range(M) if distinct[m] < min(k_m[m], K)]
    med = float(np.median(cost))
    hetero = [m for m in range(M) if M > 2 and cost[m] > OUTLIER_FACTOR * max(med, 1e-300)]
    notes = []
    if hetero:
        notes.append(f"machine(s) {hetero} fit the aggregate far worse than the others "
                     f"(cost per unit mass {np.round(cost[hetero], 4).tolist()} vs median "
                     f"{med:.4g}): their shards look heterogeneous (a different population "
                     "or a failed local fit); inspect them or drop them")
    if collapsed:
        notes.append(f"machine(s) {collapsed} map their experts onto fewer global experts "
                     "than they have: too many experts locally (or too few globally), or "
                     "local fits that found duplicate experts")
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
    return {"counts": counts, "mass": result.expert_mass.copy(), "objective_share": share,
            "machine_cost": cost, "collapsed": collapsed, "heterogeneous": hetero,
            "warnings": notes}


def health_report(result) -> str:
    """Human-readable aggregation health report (see :func:`aggregation_health`)."""
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
    return "\n".join(lines)

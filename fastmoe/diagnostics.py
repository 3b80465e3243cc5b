"""Diagnostics: label alignment, parameter errors and prediction metrics.

Functions over arrays and MoEParams; each documents its formula.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

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
OUTLIER_FACTOR = 5.0
#: a collapsed machine whose transport cost per unit mass exceeds this multiple
#: of the median is taken for a failed local fit. Measured: 5.6 times in
#: ``fastmoe demo`` (one of 4 machines), 3.2 times in the constructed case of
#: tests/test_distributed.py (a failed fit drags the aggregate, and so the
#: median, towards itself).
FAILED_COST_FACTOR = 2.0
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
    - ``failed`` : collapsed machines whose cost per unit mass exceeds
      ``FAILED_COST_FACTOR`` times the median machine's, taken for failed
      local fits (:func:`fastmoe.aggregate_messages` with ``exclude_failed``);
    - ``implausible`` : input indices of machines whose claimed sample size
      is out of line (``AggregationResult.implausible``);
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
    failed = [m for m in collapsed if cost[m] > FAILED_COST_FACTOR * med]
    notes = []
    implausible = list(getattr(result, "implausible", ()))
    if implausible:
        notes.append(f"machine(s) {implausible} claim sample sizes out of line with the others' "
                     "or with their own covariate samples: their weight in the aggregate may be "
                     "forged (aggregate_messages(max_weight=...) caps any machine's weight)")
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
            "failed": failed, "implausible": implausible, "warnings": notes}


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


# ----------------------------------------------------------------------------
# studies
# ----------------------------------------------------------------------------
ESTIMATORS = ("centralised", "ot-kl", "ot-w2", "aligned_average", "naive_average", "medoid")


@dataclass(frozen=True)
class StudyResult:
    """Rows of a study (one per N, M, repetition and estimator) and the fitted
    log-log slopes of parameter error against N."""

    rows: list
    slopes: dict
    settings: dict

    def summary(self) -> list:
        """Mean and standard deviation per (N, M, estimator) of every metric."""
        keys = sorted({(r["n"], r["n_machines"], r["estimator"]) for r in self.rows},
                      key=lambda k: (k[0], k[1], ESTIMATORS.index(k[2])))
        out = []
        for n, m, est in keys:
            sel = [r for r in self.rows if (r["n"], r["n_machines"], r["estimator"]) ==
                   (n, m, est)]
            entry = {"n": n, "n_machines": m, "estimator": est, "repetitions": len(sel)}
            for metric in STUDY_METRICS:
                vals = np.array([r[metric] for r in sel], dtype=float)
                entry[metric] = float(vals.mean())
                entry[metric + "_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            out.append(entry)
        return out

    def to_markdown(self) -> str:
        head = ["N", "M", "estimator", "reps", "param. RMSE", "MSE", "test loglik",
                "rel. pred. error", "ARI", "learning time (s)"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        def ms(e, k, fmt):
            return f"{e[k]:{fmt}} ± {e[k + '_sd']:{fmt}}"

        for e in self.summary():
            lines.append(f"| {e['n']} | {e['n_machines']} | {e['estimator']} | "
                         f"{e['repetitions']} | {ms(e, 'rmse', '.4f')} | "
                         f"{ms(e, 'mse', '.5f')} | {ms(e, 'loglik', '.1f')} | "
                         f"{ms(e, 'rpe', '.4f')} | {ms(e, 'ari', '.3f')} | "
                         f"{ms(e, 'learning_time', '.2f')} |")
        if self.slopes:
            lines += ["", "| estimator | M | slope of log RMSE on log N | 95% CI |",
                      "|---|---|---|---|"]
            for (est, m), (b, lo, hi) in sorted(self.slopes.items()):
                lines.append(f"| {est} | {m} | {b:.3f} | [{lo:.3f}, {hi:.3f}] |")
        return "\n".join(lines)

    def to_csv(self, path) -> None:
        """One row per fit."""
        cols = ["n", "n_machines", "repetition", "estimator", *STUDY_METRICS]
        with open(path, "w") as f:
            f.write(",".join(cols) + "\n")
            for r in self.rows:
                f.write(",".join(str(r[c]) for c in cols) + "\n")

    def plot(self, prefix) -> list:
        """PNG plots (error vs N, learning time vs M) when matplotlib is
        installed; returns the paths written (none without matplotlib)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return []
        paths = []
        summ = self.summary()
        fig, ax = plt.subplots(figsize=(6, 4))
        for est in ESTIMATORS:
            for m in sorted({e["n_machines"] for e in summ}):
                pts = [(e["n"], e["rmse"]) for e in summ
                       if e["estimator"] == est and e["n_machines"] == m]
                if len(pts) > 1:
                    ax.loglog(*zip(*pts), marker="o", label=f"{est}, M={m}")
        ax.set_xlabel("N")
        ax.set_ylabel("parameter RMSE")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(f"{prefix}_error_vs_n.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(6, 4))
        for est in ESTIMATORS:
            pts = sorted({(e["n_machines"], e["learning_time"]) for e in summ
                          if e["estimator"] == est})
            if pts:
                ax.plot(*zip(*pts), marker="o", label=est)
        ax.set_xlabel("M (machines)")
        ax.set_ylabel("learning time (s)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(f"{prefix}_time_vs_m.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
        return paths


#: default size of the server's support in a study (points, all machines)
SUPPORT_TOTAL = 20000

STUDY_METRICS = ("rmse", "mse", "loglik", "rpe", "corr", "ari", "clustering_error",
                 "learning_time")


def _study_row(n, m, r, name, params, learning_time, Xte, yte, lte, truth) -> dict:
    row = {"n": n, "n_machines": m, "repetition": r, "estimator": name,
           "learning_time": learning_time}
    met = model_metrics(params, Xte, yte, labels=lte)
    row.update({k: met[k] for k in ("loglik", "rpe", "corr", "ari", "clustering_error")})
    row["mse"] = stacked_mse(params, truth)
    row["rmse"] = float(np.sqrt(row["mse"]))
    return row


def loglog_slope(n, err) -> tuple:
    """OLS slope of log(err) on log(n) with its 95% confidence interval."""
    from scipy import stats

    x, y = np.log(np.asarray(n, float)), np.log(np.asarray(err, float))
    fit = stats.linregress(x, y)
    t = stats.t.ppf(0.975, max(len(x) - 2, 1))
    return float(fit.slope), float(fit.slope - t * fit.stderr), float(fit.slope + t * fit.stderr)


def consistency_study(n_grid, n_machines=(4,), *, n_features: int = 3, n_experts: int = 3,
                      design: str = "separated", repetitions: int = 3,
                      estimators=("centralised", "ot-kl", "aligned_average"),
                      n_test: int = 10000, n_init: int = 2, n_support: int | None = None,
                      random_state=0, progress=None) -> StudyResult:
    """Parameter error of aggregated, centralised and baseline estimators over
    a grid of N (and M) on simulated data, repeated with different seeds.

    For each N, repetition r and M: draw N training and ``n_test`` test rows
    from the design (seeded by ``random_state`` and r; the same true model
    for every N within a repetition), split the training rows into M shards,
    fit the local models once and build every requested estimator from them;
    the centralised fit is made once per (N, r). Then fit the log-log slope
    of the parameter RMSE (sqrt of the authors' stacked MSE) against N per
    estimator and M, with a 95% confidence interval; about -1/2 is expected.

    ``n_support`` covariate rows per machine (default: 20000 / M, so that
    the server's support has about 20000 points whatever M).

    Metrics per fit: rmse, mse, test loglik, rpe, corr, ari, clustering_error,
    learning_time (centralised: its fit time; aggregated and baselines: the
    slowest local fit plus the reduction).
    """
    import time as _time

    from . import aggregate, aligned_average, fit_moe, medoid, naive_average
    from .datasets import authors_truth, make_moe_regression
    from .distributed import fit_local

    unknown = set(estimators) - set(ESTIMATORS)
    if unknown:
        raise ValueError(f"unknown estimators {sorted(unknown)}; choose from {ESTIMATORS}.")
    n_grid = [int(n) for n in n_grid]
    rows = []
    for r in range(repetitions):
        seed = np.random.SeedSequence([int(random_state), r])
        truth_rng, *_ = [np.random.default_rng(s) for s in seed.spawn(1)]
        if design == "authors":
            truth = authors_truth(n_features, n_experts, truth_rng)
        else:
            truth = make_moe_regression(2, n_features, n_experts, random_state=truth_rng)[2]
        for n in n_grid:
            data_rng = np.random.default_rng([int(random_state), r, n])
            X, y, _, labels = make_moe_regression(n + n_test, n_features, n_experts,
                                                  design=design, params=truth,
                                                  random_state=data_rng)
            Xtr, ytr, Xte, yte, lte = X[:n], y[:n], X[n:], y[n:], labels[n:]

            test = (Xte, yte, lte, truth)

            def record(name, m, params, learning_time, n=n, r=r, test=test):
                rows.append(_study_row(n, m, r, name, params, learning_time, *test))
                if progress is not None:
                    progress(rows[-1])

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if "centralised" in estimators:
                    t0 = _time.perf_counter()
                    fit = fit_moe(Xtr, ytr, n_experts, n_init=n_init, random_state=data_rng)
                    record("centralised", 1, fit.params, _time.perf_counter() - t0)
                for m in n_machines:
                    order = data_rng.permutation(n)
                    per_machine = n_support or max(100, SUPPORT_TOTAL // m)
                    msgs = [fit_local(Xtr[idx], ytr[idx], n_experts, n_support=per_machine,
                                      n_init=n_init, random_state=data_rng)
                            for idx in np.array_split(order, m)]
                    local = [g.params for g in msgs]
                    sizes = [g.n for g in msgs]
                    Xs = np.vstack([g.support for g in msgs])
                    slowest = max(g.fit_time for g in msgs)
                    for est in estimators:
                        if est == "centralised":
                            continue
                        t0 = _time.perf_counter()
                        if est.startswith("ot-"):
                            res = aggregate(local, sample_sizes=sizes, X_support=Xs,
                                            cost=est[3:], random_state=data_rng)
                        else:
                            fn = {"aligned_average": aligned_average, "medoid": medoid,
                                  "naive_average": naive_average}[est]
                            res = fn(local, sample_sizes=sizes, X_support=Xs)
                        record(est, m, res.params, slowest + _time.perf_counter() - t0)
    slopes = {}
    if len(n_grid) > 1:
        for est in estimators:
            for m in ([1] if est == "centralised" else n_machines):
                sel = [row for row in rows if row["estimator"] == est
                       and row["n_machines"] == m]
                slopes[(est, m)] = loglog_slope([row["n"] for row in sel],
                                                [row["rmse"] for row in sel])
    settings = dict(n_grid=n_grid, n_machines=list(n_machines), n_features=n_features,
                    n_experts=n_experts, design=design, repetitions=repetitions,
                    estimators=list(estimators), n_test=n_test, n_init=n_init,
                    n_support=n_support, random_state=random_state)
    return StudyResult(rows, slopes, settings)


def authors_comparison(repetitions: int = 2, *, n_machines=(4, 16, 64), n: int = 90000,
                       n_test: int = 10000, random_state=0, progress=None) -> StudyResult:
    """The authors' comparison (method.md section 5): K=5, d=20, covariates
    from a 5-component Gaussian mixture, N = 100k (90k train, 10k test),
    M in {4, 16, 64}; centralised, OT-KL, OT-W2, aligned average, naive
    average and medoid; three EM starts for every fit (the library's default
    for local fits: with two, a poor local optimum at M=16 spoiled the OT
    aggregates in a trial run)."""
    return consistency_study([n], n_machines, n_features=20, n_experts=5, design="authors",
                             repetitions=repetitions, estimators=ESTIMATORS, n_test=n_test,
                             n_init=3,
                             random_state=random_state, progress=progress)

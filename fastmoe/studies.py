"""Studies: the consistency study (parameter error against N, M) and the
authors' comparison of estimators, on simulated data.
"""

from __future__ import annotations

import time as _time
import warnings
from dataclasses import dataclass

import numpy as np

from ._em import fit_moe
from .aggregation import aggregate
from .baselines import aligned_average, fedavg, greedy_merge, medoid, naive_average
from .datasets import authors_truth, make_moe_regression
from .distributed import DistributedMoERegressor
from .machine import fit_local
from .metrics import model_metrics, stacked_mse

__all__ = ["StudyResult", "consistency_study", "authors_comparison", "loglog_slope"]

ESTIMATORS = ("centralised", "ot-kl", "ot-w2", "aligned_average", "naive_average", "medoid",
              "greedy_merge", "fedavg", "distributed")
#: FedAvg's rounds and local EM iterations per round in the studies
FEDAVG_ROUNDS, FEDAVG_LOCAL_ITER = 10, 5


@dataclass(frozen=True)
class StudyResult:
    """Rows of a study (one per N, M, repetition and estimator) and the fitted
    log-log slopes of parameter error against N.

    Attributes
    ----------
    rows : list of dict
        One entry per fit: ``n``, ``n_machines``, ``repetition``,
        ``estimator`` and every metric of ``STUDY_METRICS``.
    slopes : dict
        ``(estimator, M) -> (slope, low, high)``: the OLS slope of log RMSE
        on log N with its 95% confidence interval.
    settings : dict
        The arguments the study ran with.
    """

    rows: list
    slopes: dict
    settings: dict

    def summary(self) -> list:
        """Mean and standard deviation per (N, M, estimator) of every metric.

        Returns
        -------
        list of dict
            One entry per (N, M, estimator) in the order of the grid and of
            ``ESTIMATORS``: ``n``, ``n_machines``, ``estimator``,
            ``repetitions``, and for every metric its mean and, under
            ``metric + "_sd"``, its standard deviation over repetitions (0 for
            a single repetition).
        """
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
        """The summary and the slopes as Markdown tables.

        Returns
        -------
        str
            A table of mean ± standard deviation per (N, M, estimator), then,
            when slopes were fitted, a table of the slopes with their 95%
            confidence intervals.
        """
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
        """Write one row per fit as CSV (written whole or not at all).

        Parameters
        ----------
        path : str or path-like
            The file to write; an existing file is replaced only once the new
            one is complete.
        """
        from .io import write_bytes

        cols = ["n", "n_machines", "repetition", "estimator", *STUDY_METRICS]
        lines = [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in self.rows]
        write_bytes(path, ("\n".join(lines) + "\n").encode(), "study table")

    def plot(self, prefix) -> list:
        """Write the study's two figures when matplotlib is installed.

        Draws on figures of its own, without pyplot: the backend is left alone.

        Parameters
        ----------
        prefix : str
            The figures are written to ``{prefix}_error_vs_n.png`` and
            ``{prefix}_time_vs_m.png`` (:func:`fastmoe.plotting.plot_study`).

        Returns
        -------
        list of str
            The paths written; empty without matplotlib.
        """
        try:
            from matplotlib.figure import Figure

            from .plotting import plot_study
        except ImportError:
            return []
        from .io import atomic_path

        paths = []
        for kind, name in (("error", "error_vs_n"), ("time", "time_vs_m")):
            fig = Figure(figsize=(6, 4))
            plot_study(self, kind, ax=fig.add_subplot())
            fig.tight_layout()
            paths.append(f"{prefix}_{name}.png")
            with atomic_path(paths[-1], "figure") as tmp:
                fig.savefig(tmp, dpi=120)
        return paths


#: the one-shot baselines a study builds from its local fits
BASELINES = {"aligned_average": aligned_average, "medoid": medoid,
             "naive_average": naive_average, "greedy_merge": greedy_merge}

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
    """OLS slope of log(err) on log(n) with its 95% confidence interval.

    Parameters
    ----------
    n : array-like of shape (n_points,)
        Sample sizes, positive.
    err : array-like of shape (n_points,)
        Errors at those sizes, positive.

    Returns
    -------
    tuple of float
        ``(slope, low, high)``: the slope and its 95% confidence interval
        (Student's t with ``n_points - 2`` degrees of freedom).
    """
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

    "distributed" is :class:`fastmoe.DistributedMoERegressor` with its
    defaults on the same shards (serial backend; it makes its own local fits,
    with its own starts, and refines on small shards: ``refine_rounds``);
    the others share the study's local fits.

    Metrics per fit: rmse, mse, test loglik, rpe, corr, ari, clustering_error,
    learning_time (centralised: its fit time; aggregated and baselines: the
    slowest local fit plus the reduction; "distributed": its
    ``learning_time_``).

    Parameters
    ----------
    n_grid : sequence of int
        Training sizes N.
    n_machines : sequence of int, default=(4,)
        Numbers of machines M.
    n_features : int, default=3
        Covariates d.
    n_experts : int, default=3
        Experts K of the truth and of every fit.
    design : {"separated", "authors"}, default="separated"
        The simulated design: :func:`fastmoe.make_moe_regression`'s, or the
        authors' (covariates from a 5-component Gaussian mixture).
    repetitions : int, default=3
        Independent repetitions (a new truth each).
    estimators : sequence of str, default=("centralised", "ot-kl", "aligned_average")
        Names from ``ESTIMATORS``.
    n_test : int, default=10000
        Test rows per (N, repetition).
    n_init : int, default=2
        EM starts of every local and centralised fit.
    n_support : int, optional
        Support points per machine; default ``20000 / M``.
    random_state : int, default=0
        Seed of the whole study.
    progress : callable, optional
        Called with each row as it is made.

    Returns
    -------
    StudyResult
        The rows, the fitted slopes and the settings.
    """
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
                    seeds = (int(random_state), r, n, m)
                    for est, params, learning_time in _split_fits(
                            Xtr, ytr, m, n_experts, estimators, n_init, n_support, data_rng,
                            seeds):
                        record(est, m, params, learning_time)
    slopes = _slopes(rows, estimators, n_machines) if len(n_grid) > 1 else {}
    settings = dict(n_grid=n_grid, n_machines=list(n_machines), n_features=n_features,
                    n_experts=n_experts, design=design, repetitions=repetitions,
                    estimators=list(estimators), n_test=n_test, n_init=n_init,
                    n_support=n_support, random_state=random_state)
    return StudyResult(rows, slopes, settings)


def _split_fits(Xtr, ytr, m, n_experts, estimators, n_init, n_support, rng, seeds):
    """Split the training rows over m machines, fit the local models once and
    build every requested estimator but the centralised one from them:
    yields (name, params, learning time). ``rng`` draws the split, the local
    fits and the reductions in turn; FedAvg and the distributed estimator
    draw from streams of their own (``seeds``), so the others' draws do not
    depend on whether they run."""
    order = rng.permutation(len(ytr))
    per_machine = n_support or max(100, SUPPORT_TOTAL // m)
    shards = [(Xtr[idx], ytr[idx]) for idx in np.array_split(order, m)]
    msgs = [fit_local(Xs_, ys_, n_experts, n_support=per_machine, n_init=n_init,
                      random_state=rng) for Xs_, ys_ in shards]
    local = [g.params for g in msgs]
    sizes = [g.n for g in msgs]
    Xs = np.vstack([g.support for g in msgs])
    slowest = max(g.fit_time for g in msgs)
    for est in estimators:
        t0 = _time.perf_counter()
        if est == "centralised":
            continue
        if est == "distributed":  # the estimator with its defaults
            dist = DistributedMoERegressor(n_experts, backend="serial", n_support=per_machine,
                                           random_state=np.random.default_rng([*seeds, 1]))
            dist.fit_shards(shards)
            yield est, dist.params_, dist.learning_time_
        elif est == "fedavg":  # rounds over the shards: its own time
            res = fedavg(shards, n_experts, rounds=FEDAVG_ROUNDS, local_iter=FEDAVG_LOCAL_ITER,
                         n_init=n_init, random_state=np.random.default_rng(list(seeds)))
            yield est, res.params, res.learning_time
        else:
            if est.startswith("ot-"):
                res = aggregate(local, sample_sizes=sizes, X_support=Xs, cost=est[3:],
                                random_state=rng)
            else:
                res = BASELINES[est](local, sample_sizes=sizes, X_support=Xs)
            yield est, res.params, slowest + _time.perf_counter() - t0


def _slopes(rows, estimators, n_machines) -> dict:
    """(estimator, M) -> the log-log slope of parameter RMSE on N."""
    slopes = {}
    for est in estimators:
        for m in ([1] if est == "centralised" else n_machines):
            sel = [row for row in rows if row["estimator"] == est and row["n_machines"] == m]
            slopes[(est, m)] = loglog_slope([row["n"] for row in sel],
                                            [row["rmse"] for row in sel])
    return slopes


def authors_comparison(repetitions: int = 2, *, n_machines=(4, 16, 64), n: int = 90000,
                       n_test: int = 10000, random_state=0, progress=None) -> StudyResult:
    """The authors' comparison (docs/method.rst, section 7): K=5, d=20, covariates
    from a 5-component Gaussian mixture, N = 100k (90k train, 10k test),
    M in {4, 16, 64}; centralised, OT-KL, OT-W2, aligned average, naive
    average, medoid, greedy merging and FedAvg (10 rounds of 5 local EM
    iterations); three EM starts for every fit (the library's default
    for local fits: with two, a poor local optimum at M=16 spoiled the OT
    aggregates in a trial run).

    Parameters
    ----------
    repetitions : int, default=2
        Independent repetitions.
    n_machines : sequence of int, default=(4, 16, 64)
        Numbers of machines M.
    n : int, default=90000
        Training rows.
    n_test : int, default=10000
        Test rows.
    random_state : int, default=0
        Seed of the whole comparison.
    progress : callable, optional
        Called with each row as it is made.

    Returns
    -------
    StudyResult
        One row per (M, repetition, estimator); no slopes (one N).
    """
    return consistency_study([n], n_machines, n_features=20, n_experts=5, design="authors",
                             repetitions=repetitions, estimators=ESTIMATORS, n_test=n_test,
                             n_init=3,
                             random_state=random_state, progress=progress)

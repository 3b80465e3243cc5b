"""Plots of fitted models, aggregations and studies (matplotlib, the ``plot`` extra).

Each function draws on the Axes it is given, or on a new figure's Axes from
:func:`matplotlib.pyplot.subplots`, and returns that Axes; none changes the
matplotlib backend or any global setting. A ``model`` is a
:class:`~fastmoe.MoEParams`, a fitted estimator (its ``params_``) or a
:class:`~fastmoe.MoEFit` (its ``params``).
"""

from __future__ import annotations

import numpy as np

try:
    import matplotlib  # noqa: F401
except ImportError as exc:  # pragma: no cover - the plot extra is not installed
    raise ImportError("fastmoe.plotting needs matplotlib: pip install 'fastmoe[plot]'") from exc

from ._params import MoEParams
from ._validation import check_choice, check_X

__all__ = ["plot_gates", "plot_health", "plot_prediction", "plot_study"]


def _params_of(model) -> MoEParams:
    for params in (model, getattr(model, "params_", None), getattr(model, "params", None)):
        if isinstance(params, MoEParams):
            return params
    raise TypeError(f"expected a MoEParams, a fitted estimator or a MoEFit; got "
                    f"{type(model).__name__}.")


def _axes(ax):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    # constrained layout: tick labels, axis labels and colour bars stay inside
    # the figure at its default size
    return plt.subplots(figsize=(6, 4), layout="constrained")[1]


def _feature_grid(params, X, feature, n_points):
    """Rows along covariate ``feature`` over its range in X, the other
    covariates at their means in X."""
    X = check_X(X)
    if X.shape[1] != params.n_features:
        raise ValueError(f"X has {X.shape[1]} covariates but the model expects "
                         f"{params.n_features}.")
    if not (isinstance(feature, (int, np.integer)) and 0 <= feature < X.shape[1]):
        raise ValueError(f"feature must be a covariate index in [0, {X.shape[1]}); got "
                         f"{feature!r}.")
    grid = np.tile(X.mean(axis=0), (n_points, 1))
    grid[:, feature] = np.linspace(X[:, feature].min(), X[:, feature].max(), n_points)
    return X, grid


def _feature_label(X, feature):
    return f"x{feature}" + (" (other covariates at their means)" if X.shape[1] > 1 else "")


def plot_gates(model, X, feature=0, *, others="mean", n_points=200, ax=None):
    """Gate probabilities pi_k(x) along one covariate.

    Parameters
    ----------
    model : MoEParams, fitted estimator or MoEFit
        The model whose gates are drawn.
    X : array-like of shape (n, d)
        Covariates: their range along ``feature`` and their means.
    feature : int, default=0
        Index of the covariate on the horizontal axis.
    others : {"mean", "data"}, default="mean"
        "mean": a line per expert along ``feature`` with the other covariates
        at their means; "data": the gate probabilities of the rows of X
        themselves, one point per row and expert.
    n_points : int, default=200
        Points of the line per expert (``others="mean"``).
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure's by default.

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.
    """
    params = _params_of(model)
    check_choice(others, "others", ("mean", "data"))
    X, grid = _feature_grid(params, X, feature, n_points)
    ax = _axes(ax)
    if others == "mean":
        prob = params.gate_proba(grid)
        for k in range(params.n_experts):
            ax.plot(grid[:, feature], prob[:, k], label=f"expert {k}")
        ax.set_xlabel(_feature_label(X, feature))
    else:
        prob = params.gate_proba(X)
        for k in range(params.n_experts):
            ax.scatter(X[:, feature], prob[:, k], s=4, alpha=0.5, label=f"expert {k}")
        ax.set_xlabel(f"x{feature}")
    ax.set_ylabel("gate probability")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return ax


def plot_prediction(model, X, y, feature=0, level=0.9, *, n_points=200, ax=None):
    """The data, each expert's regression line, the predictive mean and its
    equal-tailed predictive interval of probability ``level`` along one covariate.

    Parameters
    ----------
    model : MoEParams, fitted estimator or MoEFit
        The model whose predictions are drawn.
    X : array-like of shape (n, d)
        Covariates of the points drawn.
    y : array-like of shape (n,)
        Responses of the points drawn.
    feature : int, default=0
        Index of the covariate on the horizontal axis; the lines have the
        other covariates at their means in X, the points are the rows as they
        are.
    level : float, default=0.9
        The band holds this probability (0.9: the 90% predictive interval).
    n_points : int, default=200
        Points of each line.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure's by default.

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.
    """
    from ._validation import check_y

    params = _params_of(model)
    X, grid = _feature_grid(params, X, feature, n_points)
    y = check_y(y, X.shape[0])
    t = grid[:, feature]
    ax = _axes(ax)
    ax.scatter(X[:, feature], y, s=3, alpha=0.3, color="0.5", label="data")
    lines = params.expert_mean(grid)
    for k in range(params.n_experts):
        ax.plot(t, lines[:, k], lw=1, ls="--", label=f"expert {k}")
    bounds = params.predict_interval(grid, level)
    ax.fill_between(t, bounds[:, 0], bounds[:, 1], alpha=0.25,
                    label=f"{100 * level:g}% predictive interval")
    ax.plot(t, params.predict_mean(grid), color="k", lw=2, label="E[y | x]")
    ax.set_xlabel(_feature_label(X, feature))
    ax.set_ylabel("y")
    ax.legend(fontsize=7)
    return ax


def plot_health(result, *, ax=None):
    """Which machines' experts went to which global expert, and what each
    machine's models cost: an image of machines by global experts.

    Cell (m, k) is shaded by the share of machine m's mass that went to
    global expert k (the colour bar). The number written in a cell is how
    many of machine m's local experts global expert k owns (receives most of
    their mass); an empty cell owns none. A healthy reduction of equal-K
    models writes a 1 in one cell of each row and each column (a
    permutation); a 2 means two of the machine's experts merged into one
    global expert (the health report calls the machine collapsed). Each row
    is labelled with the machine's index and its transport cost per unit
    mass (how far its models are from the aggregate; compare it with the
    other rows'), and "(!)" marks a machine the health report flags
    (collapsed, heterogeneous, failed, or a degenerate local fit: see
    :func:`fastmoe.diagnostics.aggregation_health`).

    Parameters
    ----------
    result : AggregationResult
        The result of :func:`fastmoe.aggregate`, :func:`fastmoe.aggregate_messages`
        or a baseline (``DistributedMoERegressor.aggregation_``).
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure's by default.

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.
    """
    h = result.health()
    counts = h["counts"].T  # (M, K)
    M, K = counts.shape
    machine = np.asarray(result.machine)
    share = np.array([result.local_mass[machine == m].sum(axis=0) for m in range(M)])
    share /= np.maximum(share.sum(axis=1, keepdims=True), 1e-300)
    ax = _axes(ax)
    image = ax.imshow(share, aspect="auto", vmin=0.0, vmax=1.0, cmap="Blues")
    for m in range(M):
        for k in range(K):
            if counts[m, k]:
                ax.text(k, m, str(counts[m, k]), ha="center", va="center", fontsize=7,
                        color="w" if share[m, k] > 0.6 else "k")
    flagged = {m for key in ("collapsed", "heterogeneous", "failed", "diverged_gates",
                             "collapsed_experts", "starved_experts") for m in h[key]}
    ax.set_yticks(range(M), [f"{m}{' (!)' if m in flagged else ''}  cost "
                             f"{h['machine_cost'][m]:.3g}" for m in range(M)], fontsize=7)
    ax.set_xticks(range(K), [str(k) for k in range(K)])
    ax.set_xlabel("global expert")
    ax.set_ylabel("machine, transport cost per unit mass")
    ax.set_title(f"{result.method}: share of each machine's mass", fontsize=9)
    ax.figure.colorbar(image, ax=ax, label="share of the machine's mass")
    return ax


def plot_study(study_result, kind="error", *, ax=None):
    """A study's parameter error against N or learning time against M.

    Parameters
    ----------
    study_result : StudyResult
        The result of :func:`fastmoe.diagnostics.consistency_study` or
        :func:`fastmoe.diagnostics.authors_comparison`.
    kind : {"error", "time"}, default="error"
        "error": the mean parameter RMSE against N on log-log axes, one line
        per estimator and M, with the fitted log-log slope as a dotted line
        and in the legend; "time": the mean learning time against M at the
        largest N, one line per estimator.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure's by default.

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.
    """
    check_choice(kind, "kind", ("error", "time"))
    summary = study_result.summary()
    ax = _axes(ax)
    present = list(dict.fromkeys(s["estimator"] for s in summary))  # the summary's order
    if kind == "error":
        for est in present:
            for m in sorted({s["n_machines"] for s in summary}):
                pts = sorted((s["n"], s["rmse"]) for s in summary
                             if s["estimator"] == est and s["n_machines"] == m)
                if not pts:
                    continue
                n, err = map(np.asarray, zip(*pts))
                label = f"{est}, M={m}"
                slope = study_result.slopes.get((est, m))
                (line,) = ax.loglog(n, err, marker="o", label=label)
                if slope is not None and len(n) > 1:
                    b = slope[0]
                    a = np.mean(np.log(err)) - b * np.mean(np.log(n))
                    ax.loglog(n, np.exp(a + b * np.log(n)), ls=":", color=line.get_color())
                    line.set_label(f"{label} (slope {b:.2f})")
        ns = sorted({s["n"] for s in summary})
        ax.set_xticks(ns, [f"{n:,}" for n in ns])  # the study's N, not log-axis minor labels
        ax.set_xticks([], minor=True)
        ax.set_xlabel("N (training rows)")
        ax.set_ylabel("parameter RMSE")
    else:
        n = max(s["n"] for s in summary)
        for est in present:
            pts = sorted((s["n_machines"], s["learning_time"]) for s in summary
                         if s["estimator"] == est and s["n"] == n)
            ax.plot(*zip(*pts), marker="o", label=est)
        ms = sorted({s["n_machines"] for s in summary if s["n"] == n})
        ax.set_xticks(ms, [str(m) for m in ms])  # the study's M, whole machines
        ax.set_xticks([], minor=True)
        ax.set_xlabel(f"M (machines), N={n}")
        ax.set_ylabel("learning time (s)")
    ax.legend(fontsize=7)
    return ax

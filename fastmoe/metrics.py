"""Metrics: label alignment, parameter errors, prediction and clustering
scores. Functions over arrays and MoEParams; each documents its formula.
"""

from __future__ import annotations

import numpy as np

from ._params import MoEParams

__all__ = ["align_to", "parameter_rmse", "stacked_mse", "relative_prediction_error",
           "clustering_scores", "model_metrics"]


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
    from scipy.optimize import linear_sum_assignment  # here: the engine imports no scipy

    rows, cols = linear_sum_assignment(cost)
    return cols[np.argsort(rows)]


def align_to(estimate: MoEParams, reference: MoEParams) -> MoEParams:
    """``estimate`` with its experts reordered to match ``reference``.

    The gates are re-referenced to the expert matched to the reference's last
    one.

    Parameters
    ----------
    estimate : MoEParams
        The model to reorder.
    reference : MoEParams
        The model whose expert order is wanted (same K and d).

    Returns
    -------
    MoEParams
        ``estimate`` with its experts in the matched order.
    """
    return estimate.permute(alignment(estimate, reference))


def parameter_rmse(estimate: MoEParams, reference: MoEParams) -> dict:
    """Root mean squared error per block of parameters, after alignment.

    ``sqrt(mean((theta_hat - theta)^2))`` over the gates (K, d+1), the
    experts (K, d+1) and the variances (K,).

    Parameters
    ----------
    estimate : MoEParams
        The estimated model.
    reference : MoEParams
        The reference (true) model, with the same K and d.

    Returns
    -------
    dict
        ``"gates"``, ``"experts"`` and ``"variances"``: the RMSE of each block.
    """
    est = align_to(estimate, reference)

    def rmse(a, b):
        return float(np.sqrt(np.mean((a - b) ** 2)))

    return {
        "gates": rmse(est.gate_aug, reference.gate_aug),
        "experts": rmse(est.expert_aug, reference.expert_aug),
        "variances": rmse(est.expert_var, reference.expert_var),
    }


def stacked_mse(estimate: MoEParams, reference: MoEParams) -> float:
    """The authors' parameter MSE, after alignment.

    The mean over the stacked vector (expert coefficients, variances, gate
    coefficients) of the squared difference, ``||theta_hat - theta||^2 /
    dim(theta)``.

    Parameters
    ----------
    estimate : MoEParams
        The estimated model.
    reference : MoEParams
        The reference (true) model, with the same K and d.

    Returns
    -------
    float
        The mean squared difference.
    """
    est = align_to(estimate, reference)
    a = np.concatenate([est.expert_aug.ravel(), est.expert_var, est.gate_aug[:-1].ravel()])
    b = np.concatenate([reference.expert_aug.ravel(), reference.expert_var,
                        reference.gate_aug[:-1].ravel()])
    return float(np.mean((a - b) ** 2))


def relative_prediction_error(y, y_pred) -> float:
    """The relative prediction error ``sum (y - y_pred)^2 / sum y^2``.

    Parameters
    ----------
    y : array-like of shape (n,)
        The responses.
    y_pred : array-like of shape (n,)
        The predictions.

    Returns
    -------
    float
        The relative error (0 for a perfect prediction).
    """
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
    """Rand index, adjusted Rand index and clustering error of a labelling.

    The clustering error is the share of points misclassified under the best
    one-to-one matching of predicted to true labels (the Hungarian method on
    the confusion matrix); the Rand indices are scikit-learn's.

    Parameters
    ----------
    labels_true : array-like of int, shape (n,)
        The true labels.
    labels_pred : array-like of int, shape (n,)
        The predicted labels.

    Returns
    -------
    dict
        ``"rand"`` (the Rand index), ``"ari"`` (the adjusted Rand index) and
        ``"clustering_error"``.
    """
    from sklearn.metrics import adjusted_rand_score, confusion_matrix, rand_score

    t = np.asarray(labels_true).ravel()
    p = np.asarray(labels_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"labels_true and labels_pred have different lengths: {t.size} and "
                         f"{p.size}.")
    cm = confusion_matrix(t, p)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-cm)
    return {"rand": float(rand_score(t, p)), "ari": float(adjusted_rand_score(t, p)),
            "clustering_error": float(1.0 - cm[rows, cols].sum() / t.size)}


def model_metrics(params: MoEParams, X, y, *, truth: MoEParams | None = None,
                  labels=None) -> dict:
    """Every metric the authors report for one model on test data.

    Parameters
    ----------
    params : MoEParams
        The fitted model.
    X : ndarray of shape (n, d)
        Test covariates.
    y : ndarray of shape (n,)
        Test responses.
    truth : MoEParams, optional
        The true model: adds the parameter RMSE per block and the stacked MSE.
    labels : array-like of int, shape (n,), optional
        The true expert of each row: adds the clustering scores of the MAP
        labels.

    Returns
    -------
    dict
        The log-likelihood per row, the relative prediction error and the
        correlation, and the metrics that ``truth`` and ``labels`` add.
    """
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

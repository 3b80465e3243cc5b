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

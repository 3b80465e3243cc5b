"""Known answers from the authors' published code run under GNU Octave
(../shared/data/reference_octave_substitute, README there); skipped when absent."""

import numpy as np
import pytest
from conftest import reference

from fastmoe import MoEParams, fit_moe

N_TRAIN = 90000


def _train(prefix):
    return reference(f"{prefix}_X")[:N_TRAIN], reference(f"{prefix}_Y")[:N_TRAIN]


def _truth(prefix):
    return MoEParams.from_aug(reference(f"{prefix}_true_gates").T,
                              reference(f"{prefix}_true_experts").T,
                              reference(f"{prefix}_true_variances"))


@pytest.mark.slow
def test_centralised_fit_A_at_least_the_authors():
    X, y = _train("A")
    theirs = MoEParams.from_aug(reference("A_global_gates").T, reference("A_global_experts").T,
                                reference("A_global_variances"))
    fit = fit_moe(X, y, 5, n_init=2, random_state=0, max_iter=500)
    np.testing.assert_allclose(theirs.log_likelihood(X, y), -211776.83, atol=0.01)
    assert fit.log_likelihood >= -211776.83


@pytest.mark.slow
def test_centralised_fit_B_reaches_the_truth():
    """The authors' EM stopped at -217984.57 on B; the true parameters give -204942.0."""
    X, y = _train("B")
    truth_ll = _truth("B").log_likelihood(X, y)
    np.testing.assert_allclose(truth_ll, -204942.0, atol=0.05)
    fit = fit_moe(X, y, 5, n_init=3, random_state=0, max_iter=500)
    assert fit.log_likelihood >= truth_ll

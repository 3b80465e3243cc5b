"""A known answer shipped with the package (tests/data/known_answer.csv: 400
rows, d=1, K=2, a fixed draw). The maximum-likelihood estimate below was found
without fastmoe: scipy's BFGS, then Nelder-Mead, then BFGS again, on the
log-likelihood written with scipy.special.logsumexp (first gate
logit g + a x against a zero second gate; log-variances free)."""

from pathlib import Path

import numpy as np
import pytest

from fastmoe import MoEParams, engine, fit_moe

DATA = Path(__file__).parent / "data" / "known_answer.csv"
#: the optimum: -305.73130335410667
LOG_LIKELIHOOD = -305.73130335410667
MLE = MoEParams(gate_coef=[[1.9802928009476566], [0.0]],
                gate_intercept=[0.34884843781562247, 0.0],
                expert_coef=[[1.9878391867107656], [-0.9849574916293677]],
                expert_intercept=[0.9604921249884101, -1.0218204662637895],
                expert_var=[0.09083565698232265, 0.2443985290384552])


@pytest.fixture(scope="module")
def data():
    d = np.loadtxt(DATA, delimiter=",", skiprows=1)
    return d[:, :1], d[:, 1]


def test_the_log_likelihood_at_the_known_optimum(data):
    X, y = data
    assert engine.e_step(X, y, MLE).log_likelihood == pytest.approx(LOG_LIKELIHOOD, abs=1e-9)


def test_em_finds_the_known_optimum(data):
    X, y = data
    fit = fit_moe(X, y, 2, n_init=3, tol=1e-12, max_iter=2000, random_state=0)
    assert fit.log_likelihood == pytest.approx(LOG_LIKELIHOOD, abs=1e-7)
    assert fit.log_likelihood >= LOG_LIKELIHOOD - 1e-7
    p, want = fit.params, MLE.canonical()
    np.testing.assert_allclose(p.expert_coef, want.expert_coef, atol=1e-4)
    np.testing.assert_allclose(p.expert_intercept, want.expert_intercept, atol=1e-4)
    np.testing.assert_allclose(p.expert_var, want.expert_var, rtol=1e-4)
    np.testing.assert_allclose(p.gate_proba(X), want.gate_proba(X), atol=1e-4)


def test_engine_em_steps_climb_to_the_known_optimum(data):
    X, y = data
    p = MoEParams([[1.0], [0.0]], [0.0, 0.0], [[1.5], [-0.5]], [0.5, -0.5], [1.0, 1.0])
    lls = []
    for _ in range(300):
        p, ll = engine.em_step(X, y, p, gate_steps=3)
        lls.append(ll)
    assert np.all(np.diff(lls) >= -1e-10)
    assert engine.e_step(X, y, p).log_likelihood == pytest.approx(LOG_LIKELIHOOD, abs=1e-6)

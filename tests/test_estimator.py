"""The scikit-learn estimator contract and the prediction methods."""

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastmoe import DistributedMoERegressor, GaussianMoERegressor, MoEClassifier, MoERegressor
from fastmoe.datasets import make_moe_regression

#: checks expected to fail, each with its reason
EXPECTED_FAILED = {
    "check_regressors_no_decision_function":
        "predict_proba(X, y) returns posterior responsibilities of the experts by design",
    "check_methods_sample_order_invariance":
        "score_samples needs y (a density of y given x); the check calls score_samples(X)",
    "check_methods_subset_invariance":
        "score_samples needs y (a density of y given x); the check calls score_samples(X)",
}


# The checks fit tiny arbitrary data sets on which collapsing experts and slow
# convergence are expected; those are reported as ConvergenceWarning subclasses.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore:aggregation health:UserWarning")  # supports of 10-50 rows
# The distributed estimator runs on one machine here: the checks fit data sets
# of 10 rows on up to 10 features, and a shard needs K(d+1) rows (fit says so).
@parametrize_with_checks([GaussianMoERegressor(n_experts=2, random_state=0, max_iter=500),
                          MoERegressor(n_experts=2, random_state=0, max_iter=500),
                          MoEClassifier(n_experts=2, random_state=0, max_iter=500),
                          DistributedMoERegressor(n_experts=2, n_machines=1, n_init=1,
                                                  backend="serial", random_state=0)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_contract(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def fitted():
    X, y, truth, _ = make_moe_regression(2000, 2, 2, random_state=0)
    return GaussianMoERegressor(2, random_state=0).fit(X, y), X, y, truth


def test_prediction_methods(fitted):
    model, X, y, _ = fitted
    pi = model.predict_gate_proba(X)
    np.testing.assert_allclose(pi.sum(axis=1), 1.0)
    post = model.predict_proba(X, y)
    np.testing.assert_allclose(post.sum(axis=1), 1.0)
    assert model.score(X, y) > 0.5
    np.testing.assert_allclose(model.predict_proba(X), pi)
    ll = model.log_likelihood(X, y)
    np.testing.assert_allclose(ll, model.log_likelihood_, rtol=1e-10)
    np.testing.assert_allclose(model.score_samples(X, y).sum(), ll, rtol=1e-12)
    k = model.params_.n_parameters
    assert k == 1 * 3 + 2 * 3 + 2
    np.testing.assert_allclose(model.bic(X, y), -2 * ll + k * np.log(len(y)))
    np.testing.assert_allclose(model.aic(X, y), -2 * ll + 2 * k)
    assert np.all(model.predict_var(X) > 0)
    ys, labels = model.sample(X, random_state=0)
    assert ys.shape == y.shape and set(np.unique(labels)) <= {0, 1}
    assert model.gate_coef_.shape == (2, 2) and model.expert_var_.shape == (2,)


def test_predict_checks_width(fitted):
    model, X, _, _ = fitted
    with pytest.raises(ValueError, match="expecting 2 features"):
        model.predict(np.ones((3, 5)))


def test_the_em_defaults_are_said_once():
    """fit_moe, the estimators and the command line take their EM options'
    defaults from one place (fastmoe._options.EM_DEFAULTS); the centralised
    estimators and ``fastmoe fit`` differ in their starts (CENTRAL_N_INIT),
    the distributed estimator only where its local fits need to (n_init,
    gate_penalty and accelerate "auto", and em-EM's short runs: see
    fastmoe.fit_local)."""
    import dataclasses
    import inspect

    from fastmoe import (
        DistributedMoERegressor,
        GaussianMoERegressor,
        MoEClassifier,
        MoERegressor,
        fit_moe,
    )
    from fastmoe._options import CENTRAL_N_INIT, EM_DEFAULTS
    from fastmoe.cli import build_parser
    from fastmoe.machine import LOCAL_INIT_ITER

    defaults = dataclasses.asdict(EM_DEFAULTS)
    central = {"n_init": CENTRAL_N_INIT}
    for func, own in ((fit_moe, {}), (GaussianMoERegressor, central), (MoERegressor, central),
                      (MoEClassifier, central),
                      (DistributedMoERegressor, {"n_init": "auto", "gate_penalty": "auto",
                                                 "accelerate": "auto",
                                                 "init_iter": LOCAL_INIT_ITER})):
        params = inspect.signature(func).parameters
        for name, value in defaults.items():
            if name in params:
                assert params[name].default == own.get(name, value), (func.__name__, name)
    fit = build_parser().parse_args(["fit", "--n-experts", "2", "--data", "d.npz",
                                     "--output", "m.json"])
    for name in ("max_iter", "n_init", "gate_penalty", "penalty", "l1_strength"):
        assert getattr(fit, name) == central.get(name, defaults[name]), name
    assert CENTRAL_N_INIT == 3 and EM_DEFAULTS.init_iter is None and LOCAL_INIT_ITER == 20


@pytest.mark.parametrize("option, value", [("max_iter", 0), ("tol", -1.0), ("n_init", 1.5),
                                           ("init", "best"), ("init_iter", 0),
                                           ("reg_var", 0.0), ("gate_penalty", -1.0),
                                           ("penalty", "l2"), ("l1_strength", "big"),
                                           ("gate_steps", 0), ("split_merge", "yes"),
                                           ("accelerate", "yes")])
def test_a_bad_em_option_is_one_line_naming_it(option, value):
    from fastmoe._options import EMOptions

    with pytest.raises(ValueError, match=option) as err:
        EMOptions(**{option: value})
    assert "\n" not in str(err.value)

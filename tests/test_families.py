"""Experts of other families (fastmoe.families, fastmoe._glm): Poisson,
Bernoulli and Gamma experts against statsmodels' GLM (one expert), scipy's
densities, a slow EM with exact M-steps (tests/naive.py), known truth, and
the estimators MoERegressor and MoEClassifier."""

import dataclasses
import json
import warnings

import naive
import numpy as np
import pytest
from conftest import read_only

from fastmoe import MoEClassifier, MoEParams, MoERegressor, aggregate, engine, fit_moe
from fastmoe.datasets import make_moe_regression
from fastmoe.exceptions import ConvergenceWarning
from fastmoe.families import FAMILIES, get_family

GLM_FAMILIES = ("poisson", "bernoulli", "gamma")


def _glm_data(family, n=4000, seed=0, offset=None):
    """One GLM's rows, with covariates of large offsets and odd scales."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3)) * [1.0, 1e3, 1e-3] + [0.0, 1e6, -5.0]
    eta = 0.3 + ((X - X.mean(0)) / X.std(0)) @ np.array([0.5, -0.3, 0.2])
    if offset is not None:
        eta = eta + offset
    fam = get_family(family)
    y = fam.draw(fam.mean(eta), np.full(n, 0.5), rng)
    return X, y


def _statsmodels_family(family):
    sm = pytest.importorskip("statsmodels.api")
    return {"poisson": sm.families.Poisson(), "bernoulli": sm.families.Binomial(),
            "gamma": sm.families.Gamma(sm.families.links.Log())}[family]


@pytest.mark.parametrize("family", GLM_FAMILIES)
def test_one_expert_is_statsmodels_glm(family):
    sm = pytest.importorskip("statsmodels.api")
    X, y = _glm_data(family)
    fit = fit_moe(X, y, 1, family=family, random_state=0)
    ref = sm.GLM(y, sm.add_constant(X), family=_statsmodels_family(family)).fit(tol=1e-13)
    ours = np.r_[fit.params.expert_intercept, fit.params.expert_coef[0]]
    np.testing.assert_allclose(ours, ref.params, rtol=1e-6)
    if family != "gamma":  # statsmodels' Gamma llf uses its moment scale, not the MLE
        assert fit.log_likelihood == pytest.approx(ref.llf, rel=1e-9)


def test_a_poisson_offset_is_statsmodels_offset():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(3)
    exposure = np.log(rng.uniform(0.5, 20.0, 3000))
    X, y = _glm_data("poisson", n=3000, offset=exposure)
    fit = fit_moe(X, y, 1, family="poisson", offset=exposure, random_state=0)
    ref = sm.GLM(y, sm.add_constant(X), family=sm.families.Poisson(), offset=exposure).fit(
        tol=1e-13)
    np.testing.assert_allclose(np.r_[fit.params.expert_intercept, fit.params.expert_coef[0]],
                               ref.params, rtol=1e-6)
    # the fitted mean carries the offset, as statsmodels' does
    np.testing.assert_allclose(fit.params.predict_mean(X, offset=exposure),
                               ref.predict(sm.add_constant(X), offset=exposure), rtol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_score_samples_is_scipys_density(family):
    X, y, truth, _ = make_moe_regression(400, 2, 3, family=family, random_state=1)
    off = np.linspace(-0.2, 0.2, 400) if family != "gaussian" else None
    got = truth.score_samples(X, y, offset=off)
    np.testing.assert_allclose(got, naive.family_log_likelihood(truth, X, y, off), rtol=1e-10,
                               atol=1e-10)
    R = truth.posterior(X, y, offset=off)
    np.testing.assert_allclose(R.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("family", GLM_FAMILIES)
def test_em_ends_at_a_fixed_point_of_the_slow_exact_em(family):
    """fastmoe's generalised EM (one IRLS step per iteration) ends where a
    slow EM with exact M-steps by BFGS (tests/naive.py) does not move: at a
    fixed point of EM, not one of its own shortcuts."""
    X, y, truth, _ = make_moe_regression(300, 1, 2, family=family, random_state=2)
    ours = fit_moe(X, y, 2, family=family, random_state=0, tol=1e-13, max_iter=20000).params
    slow = naive.family_em(X, y, ours, 3)
    assert slow.log_likelihood(X, y) <= ours.log_likelihood(X, y) + 1e-7 * len(y)
    np.testing.assert_allclose(slow.predict_mean(X), ours.predict_mean(X), rtol=1e-4,
                               atol=1e-4 * np.abs(y).mean())


@pytest.mark.parametrize("family", GLM_FAMILIES)
def test_em_never_lowers_the_log_likelihood(family):
    X, y, _, _ = make_moe_regression(2000, 2, 3, family=family, random_state=4)
    fit = fit_moe(X, y, 3, family=family, random_state=0, n_init=2)
    assert np.all(np.diff(fit.history) >= -1e-9 * np.abs(fit.history[1:]))
    assert fit.log_likelihood == pytest.approx(fit.params.log_likelihood(X, y), rel=1e-10)


@pytest.mark.parametrize("family", GLM_FAMILIES)
def test_duplicate_experts_is_the_averaged_symmetric_kl(family, rng):
    """The split-merge move's test for duplicates: KL(i || j) + KL(j || i)
    between the experts' distributions of y at each row, averaged with the
    rows' weights; the textbook divergences, written out here."""
    from scipy.special import gammaln, psi

    from fastmoe._glm import _Data, duplicate_experts

    n = 400
    X = rng.standard_normal((n, 2))
    w = rng.uniform(0.5, 2.0, n)
    beta = np.array([[0.1, 0.3, 0.0], [0.15, 0.35, -0.02], [6.0, -3.0, 1.5]])
    phi = np.array([0.5, 0.45, 0.2]) if family == "gamma" else np.ones(3)
    y = np.ones(n)
    data = _Data(X, y, w, np.zeros(n), get_family(family), 3, 1)
    eta = np.column_stack([np.ones(n), X]) @ beta.T

    def jeffreys(i, j):
        if family != "gamma":  # canonical: (mu_i - mu_j)(eta_i - eta_j)
            mu = get_family(family).mean(eta)
            return (mu[:, i] - mu[:, j]) * (eta[:, i] - eta[:, j])

        def kl(a, b):  # Gamma(shape nu, rate nu / mu)
            na, nb = 1 / phi[a], 1 / phi[b]
            ra, rb = na * np.exp(-eta[:, a]), nb * np.exp(-eta[:, b])
            return ((na - nb) * psi(na) - gammaln(na) + gammaln(nb)
                    + nb * (np.log(ra) - np.log(rb)) + na * (rb - ra) / ra)
        return kl(i, j) + kl(j, i)

    i, j, value = duplicate_experts(data, beta, phi)
    assert (i, j) == (1, 0)
    assert value == pytest.approx(np.average(jeffreys(0, 1), weights=w), rel=1e-10)
    assert duplicate_experts(data, beta[[0, 2]], phi[[0, 2]]) is None


def _poisson_trap(seed=0, n=4000):
    """Counts from three experts of means 1, 10 and 100 (times exp(0.3 x1)),
    chosen at random; and a start with two experts on the middle one and one
    on it too, which EM turns into a duplicated pair and one expert that
    covers the outer two."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2))
    intercepts = np.log([1.0, 10.0, 100.0])
    y = rng.poisson(np.exp(intercepts[rng.integers(3, size=n)] + 0.3 * X[:, 0])).astype(float)
    trap = MoEParams(np.zeros((3, 2)), np.zeros(3), np.array([[0.3, 0.0]] * 3),
                     intercepts[[1, 1, 1]] + [0.0, 0.01, 0.0], np.ones(3), "poisson")
    return X, y, trap, intercepts


def test_split_merge_lets_poisson_experts_leave_a_duplicated_pair():
    X, y, trap, intercepts = _poisson_trap()
    stuck = fit_moe(X, y, 3, family="poisson", init=trap, split_merge=False)
    moved = fit_moe(X, y, 3, family="poisson", init=trap)
    assert stuck.converged and stuck.moves == ()
    assert np.ptp(np.sort(stuck.params.expert_intercept)[:2]) < 0.01  # the pair
    assert moved.converged and len(moved.moves) == 1
    assert "same distribution" in moved.moves[0]
    assert moved.log_likelihood > stuck.log_likelihood + 1000
    np.testing.assert_allclose(np.sort(moved.params.expert_intercept), intercepts, atol=0.1)
    assert moved.log_likelihood == pytest.approx(moved.params.log_likelihood(X, y), rel=1e-12)
    est = MoERegressor(3, family="poisson", init=trap).fit(X, y)
    assert est.log_likelihood_ == moved.log_likelihood
    est = MoERegressor(3, family="poisson", init=trap, split_merge=False).fit(X, y)
    assert est.log_likelihood_ == stuck.log_likelihood


def test_split_merge_halves_a_bernoulli_expert_along_its_covariates():
    """A 0/1 response has no rows above and below an expert's mean to split
    (they would be its ones and zeros): the move halves the broad expert's
    rows by their leading principal component. Here, from the same start, it
    ends 12 nats higher than EM alone."""
    X, y, _, _ = make_moe_regression(4000, 2, 3, family="bernoulli", random_state=1)
    plain = fit_moe(X, y, 3, family="bernoulli", random_state=0, split_merge=False)
    moved = fit_moe(X, y, 3, family="bernoulli", random_state=0)
    assert moved.moves and all("same distribution" in m for m in moved.moves)
    assert moved.log_likelihood > plain.log_likelihood + 5
    assert np.isfinite(moved.params.expert_aug).all()


@pytest.mark.parametrize("family", ("poisson", "gamma"))
def test_the_truth_is_recovered_ever_closer(family):
    errors = []
    for n in (3000, 48000):
        X, y, truth, _ = make_moe_regression(n, 2, 3, family=family, random_state=5)
        fit = fit_moe(X, y, 3, family=family, random_state=0)
        assert fit.converged
        assert fit.log_likelihood >= truth.log_likelihood(X, y)  # the MLE fits at least as well
        est, true = fit.params, truth.canonical()
        errors.append(max(np.abs(est.expert_aug - true.expert_aug).max(),
                          np.abs(est.gate_aug - true.gate_aug).max()))
    assert errors[1] < 0.1
    assert errors[1] < errors[0] / 2  # 16 times the rows: about a quarter of the error


@pytest.mark.parametrize("family", GLM_FAMILIES)
def test_the_fit_ignores_the_covariates_units(family):
    X, y, _, _ = make_moe_regression(1500, 2, 2, family=family, random_state=6)
    a = fit_moe(X, y, 2, family=family, random_state=0).params
    b = fit_moe(X * [1e4, 1e-3] + [1e8, -7.0], y, 2, family=family, random_state=0).params
    np.testing.assert_allclose(a.predict_mean(X), b.predict_mean(X * [1e4, 1e-3] + [1e8, -7.0]),
                               rtol=1e-6)


def test_a_gamma_fit_follows_the_units_of_y():
    X, y, _, _ = make_moe_regression(1500, 2, 2, family="gamma", random_state=7)
    a = fit_moe(X, y, 2, family="gamma", random_state=0)
    b = fit_moe(X, 1e6 * y, 2, family="gamma", random_state=0)
    np.testing.assert_allclose(b.params.expert_intercept, a.params.expert_intercept + np.log(1e6),
                               rtol=1e-7)
    np.testing.assert_allclose(b.params.expert_var, a.params.expert_var, rtol=1e-6)
    assert b.log_likelihood == pytest.approx(a.log_likelihood - len(y) * np.log(1e6), rel=1e-8)


def test_an_experts_step_on_separable_rows_is_taken():
    """The IRLS step is Newton's for the log-likelihood less the experts'
    ridge, and its step halving checks that objective: on separable rows
    (y = 1 exactly where x > 0) with a steep slope the ridge, not the
    vanishing gradient, sets the step, which lowers the plain log-likelihood
    by a hair; checked against the plain one, every halving failed and the
    fit crawled to max_iter (a 66-row shard of CreditCard)."""
    from fastmoe._glm import EXPERT_RIDGE, _Data, _irls_step

    x = np.linspace(-1.0, 1.0, 200)
    X, y = x[:, None], (x > 0).astype(float)
    data = _Data(X, y, np.ones(200), np.zeros(200), get_family("bernoulli"), 1, 1)
    b = np.array([0.0, 1e4])
    new = _irls_step(data, np.ones(200), b, 1.0, data.Z @ b)
    assert new[1] < b[1]  # the ridge pulls the slope in

    def penalised(v):
        return data.expert_objective(np.ones(200), v, 1.0) - 0.5 * EXPERT_RIDGE * 200 * v[1] ** 2
    assert penalised(new) > penalised(b)


def test_inputs_are_not_modified():
    X, y, _, _ = make_moe_regression(500, 2, 2, family="poisson", random_state=8)
    off = np.zeros(500)
    X, y, off = read_only(X), read_only(y), read_only(off)
    fit_moe(X, y, 2, family="poisson", offset=off, random_state=0)
    MoERegressor(2, family="poisson", random_state=0).fit(X, y, offset=off)


@pytest.mark.parametrize("family,y,message", [
    ("poisson", [0.0, 1.0, -1.0], "y >= 0"),
    ("bernoulli", [0.0, 1.0, 2.0], "y in {0, 1}"),
    ("gamma", [1.0, 2.0, 0.0], "y > 0"),
])
def test_responses_outside_the_support_are_refused(family, y, message):
    X = np.arange(3.0)[:, None]
    with pytest.raises(ValueError, match=message):
        fit_moe(X, np.array(y), 1, family=family)


def test_bad_family_and_dispersion_are_refused():
    with pytest.raises(ValueError, match="family must be one of"):
        fit_moe(np.zeros((3, 1)), np.zeros(3), 1, family="tweedie")
    with pytest.raises(ValueError, match="no dispersion"):
        MoEParams(np.zeros((1, 1)), [0.0], np.zeros((1, 1)), [0.0], [2.0], "poisson")
    with pytest.raises(ValueError, match="offset must have shape"):
        fit_moe(np.zeros((3, 1)), np.ones(3), 1, family="poisson", offset=np.zeros(2))


@pytest.mark.parametrize("family", GLM_FAMILIES)
def test_a_model_file_names_its_family(tmp_path, family):
    _, _, truth, _ = make_moe_regression(10, 2, 2, family=family, random_state=0)
    for suffix in (".json", ".npz"):
        truth.save(tmp_path / f"m{suffix}")
        back = MoEParams.load(tmp_path / f"m{suffix}")
        assert back.family == family
        np.testing.assert_array_equal(back.expert_aug, truth.expert_aug)
    record = truth.to_dict()
    assert record["version"] == 2 and record["family"] == family
    record["family"] = "tweedie"
    with pytest.raises(ValueError, match="family must be one of"):
        MoEParams.from_dict(record)


def test_a_gaussian_file_of_version_one_still_loads(tmp_path):
    _, _, truth, _ = make_moe_regression(10, 2, 2, random_state=0)
    record = truth.to_dict()
    assert record["version"] == 1 and "family" not in record
    path = tmp_path / "old.json"
    path.write_text(json.dumps(record))
    assert MoEParams.load(path).family == "gaussian"


def test_the_gaussian_only_paths_refuse_other_families():
    X, y, truth, _ = make_moe_regression(200, 2, 2, family="poisson", random_state=0)
    with pytest.raises(ValueError, match="Gaussian experts only"):
        engine.step_statistics(X, y, truth)
    with pytest.raises(ValueError, match="Gaussian experts only"):
        truth.predict_quantile(X, 0.5)


def test_moe_regressor_fits_counts_and_predicts_them():
    X, y, truth, _ = make_moe_regression(6000, 2, 2, family="poisson", random_state=9)
    model = MoERegressor(2, family="poisson", random_state=0).fit(X, y)
    assert model.params_.family == "poisson" and model.converged_
    assert model.expert_coef_.shape == (2, 2) and model.expert_intercept_.shape == (2,)
    np.testing.assert_allclose(model.score_samples(X, y),
                               naive.family_log_likelihood(model.params_, X, y), rtol=1e-10)
    assert np.all(model.predict(X) > 0)
    assert model.log_likelihood(X, y) > truth.log_likelihood(X, y)
    assert np.all(model.standard_errors_.expert_coef > 0)
    # a K=2 mixture is clearly above the Poisson GLM on mixture data
    glm = MoERegressor(1, family="poisson").fit(X, y)
    assert model.bic(X, y) < glm.bic(X, y) - 100


def test_moe_regressor_with_gaussian_experts_is_the_gaussian_estimator():
    from fastmoe import GaussianMoERegressor

    X, y, _, _ = make_moe_regression(1000, 2, 2, random_state=0)
    a = MoERegressor(2, random_state=0).fit(X, y)
    b = GaussianMoERegressor(2, random_state=0).fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert a.standard_errors_ is not None


def test_moe_classifier_speaks_scikit_learns_language():
    X, y, truth, _ = make_moe_regression(4000, 2, 2, family="bernoulli", random_state=10)
    labels = np.where(y > 0, "spam", "ham")
    model = MoEClassifier(2, random_state=0).fit(X, labels)
    assert model.classes_.tolist() == ["ham", "spam"]
    proba = model.predict_proba(X)
    assert proba.shape == (4000, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(proba[:, 1], model.params_.predict_mean(X))
    assert set(model.predict(X)) <= {"ham", "spam"}
    assert model.score(X, labels) > 0.7
    np.testing.assert_allclose(model.score_samples(X[:50], labels[:50]),
                               naive.family_log_likelihood(model.params_, X[:50], y[:50]),
                               rtol=1e-10)
    assert model.predict_posterior(X[:5], labels[:5]).shape == (5, 2)
    with pytest.raises(ValueError, match="outside classes_"):
        model.score_samples(X[:2], ["ham", "eggs"])
    with pytest.raises(ValueError, match="Only binary classification"):
        MoEClassifier(2).fit(X[:3], ["a", "b", "c"])


@pytest.mark.parametrize("family", GLM_FAMILIES)
def test_the_information_matches_finite_differences(family):
    """The log-likelihood's gradient and Hessian, and Derivatives.complete
    (the matrix of the rounds' generalised EM step): the Hessian of
    Q(theta' | theta) at theta, the posteriors held; all additive over row
    blocks, as the machines' statistics must be."""
    from fastmoe._information import family_derivatives

    X, y, truth, _ = make_moe_regression(300, 1, 2, family=family, random_state=11)
    rng = np.random.default_rng(0)
    w = rng.uniform(0.5, 2.0, 300)
    off = rng.uniform(-0.3, 0.3, 300)
    # away from the truth, so that the gradient is not near zero
    params = naive.family_params(naive.family_theta(truth) + 0.1 * rng.standard_normal(
        naive.family_theta(truth).size), truth)
    got = family_derivatives(X, y, w, params, off, meat=True, complete=True)
    grad, H = naive.family_finite_differences(params, X, y, w, off)
    np.testing.assert_allclose(got.gradient, grad, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(got.hessian, H, rtol=1e-4, atol=1e-4 * np.abs(H).max())
    assert got.log_likelihood == pytest.approx(
        float(w @ naive.family_log_likelihood(params, X, y, off)), rel=1e-12)
    Q = naive.family_q_hessian(params, X, y, w, off)
    np.testing.assert_allclose(got.complete, Q, rtol=1e-4, atol=1e-4 * np.abs(Q).max())
    assert family_derivatives(X, y, w, params, off).complete is None
    a = family_derivatives(X[:120], y[:120], w[:120], params, off[:120], complete=True)
    b = family_derivatives(X[120:], y[120:], w[120:], params, off[120:], complete=True)
    np.testing.assert_allclose((a + b).complete, got.complete, rtol=1e-12, atol=1e-9)


def test_the_generic_information_is_the_gaussian_one():
    """The numpy reference of the families' information reproduces the
    Gaussian kernel's for Gaussian experts (one set of formulas for all)."""
    from fastmoe._information import derivatives

    X, y, truth, _ = make_moe_regression(500, 2, 3, random_state=12)
    w = np.random.default_rng(1).uniform(0.5, 2.0, 500)
    a, b = derivatives(X, y, w, truth, meat=True), naive.family_derivatives_numpy(
        X, y, w, truth, meat=True)
    np.testing.assert_allclose(b.hessian, a.hessian, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(b.meat, a.meat, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", GLM_FAMILIES)
@pytest.mark.parametrize("K", [1, 3])
def test_the_compiled_information_is_the_numpy_one(family, K):
    """fastmoe._kernels.family_coefficients against the numpy reference,
    over several row blocks, with weights, offsets, the meat and EM's
    objective's Hessian, at the truth and far from it."""
    from fastmoe import _information
    from fastmoe._information import family_derivatives

    X, y, truth, _ = make_moe_regression(9000, 3, K, family=family, random_state=14)
    rng = np.random.default_rng(3)
    w, off = rng.uniform(0.5, 2.0, 9000), rng.uniform(-0.3, 0.3, 9000)
    far = naive.family_params(naive.family_theta(truth) + rng.normal(0, 1.0, naive.family_theta(
        truth).size), truth)
    assert 9000 > 2 * _information.ROWS
    for params in (truth, far):
        got = family_derivatives(X, y, w, params, off, meat=True, complete=True)
        ref = naive.family_derivatives_numpy(X, y, w, params, off, meat=True, complete=True)
        assert got.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-12)
        for name in ("gradient", "hessian", "meat", "complete"):
            a, b = getattr(got, name), getattr(ref, name)
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * np.abs(b).max(),
                                       err_msg=name)


@pytest.mark.parametrize("family", GLM_FAMILIES)
def test_the_compiled_e_step_is_scipys(family):
    """fastmoe._kernels.family_e_step (EM's E-step for these experts): the
    rows' log-likelihoods and posteriors from scipy's densities, the same on
    one thread and on two, and the per-expert objective its sum."""
    from scipy.special import gammaln, logsumexp

    from fastmoe import _kernels

    X, y, truth, _ = make_moe_regression(3000, 2, 3, family=family, random_state=15)
    rng = np.random.default_rng(4)
    off = rng.uniform(-0.3, 0.3, 3000)
    params = naive.family_params(naive.family_theta(truth) + rng.normal(0, 0.5, naive.family_theta(
        truth).size), truth)
    fam = get_family(family)
    nu = 1.0 / params.expert_var
    lg = gammaln(nu) if fam.has_dispersion else np.zeros(3)
    eta = naive.xt(X) @ params.expert_aug.T + off[:, None]
    joint = naive.gate_log_proba(X, params.gate_aug) + naive.family_log_density(
        family, y, eta, params.expert_var)
    outs = []
    for threads in (1, 2):
        R, e, kern, row = np.empty((3000, 3)), np.empty((3000, 3)), np.empty((3000, 3)), \
            np.empty(3000)
        bad = _kernels.family_e_step(_kernels.family_code(family), X, y, off, params.gate_aug,
                                     params.expert_aug, nu, lg, fam.base(y), R, e, kern, row,
                                     n_threads=threads)
        assert bad == 0
        outs.append((R, e, kern, row))
    np.testing.assert_allclose(row, logsumexp(joint, axis=1), rtol=1e-11)
    np.testing.assert_allclose(R, np.exp(joint - logsumexp(joint, axis=1, keepdims=True)),
                               atol=1e-12)
    np.testing.assert_allclose(e, eta, rtol=1e-12, atol=1e-12)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    a = rng.uniform(0, 1, 3000)
    assert _kernels.family_objective(_kernels.family_code(family), y, eta[:, 1], a, nu[1],
                                     lg[1]) == pytest.approx(float(a @ kern[:, 1]), rel=1e-12)


def test_the_compiled_information_refuses_gaussian_experts():
    from fastmoe._information import family_derivatives

    X, y, truth, _ = make_moe_regression(50, 2, 2, random_state=1)
    with pytest.raises(ValueError, match="family_coefficients serves"):
        family_derivatives(X, y, np.ones(50), truth)


@pytest.mark.parametrize("family", GLM_FAMILIES)
def test_one_experts_standard_errors_are_statsmodels(family):
    """With one expert the observed information is the GLM's (statsmodels'
    bse; for Gamma, whose log link is not canonical, its Newton fit's observed
    information at the maximum-likelihood shape, not its moment scale)."""
    sm = pytest.importorskip("statsmodels.api")
    X, y = _glm_data(family, n=3000, seed=4)
    model = MoERegressor(1, family=family).fit(X, y)
    se = model.standard_errors_
    ours = np.r_[se.expert_intercept, se.expert_coef[0]]
    fam = _statsmodels_family(family)
    if family == "gamma":
        ref = sm.GLM(y, sm.add_constant(X), family=fam).fit(
            method="newton", tol=1e-13, scale=float(model.expert_var_[0]))
    else:
        ref = sm.GLM(y, sm.add_constant(X), family=fam).fit(tol=1e-13)
    np.testing.assert_allclose(ours, ref.bse, rtol=1e-5)
    assert "expert 0" in model.summary()


@pytest.mark.parametrize("family", ["poisson", pytest.param("bernoulli", marks=pytest.mark.slow)])
def test_the_distributed_fit_reaches_the_centralised_one(family):
    """16 machines of a simulated mixture (d = 4, K = 3): local fits, the
    server's fit to the messages, Newton rounds on the summed derivatives
    (measured at 100 000 rows: 0.00002 and 0.00004 nats per test row,
    2 and 3 rounds)."""
    from fastmoe import DistributedMoERegressor

    X, y, _, _ = make_moe_regression(36000, 4, 3, family=family, random_state=1)
    train, test = slice(0, 30000), slice(30000, None)
    central = MoERegressor(3, family=family, random_state=0).fit(X[train], y[train])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fastmoe warning on iid shards
        dist = DistributedMoERegressor(3, n_machines=16, family=family, backend="serial",
                                       random_state=0).fit(X[train], y[train])
    gap = dist.score_samples(X[test], y[test]).mean() \
        - central.score_samples(X[test], y[test]).mean()
    assert abs(gap) < 0.005
    assert dist.refine_converged_ and len(dist.refine_history_) <= 15
    assert dist.excluded_rows_ + dist.dropped_rows_ == 0
    assert dist.params_.family == family and dist.aggregation_.params.family == family
    assert np.all(dist.standard_errors_.expert_coef > 0)


@pytest.mark.parametrize("family", ["poisson", "bernoulli"])
def test_the_rounds_em_step_is_one_centralised_em_iteration(family):
    """For the canonical links the generalised EM step from the summed
    statistics (server.gem_step) is the centralised fit's M-step: each
    expert's IRLS step is Newton's on Q, and so is the gates' step."""
    from fastmoe._information import family_derivatives, family_params_of, family_theta_of
    from fastmoe.server import gem_step

    X, y, _, _ = make_moe_regression(2000, 2, 2, family=family, random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a start of three iterations
        start = fit_moe(X, y, 2, family=family, max_iter=3, random_state=0).params
        em = fit_moe(X, y, 2, family=family, init=start, max_iter=1, tol=0.0).params
    der = family_derivatives(X, y, np.ones(len(y)), start, complete=True)
    new = family_params_of(family_theta_of(start) + gem_step(der), start)
    np.testing.assert_allclose(family_theta_of(new), family_theta_of(em), atol=1e-7)
    assert gem_step(der._replace(complete=None)) is None


def _local_rounds(X, y):
    """refine's ``evaluate`` over one machine holding (X, y)."""
    from fastmoe.machine import round_statistics

    def evaluate(models):
        return [round_statistics(X, y, m) for m in models], 0.0
    return evaluate


def test_the_rounds_try_shorter_steps_when_every_candidate_overshoots():
    """A round in which no candidate gains ends the rounds only where the
    steps expected nothing; otherwise the next round tries from the same
    model with a trust radius a quarter of the shortest step tried."""
    from fastmoe.server import Rounds

    X, y, truth, _ = make_moe_regression(3000, 2, 2, family="poisson", random_state=5)
    evaluate = _local_rounds(X, y)
    far = naive.family_params(naive.family_theta(truth) + 0.5, truth)
    rounds = Rounds.start(far, tol=1e-9)
    rounds.receive(*evaluate(rounds.models()))
    lengths = [o[3] for o in rounds.pending if np.isfinite(o[3])]
    worse = [dataclasses.replace(r, log_likelihood=-np.inf)
             for r in evaluate(rounds.models())[0]]
    rounds.receive(worse, 0.0)
    assert rounds.history[-1]["step"] == "rejected" and not rounds.converged
    assert rounds.radius == pytest.approx(min(lengths) / 4)
    assert rounds.params is far and rounds.pending
    while rounds.pending:
        rounds.receive(*evaluate(rounds.models()))
    assert rounds.converged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        central = fit_moe(X, y, 2, family="poisson", init=far, tol=1e-12, max_iter=5000)
    assert rounds.log_likelihood >= central.log_likelihood - 1e-6 * abs(central.log_likelihood)


def test_tracks_keep_the_highest_optimum_any_start_reaches():
    """refine with tracks climbs from the first round's best starts side by
    side and keeps the highest model any of them reaches."""
    from fastmoe.server import refine

    X, y, truth, _ = make_moe_regression(3000, 2, 2, family="poisson", random_state=6)
    evaluate = _local_rounds(X, y)
    calls = []

    def counted(models):
        calls.append(len(models))
        return evaluate(models)

    starts = [naive.family_params(naive.family_theta(truth) + s, truth)
              for s in np.random.default_rng(0).normal(0, 1.0, (4, 1)) *
              np.ones(naive.family_theta(truth).size)]
    one = [refine(s, evaluate, tol=1e-9) for s in starts]
    both = refine(starts[0], counted, tol=1e-9, alternatives=starts[1:], tracks=4)
    assert both.converged
    best = max(r.history[-1]["log_likelihood"] if r.history[-1]["step"] != "rejected" else
               r.statistics.log_likelihood for r in one)
    assert both.statistics.log_likelihood >= best - 1e-6 * abs(best)
    assert len(both.history) == len(calls) and calls[0] == 4
    assert [h["candidates"] for h in both.history] == calls
    assert all("track" in h for h in both.history)


def test_a_local_fit_of_another_family_is_not_refitted_from_fresh_starts():
    """A machine's unconverged fit of these experts is sent as it is: it is
    only the rounds' start, and fresh starts do not cure separable rows."""
    from fastmoe.machine import fit_local

    X, y, _, _ = make_moe_regression(600, 2, 2, family="poisson", random_state=8)
    with pytest.warns(ConvergenceWarning):
        message = fit_local(X, y, 2, family="poisson", max_iter=2, random_state=0)
    assert message.meta["self_check"] == ("EM did not converge; not refitted (the rounds "
                                          "start from the messages)")


def test_a_message_of_another_family_round_trips(tmp_path):
    from fastmoe import LocalMessage, fit_local

    X, y, _, _ = make_moe_regression(2000, 2, 2, family="poisson", random_state=0)
    msg = fit_local(X, y, 2, family="poisson", random_state=0)
    assert msg.params.family == "poisson"
    for suffix in (".npz", ".json"):
        msg.save(tmp_path / f"m{suffix}")
        back = LocalMessage.load(tmp_path / f"m{suffix}")
        assert back.params.family == "poisson" and back.digest() == msg.digest()


@pytest.mark.parametrize("family", ["poisson", "gamma"])
def test_the_one_shot_estimator_reduces_other_families(family):
    """refine_rounds=0: the families' KL reduction alone (the paper's
    estimator) lands near the centralised fit on iid shards (measured at
    100 000 rows over 16 machines: Poisson -0.00003, Gamma +0.00006 nats per
    test row; Bernoulli -0.0027, whose rounds close the gap)."""
    from fastmoe import DistributedMoERegressor

    X, y, _, _ = make_moe_regression(36000, 4, 3, family=family, random_state=1)
    train, test = slice(0, 30000), slice(30000, None)
    central = MoERegressor(3, family=family, random_state=0).fit(X[train], y[train])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fastmoe warning on iid shards
        once = DistributedMoERegressor(3, n_machines=8, family=family, refine_rounds=0,
                                       backend="serial", random_state=0).fit(X[train], y[train])
    gap = once.score_samples(X[test], y[test]).mean() \
        - central.score_samples(X[test], y[test]).mean()
    assert abs(gap) < 0.002
    assert once.refine_history_ == [] and once.aggregation_.method == "ot-kl"
    assert once.aggregation_.converged and once.params_.family == family


def test_the_families_reduction_refuses_what_serves_gaussian_experts():
    X, y, truth, _ = make_moe_regression(400, 2, 2, family="poisson", random_state=0)
    for options, word in (({"cost": "w2"}, "cost='w2'"),
                          ({"gate_target": "kl"}, "gate_target='kl'"),
                          ({"variance_update": "published"}, "variance_update"),
                          ({"y_support": y}, "y_support")):
        with pytest.raises(ValueError, match=word):
            aggregate([truth, truth], X_support=X, **options)
    gauss = make_moe_regression(400, 2, 2, random_state=0)[2]
    with pytest.raises(ValueError, match="mix experts of families"):
        aggregate([truth, gauss], X_support=X)
    with pytest.raises(ValueError, match="robust=True serves Gaussian experts"):
        from fastmoe import DistributedMoERegressor

        DistributedMoERegressor(2, family="poisson", robust=True, refine_rounds=0,
                                backend="serial").fit(X, y)


@pytest.mark.parametrize("family", GLM_FAMILIES)
def test_the_families_kl_costs_are_the_divergences(family):
    """kl_costs and the reduction's split of it (FamilyMixture.costs) against
    the textbook formulas, and those against the definition (a sum over y or
    a quadrature)."""
    from fastmoe._family_reduction import FamilyMixture
    from fastmoe.families import kl_costs

    pairs = [(0.3, 2.0, -0.4, 0.7), (1.5, 0.5, 1.1, 3.0), (-2.0, 5.0, 0.2, 5.0)]
    for eta_l, nu_l, eta_k, nu_k in pairs:
        got = kl_costs(family, eta_l, nu_l, eta_k, nu_k)
        assert got == pytest.approx(naive.family_kl_textbook(family, eta_l, nu_l, eta_k, nu_k),
                                    rel=1e-10)
        assert got == pytest.approx(naive.family_kl_by_sum(family, eta_l, nu_l, eta_k, nu_k),
                                    rel=1e-7, abs=1e-12)
    X, _, truth, _ = make_moe_regression(300, 2, 3, family=family, random_state=3)
    other = naive.family_params(naive.family_theta(truth) + 0.3, truth)
    mix = FamilyMixture([truth, other], [0.4, 0.6], X)
    beta = truth.expert_aug[:2] + 0.2
    phi = truth.expert_var[:2] * 1.5
    eta_k = naive.xt(X) @ beta.T
    want = naive.family_kl_textbook(family, mix.eta[:, :, None], mix.nu[None, :, None],
                                    eta_k[:, None, :], 1.0 / phi[None, None, :])
    np.testing.assert_allclose(mix.costs(beta, phi), want, rtol=1e-9, atol=1e-12)
    A, cmin = mix.assign(beta, phi)
    np.testing.assert_array_equal(A, np.argmin(want, axis=2))
    np.testing.assert_allclose(cmin, want.min(axis=2), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", GLM_FAMILIES)
def test_the_families_reduction_is_a_minimum_of_the_transport_objective(family):
    """MM's targets against a brute-force minimisation of the transport
    objective (Powell's method on every target parameter, the objective by
    the textbook divergences): no nearby point is lower, and the objective
    the reduction reports is the brute-force one."""
    from scipy.optimize import minimize

    from fastmoe._family_reduction import reduce_family

    rng = np.random.default_rng(5)
    X, _, truth, _ = make_moe_regression(60, 1, 2, family=family, random_state=4)
    models = [naive.family_params(naive.family_theta(truth) + rng.normal(0, 0.15, naive.
                                  family_theta(truth).size), truth) for _ in range(3)]
    lam = np.array([0.5, 0.3, 0.2])
    beta, phi, history, _, converged, *_ = reduce_family(models, lam, X, 2, n_init=2,
                                                         max_iter=500, tol=1e-13, rng=rng)
    assert converged and np.all(np.diff(history) <= 1e-10 * history[0])
    best = naive.family_transport_objective(models, lam, X, beta, phi)
    assert history[-1] == pytest.approx(best, rel=1e-9)
    gamma = family == "gamma"

    def objective(v):
        b = v[:beta.size].reshape(beta.shape)
        p = np.exp(v[beta.size:]) if gamma else phi
        return naive.family_transport_objective(models, lam, X, b, p)

    start = np.concatenate([beta.ravel(), np.log(phi) if gamma else []])
    v0 = start + 0.05 * rng.standard_normal(start.size)  # from nearby
    found = minimize(objective, v0, method="Powell", options={"xtol": 1e-6, "ftol": 1e-10})
    assert found.fun >= best * (1 - 1e-6) - 1e-9
    assert found.fun <= best * (1 + 1e-3)  # and it finds the same minimum


def test_a_local_expert_that_extrapolates_wildly_does_not_swamp_the_reduction():
    """A local Poisson expert whose slope is ten times the others' predicts
    means beyond e^80 at a few outlying support points: its predictors are
    held within the bulk of the local experts' (plus half its width), so
    that the transport costs stay finite and positive and MM converges (in
    9 iterations; without the bound its costs overflowed and it ran its 300
    through objectives of +-1e25). The exponential costs still let those
    points pull one target's slope: the rounds, on the rows, judge it."""
    X, _, truth, _ = make_moe_regression(2000, 2, 2, family="poisson", random_state=6)
    X = X.copy()
    X[:4, 0] = 30.0  # a few covariates far from the rest (0.05% of the weight)
    coef = truth.expert_coef.copy()
    coef[0, 0] *= 10.0
    wild = MoEParams(truth.gate_coef, truth.gate_intercept, coef, truth.expert_intercept,
                     truth.expert_var, "poisson")
    assert float(np.max(naive.xt(X) @ wild.expert_aug.T)) > 80
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agg = aggregate([truth, truth, truth, wild], X_support=X, random_state=0)
    assert agg.converged and np.all(np.isfinite(agg.history)) and agg.objective >= 0
    assert np.all(agg.history[1:] <= agg.history[:-1] * (1 + 1e-9))


def test_the_families_reduction_of_one_model_is_that_model():
    """Two machines with the same model reduce to it (costs zero), the gates
    refitted to the plan."""
    X, _, truth, _ = make_moe_regression(3000, 2, 2, family="gamma", random_state=2)
    agg = aggregate([truth, truth], X_support=X, random_state=0)
    np.testing.assert_allclose(agg.params.expert_aug, truth.expert_aug, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(agg.params.expert_var, truth.expert_var, rtol=1e-6)
    assert agg.objective == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(agg.params.gate_proba(X), truth.gate_proba(X), atol=1e-6)


def test_the_distributed_classifier_speaks_labels():
    from sklearn.base import clone

    from fastmoe import DistributedMoEClassifier

    X, y, _, _ = make_moe_regression(12000, 3, 2, family="bernoulli", random_state=0)
    labels = np.where(y > 0, "yes", "no")
    dist = DistributedMoEClassifier(2, n_machines=8, backend="serial", random_state=0)
    assert "family" not in dist.get_params() and clone(dist).get_params() == dist.get_params()
    dist.fit(X, labels)
    central = MoEClassifier(2, random_state=0).fit(X, labels)
    assert dist.classes_.tolist() == ["no", "yes"]
    assert dist.predict_proba(X[:4]).shape == (4, 2)
    assert set(dist.predict(X)) <= {"no", "yes"}
    gap = dist.score_samples(X, labels).mean() - central.score_samples(X, labels).mean()
    assert abs(gap) < 0.005
    shards = [(X[i::4], y[i::4]) for i in range(4)]
    again = DistributedMoEClassifier(2, backend="serial", random_state=0).fit_shards(shards)
    assert again.classes_.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("family", GLM_FAMILIES)
def test_the_engines_pieces_serve_every_family(family):
    """fastmoe.engine for hosts: the E-step against scipy's densities, the
    experts' M-step against the slow exact EM's (BFGS on each expert's
    weighted log-likelihood), the KL costs against the textbook ones; the
    M-step ignores the covariates' units."""
    from fastmoe import engine

    X, y, truth, _ = make_moe_regression(3000, 2, 2, family=family, random_state=16)
    rng = np.random.default_rng(6)
    start = naive.family_params(naive.family_theta(truth) + rng.normal(0, 0.2, naive.
                                family_theta(truth).size), truth)
    e = engine.e_step(X, y, start)
    np.testing.assert_allclose(e.row_log_likelihood, naive.family_log_likelihood(start, X, y),
                               rtol=1e-11)
    exact = naive.family_em(X, y, start, 1)
    got = engine.fit_family_experts(X, y, e.resp, family, init=(
        start.expert_coef, start.expert_intercept, start.expert_var))
    np.testing.assert_allclose(got.coef, exact.expert_coef, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.intercept, exact.expert_intercept, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.var, exact.expert_var, rtol=1e-4)
    scaled = engine.fit_family_experts(X * [100.0, 0.01] + 5.0, y, e.resp, family)
    np.testing.assert_allclose(scaled.coef * [100.0, 0.01], got.coef, rtol=1e-5, atol=1e-6)
    costs = engine.expert_costs(start, truth, X[:5])
    eta = naive.xt(X[:5])
    want = naive.family_kl_textbook(family, (eta @ start.expert_aug.T)[:, :, None],
                                    1.0 / start.expert_var[None, :, None],
                                    (eta @ truth.expert_aug.T)[:, None, :],
                                    1.0 / truth.expert_var[None, None, :])
    np.testing.assert_allclose(costs, want, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="serves Gaussian experts"):
        engine.expert_costs(start, truth, X[:5], cost="w2")


@pytest.mark.parametrize("family", GLM_FAMILIES)
def test_a_round_file_of_another_family_round_trips_and_is_checked(family):
    from fastmoe.machine import round_statistics
    from fastmoe.message import round_digest, round_from_bytes, round_to_bytes

    X, y, truth, _ = make_moe_regression(500, 2, 2, family=family, random_state=17)
    stats = round_statistics(X, y, truth)
    back = round_from_bytes(round_to_bytes(stats, truth), truth)
    assert back.n == stats.n and back.log_likelihood == stats.log_likelihood
    for name in ("gradient", "hessian", "complete"):
        np.testing.assert_array_equal(getattr(back.derivatives, name),
                                      getattr(stats.derivatives, name))
    assert round_digest(back) == round_digest(stats)
    other = MoEParams(truth.gate_coef, truth.gate_intercept, truth.expert_coef,
                      truth.expert_intercept, np.ones(2), "gaussian")
    with pytest.raises(ValueError, match="not a fastmoe.RoundStatistics"):
        round_from_bytes(round_to_bytes(stats, truth), other)  # a Gaussian model's arrays
    moved = MoEParams(truth.gate_coef, truth.gate_intercept, truth.expert_coef,
                      truth.expert_intercept + 0.1, truth.expert_var, family)
    with pytest.raises(ValueError, match="another model"):
        round_from_bytes(round_to_bytes(stats, truth), moved)
    if family != "gamma":
        forged = dataclasses.replace(stats, log_likelihood=5.0)
        with pytest.raises(ValueError, match="is positive"):
            round_from_bytes(round_to_bytes(forged, truth), truth)

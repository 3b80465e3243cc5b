"""Centralised EM: properties, recovery of known truth, bad input."""

import warnings

import numpy as np
import pytest
from conftest import scale_mixture

from fastmoe import (
    ConvergenceWarning,
    DegenerateExpertWarning,
    GaussianMoERegressor,
    MoEParams,
    fit_moe,
)
from fastmoe.datasets import make_moe_regression
from fastmoe.diagnostics import align_to


@pytest.fixture(scope="module")
def small():
    return make_moe_regression(3000, 2, 3, random_state=1)


@pytest.mark.parametrize("gate_steps", [1, 3])
def test_loglik_never_decreases(small, gate_steps):
    X, y, _, _ = small
    for init in ("kmeans", "random"):
        fit = fit_moe(X, y, 3, init=init, random_state=3, max_iter=300, gate_steps=gate_steps)
        steps = np.diff(fit.history)
        assert np.all(steps >= -1e-10 * np.abs(fit.history[1:])), steps.min()
        assert fit.log_likelihood == fit.history[-1]
        assert fit.n_iter == len(fit.history) - 1


def test_more_starts_never_worse(small):
    X, y, _, _ = small
    one = fit_moe(X, y, 3, n_init=1, init="random", random_state=7)
    three = fit_moe(X, y, 3, n_init=3, init="random", init_iter=None, random_state=7)
    assert three.init_log_likelihoods[0] == one.log_likelihood
    assert three.log_likelihood >= one.log_likelihood
    assert three.log_likelihood == max(three.init_log_likelihoods)
    short = fit_moe(X, y, 3, n_init=3, init="random", random_state=7)  # em-EM starts
    assert short.log_likelihood >= one.log_likelihood - 1e-9 * abs(one.log_likelihood)


def test_random_start_gives_distinct_experts_and_uniform_gates(small):
    from fastmoe._em import EMData, _initial_params

    X, y, _, _ = small
    data = EMData(X, y, np.ones(len(y)), 3, 1)
    for seed in range(3):
        alpha, beta, var = _initial_params(data, "random", np.random.default_rng(seed), 1e-6)
        assert np.all(alpha == 0.0) and np.all(var > 0)
        gaps = [np.linalg.norm(beta[a] - beta[b]) for a in range(3) for b in range(a)]
        assert min(gaps) > 0.2, gaps  # Dirichlet responsibilities: 0.06 for seed 0
        again = _initial_params(data, "random", np.random.default_rng(seed), 1e-6)[1]
        np.testing.assert_array_equal(beta, again)


def test_duplicate_pair_is_the_averaged_symmetric_kl(rng):
    from fastmoe._em import duplicate_pair

    X = rng.normal(size=(500, 2))
    Z = np.column_stack([np.ones(500), X])
    beta = np.array([[0.0, 1.0, 0.0], [0.1, 1.1, 0.0], [5.0, 0.0, 1.0]])
    var = np.array([1.0, 1.3, 1.0])

    def kl(i, j):  # per row, then averaged
        mi, mj = Z @ beta[i], Z @ beta[j]
        return 0.5 * (np.log(var[j] / var[i]) + (var[i] + (mi - mj) ** 2) / var[j] - 1)

    i, j, value = duplicate_pair(beta, var, Z.T @ Z / 500)
    assert (i, j) == (1, 0)
    assert value == pytest.approx(np.mean(kl(0, 1) + kl(1, 0)), rel=1e-12)
    assert duplicate_pair(beta[[0, 2]], var[[0, 2]], Z.T @ Z / 500) is None


def test_split_merge_escapes_duplicated_experts():
    # the trap: two experts on the middle true expert, one broad expert covering
    # the outer two; plain EM converges there, the move leaves it. (From the
    # trap, SQUAREM's jumps end at a neighbouring optimum where the pair's
    # variances differ fourfold, no longer a duplicate by DUPLICATE_KL; from
    # random starts it reaches the optimum: test_squarem_ends_nearer_...)
    X, y, truth, _ = make_moe_regression(4000, 2, 3, random_state=1)
    b, v = truth.expert_aug, truth.expert_var
    b0 = np.array([b[1], b[1] + 0.01, (b[0] + b[2]) / 2])
    trap = MoEParams(np.zeros((3, 2)), np.zeros(3), b0[:, 1:], b0[:, 0],
                     np.array([v[1], v[1], 30.0]))
    stuck = fit_moe(X, y, 3, init=trap, split_merge=False, max_iter=500, accelerate=False)
    moved = fit_moe(X, y, 3, init=trap, max_iter=500, accelerate=False)
    truth_ll = truth.log_likelihood(X, y)
    assert stuck.converged and stuck.moves == ()
    assert stuck.log_likelihood < truth_ll - 1000
    assert len(moved.moves) == 1 and "same density" in moved.moves[0]
    assert moved.converged and moved.log_likelihood >= truth_ll
    err = align_to(moved.params, truth).expert_aug - truth.expert_aug
    assert np.sqrt(np.mean(err**2)) < 0.05
    est = GaussianMoERegressor(3, init=trap, max_iter=500, split_merge=False).fit(X, y)
    assert est.log_likelihood_ == fit_moe(X, y, 3, init=trap, split_merge=False,
                                          max_iter=500).log_likelihood
    est = GaussianMoERegressor(3, init=trap, max_iter=500).fit(X, y)
    assert est.log_likelihood_ == fit_moe(X, y, 3, init=trap, max_iter=500).log_likelihood
    with pytest.raises(ValueError, match="split_merge"):
        fit_moe(X, y, 3, split_merge="yes")


@pytest.mark.parametrize("family", ["gaussian", "poisson"])
def test_more_starts_never_end_lower(family):
    """Every start runs to convergence by default (init_iter=None) and the
    first of n_init is the single start of the same random_state, so three
    starts end at least where one does; the estimators run three
    (CENTRAL_N_INIT). On a mixture with several optima, some seed's single
    start ends lower than its three."""
    from fastmoe import MoERegressor

    X, y, _, _ = make_moe_regression(1500, 2, 4, family=family, random_state=11)
    gains = []
    for seed in range(4):
        one = fit_moe(X, y, 4, family=family, random_state=seed)
        three = fit_moe(X, y, 4, family=family, n_init=3, random_state=seed)
        assert three.init_log_likelihoods[0] == one.log_likelihood
        assert three.log_likelihood == max(three.init_log_likelihoods) >= one.log_likelihood
        gains.append(three.log_likelihood - one.log_likelihood)
    assert max(gains) > 1.0
    est = MoERegressor(4, family=family, random_state=0).fit(X, y)
    assert est.log_likelihood_ == fit_moe(X, y, 4, family=family, n_init=3,
                                          random_state=0).log_likelihood


def test_short_runs_continue_the_best_start(small):
    X, y, _, _ = small
    fit = fit_moe(X, y, 3, n_init=4, init="random", init_iter=3, random_state=5)
    best = int(np.argmax(fit.init_log_likelihoods))
    # the history is the best start's short run, then its continuation
    assert fit.history[3] == fit.init_log_likelihoods[best]
    assert fit.log_likelihood >= max(fit.init_log_likelihoods)
    assert np.all(np.diff(fit.history) >= -1e-10 * np.abs(fit.history[1:]))
    assert fit.n_iter == len(fit.history) - 1 > 3
    # the continuation is the run that start would have made on its own
    full = fit_moe(X, y, 3, n_init=4, init="random", init_iter=None, random_state=5)
    assert full.init_log_likelihoods[best] == pytest.approx(fit.log_likelihood, rel=1e-14)
    with pytest.raises(ValueError, match="init_iter"):
        fit_moe(X, y, 3, n_init=2, init_iter=0)


def test_reproducible_and_inputs_untouched(small):
    X, y, _, _ = small
    Xc, yc = X.copy(), y.copy()
    a = fit_moe(X, y, 3, random_state=11)
    b = fit_moe(X, y, 3, random_state=np.random.default_rng(11))
    np.testing.assert_array_equal(a.params.expert_aug, b.params.expert_aug)
    np.testing.assert_array_equal(a.params.gate_aug, b.params.gate_aug)
    np.testing.assert_array_equal(X, Xc)
    np.testing.assert_array_equal(y, yc)


def test_fortran_and_readonly_input(small):
    X, y, _, _ = small
    ref = fit_moe(X, y, 3, random_state=0)
    Xf = np.asfortranarray(X)
    Xf.setflags(write=False)
    yr = y.copy()
    yr.setflags(write=False)
    fit = fit_moe(Xf, yr, 3, random_state=0)
    np.testing.assert_allclose(fit.log_likelihood, ref.log_likelihood, rtol=1e-12)


def test_recovery_of_known_truth():
    X, y, truth, _ = make_moe_regression(20000, 3, 3, random_state=0)
    fit = fit_moe(X, y, 3, n_init=2, random_state=0)
    est = align_to(fit.params, truth)

    def rmse(a, b):
        return float(np.sqrt(np.mean((a - b) ** 2)))

    assert rmse(est.expert_aug, truth.expert_aug) < 0.05
    assert rmse(est.expert_var, truth.expert_var) < 0.05
    assert rmse(est.gate_aug, truth.gate_aug) < 0.15
    assert fit.log_likelihood >= truth.log_likelihood(X, y)


def test_sample_weight_equals_repeated_rows(small):
    X, y, truth, _ = small
    w = np.random.default_rng(0).integers(1, 3, size=X.shape[0]).astype(float)
    start = truth
    rep = np.repeat(np.arange(X.shape[0]), w.astype(int))
    with warnings.catch_warnings():
        # tol=0: both run all 30 iterations (unless they stop at an exact fixed point)
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = fit_moe(X, y, 3, sample_weight=w, init=start, max_iter=30, tol=0.0)
        b = fit_moe(X[rep], y[rep], 3, init=start, max_iter=30, tol=0.0)
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-9)
    np.testing.assert_allclose(a.params.expert_aug, b.params.expert_aug, rtol=1e-7, atol=1e-9)


def test_single_expert_is_least_squares(small):
    X, y, _, _ = small
    fit = fit_moe(X, y, 1)
    Xt = np.column_stack([np.ones(len(y)), X])
    coef, *_ = np.linalg.lstsq(Xt, y, rcond=None)
    np.testing.assert_allclose(fit.params.expert_aug[0], coef, rtol=1e-9, atol=1e-12)
    resid = y - Xt @ coef
    np.testing.assert_allclose(fit.params.expert_var[0], resid @ resid / len(y), rtol=1e-9)


def test_convergence_warning(small):
    X, y, _, _ = small
    with pytest.warns(ConvergenceWarning, match="increase max_iter"):
        fit = fit_moe(X, y, 3, max_iter=2, random_state=0)
    assert not fit.converged


def test_collapsing_expert_is_floored_not_nan(rng):
    X = rng.standard_normal((400, 2))
    y = X @ np.array([1.0, -2.0]) + 0.5  # noiseless: every expert fits it exactly
    with pytest.warns(ConvergenceWarning) as record:  # it may also hit max_iter
        fit = fit_moe(X, y, 2, random_state=0, max_iter=100)
    assert any(isinstance(r.message, DegenerateExpertWarning)
               and "collapsed to the floor" in str(r.message) for r in record)
    assert np.all(np.isfinite(fit.params.expert_aug))
    assert np.all(fit.params.expert_var > 0)


def test_empty_expert_keeps_parameters(rng):
    X = rng.standard_normal((300, 1))
    y = 2.0 * X[:, 0] + 0.1 * rng.standard_normal(300)
    start = MoEParams(np.array([[0.0], [0.0]]), np.array([-800.0, 0.0]),
                      np.array([[5.0], [2.0]]), np.array([3.0, 0.0]), np.array([1.0, 0.01]))
    with pytest.warns(DegenerateExpertWarning, match="received no responsibility"):
        # tol=0: EM stops where a cycle of two iterations and a SQUAREM jump
        # changes nothing (here the second cycle)
        fit = fit_moe(X, y, 2, init=start, max_iter=6, tol=0.0)
    assert np.all(np.isfinite(fit.params.expert_aug))
    kept = fit.params.expert_aug[np.argmax(fit.params.expert_intercept)]
    np.testing.assert_allclose(kept, [3.0, 5.0])


def test_fit_does_not_depend_on_the_units_of_x(small):
    X, y, _, _ = small
    ref = fit_moe(X, y, 3, random_state=0)
    for scale in (np.array([1e-8, 1e8]), np.array([1e6, 1.0])):
        fit = fit_moe(X * scale, y, 3, random_state=0)
        assert fit.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-9)
        np.testing.assert_allclose(fit.params.predict_mean(X * scale),
                                   ref.params.predict_mean(X), rtol=1e-6, atol=1e-8)


def test_constant_and_duplicated_columns_give_finite_fit(rng):
    """Documented behaviour: collinear columns are allowed; the least-squares and
    Newton solves take minimum-norm solutions, so the fitted model (as a function)
    is the one fitted without the redundant columns."""
    X, y, _, _ = make_moe_regression(1000, 2, 2, random_state=2)
    Xext = np.column_stack([X, np.full(1000, 3.0), X[:, 0]])
    ref = fit_moe(X, y, 2, init="random", random_state=0)
    fit = fit_moe(Xext, y, 2, init="random", random_state=0)
    assert np.all(np.isfinite(fit.params.expert_aug))
    assert np.all(np.isfinite(fit.params.gate_aug))
    np.testing.assert_allclose(fit.log_likelihood, ref.log_likelihood, rtol=1e-8)


def test_duplicated_rows_are_fine(rng):
    X, y, _, _ = make_moe_regression(200, 2, 2, random_state=0)
    X, y = np.vstack([X, X]), np.concatenate([y, y])
    fit = fit_moe(X, y, 2, random_state=0)
    assert np.isfinite(fit.log_likelihood)


BAD = [
    (dict(X=np.ones(5)), "must be 2-D"),
    (dict(X=np.ones((0, 2)), y=np.ones(0)), "is empty"),
    (dict(X=np.array([[1.0, np.nan]] * 4)), "NaN or infinity"),
    (dict(y=np.array([np.inf, 1, 2, 3])), "y contains NaN"),
    (dict(y=np.ones(3)), "inconsistent numbers of samples"),
    (dict(X=np.array([["a", "b"]] * 4)), "must be numeric"),
    (dict(X=np.arange(8.0).reshape(4, 2).astype(str)), r"must be numeric; got dtype <U"),
    (dict(y=np.arange(4.0).astype(bytes)), r"y must be numeric; got dtype \|S"),
    (dict(n_experts=0), "n_experts must be an int >= 1; got 0"),
    (dict(n_experts=5), "more than the number of samples"),
    (dict(sample_weight=-np.ones(4)), "sample_weight must be >= 0"),
    (dict(sample_weight=np.zeros(4)), "zero everywhere"),
    (dict(sample_weight=np.ones(3)), r"sample_weight must have shape \(4,\)"),
    (dict(init="bogus"), "init must be one of"),
    (dict(max_iter=0), "max_iter must be an int >= 1"),
    (dict(tol=-1.0), "tol must be a finite number"),
    (dict(reg_var=0.0), "reg_var must be a finite number > 0"),
    (dict(random_state="x"), "random_state must be"),
    (dict(n_threads=0), "n_threads must be None or an int >= 1"),
]


@pytest.mark.parametrize("kwargs,match", BAD)
def test_bad_input(kwargs, match):
    args = dict(X=np.arange(8.0).reshape(4, 2), y=np.arange(4.0), n_experts=2)
    args.update(kwargs)
    X, y, K = args.pop("X"), args.pop("y"), args.pop("n_experts")
    with pytest.raises(ValueError, match=match):
        fit_moe(X, y, K, **args)


def _truth_start(data, truth):
    """(alpha, beta, var) of the true model, on data's centred response."""
    beta = truth.expert_aug.copy()
    beta[:, 0] -= data.y_shift
    return truth.gate_aug, beta, truth.expert_var.copy()


def _run_with_scaled_gate_steps(small, monkeypatch, factor, max_iter):
    """run_em from the truth with every gate step scaled by ``factor``: its
    history, and how often step halving evaluated the gate objective."""
    from fastmoe import _em
    from fastmoe._em import EMData, run_em

    X, y, truth, _ = small
    data = EMData(X, y, np.ones(len(y)), 3, 1)
    real = _em.newton_direction
    direct = []
    objective = _em.gate_objective
    monkeypatch.setattr(_em, "gate_objective", lambda *a: direct.append(1) or objective(*a))
    monkeypatch.setattr(_em, "newton_direction", lambda *a: real(*a) * factor)
    out = run_em(data, *_truth_start(data, truth), max_iter=max_iter, tol=0.0, gate_steps=1,
                 var_floor=1e-9)
    return out[6], len(direct)


def test_an_overflowing_gate_step_is_halved_not_fatal(small, monkeypatch):
    # a full step that overflows the gate logits: the check pass fails, EM halves
    history, _ = _run_with_scaled_gate_steps(small, monkeypatch, 1e308, max_iter=3)
    assert np.all(np.isfinite(history))
    assert np.all(np.diff(history) >= -1e-10 * np.abs(history[1:]))


def test_the_gate_check_from_the_log_partition_is_the_objectives_gain(small):
    """The ascent check of a gate step, sum_k step_k . m_k minus the change of
    the log-partition, is Q(alpha + step) - Q(alpha) for the pass's
    responsibilities."""
    import naive

    from fastmoe._em import EMData

    X, y, truth, _ = small
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(y))
    for weights in (np.ones(len(y)), w):
        data = EMData(X, y, weights, 3, 2)
        alpha, beta, var = _truth_start(data, truth)
        data.e_step(alpha, beta, var, keep_resp=True)
        R = data.resp.copy()
        sums, part = data.target_sums().copy(), data.log_partition
        q0 = naive.gate_objective(X, weights, R, alpha)
        np.testing.assert_allclose(np.sum(alpha * sums) - part, q0, rtol=1e-10)
        for scale in (0.3, -0.3):
            step = scale * np.random.default_rng(2).standard_normal(alpha.shape)
            step[-1] = 0.0
            data.e_step(alpha + step, beta, var)
            gain = np.sum(step * sums) - (data.log_partition - part)
            np.testing.assert_allclose(gain, naive.gate_objective(X, weights, R, alpha + step) - q0,
                                       rtol=1e-8)


def test_a_gate_step_that_lowers_the_objective_is_halved(small, monkeypatch):
    # a step 5 times too long overshoots: the check fails, EM halves it
    history, direct = _run_with_scaled_gate_steps(small, monkeypatch, 5.0, max_iter=4)
    assert direct  # the halving path ran
    assert np.all(np.diff(history) >= -1e-10 * np.abs(history[1:]))


def test_pass_derives_the_heaviest_experts_gram_from_the_total(small, monkeypatch):
    """From its second pass on, EMData leaves the heaviest expert of the last
    pass out of the kernel and takes its Gram matrix as the total minus the
    others; where that expert lost most of its weight the pass is redone with
    every expert summed."""
    import naive

    from fastmoe import _em
    from fastmoe._em import EMData

    skips = []
    kernel = _em._kernels.em_pass
    monkeypatch.setattr(_em._kernels, "em_pass",
                        lambda *a: skips.append(a[-1]) or kernel(*a))

    X, y, truth, _ = small
    w = np.random.default_rng(0).uniform(0.5, 2.0, len(y))
    data = EMData(X, y, w, 3, 2)
    alpha, beta, var = _truth_start(data, truth)

    def reference(a, b, v):
        return naive.e_step(X, data.y, w, a, b, v)[2]

    data.e_step(alpha, beta, var)
    np.testing.assert_allclose(data.gram(), reference(alpha, beta, var), rtol=1e-10)
    heaviest = int(np.argmax(data.gram()[:, 0, 0]))
    data.e_step(alpha, beta, var)  # leaves `heaviest` out and derives it
    assert skips == [-1, heaviest]
    np.testing.assert_allclose(data.gram(), reference(alpha, beta, var), rtol=1e-10)
    # the left-out expert now gets almost no weight: the pass is redone
    starved = alpha.copy()
    starved[heaviest, 0] -= 40.0
    starved -= starved[-1]
    data.e_step(starved, beta, var)
    assert skips[2:] == [heaviest, -1]
    G = data.gram()
    assert 0 < G[heaviest, 0, 0] < 1e-3 * data.total_weight
    np.testing.assert_allclose(G, reference(starved, beta, var), rtol=1e-10)


@pytest.mark.parametrize("squarem", [False, True])
def test_the_last_pass_of_a_run_computes_no_statistics(small, monkeypatch, squarem):
    """run_em's last pass needs only the log-likelihood: it leaves out the
    Gram matrices and gate statistics, with the same log-likelihoods. With
    SQUAREM the third iteration is the jump's: a pass at the jump, with
    statistics, then the iteration's pass."""
    from fastmoe import _em
    from fastmoe._em import EMData, run_em


    with_stats = []
    kernel = _em._kernels.em_pass
    monkeypatch.setattr(_em._kernels, "em_pass",
                        lambda *a: with_stats.append(a[9] is not None) or kernel(*a))
    X, y, truth, _ = small
    data = EMData(X, y, np.ones(len(y)), 3, 2)
    alpha, beta, var = _truth_start(data, truth)
    start = dict(alpha=alpha * 0.5, beta=beta, var=var * 2)
    runs = [run_em(data, **start, max_iter=m, tol=0.0, gate_steps=1, var_floor=1e-9,
                   accelerate=squarem) for m in (3, 4)]
    jump = [True] if squarem else []
    assert with_stats == [True] * 3 + jump + [False] + [True] * 4 + jump + [False]
    np.testing.assert_array_equal(runs[0][6], runs[1][6][:4])
    assert data.gram() is None


def test_responsibilities_are_kept_or_recomputed(small):
    """EM passes do not write the responsibilities; EMData.responsibilities
    gives them for the parameters of any pass, kept by it or recomputed."""
    import naive

    from fastmoe._em import EMData

    X, y, truth, _ = small
    data = EMData(X, y, np.ones(len(y)), 3, 2)
    alpha, beta, var = _truth_start(data, truth)
    data.e_step(alpha, beta, var, keep_resp=True)
    first = data.params
    reference = np.exp(naive.e_step(X, data.y, data.w, alpha, beta, var)[0])
    np.testing.assert_allclose(data.responsibilities(first), reference, rtol=1e-10, atol=1e-14)
    data.e_step(alpha * 0.5, beta, var)  # another pass, not kept
    G = data.gram().copy()
    np.testing.assert_allclose(data.responsibilities(first), reference, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(data.gram(), G)  # recomputing leaves the pass's state


def test_squarem_ends_nearer_the_optimum_in_fewer_iterations():
    """A scale mixture (two experts on one line, noise 1 and 2), on which
    plain EM crawls: from the same start the accelerated EM (run_em's
    SQUAREM jumps) stops in fewer iterations and nearer the optimum (EM at
    tol=1e-14), its objective never decreasing, one history entry per
    iteration (a jump not kept repeats the last)."""
    for seed in range(3):
        X, y = scale_mixture(20000, seed, gate_slope=0.5)
        fits = {}
        for accelerated in (False, True):
            fits[accelerated] = fit_moe(X, y, 2, random_state=0, split_merge=False,
                                        accelerate=accelerated)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            optimum = max(fit_moe(X, y, 2, init=f.params, split_merge=False, tol=1e-14,
                                  max_iter=20000).log_likelihood for f in fits.values())
        plain, fast = fits[False], fits[True]
        assert fast.converged and fast.n_iter < plain.n_iter
        assert optimum - fast.log_likelihood < optimum - plain.log_likelihood
        assert optimum - fast.log_likelihood < 1e-3
        assert fast.n_iter == len(fast.history) - 1
        assert np.all(np.diff(fast.history) >= -1e-10 * np.abs(fast.history[1:]))


def _point_mass(seed):
    """Two regression lines, and 4% of the rows with the response exactly 2.0:
    an expert can sit on those rows with its variance at the floor."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2000, 2))
    y = np.where(rng.random(2000) < 0.5, 3 + X[:, 0], -1 - X[:, 1]) + rng.normal(size=2000)
    y[rng.random(2000) < 0.04] = 2.0
    return X, y


def test_a_start_with_an_expert_at_the_variance_floor_ranks_below_the_others():
    """Of eight starts on the point-mass design, most end with an expert on the
    tied rows at the variance floor, 250 nats higher: a spurious optimum of
    the unbounded likelihood. The fit keeps the best start without one."""
    X, y = _point_mass(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateExpertWarning)
        fit = fit_moe(X, y, 3, n_init=8, random_state=0)
    assert not fit.degenerate
    assert np.min(fit.params.expert_var) > 1e-3
    assert max(fit.init_log_likelihoods) > fit.log_likelihood + 100
    proper = [ll for ll in fit.init_log_likelihoods if ll < fit.log_likelihood + 1]
    assert fit.log_likelihood == pytest.approx(max(proper), abs=1e-6)


def test_every_start_at_the_variance_floor_is_kept_and_said():
    """Where every start collapses, the best of them is kept, with the
    warning."""
    X, y = _point_mass(1)
    with pytest.warns(DegenerateExpertWarning, match="collapsed to the floor"):
        fit = fit_moe(X, y, 3, n_init=1, random_state=0)
    assert fit.degenerate


def test_a_crawling_run_is_finished_by_newton_steps(small, monkeypatch):
    """After NEWTON_AFTER iterations, a run goes on by Newton steps on the
    exact observed information: it converges where EM run to a tolerance of
    1e-12 converges, within the rounds' own precision, independently of the
    threads, and its history still never decreases."""
    import fastmoe._em as em_module
    from fastmoe._options import NEWTON_TOL

    X, y, _, _ = small
    tight = fit_moe(X, y, 3, random_state=0, tol=1e-12, max_iter=20000, split_merge=False)
    monkeypatch.setattr(em_module, "NEWTON_AFTER", 4)
    fit = fit_moe(X, y, 3, random_state=0, split_merge=False)
    assert fit.converged and 4 < fit.n_iter < 40 and len(fit.history) == fit.n_iter + 1
    assert np.all(np.diff(fit.history) >= -1e-9 * abs(fit.log_likelihood))
    assert fit.log_likelihood == pytest.approx(fit.history[-1], rel=1e-12)
    assert abs(fit.log_likelihood - tight.log_likelihood) < NEWTON_TOL * 1e-7 * abs(
        tight.log_likelihood)
    np.testing.assert_allclose(fit.params.expert_aug, tight.params.expert_aug, atol=1e-3)
    one, two = (fit_moe(X, y, 3, random_state=0, split_merge=False, n_threads=t)
                for t in (1, 2))
    np.testing.assert_array_equal(one.params.expert_aug, two.params.expert_aug)
    assert one.log_likelihood == two.log_likelihood


def test_newton_rounds_finish_neither_a_penalised_nor_a_plain_run(small, monkeypatch):
    """Newton's method climbs the log-likelihood, not the penalised
    objective: a run with a gate penalty stays EM's; so does plain EM, the
    machines'."""
    import fastmoe._em as em_module

    X, y, _, _ = small
    plain = fit_moe(X, y, 3, random_state=0, gate_penalty=0.1, max_iter=60)
    monkeypatch.setattr(em_module, "NEWTON_AFTER", 4)
    again = fit_moe(X, y, 3, random_state=0, gate_penalty=0.1, max_iter=60)
    assert again.n_iter == plain.n_iter and again.log_likelihood == plain.log_likelihood
    # nor does plain EM (the machines' local fits)
    slow = fit_moe(X, y, 3, random_state=0, accelerate=False, max_iter=60)
    monkeypatch.setattr(em_module, "NEWTON_AFTER", 10**6)
    assert fit_moe(X, y, 3, random_state=0, accelerate=False, max_iter=60).n_iter == slow.n_iter

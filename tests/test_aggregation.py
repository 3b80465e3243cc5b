"""OT reduction: kernel against the naive tensors, properties, known answers."""

import functools

import naive
import numpy as np
import pytest
from conftest import read_only, reference
from scipy import integrate
from scipy.stats import norm

from fastmoe import (
    MoEParams,
    _kernels,
    _reduction,
    aggregate,
    aligned_average,
    fit_moe,
    medoid,
    naive_average,
    transport_divergence,
)
from fastmoe._linalg import n_chunks, unpack_sym
from fastmoe._reduction import _run_mm, large_mixture, mm_pass, support_cache
from fastmoe.datasets import make_moe_regression
from fastmoe.diagnostics import align_to, parameter_rmse


def random_model(rng, K, d, spread=1.0):
    return MoEParams(rng.standard_normal((K, d)), rng.standard_normal(K),
                     rng.standard_normal((K, d)), spread * rng.standard_normal(K),
                     rng.uniform(0.3, 2.0, K))


def test_local_support_against_naive(rng):
    models = [random_model(rng, K, 3) for K in (2, 3, 1)]
    lam = np.array([0.5, 0.3, 0.2])
    Xs = rng.standard_normal((300, 3))
    Xs.setflags(write=False)
    gate = np.vstack([m.gate_aug for m in models])
    expert = np.vstack([m.expert_aug for m in models])
    starts = np.array([0, 2, 5, 6], dtype=np.int64)
    for n_threads in (1, 2):
        W, ML = np.empty((300, 6)), np.empty((300, 6))
        _kernels.local_support(Xs, gate, expert, starts, lam, W, ML, n_threads=n_threads)
        np.testing.assert_allclose(W, naive.local_weights(models, lam, Xs), rtol=1e-12)
        np.testing.assert_allclose(ML, naive.xt(Xs) @ expert.T, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cost", ["kl", "w2"])
@pytest.mark.parametrize("S,d,Ks,K", [(1, 1, (1,), 1), (7, 2, (2, 3), 2), (2500, 3, (3, 3, 2), 2),
                                      (700, 9, (5, 4, 6), 6), (600, 21, (5,) * 8, 5)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_mm_pass_against_naive_tensors(kernel_path, cost, S, d, Ks, K, n_threads):
    # shapes cover the kernel's edges: one target, L not a multiple of 8,
    # K not a multiple of 4, p past several column blocks of 8, chunks of rows
    (models, lam, Xs, beta, var, W, ML), refs = _mm_reference(cost, S, d, Ks, K)
    obj, P, g_ref, l_ref, s_ref, assign_ref = refs
    expert = np.vstack([m.expert_aug for m in models])
    vl = np.concatenate([m.expert_var for m in models])
    L, p = expert.shape[0], d + 1
    chunk = 256
    nc = n_chunks(S, chunk)
    gram = np.empty((nc, K, p * (p + 1) // 2))
    lin, scal = np.empty((nc, K, p)), np.empty((nc, K, 2))
    mass, lobj = np.empty((nc, K, L)), np.empty((nc, L))
    assign = np.empty((S, L), dtype=np.int16)
    _kernels.mm_pass(Xs, W, ML, vl, (beta, var), _kernels.KL if cost == "kl" else _kernels.W2,
                     chunk, (gram, lin, scal, mass, lobj, assign), n_threads=n_threads)
    np.testing.assert_allclose(lobj.sum(), obj, rtol=1e-10)
    np.testing.assert_allclose(unpack_sym(gram.sum(axis=0), p), g_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lin.sum(axis=0), l_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scal.sum(axis=0), s_ref[:, :2], rtol=1e-10, atol=1e-12)
    mass = mass.sum(axis=0).T  # (L, K)
    # the variance sums come from the mass (as aggregation.mm_pass does)
    np.testing.assert_allclose(mass.T @ vl, s_ref[:, 2], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mass.T @ np.sqrt(vl), s_ref[:, 3], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mass, P.sum(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(assign, assign_ref)


@functools.cache
def _mm_reference(cost, S, d, Ks, K):
    """The problem of test_mm_pass_against_naive_tensors and its slow
    references (tests/naive.py), once per shape and cost, not again in every
    cell of the kernel path and thread count grid; every array read-only,
    since every cell shares them."""
    rng = np.random.default_rng([S, d, K, *Ks])
    models = [random_model(rng, k, d) for k in Ks]
    lam = rng.uniform(1, 3, len(Ks))
    lam /= lam.sum()
    Xs = rng.standard_normal((S, d))
    beta = rng.standard_normal((K, d + 1))
    var = rng.uniform(0.3, 2.0, K)
    expert = np.vstack([m.expert_aug for m in models])
    W = naive.local_weights(models, lam, Xs)
    ML = naive.xt(Xs) @ expert.T
    refs = (*naive.mm_pass(models, lam, Xs, beta, var, cost),
            np.argmin(naive.cost_tensor(models, Xs, beta, var, cost), axis=2))
    return read_only((models, lam, Xs, beta, var, W, ML)), read_only(refs)


def test_mm_pass_with_and_without_cache_agree(rng, monkeypatch):
    # without a cache the pass recomputes the local support in blocks of whole
    # chunks: the chunks, and so the sums, are the same
    models = [random_model(rng, 3, 2) for _ in range(4)]
    mix = large_mixture(models, [1, 2, 3, 4])
    Xs = rng.standard_normal((5000, 2))
    beta, var = rng.standard_normal((3, 3)), np.ones(3)
    ref = mm_pass(mix, Xs, beta, var, _kernels.KL, 2, want_assign=True,
                  cache=support_cache(mix, Xs))
    monkeypatch.setattr(_reduction, "BLOCK_BYTES", 1)  # blocks of one chunk each
    out = mm_pass(mix, Xs, beta, var, _kernels.KL, 2, want_assign=True)
    assert out.objective == ref.objective
    np.testing.assert_array_equal(out.gram, ref.gram)
    np.testing.assert_array_equal(out.mass, ref.mass)
    np.testing.assert_array_equal(out.assign, ref.assign)


@pytest.mark.parametrize("K", [1, 3, 6])
def test_mm_pass_skip_derives_a_gram_from_the_total(rng, kernel_path, K):
    # the kernel leaves the skipped target's Gram matrix zero; mm_pass takes it
    # as the support's total minus the others (the D_k(s) sum to sum_l w_l(x_s))
    models = [random_model(rng, 4, 3) for _ in range(3)]
    mix = large_mixture(models, [1, 2, 3])
    Xs = rng.standard_normal((3000, 3))
    beta, var = rng.standard_normal((K, 4)), rng.uniform(0.5, 2.0, K)
    cache = support_cache(mix, Xs)
    ref = mm_pass(mix, Xs, beta, var, _kernels.KL, 2, cache=cache)
    for skip in range(K):
        out = mm_pass(mix, Xs, beta, var, _kernels.KL, 2, cache=cache, skip=skip)
        np.testing.assert_allclose(out.gram, ref.gram, rtol=1e-10,
                                   atol=1e-12 * np.abs(ref.gram).max())
        np.testing.assert_array_equal(out.lin, ref.lin)
        assert out.objective == ref.objective
    with pytest.raises(ValueError, match="skip"):
        mm_pass(mix, Xs, beta, var, _kernels.KL, 2, cache=cache, skip=K)


def test_support_cache_without_room_keeps_the_total(rng, monkeypatch):
    # a support too large for the cache: no local weights and means kept, the
    # weighted total computed block by block, and passes with a skipped target
    # agree with the cached ones
    models = [random_model(rng, 3, 2) for _ in range(3)]
    mix = large_mixture(models, [1, 2, 3])
    Xs = rng.standard_normal((4000, 2))
    beta, var = rng.standard_normal((3, 3)), np.ones(3)
    full = support_cache(mix, Xs)
    monkeypatch.setattr(_reduction, "CACHE_BYTES", 1)
    monkeypatch.setattr(_reduction, "BLOCK_BYTES", 2 * 8 * 9 * 700)  # blocks of 700 points
    small = support_cache(mix, Xs)
    assert small.W.shape == (0, 9) and small.ML.shape == (0, 9)
    np.testing.assert_allclose(small.gram_total, full.gram_total, rtol=1e-12)
    ref = mm_pass(mix, Xs, beta, var, _kernels.KL, 2, cache=full, skip=1)
    out = mm_pass(mix, Xs, beta, var, _kernels.KL, 2, cache=small, skip=1)
    np.testing.assert_allclose(out.gram, ref.gram, rtol=1e-12)
    assert out.objective == ref.objective


def test_mm_pass_rejects_inconsistent_buffers(rng):
    Xs, W = rng.standard_normal((10, 2)), np.full((10, 3), 1 / 3)
    out = (np.empty((1, 2, 6)), np.empty((1, 2, 3)), np.empty((1, 2, 2)), np.empty((1, 2, 3)),
           np.empty((1, 3)), np.empty((0, 3), dtype=np.int16))
    targets = (np.zeros((2, 3)), np.ones(2))
    _kernels.mm_pass(Xs, W, W, np.ones(3), targets, _kernels.KL, 16, out)
    with pytest.raises(ValueError, match="shapes"):
        _kernels.mm_pass(Xs, W[:, :2].copy(), W, np.ones(3), targets, _kernels.KL, 16, out)
    with pytest.raises(ValueError, match="chunks"):
        _kernels.mm_pass(Xs, W, W, np.ones(3), targets, _kernels.KL, 4, out)


def test_kl_closed_form_against_integration():
    m1, v1, m2, v2 = 0.3, 0.7, -1.1, 2.5
    f = lambda y: norm.pdf(y, m1, np.sqrt(v1)) * (norm.logpdf(y, m1, np.sqrt(v1))  # noqa: E731
                                                  - norm.logpdf(y, m2, np.sqrt(v2)))
    kl, _ = integrate.quad(f, -30, 30)
    src = MoEParams(np.zeros((1, 1)), [0.0], np.zeros((1, 1)), [m1], [v1])
    tgt = MoEParams(np.zeros((1, 1)), [0.0], np.zeros((1, 1)), [m2], [v2])
    X = np.zeros((3, 1))
    np.testing.assert_allclose(transport_divergence(src, tgt, X, cost="kl"), 3 * kl, rtol=1e-9)


def test_w2_closed_form_against_pot():
    ot_gmm = pytest.importorskip("ot.gmm")
    m1, v1, m2, v2 = 0.3, 0.7, -1.1, 2.5
    ref = ot_gmm.dist_bures_squared(np.array([[m1]]), np.array([[m2]]), np.array([[[v1]]]),
                                    np.array([[[v2]]]))[0, 0]
    src = MoEParams(np.zeros((1, 1)), [0.0], np.zeros((1, 1)), [m1], [v1])
    tgt = MoEParams(np.zeros((1, 1)), [0.0], np.zeros((1, 1)), [m2], [v2])
    np.testing.assert_allclose(transport_divergence(src, tgt, np.zeros((2, 1)), cost="w2"),
                               2 * ref, rtol=1e-9)
    np.testing.assert_allclose(ref, (m1 - m2) ** 2 + (np.sqrt(v1) - np.sqrt(v2)) ** 2,
                               rtol=1e-9)


@pytest.mark.parametrize("cost", ["kl", "w2"])
def test_identical_models_aggregate_back(rng, cost):
    model = random_model(rng, 3, 2, spread=4.0)
    Xs = rng.standard_normal((3000, 2))
    res = aggregate([model] * 4, X_support=Xs, cost=cost, random_state=0)
    assert res.objective < 1e-9
    back = align_to(res.params, model)
    np.testing.assert_allclose(back.expert_aug, model.expert_aug, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(back.expert_var, model.expert_var, rtol=1e-8)
    np.testing.assert_allclose(back.gate_aug, model.gate_aug, atol=1e-5)


def _noisy_copies(rng, model, M, scale=0.05):
    out = []
    for _ in range(M):
        out.append(MoEParams(model.gate_coef + scale * rng.standard_normal(model.gate_coef.shape),
                             model.gate_intercept, model.expert_coef
                             + scale * rng.standard_normal(model.expert_coef.shape),
                             model.expert_intercept + scale * rng.standard_normal(3),
                             model.expert_var * np.exp(scale * rng.standard_normal(3))))
    return out


def test_permutations_change_nothing(rng):
    model = random_model(rng, 3, 2, spread=4.0)
    locals_ = _noisy_copies(rng, model, 4)
    Xs = rng.standard_normal((2000, 2))
    sizes = [100, 200, 300, 400]
    ref = aggregate(locals_, sample_sizes=sizes, X_support=Xs, n_init=1)
    perm_inside = [m.permute(rng.permutation(3)) for m in locals_]
    order = [2, 0, 3, 1]
    for models, sz in ((perm_inside, sizes), ([locals_[i] for i in order],
                                               [sizes[i] for i in order])):
        res = aggregate(models, sample_sizes=sz, X_support=Xs, n_init=1)
        np.testing.assert_allclose(res.objective, ref.objective, rtol=1e-9)
        np.testing.assert_allclose(res.params.expert_aug, ref.params.expert_aug, rtol=1e-8,
                                   atol=1e-10)
        np.testing.assert_allclose(res.params.gate_aug, ref.params.gate_aug, rtol=1e-6,
                                   atol=1e-8)


@pytest.mark.parametrize("cost", ["kl", "w2"])
def test_a_warm_start_from_the_aggregate_stays_there(rng, monkeypatch, cost):
    """init=an aggregate's params starts the MM at its optimum: no k-means
    start, one or two passes, the same experts and objective; a start from
    elsewhere moves."""
    model = random_model(rng, 3, 2, spread=4.0)
    locals_ = _noisy_copies(rng, model, 4)
    Xs = rng.standard_normal((1500, 2))
    cold = aggregate(locals_, X_support=Xs, cost=cost, init="kmeans", n_init=2, random_state=0)
    monkeypatch.setattr(_reduction, "_kmeans_start", None)  # a warm start never calls it
    warm = aggregate(locals_, X_support=Xs, cost=cost, init=cold.params, n_init=2)
    assert warm.n_iter <= 1
    assert warm.objective <= cold.objective * (1 + 1e-9)
    np.testing.assert_allclose(warm.params.expert_aug, cold.params.expert_aug, atol=1e-6)
    np.testing.assert_allclose(warm.params.expert_var, cold.params.expert_var, rtol=1e-6)
    far = aggregate(locals_, X_support=Xs, cost=cost, init=random_model(rng, 3, 2))
    assert far.n_iter > 1
    assert far.history[0] > cold.objective


@pytest.mark.parametrize("cost", ["kl", "w2"])
def test_objective_never_increases(rng, cost):
    locals_ = [random_model(rng, 3, 2, spread=3.0) for _ in range(5)]
    Xs = rng.standard_normal((1500, 2))
    res = aggregate(locals_, X_support=Xs, cost=cost, init="kmeans", n_init=2, random_state=1)
    steps = np.diff(res.history)
    assert np.all(steps <= 1e-12 * res.history[0])
    assert res.objective == pytest.approx(res.history[-1], rel=1e-12)


def test_heterogeneous_numbers_of_experts(rng):
    model = random_model(rng, 2, 2, spread=5.0)
    bigger = MoEParams(np.vstack([model.gate_coef, [[0, 0]]]),
                       np.append(model.gate_intercept, -30.0),
                       np.vstack([model.expert_coef, [[1, 1]]]),
                       np.append(model.expert_intercept, 0.0), np.append(model.expert_var, 1.0))
    Xs = rng.standard_normal((1000, 2))
    with pytest.raises(ValueError, match="different numbers of experts"):
        aggregate([model, bigger], X_support=Xs)
    res = aggregate([model, bigger], n_experts=2, X_support=Xs, random_state=0)
    assert res.assignment.shape == (1000, 5)
    back = align_to(res.params, model)
    np.testing.assert_allclose(back.expert_aug, model.expert_aug, atol=1e-3)


def test_empty_global_expert_is_reseeded(rng):
    model = random_model(rng, 2, 1, spread=4.0)
    mix = large_mixture([model, model])
    Xs = rng.standard_normal((500, 1))
    beta = np.array([[0.0, 0.0], [1e6, 0.0]])  # the second target is unreachable
    with np.errstate(all="raise"):
        beta_out, var_out, hist, _, _, notes, _ = _run_mm(
            mix, Xs, beta, np.ones(2), cost=_kernels.KL, variance_update="exact",
            max_iter=50, tol=0.0, n_threads=1)
    assert notes and "received no mass and was re-seeded" in notes[0]
    assert np.all(np.isfinite(beta_out)) and np.all(var_out > 0)
    assert hist[-1] < 1e-9


def test_baselines(rng):
    model = random_model(rng, 3, 2, spread=4.0)
    locals_ = _noisy_copies(rng, model, 3, scale=0.02)
    Xs = rng.standard_normal((1000, 2))
    for fn in (aligned_average, medoid):
        res = fn(locals_, X_support=Xs)
        assert res.method == fn.__name__
        assert parameter_rmse(res.params, model)["experts"] < 0.05
    shuffled = [locals_[0], locals_[1].permute([2, 0, 1]), locals_[2].permute([1, 2, 0])]
    good = aligned_average(shuffled, X_support=Xs)
    bad = naive_average(shuffled, X_support=Xs)
    assert bad.objective > 10 * good.objective


@pytest.mark.parametrize("kwargs,match", [
    (dict(local_models=[]), "local_models is empty"),
    (dict(cost="tv"), "cost must be one of"),
    (dict(sample_sizes=[1, 0]), r"sample_sizes\[1\] = 0.0"),
    (dict(sample_sizes=[1, 2, 3]), "sample_sizes has 3 entries for 2"),
    (dict(X_support=np.ones((50, 3))), "X_support has 3 features"),
    (dict(X_support=np.ones((2, 2))), r"needs at least \(d\+1\)\(K-1\) = 6"),
    (dict(gate_target="posterior"), "needs y_support"),
    (dict(gate_target="x"), "gate_target must be one of"),
    (dict(n_experts=7), "more than the 6 local experts"),
    (dict(init=MoEParams(np.zeros((2, 2)), np.zeros(2), np.zeros((2, 2)), np.zeros(2),
                         np.ones(2))), "init has 2 experts on 2 features; the aggregate "
                                       "needs 3 on 2"),
    (dict(init="warm"), "init must be one of"),
    (dict(local_models=["nope", None]), r"local_models\[0\] is a str"),
    (dict(local_models=[{"format": "fastmoe.MoEParams", "version": 1, "n_experts": 1,
                         "n_features": 1, "gate_coef": [[0]], "gate_intercept": [0],
                         "expert_coef": [[1]], "expert_intercept": [0],
                         "expert_var": [-1]}]), r"local_models\[0\]: expert_var must be"),
])
def test_bad_input(rng, kwargs, match):
    args = dict(local_models=[random_model(rng, 3, 2), random_model(rng, 3, 2)],
                X_support=rng.standard_normal((50, 2)))
    args.update(kwargs)
    models = args.pop("local_models")
    with pytest.raises(ValueError, match=match):
        aggregate(models, **args)


def test_models_with_different_widths(rng):
    with pytest.raises(ValueError, match=r"local_models\[1\] has 3 features"):
        aggregate([random_model(rng, 2, 2), random_model(rng, 2, 3)],
                  X_support=np.ones((10, 2)))


# ---------------------------------------------------------------------------
# known answers from the authors' code (reference data, skipped when absent)
# ---------------------------------------------------------------------------
def _authors_run(M):
    pre = f"A_M{M}_"
    le, lg = reference(pre + "local_experts"), reference(pre + "local_gates")
    lv = reference(pre + "local_variances")
    locals_ = [MoEParams.from_aug(lg[:, :, m].T, le[:, :, m].T, lv[:, m]) for m in range(M)]
    sizes = [reference(pre + "machine_indices").shape[1]] * M
    X = reference("A_X")
    return locals_, sizes, X[reference(pre + "support_indices")]


@pytest.mark.parametrize("M", [4, 16])
def test_published_variance_update_reproduces_the_authors(M):
    locals_, sizes, Xs = _authors_run(M)
    trace = reference(f"A_M{M}_mm_objective_trace")
    theirs = MoEParams.from_aug(reference(f"A_M{M}_dme_gates").T,
                                reference(f"A_M{M}_dme_experts").T,
                                reference(f"A_M{M}_dme_variances"))
    res = aggregate(locals_, sample_sizes=sizes, X_support=Xs, variance_update="published",
                    random_state=0)
    assert res.objective <= trace[-1] * (1 + 1e-9)
    ours = align_to(res.params, theirs)
    np.testing.assert_allclose(ours.expert_aug, theirs.expert_aug, atol=1e-3)


@pytest.mark.parametrize("M", [4, 16])
def test_default_gates_beat_the_authors(M):
    locals_, sizes, Xs = _authors_run(M)
    truth = MoEParams.from_aug(reference("A_true_gates").T, reference("A_true_experts").T,
                               reference("A_true_variances"))
    central = MoEParams.from_aug(reference("A_global_gates").T,
                                 reference("A_global_experts").T,
                                 reference("A_global_variances"))
    X, y = reference("A_X")[90000:], reference("A_Y")[90000:]
    res = aggregate(locals_, sample_sizes=sizes, X_support=Xs, random_state=0)
    assert parameter_rmse(res.params, truth)["gates"] < 0.1
    ll, ll_central = res.params.log_likelihood(X, y), central.log_likelihood(X, y)
    assert abs(ll - ll_central) < 1e-3 * abs(ll_central)


@pytest.mark.parametrize("gate_target", ["assigned", "plan", "posterior", "kl"])
def test_every_gate_target_refits_gates_close_to_the_truth(gate_target):
    """Each gate target runs to a model whose gates are near the truth's, and
    the experts (which the targets do not touch) are the same for all."""
    X, y, truth, _ = make_moe_regression(12000, 2, 3, random_state=11)
    fits = [fit_moe(X[i::4], y[i::4], 3, random_state=i).params for i in range(4)]
    Xs, ys = X[::8], y[::8]
    extra = dict(y_support=ys) if gate_target == "posterior" else {}
    res = aggregate(fits, sample_sizes=[3000] * 4, X_support=Xs, gate_target=gate_target,
                    random_state=0, **extra)
    base = aggregate(fits, sample_sizes=[3000] * 4, X_support=Xs, random_state=0)
    np.testing.assert_allclose(res.params.expert_coef, base.params.expert_coef, rtol=1e-12)
    est = align_to(res.params, truth)
    gap = np.abs(est.gate_proba(Xs) - truth.gate_proba(Xs)).mean()
    assert gap < 0.05, gap


@pytest.mark.parametrize("M,restarts", [(40, 0), (4, 2)])
def test_kmeans_restarts_skip_only_when_nearly_all_the_weight_maps_one_to_one(
        rng, monkeypatch, M, restarts):
    """One machine of M has two copies of one expert (it collapses onto fewer
    targets): with 1/40 of the weight the aligned start is kept alone; with
    1/4 (over 1 - ONE_TO_ONE_SHARE) the k-means restarts still run."""
    truth = random_model(rng, 3, 2, spread=8.0)
    b, v = truth.expert_aug, truth.expert_var
    dup = MoEParams(truth.gate_coef, truth.gate_intercept,
                    np.array([b[0, 1:], b[0, 1:], b[2, 1:]]),
                    np.array([b[0, 0], b[0, 0] + 1e-3, b[2, 0]]), v)
    mix = large_mixture([truth] * (M - 1) + [dup])
    assert (1 / M < 1 - _reduction.ONE_TO_ONE_SHARE) == (restarts == 0)
    calls = []
    start = _reduction._kmeans_start

    def counted(*args):
        calls.append(1)
        return start(*args)

    monkeypatch.setattr(_reduction, "_kmeans_start", counted)
    Xs = rng.standard_normal((400, 2))
    _reduction.reduce_mixture(mix, Xs, 3, cost=_reduction.COSTS["kl"], n_init=3, max_iter=50,
                              tol=1e-10, rng=np.random.default_rng(0), n_threads=1)
    assert len(calls) == restarts

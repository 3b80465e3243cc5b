"""Every compiled kernel against tests/naive.py."""

import functools

import naive
import numpy as np
import pytest
from conftest import read_only
from scipy.special import logsumexp

from fastmoe import MoEParams, _kernels
from fastmoe._linalg import chunk_size, n_chunks, solve_psd, unpack_sym

SHAPES = [(1, 1, 1), (1, 3, 2), (7, 1, 3), (50, 2, 1), (2500, 3, 4)]
RTOL = 1e-10


def _problem(rng, n, d, K, readonly=False):
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n) * 2
    w = rng.uniform(0.2, 2.0, n)
    alpha = rng.standard_normal((K, d + 1))
    alpha[-1] = 0
    beta = rng.standard_normal((K, d + 1))
    var = rng.uniform(0.3, 2.0, K)
    R = rng.dirichlet(np.ones(K), size=n)
    arrays = [X, y, w, alpha, beta, var, R]
    if readonly:
        for a in arrays:
            a.setflags(write=False)
    return arrays


# The slow references (tests/naive.py) depend on the problem only, so each is
# computed once per shape, not again in every cell of the kernel path, thread
# count and read-only grid; the problem is the one the ``rng`` fixture's seed
# draws.
@functools.cache
def _e_step_reference(n, d, K):
    problem = _problem(np.random.default_rng(12345), n, d, K)
    X, y, w, alpha, beta, var, _ = problem
    return read_only(problem), read_only(naive.e_step(X, y, w, alpha, beta, var))


@functools.cache
def _gate_reference(n, d, K):
    problem = _problem(np.random.default_rng(12345), n, d, K)
    X, _, w, alpha, _, _, R = problem
    R[0] *= 0.5  # rows need not sum to one
    refs = (*naive.gate_newton(X, w, R, alpha), naive.gate_objective(X, w, R, alpha))
    return read_only(problem), read_only(refs)


def _assert_information_blocks(info, info_ref, K, p):
    """The kernels' per-chunk packed blocks a <= b against the dense matrix."""
    blocks = unpack_sym(info.sum(axis=0), p)
    jj = 0
    for a in range(K - 1):
        for b in range(a, K - 1):
            np.testing.assert_allclose(blocks[jj], info_ref[a * p:(a + 1) * p, b * p:(b + 1) * p],
                                       rtol=RTOL, atol=1e-11)
            jj += 1


@pytest.mark.parametrize("n,d,K", SHAPES)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("readonly", [False, True])
def test_e_step(kernel_path, n, d, K, n_threads, readonly):
    (X, y, w, alpha, beta, var, _), (lr_ref, ll_ref, gram_ref) = _e_step_reference(n, d, K)
    if not readonly:
        X, y, w, alpha, beta, var = (a.copy() for a in (X, y, w, alpha, beta, var))
    chunk = chunk_size(n)
    q = d + 2
    log_resp = np.empty((n, K))
    row_ll = np.empty(n)
    stats = np.empty((n_chunks(n, chunk), K, q * (q + 1) // 2))
    bad = _kernels.e_step(X, y, w, alpha, beta, var, log_resp, row_ll, stats, chunk, n_threads)
    assert bad == 0
    np.testing.assert_allclose(log_resp, lr_ref, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(row_ll, ll_ref, rtol=RTOL)
    np.testing.assert_allclose(unpack_sym(stats.sum(axis=0), q), gram_ref, rtol=RTOL,
                               atol=1e-12)
    np.testing.assert_allclose(np.exp(log_resp).sum(axis=1), 1.0, rtol=1e-12)


def _log_partition(X, alpha):
    """(n,) log sum_k exp(alpha_k . xt_i), row by row."""
    Z = naive.xt(X)
    return np.array([logsumexp([Z[i] @ a for a in alpha]) for i in range(X.shape[0])])


@functools.cache
def _em_reference(n, d, K, weights):
    """The problem of test_em_pass and its slow references, once per shape
    and weights."""
    X, y, w, alpha, beta, var, _ = _problem(np.random.default_rng(12345), n, d, K)
    if weights == "ones":
        w = np.ones(n)
    lr_ref, ll_ref, gram_ref = naive.e_step(X, y, w, alpha, beta, var)
    R = np.exp(lr_ref)
    refs = (R, ll_ref, gram_ref, *naive.gate_newton(X, w, R, alpha), _log_partition(X, alpha))
    return read_only((X, y, w, alpha, beta, var)), read_only(refs)


# n=2503: several chunks and a short block of buffered rows; d=20, K=5: Gram
# accumulators beyond FM_PAIRED_BYTES (one column at a time on the AVX2 path);
# unit weights take the logs of products of the rows' sums, other weights a
# log per row
@pytest.mark.parametrize("n,d,K", SHAPES[:-1] + [(2503, 3, 4), (300, 20, 5)])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("weights", ["random", "ones"])
def test_em_pass(kernel_path, n, d, K, n_threads, readonly, weights):
    (X, y, w, alpha, beta, var), (R, ll_ref, gram_ref, q_ref, grad_ref, info_ref, log_z) = \
        _em_reference(n, d, K, weights)
    if not readonly:
        X, y, w, alpha, beta, var = (a.copy() for a in (X, y, w, alpha, beta, var))
    resp, row_ll, stats, grad, info, obj = _em_buffers(n, d, K)
    q, p = d + 2, d + 1
    bad = _kernels.em_pass(X, y, w, alpha, beta, var, resp, row_ll, stats, grad, info, obj,
                           chunk_size(n), n_threads)
    assert bad == 0
    np.testing.assert_allclose(resp, R, rtol=RTOL, atol=1e-14)
    np.testing.assert_allclose(row_ll, ll_ref, rtol=RTOL)
    np.testing.assert_allclose(obj[:, 0].sum(), w @ ll_ref, rtol=RTOL)
    gram = unpack_sym(stats.sum(axis=0), q)
    np.testing.assert_allclose(gram, gram_ref, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(obj[:, 1].sum(), w @ log_z, rtol=RTOL)
    # the gate objective from the Gram matrices' first rows and the log-partition
    np.testing.assert_allclose(np.sum(alpha * gram[:, 0, :p]) - obj[:, 1].sum(), q_ref,
                               rtol=RTOL, atol=1e-10)
    np.testing.assert_allclose(grad.sum(axis=0), grad_ref, rtol=RTOL, atol=1e-11)
    _assert_information_blocks(info, info_ref, K, p)
    # without resp and row_ll, nothing else changes (unit weights: also without
    # the per-row logs that row_ll needs)
    out2 = _em_buffers(n, d, K)
    out2[0][:] = out2[1][:] = 7.0
    _kernels.em_pass(X, y, w, alpha, beta, var, np.empty((0, K)), np.empty(0), *out2[2:],
                     chunk_size(n), n_threads)
    for a, b in zip(out2[2:5], (stats, grad, info)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(out2[5], obj, rtol=1e-13, atol=1e-13)
    assert np.all(out2[0] == 7.0) and np.all(out2[1] == 7.0)


def test_em_pass_rejects_buffers_of_the_wrong_shape(rng):
    X, y, w, alpha, beta, var, _ = _problem(rng, 20, 2, 3)
    resp, row_ll, *rest = _em_buffers(20, 2, 3)
    for bad, name in [((resp[:10], row_ll, *rest), "resp"), ((resp, row_ll[:5], *rest), "row_ll"),
                      ((resp, row_ll, *rest[:3], rest[3][:, :1]), "obj")]:
        with pytest.raises(ValueError, match=name):
            _kernels.em_pass(X, y, w, alpha, beta, var, *bad, 20, 1)


def test_e_step_without_stats_matches(rng):
    X, y, w, alpha, beta, var, _ = _problem(rng, 300, 2, 3)
    lr, ll = np.empty((300, 3)), np.empty(300)
    _kernels.e_step(X, y, w, alpha, beta, var, lr, ll, np.empty((0, 0, 0)), 300, 1)
    lr_ref, ll_ref, _ = naive.e_step(X, y, w, alpha, beta, var)
    np.testing.assert_allclose(lr, lr_ref, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(ll, ll_ref, rtol=RTOL)


def test_e_step_minus_inf_gate(rng, kernel_path):
    """A gate at -inf switches its expert off: zero responsibility, finite loglik."""
    X, y, w, alpha, beta, var, _ = _problem(rng, 40, 2, 3)
    alpha = alpha.copy()
    alpha[0, 0] = -np.inf
    lr, ll = np.empty((40, 3)), np.empty(40)
    bad = _kernels.e_step(X, y, w, alpha, beta, var, lr, ll, np.empty((0, 0, 0)), 40, 1)
    assert bad == 0
    assert np.all(np.isfinite(ll))
    assert np.all(lr[:, 0] == -np.inf)
    ref = naive.e_step(X, y, w, alpha[1:], beta[1:], var[1:])[1]
    np.testing.assert_allclose(ll, ref, rtol=RTOL)


def test_e_step_reports_non_finite_rows(rng, kernel_path):
    """The compiled kernels count the rows whose log-likelihood is not finite;
    their one binding (fastmoe._kernels) answers with one FloatingPointError."""
    from fastmoe._kernels import _estep

    X, y, w, alpha, beta, var, _ = _problem(rng, 10, 2, 2)
    alpha = np.full_like(alpha, -np.inf)
    lr, ll = np.empty((10, 2)), np.empty(10)
    assert _estep.e_step(X, y, w, alpha, beta, var, lr, ll, np.empty((0, 0, 0)), 10, 1) == 10
    with pytest.raises(FloatingPointError, match="10 row"):
        _kernels.e_step(X, y, w, alpha, beta, var, lr, ll, np.empty((0, 0, 0)), 10, 1)
    resp, row_ll, stats, grad, info, obj = _em_buffers(10, 2, 2)
    with pytest.raises(FloatingPointError, match="10 row"):
        _kernels.em_pass(X, y, w, alpha, beta, var, resp, row_ll, stats, grad, info, obj, 10, 1)
    # the model's own E-step too (responses that overflow the density)
    model = MoEParams(np.zeros((2, 2)), np.zeros(2), np.ones((2, 2)), np.zeros(2), np.ones(2))
    with pytest.raises(FloatingPointError, match="2 row"):
        model.e_step(np.zeros((3, 2)), np.array([0.0, 1e200, 1e300]))


@pytest.mark.parametrize("n,d,K", SHAPES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_gate_log_proba_and_expert_density(rng, kernel_path, n, d, K, n_threads):
    X, y, _, alpha, beta, var, _ = _problem(rng, n, d, K, readonly=True)
    out = np.empty((n, K))
    assert _kernels.gate_log_proba(X, alpha, out, n_threads) == 0
    np.testing.assert_allclose(out, naive.gate_log_proba(X, alpha), rtol=RTOL, atol=1e-12)
    _kernels.expert_log_density(X, y, beta, var, out, n_threads)
    np.testing.assert_allclose(out, naive.expert_log_density(X, y, beta, var), rtol=RTOL)


@pytest.mark.parametrize("n,d,K", [s for s in SHAPES if s[2] > 1])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("readonly", [False, True])
def test_gate_newton_stats(kernel_path, n, d, K, n_threads, readonly):
    (X, _, w, alpha, _, _, R), (obj_ref, grad_ref, info_ref, gate_obj_ref) = \
        _gate_reference(n, d, K)
    if not readonly:
        X, w, alpha, R = (a.copy() for a in (X, w, alpha, R))
    p = d + 1
    chunk = chunk_size(n)
    nc = n_chunks(n, chunk)
    grad = np.empty((nc, K - 1, p))
    info = np.empty((nc, (K - 1) * K // 2, p * (p + 1) // 2))
    obj = np.empty(nc)
    _kernels.gate_newton_stats(X, w, R, alpha, chunk, grad, info, obj, n_threads=n_threads)
    np.testing.assert_allclose(obj.sum(), obj_ref, rtol=RTOL)
    np.testing.assert_allclose(grad.sum(axis=0), grad_ref, rtol=RTOL, atol=1e-11)
    _assert_information_blocks(info, info_ref, K, p)
    obj2 = np.empty(nc)
    _kernels.gate_objective(X, w, R, alpha, chunk, obj2, n_threads=n_threads)
    np.testing.assert_allclose(obj2.sum(), gate_obj_ref, rtol=RTOL)


def _em_buffers(n, d, K):
    nc = n_chunks(n, chunk_size(n))
    q, p = d + 2, d + 1
    return (np.empty((n, K)), np.empty(n), np.empty((nc, K, q * (q + 1) // 2)),
            np.empty((nc, K - 1, p)), np.empty((nc, (K - 1) * K // 2, p * (p + 1) // 2)),
            np.empty((nc, 2)))


@pytest.mark.parametrize("skip", [0, 2])
def test_em_pass_skip_leaves_one_expert_out(rng, kernel_path, skip):
    n, d, K = 3000, 3, 3
    X, y, w, alpha, beta, var, _ = _problem(rng, n, d, K)
    full, part = _em_buffers(n, d, K), _em_buffers(n, d, K)
    _kernels.em_pass(X, y, w, alpha, beta, var, *full, chunk_size(n), 2)
    _kernels.em_pass(X, y, w, alpha, beta, var, *part, chunk_size(n), 2, skip)
    stats, stats_skip = full[2], part[2]
    assert np.all(stats_skip[:, skip] == 0.0)
    others = [k for k in range(K) if k != skip]
    np.testing.assert_array_equal(stats_skip[:, others], stats[:, others])
    for a, b in zip(full[:2] + full[3:], part[:2] + part[3:]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="skip"):
        _kernels.em_pass(X, y, w, alpha, beta, var, *part, chunk_size(n), 2, K)


def test_the_two_kernel_paths_agree_to_rounding(rng):
    if not _kernels.simd_available():
        pytest.skip("this CPU has no AVX2/FMA")
    n, d, K = 5000, 4, 3
    X, y, w, alpha, beta, var, _ = _problem(rng, n, d, K)
    outs = []
    for simd in (True, False):
        previous = _kernels.set_simd(simd)
        try:
            out = _em_buffers(n, d, K)
            _kernels.em_pass(X, y, w, alpha, beta, var, *out, chunk_size(n), 2)
        finally:
            _kernels.set_simd(previous)
        outs.append(out)
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    # distinct code (fused multiply-adds on one path): set_simd reaches the EM pass
    assert not np.array_equal(outs[0][2], outs[1][2])


@pytest.mark.parametrize("scale", [1.0, 60.0, 400.0])
def test_gate_and_joint_exps_over_a_wide_range(rng, kernel_path, scale):
    """Logit gaps from 0 to beyond the exp's fast range (-708): the vector exp
    and log against scipy's logsumexp, lane by lane of many blocks."""
    n, d, K = 700, 2, 9
    X, y, w, alpha, beta, var, _ = _problem(rng, n, d, K)
    alpha = alpha * scale
    alpha[-1] = 0.0
    beta = beta * scale / 20
    out = np.empty((n, K))
    assert _kernels.gate_log_proba(X, alpha, out, 1) == 0
    np.testing.assert_allclose(out, naive.gate_log_proba(X, alpha), rtol=RTOL, atol=1e-12)
    resp, row_ll = np.empty((n, K)), np.empty(n)
    assert _kernels.e_step(X, y, w, alpha, beta, var, resp, row_ll, np.empty((0, 0, 0)),
                           chunk_size(n), 1) == 0
    lr_ref, ll_ref, _ = naive.e_step(X, y, w, alpha, beta, var)
    np.testing.assert_allclose(row_ll, ll_ref, rtol=RTOL)
    finite = np.isfinite(lr_ref)
    np.testing.assert_array_equal(np.isfinite(resp), finite)
    np.testing.assert_allclose(resp[finite], lr_ref[finite], rtol=RTOL, atol=1e-9)


def test_results_do_not_depend_on_thread_count(rng):
    n, d, K = 5000, 3, 3
    X, y, w, alpha, beta, var, _ = _problem(rng, n, d, K)
    chunk = chunk_size(n)
    nc = n_chunks(n, chunk)
    outs = []
    for nt in (1, 2):
        stats = np.empty((nc, K, 15))
        lr, ll = np.empty((n, K)), np.empty(n)
        _kernels.e_step(X, y, w, alpha, beta, var, lr, ll, stats, chunk, nt)
        fused = _em_buffers(n, d, K)
        _kernels.em_pass(X, y, w, alpha, beta, var, *fused, chunk, nt)
        outs.append([stats.sum(axis=0)] + [a.sum(axis=0) for a in fused])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_serial_and_parallel_variants_have_separate_disk_cache_entries():
    # numba keys its disk cache by qualified name, line and signature only; two
    # variants under one name load each other's code (n_threads=1 then ran on
    # every core, and n_threads=2 could run serially)
    from fastmoe._kernels._jit import jit_pair

    def body(x):
        return x

    pair = jit_pair(body)
    assert pair.serial.py_func.__qualname__ != pair.parallel.py_func.__qualname__
    for kernel in (_kernels.local_support,):
        assert kernel.serial.py_func.__qualname__ != kernel.parallel.py_func.__qualname__


@pytest.mark.parametrize("q", [1, 2, 7, 22])
def test_spd_solve_against_numpy(rng, q):
    """The compiled fast path of solve_psd: stacks of well-conditioned systems
    solved as numpy solves them; False for a singular, an ill-conditioned or
    an indefinite system anywhere in the stack."""
    M = rng.standard_normal((3, q, 3 * q + 2)) * rng.uniform(0.01, 100.0, (3, q, 1))
    A = M @ M.transpose(0, 2, 1)
    b = rng.standard_normal((3, q))
    x = np.empty((3, q))
    assert _kernels.spd_solve(A, b, x, 1e8)
    np.testing.assert_allclose(x, np.linalg.solve(A, b[..., None])[..., 0], rtol=1e-10)
    if q == 1:
        return
    singular = A.copy()
    singular[1, :, -1] = singular[1, :, 0]
    singular[1, -1, :] = singular[1, 0, :]
    ill = A.copy()
    ill[2] += 1e12 * A[2].max() * np.ones((q, q))  # condition number about 1e12
    indefinite = A.copy()
    indefinite[0, 0, 1] = indefinite[0, 1, 0] = 2 * np.sqrt(A[0, 0, 0] * A[0, 1, 1])
    for bad in (singular, ill, indefinite):
        assert not _kernels.spd_solve(bad, b, x, 1e8)
    with pytest.raises(ValueError, match="spd_solve"):
        _kernels.spd_solve(A, b[:2], x, 1e8)


def test_solve_psd_paths_and_stacks(rng):
    A = rng.standard_normal((6, 30))
    A = A @ A.T  # well conditioned: the inverse path
    b = rng.standard_normal(6)
    np.testing.assert_allclose(solve_psd(A, b), np.linalg.solve(A, b), rtol=1e-10)
    # singular (a duplicated column): the eigen path, minimum-norm solution
    S = A.copy()
    S[:, 5] = S[:, 4]
    S[5, :] = S[4, :]
    x = solve_psd(S, S @ np.arange(6.0))
    np.testing.assert_allclose(S @ x, S @ np.arange(6.0), rtol=1e-8)
    np.testing.assert_allclose(x, np.linalg.pinv(S) @ (S @ np.arange(6.0)), rtol=1e-8, atol=1e-10)
    # a stack mixing both is solved system by system, and a zero matrix gives zero
    stack = np.stack([A, S, np.zeros((6, 6))])
    rhs = np.stack([b, S @ np.arange(6.0), b])
    out = solve_psd(stack, rhs)
    for k in range(2):
        np.testing.assert_allclose(out[k], solve_psd(stack[k], rhs[k]), rtol=1e-10)
    np.testing.assert_array_equal(out[2], 0.0)


def test_kernels_check_the_shapes_they_are_given():
    """The kernels write through raw pointers: a wrong shape is an error, not
    an out-of-bounds read or write."""
    X, w = np.zeros((10, 2)), np.ones(10)
    a3, v = np.zeros((3, 3)), np.ones(3)
    empty = np.empty((0, 0, 0))
    cases = [
        (lambda: _kernels.e_step(X, np.zeros(9), w, a3, a3, v, np.empty((10, 3)), np.empty(10),
                                 empty, 10, 1), "y must have shape"),
        (lambda: _kernels.e_step(X, np.zeros(10), w, a3, a3[:, :2].copy(), v, np.empty((10, 3)),
                                 np.empty(10), empty, 10, 1), "beta must have shape"),
        (lambda: _kernels.e_step(X, np.zeros(10), w, a3, a3, v, np.empty((10, 3)), np.empty(10),
                                 np.empty((1, 3, 5)), 10, 1), "stats must have shape"),
        (lambda: _kernels.gate_objective(X, w, np.ones((10, 2)), a3, 10, np.empty(1)),
         "R must have shape"),
        (lambda: _kernels.gate_newton_stats(X, w, np.ones((10, 3)), a3, 10, np.empty((1, 1, 3)),
                                            np.empty((1, 3, 6)), np.empty(1)),
         "grad must have shape"),
        (lambda: _kernels.gate_log_proba(X, a3, np.empty((10, 2)), 1), "out must have shape"),
        (lambda: _kernels.expert_log_density(X, np.zeros(10), a3, v[:2].copy(),
                                             np.empty((10, 3)), 1), "var must have shape"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()

# cython: language_level=3
"""Kernels of a local fit and of prediction: gate log-probabilities, expert
log-densities, the E-step, the gate Newton statistics and objective, and
``em_pass``, which fuses an EM iteration into one pass over the rows
(log-likelihood, responsibilities, the weighted statistics of the expert
update, the gate Newton statistics at the current gates, and the gates'
log-partition, from which the caller computes the gate objective and the
ascent check of the gate step that produced them).

The passes are C (``_estep.h``), driven from here in parallel over chunks of
rows. They take the rows in blocks of 32, stored by column, so that every
step is a vectorised loop over the rows; the exps and logs of a block are
taken together, with a vector exp and log on the AVX2/FMA path; each
weighted Gram matrix is a set of dot products over the block's rows. Each
pass is compiled twice from the same body, for AVX2/FMA (chosen at run time
when the CPU has it) and for the baseline (``set_simd`` forces it; the tests
run both).

Why C: the numba version of the E-step with the expert statistics (same
chunked accumulators and arithmetic, ``asv_bench/kernel_choice.py``, n=1e5,
d=10, K=3, 2 threads) takes 18.3 ms against 6.1 ms here (15.7 ms on the
plain path), and the first call in a new process costs it the load of its
disk cache, where the ahead-of-time extension costs nothing: prediction in a
fresh process, and each local fit in a fresh worker, start at once. The
previous Cython kernel, one row at a time with scalar libm calls, took 17.4
ms on the same problem.

Conventions (all kernels):

- ``X`` (n, d) C-contiguous float64 covariates, without the intercept column;
  coefficient arrays are (K, d+1) with the intercept in column 0.
- Arguments marked OUT are buffers owned by the caller and overwritten.
- Accumulators are per chunk of rows (``chunk`` rows each, the last one
  shorter) so that results do not depend on the number of threads; the caller
  sums them in chunk order.
- A return value is a status: the number of rows whose log-likelihood was not
  finite (0 when all is well).
"""

from cython.parallel cimport prange
from libc.math cimport sqrt

import numpy as np

ctypedef double f8


cdef inline void _affine_all(const f8* coefT, Py_ssize_t m, const f8* x, Py_ssize_t d,
                             f8* out) noexcept nogil:
    """OUT out (m,) = coefT[0] + x . coefT[1:] for coefT (d+1, m), the stacked
    coefficients transposed: m independent sums, vectorised over m."""
    cdef Py_ssize_t j, k
    cdef f8 xj
    for k in range(m):
        out[k] = coefT[k]
    for j in range(d):
        xj = x[j]
        for k in range(m):
            out[k] = out[k] + coefT[(j + 1) * m + k] * xj


cdef extern from "_estep.h" nogil:
    ctypedef long long fm_int
    int FM_HAVE_AVX2_PATH
    int fm_cpu_has_avx2()
    fm_int fm_em_chunk_plain(fm_int n, fm_int d, fm_int K, const f8* X, const f8* y,
                             const f8* w, const f8* coefT, const f8* lnorm, const f8* inv_var,
                             f8* resp, int log_out, f8* row_ll, f8* stats, fm_int skip,
                             f8* grad, f8* info, f8* obj)
    fm_int fm_em_chunk_avx2(fm_int n, fm_int d, fm_int K, const f8* X, const f8* y,
                            const f8* w, const f8* coefT, const f8* lnorm, const f8* inv_var,
                            f8* resp, int log_out, f8* row_ll, f8* stats, fm_int skip,
                            f8* grad, f8* info, f8* obj)
    fm_int fm_gate_chunk_plain(fm_int n, fm_int d, fm_int K, const f8* X, const f8* w,
                               const f8* R, const f8* coefT, f8* grad, f8* info, f8* obj)
    fm_int fm_gate_chunk_avx2(fm_int n, fm_int d, fm_int K, const f8* X, const f8* w,
                              const f8* R, const f8* coefT, f8* grad, f8* info, f8* obj)
    fm_int fm_log_proba_plain(fm_int n, fm_int d, fm_int K, const f8* X, const f8* coefT,
                              f8* out)
    fm_int fm_log_proba_avx2(fm_int n, fm_int d, fm_int K, const f8* X, const f8* coefT,
                             f8* out)

# the two compilations of each pass share a signature: one call site each
ctypedef fm_int (*em_chunk_fn)(fm_int, fm_int, fm_int, const f8*, const f8*, const f8*,
                               const f8*, const f8*, const f8*, f8*, int, f8*, f8*, fm_int,
                               f8*, f8*, f8*) noexcept nogil
ctypedef fm_int (*gate_chunk_fn)(fm_int, fm_int, fm_int, const f8*, const f8*, const f8*,
                                 const f8*, f8*, f8*, f8*) noexcept nogil
ctypedef fm_int (*log_proba_fn)(fm_int, fm_int, fm_int, const f8*, const f8*,
                                f8*) noexcept nogil

cdef bint _has_simd = FM_HAVE_AVX2_PATH and fm_cpu_has_avx2()
cdef bint _use_simd = _has_simd


def _check_shape(name, a, shape):
    """ValueError unless memoryview ``a`` has ``shape`` (the kernels write
    through raw pointers: a wrong shape would read or write out of bounds)."""
    got = tuple(a.shape[:len(shape)])
    if got != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {got}")


def _check_model(X, y, w, alpha, beta, var):
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], K = alpha.shape[0]
    if y is not None:
        _check_shape("y", y, (n,))
    _check_shape("w", w, (n,))
    _check_shape("alpha", alpha, (K, d + 1))
    if beta is not None:
        _check_shape("beta", beta, (K, d + 1))
        _check_shape("var", var, (K,))


def _check_gate_out(grad, info, Py_ssize_t nc, Py_ssize_t K, Py_ssize_t d):
    if grad is not None:
        _check_shape("grad", grad, (nc, K - 1, d + 1))
        _check_shape("info", info, (nc, (K - 1) * K // 2, (d + 1) * (d + 2) // 2))


def set_simd(flag: bool) -> bool:
    """Use the AVX2/FMA compilation of the kernels when the CPU has it (True,
    the default) or the plain one (False). Returns the previous setting."""
    global _use_simd
    previous = bool(_use_simd)
    _use_simd = bool(flag) and _has_simd
    return previous

def e_step(
    const f8[:, ::1] X, const f8[::1] y, const f8[::1] w,
    const f8[:, ::1] alpha, const f8[:, ::1] beta, const f8[::1] var,
    f8[:, ::1] log_resp, f8[::1] row_ll, f8[:, :, ::1] stats,
    Py_ssize_t chunk, int n_threads,
):
    """E-step: log responsibilities, per-row log-likelihood and, optionally,
    the weighted sufficient statistics of the expert update.

    Parameters
    ----------
    X (n, d), y (n,), w (n,) : IN data and sample weights.
    alpha, beta (K, d+1), var (K,) : IN gate and expert parameters.
    log_resp (n, K) : OUT log responsibilities.
    row_ll (n,) : OUT per-row log-likelihood (unweighted).
    stats (n_chunks, K, T) : OUT, T = (d+2)(d+3)/2. Per chunk and expert, the
        packed upper triangle (row-major) of sum_i w_i r_ik z_i z_i^T with
        z = (1, x, y). Pass an array with n_chunks == 0 to skip the statistics.
    chunk : rows per chunk; stats needs n_chunks = ceil(n / chunk).

    Returns the number of rows with a non-finite log-likelihood.
    """
    return _e_step(X, y, w, alpha, beta, var, log_resp, True, row_ll, stats, -1, None, None,
                   None, chunk, n_threads)


def em_pass(
    const f8[:, ::1] X, const f8[::1] y, const f8[::1] w,
    const f8[:, ::1] alpha, const f8[:, ::1] beta, const f8[::1] var,
    f8[:, ::1] resp, f8[::1] row_ll, f8[:, :, ::1] stats, f8[:, :, ::1] grad,
    f8[:, :, ::1] info, f8[:, ::1] obj, Py_ssize_t chunk, int n_threads, Py_ssize_t skip=-1,
):
    """One pass of an EM iteration: the E-step, the statistics of the expert
    update and the gate Newton statistics, fused.

    As :func:`e_step`, and
    resp (n, K) : OUT responsibilities (not their logs), or an array with
        n == 0 (not written).
    row_ll (n,) : OUT as e_step, or an array with n == 0 (not written).
    grad (n_chunks, K-1, d+1), info (n_chunks, J, Tx) : OUT the gate Newton
        statistics at ``alpha`` for the targets ``resp``, as gate_newton_stats.
    obj (n_chunks, 2) : OUT per chunk, the weighted log-likelihood
        sum_i w_i row_ll_i and the gates' log-partition sum_i w_i lse_i,
        lse_i = log sum_k exp(alpha_k . xt_i). For targets R whose rows sum to
        1, the gate objective sum_i w_i sum_k R_ik log pi_ik is
        sum_k alpha_k . (sum_i w_i R_ik xt_i) - sum_i w_i lse_i: the first
        row of an expert's Gram matrix in ``stats`` holds its sum.
    skip : an expert whose statistics are left zero, or -1 (none). The caller
        derives them: the weighted Gram matrix of z summed over the experts
        does not depend on the parameters.
    """
    if not -1 <= skip < alpha.shape[0]:
        raise ValueError(f"skip must be -1 or an expert index; got {skip}")
    return _e_step(X, y, w, alpha, beta, var, resp, False, row_ll, stats, skip, grad, info, obj,
                   chunk, n_threads)


cdef Py_ssize_t _e_step(
    const f8[:, ::1] X, const f8[::1] y, const f8[::1] w,
    const f8[:, ::1] alpha, const f8[:, ::1] beta, const f8[::1] var,
    f8[:, ::1] resp, bint log_out, f8[::1] row_ll, f8[:, :, ::1] stats, Py_ssize_t skip,
    f8[:, :, ::1] grad, f8[:, :, ::1] info, f8[:, ::1] obj, Py_ssize_t chunk, int n_threads,
) except -1:
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], K = alpha.shape[0]
    cdef Py_ssize_t n_chunks = (n + chunk - 1) // chunk if chunk > 0 else 0
    cdef bint want_stats = stats.shape[0] > 0
    cdef bint want_gate = grad is not None
    cdef bint want_obj = obj is not None
    cdef bint want_resp = resp.shape[0] > 0
    cdef bint want_ll = row_ll.shape[0] > 0
    cdef em_chunk_fn em_chunk = fm_em_chunk_avx2 if _use_simd else fm_em_chunk_plain
    cdef Py_ssize_t c, lo, m, bad = 0
    cdef f8[::1] lnorm, inv_var
    cdef const f8[:, ::1] coefT
    cdef f8* st
    cdef f8* gr
    cdef f8* inf
    cdef f8* ob
    cdef f8* rs
    cdef f8* rl
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    _check_model(X, y, w, alpha, beta, var)
    if want_stats:
        _check_shape("stats", stats, (n_chunks, K, (d + 2) * (d + 3) // 2))
    if want_gate:
        _check_gate_out(grad, info, n_chunks, K, d)
    if want_resp and (resp.shape[0] != n or resp.shape[1] != K):
        raise ValueError(f"resp must be ({n}, {K}) or empty; "
                         f"got ({resp.shape[0]}, {resp.shape[1]})")
    if want_ll and row_ll.shape[0] != n:
        raise ValueError(f"row_ll must be ({n},) or empty; got ({row_ll.shape[0]},)")
    if want_obj and (obj.shape[0] != n_chunks or obj.shape[1] != 2):
        raise ValueError(f"obj must be ({n_chunks}, 2); got ({obj.shape[0]}, {obj.shape[1]})")
    coefT = _stacked_transposed(alpha, beta)
    lnorm, inv_var = _gauss_constants(var)
    for c in prange(n_chunks, nogil=True, schedule="dynamic", num_threads=n_threads):
        lo = c * chunk
        m = min(chunk, n - lo)
        st = &stats[c, 0, 0] if want_stats else NULL
        gr = &grad[c, 0, 0] if want_gate else NULL
        inf = &info[c, 0, 0] if want_gate else NULL
        ob = &obj[c, 0] if want_obj else NULL
        rs = &resp[lo, 0] if want_resp else NULL
        rl = &row_ll[lo] if want_ll else NULL
        bad += em_chunk(m, d, K, &X[lo, 0], &y[lo], &w[lo], &coefT[0, 0], &lnorm[0],
                        &inv_var[0], rs, log_out, rl, st, skip, gr, inf, ob)
    return bad

def gate_newton_stats(
    const f8[:, ::1] X, const f8[::1] w, const f8[:, ::1] R, const f8[:, ::1] alpha,
    Py_ssize_t chunk, f8[:, :, ::1] grad, f8[:, :, ::1] info, f8[::1] obj,
    int n_threads=1,
):
    """Objective, gradient and information matrix of the weighted multinomial
    logistic regression of soft targets R on xt = (1, x).

    IN: X (n, d), w (n,), R (n, K) targets, alpha (K, d+1), chunk (int).
    OUT: grad (n_chunks, K-1, d+1): sum_i w_i (R_ia - s_i pi_ia) xt_i, s_i = sum_k R_ik;
         info (n_chunks, J, T): packed upper triangles of
             sum_i w_i s_i pi_ia (delta_ab - pi_ib) xt_i xt_i^T for the J = (K-1)K/2
             pairs a <= b < K-1 (row-major order), T = (d+1)(d+2)/2;
         obj (n_chunks,): sum_i w_i sum_k R_ik log pi_ik.
    Returns the number of rows with non-finite gate logits.
    """
    return _gate_pass(X, w, R, alpha, chunk, grad, info, obj, n_threads)


def gate_objective(
    const f8[:, ::1] X, const f8[::1] w, const f8[:, ::1] R, const f8[:, ::1] alpha,
    Py_ssize_t chunk, f8[::1] obj, int n_threads=1,
):
    """OUT obj (n_chunks,): sum_i w_i sum_k R_ik log pi_ik per chunk of rows.
    Returns the number of rows with non-finite gate logits."""
    return _gate_pass(X, w, R, alpha, chunk, None, None, obj, n_threads)


cdef Py_ssize_t _gate_pass(
    const f8[:, ::1] X, const f8[::1] w, const f8[:, ::1] R, const f8[:, ::1] alpha,
    Py_ssize_t chunk, f8[:, :, ::1] grad, f8[:, :, ::1] info, f8[::1] obj, int n_threads,
) except -1:
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], K = alpha.shape[0]
    cdef Py_ssize_t n_chunks = obj.shape[0]
    cdef bint newton = grad is not None
    cdef gate_chunk_fn gate_chunk = (fm_gate_chunk_avx2 if _use_simd
                                     else fm_gate_chunk_plain)
    cdef Py_ssize_t c, lo, m, bad = 0
    cdef const f8[:, ::1] alphaT
    cdef f8* gr
    cdef f8* inf
    if chunk < 1 or n_chunks != (n + chunk - 1) // chunk:
        raise ValueError(f"obj must have ceil(n / chunk) = {(n + chunk - 1) // max(chunk, 1)} "
                         f"entries; got {n_chunks}")
    _check_model(X, None, w, alpha, None, None)
    _check_shape("R", R, (n, K))
    _check_gate_out(grad, info, n_chunks, K, d)
    alphaT = _stacked_transposed(alpha)
    for c in prange(n_chunks, nogil=True, schedule="dynamic", num_threads=n_threads):
        lo = c * chunk
        m = min(chunk, n - lo)
        gr = &grad[c, 0, 0] if newton else NULL
        inf = &info[c, 0, 0] if newton else NULL
        bad += gate_chunk(m, d, K, &X[lo, 0], &w[lo], &R[lo, 0], &alphaT[0, 0], gr, inf,
                          &obj[c])
    return bad

def _stacked_transposed(*coefs):
    """(d+1, m): the (K, d+1) coefficient arrays stacked and transposed (the C
    kernels' layout)."""
    return np.ascontiguousarray(np.vstack(coefs).T)


def _gauss_constants(const f8[::1] var):
    """(-log(2 pi var) / 2, 1 / var): log N(y; m, var) = first - (y - m)^2 second / 2."""
    v = np.asarray(var)
    return -0.5 * np.log(2.0 * np.pi * v), 1.0 / v


def gate_log_proba(const f8[:, ::1] X, const f8[:, ::1] alpha, f8[:, ::1] out, int n_threads):
    """OUT out (n, K) = log softmax(alpha xt); returns the number of non-finite rows."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], K = alpha.shape[0]
    cdef Py_ssize_t chunk = 1024
    cdef Py_ssize_t c, lo, m, bad = 0
    cdef log_proba_fn log_proba = fm_log_proba_avx2 if _use_simd else fm_log_proba_plain
    _check_shape("alpha", alpha, (K, d + 1))
    _check_shape("out", out, (n, K))
    cdef const f8[:, ::1] alphaT = _stacked_transposed(alpha)
    for c in prange((n + chunk - 1) // chunk, nogil=True, schedule="static",
                    num_threads=n_threads):
        lo = c * chunk
        m = min(chunk, n - lo)
        bad += log_proba(m, d, K, &X[lo, 0], &alphaT[0, 0], &out[lo, 0])
    return bad


def expert_log_density(
    const f8[:, ::1] X, const f8[::1] y, const f8[:, ::1] beta, const f8[::1] var,
    f8[:, ::1] out, int n_threads,
):
    """OUT out (n, K) = log N(y_i; xt_i . beta_k, var_k)."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], K = beta.shape[0]
    cdef Py_ssize_t i, k
    cdef f8 r
    cdef const f8[:, ::1] betaT
    cdef f8[::1] lnorm, inv_var
    _check_shape("y", y, (n,))
    _check_shape("beta", beta, (K, d + 1))
    _check_shape("var", var, (K,))
    _check_shape("out", out, (n, K))
    betaT = np.ascontiguousarray(np.asarray(beta).T)
    lnorm, inv_var = _gauss_constants(var)
    for i in prange(n, nogil=True, schedule="static", num_threads=n_threads):
        _affine_all(&betaT[0, 0], K, &X[i, 0], d, &out[i, 0])  # the means
        for k in range(K):
            r = y[i] - out[i, k]
            out[i, k] = lnorm[k] - 0.5 * r * r * inv_var[k]
    return 0



def spd_solve(const f8[:, :, ::1] A, const f8[:, ::1] b, f8[:, ::1] x, double cond_limit):
    """OUT x[s] = A[s]^-1 b[s] for a stack of symmetric positive definite
    systems, by Cholesky after scaling each to unit diagonal (the fast path
    of ``_linalg.solve_psd``, without numpy's per-call cost on small systems).

    Returns False, x undefined, as soon as a scaled system is not numerically
    positive definite or its Frobenius condition number ||S||_F ||S^-1||_F
    is not below ``cond_limit``; the caller then decomposes. Reads the lower
    triangles of A. O(q^3) per system without blocking: for small q.
    """
    cdef Py_ssize_t m = A.shape[0], q = A.shape[1], s
    cdef bint ok = True
    cdef f8[:, ::1] L = np.empty((q, q))
    cdef f8[::1] dg = np.empty(q)
    cdef f8[::1] z = np.empty(q)
    if A.shape[2] != q or b.shape[0] != m or b.shape[1] != q or x.shape[0] != m \
            or x.shape[1] != q:
        raise ValueError("spd_solve needs A (m, q, q), b (m, q) and x (m, q)")
    with nogil:
        for s in range(m):
            ok = _spd_solve_one(q, &A[s, 0, 0], &b[s, 0], &x[s, 0], &L[0, 0], &dg[0], &z[0],
                                cond_limit)
            if not ok:
                break
    return bool(ok)


cdef bint _spd_solve_one(Py_ssize_t q, const f8* A, const f8* b, f8* x, f8* L, f8* dg, f8* z,
                         double cond_limit) noexcept nogil:
    """One system of spd_solve; L (q, q), dg and z (q,) are scratch."""
    cdef Py_ssize_t i, j, k
    cdef f8 acc, norm_s = 0.0, norm_inv = 0.0
    for i in range(q):
        if not A[i * q + i] > 0.0:
            return False
        dg[i] = sqrt(A[i * q + i])
    # S = D^-1 A D^-1 = L L^T, row by row, and the Frobenius norm of S
    for i in range(q):
        for j in range(i + 1):
            acc = A[i * q + j] / (dg[i] * dg[j])
            norm_s += (1.0 if i == j else 2.0) * acc * acc
            for k in range(j):
                acc -= L[i * q + k] * L[j * q + k]
            if i == j:
                if not acc > 0.0:
                    return False
                L[i * q + i] = sqrt(acc)
            else:
                L[i * q + j] = acc / L[j * q + j]
    # z = L^-1 D^-1 b, then x = D^-1 L^-T z
    for i in range(q):
        acc = b[i] / dg[i]
        for k in range(i):
            acc -= L[i * q + k] * z[k]
        z[i] = acc / L[i * q + i]
    for i in range(q - 1, -1, -1):
        acc = z[i]
        for k in range(i + 1, q):
            acc -= L[k * q + i] * x[k]
        x[i] = acc / L[i * q + i]
    for i in range(q):
        x[i] = x[i] / dg[i]
    # L^-1 in place, row by row; S^-1 = L^-T L^-1 and its Frobenius norm
    for i in range(q):
        L[i * q + i] = 1.0 / L[i * q + i]
        for j in range(i):
            acc = 0.0
            for k in range(j, i):
                acc -= L[i * q + k] * L[k * q + j]
            L[i * q + j] = acc * L[i * q + i]
    for i in range(q):
        for j in range(i + 1):
            acc = 0.0
            for k in range(i, q):
                acc += L[k * q + i] * L[k * q + j]
            norm_inv += (1.0 if i == j else 2.0) * acc * acc
    return sqrt(norm_s) * sqrt(norm_inv) < cond_limit

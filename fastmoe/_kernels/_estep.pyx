# cython: language_level=3
"""Cython kernels of a local fit and of prediction: gate log-probabilities,
expert log-densities, the E-step, the gate Newton statistics and objective,
and ``em_pass``, which fuses an EM iteration into one pass over the rows
(log-likelihood, responsibilities, the weighted statistics of the expert
update, the gate Newton statistics at the current gates, and the ascent check
of the gate step that produced them).

Why Cython here: measured side by side with a numba version of the E-step with
the expert statistics (``asv_bench/kernel_choice.py``, 2 threads, 10 repeats)
the two ran at the same speed with the same arithmetic (n=1e5, d=10, K=3: 18.5
vs 18.2 ms), and the Cython kernel, which adds outer products four rows at a
time, is faster where they dominate (n=9e4, d=20, K=5: 37.1 vs 54.2 ms). The
first call in a new process costs the numba version about 0.45 s more (loading
its disk cache), while the ahead-of-time extension costs nothing: prediction
in a fresh process, and each local fit in a fresh worker, start at once.

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
from libc.math cimport exp, log, INFINITY, NAN, isfinite
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

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


cdef inline void _packed_outer(const f8* z, Py_ssize_t q, f8* u) noexcept nogil:
    """OUT u = the packed (row-major) upper triangle of z z^T, z of length q."""
    cdef Py_ssize_t a, b, t = 0
    for a in range(q):
        for b in range(a, q):
            u[t] = z[a] * z[b]
            t = t + 1


cdef inline void _axpy(f8 c, const f8* u, f8* out, Py_ssize_t T) noexcept nogil:
    """out += c * u"""
    cdef Py_ssize_t t
    for t in range(T):
        out[t] = out[t] + c * u[t]


cdef enum:
    # rows buffered before their outer products are added to the accumulators:
    # each accumulator entry is then loaded and stored once per ROWS rows
    ROWS = 4


cdef inline void _accumulate(
    const f8* U, Py_ssize_t ldu, Py_ssize_t off, Py_ssize_t T,
    const f8* c, Py_ssize_t M, Py_ssize_t nb, f8* acc,
) noexcept nogil:
    """acc[m, :T] += sum_r c[r, m] U[r, off:off + T] for the nb <= ROWS buffered
    rows (a full block summed pairwise, a short one in row order); c is
    (ROWS, M), U (ROWS, ldu), acc (M, T)."""
    cdef Py_ssize_t m, t, r
    cdef f8 c0, c1, c2, c3
    cdef f8* dst
    cdef const f8* u0 = U + off
    cdef const f8* u1 = u0 + ldu
    cdef const f8* u2 = u1 + ldu
    cdef const f8* u3 = u2 + ldu
    if nb == ROWS:
        for m in range(M):
            c0 = c[m]
            c1 = c[M + m]
            c2 = c[2 * M + m]
            c3 = c[3 * M + m]
            dst = acc + m * T
            for t in range(T):
                dst[t] = dst[t] + ((c0 * u0[t] + c1 * u1[t]) + (c2 * u2[t] + c3 * u3[t]))
    else:
        for r in range(nb):
            for m in range(M):
                _axpy(c[r * M + m], U + r * ldu + off, acc + m * T, T)


cdef inline f8 _gate_row(f8* logpi, f8* pi, Py_ssize_t K) noexcept nogil:
    """IN logpi (K,) the gate logits of one row; OUT logpi = their log softmax
    and, unless pi is NULL, pi = exp(logpi); returns the logit maximum (not
    finite: the row is invalid)."""
    cdef Py_ssize_t k
    cdef f8 gmax = -INFINITY
    cdef f8 sg = 0.0
    cdef f8 e, lse
    for k in range(K):
        if logpi[k] > gmax:
            gmax = logpi[k]
    if not isfinite(gmax):
        return gmax
    for k in range(K):
        e = exp(logpi[k] - gmax)
        if pi != NULL:
            pi[k] = e
        sg = sg + e
    lse = gmax + log(sg)
    sg = 1.0 / sg
    for k in range(K):
        logpi[k] = logpi[k] - lse
        if pi != NULL:
            pi[k] = pi[k] * sg
    return gmax


cdef inline f8 _weighted_log(f8 wi, const f8* R, const f8* logpi, Py_ssize_t K) noexcept nogil:
    """wi sum_k R_k logpi_k, a zero target contributing nothing (even at -inf)."""
    cdef Py_ssize_t k
    cdef f8 acc = 0.0
    for k in range(K):
        if R[k] != 0.0:
            acc = acc + R[k] * logpi[k]
    return wi * acc


cdef inline void _gate_newton_row(
    f8 wi, const f8* R, const f8* pi, Py_ssize_t K, const f8* xt, Py_ssize_t p,
    f8* grad, f8* hw,
) noexcept nogil:
    """Add one row's gradient (K-1, p) of the weighted multinomial logistic
    objective to grad; OUT hw (J,): the row's weights of xt xt^T in the J
    information blocks a <= b < K-1, w s pi_a (delta_ab - pi_b)."""
    cdef Py_ssize_t a, b, j, k, jj = 0
    cdef f8 s = 0.0
    cdef f8 ws, ca
    for k in range(K):
        s = s + R[k]
    ws = wi * s
    for a in range(K - 1):
        ca = wi * R[a] - ws * pi[a]
        for j in range(p):
            grad[a * p + j] = grad[a * p + j] + ca * xt[j]
    for a in range(K - 1):
        for b in range(a, K - 1):
            if a == b:
                hw[jj] = ws * pi[a] * (1.0 - pi[a])
            else:
                hw[jj] = -ws * pi[a] * pi[b]
            jj = jj + 1


cdef Py_ssize_t _estep_chunk(
    Py_ssize_t start, Py_ssize_t stop, Py_ssize_t d, Py_ssize_t K,
    const f8[:, ::1] X, const f8[::1] y, const f8[::1] w, const f8* coefT,
    const f8* lnorm, const f8* inv_var,
    f8[:, ::1] resp, bint log_out, f8[::1] row_ll, f8* stats,
    const f8* R_in, f8* grad, f8* info, f8* obj,
) noexcept nogil:
    """Rows [start, stop) of the E-step. Writes resp (log responsibilities if
    log_out, else responsibilities) and row_ll; for this chunk, writes
    ``stats`` (K, T) when not NULL, and, when ``grad`` is not NULL, the gate
    Newton statistics at alpha for the new responsibilities (grad, info,
    obj[1]), obj[0] = sum_i w_i row_ll_i and, when ``R_in`` is not NULL
    (n, K), obj[2] = the gate objective at alpha for the targets R_in.

    Sums run in thread-private buffers, copied out once (no false sharing
    between chunks). The outer products use z = (y, 1, x), whose packed
    triangle ends with that of xt = (1, x): one product serves the expert
    statistics and the gate information blocks. Returns the number of
    non-finite rows."""
    cdef Py_ssize_t i, j, k
    cdef Py_ssize_t p = d + 1
    cdef Py_ssize_t q = d + 2
    cdef Py_ssize_t T = q * (q + 1) // 2
    cdef Py_ssize_t Tx = p * (p + 1) // 2
    cdef Py_ssize_t J = (K - 1) * K // 2
    cdef bint want_stats = stats != NULL
    cdef bint want_gate = grad != NULL
    cdef Py_ssize_t n_stats = K * T if want_stats else 0
    cdef Py_ssize_t n_gate = ((K - 1) * p + J * Tx) if want_gate else 0
    cdef Py_ssize_t bad = 0
    cdef Py_ssize_t nb = 0
    cdef f8 r, jmax, sj, lse_j
    cdef f8 ll_sum = 0.0
    cdef f8 q_new = 0.0
    cdef f8 q_in = 0.0
    # thread-private: gate logits then log pi, expert means, pi, joint
    # log-densities, their exps, z, then ROWS buffered outer products and
    # their weights, then the accumulators
    cdef Py_ssize_t n_scratch = 5 * K + q + ROWS * (T + K + J)
    cdef f8* buf = <f8*> calloc(n_scratch + n_stats + n_gate, sizeof(f8))
    cdef f8* logpi = buf
    cdef f8* mean = buf + K
    cdef f8* pi = buf + 2 * K
    cdef f8* lj = buf + 3 * K
    cdef f8* e = buf + 4 * K
    cdef f8* z = buf + 5 * K
    cdef f8* U = z + q
    cdef f8* cw = U + ROWS * T
    cdef f8* hw = cw + ROWS * K
    cdef f8* acc_stats = buf + n_scratch
    cdef f8* acc_grad = acc_stats + n_stats
    cdef f8* acc_info = acc_grad + (K - 1) * p
    cdef f8* out
    if buf == NULL:
        return stop - start
    z[1] = 1.0
    for i in range(start, stop):
        _affine_all(coefT, 2 * K, &X[i, 0], d, logpi)  # gate logits, then means
        if not isfinite(_gate_row(logpi, pi, K)):
            row_ll[i] = NAN
            bad = bad + 1
            continue
        jmax = -INFINITY
        for k in range(K):
            r = y[i] - mean[k]
            lj[k] = logpi[k] + lnorm[k] - 0.5 * r * r * inv_var[k]
            if lj[k] > jmax:
                jmax = lj[k]
        if not isfinite(jmax):
            row_ll[i] = NAN
            bad = bad + 1
            continue
        sj = 0.0
        for k in range(K):
            e[k] = exp(lj[k] - jmax)
            sj = sj + e[k]
        lse_j = jmax + log(sj)
        row_ll[i] = lse_j
        ll_sum = ll_sum + w[i] * lse_j
        out = &resp[i, 0]
        sj = 1.0 / sj
        for k in range(K):
            e[k] = e[k] * sj
            out[k] = lj[k] - lse_j if log_out else e[k]
        if R_in != NULL:
            q_in = q_in + _weighted_log(w[i], R_in + i * K, logpi, K)
        if not (want_stats or want_gate):
            continue
        z[0] = y[i]
        for j in range(d):
            z[j + 2] = X[i, j]
        _packed_outer(z, q, U + nb * T)
        if want_gate:
            q_new = q_new + _weighted_log(w[i], e, logpi, K)
            _gate_newton_row(w[i], e, pi, K, z + 1, p, acc_grad, hw + nb * J)
        if want_stats:
            for k in range(K):
                cw[nb * K + k] = w[i] * e[k]
        nb = nb + 1
        if nb == ROWS:
            _flush(U, T, q, Tx, cw, K, hw, J, nb, acc_stats if want_stats else NULL,
                   acc_info if want_gate else NULL)
            nb = 0
    _flush(U, T, q, Tx, cw, K, hw, J, nb, acc_stats if want_stats else NULL,
           acc_info if want_gate else NULL)
    if want_stats:
        memcpy(stats, acc_stats, n_stats * sizeof(f8))
    if want_gate:
        memcpy(grad, acc_grad, (K - 1) * p * sizeof(f8))
        memcpy(info, acc_info, J * Tx * sizeof(f8))
        obj[0] = ll_sum
        obj[1] = q_new
        obj[2] = q_in
    free(buf)
    return bad


cdef inline void _flush(
    const f8* U, Py_ssize_t T, Py_ssize_t q, Py_ssize_t Tx, const f8* cw, Py_ssize_t K,
    const f8* hw, Py_ssize_t J, Py_ssize_t nb, f8* acc_stats, f8* acc_info,
) noexcept nogil:
    """Add the nb buffered rows: z z^T with weights cw to the expert statistics
    and their xt xt^T part (from offset q) with weights hw to the gate blocks."""
    if acc_stats != NULL:
        _accumulate(U, T, 0, T, cw, K, nb, acc_stats)
    if acc_info != NULL:
        _accumulate(U, T, q, Tx, hw, J, nb, acc_info)


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
        packed upper triangle of sum_i w_i r_ik z_i z_i^T with z = (y, 1, x)
        (``fastmoe._linalg.unpack_gram`` reorders it to (1, x, y)). Pass an
        array with n_chunks == 0 to skip the statistics.
    chunk : rows per chunk; stats needs n_chunks = ceil(n / chunk).

    Returns the number of rows with a non-finite log-likelihood.
    """
    return _e_step(X, y, w, alpha, beta, var, None, log_resp, True, row_ll, stats,
                   None, None, None, chunk, n_threads)


def em_pass(
    const f8[:, ::1] X, const f8[::1] y, const f8[::1] w,
    const f8[:, ::1] alpha, const f8[:, ::1] beta, const f8[::1] var,
    const f8[:, ::1] R_in, f8[:, ::1] resp, f8[::1] row_ll, f8[:, :, ::1] stats,
    f8[:, :, ::1] grad, f8[:, :, ::1] info, f8[:, ::1] obj,
    Py_ssize_t chunk, int n_threads,
):
    """One pass of an EM iteration: the E-step, the statistics of the expert
    update and the gate Newton statistics, fused.

    As :func:`e_step`, and
    R_in (n, K) : IN the previous responsibilities (the targets of the gate
        step that produced ``alpha``), or an array with n == 0.
    resp (n, K) : OUT responsibilities (not their logs).
    grad (n_chunks, K-1, d+1), info (n_chunks, J, Tx) : OUT the gate Newton
        statistics at ``alpha`` for the targets ``resp``, as gate_newton_stats.
    obj (n_chunks, 3) : OUT per chunk, the weighted log-likelihood
        sum_i w_i row_ll_i, the gate objective at ``alpha`` for the targets
        ``resp``, and that for the targets ``R_in`` (0 without R_in): the
        check of the gate step that produced ``alpha``.
    """
    return _e_step(X, y, w, alpha, beta, var, R_in if R_in.shape[0] > 0 else None, resp,
                   False, row_ll, stats, grad, info, obj, chunk, n_threads)


cdef Py_ssize_t _e_step(
    const f8[:, ::1] X, const f8[::1] y, const f8[::1] w,
    const f8[:, ::1] alpha, const f8[:, ::1] beta, const f8[::1] var,
    const f8[:, ::1] R_in, f8[:, ::1] resp, bint log_out, f8[::1] row_ll,
    f8[:, :, ::1] stats, f8[:, :, ::1] grad, f8[:, :, ::1] info, f8[:, ::1] obj,
    Py_ssize_t chunk, int n_threads,
) except -1:
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], K = alpha.shape[0]
    cdef Py_ssize_t n_chunks = (n + chunk - 1) // chunk
    cdef bint want_stats = stats.shape[0] > 0
    cdef bint want_gate = grad is not None
    cdef bint check = R_in is not None
    cdef Py_ssize_t c, bad = 0
    cdef f8[::1] lnorm, inv_var
    cdef const f8[:, ::1] coefT = np.ascontiguousarray(np.vstack([alpha, beta]).T)
    if check and (R_in.shape[0] != n or R_in.shape[1] != K):
        raise ValueError("R_in must be (n, K)")
    lnorm, inv_var = _gauss_constants(var)
    for c in prange(n_chunks, nogil=True, schedule="dynamic", num_threads=n_threads):
        bad += _estep_chunk(
            c * chunk, min((c + 1) * chunk, n), d, K, X, y, w, &coefT[0, 0],
            &lnorm[0], &inv_var[0], resp, log_out, row_ll,
            &stats[c, 0, 0] if want_stats else NULL,
            &R_in[0, 0] if check else NULL,
            &grad[c, 0, 0] if want_gate else NULL,
            &info[c, 0, 0] if want_gate else NULL,
            &obj[c, 0] if want_gate else NULL,
        )
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
    cdef Py_ssize_t n = X.shape[0], K = alpha.shape[0]
    cdef Py_ssize_t n_chunks = obj.shape[0]
    cdef bint newton = grad is not None
    cdef Py_ssize_t c, bad = 0
    cdef const f8[:, ::1] alphaT = np.ascontiguousarray(np.asarray(alpha).T)
    for c in prange(n_chunks, nogil=True, schedule="dynamic", num_threads=n_threads):
        bad += _gate_chunk(c * chunk, min((c + 1) * chunk, n), X, w, R, &alphaT[0, 0], K,
                           &grad[c, 0, 0] if newton else NULL,
                           &info[c, 0, 0] if newton else NULL, &obj[c])
    return bad


cdef Py_ssize_t _gate_chunk(
    Py_ssize_t start, Py_ssize_t stop, const f8[:, ::1] X, const f8[::1] w,
    const f8[:, ::1] R, const f8* alphaT, Py_ssize_t K, f8* grad, f8* info, f8* obj,
) noexcept nogil:
    """Rows [start, stop) of gate_newton_stats (grad and info not NULL) or of
    gate_objective, accumulated privately and written once."""
    cdef Py_ssize_t i, j, d = X.shape[1]
    cdef Py_ssize_t p = d + 1
    cdef Py_ssize_t Tx = p * (p + 1) // 2
    cdef Py_ssize_t J = (K - 1) * K // 2
    cdef bint newton = grad != NULL
    cdef Py_ssize_t n_acc = (K - 1) * p + J * Tx if newton else 0
    cdef Py_ssize_t bad = 0
    cdef Py_ssize_t nb = 0
    cdef f8 acc = 0.0
    # log pi, pi, xt, ROWS buffered xt xt^T and weights, then the accumulators
    cdef Py_ssize_t n_scratch = 2 * K + p + ROWS * (Tx + J)
    cdef f8* buf = <f8*> calloc(n_scratch + n_acc, sizeof(f8))
    cdef f8* xt = buf + 2 * K
    cdef f8* U = xt + p
    cdef f8* hw = U + ROWS * Tx
    cdef f8* acc_grad = buf + n_scratch
    cdef f8* acc_info = acc_grad + (K - 1) * p
    if buf == NULL:
        obj[0] = NAN
        return stop - start
    xt[0] = 1.0
    for i in range(start, stop):
        _affine_all(alphaT, K, &X[i, 0], d, buf)
        if not isfinite(_gate_row(buf, buf + K, K)):
            bad = bad + 1
            continue
        acc = acc + _weighted_log(w[i], &R[i, 0], buf, K)
        if not newton:
            continue
        for j in range(d):
            xt[j + 1] = X[i, j]
        _packed_outer(xt, p, U + nb * Tx)
        _gate_newton_row(w[i], &R[i, 0], buf + K, K, xt, p, acc_grad, hw + nb * J)
        nb = nb + 1
        if nb == ROWS:
            _accumulate(U, Tx, 0, Tx, hw, J, nb, acc_info)
            nb = 0
    obj[0] = acc if bad == 0 else NAN
    if newton:
        _accumulate(U, Tx, 0, Tx, hw, J, nb, acc_info)
        memcpy(grad, acc_grad, (K - 1) * p * sizeof(f8))
        memcpy(info, acc_info, J * Tx * sizeof(f8))
    free(buf)
    return bad


def _gauss_constants(const f8[::1] var):
    """(-log(2 pi var) / 2, 1 / var): log N(y; m, var) = first - (y - m)^2 second / 2."""
    v = np.asarray(var)
    return -0.5 * np.log(2.0 * np.pi * v), 1.0 / v


def gate_log_proba(const f8[:, ::1] X, const f8[:, ::1] alpha, f8[:, ::1] out, int n_threads):
    """OUT out (n, K) = log softmax(alpha xt); returns the number of non-finite rows."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], K = alpha.shape[0]
    cdef Py_ssize_t i, bad = 0
    cdef const f8[:, ::1] alphaT = np.ascontiguousarray(np.asarray(alpha).T)
    for i in prange(n, nogil=True, schedule="static", num_threads=n_threads):
        _affine_all(&alphaT[0, 0], K, &X[i, 0], d, &out[i, 0])
        if not isfinite(_gate_row(&out[i, 0], NULL, K)):
            bad += 1
    return bad


def expert_log_density(
    const f8[:, ::1] X, const f8[::1] y, const f8[:, ::1] beta, const f8[::1] var,
    f8[:, ::1] out, int n_threads,
):
    """OUT out (n, K) = log N(y_i; xt_i . beta_k, var_k)."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], K = beta.shape[0]
    cdef Py_ssize_t i, k
    cdef f8 r
    cdef const f8[:, ::1] betaT = np.ascontiguousarray(np.asarray(beta).T)
    cdef f8[::1] lnorm, inv_var
    lnorm, inv_var = _gauss_constants(var)
    for i in prange(n, nogil=True, schedule="static", num_threads=n_threads):
        _affine_all(&betaT[0, 0], K, &X[i, 0], d, &out[i, 0])  # the means
        for k in range(K):
            r = y[i] - out[i, k]
            out[i, k] = lnorm[k] - 0.5 * r * r * inv_var[k]
    return 0

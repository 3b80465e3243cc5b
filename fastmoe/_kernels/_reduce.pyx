# cython: language_level=3
"""Cython driver of the reduction's assignment step (``_reduce.h``): one pass
over the support points, parallel over chunks of them, each chunk with its own
accumulators (results do not depend on the number of threads).

The C kernel has an AVX2/FMA path, chosen at run time when the CPU has those
instructions, and a plain C path; ``set_simd(False)`` forces the plain one
(tests run both).
"""

from cython.parallel cimport prange

import numpy as np

KL = 0
W2 = 1

cdef extern from "_reduce.h" nogil:
    ctypedef long long fm_int
    int FM_HAVE_AVX2_PATH
    int fm_cpu_has_avx2()
    int fm_chunk_plain(fm_int n, fm_int d, const double* X, fm_int L, const double* W,
                       const double* ML, const double* vloc, fm_int K, const double* beta,
                       const double* var, int cost, fm_int skip, double* gram, double* lin, double* scal,
                       double* mass, double* lobj, short* assign)
    int fm_chunk_avx2(fm_int n, fm_int d, const double* X, fm_int L, const double* W,
                      const double* ML, const double* vloc, fm_int K, const double* beta,
                      const double* var, int cost, fm_int skip, double* gram, double* lin, double* scal,
                      double* mass, double* lobj, short* assign)

# the two compilations of the pass share a signature: one call site
ctypedef int (*mm_chunk_fn)(fm_int, fm_int, const double*, fm_int, const double*,
                            const double*, const double*, fm_int, const double*, const double*,
                            int, fm_int, double*, double*, double*, double*, double*,
                            short*) noexcept nogil

cdef bint _has_simd = FM_HAVE_AVX2_PATH and fm_cpu_has_avx2()
cdef bint _use_simd = _has_simd


def simd_available() -> bool:
    """Whether this CPU runs the AVX2/FMA path."""
    return bool(_has_simd)


def set_simd(flag: bool) -> bool:
    """Use the AVX2/FMA path when available (True, the default) or the plain C
    path (False). Returns the previous setting."""
    global _use_simd
    previous = bool(_use_simd)
    _use_simd = bool(flag) and _has_simd
    return previous


def mm_pass(const double[:, ::1] Xs, const double[:, ::1] W, const double[:, ::1] ML,
            const double[::1] v_loc, targets, int cost, Py_ssize_t chunk, out,
            Py_ssize_t skip=-1, int n_threads=1):
    """Assignment step and sufficient statistics of the MM reduction.

    IN: Xs (S, d) support covariates; W, ML (S, L) local weights w_l(x_s) and
    means m_l(x_s); v_loc (L,) local variances; targets = (beta (K, d+1),
    var (K,)); cost KL or W2; chunk: support points per chunk; skip: a target
    whose Gram matrix is left zero (the caller derives it), or -1.
    OUT out = (gram, lin, scal, mass, lobj, assign), per chunk c:
      gram (nc, K, T) packed upper triangle of sum_s D_k(s) xt_s xt_s^T;
      lin (nc, K, d+1) sum P m_l xt; scal (nc, K, 2) sum P, sum P m_l^2;
      mass (nc, K, L) sum_s P_lks; lobj (nc, L) sum_s w_l min_k c_lk;
      assign (S, L) int16 argmin_k c_lk, or an array with S == 0 to skip.
    """
    beta_arr, var_arr = targets
    cdef const double[:, ::1] beta = np.ascontiguousarray(beta_arr, dtype=np.float64)
    cdef const double[::1] var = np.ascontiguousarray(var_arr, dtype=np.float64)
    cdef double[:, :, ::1] gram = out[0]
    cdef double[:, :, ::1] lin = out[1]
    cdef double[:, :, ::1] scal = out[2]
    cdef double[:, :, ::1] mass = out[3]
    cdef double[:, ::1] lobj = out[4]
    cdef short[:, ::1] assign = out[5]
    cdef Py_ssize_t S = Xs.shape[0], d = Xs.shape[1], L = W.shape[1], K = beta.shape[0]
    cdef Py_ssize_t nc = lobj.shape[0], T = gram.shape[2]
    if (W.shape[0] != S or ML.shape[0] != S or ML.shape[1] != L or v_loc.shape[0] != L
            or beta.shape[1] != d + 1 or var.shape[0] != K or T != (d + 1) * (d + 2) // 2
            or mass.shape[1] != K or mass.shape[2] != L or gram.shape[0] != nc
            or gram.shape[1] != K or lin.shape[0] != nc or lin.shape[1] != K
            or lin.shape[2] != d + 1 or scal.shape[0] != nc or scal.shape[1] != K
            or scal.shape[2] < 2 or mass.shape[0] != nc):
        raise ValueError("mm_pass: inconsistent shapes")
    if assign.shape[0] not in (0, S) or (assign.shape[0] and assign.shape[1] != L):
        raise ValueError("mm_pass: assign must be (S, L) or have no rows")
    if not -1 <= skip < K:
        raise ValueError(f"mm_pass: skip must be -1 or a target index; got {skip}")
    if S == 0 or chunk < 1 or nc != (S + chunk - 1) // chunk:
        raise ValueError("mm_pass: need S > 0 support points in ceil(S / chunk) chunks")
    cdef mm_chunk_fn mm_chunk = fm_chunk_avx2 if _use_simd else fm_chunk_plain
    cdef bint want_assign = assign.shape[0] > 0
    cdef Py_ssize_t c, lo, n
    cdef int failed = 0
    cdef short* a_ptr
    for c in prange(nc, nogil=True, schedule="dynamic", num_threads=n_threads):
        lo = c * chunk
        n = S - lo if S - lo < chunk else chunk
        a_ptr = &assign[lo, 0] if want_assign else NULL
        failed += mm_chunk(n, d, &Xs[lo, 0], L, &W[lo, 0], &ML[lo, 0], &v_loc[0], K,
                           &beta[0, 0], &var[0], cost, skip, &gram[c, 0, 0], &lin[c, 0, 0],
                           &scal[c, 0, 0], &mass[c, 0, 0], &lobj[c, 0], a_ptr)
    if failed:
        raise MemoryError("mm_pass: could not allocate the per-chunk scratch memory")

/* The passes of a local EM fit over one chunk of rows (method.md section 2):
 *   fm_em_chunk: the E-step (log-likelihood, responsibilities), the weighted
 *     Gram matrices of the expert update and the gate Newton statistics at the
 *     current gates for the new responsibilities, fused;
 *   fm_gate_chunk: the gate objective for given targets, and optionally its
 *     gradient and information matrix (the gate IRLS and its step halving).
 *
 * Rows go through in blocks of FM_ROWS: the exps and logs of a block are
 * taken over arrays (fm_exp, fm_log) and its weighted outer products are added
 * in register tiles (fm_gram), both from _simd.h. Each function is compiled
 * twice from the same body: once for AVX2 and FMA (used when the CPU has
 * them) and once plain; the two differ only in rounding.
 *
 * Inputs (row-major float64): X (n, d) covariates; y (n,) responses; w (n,)
 * sample weights; coefT (d+1, ld) stacked coefficients transposed, intercept
 * first: the K gates, then (fm_em_chunk) the K experts, then zero columns up
 * to ld, a multiple of 8 (fm_coef_width); lnorm, inv_var (K,):
 * log N(y; mean, var) = lnorm - (y - mean)^2 inv_var / 2.
 * With p = d+1, q = d+2, T(n) = n(n+1)/2 and J = K(K-1)/2, outputs are
 * overwritten:
 *   stats (K, T(q)): packed upper triangles of sum_i w_i r_ik z_i z_i^T,
 *     z = (1, x, y);
 *   grad (K-1, p): sum_i w_i (R_ia - s_i pi_ia) xt_i, xt = (1, x), s_i = sum_k R_ik;
 *   info (J, T(p)): packed upper triangles of sum_i w_i s_i pi_ia (delta_ab -
 *     pi_ib) xt_i xt_i^T, pairs a <= b < K-1 in row-major order.
 * A row whose gate logits or joint log-densities have a non-finite maximum is
 * left out of every sum (row_ll NaN, resp not written) and counted: the
 * return value, or n when scratch memory could not be allocated.
 */
#ifndef FASTMOE_ESTEP_H
#define FASTMOE_ESTEP_H

#include "_simd.h"

#define FM_INLINE static inline __attribute__((always_inline))

/* rows of a Gram matrix of size q in the scratch (fm_gram_rows) */
static inline fm_int fm_rows4(fm_int q) { return (q + 3) / 4 * 4; }

/* columns of the stacked coefficients for m affine functions */
static inline fm_int fm_coef_width(fm_int m) { return (m + 7) / 8 * 8; }

/* out (ld,) = coefT[0, :] + sum_j x[j] coefT[j+1, :] for coefT (d+1, ld), ld
 * a multiple of 8: eight sums at a time, kept in registers (GCC and Clang
 * vectors: two ymm registers under AVX2, four xmm registers otherwise) */
#if defined(__GNUC__) || defined(__clang__)
typedef double fm_v4 __attribute__((vector_size(32), aligned(8)));

FM_INLINE void fm_affine(const double* coefT, fm_int ld, const double* x, fm_int d, double* out) {
    for (fm_int g = 0; g < ld; g += 8) {
        fm_v4 a0 = *(const fm_v4*)(coefT + g), a1 = *(const fm_v4*)(coefT + g + 4);
        for (fm_int j = 0; j < d; j++) {
            const double* c = coefT + (j + 1) * ld + g;
            fm_v4 xj = {x[j], x[j], x[j], x[j]};
            a0 += *(const fm_v4*)c * xj;
            a1 += *(const fm_v4*)(c + 4) * xj;
        }
        *(fm_v4*)(out + g) = a0;
        *(fm_v4*)(out + g + 4) = a1;
    }
}
#else
FM_INLINE void fm_affine(const double* coefT, fm_int ld, const double* x, fm_int d, double* out) {
    for (fm_int k = 0; k < ld; k++) out[k] = coefT[k];
    for (fm_int j = 0; j < d; j++)
        for (fm_int k = 0; k < ld; k++) out[k] += coefT[(j + 1) * ld + k] * x[j];
}
#endif

/* Z row r = (1, x_i) and, when y is not NULL, y_i after it; the ld affine
 * functions of coefT (d+1, ld) into lg (nb, ld) */
FM_INLINE void fm_block_rows(fm_int nb, fm_int d, const double* X, const double* y,
                             const double* coefT, fm_int ld, fm_int P, double* Z, double* lg) {
    for (fm_int r = 0; r < nb; r++) {
        double* z = Z + r * P;
        z[0] = 1.0;
        memcpy(z + 1, X + r * d, sizeof(double) * (size_t)d);
        if (y) z[d + 1] = y[r];
        fm_affine(coefT, ld, z + 1, d, lg + r * ld);
    }
}

/* lse[r] = log sum_k exp(v[r, k]) of nb rows of K values of stride ld, and
 * e (nb, K) = exp(v - lse); rows with ok[r] == 0 are skipped (ok[r] is
 * cleared where the maximum is not finite). s is scratch (nb,). */
FM_INLINE void fm_logsumexp_block(fm_int nb, fm_int K, const double* v, fm_int ld, char* ok,
                                  double* e, double* lse, double* s, int simd) {
    for (fm_int r = 0; r < nb; r++) {
        const double* g = v + r * ld;
        double vmax = -INFINITY;
        for (fm_int k = 0; k < K; k++)
            if (g[k] > vmax) vmax = g[k];
        ok[r] = ok[r] && isfinite(vmax);
        lse[r] = vmax;
        for (fm_int k = 0; k < K; k++) e[r * K + k] = ok[r] ? g[k] - vmax : 0.0;
    }
    fm_exp(e, nb * K, simd);
    for (fm_int r = 0; r < nb; r++) {
        double t = 0.0;
        for (fm_int k = 0; k < K; k++) t += e[r * K + k];
        s[r] = t;
        t = 1.0 / t;
        for (fm_int k = 0; k < K; k++) e[r * K + k] *= t;
    }
    fm_log(s, nb, simd);
    for (fm_int r = 0; r < nb; r++) lse[r] += s[r];
}

/* w sum_k R_k logpi_k, a zero target contributing nothing (even at -inf) */
FM_INLINE double fm_weighted_log(double w, const double* R, const double* logpi, fm_int K) {
    double acc = 0.0;
    for (fm_int k = 0; k < K; k++)
        if (R[k] != 0.0) acc += R[k] * logpi[k];
    return w * acc;
}

/* one row of the gate Newton statistics: grad += its gradient, hw (J,) =
 * its weights of xt xt^T in the information blocks, w s pi_a (delta_ab - pi_b) */
FM_INLINE void fm_newton_row(double w, const double* R, const double* pi, fm_int K,
                             const double* xt, fm_int p, double* grad, double* hw) {
    double s = 0.0;
    for (fm_int k = 0; k < K; k++) s += R[k];
    double ws = w * s;
    for (fm_int a = 0; a < K - 1; a++) {
        double ca = w * R[a] - ws * pi[a];
        for (fm_int j = 0; j < p; j++) grad[a * p + j] += ca * xt[j];
    }
    for (fm_int a = 0, jj = 0; a < K - 1; a++)
        for (fm_int b = a; b < K - 1; b++, jj++)
            hw[jj] = a == b ? ws * pi[a] * (1.0 - pi[a]) : -ws * pi[a] * pi[b];
}

/* scratch of a chunk: the Z block (zero beyond its columns), logits, exps,
 * row scalars, flags, weights and the Gram tiles, in one zeroed allocation */
typedef struct {
    double *Z, *lg, *pi, *e, *s, *g_lse, *j_lse, *D, *DZ, *G, *grad;
    char* ok;
    void* mem;
} fm_scratch;

static int fm_scratch_alloc(fm_scratch* b, fm_int P, fm_int m, fm_int K, fm_int M, fm_int rows,
                            fm_int p) {
    fm_int B = FM_ROWS;
    size_t n = (size_t)(B * P + B * m + 2 * B * K + 3 * B + B * M + B * M * P + M * rows * P
                        + (K - 1) * p) + B / sizeof(double) + 1;
    double* mem = calloc(n, sizeof(double));
    if (!mem) return -1;
    b->mem = mem;
    b->Z = mem;
    b->lg = b->Z + B * P;
    b->pi = b->lg + B * m;
    b->e = b->pi + B * K;
    b->s = b->e + B * K;
    b->g_lse = b->s + B;
    b->j_lse = b->g_lse + B;
    b->D = b->j_lse + B;
    b->DZ = b->D + B * M;
    b->G = b->DZ + B * M * P;
    b->grad = b->G + M * rows * P;
    b->ok = (char*)(b->grad + (K - 1) * p);
    return 0;
}

/* a row left out: no weight, and its Z row zeroed (its x may not be finite) */
FM_INLINE void fm_drop_row(fm_int r, fm_int M, fm_int q, fm_int P, double* D, double* Z) {
    for (fm_int m = 0; m < M; m++) D[r * M + m] = 0.0;
    for (fm_int j = 0; j < q; j++) Z[r * P + j] = 0.0;
}

/* The fused EM pass over n rows (see the top of the file). resp (n, K):
 * responsibilities, or their logs if log_out; row_ll (n,). stats may be NULL;
 * grad, info and obj are NULL together or not: obj[0] = sum_i w_i row_ll_i,
 * obj[1] = the gate objective at the gates for the new responsibilities,
 * obj[2] = that for the targets R_in (n, K) (0 when R_in is NULL). */
FM_INLINE fm_int fm_em_body(fm_int n, fm_int d, fm_int K, const double* X, const double* y,
                            const double* w, const double* coefT, const double* lnorm,
                            const double* inv_var, const double* R_in, double* resp,
                            int log_out, double* row_ll, double* stats, double* grad,
                            double* info, double* obj, int simd) {
    fm_int p = d + 1, q = d + 2, m = fm_coef_width(2 * K), J = K * (K - 1) / 2;
    fm_int P = fm_stride(q), rows = fm_rows4(q);
    int want_stats = stats != NULL, want_gate = grad != NULL;
    fm_int Ks = want_stats ? K : 0, M = Ks + (want_gate ? J : 0);
    fm_scratch b;
    if (fm_scratch_alloc(&b, P, m, K, M, rows, p)) return n;
    fm_int bad = 0;
    double ll = 0.0, q_new = 0.0, q_in = 0.0;
    for (fm_int i0 = 0; i0 < n; i0 += FM_ROWS) {
        fm_int nb = n - i0 < FM_ROWS ? n - i0 : FM_ROWS;
        fm_block_rows(nb, d, X + i0 * d, y + i0, coefT, m, P, b.Z, b.lg);
        for (fm_int r = 0; r < nb; r++) b.ok[r] = 1;
        /* gates: log pi into lg[:, :K], pi */
        fm_logsumexp_block(nb, K, b.lg, m, b.ok, b.pi, b.g_lse, b.s, simd);
        for (fm_int r = 0; r < nb; r++) {
            if (!b.ok[r]) continue;
            double *g = b.lg + r * m, yi = y[i0 + r];
            for (fm_int k = 0; k < K; k++) {
                double res = yi - g[K + k];
                g[k] -= b.g_lse[r];
                g[K + k] = g[k] + lnorm[k] - 0.5 * res * res * inv_var[k]; /* joint */
            }
        }
        fm_logsumexp_block(nb, K, b.lg + K, m, b.ok, b.e, b.j_lse, b.s, simd);
        for (fm_int r = 0; r < nb; r++) {
            fm_int i = i0 + r;
            if (!b.ok[r]) {
                row_ll[i] = NAN;
                bad++;
                fm_drop_row(r, M, q, P, b.D, b.Z);
                continue;
            }
            const double *logpi = b.lg + r * m, *e = b.e + r * K, wi = w[i];
            double* out = resp + i * K;
            row_ll[i] = b.j_lse[r];
            ll += wi * b.j_lse[r];
            for (fm_int k = 0; k < K; k++) out[k] = log_out ? logpi[K + k] - b.j_lse[r] : e[k];
            if (R_in) q_in += fm_weighted_log(wi, R_in + i * K, logpi, K);
            double* Dr = b.D + r * M;
            for (fm_int k = 0; k < Ks; k++) Dr[k] = wi * e[k];
            if (want_gate) {
                q_new += fm_weighted_log(wi, e, logpi, K);
                fm_newton_row(wi, e, b.pi + r * K, K, b.Z + r * P, p, b.grad, Dr + Ks);
            }
        }
        if (M) fm_gram(nb, M, q, rows, P, b.Z, b.D, b.DZ, b.G, simd);
    }
    if (want_stats) fm_pack(K, q, rows, P, b.G, stats);
    if (want_gate) {
        fm_pack(J, p, rows, P, b.G + Ks * rows * P, info);
        memcpy(grad, b.grad, sizeof(double) * (size_t)((K - 1) * p));
        obj[0] = ll;
        obj[1] = q_new;
        obj[2] = q_in;
    }
    free(b.mem);
    return bad;
}

/* The gate objective sum_i w_i sum_k R_ik log pi_ik over n rows into obj[0]
 * (NaN if a row's logits are not finite), and, unless grad is NULL, its
 * gradient and information matrix (grad, info as at the top of the file).
 * coefT (d+1, K) holds the gates alone. */
FM_INLINE fm_int fm_gate_body(fm_int n, fm_int d, fm_int K, const double* X, const double* w,
                              const double* R, const double* coefT, double* grad, double* info,
                              double* obj, int simd) {
    fm_int p = d + 1, J = K * (K - 1) / 2, P = fm_stride(p), m = fm_coef_width(K);
    fm_int rows = fm_rows4(p);
    int newton = grad != NULL;
    fm_int M = newton ? J : 0;
    fm_scratch b;
    if (fm_scratch_alloc(&b, P, m, K, M, rows, p)) {
        obj[0] = NAN;
        return n;
    }
    fm_int bad = 0;
    double acc = 0.0;
    for (fm_int i0 = 0; i0 < n; i0 += FM_ROWS) {
        fm_int nb = n - i0 < FM_ROWS ? n - i0 : FM_ROWS;
        fm_block_rows(nb, d, X + i0 * d, NULL, coefT, m, P, b.Z, b.lg);
        for (fm_int r = 0; r < nb; r++) b.ok[r] = 1;
        fm_logsumexp_block(nb, K, b.lg, m, b.ok, b.pi, b.g_lse, b.s, simd);
        for (fm_int r = 0; r < nb; r++) {
            fm_int i = i0 + r;
            if (!b.ok[r]) {
                bad++;
                fm_drop_row(r, M, p, P, b.D, b.Z);
                continue;
            }
            double* logpi = b.lg + r * m;
            for (fm_int k = 0; k < K; k++) logpi[k] -= b.g_lse[r];
            acc += fm_weighted_log(w[i], R + i * K, logpi, K);
            if (newton)
                fm_newton_row(w[i], R + i * K, b.pi + r * K, K, b.Z + r * P, p, b.grad,
                              b.D + r * M);
        }
        if (M) fm_gram(nb, M, p, rows, P, b.Z, b.D, b.DZ, b.G, simd);
    }
    obj[0] = bad ? NAN : acc;
    if (newton) {
        fm_pack(J, p, rows, P, b.G, info);
        memcpy(grad, b.grad, sizeof(double) * (size_t)((K - 1) * p));
    }
    free(b.mem);
    return bad;
}

/* out (n, K) = log softmax of the gate logits (coefT (d+1, K)); a row whose
 * logits have a non-finite maximum is counted, its out row not finite */
FM_INLINE fm_int fm_log_proba_body(fm_int n, fm_int d, fm_int K, const double* X,
                                   const double* coefT, double* out, int simd) {
    fm_int P = fm_stride(d + 1), m = fm_coef_width(K);
    fm_scratch b;
    if (fm_scratch_alloc(&b, P, m, K, 0, 0, d + 1)) return n;
    fm_int bad = 0;
    for (fm_int i0 = 0; i0 < n; i0 += FM_ROWS) {
        fm_int nb = n - i0 < FM_ROWS ? n - i0 : FM_ROWS;
        fm_block_rows(nb, d, X + i0 * d, NULL, coefT, m, P, b.Z, b.lg);
        for (fm_int r = 0; r < nb; r++) b.ok[r] = 1;
        fm_logsumexp_block(nb, K, b.lg, m, b.ok, b.pi, b.g_lse, b.s, simd);
        for (fm_int r = 0; r < nb; r++) {
            bad += !b.ok[r];
            for (fm_int k = 0; k < K; k++)
                out[(i0 + r) * K + k] = b.lg[r * m + k] - b.g_lse[r];
        }
    }
    free(b.mem);
    return bad;
}

/* the two compilations of each body */
static fm_int fm_em_chunk_plain(fm_int n, fm_int d, fm_int K, const double* X, const double* y,
                                const double* w, const double* coefT, const double* lnorm,
                                const double* inv_var, const double* R_in, double* resp,
                                int log_out, double* row_ll, double* stats, double* grad,
                                double* info, double* obj) {
    return fm_em_body(n, d, K, X, y, w, coefT, lnorm, inv_var, R_in, resp, log_out, row_ll,
                      stats, grad, info, obj, 0);
}

static fm_int fm_gate_chunk_plain(fm_int n, fm_int d, fm_int K, const double* X,
                                  const double* w, const double* R, const double* coefT,
                                  double* grad, double* info, double* obj) {
    return fm_gate_body(n, d, K, X, w, R, coefT, grad, info, obj, 0);
}

static fm_int fm_log_proba_plain(fm_int n, fm_int d, fm_int K, const double* X,
                                 const double* coefT, double* out) {
    return fm_log_proba_body(n, d, K, X, coefT, out, 0);
}

#if FM_HAVE_AVX2_PATH
FM_AVX2 static fm_int fm_em_chunk_avx2(fm_int n, fm_int d, fm_int K, const double* X,
                                       const double* y, const double* w, const double* coefT,
                                       const double* lnorm, const double* inv_var,
                                       const double* R_in, double* resp, int log_out,
                                       double* row_ll, double* stats, double* grad,
                                       double* info, double* obj) {
    return fm_em_body(n, d, K, X, y, w, coefT, lnorm, inv_var, R_in, resp, log_out, row_ll,
                      stats, grad, info, obj, 1);
}

FM_AVX2 static fm_int fm_gate_chunk_avx2(fm_int n, fm_int d, fm_int K, const double* X,
                                         const double* w, const double* R, const double* coefT,
                                         double* grad, double* info, double* obj) {
    return fm_gate_body(n, d, K, X, w, R, coefT, grad, info, obj, 1);
}

FM_AVX2 static fm_int fm_log_proba_avx2(fm_int n, fm_int d, fm_int K, const double* X,
                                        const double* coefT, double* out) {
    return fm_log_proba_body(n, d, K, X, coefT, out, 1);
}
#else
#define fm_em_chunk_avx2 fm_em_chunk_plain
#define fm_gate_chunk_avx2 fm_gate_chunk_plain
#define fm_log_proba_avx2 fm_log_proba_plain
#endif

#endif

/* The passes of a local EM fit over one chunk of rows (docs/method.rst, section 2):
 *   fm_em_chunk: the E-step (log-likelihood, responsibilities), the weighted
 *     Gram matrices of the expert update and the gate Newton statistics at the
 *     current gates for the new responsibilities, fused;
 *   fm_gate_chunk: the gate objective for given targets, and optionally its
 *     gradient and information matrix (the gate IRLS and its step halving).
 *
 * Rows go through in blocks of FM_ROWS, and within a block every quantity is
 * stored by column (one array over the block's rows per expert, per gate, per
 * covariate), so that each step is a loop over the rows that the compiler
 * vectorises; the exps and logs are taken over arrays (fm_exp, fm_log), and
 * each weighted Gram matrix is a set of dot products over the block's rows
 * with weighted columns held in registers (fm_gram_cols), both from
 * _simd.h. Each function is compiled twice from the same body: once for AVX2
 * and FMA (used when the CPU has them) and once plain; the two differ only in
 * rounding.
 *
 * Inputs (row-major float64): X (n, d) covariates; y (n,) responses; w (n,)
 * sample weights; coefT (d+1, m) stacked coefficients transposed, intercept
 * first: the K gates, then (fm_em_chunk) the K experts; lnorm, inv_var (K,):
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

#include <float.h>

#include "_simd.h"

#if defined(__GNUC__) || defined(__clang__)
#define FM_INLINE static inline __attribute__((always_inline))
#else
#define FM_INLINE static inline
#endif

/* GCC and Clang vectors of 4 doubles (a ymm register under AVX2, two xmm
 * registers otherwise) for the loops whose sums the compilers do not keep in
 * registers by themselves; other compilers get plain loops */
#if defined(__GNUC__) || defined(__clang__)
#define FM_VECTORS 1
typedef double fm_v4 __attribute__((vector_size(32), aligned(8)));
#else
#define FM_VECTORS 0
#endif
#define FM_B FM_ROWS

/* the scratch of a chunk, by column over the FM_B rows of a block, in one
 * zeroed allocation */
typedef struct {
    double* ZT;   /* (q, FM_B) z = (1, x[, y]) of the block's rows, by column */
    double* A;    /* (m, FM_B) gate logits, then log pi; expert means, then joint log-densities */
    double* pi;   /* (K, FM_B) gate probabilities */
    double* e;    /* (K, FM_B) responsibilities (fm_em_body) or targets (fm_gate_body) */
    double* ok;   /* (FM_B) 1 for a row in the block whose maxima are finite, else 0 */
    double* W;    /* (FM_B) its sample weight, 0 for a row left out */
    double *mg, *sg; /* (FM_B) the gate logits' maximum and sum of exps (fm_softmax_block) */
    double *mj, *sj; /* (FM_B) the same for the joint log-densities */
    double* lse;     /* (FM_B) the gates' log-partition mg + log sg */
    double* t;       /* (2, FM_B) temporary */
    double* D;    /* (M, FM_B) weights of the Gram matrices */
    double* G;    /* (nG, 4) their packed upper triangles, in 4 partial sums */
    double* grad; /* (K-1, p, 4) gradient, in 4 partial sums */
    void* mem;
} fm_scratch;

static int fm_scratch_alloc(fm_scratch* b, fm_int q, fm_int p, fm_int m, fm_int K, fm_int M,
                            fm_int nG) {
    fm_int n_row = 9 + m + 2 * K + M;
    size_t n = (size_t)(q * FM_B + n_row * FM_B + nG * 4 + (K - 1) * p * 4);
    double* mem = calloc(n, sizeof(double));
    if (!mem) return -1;
    b->mem = mem;
    b->ZT = mem;
    b->A = b->ZT + q * FM_B;
    b->pi = b->A + m * FM_B;
    b->e = b->pi + K * FM_B;
    b->ok = b->e + K * FM_B;
    b->W = b->ok + FM_B;
    b->mg = b->W + FM_B;
    b->sg = b->mg + FM_B;
    b->mj = b->sg + FM_B;
    b->sj = b->mj + FM_B;
    b->lse = b->sj + FM_B;
    b->t = b->lse + FM_B;
    b->D = b->t + 2 * FM_B;
    b->G = b->D + M * FM_B;
    b->grad = b->G + nG * 4;
    return 0;
}

#if FM_HAVE_AVX2_PATH
/* ZT[(j+1)*FM_B + r] = X[r*d + j] for the 4 rows r0..r0+3 and the columns
 * j < d in 4 x 4 transposes (the last d mod 4 columns one by one) */
FM_AVX2 static void fm_transpose4_avx2(fm_int d, const double* X, fm_int r0, double* ZT) {
    const double *x0 = X + r0 * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
    fm_int j = 0;
    for (; j + 4 <= d; j += 4) {
        __m256d a = _mm256_loadu_pd(x0 + j), b = _mm256_loadu_pd(x1 + j);
        __m256d c = _mm256_loadu_pd(x2 + j), e = _mm256_loadu_pd(x3 + j);
        __m256d ab0 = _mm256_unpacklo_pd(a, b), ab1 = _mm256_unpackhi_pd(a, b);
        __m256d ce0 = _mm256_unpacklo_pd(c, e), ce1 = _mm256_unpackhi_pd(c, e);
        double* z = ZT + (j + 1) * FM_B + r0;
        _mm256_storeu_pd(z, _mm256_permute2f128_pd(ab0, ce0, 0x20));
        _mm256_storeu_pd(z + FM_B, _mm256_permute2f128_pd(ab1, ce1, 0x20));
        _mm256_storeu_pd(z + 2 * FM_B, _mm256_permute2f128_pd(ab0, ce0, 0x31));
        _mm256_storeu_pd(z + 3 * FM_B, _mm256_permute2f128_pd(ab1, ce1, 0x31));
    }
    for (; j < d; j++) {
        double* z = ZT + (j + 1) * FM_B + r0;
        z[0] = x0[j];
        z[1] = x1[j];
        z[2] = x2[j];
        z[3] = x3[j];
    }
}

#endif

/* the nb rows of a block by column: ZT = (1, x_i) and, when y is not NULL,
 * y_i after it; ok = 1 for them, 0 for the rest of the block (whose columns
 * keep finite values of an earlier block, or zeros) */
FM_INLINE void fm_load_block(fm_int nb, fm_int d, const double* X, const double* y,
                             fm_scratch* b, int simd) {
    fm_int r = 0;
#if FM_HAVE_AVX2_PATH
    if (simd) /* whole groups of 4 rows in 4 x 4 transposes */
        for (; r + 4 <= nb; r += 4) fm_transpose4_avx2(d, X, r, b->ZT);
#else
    (void)simd;
#endif
    for (; r < nb; r++)
        for (fm_int j = 0; j < d; j++) b->ZT[(j + 1) * FM_B + r] = X[r * d + j];
    for (r = 0; r < nb; r++) {
        b->ZT[r] = 1.0;
        if (y) b->ZT[(d + 1) * FM_B + r] = y[r];
    }
    for (fm_int r = 0; r < FM_B; r++) b->ok[r] = r < nb ? 1.0 : 0.0;
}

/* A (m, FM_B) = the m affine functions coefT (p, m) of the block's rows,
 * ZT[0] being the intercept's ones (rows past the block give finite garbage).
 * Sixteen rows at a time in four vectors: four independent chains of sums. */
#if FM_VECTORS
FM_INLINE void fm_affine_block(const double* coefT, fm_int m, fm_int p, const double* ZT,
                               double* A) {
    for (fm_int k = 0; k < m; k++)
        for (int v = 0; v < FM_B; v += 16) {
            const double c0 = coefT[k];
            fm_v4 s0 = {c0, c0, c0, c0}, s1 = s0, s2 = s0, s3 = s0;
            for (fm_int j = 1; j < p; j++) {
                const double c = coefT[j * m + k];
                const fm_v4 cv = {c, c, c, c};
                const fm_v4* zt = (const fm_v4*)(ZT + j * FM_B + v);
                s0 += cv * zt[0];
                s1 += cv * zt[1];
                s2 += cv * zt[2];
                s3 += cv * zt[3];
            }
            fm_v4* out = (fm_v4*)(A + k * FM_B + v);
            out[0] = s0;
            out[1] = s1;
            out[2] = s2;
            out[3] = s3;
        }
}
#else
FM_INLINE void fm_affine_block(const double* coefT, fm_int m, fm_int p, const double* ZT,
                               double* A) {
    for (fm_int k = 0; k < m; k++) {
        for (int r = 0; r < FM_B; r++) A[k * FM_B + r] = coefT[k];
        for (fm_int j = 1; j < p; j++)
            for (int r = 0; r < FM_B; r++) A[k * FM_B + r] += coefT[j * m + k] * ZT[j * FM_B + r];
    }
}
#endif

/* e (K, FM_B) = V - mx where ok, else 0, for the K columns V (K, FM_B). As a
 * plain loop GCC keeps a branch per row (the subtraction might trap where
 * ok is 0), so the vectors mask the difference. */
#if FM_VECTORS
typedef long long fm_v4i __attribute__((vector_size(32), aligned(8)));
FM_INLINE void fm_select_diff(fm_int K, const double* V, const double* mx, const double* ok,
                              double* e) {
    const fm_v4 zero = {0.0, 0.0, 0.0, 0.0};
    for (fm_int k = 0; k < K; k++)
        for (int v = 0; v < FM_B; v += 4) {
            fm_v4 x = *(const fm_v4*)(V + k * FM_B + v) - *(const fm_v4*)(mx + v);
            fm_v4i keep = *(const fm_v4*)(ok + v) != zero;
            *(fm_v4*)(e + k * FM_B + v) = (fm_v4)((fm_v4i)x & keep);
        }
}
#else
FM_INLINE void fm_select_diff(fm_int K, const double* V, const double* mx, const double* ok,
                              double* e) {
    for (fm_int k = 0; k < K; k++)
        for (int r = 0; r < FM_B; r++)
            e[k * FM_B + r] = ok[r] != 0.0 ? V[k * FM_B + r] - mx[r] : 0.0;
}
#endif

/* e (K, FM_B) = exp(V - mx) / S for the K columns V (K, FM_B): mx the rows'
 * maximum, S = sum_k exp(V_k - mx), which lies in [1, K]; ok is cleared where
 * mx is not finite (those rows' e and S are finite and meaningless) */
FM_INLINE void fm_softmax_block(fm_int K, const double* V, double* ok, double* mx, double* S,
                                double* e, double* inv, int simd) {
    for (int r = 0; r < FM_B; r++) mx[r] = -INFINITY;
    for (fm_int k = 0; k < K; k++)
        for (int r = 0; r < FM_B; r++) mx[r] = V[k * FM_B + r] > mx[r] ? V[k * FM_B + r] : mx[r];
    for (int r = 0; r < FM_B; r++) ok[r] = ok[r] != 0.0 && fabs(mx[r]) <= DBL_MAX ? 1.0 : 0.0;
    fm_select_diff(K, V, mx, ok, e);
    fm_exp(e, K * FM_B, simd);
    for (int r = 0; r < FM_B; r++) S[r] = 0.0;
    for (fm_int k = 0; k < K; k++)
        for (int r = 0; r < FM_B; r++) S[r] += e[k * FM_B + r];
    for (int r = 0; r < FM_B; r++) inv[r] = 1.0 / S[r];
    for (fm_int k = 0; k < K; k++)
        for (int r = 0; r < FM_B; r++) e[k * FM_B + r] *= inv[r];
}

/* the gates of the block, from their logits A[:K]: pi, their maximum mg and
 * sum of exps sg (fm_softmax_block); with logpi, A[:K] = log pi and lse =
 * their log-partition mg + log sg */
FM_INLINE void fm_gates_block(fm_int K, fm_scratch* b, int logpi, int simd) {
    fm_softmax_block(K, b->A, b->ok, b->mg, b->sg, b->pi, b->t, simd);
    if (!logpi) return;
    for (int r = 0; r < FM_B; r++) b->lse[r] = b->sg[r];
    fm_log(b->lse, FM_B, simd);
    for (int r = 0; r < FM_B; r++) b->lse[r] += b->mg[r];
    for (fm_int k = 0; k < K; k++)
        for (int r = 0; r < FM_B; r++) b->A[k * FM_B + r] -= b->lse[r];
}

/* out[j] = sum_r W_r log x_j[r] over the rows of the block for the two
 * columns x_0 = sj, x_1 = sg of sums of a softmax (in [1, K]); rows with
 * W_r = 0 add nothing. With uniform (the rows with W_r != 0 share one weight
 * w0, as unit sample weights do), the log of products: out[j] = w0 sum_l log
 * prod_{r = l mod 4} x_j[r], one log per 8 rows (a product of 8 values in
 * [1, K] does not overflow); else a log per row, left in tmp (2, FM_B) for
 * the rows with ok (1 elsewhere). The two differ only in rounding. */
FM_INLINE void fm_wlogsum2(const double* ok, const double* W, int uniform, double w0,
                           const double* sj, const double* sg, double* tmp, double* out,
                           int simd) {
    if (uniform) {
        double prod[8] = {1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0};
        for (int v = 0; v < FM_B; v += 4)
            for (int l = 0; l < 4; l++) {
                prod[l] *= W[v + l] != 0.0 ? sj[v + l] : 1.0;
                prod[4 + l] *= W[v + l] != 0.0 ? sg[v + l] : 1.0;
            }
        fm_log(prod, 8, simd);
        out[0] = w0 * ((prod[0] + prod[1]) + (prod[2] + prod[3]));
        out[1] = w0 * ((prod[4] + prod[5]) + (prod[6] + prod[7]));
        return;
    }
    for (int r = 0; r < FM_B; r++) {
        tmp[r] = ok[r] != 0.0 ? sj[r] : 1.0;
        tmp[FM_B + r] = ok[r] != 0.0 ? sg[r] : 1.0;
    }
    fm_log(tmp, 2 * FM_B, simd);
    double a = 0.0, c = 0.0;
    for (int r = 0; r < FM_B; r++) {
        a += W[r] * tmp[r];
        c += W[r] * tmp[FM_B + r];
    }
    out[0] = a;
    out[1] = c;
}

/* the block of rows from i0 (returns how many): its rows by column, the m
 * affine functions of coefT, the K gates first, and the gates
 * (fm_gates_block) */
FM_INLINE fm_int fm_start_block(fm_int i0, fm_int n, fm_int d, const double* X, const double* y,
                                const double* coefT, fm_int m, fm_int K, fm_scratch* b,
                                int logpi, int simd) {
    fm_int nb = n - i0 < FM_B ? n - i0 : FM_B;
    fm_load_block(nb, d, X + i0 * d, y ? y + i0 : NULL, b, simd);
    fm_affine_block(coefT, m, d + 1, b->ZT, b->A);
    fm_gates_block(K, b, logpi, simd);
    return nb;
}

/* w sum_k R_k logpi_k for one row: R of stride rs, logpi a column of the
 * block (stride FM_B); a zero target contributes nothing (even at -inf) */
FM_INLINE double fm_weighted_log(double w, const double* R, fm_int rs, const double* logpi,
                                 fm_int K) {
    double acc = 0.0;
    for (fm_int k = 0; k < K; k++)
        if (R[k * rs] != 0.0) acc += R[k * rs] * logpi[k * FM_B];
    return w * acc;
}

/* g[0..4] += the 4 partial sums of x . y over the FM_B rows (x[r] y[r] goes
 * to sum r mod 4; two chains of sums) */
#if FM_VECTORS
FM_INLINE void fm_dot4(const double* x, const double* y, double* g) {
    const fm_v4 *x4 = (const fm_v4*)x, *y4 = (const fm_v4*)y;
    fm_v4 s0 = x4[0] * y4[0], s1 = x4[1] * y4[1];
    for (int v = 2; v < FM_B / 4; v += 2) {
        s0 += x4[v] * y4[v];
        s1 += x4[v + 1] * y4[v + 1];
    }
    *(fm_v4*)g += s0 + s1;
}
#else
FM_INLINE void fm_dot4(const double* x, const double* y, double* g) {
    for (int l = 0; l < 4; l++) {
        double s0 = x[l] * y[l], s1 = x[4 + l] * y[4 + l];
        for (int v = 8; v < FM_B; v += 8) {
            s0 += x[v + l] * y[v + l];
            s1 += x[v + 4 + l] * y[v + 4 + l];
        }
        g[l] += s0 + s1;
    }
}
#endif

/* the gate Newton statistics of the block for targets R (K, FM_B), with
 * weights W: grad += sum_r W_r (R_ra - s_r pi_ra) xt_r (in 4 partial sums),
 * HW (J, FM_B) = the weights of xt_r xt_r^T in the information blocks,
 * W_r s_r pi_ra (delta_ab - pi_rb); s_r = sum_k R_rk */
FM_INLINE void fm_newton_block(fm_int K, fm_int p, const double* R, fm_scratch* b, double* HW) {
    double *ws = b->t, *ca = b->t + FM_B;
    const double *W = b->W, *pi = b->pi;
    for (int r = 0; r < FM_B; r++) ws[r] = 0.0;
    for (fm_int k = 0; k < K; k++)
        for (int r = 0; r < FM_B; r++) ws[r] += R[k * FM_B + r];
    for (int r = 0; r < FM_B; r++) ws[r] *= W[r];
    for (fm_int a = 0; a < K - 1; a++) {
        for (int r = 0; r < FM_B; r++)
            ca[r] = W[r] * R[a * FM_B + r] - ws[r] * pi[a * FM_B + r];
        for (fm_int j = 0; j < p; j++)
            fm_dot4(ca, b->ZT + j * FM_B, b->grad + (a * p + j) * 4);
    }
    for (fm_int a = 0, jj = 0; a < K - 1; a++)
        for (fm_int c = a; c < K - 1; c++, jj++) {
            const double *pa = pi + a * FM_B, *pc = pi + c * FM_B;
            double* h = HW + jj * FM_B;
            if (a == c)
                for (int r = 0; r < FM_B; r++) h[r] = ws[r] * pa[r] * (1.0 - pa[r]);
            else
                for (int r = 0; r < FM_B; r++) h[r] = -ws[r] * pa[r] * pc[r];
        }
}

/* a row left out: no weight, and its z zeroed (its x may not be finite) */
FM_INLINE void fm_drop_row(fm_int r, fm_int q, fm_scratch* b) {
    b->W[r] = 0.0;
    for (fm_int j = 0; j < q; j++) b->ZT[j * FM_B + r] = 0.0;
}

/* out (n,) = the n sums of 4 partial sums s (n, 4), added in a fixed order */
static void fm_lanes_out(fm_int n, const double* s, double* out) {
    for (fm_int t = 0; t < n; t++)
        out[t] = (s[4 * t] + s[4 * t + 1]) + (s[4 * t + 2] + s[4 * t + 3]);
}

/* G (4 partial sums per entry) += the weighted Gram matrices of the block:
 * the first Ms weights D[:Ms] of size n1, the others of size n2 */
FM_INLINE void fm_gram_block(fm_int M, fm_int Ms, fm_int n1, fm_int n2, const fm_scratch* b,
                             double* G, int simd) {
    size_t bytes = sizeof(double) * 4 * (size_t)(Ms * n1 * (n1 + 1) / 2 +
                                                 (M - Ms) * n2 * (n2 + 1) / 2);
    int paired = bytes <= FM_PAIRED_BYTES;
    for (fm_int m = 0; m < M; m++) {
        fm_int n = m < Ms ? n1 : n2;
        fm_gram_cols(n, b->ZT, b->D + m * FM_B, G, simd, paired);
        G += n * (n + 1) / 2 * 4;
    }
}

/* The fused EM pass over n rows (see the top of the file). resp (n, K):
 * responsibilities, or their logs if log_out, or NULL (not written); row_ll
 * (n,) or NULL; stats may be NULL; stats[skip] is left zero (the caller
 * derives it: the weights of the experts sum to w), or none when skip is -1;
 * grad and info are NULL together or not; obj (2,) or NULL: obj[0] = sum_i
 * w_i row_ll_i, obj[1] = sum_i w_i lse_i, lse_i = log sum_k exp(the gate
 * logits of row i). For targets R whose rows sum to 1 the gate objective is
 * sum_k alpha_k . (sum_i w_i R_ik xt_i) - obj[1]: the caller takes the sums
 * from the first rows of the Gram matrices. */
FM_INLINE fm_int fm_em_body(fm_int n, fm_int d, fm_int K, const double* X, const double* y,
                            const double* w, const double* coefT, const double* lnorm,
                            const double* inv_var, double* resp, int log_out, double* row_ll,
                            double* stats, fm_int skip, double* grad, double* info, double* obj,
                            int simd) {
    fm_int p = d + 1, q = d + 2, J = K * (K - 1) / 2, T = q * (q + 1) / 2, Tp = p * (p + 1) / 2;
    int want_stats = stats != NULL, want_gate = grad != NULL;
    int per_row = row_ll != NULL || (resp != NULL && log_out);
    fm_int Ks = want_stats ? (skip >= 0 ? K - 1 : K) : 0, M = Ks + (want_gate ? J : 0);
    fm_scratch b;
    if (fm_scratch_alloc(&b, q, p, 2 * K, K, M, Ks * T + (want_gate ? J * Tp : 0))) return n;
    double *A = b.A, *E = b.e, *ZT = b.ZT, *W = b.W;
    fm_int bad = 0;
    double ll = 0.0, part = 0.0;
    for (fm_int i0 = 0; i0 < n; i0 += FM_B) {
        fm_int nb = fm_start_block(i0, n, d, X, y, coefT, 2 * K, K, &b, 0, simd);
        for (fm_int k = 0; k < K; k++) { /* logit + log density, in place of the means */
            const double *g = A + k * FM_B, *yb = ZT + (q - 1) * FM_B;
            double* mj = A + (K + k) * FM_B;
            for (int r = 0; r < FM_B; r++) {
                double res = yb[r] - mj[r];
                mj[r] = g[r] + lnorm[k] - 0.5 * res * res * inv_var[k];
            }
        }
        /* the responsibilities: a softmax of the joint log-densities, whose
         * log-sum-exp minus the gates' is the row's log-likelihood */
        fm_softmax_block(K, A + K * FM_B, b.ok, b.mj, b.sj, E, b.t, simd);
        int uniform = !per_row;
        double w0 = 0.0;
        for (fm_int r = 0; r < FM_B; r++) {
            fm_int i = i0 + r;
            W[r] = 0.0;
            if (r >= nb) continue;
            if (b.ok[r] == 0.0) {
                if (row_ll) row_ll[i] = NAN;
                bad++;
                fm_drop_row(r, q, &b);
                continue;
            }
            W[r] = w[i];
            if (w0 == 0.0)
                w0 = w[i];
            else if (w[i] != 0.0 && w[i] != w0)
                uniform = 0;
            if (resp && !log_out)
                for (fm_int k = 0; k < K; k++) resp[i * K + k] = E[k * FM_B + r];
        }
        double logs[2], shift = 0.0, lg = 0.0;
        fm_wlogsum2(b.ok, W, uniform, w0, b.sj, b.sg, b.t, logs, simd);
        for (int r = 0; r < FM_B; r++) {
            double a = W[r] * (b.mj[r] - b.mg[r]), c = W[r] * b.mg[r];
            shift += W[r] != 0.0 ? a : 0.0;
            lg += W[r] != 0.0 ? c : 0.0;
        }
        ll += shift + (logs[0] - logs[1]);
        part += lg + logs[1];
        if (per_row) /* fm_wlogsum2 left the rows' logs in b.t */
            for (fm_int r = 0; r < nb; r++) {
                if (b.ok[r] == 0.0) continue;
                fm_int i = i0 + r;
                double lse = b.mj[r] + b.t[r];
                if (row_ll) row_ll[i] = lse - (b.mg[r] + b.t[FM_B + r]);
                if (resp && log_out)
                    for (fm_int k = 0; k < K; k++) resp[i * K + k] = A[(K + k) * FM_B + r] - lse;
            }
        for (fm_int k = 0, kk = 0; k < K && want_stats; k++) {
            if (k == skip) continue;
            for (int r = 0; r < FM_B; r++) b.D[kk * FM_B + r] = W[r] * E[k * FM_B + r];
            kk++;
        }
        if (want_gate) fm_newton_block(K, p, E, &b, b.D + Ks * FM_B);
        fm_gram_block(M, Ks, q, p, &b, b.G, simd);
    }
    for (fm_int k = 0, kk = 0; k < K && want_stats; k++) {
        if (k == skip)
            memset(stats + k * T, 0, sizeof(double) * (size_t)T);
        else
            fm_lanes_out(T, b.G + kk++ * T * 4, stats + k * T);
    }
    if (want_gate) {
        fm_lanes_out(J * Tp, b.G + Ks * T * 4, info);
        fm_lanes_out((K - 1) * p, b.grad, grad);
    }
    if (obj) {
        obj[0] = ll;
        obj[1] = part;
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
    fm_int p = d + 1, J = K * (K - 1) / 2, Tp = p * (p + 1) / 2;
    int newton = grad != NULL;
    fm_int M = newton ? J : 0;
    fm_scratch b;
    if (fm_scratch_alloc(&b, p, p, K, K, M, M * Tp)) {
        obj[0] = NAN;
        return n;
    }
    fm_int bad = 0;
    double acc = 0.0;
    for (fm_int i0 = 0; i0 < n; i0 += FM_B) {
        fm_int nb = fm_start_block(i0, n, d, X, NULL, coefT, K, K, &b, 1, simd);
        for (fm_int r = 0; r < FM_B; r++) {
            fm_int i = i0 + r;
            b.W[r] = 0.0;
            for (fm_int k = 0; k < K; k++) b.e[k * FM_B + r] = r < nb ? R[i * K + k] : 0.0;
            if (r >= nb) continue;
            if (b.ok[r] == 0.0) {
                bad++;
                fm_drop_row(r, p, &b);
                continue;
            }
            b.W[r] = w[i];
            acc += fm_weighted_log(w[i], R + i * K, 1, b.A + r, K);
        }
        if (newton) {
            fm_newton_block(K, p, b.e, &b, b.D);
            fm_gram_block(M, 0, p, p, &b, b.G, simd);
        }
    }
    obj[0] = bad ? NAN : acc;
    if (newton) {
        fm_lanes_out(J * Tp, b.G, info);
        fm_lanes_out((K - 1) * p, b.grad, grad);
    }
    free(b.mem);
    return bad;
}

/* out (n, K) = log softmax of the gate logits (coefT (d+1, K)); a row whose
 * logits have a non-finite maximum is counted */
FM_INLINE fm_int fm_log_proba_body(fm_int n, fm_int d, fm_int K, const double* X,
                                   const double* coefT, double* out, int simd) {
    fm_int p = d + 1;
    fm_scratch b;
    if (fm_scratch_alloc(&b, p, p, K, K, 0, 0)) return n;
    fm_int bad = 0;
    for (fm_int i0 = 0; i0 < n; i0 += FM_B) {
        fm_int nb = fm_start_block(i0, n, d, X, NULL, coefT, K, K, &b, 1, simd);
        for (fm_int r = 0; r < nb; r++) {
            bad += b.ok[r] == 0.0;
            for (fm_int k = 0; k < K; k++) out[(i0 + r) * K + k] = b.A[k * FM_B + r];
        }
    }
    free(b.mem);
    return bad;
}

/* the two compilations of each body */
static fm_int fm_em_chunk_plain(fm_int n, fm_int d, fm_int K, const double* X, const double* y,
                                const double* w, const double* coefT, const double* lnorm,
                                const double* inv_var, double* resp, int log_out,
                                double* row_ll, double* stats, fm_int skip,
                                double* grad, double* info, double* obj) {
    return fm_em_body(n, d, K, X, y, w, coefT, lnorm, inv_var, resp, log_out, row_ll,
                      stats, skip, grad, info, obj, 0);
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
                                       const double* lnorm, const double* inv_var, double* resp,
                                       int log_out, double* row_ll, double* stats, fm_int skip,
                                       double* grad, double* info, double* obj) {
    return fm_em_body(n, d, K, X, y, w, coefT, lnorm, inv_var, resp, log_out, row_ll,
                      stats, skip, grad, info, obj, 1);
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

/* SIMD building blocks shared by the compiled kernels (_reduce.h, _estep.h):
 * weighted Gram matrices of a block of rows in register tiles, and exp and
 * log over arrays. Each has an AVX2/FMA version, compiled for those
 * instructions only (a function attribute, not a build flag) and used when
 * the CPU has them (fm_cpu_has_avx2), and a plain C version for other CPUs
 * and compilers. The two differ only in rounding: the vector exp and log are
 * within 2 ulp of the C library's (their arguments outside the range of the
 * fast formula go to the library, lane by lane).
 */
#ifndef FASTMOE_SIMD_H
#define FASTMOE_SIMD_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef long long fm_int;

#define FM_ROWS 32 /* rows per Gram block */

/* row stride of a Gram block's rows: >= p + 7, so that a run of 8 columns
 * fits from any column (the tiles read past the last column, into zeros) */
static inline fm_int fm_stride(fm_int p) { return (p + 10) / 4 * 4; }

/* out: the packed (row-major) upper n x n triangles of nm matrices of row
 * stride P, each rows * P apart */
static void fm_pack(fm_int nm, fm_int n, fm_int rows, fm_int P, const double* G, double* out) {
    for (fm_int m = 0, t = 0; m < nm; m++)
        for (fm_int a = 0; a < n; a++)
            for (fm_int b = a; b < n; b++) out[t++] = G[(m * rows + a) * P + b];
}

/* G[m] (rows apart, stride P) upper q x q part += sum_r D[m dm + r] z_r z_r^T
 * for the M weights of the nb rows Z (nb, P): the plain version of
 * fm_gram_rows, four rows at a time (each entry loaded and stored once per
 * four rows; the loop over columns vectorises) */
static void fm_gram_plain(fm_int nb, fm_int M, fm_int q, fm_int rows, fm_int P, const double* Z,
                          const double* D, fm_int dm, double* G) {
    fm_int r = 0;
    for (; r + 4 <= nb; r += 4) {
        const double *z0 = Z + r * P, *z1 = z0 + P, *z2 = z1 + P, *z3 = z2 + P;
        for (fm_int m = 0; m < M; m++) {
            const double* c = D + m * dm + r;
            for (fm_int a = 0; a < q; a++) {
                double c0 = c[0] * z0[a], c1 = c[1] * z1[a], c2 = c[2] * z2[a], c3 = c[3] * z3[a];
                double* g = G + (m * rows + a) * P;
                for (fm_int j = a; j < q; j++)
                    g[j] += (c0 * z0[j] + c1 * z1[j]) + (c2 * z2[j] + c3 * z3[j]);
            }
        }
    }
    for (; r < nb; r++) {
        const double* z = Z + r * P;
        for (fm_int m = 0; m < M; m++) {
            double *g = G + m * rows * P, c = D[m * dm + r];
            for (fm_int a = 0; a < q; a++) {
                double ca = c * z[a];
                for (fm_int j = a; j < q; j++) g[a * P + j] += ca * z[j];
            }
        }
    }
}

/* FM_NO_AVX2 compiles the plain versions alone, as on other CPUs and compilers */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(FM_NO_AVX2)
#define FM_HAVE_AVX2_PATH 1
#include <immintrin.h>

#define FM_AVX2 __attribute__((target("avx2,fma")))

static int fm_cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

FM_AVX2 static inline double fm_hsum(__m256d v) {
    __m128d lo = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(lo, _mm_unpackhi_pd(lo, lo)));
}

/* g[q*gs + 0..8] += sum_r w[r*ws + q*ls] z[r*P + 0..8] for the 4 lanes q:
 * 8 accumulators */
FM_AVX2 __attribute__((noinline)) static void fm_tile4(fm_int nb, const double* restrict z,
                                                       fm_int P, const double* restrict w,
                                                       fm_int ls, fm_int ws, double* restrict g,
                                                       fm_int gs) {
    __m256d c0 = _mm256_loadu_pd(g), e0 = _mm256_loadu_pd(g + 4);
    __m256d c1 = _mm256_loadu_pd(g + gs), e1 = _mm256_loadu_pd(g + gs + 4);
    __m256d c2 = _mm256_loadu_pd(g + 2 * gs), e2 = _mm256_loadu_pd(g + 2 * gs + 4);
    __m256d c3 = _mm256_loadu_pd(g + 3 * gs), e3 = _mm256_loadu_pd(g + 3 * gs + 4);
    for (fm_int r = 0; r < nb; r++) {
        __m256d zv = _mm256_loadu_pd(z), zw = _mm256_loadu_pd(z + 4);
        __m256d w0 = _mm256_broadcast_sd(w), w1 = _mm256_broadcast_sd(w + ls);
        __m256d w2 = _mm256_broadcast_sd(w + 2 * ls), w3 = _mm256_broadcast_sd(w + 3 * ls);
        c0 = _mm256_fmadd_pd(w0, zv, c0);
        e0 = _mm256_fmadd_pd(w0, zw, e0);
        c1 = _mm256_fmadd_pd(w1, zv, c1);
        e1 = _mm256_fmadd_pd(w1, zw, e1);
        c2 = _mm256_fmadd_pd(w2, zv, c2);
        e2 = _mm256_fmadd_pd(w2, zw, e2);
        c3 = _mm256_fmadd_pd(w3, zv, c3);
        e3 = _mm256_fmadd_pd(w3, zw, e3);
        z += P;
        w += ws;
    }
    _mm256_storeu_pd(g, c0);
    _mm256_storeu_pd(g + 4, e0);
    _mm256_storeu_pd(g + gs, c1);
    _mm256_storeu_pd(g + gs + 4, e1);
    _mm256_storeu_pd(g + 2 * gs, c2);
    _mm256_storeu_pd(g + 2 * gs + 4, e2);
    _mm256_storeu_pd(g + 3 * gs, c3);
    _mm256_storeu_pd(g + 3 * gs + 4, e3);
}

/* g[q*gs + 0..4] += sum_r w[r*ws + q*ls] z[r*P + 0..4] for the 4 lanes q */
FM_AVX2 __attribute__((noinline)) static void fm_tile4x4(fm_int nb, const double* restrict z,
                                                         fm_int P, const double* restrict w,
                                                         fm_int ls, fm_int ws,
                                                         double* restrict g, fm_int gs) {
    __m256d c0 = _mm256_loadu_pd(g), c1 = _mm256_loadu_pd(g + gs);
    __m256d c2 = _mm256_loadu_pd(g + 2 * gs), c3 = _mm256_loadu_pd(g + 3 * gs);
    for (fm_int r = 0; r < nb; r++) {
        __m256d zv = _mm256_loadu_pd(z);
        c0 = _mm256_fmadd_pd(_mm256_broadcast_sd(w), zv, c0);
        c1 = _mm256_fmadd_pd(_mm256_broadcast_sd(w + ls), zv, c1);
        c2 = _mm256_fmadd_pd(_mm256_broadcast_sd(w + 2 * ls), zv, c2);
        c3 = _mm256_fmadd_pd(_mm256_broadcast_sd(w + 3 * ls), zv, c3);
        z += P;
        w += ws;
    }
    _mm256_storeu_pd(g, c0);
    _mm256_storeu_pd(g + gs, c1);
    _mm256_storeu_pd(g + 2 * gs, c2);
    _mm256_storeu_pd(g + 3 * gs, c3);
}

/* G[m] (rows >= q rounded up to 4, stride P) upper part += sum_r D[m dm + r]
 * z_r z_r^T for the M weights of the nb rows Z (nb, P), zero beyond column q;
 * DZ (nb, M, rows) is scratch. Four rows a of one G[m] at a time, from column
 * 4 floor(a/4), in tiles of 8 columns and a last one of 4 (the entries below
 * the diagonal and past column q are wasted, never read): the layout for few
 * weights (the EM pass), where fm_gram_block groups four weights. */
FM_AVX2 static void fm_gram_rows(fm_int nb, fm_int M, fm_int q, fm_int rows, fm_int P,
                                 const double* Z, const double* D, fm_int dm, double* DZ,
                                 double* G) {
    for (fm_int r = 0; r < nb; r++)
        for (fm_int m = 0; m < M; m++) {
            __m256d c = _mm256_broadcast_sd(D + m * dm + r);
            double* dz = DZ + (r * M + m) * rows;
            for (fm_int j = 0; j < rows; j += 4)
                _mm256_storeu_pd(dz + j, _mm256_mul_pd(c, _mm256_loadu_pd(Z + r * P + j)));
        }
    fm_int ws = M * rows;
    for (fm_int m = 0; m < M; m++)
        for (fm_int a = 0; a < q; a += 4) {
            double* g = G + (m * rows + a) * P;
            const double* w = DZ + m * rows + a;
            fm_int j = a;
            for (; q - j > 4; j += 8) fm_tile4(nb, Z + j, P, w, 1, ws, g + j, P);
            if (j < q) fm_tile4x4(nb, Z + j, P, w, 1, ws, g + j, P);
        }
}

/* sum_{j < n} c[j] x^j by Estrin's scheme (n even, at most 16): pairs
 * c[j] + c[j+1] x, combined with x^2, x^4, x^8; a dependency chain of depth
 * about log2(n) instead of Horner's n */
FM_AVX2 static inline __m256d fm_estrin(__m256d x, const double* c, int n) {
    __m256d t[8];
    for (int j = 0; j < n / 2; j++)
        t[j] = _mm256_fmadd_pd(_mm256_set1_pd(c[2 * j + 1]), x, _mm256_set1_pd(c[2 * j]));
    __m256d xx = _mm256_mul_pd(x, x);
    for (int m = n / 2; m > 1; m = (m + 1) / 2) {
        for (int j = 0; j < m / 2; j++) t[j] = _mm256_fmadd_pd(t[2 * j + 1], xx, t[2 * j]);
        if (m % 2) t[m / 2] = t[m - 1];
        xx = _mm256_mul_pd(xx, xx);
    }
    return t[0];
}

/* exp of 4 lanes: x = k ln2 + r, |r| <= ln2/2, exp(r) by a polynomial of
 * degree 11 (the Chebyshev fit of mpmath.chebyfit, error 3.2e-18 on the
 * interval), k added to the exponent; valid for x in [-708, 709]
 * (fm_exp_avx2 sends the other lanes to the C library). exp(0) is exactly 1. */
FM_AVX2 static inline __m256d fm_exp4(__m256d x) {
    static const double c[12] = {1.0, 0.99999999999999999976, 0.50000000000000183855,
                                 0.16666666666666680806, 0.041666666666488095495,
                                 0.0083333333333196006109, 0.0013888888952314774652,
                                 0.00019841269890047113707, 0.000024801485482328492419,
                                 2.7557240918578969823e-6, 2.7632639639041029749e-7,
                                 2.5110037605963777712e-8};
    const __m256d magic = _mm256_set1_pd(6755399441055744.0); /* 1.5 * 2^52 */
    __m256d t = _mm256_fmadd_pd(x, _mm256_set1_pd(1.4426950408889634), magic);
    __m256d k = _mm256_sub_pd(t, magic); /* round(x / ln2); the low bits of t hold it */
    __m256d r = _mm256_fnmadd_pd(k, _mm256_set1_pd(6.93147180369123816490e-01), x);
    r = _mm256_fnmadd_pd(k, _mm256_set1_pd(1.90821492927058770002e-10), r);
    __m256i e = _mm256_slli_epi64(_mm256_castpd_si256(t), 52);
    return _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(fm_estrin(r, c, 12)), e));
}

/* log of 4 lanes: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(u),
 * u = (m - 1) / (m + 1), |u| <= 0.172, by its series to u^23 (truncation
 * below 1e-18); valid for positive normal x (fm_log_avx2 sends the other
 * lanes to the C library) */
FM_AVX2 static inline __m256d fm_log4(__m256d x) {
    static const double c[12] = {1.0, 1.0 / 3, 1.0 / 5, 1.0 / 7, 1.0 / 9, 1.0 / 11, 1.0 / 13,
                                 1.0 / 15, 1.0 / 17, 1.0 / 19, 1.0 / 21, 1.0 / 23};
    const __m256d one = _mm256_set1_pd(1.0), magic = _mm256_set1_pd(6755399441055744.0);
    __m256i bits = _mm256_castpd_si256(x);
    __m256i ex = _mm256_sub_epi64(_mm256_srli_epi64(bits, 52), _mm256_set1_epi64x(1023));
    /* m in [1, 2), then halved (and e raised) above sqrt(2) */
    __m256d m = _mm256_castsi256_pd(_mm256_or_si256(
        _mm256_and_si256(bits, _mm256_set1_epi64x(0x000fffffffffffffLL)),
        _mm256_castpd_si256(one)));
    __m256d big = _mm256_cmp_pd(m, _mm256_set1_pd(1.4142135623730951), _CMP_GT_OQ);
    m = _mm256_blendv_pd(m, _mm256_mul_pd(m, _mm256_set1_pd(0.5)), big);
    ex = _mm256_sub_epi64(ex, _mm256_castpd_si256(big)); /* the mask is -1 */
    __m256d e = _mm256_sub_pd(
        _mm256_castsi256_pd(_mm256_add_epi64(ex, _mm256_castpd_si256(magic))), magic);
    __m256d u = _mm256_div_pd(_mm256_sub_pd(m, one), _mm256_add_pd(m, one));
    __m256d lm = _mm256_mul_pd(_mm256_add_pd(u, u), fm_estrin(_mm256_mul_pd(u, u), c, 12));
    return _mm256_fmadd_pd(e, _mm256_set1_pd(6.93147180369123816490e-01),
                           _mm256_fmadd_pd(e, _mm256_set1_pd(1.90821492927058770002e-10), lm));
}

/* f of 8 lanes at a time, two vectors in flight (the polynomials are latency
 * chains); lanes outside [lo, hi] (and NaN) and the tail go to libm */
#define FM_MAP_AVX2(f4, libm, lo_, hi_)                                                        \
    const __m256d lo = _mm256_set1_pd(lo_), hi = _mm256_set1_pd(hi_);                         \
    fm_int i = 0;                                                                             \
    for (; i + 8 <= n; i += 8) {                                                              \
        __m256d x0 = _mm256_loadu_pd(a + i), x1 = _mm256_loadu_pd(a + i + 4);                 \
        __m256d ok0 = _mm256_and_pd(_mm256_cmp_pd(x0, lo, _CMP_GE_OQ),                       \
                                    _mm256_cmp_pd(x0, hi, _CMP_LE_OQ));                       \
        __m256d ok1 = _mm256_and_pd(_mm256_cmp_pd(x1, lo, _CMP_GE_OQ),                       \
                                    _mm256_cmp_pd(x1, hi, _CMP_LE_OQ));                       \
        _mm256_storeu_pd(a + i, f4(x0));                                                      \
        _mm256_storeu_pd(a + i + 4, f4(x1));                                                  \
        int m = _mm256_movemask_pd(ok0) | _mm256_movemask_pd(ok1) << 4;                       \
        if (m != 255) {                                                                       \
            double xs[8];                                                                     \
            _mm256_storeu_pd(xs, x0);                                                         \
            _mm256_storeu_pd(xs + 4, x1);                                                     \
            for (int j = 0; j < 8; j++)                                                       \
                if (!(m >> j & 1)) a[i + j] = libm(xs[j]);                                    \
        }                                                                                     \
    }                                                                                         \
    for (fm_int j = i; j < n; j++) a[j] = libm(a[j]);

/* GCC warns, wrongly, that the tail loop could run 2^61 times when it knows
 * that n is a multiple of 8 (the calls of fm_log) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Waggressive-loop-optimizations"

/* a[i] = exp(a[i]) in place (not cloned per call site: one copy serves all) */
FM_AVX2 __attribute__((noinline, noclone)) static void fm_exp_avx2(double* a, fm_int n) { FM_MAP_AVX2(fm_exp4, exp, -708.0, 709.0) }

/* a[i] = log(a[i]) in place */
FM_AVX2 __attribute__((noinline, noclone)) static void fm_log_avx2(double* a, fm_int n) {
    FM_MAP_AVX2(fm_log4, log, 2.2250738585072014e-308, 1.7e308)
}
#pragma GCC diagnostic pop
#else
#define FM_HAVE_AVX2_PATH 0
static int fm_cpu_has_avx2(void) { return 0; }
static void fm_gram_rows(fm_int nb, fm_int M, fm_int q, fm_int rows, fm_int P, const double* Z,
                         const double* D, fm_int dm, double* DZ, double* G) {
    (void)DZ;
    fm_gram_plain(nb, M, q, rows, P, Z, D, dm, G);
}
static void fm_exp_avx2(double* a, fm_int n) {
    for (fm_int i = 0; i < n; i++) a[i] = exp(a[i]);
}
static void fm_log_avx2(double* a, fm_int n) {
    for (fm_int i = 0; i < n; i++) a[i] = log(a[i]);
}
#endif

/* the exp, the log and the Gram matrices of the EM pass on the path chosen
 * by simd */
static inline void fm_exp(double* a, fm_int n, int simd) {
    if (simd) {
        fm_exp_avx2(a, n);
        return;
    }
    for (fm_int i = 0; i < n; i++) a[i] = exp(a[i]);
}

static inline void fm_log(double* a, fm_int n, int simd) {
    if (simd) {
        fm_log_avx2(a, n);
        return;
    }
    for (fm_int i = 0; i < n; i++) a[i] = log(a[i]);
}

static inline void fm_gram(fm_int nb, fm_int M, fm_int q, fm_int rows, fm_int P,
                           const double* Z, const double* D, fm_int dm, double* DZ, double* G,
                           int simd) {
    if (simd)
        fm_gram_rows(nb, M, q, rows, P, Z, D, dm, DZ, G);
    else
        fm_gram_plain(nb, M, q, rows, P, Z, D, dm, G);
}

#endif

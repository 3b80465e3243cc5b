/* SIMD building blocks of the compiled kernels: the AVX2 dispatch (shared with
 * _reduce.h) and, for the EM passes (_estep.h), the weighted Gram matrices of
 * a block of rows stored by column, and exp and log over arrays. Each has an
 * AVX2/FMA version, compiled for those
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

#define FM_ROWS 32 /* rows (support points) per block */
/* the Gram matrices of a pass take two columns at a time while their
 * accumulators fit in this many bytes (measured at n=1e5: the EM pass on 2
 * threads 3% faster at d=10, K=3, 11 KB; on one thread 2% slower at d=20,
 * K=5, 106 KB) */
#define FM_PAIRED_BYTES 16384

/* acc (T(n), 4) += the packed (row-major) upper triangle of
 * sum_r d_r zt_r zt_r^T over the FM_ROWS rows of a block stored by column,
 * ZT (n, FM_ROWS), in 4 partial sums: lane l adds the rows r = l mod 4, in
 * order (fm_gram_cols_avx2 adds the same products in another order) */
static void fm_gram_cols_plain(fm_int n, const double* ZT, const double* d, double* acc) {
    double w[FM_ROWS];
    for (fm_int a = 0; a < n; a++) {
        for (int r = 0; r < FM_ROWS; r++) w[r] = d[r] * ZT[a * FM_ROWS + r];
        for (fm_int b = a; b < n; b++, acc += 4) {
            const double* zb = ZT + b * FM_ROWS;
            double s0 = acc[0], s1 = acc[1], s2 = acc[2], s3 = acc[3];
            for (int v = 0; v < FM_ROWS; v += 4) {
                s0 += w[v] * zb[v];
                s1 += w[v + 1] * zb[v + 1];
                s2 += w[v + 2] * zb[v + 2];
                s3 += w[v + 3] * zb[v + 3];
            }
            acc[0] = s0;
            acc[1] = s1;
            acc[2] = s2;
            acc[3] = s3;
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

/* fm_gram_cols_plain on the AVX2 path, one column at a time: the row weights
 * of a, w = d zt_a, in 8 registers; two entries (a, b) at a time, each a
 * chain of 8 fused multiply-adds into its 4 partial sums. Each accumulator is
 * read and written once per block. */
FM_AVX2 static void fm_gram_cols1_avx2(fm_int n, const double* ZT, const double* d, double* acc) {
    enum { V = FM_ROWS / 4 };
    for (fm_int a = 0; a < n; a++) {
        const double* za = ZT + a * FM_ROWS;
        __m256d w[V];
        for (int v = 0; v < V; v++)
            w[v] = _mm256_mul_pd(_mm256_loadu_pd(d + 4 * v), _mm256_loadu_pd(za + 4 * v));
        fm_int b = a;
        for (; b + 2 <= n; b += 2, acc += 8) {
            const double *z0 = ZT + b * FM_ROWS, *z1 = z0 + FM_ROWS;
            __m256d s0 = _mm256_loadu_pd(acc), s1 = _mm256_loadu_pd(acc + 4);
            for (int v = 0; v < V; v++) {
                s0 = _mm256_fmadd_pd(w[v], _mm256_loadu_pd(z0 + 4 * v), s0);
                s1 = _mm256_fmadd_pd(w[v], _mm256_loadu_pd(z1 + 4 * v), s1);
            }
            _mm256_storeu_pd(acc, s0);
            _mm256_storeu_pd(acc + 4, s1);
        }
        if (b < n) {
            const double* z0 = ZT + b * FM_ROWS;
            __m256d s0 = _mm256_loadu_pd(acc);
            for (int v = 0; v < V; v++)
                s0 = _mm256_fmadd_pd(w[v], _mm256_loadu_pd(z0 + 4 * v), s0);
            _mm256_storeu_pd(acc, s0);
            acc += 4;
        }
    }
}

/* fm_gram_cols_plain on the AVX2 path, two columns at a time, by halves of
 * the block (16 rows): the row weights of the columns a, a+1 (w = d zt_a) in
 * 8 registers, so that each load of a column b serves the entries (a, b) and
 * (a+1, b), each summed in two chains. 0.75 loads per fused multiply-add,
 * against 1.125 one column at a time (loads are the limit of these loops on
 * the CPUs that split 256-bit operations), but each accumulator is read and
 * written twice per block: faster while the accumulators of a pass stay in
 * the L1 cache (FM_PAIRED_BYTES). */
FM_AVX2 static void fm_gram_cols2_avx2(fm_int n, const double* ZT, const double* d, double* acc) {
    for (int h = 0; h < FM_ROWS; h += 16) {
        const __m256d d0 = _mm256_loadu_pd(d + h), d1 = _mm256_loadu_pd(d + h + 4);
        const __m256d d2 = _mm256_loadu_pd(d + h + 8), d3 = _mm256_loadu_pd(d + h + 12);
        double* row = acc; /* entry (a, a) */
        fm_int a = 0;
        for (; a + 2 <= n; a += 2) {
            const double *za = ZT + a * FM_ROWS + h, *zc = za + FM_ROWS;
            const __m256d u0 = _mm256_mul_pd(d0, _mm256_loadu_pd(za));
            const __m256d u1 = _mm256_mul_pd(d1, _mm256_loadu_pd(za + 4));
            const __m256d u2 = _mm256_mul_pd(d2, _mm256_loadu_pd(za + 8));
            const __m256d u3 = _mm256_mul_pd(d3, _mm256_loadu_pd(za + 12));
            const __m256d v0 = _mm256_mul_pd(d0, _mm256_loadu_pd(zc));
            const __m256d v1 = _mm256_mul_pd(d1, _mm256_loadu_pd(zc + 4));
            const __m256d v2 = _mm256_mul_pd(d2, _mm256_loadu_pd(zc + 8));
            const __m256d v3 = _mm256_mul_pd(d3, _mm256_loadu_pd(zc + 12));
            double* next = row + 4 * (n - a); /* entry (a+1, a+1) */
            /* (a, a) */
            __m256d s = _mm256_fmadd_pd(u1, _mm256_loadu_pd(za + 4),
                                        _mm256_mul_pd(u0, _mm256_loadu_pd(za)));
            __m256d t = _mm256_fmadd_pd(u3, _mm256_loadu_pd(za + 12),
                                        _mm256_mul_pd(u2, _mm256_loadu_pd(za + 8)));
            _mm256_storeu_pd(row, _mm256_add_pd(_mm256_loadu_pd(row), _mm256_add_pd(s, t)));
            for (fm_int b = a + 1; b < n; b++) { /* (a, b) and (a+1, b) */
                const double* zb = ZT + b * FM_ROWS + h;
                const __m256d z0 = _mm256_loadu_pd(zb), z1 = _mm256_loadu_pd(zb + 4);
                const __m256d z2 = _mm256_loadu_pd(zb + 8), z3 = _mm256_loadu_pd(zb + 12);
                __m256d p = _mm256_fmadd_pd(u1, z1, _mm256_mul_pd(u0, z0));
                __m256d r = _mm256_fmadd_pd(u3, z3, _mm256_mul_pd(u2, z2));
                double* e = row + 4 * (b - a);
                _mm256_storeu_pd(e, _mm256_add_pd(_mm256_loadu_pd(e), _mm256_add_pd(p, r)));
                __m256d p2 = _mm256_fmadd_pd(v1, z1, _mm256_mul_pd(v0, z0));
                __m256d r2 = _mm256_fmadd_pd(v3, z3, _mm256_mul_pd(v2, z2));
                double* e2 = next + 4 * (b - a - 1);
                _mm256_storeu_pd(e2, _mm256_add_pd(_mm256_loadu_pd(e2), _mm256_add_pd(p2, r2)));
            }
            row = next + 4 * (n - a - 1);
        }
        if (a < n) { /* the last column alone: the entry (a, a) */
            const double* za = ZT + a * FM_ROWS + h;
            const __m256d z0 = _mm256_loadu_pd(za), z1 = _mm256_loadu_pd(za + 4);
            const __m256d z2 = _mm256_loadu_pd(za + 8), z3 = _mm256_loadu_pd(za + 12);
            __m256d s = _mm256_fmadd_pd(_mm256_mul_pd(d1, z1), z1,
                                        _mm256_mul_pd(_mm256_mul_pd(d0, z0), z0));
            __m256d t = _mm256_fmadd_pd(_mm256_mul_pd(d3, z3), z3,
                                        _mm256_mul_pd(_mm256_mul_pd(d2, z2), z2));
            _mm256_storeu_pd(row, _mm256_add_pd(_mm256_loadu_pd(row), _mm256_add_pd(s, t)));
        }
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
static void fm_gram_cols1_avx2(fm_int n, const double* ZT, const double* d, double* acc) {
    fm_gram_cols_plain(n, ZT, d, acc);
}
static void fm_gram_cols2_avx2(fm_int n, const double* ZT, const double* d, double* acc) {
    fm_gram_cols_plain(n, ZT, d, acc);
}
static void fm_exp_avx2(double* a, fm_int n) {
    for (fm_int i = 0; i < n; i++) a[i] = exp(a[i]);
}
static void fm_log_avx2(double* a, fm_int n) {
    for (fm_int i = 0; i < n; i++) a[i] = log(a[i]);
}
#endif

/* the exp and the log on the path chosen by simd */
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

/* the Gram matrices of a block (fm_gram_cols_plain) on the path chosen by
 * simd, two columns at a time (fm_gram_cols2_avx2) when paired */
static inline void fm_gram_cols(fm_int n, const double* ZT, const double* d, double* acc,
                                int simd, int paired) {
    if (simd && paired)
        fm_gram_cols2_avx2(n, ZT, d, acc);
    else if (simd)
        fm_gram_cols1_avx2(n, ZT, d, acc);
    else
        fm_gram_cols_plain(n, ZT, d, acc);
}

#endif

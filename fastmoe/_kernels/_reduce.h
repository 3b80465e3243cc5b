/* The assignment step of the optimal-transport reduction (docs/method.rst, section 4)
 * for one chunk of support points: the costs between every local expert l and
 * every target k, the argmin plan, the objective and every weighted sufficient
 * statistic of the closed-form update, without the S x L x K tensors.
 *
 * Two implementations of the same arithmetic:
 *   - fm_chunk_plain: plain C, one support point and one local expert at a time;
 *     the reference, and the path on CPUs without AVX2 and FMA;
 *   - fm_chunk_avx2: AVX2 and FMA intrinsics (x86-64, GCC or Clang), compiled
 *     for those instructions only (a function attribute, not a build flag) and
 *     chosen at run time when the CPU has them.
 * They differ only in rounding (fused multiply-adds, order of the sums over l).
 *
 * Why intrinsics: the costs are cheap (a few flops per pair); what is slow is
 * keeping the running minimum, the argmin and the Gram tiles in registers.
 * numba's LLVM turned the selects of the argmin into masked stores and did not
 * keep the tiles in registers (numbers in asv_bench/kernel_choice.py).
 *
 * Inputs of a chunk of n points (row-major, float64):
 *   X (n, d) covariates; W (n, L) local weights w_l(x) = lam_m pi_k^(m)(x);
 *   ML (n, L) local means m_l(x); vloc (L,) local variances;
 *   beta (K, d+1) target coefficients, intercept first; var (K,) target variances;
 *   cost FM_KL or FM_W2; skip: a target whose Gram matrix is not accumulated
 *   (left zero; the caller derives it from the support's total, since
 *   sum_k D_k(s) = sum_l w_l(x_s)), or -1.
 * Outputs (overwritten), with p = d+1 and T = p(p+1)/2:
 *   gram (K, T) packed upper triangle of sum_s D_k(s) xt xt^T, D_k(s) = sum_l P_lks;
 *   lin (K, p) sum P m_l xt; scal (K, 2) sum P, sum P m_l^2;
 *   mass (K, L) sum_s P_lks; lobj (L,) sum_s w_l min_k c_lk;
 *   assign (n, L) argmin_k c_lk, or NULL.
 * Ties go to the lowest k, as numpy's argmin.
 * Return 0, or -1 when scratch memory could not be allocated.
 */
#ifndef FASTMOE_REDUCE_H
#define FASTMOE_REDUCE_H

#include "_simd.h"

#define FM_KL 0
#define FM_W2 1

/* target-dependent constants of the costs: KL c = a_k + (v_l + gap^2) * b_k,
 * W2 c = gap^2 + (sd_k - sd_l)^2 */
static void fm_target_terms(fm_int K, const double* var, int cost, double* a, double* b) {
    for (fm_int k = 0; k < K; k++) {
        if (cost == FM_KL) {
            a[k] = log(var[k]);
            b[k] = 1.0 / var[k];
        } else {
            a[k] = sqrt(var[k]);
            b[k] = 1.0;
        }
    }
}

/* the objective term of the best cost c is h c + o_l: KL 0.5 (c - log v_l - 1),
 * W2 c; returns h and fills o (L,) */
static double fm_objective_terms(fm_int L, const double* vloc, int cost, double* o) {
    for (fm_int l = 0; l < L; l++) o[l] = cost == FM_KL ? -0.5 * (log(vloc[l]) + 1.0) : 0.0;
    return cost == FM_KL ? 0.5 : 1.0;
}

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

/* gram[k] (K, T) = the packed upper triangles of the matrices G[q] (p rows of
 * stride P), q counting the targets other than skip; gram[skip] = 0 */
static void fm_pack_targets(fm_int K, fm_int skip, fm_int p, fm_int P, const double* G,
                            double* gram) {
    fm_int T = p * (p + 1) / 2;
    for (fm_int k = 0, q = 0; k < K; k++) {
        if (k == skip)
            memset(gram + k * T, 0, sizeof(double) * (size_t)T);
        else
            fm_pack(1, p, p, P, G + q++ * p * P, gram + k * T);
    }
}

static int fm_chunk_plain(fm_int n, fm_int d, const double* X, fm_int L, const double* W,
                          const double* ML, const double* vloc, fm_int K, const double* beta,
                          const double* var, int cost, fm_int skip, double* gram, double* lin,
                          double* scal, double* mass, double* lobj, short* assign) {
    fm_int p = d + 1;
    double* buf = malloc(sizeof(double) * (size_t)(p + 6 * K + K * p * p + 2 * L));
    if (!buf) return -1;
    double *z = buf, *mk = z + p, *a = mk + K, *b = a + K, *D = b + K, *Dm = D + K, *Dq = Dm + K;
    double *G = Dq + K, *sdl = G + K * p * p, *o = sdl + L;
    fm_target_terms(K, var, cost, a, b);
    double h = fm_objective_terms(L, vloc, cost, o);
    for (fm_int l = 0; l < L; l++) sdl[l] = sqrt(vloc[l]);
    memset(G, 0, sizeof(double) * (size_t)(K * p * p));
    memset(lin, 0, sizeof(double) * (size_t)(K * p));
    memset(scal, 0, sizeof(double) * (size_t)(2 * K));
    memset(mass, 0, sizeof(double) * (size_t)(K * L));
    memset(lobj, 0, sizeof(double) * (size_t)L);
    z[0] = 1.0;
    for (fm_int s = 0; s < n; s++) {
        for (fm_int j = 0; j < d; j++) z[j + 1] = X[s * d + j];
        for (fm_int k = 0; k < K; k++) {
            double t = 0.0;
            for (fm_int j = 0; j < p; j++) t += beta[k * p + j] * z[j];
            mk[k] = t;
            D[k] = Dm[k] = Dq[k] = 0.0;
        }
        for (fm_int l = 0; l < L; l++) {
            double x = ML[s * L + l], w = W[s * L + l], best = INFINITY;
            fm_int kb = 0;
            for (fm_int k = 0; k < K; k++) {
                double g = mk[k] - x, c;
                if (cost == FM_KL) {
                    c = a[k] + (vloc[l] + g * g) * b[k];
                } else {
                    double e = a[k] - sdl[l];
                    c = g * g + e * e;
                }
                if (c < best) {
                    best = c;
                    kb = k;
                }
            }
            lobj[l] += w * (h * best + o[l]);
            D[kb] += w;
            Dm[kb] += w * x;
            Dq[kb] += w * x * x;
            mass[kb * L + l] += w;
            if (assign) assign[s * L + l] = (short)kb;
        }
        for (fm_int k = 0; k < K; k++) {
            scal[2 * k] += D[k];
            scal[2 * k + 1] += Dq[k];
            for (fm_int i = 0; i < p; i++) {
                lin[k * p + i] += Dm[k] * z[i];
                double c = D[k] * z[i];
                if (k != skip)
                    for (fm_int j = i; j < p; j++) G[(k * p + i) * p + j] += c * z[j];
            }
        }
    }
    for (fm_int k = skip >= 0 ? skip + 1 : K; k < K; k++) /* pack G compactly */
        memcpy(G + (k - 1) * p * p, G + k * p * p, sizeof(double) * (size_t)(p * p));
    fm_pack_targets(K, skip, p, p, G, gram);
    free(buf);
    return 0;
}

#if FM_HAVE_AVX2_PATH
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

/* g[0..8] += sum_r w[r*ws] z[r*P + 0..8], even and odd rows in separate sums */
FM_AVX2 __attribute__((noinline)) static void fm_tile1(fm_int nb, const double* restrict z,
                                                       fm_int P, const double* restrict w,
                                                       fm_int ws, double* restrict g) {
    __m256d c0 = _mm256_loadu_pd(g), e0 = _mm256_loadu_pd(g + 4);
    __m256d c1 = _mm256_setzero_pd(), e1 = c1;
    fm_int r = 0;
    for (; r + 2 <= nb; r += 2) {
        __m256d w0 = _mm256_broadcast_sd(w), w1 = _mm256_broadcast_sd(w + ws);
        c0 = _mm256_fmadd_pd(w0, _mm256_loadu_pd(z), c0);
        e0 = _mm256_fmadd_pd(w0, _mm256_loadu_pd(z + 4), e0);
        c1 = _mm256_fmadd_pd(w1, _mm256_loadu_pd(z + P), c1);
        e1 = _mm256_fmadd_pd(w1, _mm256_loadu_pd(z + P + 4), e1);
        z += 2 * P;
        w += 2 * ws;
    }
    if (r < nb) {
        __m256d w0 = _mm256_broadcast_sd(w);
        c0 = _mm256_fmadd_pd(w0, _mm256_loadu_pd(z), c0);
        e0 = _mm256_fmadd_pd(w0, _mm256_loadu_pd(z + 4), e0);
    }
    _mm256_storeu_pd(g, _mm256_add_pd(c0, c1));
    _mm256_storeu_pd(g + 4, _mm256_add_pd(e0, e1));
}

/* G[q] (p rows of stride P) upper part += sum_r D[r,k] z_r z_r^T for the nb
 * buffered points Z (nb, P), zero beyond column p, q counting the targets k
 * other than skip; DZ (nb, K, P) is scratch. Row a is updated from column a in
 * blocks of 8 (at most 7 columns past the diagonal block are wasted, never read). */
FM_AVX2 static void fm_gram_block(fm_int nb, fm_int K, fm_int skip, fm_int p, fm_int P,
                                  const double* Z, const double* D, double* DZ, double* G) {
    fm_int Kc = 0;
    for (fm_int r = 0; r < nb; r++) {
        Kc = 0;
        for (fm_int k = 0; k < K; k++) {
            if (k == skip) continue;
            __m256d c = _mm256_broadcast_sd(D + r * K + k);
            double* dz = DZ + (r * K + Kc++) * P;
            for (fm_int j = 0; j < P; j += 4)
                _mm256_storeu_pd(dz + j, _mm256_mul_pd(c, _mm256_loadu_pd(Z + r * P + j)));
        }
    }
    fm_int gs = p * P, ws = K * P;
    for (fm_int a = 0; a < p; a++)
        for (fm_int j0 = a; j0 < p; j0 += 8) {
            double* g = G + a * P + j0;
            fm_int q = 0;
            for (; q + 4 <= Kc; q += 4) fm_tile4(nb, Z + j0, P, DZ + q * P + a, P, ws, g + q * gs, gs);
            for (; q < Kc; q++) fm_tile1(nb, Z + j0, P, DZ + q * P + a, ws, g + q * gs);
        }
}


/* one step of the running minimum: keep c where it is below best (ties keep
 * the earlier target), and its index k */
FM_AVX2 static inline void fm_keep_min(__m256d c, __m256d kk, __m256d* best, __m256d* idx) {
    __m256d lt = _mm256_cmp_pd(c, *best, _CMP_LT_OQ);
    *best = _mm256_min_pd(c, *best);
    *idx = _mm256_blendv_pd(*idx, kk, lt);
}

/* best[l], idx[l] for the lanes l0..l0+8: the minimum over k of the costs and
 * its first index; 8 lanes in two registers hide the latency of the chain */
FM_AVX2 static inline void fm_argmin8(const double* x8, const double* v8, const double* sd8,
                                      fm_int K, const double* mk, const double* a,
                                      const double* b, const double* kv, int cost, double* best,
                                      double* idx) {
    __m256d x = _mm256_loadu_pd(x8), y = _mm256_loadu_pd(x8 + 4);
    __m256d bx = _mm256_set1_pd(INFINITY), by = bx;
    __m256d ix = _mm256_setzero_pd(), iy = ix;
    if (cost == FM_KL) {
        __m256d v = _mm256_loadu_pd(v8), u = _mm256_loadu_pd(v8 + 4);
        for (fm_int k = 0; k < K; k++) {
            __m256d m = _mm256_broadcast_sd(mk + k), ak = _mm256_broadcast_sd(a + k);
            __m256d bk = _mm256_broadcast_sd(b + k), kk = _mm256_broadcast_sd(kv + k);
            __m256d g = _mm256_sub_pd(m, x), h = _mm256_sub_pd(m, y);
            fm_keep_min(_mm256_fmadd_pd(_mm256_fmadd_pd(g, g, v), bk, ak), kk, &bx, &ix);
            fm_keep_min(_mm256_fmadd_pd(_mm256_fmadd_pd(h, h, u), bk, ak), kk, &by, &iy);
        }
    } else {
        __m256d s = _mm256_loadu_pd(sd8), t = _mm256_loadu_pd(sd8 + 4);
        for (fm_int k = 0; k < K; k++) {
            __m256d m = _mm256_broadcast_sd(mk + k), ak = _mm256_broadcast_sd(a + k);
            __m256d kk = _mm256_broadcast_sd(kv + k);
            __m256d g = _mm256_sub_pd(m, x), h = _mm256_sub_pd(m, y);
            __m256d e = _mm256_sub_pd(ak, s), f = _mm256_sub_pd(ak, t);
            fm_keep_min(_mm256_fmadd_pd(g, g, _mm256_mul_pd(e, e)), kk, &bx, &ix);
            fm_keep_min(_mm256_fmadd_pd(h, h, _mm256_mul_pd(f, f)), kk, &by, &iy);
        }
    }
    _mm256_storeu_pd(best, bx);
    _mm256_storeu_pd(best + 4, by);
    _mm256_storeu_pd(idx, ix);
    _mm256_storeu_pd(idx + 4, iy);
}

/* one target's share of 4 lanes: e = w where idx == k; s[0..3] += e, e x,
 * e x^2; mass += e */
FM_AVX2 static inline void fm_masked_sums(__m256d i, __m256d kk, __m256d w, __m256d x,
                                          __m256d s[3], double* mass) {
    __m256d e = _mm256_and_pd(_mm256_cmp_pd(i, kk, _CMP_EQ_OQ), w);
    __m256d ex = _mm256_mul_pd(e, x);
    s[0] = _mm256_add_pd(s[0], e);
    s[1] = _mm256_add_pd(s[1], ex);
    s[2] = _mm256_fmadd_pd(ex, x, s[2]);
    _mm256_storeu_pd(mass, _mm256_add_pd(_mm256_loadu_pd(mass), e));
}

/* masked sums over the L8 lanes for targets k and k+1 (k+1 < K when pair):
 * sum w, sum w x, sum w x^2 where idx == k, and mass[k][l] += w there; the
 * loads of idx, w and x serve both targets */
FM_AVX2 static inline void fm_target_sums(fm_int L8, const double* idx, const double* w8,
                                          const double* x8, fm_int k, int pair, double* mass,
                                          double* out) {
    __m256d k0 = _mm256_set1_pd((double)k), k1 = _mm256_set1_pd((double)(k + 1));
    __m256d s[2][3];
    for (int q = 0; q < 2; q++) s[q][0] = s[q][1] = s[q][2] = _mm256_setzero_pd();
    double *m0 = mass + k * L8, *m1 = m0 + L8;
    for (fm_int l = 0; l < L8; l += 4) {
        __m256d x = _mm256_loadu_pd(x8 + l), w = _mm256_loadu_pd(w8 + l);
        __m256d i = _mm256_loadu_pd(idx + l);
        fm_masked_sums(i, k0, w, x, s[0], m0 + l);
        if (pair) fm_masked_sums(i, k1, w, x, s[1], m1 + l);
    }
    for (int q = 0; q < 2; q++)
        for (int j = 0; j < 3; j++) out[3 * q + j] = fm_hsum(s[q][j]);
}

FM_AVX2 static int fm_chunk_avx2(fm_int n, fm_int d, const double* X, fm_int L, const double* W,
                                 const double* ML, const double* vloc, fm_int K,
                                 const double* beta, const double* var, int cost, fm_int skip,
                                 double* gram, double* lin, double* scal, double* mass,
                                 double* lobj, short* assign) {
    fm_int p = d + 1;
    fm_int P = fm_stride(p);
    fm_int L8 = (L + 7) / 8 * 8;
    size_t size = (size_t)(FM_ROWS * P + FM_ROWS * K + FM_ROWS * K * P + K * p * P + K * P
                           + 8 * L8 + K * L8 + 4 * K + K * P + 8);
    double* buf = calloc(size, sizeof(double));
    if (!buf) return -1;
    double *Z = buf, *D = Z + FM_ROWS * P, *DZ = D + FM_ROWS * K, *G = DZ + FM_ROWS * K * P;
    double *betap = G + K * p * P, *x8 = betap + K * P, *w8 = x8 + L8, *v8 = w8 + L8;
    double *sd8 = v8 + L8, *obj8 = sd8 + L8, *best = obj8 + L8, *idx = best + L8;
    double *mass8 = idx + L8, *mk = mass8 + K * L8, *a = mk + K, *b = a + K, *B = b + K;
    double *sums = B + K * P, *o = sums + 8, *kv = o + L8;
    for (fm_int k = 0; k < K; k++) kv[k] = (double)k;
    fm_target_terms(K, var, cost, a, b);
    for (fm_int k = 0; k < K; k++) memcpy(betap + k * P, beta + k * p, sizeof(double) * (size_t)p);
    for (fm_int l = 0; l < L8; l++) {
        /* padding lanes: weight 0, variance 1, so they add nothing */
        v8[l] = l < L ? vloc[l] : 1.0;
        sd8[l] = sqrt(v8[l]);
        obj8[l] = 0.0;
    }
    __m256d h = _mm256_set1_pd(fm_objective_terms(L, vloc, cost, o));
    memset(scal, 0, sizeof(double) * (size_t)(2 * K));
    fm_int nb = 0;
    for (fm_int s = 0; s < n; s++) {
        double* z = Z + nb * P;
        z[0] = 1.0;
        memcpy(z + 1, X + s * d, sizeof(double) * (size_t)d);
        for (fm_int k = 0; k < K; k++) {
            const double* bk = betap + k * P;
            __m256d t0 = _mm256_setzero_pd(), t1 = t0;
            fm_int j = 0;
            for (; j + 8 <= P; j += 8) {
                t0 = _mm256_fmadd_pd(_mm256_loadu_pd(bk + j), _mm256_loadu_pd(z + j), t0);
                t1 = _mm256_fmadd_pd(_mm256_loadu_pd(bk + j + 4), _mm256_loadu_pd(z + j + 4), t1);
            }
            for (; j < P; j += 4)
                t0 = _mm256_fmadd_pd(_mm256_loadu_pd(bk + j), _mm256_loadu_pd(z + j), t0);
            mk[k] = fm_hsum(_mm256_add_pd(t0, t1));
        }
        const double *xs = ML + s * L, *ws = W + s * L;
        if (L8 != L) { /* pad the lanes to a multiple of 8 (weight 0) */
            memcpy(x8, xs, sizeof(double) * (size_t)L);
            memcpy(w8, ws, sizeof(double) * (size_t)L);
            xs = x8;
            ws = w8;
        }
        for (fm_int l = 0; l < L8; l += 8)
            fm_argmin8(xs + l, v8 + l, sd8 + l, K, mk, a, b, kv, cost, best + l, idx + l);
        for (fm_int l = 0; l < L8; l += 4) {
            __m256d t = _mm256_fmadd_pd(h, _mm256_loadu_pd(best + l), _mm256_loadu_pd(o + l));
            _mm256_storeu_pd(obj8 + l, _mm256_fmadd_pd(_mm256_loadu_pd(ws + l), t,
                                                       _mm256_loadu_pd(obj8 + l)));
        }
        if (assign)
            for (fm_int l = 0; l < L; l++) assign[s * L + l] = (short)idx[l];
        double* Dr = D + nb * K;
        for (fm_int k = 0; k < K; k += 2) {
            int pair = k + 1 < K;
            fm_target_sums(L8, idx, ws, xs, k, pair, mass8, sums);
            for (int q = 0; q <= pair; q++) {
                Dr[k + q] = sums[3 * q];
                scal[2 * (k + q)] += sums[3 * q];
                scal[2 * (k + q) + 1] += sums[3 * q + 2];
                __m256d dm = _mm256_set1_pd(sums[3 * q + 1]);
                double* Bk = B + (k + q) * P;
                for (fm_int j = 0; j < P; j += 4)
                    _mm256_storeu_pd(Bk + j, _mm256_fmadd_pd(dm, _mm256_loadu_pd(z + j),
                                                             _mm256_loadu_pd(Bk + j)));
            }
        }
        if (++nb == FM_ROWS) {
            fm_gram_block(nb, K, skip, p, P, Z, D, DZ, G);
            nb = 0;
        }
    }
    if (nb) fm_gram_block(nb, K, skip, p, P, Z, D, DZ, G);
    fm_pack_targets(K, skip, p, P, G, gram);
    for (fm_int k = 0; k < K; k++) {
        memcpy(lin + k * p, B + k * P, sizeof(double) * (size_t)p);
        memcpy(mass + k * L, mass8 + k * L8, sizeof(double) * (size_t)L);
    }
    memcpy(lobj, obj8, sizeof(double) * (size_t)L);
    free(buf);
    return 0;
}
#else
static int fm_chunk_avx2(fm_int n, fm_int d, const double* X, fm_int L, const double* W,
                         const double* ML, const double* vloc, fm_int K, const double* beta,
                         const double* var, int cost, fm_int skip, double* gram, double* lin,
                         double* scal, double* mass, double* lobj, short* assign) {
    return fm_chunk_plain(n, d, X, L, W, ML, vloc, K, beta, var, cost, skip, gram, lin, scal,
                          mass, lobj, assign);
}
#endif

#endif

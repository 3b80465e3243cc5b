"""numba kernel of the optimal-transport reduction (method.md section 4).

One pass over the support points computes, for the current K target experts,
the costs between every local expert l and every target k, the argmin
assignment, the objective R and every weighted sufficient statistic of the
closed-form update, without materialising the S x L x K cost or plan tensors:
memory beyond the inputs is O(chunks * K (d+1)^2 + chunks * L * K).

Why numba here: the pass takes ragged groups (machines with different numbers
of experts) and several accumulators, passed as tuples, with a data-dependent
argmin; the numba body reads like the maths. With the same arithmetic, numba
and Cython loops ran at the same speed (the E-step measurement in
``asv_bench/kernel_choice.py``), and this kernel runs only at the server, where
the one-off cache load does not matter.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import jit_pair, njit_inline

KL = 0
W2 = 1


#: support points whose outer products are buffered before they are added
ROWS = 4


@njit_inline
def add_rows(G, U, C, nb):
    """G[k] += sum_r C[r, k] U[r] over the nb <= ROWS buffered rows (a full
    block summed pairwise, a short one in row order)."""
    if nb == ROWS:
        for k in range(G.shape[0]):
            c0, c1, c2, c3 = C[0, k], C[1, k], C[2, k], C[3, k]
            for t in range(G.shape[1]):
                G[k, t] += (c0 * U[0, t] + c1 * U[1, t]) + (c2 * U[2, t] + c3 * U[3, t])
    else:
        for r in range(nb):
            for k in range(G.shape[0]):
                for t in range(G.shape[1]):
                    G[k, t] += C[r, k] * U[r, t]


@njit_inline
def packed_outer(z, u):
    """OUT u = the packed (row-major) upper triangle of z z^T."""
    t = 0
    for a in range(z.shape[0]):
        for b in range(a, z.shape[0]):
            u[t] = z[a] * z[b]
            t += 1


def _mm_pass(Xs, local, cache, targets, cost, chunk, out):
    """Assignment step and sufficient statistics of the MM reduction.

    IN:
      Xs (S, d) support covariates;
      local = (a_loc, b_loc, v_loc, starts, lam): local gate and expert
        coefficients (L, d+1) (intercept in column 0), local variances (L,),
        starts (M+1,) int64 (machine m owns experts starts[m]:starts[m+1]) and
        machine weights lam (M,);
      cache = (W, ML): the (S, L) local weights w_l(x_s) and means m_l(x_s),
        which do not change over the MM iterations, or two (0, L) arrays to
        compute them on the fly (memory flat in S);
      targets = (beta (K, d+1), var (K,)); cost: 0 for KL, 1 for W2;
      chunk: support points per chunk.
    OUT out = (gram, lin, scal, mass, lobj, assign), per chunk c of support points:
      gram (nc, K, T): packed upper triangle of sum_s D_k(s) xt_s xt_s^T, T = (d+1)(d+2)/2
      lin  (nc, K, d+1): sum_{s,l} P_lks m_l(x_s) xt_s
      scal (nc, K, 2): sum P, sum P m_l^2 (sum P var_l and sum P sqrt(var_l)
        follow from ``mass``: the caller's mass.T @ var_l)
      mass (nc, L, K): sum_s P_lks
      lobj (nc, L): sum_s w_l(x_s) min_k c_lk(x_s); the objective R is its sum
      assign (S, L) int16: argmin_k c_lk(x_s), or an array with S == 0 to skip
    where P_lks = w_l(x_s) 1{k = argmin}, w_l(x) = lam_m pi_k^(m)(x).
    """
    a_loc, b_loc, v_loc, starts, lam = local
    W_cache, ML_cache = cache
    beta, var = targets
    gram, lin, scal, mass, lobj, assign = out
    cached = W_cache.shape[0] > 0
    S, d = Xs.shape
    L = a_loc.shape[0]
    K = beta.shape[0]
    M = lam.shape[0]
    p = d + 1
    n_chunks = lobj.shape[0]
    want_assign = assign.shape[0] > 0
    sd_loc = np.sqrt(v_loc)
    log_v_loc = np.log(v_loc)
    sd = np.sqrt(var)
    log_v = np.log(var)
    inv_v = 1.0 / var
    for c in prange(n_chunks):
        G = gram[c]
        B = lin[c]
        Q = scal[c]
        W = mass[c]
        G[:] = 0.0
        B[:] = 0.0
        Q[:] = 0.0
        W[:] = 0.0
        O = lobj[c]
        O[:] = 0.0
        z = np.empty(p)
        U = np.empty((ROWS, G.shape[1]))
        DB = np.empty((ROWS, K))
        nb = 0
        wl_buf = np.empty(L)
        ml_buf = np.empty(L)
        mk = np.empty(K)
        Dm = np.empty(K)
        C = np.empty((K, L))
        z[0] = 1.0
        for s in range(c * chunk, min((c + 1) * chunk, S)):
            for j in range(d):
                z[j + 1] = Xs[s, j]
            if cached:
                wl = W_cache[s]
                ml = ML_cache[s]
            else:
                wl = wl_buf
                ml = ml_buf
                for m in range(M):
                    lo = starts[m]
                    hi = starts[m + 1]
                    vmax = -np.inf
                    for l in range(lo, hi):
                        t = a_loc[l, 0]
                        for j in range(d):
                            t += a_loc[l, j + 1] * z[j + 1]
                        wl[l] = t
                        vmax = max(vmax, t)
                    tot = 0.0
                    for l in range(lo, hi):
                        wl[l] = np.exp(wl[l] - vmax)
                        tot += wl[l]
                    for l in range(lo, hi):
                        wl[l] *= lam[m] / tot
                for l in range(L):
                    t = b_loc[l, 0]
                    for j in range(d):
                        t += b_loc[l, j + 1] * z[j + 1]
                    ml[l] = t
            for k in range(K):
                t = beta[k, 0]
                for j in range(d):
                    t += beta[k, j + 1] * z[j + 1]
                mk[k] = t
            D = DB[nb]  # sum_l P_lks per target, kept for the outer products
            D[:] = 0.0
            Dm[:] = 0.0
            # the l-dependent part of every cost, target by target in a loop
            # over l with no branch (vectorised), then the argmin over k
            for k in range(K):
                m = mk[k]
                if cost == KL:
                    a, iv = log_v[k], inv_v[k]
                    for l in range(L):
                        gap = m - ml[l]
                        C[k, l] = a + (v_loc[l] + gap * gap) * iv
                else:
                    sk = sd[k]
                    for l in range(L):
                        gap = m - ml[l]
                        dsd = sk - sd_loc[l]
                        C[k, l] = gap * gap + dsd * dsd
            for l in range(L):
                b = C[0, l]
                k = 0
                for kk in range(1, K):
                    if C[kk, l] < b:
                        b = C[kk, l]
                        k = kk
                if cost == KL:
                    b = 0.5 * (b - log_v_loc[l] - 1.0)
                w = wl[l]
                O[l] += w * b
                D[k] += w
                Dm[k] += w * ml[l]
                Q[k, 1] += w * ml[l] * ml[l]
                W[l, k] += w
                if want_assign:
                    assign[s, l] = k
            packed_outer(z, U[nb])
            for k in range(K):
                Q[k, 0] += D[k]
                for j in range(p):
                    B[k, j] += Dm[k] * z[j]
            nb += 1
            if nb == ROWS:
                add_rows(G, U, DB, nb)
                nb = 0
        add_rows(G, U, DB, nb)


mm_pass = jit_pair(_mm_pass)

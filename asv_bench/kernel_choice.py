"""Why each kernel is in the technology it is, timed side by side in one run.

1. The E-step with the expert statistics written in numba (same chunked
   accumulators, same arithmetic, one row at a time) against the C kernel
   fastmoe ships (blocks of rows by column, vector exp and log, Gram tiles),
   on its AVX2/FMA path and on its plain path; plus the cost of the first
   call in a fresh process (the compiled extension: none; numba: the
   disk-cache load).
2. The reduction's assignment pass: the numba kernel fastmoe shipped before
   (cached local weights and means) against the shipped C kernel, on its
   AVX2/FMA path and on its plain path; and the local weights and means
   (numba ``local_support`` against numpy).

    python asv_bench/kernel_choice.py [--n 100000 --d 10 --K 3 --repeat 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numba
import numpy as np
from numba import prange

from fastmoe import _kernels
from fastmoe._linalg import chunk_size, n_chunks, resolve_threads


@numba.njit(parallel=True, cache=True, nogil=True)
def numba_e_step(X, y, w, alpha, beta, var, log_resp, row_ll, stats, chunk):
    n, d = X.shape
    K = alpha.shape[0]
    q = d + 2
    lnorm = -0.5 * np.log(2.0 * np.pi * var)
    inv_var = 1.0 / var
    for c in prange(stats.shape[0]):
        S = stats[c]
        S[:] = 0.0
        g = np.empty(K)
        lj = np.empty(K)
        e = np.empty(K)
        z = np.empty(q)
        u = np.empty(S.shape[1])
        for i in range(c * chunk, min((c + 1) * chunk, n)):
            gmax = -np.inf
            jmax = -np.inf
            for k in range(K):
                s = alpha[k, 0]
                m = beta[k, 0]
                for j in range(d):
                    s += alpha[k, j + 1] * X[i, j]
                    m += beta[k, j + 1] * X[i, j]
                r = y[i] - m
                g[k] = s
                lj[k] = s + lnorm[k] - 0.5 * r * r * inv_var[k]
                gmax = max(gmax, g[k])
                jmax = max(jmax, lj[k])
            sg = 0.0
            sj = 0.0
            for k in range(K):
                sg += np.exp(g[k] - gmax)
                e[k] = np.exp(lj[k] - jmax)
                sj += e[k]
            lse = jmax + np.log(sj)
            row_ll[i] = lse - gmax - np.log(sg)
            for k in range(K):
                log_resp[i, k] = lj[k] - lse
            z[0] = 1.0  # the shipped kernel's order, z = (1, x, y)
            for j in range(d):
                z[j + 1] = X[i, j]
            z[q - 1] = y[i]
            t = 0
            for a in range(q):
                for b in range(a, q):
                    u[t] = z[a] * z[b]
                    t += 1
            for k in range(K):
                cw = w[i] * e[k] / sj
                for t in range(u.shape[0]):
                    S[k, t] += cw * u[t]


KL = 0  # the cost codes of the old kernel

#: support points whose outer products are buffered before they are added
ROWS = 4


@numba.njit(inline="always", cache=True, nogil=True, error_model="numpy")
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


@numba.njit(inline="always", cache=True, nogil=True, error_model="numpy")
def packed_outer(z, u):
    """OUT u = the packed (row-major) upper triangle of z z^T."""
    t = 0
    for a in range(z.shape[0]):
        for b in range(a, z.shape[0]):
            u[t] = z[a] * z[b]
            t += 1


@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def numba_mm_pass(Xs, local, cache, targets, cost, chunk, out):
    """The numba reduction pass fastmoe shipped before the C kernel
    (fastmoe/_kernels/_reduce.py at commit fcadff8), verbatim but for its
    branch that computed the local weights and means on the fly, which this
    comparison does not take: assignment step and sufficient statistics of the
    MM reduction.

    IN:
      Xs (S, d) support covariates;
      local = (a_loc, b_loc, v_loc, starts, lam): local gate and expert
        coefficients (L, d+1) (intercept in column 0), local variances (L,),
        starts (M+1,) int64 (machine m owns experts starts[m]:starts[m+1]) and
        machine weights lam (M,);
      cache = (W, ML): the (S, L) local weights w_l(x_s) and means m_l(x_s),
        which do not change over the MM iterations;
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
    v_loc = local[2]
    W_cache, ML_cache = cache
    beta, var = targets
    gram, lin, scal, mass, lobj, assign = out
    S, d = Xs.shape
    L = v_loc.shape[0]
    K = beta.shape[0]
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
        mk = np.empty(K)
        Dm = np.empty(K)
        C = np.empty((K, L))
        z[0] = 1.0
        for s in range(c * chunk, min((c + 1) * chunk, S)):
            for j in range(d):
                z[j + 1] = Xs[s, j]
            wl = W_cache[s]
            ml = ML_cache[s]
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


def reduction_pass(repeat):
    """Section 2 on the reduction benchmark's problem (S=20000, M=16, K=5, d=20)."""
    sys.path.insert(0, "asv_bench")
    from compare_reduction import local_weights, problem

    from fastmoe._reduction import support_cache

    mix, Xs, beta, var = problem(20_000, 16, 5, 20)
    cache = support_cache(mix, Xs)
    S, d = Xs.shape
    K, p, L = beta.shape[0], d + 1, mix.var.shape[0]
    chunk = chunk_size(S)
    nc = n_chunks(S, chunk)
    nt = resolve_threads(None)
    numba.set_num_threads(nt)

    def buffers():
        return (np.empty((nc, K, p * (p + 1) // 2)), np.empty((nc, K, p)), np.empty((nc, K, 2)),
                np.empty((nc, K, L)), np.empty((nc, L)), np.empty((0, L), dtype=np.int16))

    outs = {name: buffers() for name in ("numba", "avx2", "plain")}

    def shipped(name):
        def run():
            previous = _kernels.set_simd(name == "avx2")
            _kernels.mm_pass(Xs, cache.W, cache.ML, mix.var, (beta, var), _kernels.KL, chunk,
                             outs[name], n_threads=nt)
            _kernels.set_simd(previous)
        return run

    local = (mix.gate, mix.expert, mix.var, mix.starts, mix.lam)
    old = outs["numba"]
    old = old[:3] + (np.empty((nc, L, K)),) + old[4:]

    def nb():
        numba_mm_pass(Xs, local, (cache.W, cache.ML), (beta, var), _kernels.KL, chunk, old)

    runs = {"numba": nb, "avx2": shipped("avx2"), "plain": shipped("plain")}
    if not _kernels.simd_available():
        del runs["avx2"]
    times = {name: [] for name in runs}
    for f in runs.values():
        f()
    for _ in range(repeat):
        for name, f in runs.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    same = all(np.allclose(outs[name][0].sum(0), old[0].sum(0), rtol=1e-10) for name in runs)
    print(f"\nreduction pass, S={S} L={L} K={K} d={d}, {nt} threads (same Gram sums: {same})")
    print("| implementation | ms per pass |")
    print("|---|---|")
    print(f"| numba (shipped before) | {min(times['numba']) * 1e3:.1f} |")
    if "avx2" in times:
        print(f"| C, AVX2/FMA path (shipped) | {min(times['avx2']) * 1e3:.1f} |")
    print(f"| C, plain path (shipped, CPUs without AVX2) | {min(times['plain']) * 1e3:.1f} |")

    Z = np.column_stack([np.ones(S), Xs])
    t_np, t_nb = [], []
    mix.support(Xs, nt)
    for _ in range(repeat):
        t = time.perf_counter()
        local_weights(mix, Z), Xs @ mix.expert[:, 1:].T + mix.expert[:, 0]
        t_np.append(time.perf_counter() - t)
        t = time.perf_counter()
        mix.support(Xs, nt)
        t_nb.append(time.perf_counter() - t)
    print(f"\nlocal weights and means on the support: numpy {min(t_np) * 1e3:.1f} ms, "
          f"numba local_support (shipped) {min(t_nb) * 1e3:.1f} ms")


FIRST_CALL = """
import time, numpy as np
t = time.perf_counter()
{imp}
X = np.zeros((4, 2)); y = np.zeros(4); w = np.ones(4); a = np.zeros((2, 3)); v = np.ones(2)
lr = np.empty((4, 2)); ll = np.empty(4); st = np.empty((1, 2, 10))
{call}
print(time.perf_counter() - t)
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--K", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    n, d, K = args.n, args.d, args.K
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    w = np.ones(n)
    alpha, beta = rng.standard_normal((K, d + 1)), rng.standard_normal((K, d + 1))
    var = np.ones(K)
    chunk = chunk_size(n)
    q = d + 2
    outs = [(np.empty((n, K)), np.empty(n), np.empty((n_chunks(n, chunk), K, q * (q + 1) // 2)))
            for _ in range(3)]
    nt = resolve_threads(None)
    numba.set_num_threads(nt)

    def shipped(out, simd):
        def run():
            previous = _kernels.set_simd(simd)
            try:
                _kernels.e_step(X, y, w, alpha, beta, var, *out, chunk, nt)
            finally:
                _kernels.set_simd(previous)
        return run

    def nb():
        numba_e_step(X, y, w, alpha, beta, var, *outs[2], chunk)

    runs = {"C, AVX2/FMA path (shipped)": shipped(outs[0], True),
            "C, plain path (shipped)": shipped(outs[1], False), "numba": nb}
    times = {name: [] for name in runs}
    for f in runs.values():
        f()
    for _ in range(args.repeat):
        for name, f in runs.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    same = all(np.allclose(o[2].sum(0), outs[2][2].sum(0), rtol=1e-12) for o in outs[:2])
    first_cy = subprocess.run([sys.executable, "-c", FIRST_CALL.format(
        imp="from fastmoe._kernels import e_step",
        call="e_step(X, y, w, a, a, v, lr, ll, st, 4, 1)")], capture_output=True, text=True)
    first_nb = subprocess.run([sys.executable, "-c", FIRST_CALL.format(
        imp="import sys; sys.path.insert(0, 'asv_bench'); from kernel_choice import numba_e_step",
        call="numba_e_step(X, y, w, a, a, v, lr, ll, st, 4)")], capture_output=True, text=True)
    print(f"fused E-step with statistics, n={n} d={d} K={K}, {nt} threads (same results: "
          f"{same})")
    print(f"(AVX2 path available: {_kernels.simd_available()})")
    print("| implementation | ms per call | first call in a new process (s) |")
    print("|---|---|---|")
    for name, t in times.items():
        first = first_nb if name == "numba" else first_cy
        print(f"| {name} | {min(t) * 1e3:.1f} | {first.stdout.strip()} |")
    reduction_pass(args.repeat)


if __name__ == "__main__":
    main()

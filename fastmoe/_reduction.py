"""The reduction of the large mixture of local experts (docs/method.rst, sections 3-4).

M local models theta_m fitted on n_m rows each define the large mixture

    f_W(y | x) = sum_m lambda_m f(y | x; theta_m),   lambda_m = n_m / n,

with L = sum_m K_m components. The reduction to K experts minimises the
composite transportation divergence

    R(beta, var) = sum_s sum_l w_l(x_s) min_k c_lk(x_s)

over the support covariates x_s (a sum over s, not a mean) with an MM
algorithm whose every iteration is one compiled pass (``_kernels.mm_pass``)
and a closed-form update. No gates here: see ``_gate_refit``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _kernels
from ._linalg import chunk_size, n_chunks, solve_psd, unpack_sym
from ._params import MoEParams
from ._validation import check_int, check_X
from .metrics import alignment

COSTS = {"kl": _kernels.KL, "w2": _kernels.W2}
INITS = ("aligned", "kmeans")
VARIANCE_UPDATES = ("exact", "published")
#: largest cache of local weights and means on the support reused by every MM
#: iteration; beyond it they are recomputed in the pass
CACHE_BYTES = 256 * 2**20
#: local weights and means held at once when they are recomputed in the pass
BLOCK_BYTES = 4 * 2**20
#: support points x local experts that the MM iterations of aggregate() visit
#: at most (mm_rows); the gate refit and the final pass use every point
MM_PAIRS = 4_000_000
#: the fewest support points the MM iterations keep
MM_MIN_POINTS = 2000
#: the share of the weight whose machines the aligned start must map
#: one-to-one for the k-means restarts to be skipped. Measured on 256 shards
#: of the authors' design (N=1e6), two machines (0.8% of the weight) in poor
#: local optima: three starts ended at the objective of one (294.8455 against
#: 294.8454) and took 1.2 s more
ONE_TO_ONE_SHARE = 0.95

# ----------------------------------------------------------------------------
# the large mixture
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LargeMixture:
    """The L local experts stacked (intercepts centred by ``shift``)."""

    gate: np.ndarray  # (L, d+1)
    expert: np.ndarray  # (L, d+1), intercept minus shift
    var: np.ndarray  # (L,)
    starts: np.ndarray  # (M+1,) int64
    lam: np.ndarray  # (M,) machine weights, sum 1
    shift: float
    n_experts: tuple  # K_m per machine
    models: tuple  # the validated local MoEParams

    @property
    def n_machines(self) -> int:
        return len(self.lam)

    @property
    def n_features(self) -> int:
        return self.gate.shape[1] - 1

    @property
    def machine(self) -> np.ndarray:
        """(L,) machine index of each local expert."""
        return np.repeat(np.arange(self.n_machines), np.diff(self.starts))

    def support(self, Xs: np.ndarray, n_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(W, ML): the (S, L) local weights w_l(x_s) = lambda_m pi_k^(m)(x_s)
        and the local expert means (centred) at the rows of ``Xs``."""
        Xs = np.ascontiguousarray(Xs, dtype=np.float64)
        S, L = Xs.shape[0], self.gate.shape[0]
        W, ML = np.empty((S, L)), np.empty((S, L))
        _kernels.local_support(Xs, self.gate, self.expert, self.starts, self.lam, W, ML,
                               n_threads=n_threads)
        return W, ML


def _as_params(model, index: int, gaussian: bool = True) -> MoEParams:
    params = model
    if isinstance(model, dict):
        try:
            params = MoEParams.from_dict(model)
        except ValueError as exc:
            raise ValueError(f"local_models[{index}]: {exc}") from None
    elif not isinstance(model, MoEParams):
        params = getattr(model, "params_", None) or getattr(model, "params", None)
    if isinstance(params, MoEParams):
        return params.require_gaussian(f"the reduction (local_models[{index}])") \
            if gaussian else params
    raise ValueError(f"local_models[{index}] is a {type(model).__name__}; expected MoEParams, "
                     "a fitted estimator, a LocalMessage or a MoEParams.to_dict() record.")


def checked_models(local_models, sample_sizes=None, gaussian: bool = True):
    """(models, lam): the local models read and checked (one feature count;
    Gaussian experts unless ``gaussian`` is False) and their weights
    lambda_m = n_m / n."""
    if isinstance(local_models, MoEParams) or not hasattr(local_models, "__len__"):
        raise ValueError("local_models must be a non-empty sequence of models.")
    if len(local_models) == 0:
        raise ValueError("local_models is empty; give at least one local model.")
    models = [_as_params(m, i, gaussian) for i, m in enumerate(local_models)]
    d = models[0].n_features
    for i, m in enumerate(models):
        if m.n_features != d:
            raise ValueError(f"local_models[{i}] has {m.n_features} features but "
                             f"local_models[0] has {d}; all must match.")
    M = len(models)
    if sample_sizes is None:
        sizes = np.ones(M)
    else:
        sizes = np.asarray(sample_sizes, dtype=np.float64).ravel()
        if sizes.shape != (M,):
            raise ValueError(f"sample_sizes has {sizes.size} entries for {M} local models.")
        bad = np.flatnonzero(~(np.isfinite(sizes) & (sizes > 0)))
        if bad.size:
            raise ValueError(f"sample_sizes[{bad[0]}] = {sizes[bad[0]]}; every sample size "
                             "must be a positive number.")
    return models, sizes / sizes.sum()


def large_mixture(local_models, sample_sizes=None) -> LargeMixture:
    """Validate the local models and stack them."""
    models, lam = checked_models(local_models, sample_sizes)
    gate = np.vstack([m.gate_aug for m in models])
    expert = np.vstack([m.expert_aug for m in models])
    var = np.concatenate([m.expert_var for m in models])
    counts = [m.n_experts for m in models]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    shift = float(np.sum(np.repeat(lam, counts) * expert[:, 0]) / np.sum(np.repeat(lam, counts)))
    expert[:, 0] -= shift
    gate = np.where(np.isfinite(gate), gate, -1e300)  # a -inf gate is a zero weight
    return LargeMixture(np.ascontiguousarray(gate), np.ascontiguousarray(expert), var,
                        starts, lam, shift, tuple(counts), tuple(models))


# ----------------------------------------------------------------------------
# the compiled pass and the closed-form update
# ----------------------------------------------------------------------------
@dataclass
class _Pass:
    objective: float
    gram: np.ndarray  # (K, p, p)
    lin: np.ndarray  # (K, p)
    scal: np.ndarray  # (K, 4)
    mass: np.ndarray  # (L, K)
    lobj: np.ndarray  # (L,)
    assign: np.ndarray | None


@dataclass(frozen=True)
class SupportCache:
    """What every MM pass over one support reuses.

    W, ML: the (S, L) local weights and means, when they fit in
    ``CACHE_BYTES``; else (0, L) arrays, and each pass recomputes them block by
    block (memory flat in S).
    gram_total: (p, p) sum_s Lambda(s) xt_s xt_s^T with Lambda(s) = sum_l
    w_l(x_s). Since the targets' weights D_k(s) sum to Lambda(s), a pass can
    skip one target's Gram matrix and take it as this total minus the others.
    """

    W: np.ndarray
    ML: np.ndarray
    gram_total: np.ndarray


def support_blocks(mix: LargeMixture, Xs, rows: int, cache: SupportCache | None = None,
                   n_threads: int = 1):
    """(lo, hi, W, ML) for the blocks of ``rows`` support points: the local
    weights and means, sliced from ``cache`` when it holds them, else computed
    block by block."""
    S = Xs.shape[0]
    held = cache is not None and cache.W.shape[0] == S
    for lo in range(0, S, rows):
        hi = min(S, lo + rows)
        if held:
            yield lo, hi, cache.W[lo:hi], cache.ML[lo:hi]
        else:
            yield (lo, hi) + mix.support(Xs[lo:hi], n_threads)


def support_cache(mix: LargeMixture, Xs, n_threads: int = 1) -> SupportCache:
    """The :class:`SupportCache` of one support, built once per aggregation."""
    S, L = Xs.shape[0], mix.gate.shape[0]
    keep = 2 * S * L * 8 <= CACHE_BYTES
    rows = S if keep else max(1, BLOCK_BYTES // (2 * 8 * L))
    gram_total = np.zeros((Xs.shape[1] + 1,) * 2)
    for lo, hi, W, ML in support_blocks(mix, Xs, rows, n_threads=n_threads):
        gram_total += _total_gram(Xs[lo:hi], W)
    if not keep:
        W = ML = np.empty((0, L))
    return SupportCache(W, ML, gram_total)


def mm_pass(mix: LargeMixture, Xs, beta, var, cost: int, n_threads: int,
            want_assign: bool = False, cache: SupportCache | None = None,
            skip: int = -1) -> _Pass:
    """One compiled pass (``_kernels.mm_pass``), its chunks summed in order.

    Without cached local weights and means they are computed for blocks of
    whole chunks, so the chunks, and the results, are the same either way.
    ``skip`` >= 0 (needs ``cache``): that target's Gram matrix is the cache's
    total minus the others' (use a heavy target: the difference loses the
    digits of the total that the target does not carry)."""
    S, d = Xs.shape
    K, p = beta.shape
    L = mix.gate.shape[0]
    chunk = chunk_size(S)
    nc = n_chunks(S, chunk)
    out = (np.empty((nc, K, p * (p + 1) // 2)), np.empty((nc, K, p)), np.empty((nc, K, 2)),
           np.empty((nc, K, L)), np.empty((nc, L)),
           np.empty((S, L) if want_assign else (0, L), dtype=np.int16))
    targets = (np.ascontiguousarray(beta, dtype=np.float64),
               np.ascontiguousarray(var, dtype=np.float64))
    if cache is not None and cache.W.shape[0] == S:
        _kernels.mm_pass(Xs, cache.W, cache.ML, mix.var, targets, cost, chunk, out, skip,
                         n_threads=n_threads)
    else:
        rows = chunk * max(1, BLOCK_BYTES // (2 * 8 * L * chunk))
        for lo, hi, W, ML in support_blocks(mix, Xs, rows, n_threads=n_threads):
            c = slice(lo // chunk, n_chunks(hi - lo, chunk) + lo // chunk)
            block = tuple(a[c] for a in out[:5]) + (out[5][lo:hi] if want_assign else out[5],)
            _kernels.mm_pass(Xs[lo:hi], W, ML, mix.var, targets, cost, chunk, block, skip,
                             n_threads=n_threads)
    gram, lin, scal, mass, lobj, assign = out
    gram = unpack_sym(gram.sum(axis=0), p)
    if skip >= 0:
        gram[skip] = cache.gram_total - gram.sum(axis=0)  # the kernel left it zero
    lobj = lobj.sum(axis=0)
    mass = mass.sum(axis=0).T
    # sum P var_l and sum P sqrt(var_l) per target, from the (L, K) mass
    scal = np.column_stack([scal.sum(axis=0), mass.T @ mix.var, mass.T @ np.sqrt(mix.var)])
    return _Pass(float(lobj.sum()), gram, lin.sum(axis=0), scal, mass, lobj,
                 assign if want_assign else None)


def _update(mix, st: _Pass, beta, var, cost: int, variance_update: str, notes: list):
    """Closed-form minimiser of R over the targets for a fixed plan."""
    K = beta.shape[0]
    beta = beta.copy()
    var = var.copy()
    floor = 1e-12 * float(mix.var.max())
    empty = [k for k in range(K) if not st.scal[k, 0] > 0.0]
    solved = solve_psd(st.gram, st.lin)
    for k in range(K):
        D = st.scal[k, 0]
        if not D > 0.0:
            continue
        beta[k] = solved[k]
        if cost == _kernels.W2:
            v = (st.scal[k, 3] / D) ** 2
        elif variance_update == "published":
            v = st.scal[k, 2] / D
        else:
            v = (st.scal[k, 2] + st.scal[k, 1] - beta[k] @ st.lin[k]) / D
        var[k] = max(v, floor)
    if empty:
        # re-seed each empty target at the local expert that is worst represented
        order = np.argsort(-st.lobj)
        for k, l in zip(empty, order):
            beta[k] = mix.expert[l]
            var[k] = mix.var[l]
            notes.append(f"global expert {k} received no mass and was re-seeded at local "
                         f"expert {l} (machine {mix.machine[l]})")
    return beta, var


def _run_mm(mix, Xs, beta, var, *, cost, variance_update, max_iter, tol, n_threads,
            cache=None):
    history = []
    notes: list[str] = []
    converged = False
    it = 0
    skip = -1
    while True:
        st = mm_pass(mix, Xs, beta, var, cost, n_threads, cache=cache, skip=skip)
        if skip >= 0 and not st.scal[skip, 0] * 4 * len(var) >= st.scal[:, 0].sum():
            # the skipped target lost most of its mass: take its Gram matrix directly
            st = mm_pass(mix, Xs, beta, var, cost, n_threads, cache=cache)
        if cache is not None:
            skip = int(np.argmax(st.scal[:, 0]))  # the heaviest target, next time
        history.append(st.objective)
        if len(history) > 1:
            prev = history[-2]
            if abs(prev - st.objective) <= tol * max(abs(prev), 1e-300):
                converged = True
                break
        if it == max_iter:
            break
        beta, var = _update(mix, st, beta, var, cost, variance_update, notes)
        it += 1
    # the last pass is at the returned targets: its (L, K) mass comes with them
    return beta, var, np.array(history), it, converged, notes, st.mass


# ----------------------------------------------------------------------------
# starts
# ----------------------------------------------------------------------------
def centred_start(mix: LargeMixture, params: MoEParams) -> tuple[np.ndarray, np.ndarray]:
    """A (beta, var) start from the experts of ``params``, in the centred
    units of ``mix`` (intercepts minus its shift)."""
    beta = params.expert_aug.copy()
    beta[:, 0] -= mix.shift
    return beta, np.array(params.expert_var, dtype=np.float64)


def _aligned_average_params(models, lam) -> MoEParams:
    # reference: the largest sample; ties broken by the canonical expert
    # intercepts, so that the result does not depend on the order of the models
    keys = [(-w, tuple(np.sort(m.expert_intercept))) for w, m in zip(lam, models)]
    ref = models[min(range(len(models)), key=keys.__getitem__)]
    aligned = [m.permute(alignment(m, ref)) for m in models]
    avg = {name: sum(w * getattr(m, name) for w, m in zip(lam, aligned))
           for name in ("gate_coef", "gate_intercept", "expert_coef", "expert_intercept",
                        "expert_var")}
    return MoEParams(**avg)


def mm_rows(S: int, L: int):
    """The support rows the MM iterations of :func:`fastmoe.aggregate` visit:
    None (all of them) while S x L is at most ``MM_PAIRS``, else the indices
    of an evenly spaced subset of max(MM_MIN_POINTS, MM_PAIRS // L) (the
    support is pooled machine by machine, so every machine keeps its share).
    A pass costs S x L pairs: without this the reduction grows linearly in M
    at a bounded support (measured at N=1e6 over 256 machines, 1280 local
    experts: 2.3 s of a 2.5 s learning time). The gate refit and the final
    pass see every point."""
    keep = max(MM_MIN_POINTS, MM_PAIRS // max(L, 1))
    if S * L <= MM_PAIRS or keep >= S:
        return None
    return np.linspace(0, S - 1, keep).astype(np.intp)


def subset_cache(mix: LargeMixture, Xs, rows, cache: SupportCache,
                 n_threads: int = 1) -> SupportCache:
    """The SupportCache of ``Xs[rows]``, sliced from the cache of ``Xs`` when
    that holds the local weights and means."""
    sub = Xs[rows]
    if cache.W.shape[0] != Xs.shape[0]:
        return support_cache(mix, sub, n_threads)
    W, ML = cache.W[rows], cache.ML[rows]
    return SupportCache(W, ML, _total_gram(sub, W))


def _total_gram(Xs, W) -> np.ndarray:
    """(p, p) sum_s Lambda(s) xt_s xt_s^T over the rows of Xs, Lambda(s) =
    sum_l W[s, l] (SupportCache.gram_total)."""
    Z = np.column_stack([np.ones(Xs.shape[0]), Xs])
    return Z.T @ (W.sum(axis=1)[:, None] * Z)


def mapped_one_to_one(owner: np.ndarray, machine: np.ndarray, K: int) -> np.ndarray:
    """(M,) whether each machine's local experts have distinct owners (the
    target receiving most of their mass), as many as min(K_m, K);
    ``owner`` and ``machine``, (L,), per local expert."""
    M = int(machine.max()) + 1
    distinct = np.bincount(np.unique(machine * K + owner) // K, minlength=M)
    return distinct == np.minimum(np.bincount(machine, minlength=M), K)


def _one_to_one(mix: LargeMixture, mass: np.ndarray) -> bool:
    """Whether the machines mapped one-to-one hold at least
    ``ONE_TO_ONE_SHARE`` of the weight."""
    mapped = mapped_one_to_one(np.argmax(mass, axis=1), mix.machine, mass.shape[1])
    return float(np.sum(mix.lam[mapped])) >= ONE_TO_ONE_SHARE


def _kmeans_start(mix, K, rng):
    from sklearn.cluster import KMeans

    feats = np.column_stack([mix.expert, np.sqrt(mix.var)])
    w = np.repeat(mix.lam, np.diff(mix.starts))
    km = KMeans(n_clusters=K, n_init=1, random_state=int(rng.integers(2**31 - 1)))
    labels = km.fit(feats, sample_weight=w).labels_
    beta = np.empty((K, mix.expert.shape[1]))
    var = np.empty(K)
    for k in range(K):
        sel = labels == k
        if not sel.any():  # k-means leaves a cluster empty on duplicate experts
            sel = np.arange(len(w)) == rng.integers(len(w))
        beta[k] = np.average(mix.expert[sel], axis=0, weights=w[sel])
        var[k] = np.average(mix.var[sel], weights=w[sel])
    return beta, var


def reduce_mixture(mix: LargeMixture, Xs, K: int, *, cost: int, init="aligned", n_init: int,
                   max_iter: int, tol: float, variance_update: str = "exact", rng,
                   n_threads: int, cache: SupportCache | None = None):
    """The reduction of the large mixture to K targets: MM from each start,
    the smallest objective kept, targets in canonical order.

    ``init`` is "aligned" (the aligned average first when every machine has K
    experts, k-means starts for the rest), "kmeans", or a (beta, var) start
    in the centred units of ``mix`` (then the only start). The k-means
    restarts are skipped when the aligned start ends with the experts of
    machines holding ``ONE_TO_ONE_SHARE`` of the weight mapped one-to-one
    onto the targets: measured on 16 and 64 shards of the reference data
    (every machine mapped) and 256 shards of the authors' design (all but
    0.8% of the weight), they then ended at the same objective, and skipping
    them cut the reduction 2 to 2.6 times. Returns (beta, var,
    history, n_iter, converged, notes, cache); ``cache``, the support's
    cache when the caller has it."""
    if cache is None:
        cache = support_cache(mix, Xs, n_threads)

    def run(beta, var):
        return _run_mm(mix, Xs, beta, var, cost=cost, variance_update=variance_update,
                       max_iter=max_iter, tol=tol, n_threads=n_threads, cache=cache)

    if isinstance(init, tuple):
        best = run(np.array(init[0], dtype=np.float64), np.array(init[1], dtype=np.float64))
        starts = 0
    else:
        best, starts = None, n_init
        if init == "aligned" and len(set(mix.n_experts)) == 1 and mix.n_experts[0] == K:
            best = run(*centred_start(mix, _aligned_average_params(mix.models, mix.lam)))
            starts = n_init - 1
            if _one_to_one(mix, best[6]):
                starts = 0  # every machine's experts map one-to-one: no restarts
    for _ in range(starts):
        out = run(*_kmeans_start(mix, K, rng))
        if best is None or out[2][-1] < best[2][-1]:
            best = out
    beta, var, history, n_iter, converged, notes, _ = best
    beta, var = _canonical_targets(beta, var)
    return beta, var, history, n_iter, converged, notes, cache


def _canonical_targets(beta, var):
    order = np.lexsort((var, beta[:, 0]))
    return beta[order].copy(), var[order].copy()


def reduced_size(mix: LargeMixture, n_experts, cost: str) -> int:
    """The checked K of a reduction of ``mix`` (default: the local models'
    common K) and a check of the ``cost`` name."""
    if n_experts is None:
        if len(set(mix.n_experts)) != 1:
            raise ValueError(f"the local models have different numbers of experts "
                             f"{sorted(set(mix.n_experts))}; pass n_experts.")
        n_experts = mix.n_experts[0]
    K = check_int(n_experts, "n_experts")
    if K > mix.gate.shape[0]:
        raise ValueError(f"n_experts={K} is more than the {mix.gate.shape[0]} local experts "
                         "in all; cannot reduce to more experts than there are.")
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {sorted(COSTS)}; got {cost!r}.")
    return K


def _check_support(Xs, mix, K):
    Xs = check_X(Xs, mix.n_features, name="X_support")
    need = (mix.n_features + 1) * (K - 1)
    if Xs.shape[0] < max(need, 1):
        raise ValueError(f"X_support has {Xs.shape[0]} points; the gate regression of {K} "
                         f"experts on {mix.n_features} features needs at least "
                         f"(d+1)(K-1) = {need}. Send larger covariate samples.")
    return Xs

"""EM for softmax-gated mixtures of GLM experts: Poisson, Bernoulli and Gamma
(docs/method.rst, section 11).

The E-step is the Gaussian one with the family's log-density
(:mod:`fastmoe.families`). The M-step is generalised EM: each expert takes
one iteratively reweighted least-squares step (Fisher scoring on its
posterior-weighted log-likelihood; Newton's step for the canonical links of
Poisson and Bernoulli) with step halving until that log-likelihood does not
decrease, a Gamma expert's shape is then its maximum-likelihood value given
the new means, and the gates take the Gaussian path's Newton step with step
halving (:func:`fastmoe._gating.fit_gates`). Every part of the M-step
increases its part of EM's objective, so the log-likelihood never decreases.

EM runs on standardised covariates (fastmoe._frame), so the fit does not
depend on their units or offsets; a Gamma response is divided by its mean
(the model of c y is that of y with every expert intercept plus log c).
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np

from . import _kernels, exceptions
from ._fit import DUPLICATE_KL, EMPTY_SHARE, MoEFit, random_regions
from ._frame import Frame
from ._gating import fit_gates
from ._gating import penalty as gate_penalty
from ._linalg import resolve_threads, solve_psd, squarem_point
from ._options import EMOptions
from ._params import MoEParams, _offset
from ._validation import check_int, check_random_state, check_X_y
from .families import get_family, kl_costs

#: ridge on each expert's slopes (standardised covariates), relative to the
#: expert's total weight: keeps an expert finite where its rows are
#: separable (a Bernoulli expert whose rows are all 1 above a threshold),
#: and moves an unpenalised fit by about this relative amount
EXPERT_RIDGE = 1e-9
#: IRLS steps of every expert at a start (from the pooled GLM's intercept)
START_IRLS = 25
#: step halvings of an expert's IRLS step at most
MAX_HALVINGS = 30
#: an expert's objective within this relative amount of the last one is not
#: lower (the sums' rounding)
ROUNDING = 1e-13


def e_step_rows(family, X, y, offset, alpha, beta, phi, base, n_threads: int):
    """The E-step of experts of ``family`` by the compiled kernel
    (``fastmoe._kernels.family_e_step``): (posteriors (n, K), linear
    predictors (n, K), the rows' log-likelihoods (n,)), ``base`` the rows'
    terms in y alone; a FloatingPointError of one line where a row's is not
    finite. Serves EM (``_Data.e_step``) and fastmoe.engine.e_step."""
    n, K = X.shape[0], beta.shape[0]
    R, eta, kern, row = np.empty((n, K)), np.empty((n, K)), np.empty((n, K)), np.empty(n)
    nu = 1.0 / np.asarray(phi, dtype=np.float64)
    lg = np.array([math.lgamma(v) for v in nu]) if family.has_dispersion else np.zeros(K)
    _kernels.check_rows(_kernels.family_e_step(
        _kernels.family_code(family.name), X, y, offset, np.ascontiguousarray(alpha),
        np.ascontiguousarray(beta), nu, lg, base, R, eta, kern, row, n_threads=n_threads))
    return R, eta, row


class _Data:
    """Validated data in the fitting frame."""

    def __init__(self, X, y, w, offset, family, K, n_threads):
        self.family, self.K, self.n_threads = family, K, n_threads
        self.code = _kernels.family_code(family.name)
        self.objective = _kernels.family_objective
        self.n, self.d = X.shape
        self.X, self.y, self.w, self.offset = X, y, w, offset
        self.y1 = y[:, None]
        self.Z = np.column_stack([np.ones(self.n), X])
        self.total_weight = float(w.sum())

    @functools.cached_property
    def base(self) -> np.ndarray:
        """The terms of log f of y alone (once, where an E-step needs them)."""
        return self.family.base(self.y)

    def linear(self, beta):
        return self.Z @ beta.T + self.offset[:, None]

    def e_step(self, alpha, beta, phi):
        """(weighted log-likelihood, responsibilities (n, K), eta (n, K))."""
        R, eta, row = e_step_rows(self.family, self.X, self.y, self.offset, alpha, beta, phi,
                                  self.base, self.n_threads)
        return float(self.w @ row), R, eta

    def expert_objective(self, a, b, phi_k) -> float:
        """sum_i a_i log f(y_i; Z_i b + offset_i, phi_k), less the terms in
        y alone."""
        nu = 1.0 / float(phi_k)
        lg = math.lgamma(nu) if self.family.has_dispersion else 0.0
        val = self.objective(self.code, self.y, self.Z @ b + self.offset, a, nu, lg)
        return val if np.isfinite(val) else -np.inf


def _irls_step(data: _Data, a, b, phi_k, eta_k):
    """One scoring step of one expert with row weights ``a``, halved until
    its weighted log-likelihood does not decrease: the new coefficients.
    The objective is the one the step is Newton's (scoring's) for: the
    weighted log-likelihood less the ridge on the slopes (EXPERT_RIDGE).
    Where an expert's rows are separable its slopes grow without bound and
    the ridge is what stops them; checked without it, every step there
    lowered the objective and every halving failed (24 objectives per step,
    2000 iterations on a 66-row shard of CreditCard). A trial within
    rounding (ROUNDING relative) of the objective at ``b`` counts as not
    lower."""
    z, W = data.family.working(data.y, eta_k)
    aw = a * W
    Z = data.Z
    G = Z.T @ (Z * aw[:, None])
    ridge = EXPERT_RIDGE * float(a.sum())
    G[1:, 1:] += ridge * np.eye(data.d)
    target = solve_psd(G, Z.T @ (aw * (z - data.offset)))
    step = target - b

    def objective(v):  # the expert's weighted log-likelihood, less the ridge
        return data.expert_objective(a, v, phi_k) - 0.5 * ridge * float(v[1:] @ v[1:])

    old = objective(b)
    old -= ROUNDING * abs(old)
    t = 1.0
    for _ in range(MAX_HALVINGS):
        trial = b + t * step
        if objective(trial) >= old:
            return trial
        t *= 0.5
    return b


def fit_expert(data: _Data, a, b, phi_k, max_steps: int, rtol: float = 1e-10,
               atol: float = 1e-12) -> np.ndarray:
    """One expert's weighted GLM (row weights ``a``) from ``b``: IRLS steps
    (:func:`_irls_step`) until the coefficients stop moving, at most
    ``max_steps``. Serves a start's experts, the reduction's targets
    (fastmoe._family_reduction) and fastmoe.engine.fit_family_experts."""
    for _ in range(max_steps):
        new = _irls_step(data, a, b, phi_k, data.Z @ b + data.offset)
        done = np.allclose(new, b, rtol=rtol, atol=atol)
        b = new
        if done:
            break
    return b


def _m_step(data: _Data, alpha, beta, phi, R, eta, gate_steps: int, gate_l2: float):
    """Generalised M-step from the E-step's posteriors ``R`` and linear
    predictors ``eta``: (alpha, beta, phi)."""
    fam = data.family
    W = data.w[:, None] * R
    mass = W.sum(axis=0)
    live = mass > EMPTY_SHARE * data.total_weight
    beta = beta.copy()
    for k in np.flatnonzero(live):
        beta[k] = _irls_step(data, W[:, k], beta[k], phi[k], eta[:, k])
    if fam.has_dispersion:
        phi = phi.copy()
        new = fam.dispersion(data.y1, fam.mean(data.linear(beta)), W)
        phi[live] = new[live]
    if data.K > 1:
        alpha = fit_gates(data.X, R, data.w, alpha, max_iter=gate_steps, tol=0.0,
                          n_threads=data.n_threads, l2=gate_l2).alpha
    return alpha, beta, phi


def _start(data: _Data, init, rng):
    """(alpha, beta, phi) of one start: the experts fitted by IRLS on soft
    random regions of the covariates (as the Gaussian path's random start,
    fastmoe._fit.random_regions), the gates uniform; or ``init``."""
    K, d, fam = data.K, data.d, data.family
    if isinstance(init, MoEParams):
        return init.gate_aug.copy(), init.expert_aug.copy(), init.expert_var.copy()
    if init == "kmeans":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=K, n_init=1, random_state=int(rng.integers(2**31 - 1)))
        labels = km.fit(data.X, sample_weight=data.w).labels_
        R = np.zeros((data.n, K))
        R[np.arange(data.n), labels] = 1.0
    else:
        R = random_regions(data.X, K, rng)
    pooled = float(np.average(fam.link(data.y) - data.offset, weights=data.w))
    beta = np.zeros((K, d + 1))
    beta[:, 0] = pooled
    phi = np.ones(K)
    W = data.w[:, None] * R
    for k in range(K):
        beta[k] = fit_expert(data, W[:, k], beta[k], phi[k], START_IRLS)
    if fam.has_dispersion:
        phi = fam.dispersion(data.y1, fam.mean(data.linear(beta)), W)
    return np.zeros((K, d + 1)), beta, phi


def _run(data: _Data, alpha, beta, phi, *, max_iter, tol, gate_steps, gate_l2,
         accelerate=True):
    """EM from one start, accelerated: (alpha, beta, phi, loglik, iterations,
    converged, history).

    With ``accelerate``, every two EM iterations are followed by a SQUAREM extrapolation
    (Varadhan and Roland 2008, scheme S3, with a step length of at least one)
    and one EM iteration from it, kept only where it ends above the second
    plain iteration (:func:`_jump_gains`): the log-likelihood never
    decreases, and EM stops as the plain iteration does, at the first
    iteration that gains less than ``tol`` times the log-likelihood.
    ``iterations`` counts EM iterations (M-steps).
    """
    ll, R, eta = data.e_step(alpha, beta, phi)
    history = [ll]
    converged, it = False, 0
    theta = (alpha, beta, phi)

    def em(t, R, eta):
        new = _m_step(data, *t, R, eta, gate_steps, gate_l2)
        return (new, *data.e_step(*new))

    while it < max_iter:
        t1, ll1, R1, eta1 = em(theta, R, eta)
        it += 1
        history.append(ll1)
        if ll1 - ll <= tol * abs(ll1) or it == max_iter:
            converged = ll1 - ll <= tol * abs(ll1)
            theta, ll, R, eta = t1, ll1, R1, eta1
            break
        t2, ll2, R2, eta2 = em(t1, R1, eta1)
        it += 1
        history.append(ll2)
        best = (t2, ll2, R2, eta2)
        jump = _squarem(data, theta, t1, t2) if accelerate else None
        if jump is not None and it < max_iter:
            try:
                _, Re, etae = data.e_step(*jump)
                t3, ll3, R3, eta3 = em(jump, Re, etae)
            except (FloatingPointError, np.linalg.LinAlgError):  # the jump overflowed
                ll3 = -np.inf
            else:
                it += 1
            if _jump_gains(data, (t2, ll2, R2), (t3, ll3, R3), gate_l2):
                best = (t3, ll3, R3, eta3)
                history.append(ll3)
        plain = best[0] is t2
        theta, ll, R, eta = best
        if plain and ll2 - ll1 <= tol * abs(ll2):
            converged = True
            break
    return (*theta, ll, it, converged, np.array(history))


def _penalties(data: _Data, t, R, gate_l2: float) -> float:
    """What EM's objective subtracts from the log-likelihood: the experts'
    ridge (EXPERT_RIDGE on the slopes, times each expert's weight) and the
    gates' penalty."""
    alpha, beta, _ = t
    mass = (data.w[:, None] * R).sum(axis=0)
    return 0.5 * EXPERT_RIDGE * float(mass @ np.sum(beta[:, 1:] ** 2, axis=1)) \
        + gate_penalty(alpha, gate_l2)


def _jump_gains(data: _Data, plain, jump, gate_l2: float) -> bool:
    """Whether an extrapolated point (model, log-likelihood, posteriors)
    beats the second plain iteration: a higher log-likelihood that does not
    come from lengthening the penalised parameters. Where an expert's rows
    are separable, its slopes grow until the ridge stops them; a jump along
    them raised the log-likelihood while its ridge rose nearly as much, and
    the next iteration, which raises EM's penalised objective, pulled the
    log-likelihood back 0.002 nats below (a 2000-row Bernoulli fit). Such a
    jump is not kept: its penalties may grow by at most 1% of its gain."""
    (t2, ll2, R2), (t3, ll3, R3) = plain, jump
    gain = ll3 - ll2
    return gain > 0 and (_penalties(data, t3, R3, gate_l2)
                         - _penalties(data, t2, R2, gate_l2)) <= 0.01 * gain


def _squarem(data: _Data, t0, t1, t2):
    """``squarem_point`` (step length unbounded) from three successive EM
    points, in the gates relative to the last, the experts and the log
    dispersions; None where the steps did not move."""
    x, _ = squarem_point(*(_flat(data, t) for t in (t0, t1, t2)))
    return None if x is None else _unflat(data, x, t0)


def _flat(data: _Data, t) -> np.ndarray:
    alpha, beta, phi = t
    parts = [(alpha - alpha[-1]).ravel(), beta.ravel()]
    if data.family.has_dispersion:
        parts.append(np.log(phi))
    return np.concatenate(parts)


def _unflat(data: _Data, x, like):
    K, p = like[1].shape
    alpha = x[:K * p].reshape(K, p).copy()
    beta = x[K * p:2 * K * p].reshape(K, p).copy()
    phi = np.exp(np.clip(x[2 * K * p:], -18.42, 18.42)) if data.family.has_dispersion \
        else like[2].copy()
    return alpha, beta, phi


def _empty_experts(data: _Data, alpha, beta, phi) -> list:
    """The experts that hold no rows at these parameters."""
    _, R, _ = data.e_step(alpha, beta, phi)
    mass = (data.w[:, None] * R).sum(axis=0)
    return [int(k) for k in np.flatnonzero(mass <= EMPTY_SHARE * data.total_weight)]


def duplicate_experts(data: _Data, beta, phi):
    """(i, j, kl): the two experts whose conditional distributions of y are
    closest by the symmetric KL divergence, KL(i || j) + KL(j || i) at each
    row's linear predictors averaged over the rows (weighted), if it is below
    DUPLICATE_KL; else None. The Gaussian path's duplicate_pair
    (fastmoe._em) with the family's divergence
    (:func:`fastmoe.families.kl_costs`, the reduction's cost)."""
    eta, nu, name = data.linear(beta), 1.0 / np.asarray(phi, dtype=np.float64), data.family.name
    best = None
    for i in range(beta.shape[0]):
        for j in range(i):
            both = kl_costs(name, eta[:, i], nu[i], eta[:, j], nu[j]) \
                + kl_costs(name, eta[:, j], nu[j], eta[:, i], nu[i])
            kl = float(np.average(both, weights=data.w))
            if kl < DUPLICATE_KL and (best is None or kl < best[2]):
                best = (i, j, kl)
    return best


def _split_move(data: _Data, alpha, beta, phi, pair):
    """Merge a duplicated pair of experts and split the broadest expert:
    (alpha, beta, phi, message).

    As the Gaussian path's move (fastmoe._em._split_move): the lighter
    expert j of the pair is re-seeded, with the broadest other expert k, by
    fitting the two on halves of k's rows (IRLS from k's coefficients), and
    takes k's gate. The broadest expert has the largest Pearson statistic,
    the sum over its rows of w r (y - mu)^2 / V(mu) (for a Gamma expert,
    V = mu^2: its dispersion times its weight; for a Gaussian one it would be
    its variance times its weight): an expert that covers two groups of rows
    is both heavy and overdispersed. The halves are the rows above and below
    k's mean, as for Gaussian experts; a 0/1 response has no such halves (they
    would be its ones and zeros), so a Bernoulli expert's rows are halved by
    the sign of their leading principal component, where its gate can
    separate them."""
    i, j, kl = pair
    fam = data.family
    _, R, eta = data.e_step(alpha, beta, phi)
    W = data.w[:, None] * R
    mass = W.sum(axis=0)
    if mass[i] < mass[j]:
        i, j = j, i  # the lighter expert of the pair is re-seeded
    mu = fam.mean(eta)
    # (a Bernoulli mean can round to 0 or 1: its variance is floored)
    pearson = (W * (data.y1 - mu) ** 2 / np.maximum(fam.variance(mu, 1.0), 1e-12)).sum(axis=0)
    k = max((c for c in range(data.K) if c != j), key=lambda c: pearson[c])
    a = W[:, k]
    if fam.name == "bernoulli":
        centred = data.X - np.average(data.X, axis=0, weights=a)
        _, vectors = np.linalg.eigh((centred * a[:, None]).T @ centred)
        upper = centred @ vectors[:, -1] > 0
    else:
        upper = data.y > mu[:, k]
    halves = np.column_stack([a * upper, a * ~upper])
    alpha, beta, phi = alpha.copy(), beta.copy(), np.array(phi, dtype=np.float64)
    start = beta[k].copy()
    for c, half in zip((j, k), halves.T):
        beta[c] = fit_expert(data, half, start, phi[k], START_IRLS)
    if fam.has_dispersion:
        phi[[j, k]] = fam.dispersion(data.y1, fam.mean(data.linear(beta[[j, k]])), halves)
    alpha[j] = alpha[k]
    alpha -= alpha[-1]
    message = (f"two experts had nearly the same distribution (symmetric KL {kl:.3g}); one "
               f"was re-seeded by splitting the broadest expert (Pearson statistic "
               f"{pearson[k]:.3g})")
    return alpha, beta, phi, message


def _objective(data: _Data, run, gate_l2: float) -> float:
    """EM's objective at a run's parameters: the log-likelihood less the
    penalties (:func:`_penalties`)."""
    _, R, _ = data.e_step(*run[:3])
    return run[3] - _penalties(data, run[:3], R, gate_l2)


def _try_move(data: _Data, run, moves: list, *, max_iter, tol, gate_l2, **em):
    """``run`` (a :func:`_run` result) after a split-merge move
    (:func:`_split_move`) if two of its experts duplicate each other and EM
    from the move reaches a higher objective within ``max_iter``
    iterations; else ``run`` unchanged. An accepted move is appended to
    ``moves`` as (message, log-likelihood before, after)."""
    pair = duplicate_experts(data, run[1], run[2])
    if pair is None:
        return run
    *start, message = _split_move(data, *run[:3], pair)
    alt = _run(data, *start, max_iter=max_iter, tol=tol, gate_l2=gate_l2, **em)
    before, after = _objective(data, run, gate_l2), _objective(data, alt, gate_l2)
    if not after > before + tol * abs(before):
        return run
    moves.append((message, run[3], alt[3]))
    return alt


def _best_run(data: _Data, init, options: EMOptions, rng):
    """EM from ``options.n_init`` starts (short runs first when
    ``options.short_runs``), the best run to convergence, then the
    split-merge moves (:func:`_try_move`), as the Gaussian path's
    ``_best_of_starts``: (best run, every start's log-likelihood, the moves
    accepted as (message, before, after))."""
    em = dict(tol=options.tol, gate_steps=options.gate_steps, gate_l2=options.gate_penalty,
              accelerate=options.accelerate)
    starts = 1 if isinstance(init, MoEParams) else options.n_init
    short = options.short_runs and starts > 1
    runs = []
    for _ in range(starts):
        alpha, beta, phi = _start(data, init, rng)
        runs.append(_run(data, alpha, beta, phi, max_iter=options.init_iter if short
                         else options.max_iter, **em))
    finals = [r[3] for r in runs]
    best = runs[int(np.argmax(finals))]
    if short:
        best = _run(data, *best[:3], max_iter=options.max_iter, **em)
    moves: list = []
    for _ in range(data.K - 1 if options.split_merge else 0):
        done = len(moves)
        best = _try_move(data, best, moves, max_iter=options.max_iter, **em)
        if len(moves) == done:
            break
    return best, finals, moves


def fit_glm_moe(X, y, n_experts: int, *, family, sample_weight=None, offset=None,
                options: EMOptions, random_state=None, n_threads: int | None = None) -> MoEFit:
    """EM for a mixture of ``family`` experts (see :func:`fastmoe.fit_moe`,
    which calls this for every family but the Gaussian)."""
    fam = get_family(family)
    X, y, w = check_X_y(X, y, sample_weight)
    fam.check_y(y[w > 0])
    K = check_int(n_experts, "n_experts")
    n, d = X.shape
    if K > n:
        raise ValueError(f"n_experts={K} is more than the number of samples "
                         f"(n_samples = {n}); use n_experts <= n_samples.")
    if options.penalty is not None:
        raise ValueError(f"penalty={options.penalty!r} serves Gaussian experts only.")
    off = np.zeros(n) if offset is None else _offset(offset, n)
    init = options.init
    if isinstance(init, MoEParams):
        if init.family != fam.name or init.n_experts != K or init.n_features != d:
            raise ValueError(f"init is a model of {init.n_experts} {init.family} experts on "
                             f"{init.n_features} features; expected {K} {fam.name} experts on "
                             f"{d}.")
    frame = Frame.of(X, None, w)
    y_scale = float(np.average(y, weights=w)) if fam.name == "gamma" else 1.0
    shift = np.log(y_scale)
    if isinstance(init, MoEParams):
        inside = frame.params_in(init)
        init = MoEParams(inside.gate_coef, inside.gate_intercept, inside.expert_coef,
                         inside.expert_intercept - shift, inside.expert_var, fam.name)
    data = _Data(frame.X(X), y / y_scale, w, off, fam, K, resolve_threads(n_threads))
    best, finals, moves = _best_run(data, init, options, check_random_state(random_state))
    alpha, beta, phi, ll, it, converged, history = best
    empty = _empty_experts(data, alpha, beta, phi)
    if not converged:
        warnings.warn(f"EM did not converge in max_iter={options.max_iter} iterations "
                      f"(relative change still above tol={options.tol:g}); increase max_iter "
                      "or tol.", exceptions.ConvergenceWarning, stacklevel=3)
    notes = tuple(f"expert {k} holds no rows" for k in empty)
    if notes:
        warnings.warn("; ".join(notes) + ". Consider fewer experts.",
                      exceptions.DegenerateExpertWarning, stacklevel=3)
    beta = beta.copy()
    beta[:, 0] += shift
    # log f(y) of a Gamma response = log f(y / c) - log c per row
    jac = -data.total_weight * shift
    params = frame.params_out(MoEParams.from_aug(alpha, beta, phi, fam.name))
    history = history + jac
    history.setflags(write=False)
    moves = tuple(f"{message}: log-likelihood {before + jac:.8g} -> {after + jac:.8g}"
                  for message, before, after in moves)
    return MoEFit(params.canonical(), ll + jac, it, converged, history,
                  tuple(f + jac for f in finals), notes, moves, 0.0)

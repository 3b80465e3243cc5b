"""EM for a softmax-gated Gaussian mixture of experts, as plain functions.

One EM iteration (docs/method.rst, section 2):

1. E-step (one compiled pass, ``_kernels.em_pass``): log-likelihood,
   responsibilities, per expert the weighted Gram matrix of z = (1, x, y),
   and the gradient and information matrix of the gate objective at the
   current gates for the new responsibilities, from which
2. the experts follow in closed form (weighted least squares and variance,
   floored at ``reg_var * Var(y)``), and
3. the gates take one Newton step with step halving on the weighted
   multinomial logistic objective (a generalised EM: the log-likelihood still
   never decreases). For targets R whose rows sum to 1 that objective is
   Q(alpha) = sum_k alpha_k . m_k - sum_i w_i lse_i(alpha), with
   m_k = sum_i w_i R_ik (1, x_i) the first row of expert k's Gram matrix and
   lse_i the log-partition of the gates, which the pass sums. So the ascent
   check of the full step is made from the next pass at the new gates, and
   an iteration is one pass over the data unless the step has to be halved;
   ``gate_steps`` > 1 runs that many IRLS steps instead. The last pass of a
   run (at ``max_iter``) computes the log-likelihood without the statistics
   of a next iteration.

The response is centred internally (its weighted mean is added back to the
expert intercepts), which keeps the variance formula from the Gram matrix
accurate when y has a large offset; the log-likelihood is unchanged by it.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import numpy as np

from . import _kernels, exceptions
from ._fit import DUPLICATE_KL, EMPTY_SHARE, MoEFit, random_regions
from ._frame import Frame, robust_scale
from ._gating import (
    assemble_newton,
    fit_gates,
    gate_objective,
    gradient_direction,
    halve_step,
    newton_direction,
    penalised,
    penalty,
)
from ._information import derivatives, params_of, theta_of, trust_step
from ._lasso import l1_strength as auto_l1_strength
from ._lasso import lasso_em
from ._linalg import (
    chunk_size,
    n_chunks,
    resolve_threads,
    single_threaded_blas,
    solve_psd,
    squarem_point,
    unpack_sym,
)
from ._options import EM_DEFAULTS, NEWTON_TOL, EMOptions
from ._params import MoEParams, _offset
from ._validation import check_int, check_random_state, check_X_y
from .families import get_family

#: Newton steps on the gates of a k-means start (hard labels).
INIT_GATE_STEPS = 5

#: The gate penalty (fit_moe's gate_penalty) of the distributed estimator's
#: local fits. Measured at M=64 on the two reference data sets (1406 rows per
#: machine, d=20, K=5; asv_bench/small_shards.py): 0.01 and 0.003 (10 starts),
#: 0.001 and 0 (20 starts) left test log-likelihoods 0.0152, 0.0164, 0.0173
#: and 0.0201 nats per row below the centralised fit on the mixture design
#: (B), and 0.0009, 0.0009, 0.0007 and 0.0007 on the Gaussian design (A),
#: where it raises the gate error (0.31 at 0.01 against 0.19 at 0.001; the
#: centralised fit's is 0.044). Without it the gates of B's shards ran to
#: slopes of 775 to 3211; with it, 9 to 14.
LOCAL_GATE_PENALTY = 0.01

#: responses whose spread is within this many float64 epsilons of their
#: largest magnitude differ only by rounding: y is taken for constant, and no
#: expert's variance goes below that resolution squared
Y_RESOLUTION = 64



class EMData:
    """Validated data and the buffers one EM run reuses across iterations."""

    def __init__(self, X, y, w, n_experts: int, n_threads: int, gate_penalty: float = 0.0):
        self.X, self.w = X, w
        # ridge weight per covariate of the gate slopes (_gating): gate_penalty
        # times the covariate's variance (see fit_moe), or 0.0 for none
        self.penalised = gate_penalty > 0.0
        self.gate_l2 = gate_penalty * self.x_var if self.penalised else 0.0
        self.y_shift = float(np.average(y, weights=w))
        self.y = y - self.y_shift
        n, d = X.shape
        self.n, self.d, self.K = n, d, n_experts
        self.n_threads = n_threads
        self.chunk = chunk_size(n)
        self.nc = n_chunks(n, self.chunk)
        q, p, K = d + 2, d + 1, n_experts
        self.resp = np.empty((n, K))
        self.resp_at = None  # the parameters of the responsibilities in resp
        self.stats = np.empty((self.nc, K, q * (q + 1) // 2))
        self.grad = np.empty((self.nc, K - 1, p))
        self.info = np.empty((self.nc, (K - 1) * K // 2, p * (p + 1) // 2))
        self.obj = np.empty((self.nc, 2))
        self.total_weight = float(w.sum())
        self.var_y = float(np.average(self.y**2, weights=w))
        # sum_i w_i z_i z_i^T, z = (1, x, y): the experts' Gram matrices sum to
        # it, so a pass leaves out the heaviest expert's and _gram derives it
        self.total_gram = weighted_gram(X, self.y, w, np.ones((n, 1)))[0]
        self.G = None  # the experts' Gram matrices of the last pass
        self.log_partition = None  # sum_i w_i log sum_k exp(alpha_k . xt_i), from it
        self.params = None  # its (alpha, beta, var)

    @functools.cached_property
    def x_mean(self) -> np.ndarray:
        """(d,) weighted means of the covariates."""
        return np.average(self.X, axis=0, weights=self.w)

    @functools.cached_property
    def x_var(self) -> np.ndarray:
        """(d,) weighted variances of the covariates, 1 for a constant one."""
        var = np.average((self.X - self.x_mean) ** 2, axis=0, weights=self.w)
        var[~(var > 0)] = 1.0
        return var

    def e_step(self, alpha, beta, var, keep_resp: bool = False, stats: bool = True) -> float:
        """One fused pass (``_kernels.em_pass``) at (alpha, beta, var): returns
        the weighted log-likelihood and holds the gates' log-partition, and
        with ``stats`` (the default) the experts' Gram matrices G and the gate
        Newton statistics at alpha for the pass's responsibilities. It writes
        the responsibilities to resp only with ``keep_resp`` (see
        ``responsibilities``). The last pass of a run needs no statistics:
        without them a pass costs about half.

        From the second pass on, the heaviest expert of the last pass is left
        out of the kernel and its Gram matrix is the total minus the others',
        whose rounding error is relative to the total: where that expert lost
        most of its weight (below 1/(4K) of the total), the pass is redone with
        every expert summed."""
        skip = -1 if self.G is None else int(np.argmax(self.G[:, 0, 0]))
        self.G = self.params = None
        self.resp_at = None
        if not stats:
            self._pass(alpha, beta, var, keep_resp, -1, stats=False)
            return self._finish(None, (alpha, beta, var), keep_resp)
        self._pass(alpha, beta, var, keep_resp, skip)
        G = unpack_sym(self.stats.sum(axis=0), self.d + 2)
        if skip >= 0:
            G[skip] = self.total_gram - G.sum(axis=0)
            if not G[skip, 0, 0] >= self.total_weight / (4 * self.K):
                self._pass(alpha, beta, var, keep_resp, -1)
                G = unpack_sym(self.stats.sum(axis=0), self.d + 2)
        return self._finish(G, (alpha, beta, var), keep_resp)

    def _finish(self, G, params, keep_resp) -> float:
        """Hold the pass's results; returns its log-likelihood."""
        self.G, self.params = G, params
        if keep_resp:
            self.resp_at = params
        self.log_partition = float(self.obj[:, 1].sum())
        return float(self.obj[:, 0].sum())

    def _pass(self, alpha, beta, var, keep_resp, skip, stats=True):
        resp = self.resp if keep_resp else self.resp[:0]
        out = (self.stats, self.grad, self.info) if stats else (self.stats[:0], None, None)
        _kernels.em_pass(self.X, self.y, self.w, alpha, beta, var, resp, np.empty(0),
                         *out, self.obj, self.chunk, self.n_threads, skip)

    def save(self) -> tuple:
        """The last pass's results, for :meth:`restore` (a SQUAREM jump that
        is not kept returns to them without a pass)."""
        return self.G, self.params, self.log_partition, self.grad.copy(), self.info.copy()

    def restore(self, saved: tuple) -> None:
        """Hold again the pass results of :meth:`save`."""
        self.G, self.params, self.log_partition = saved[:3]
        self.grad[...], self.info[...] = saved[3:]
        self.resp_at = None  # (the jump's pass may have written resp)

    def responsibilities(self, params) -> np.ndarray:
        """(n, K) responsibilities at params = (alpha, beta, var) (the params of
        a pass): kept by that pass, or from an E-step now. The EM passes do not
        write them; step halving, the gate IRLS (gate_steps > 1) and the
        split-merge moves ask for them."""
        if self.resp_at is not params:
            self.resp_at = None
            _kernels.em_pass(self.X, self.y, self.w, *params, self.resp, np.empty(0),
                             self.stats[:0], None, None, None, self.chunk, self.n_threads)
            self.resp_at = params
        return self.resp

    def gram(self) -> np.ndarray:
        """(K, d+2, d+2) sum_i w_i r_ik z_i z_i^T with z = (1, x, y), from the
        last pass."""
        return self.G

    def target_sums(self) -> np.ndarray:
        """(K, d+1) m_k = sum_i w_i r_ik (1, x_i) of the last pass: the gate
        objective for its responsibilities is sum_k alpha_k . m_k minus the
        log-partition (see the top of the module)."""
        return self.G[:, 0, :self.d + 1]

    def gate_newton(self, alpha) -> tuple:
        """(gradient, information) of the gate objective at alpha, penalised,
        from the last pass's statistics (``newton_direction`` takes them)."""
        K, p = alpha.shape
        grad, H = assemble_newton(self.grad, self.info, K, p)
        _, grad, H = penalised(0.0, grad, H, alpha, self.gate_l2)
        return grad, H


def experts_from_gram(G, beta_prev, var_prev, var_floor, total_weight):
    """Closed-form expert update from per-expert Gram matrices of z = (1, x, y).

    Returns (beta (K, d+1), var (K,), list of degeneracy messages).
    """
    K, q, _ = G.shape
    p = q - 1
    mass = G[:, 0, 0]
    filled = mass > EMPTY_SHARE * total_weight
    solved = solve_psd(G[:, :p, :p], G[:, :p, p])
    with np.errstate(divide="ignore", invalid="ignore"):  # empty experts: kept below
        v = (G[:, p, p] - np.einsum("kj,kj->k", G[:, :p, p], solved)) / mass
    collapsed = filled & ~(v > var_floor)
    beta = np.where(filled[:, None], solved, beta_prev)
    var = np.where(filled, np.where(collapsed, var_floor, v), var_prev)
    notes = []
    for k in np.flatnonzero(~filled | collapsed):
        notes.append(f"expert {k} received no responsibility; its parameters were kept"
                     if not filled[k] else
                     f"expert {k}'s variance collapsed to the floor {var_floor:.3g}")
    return beta, var, notes


def weighted_gram(X, y, w, R) -> np.ndarray:
    """(K, d+2, d+2) sum_i w_i R_ik z_i z_i^T with z = (1, x, y), by matrix
    products: for initialisation from given labels, and the total of the
    experts' matrices."""
    Z = np.column_stack([np.ones(X.shape[0]), X, y])
    return np.stack([Z.T @ (Z * (w * R[:, k])[:, None]) for k in range(R.shape[1])])


def covariate_moments(data: EMData) -> np.ndarray:
    """(d+1, d+1) weighted mean of z z^T, z = (1, x)."""
    p = data.d + 1
    return data.total_gram[:p, :p] / data.total_weight


def duplicate_pair(beta, var, moments):
    """(i, j, kl): the two experts whose densities are closest, by the symmetric
    KL divergence averaged over the covariates, if it is below DUPLICATE_KL;
    else None. For N(m_i(x), v_i) and N(m_j(x), v_j) the average is
    ((v_i/v_j + v_j/v_i - 2) + E[(m_i - m_j)^2] (1/v_i + 1/v_j)) / 2."""
    K = beta.shape[0]
    best = None
    for i in range(K):
        for j in range(i):
            gap = beta[i] - beta[j]
            kl = 0.5 * (var[i] / var[j] + var[j] / var[i] - 2.0
                        + float(gap @ moments @ gap) * (1.0 / var[i] + 1.0 / var[j]))
            if kl < DUPLICATE_KL and (best is None or kl < best[2]):
                best = (i, j, kl)
    return best


def _split_move(data: EMData, alpha, beta, var, var_floor, pair):
    """Merge a duplicated pair of experts and split the broadest expert.

    EM cannot leave an optimum where two experts describe the same data and
    one expert covers two groups of rows (it has the largest variance): the
    move keeps one expert of the pair, refits the other and the broad expert
    on the broad expert's rows above and below its regression line, and gives
    both its gate. Returns (alpha, beta, var) and a message."""
    i, j, kl = pair
    data.e_step(alpha, beta, var, keep_resp=True)
    mass = data.gram()[:, 0, 0]  # sum_i w_i r_ik, from the pass
    if mass[i] < mass[j]:
        i, j = j, i  # the lighter expert of the pair is re-seeded
    K = beta.shape[0]
    k = max((c for c in range(K) if c != j), key=lambda c: var[c])
    resid = data.y - (beta[k, 0] + data.X @ beta[k, 1:])
    r = data.resp[:, k]
    halves = np.column_stack([r * (resid > 0), r * (resid <= 0)])
    b2, v2, _ = experts_from_gram(weighted_gram(data.X, data.y, data.w, halves),
                                  beta[[k, k]], var[[k, k]], var_floor, data.total_weight)
    broad = float(var[k])
    alpha, beta, var = alpha.copy(), beta.copy(), var.copy()
    beta[[j, k]] = b2
    var[[j, k]] = v2
    alpha[j] = alpha[k]
    alpha -= alpha[-1]
    message = (f"two experts had nearly the same density (symmetric KL {kl:.3g}); one was "
               f"re-seeded by splitting the broadest expert (variance {broad:.3g})")
    return alpha, beta, var, message


def _initial_params(data: EMData, init, rng, var_floor):
    """(alpha, beta, var) for one start."""
    n, K = data.n, data.K
    if isinstance(init, MoEParams):
        if init.n_experts != K or init.n_features != data.d:
            raise ValueError(f"init MoEParams has {init.n_experts} experts and "
                             f"{init.n_features} features; expected {K} and {data.d}.")
        beta = init.expert_aug.copy()
        beta[:, 0] -= data.y_shift
        return init.gate_aug.copy(), beta, np.maximum(init.expert_var, var_floor)
    alpha = np.zeros((K, data.d + 1))
    if init == "kmeans":
        from sklearn.cluster import KMeans

        scale = data.X.std(axis=0)
        scale[scale == 0] = 1.0
        km = KMeans(n_clusters=K, n_init=1, random_state=int(rng.integers(2**31 - 1)))
        labels = km.fit(data.X / scale, sample_weight=data.w).labels_
        R = np.zeros((n, K))
        R[np.arange(n), labels] = 1.0
    else:  # "random"
        R = random_regions(data.X, K, rng, data.x_mean, data.x_var)
    beta0 = np.zeros((K, data.d + 1))
    var0 = np.full(K, max(data.var_y, var_floor))
    beta, var, _ = experts_from_gram(weighted_gram(data.X, data.y, data.w, R), beta0, var0,
                                     var_floor, data.total_weight)
    if init == "kmeans":
        alpha = fit_gates(data.X, R, data.w, alpha, max_iter=INIT_GATE_STEPS, l2=data.gate_l2,
                          n_threads=data.n_threads).alpha
    return alpha, beta, var


def _gate_m_step(data: EMData, alpha, beta, var, gate_steps: int, last: bool) -> tuple:
    """The gate half of the M-step followed by the next E-step: returns
    (alpha, loglik) at the new parameters, data holding that E-step (without
    the statistics of another iteration when ``last``).

    One Newton step (the default) from the statistics of the previous pass,
    checked with the next pass's log-partition; if the check fails, step
    halving on the gate objective alone (and where no halving ascends, the
    gradient step of ``gradient_direction``), then the pass at the accepted
    step (generalised EM: the log-likelihood never decreases).
    ``gate_steps`` > 1 runs the gate IRLS for that many steps instead."""
    K = alpha.shape[0]
    if K == 1:
        return alpha, data.e_step(alpha, beta, var, stats=not last)
    if gate_steps > 1:  # the IRLS on the last pass's responsibilities, kept by it
        alpha = fit_gates(data.X, data.responsibilities(data.params), data.w, alpha,
                          max_iter=gate_steps, tol=0.0, n_threads=data.n_threads,
                          l2=data.gate_l2).alpha
        return alpha, data.e_step(alpha, beta, var, keep_resp=not last, stats=not last)
    targets_at = data.params
    sums, part = data.target_sums().copy(), data.log_partition
    grad, H = data.gate_newton(alpha)  # (kept: the next pass overwrites the statistics)
    step = newton_direction(grad, H, K, alpha.shape[1])
    trial = alpha + step
    try:
        ll = data.e_step(trial, beta, var, stats=not last)
        # Q(trial) - Q(alpha) for the targets of the step, penalised
        gain = float(np.sum(step * sums)) - (data.log_partition - part) \
            - (penalty(trial, data.gate_l2) - penalty(alpha, data.gate_l2))
        if gain >= 0.0:
            return trial, ll
    except FloatingPointError:  # the full step overflowed the gates: halve it
        pass
    targets = data.responsibilities(targets_at)  # rare: recomputed, not kept by every pass
    q_old = gate_objective(data.X, data.w, targets, alpha, data.chunk, data.nc, data.n_threads) \
        - penalty(alpha, data.gate_l2)
    found = halve_step(data.X, data.w, targets, alpha, step, q_old, data.chunk, data.nc,
                       data.n_threads, t=0.5, l2=data.gate_l2)
    if found is None:  # near-singular information (separating gates): a gradient step
        found = halve_step(data.X, data.w, targets, alpha,
                           gradient_direction(grad, H, K, alpha.shape[1]), q_old, data.chunk,
                           data.nc, data.n_threads, l2=data.gate_l2)
    alpha = alpha if found is None else found[0]
    return alpha, data.e_step(alpha, beta, var, stats=not last)


class EMRun(NamedTuple):
    """One EM run: its final parameters and how it got there.

    ``history`` holds the objective EM increases at the start and after each
    iteration: the log-likelihood, less the gate penalty when there is one;
    ``objective`` is its last value."""

    alpha: np.ndarray
    beta: np.ndarray
    var: np.ndarray
    log_likelihood: float
    n_iter: int
    converged: bool
    history: np.ndarray
    notes: list
    objective: float

    @property
    def params(self) -> tuple:
        return self.alpha, self.beta, self.var


def run_em(data: EMData, alpha, beta, var, *, max_iter, tol, gate_steps, var_floor,
           accelerate: bool = True) -> EMRun:
    """EM from (alpha, beta, var); returns the final state and its history.

    With ``accelerate``, as the families' EM (``fastmoe._glm._run``): every two
    iterations are followed by a SQUAREM extrapolation (Varadhan and Roland
    2008, scheme S3) and one EM iteration from it, kept only where it ends
    above the second plain iteration; a jump that is not kept counts as an
    iteration whose objective is the plain one's (``history`` repeats it).
    So the objective never decreases, and EM stops where such a cycle (one
    iteration without acceleration) gains less than ``tol`` of it. Where EM
    crawls (rates of 0.99 to 0.999 per iteration on real tables), plain EM
    stopped there 0.25 to 74 nats of log-likelihood below its optimum."""
    obj = data.e_step(alpha, beta, var) - penalty(alpha, data.gate_l2)
    history = [obj]
    notes: list[str] = []
    theta = (alpha, beta, var)
    converged = finished = False
    it = 0
    longest = 1.0  # the longest SQUAREM step yet (Varadhan and Roland's step.max)

    def em(t, last):
        beta, var, notes = experts_from_gram(data.gram(), t[1], t[2], var_floor,
                                             data.total_weight)
        alpha, ll = _gate_m_step(data, t[0], beta, var, gate_steps, last)
        return (alpha, beta, var), ll, ll - penalty(alpha, data.gate_l2), notes

    while it < max_iter:
        if accelerate and not finished and it >= NEWTON_AFTER and not data.penalised:
            finished = True  # EM crawls: Newton's method finishes
            theta, lls, it, converged = _newton_finish(data, theta, it, max_iter, tol, var_floor)
            history += lls
            obj = ll = data.e_step(*theta)
            history[-1] = max(history[-1], obj)
            if converged or it >= max_iter:
                break
        start, t0 = obj, theta
        theta, ll, obj, notes = em(theta, it + 1 == max_iter)
        it += 1
        history.append(obj)
        if accelerate and it < max_iter:
            t1 = theta
            theta, ll, obj, notes = em(theta, it + 1 == max_iter)
            it += 1
            history.append(obj)
            jump, capped = _squarem(t0, t1, theta, var_floor, longest) \
                if it < max_iter else (None, False)
            if jump is not None:
                saved = data.save()
                try:
                    data.e_step(*jump)
                    jumped, ll3, obj3, notes3 = em(jump, it + 1 == max_iter)
                except (FloatingPointError, np.linalg.LinAlgError):  # the jump overflowed
                    obj3 = -np.inf
                it += 1
                if obj3 > obj and np.isfinite(obj3):
                    theta, ll, obj, notes = jumped, ll3, obj3, notes3
                    longest *= SQUAREM_GROWTH if capped else 1.0
                else:
                    data.restore(saved)
                history.append(obj)
        if abs(obj - start) <= tol * abs(obj):  # (a cycle of SQUAREM gained that little)
            converged = True
            break
    return EMRun(*theta, ll, it, converged, np.array(history), notes, obj)


#: EM iterations after which a run that has not converged goes on by
#: Newton's method on the exact observed information (:func:`_newton_finish`,
#: the distributed rounds' trust region and stopping rule). On a
#: flat ridge EM, even accelerated, gains a thousandth of a nat per
#: iteration for thousands of iterations: measured on the real tables of
#: asv_bench/real_tables.py (three starts each, K of the table and 6), the
#: runs converged in 72 to 498 iterations but two, STAR at K = 4 (1 422, the
#: last 1 200 for 0.9 nats) and CPSSW9204 at K = 6 (1 920, the last 1 500 for
#: 6.4 nats), where the default max_iter is 2 000
NEWTON_AFTER = 500
#: Newton's finish: its first trust radius in standard errors (the rounds'
#: ``fastmoe.server.FIRST_RADIUS``) and the steps it may try
NEWTON_FIRST_RADIUS = 10.0
NEWTON_STEPS = 100


def _newton_finish(data: EMData, theta, it: int, max_iter: int, tol: float, var_floor: float):
    """A run that EM has not converged in NEWTON_AFTER iterations, finished
    by Newton's method on the exact observed information
    (:func:`fastmoe._information.derivatives`), with the trust region of the
    distributed fit's rounds (:func:`fastmoe._information.trust_step`,
    ``NEWTON_FIRST_RADIUS`` standard errors at first): a step is kept only
    where the log-likelihood does not decrease (else the radius shrinks
    fourfold), until Newton's step expects to gain less than ``NEWTON_TOL``
    times ``tol`` of the log-likelihood (the rounds' own rule). Each step
    tried counts as an iteration; at most ``NEWTON_STEPS``.

    Returns (theta, the log-likelihood after each step tried, iterations,
    converged); where the steps stop short (the radius under 1e-6 standard
    errors, or a ridge with no top), EM goes on from ``theta``."""
    d, K = data.d, data.K
    params = MoEParams.from_aug(*theta)
    der = derivatives(data.X, data.y, data.w, params)
    radius, lls, converged = NEWTON_FIRST_RADIUS, [], False
    for _ in range(min(NEWTON_STEPS, max_iter - it)):
        step, gain, length = trust_step(der.gradient, der.hessian, None)
        if step is not None and gain <= NEWTON_TOL * tol * abs(der.log_likelihood):
            converged = True
            break
        if step is None or length > radius:
            step, gain, length = trust_step(der.gradient, der.hessian, radius)
        point = theta_of(params) + step
        point[-K:] = np.maximum(point[-K:], np.log(var_floor))  # (log variances, last)
        trial = params_of(point, d, K)
        with np.errstate(all="ignore"):
            new = derivatives(data.X, data.y, data.w, trial)
        it += 1
        if np.isfinite(new.log_likelihood) and new.log_likelihood >= der.log_likelihood:
            params, der, radius = trial, new, max(radius, 2.0 * length)
        else:
            radius = length / 4.0
        lls.append(der.log_likelihood)
        if radius < 1e-6:
            break
    # (the gate and expert arrays are new copies, the last gate zero)
    theta = (params.gate_aug, params.expert_aug, np.array(params.expert_var))
    return theta, lls, it, converged


#: the factor by which the longest SQUAREM step grows after a kept jump that
#: was held to it (Varadhan and Roland's mstep); it starts at 1, two plain
#: iterations
SQUAREM_GROWTH = 4.0


def _squarem(t0, t1, t2, var_floor, longest):
    """``squarem_point`` from three successive EM points (alpha, beta, var),
    in the gates relative to the last, the experts and the log variances
    (kept at or above the floor): (alpha, beta, var) or None, and whether the
    step was held to ``longest``."""
    x, capped = squarem_point(*(_flat(t) for t in (t0, t1, t2)), longest)
    if x is None:
        return None, False
    K, p = t0[1].shape
    alpha = x[:K * p].reshape(K, p).copy()
    beta = x[K * p:2 * K * p].reshape(K, p).copy()
    var = np.exp(np.clip(x[2 * K * p:], np.log(var_floor), 700.0))
    return (alpha, beta, var), capped


def _flat(t) -> np.ndarray:
    alpha, beta, var = t
    return np.concatenate([(alpha - alpha[-1]).ravel(), beta.ravel(), np.log(var)])


@single_threaded_blas
def fit_moe(X, y, n_experts: int, *, sample_weight=None, max_iter: int = EM_DEFAULTS.max_iter,
            tol: float = EM_DEFAULTS.tol, n_init: int = EM_DEFAULTS.n_init,
            init=EM_DEFAULTS.init, reg_var: float = EM_DEFAULTS.reg_var,
            gate_penalty: float = EM_DEFAULTS.gate_penalty,
            penalty: str | None = EM_DEFAULTS.penalty, l1_strength=EM_DEFAULTS.l1_strength,
            init_iter: int | None = EM_DEFAULTS.init_iter,
            gate_steps: int = EM_DEFAULTS.gate_steps,
            split_merge: bool = EM_DEFAULTS.split_merge,
            accelerate: bool = EM_DEFAULTS.accelerate,
            family: str = "gaussian", offset=None,
            random_state=None, n_threads: int | None = None) -> MoEFit:
    """Fit a mixture of experts by EM (centralised): Gaussian experts, or
    Poisson, Bernoulli or Gamma ones (``family``).

    Parameters
    ----------
    X : array-like of shape (n, d)
        Covariates.
    y : array-like of shape (n,)
        Responses.
    n_experts : int
        Number of experts K (1 <= K <= n).
    sample_weight : array-like of shape (n,), optional
        Non-negative weights (default ones).
    max_iter : int, default=2000
        EM iterations at most per start.
    tol : float, default=1e-7
        Stop when the log-likelihood changes by less than ``tol * |loglik|``.
    n_init : int, default=1
        Number of starts; the best log-likelihood is kept, among the starts
        that end with no expert's variance at the floor where there are any
        (an expert on a few equal responses with a variance at the floor is
        a spurious optimum of an unbounded likelihood, whatever its height).
        The first start is the one ``n_init=1`` makes from the same
        ``random_state``, so with ``init_iter=None`` more starts never end
        lower, unless that start's expert collapsed. (The estimators run
        three by default: ``fastmoe._options.CENTRAL_N_INIT``.)
    init_iter : int or None, default=None
        None runs every start to convergence and keeps the best. An int runs
        every start at most ``init_iter`` EM iterations and only the best of
        them then to convergence (em-EM, Biernacki, Celeux and Govaert 2003),
        which is faster, but the start ahead after a few iterations is often
        not the one that ends highest: measured on real tables, three starts
        with ``init_iter=20`` ended 469 nats below one start on diamonds
        (K = 5) and kept the start that ends at 2 499 on txhousing, where
        running the same starts to the end reached 2 776. The machines of the
        distributed estimators keep 20 (``fastmoe.machine.LOCAL_INIT_ITER``:
        their plain EM crawls, and the short runs halved their time on the
        authors' design with the same models).
    init : {"random", "kmeans"} or MoEParams, default="random"
        "random" (the default: experts fitted on the soft regions of random
        gates, EM from uniform gates; see ``fastmoe._fit.random_regions``), "kmeans"
        (k-means on standardised X, per-cluster least squares, a few Newton
        steps for the gates: the authors' start), or a MoEParams to start from
        (used for every start). On covariates drawn from a mixture, k-means
        finds the covariate clusters rather than the experts and EM stays in a
        poor optimum (the authors' fit of the reference data set B, 29%
        clustering error); random starts do not have that bias.
    reg_var : float, default=1e-6
        Variance floor, relative to the weighted variance of y.
    gate_penalty : float, default=0.0
        Strength lambda of a ridge penalty on the gate slopes in standard-
        deviation units: EM maximises the log-likelihood minus lambda/2 sum_k
        sum_j (a_kj s_j)^2, with s_j the weighted standard deviation of
        covariate j and a_kj the slope of gate k relative to the last
        (reference) gate: a Gaussian prior N(0, 1/lambda) on each gate's change
        of log-odds per standard deviation of a covariate. The intercepts and
        the experts are not penalised. Its weight against the log-likelihood
        falls as 1/n, so a fixed lambda matters only on small samples, where the
        gates can be nearly separable and their MLE runs off to infinity. 0 (the
        default) is the plain MLE; the local fits of the distributed estimator
        use a positive default (:func:`fastmoe.fit_local`).
    penalty : None or "l1", default=None
        None (the default) or "l1": the LASSO option. After the fit above, EM
        continues on the log-likelihood minus ``l1_strength * sum_k sum_j s_j
        (|b_kj| / sigma + |a_kj|)``, an L1 penalty on every expert slope b_kj
        (in noise standard deviations sigma of the starting fit per standard
        deviation s_j of covariate j) and every gate slope a_kj relative to the
        last gate (log-odds per standard deviation); intercepts and variances
        are free. Slopes the data do not support are set to exactly zero.
        ``penalty`` of the result is the L1 term and ``history`` the penalised
        objective (see :mod:`fastmoe._lasso`).
    l1_strength : float >= 0 or "auto", default="auto"
        The L1 strength lambda, in log-likelihood units. "auto" is the universal
        threshold sqrt(2 (n / K) log p) over the p = (2K - 1) d penalised slopes
        (n the total weight, n / K an expert's typical share): its effect on an
        estimate shrinks like sqrt(log p / n), so large samples are barely
        changed.
    gate_steps : int, default=1
        Newton steps on the gates per EM iteration.
    split_merge : bool, default=True
        When two experts of the best start describe the same data (their
        densities closer than ``DUPLICATE_KL``), merge them and split the
        broadest expert in two (Ueda et al. 2000, "SMEM"), and keep the move if
        EM from it reaches a higher log-likelihood: once after the short runs
        (within ``init_iter`` iterations), and after convergence. EM alone
        cannot leave such an optimum; on the authors' design it caught 1 of 16
        shards of the N=1e6 benchmark, whose poor local model cost the aggregate
        5% of test log-likelihood. Accepted moves are listed in
        ``MoEFit.moves``. False runs plain EM. Experts of the other families
        take the same move after convergence, with their own divergence and
        split (docs/method.rst, section 11).
    accelerate : bool, default=True
        SQUAREM (Varadhan and Roland 2008): every two EM iterations are
        followed by an extrapolation from the three points and one EM
        iteration from it, kept only where it ends higher (the objective
        never decreases), and EM stops where such a cycle gains less than
        ``tol`` of the log-likelihood. Plain EM crawls where its rate of
        convergence is near 1 and stops by the same rule far from the
        optimum: measured on three real tables (asv_bench/gaussian_em.py),
        plain EM stopped 0.25 to 27 nats below the optimum it was climbing
        to, the accelerated EM 0.001 to 0.065 nats, in 1.4 to 4.4 times
        less time. False runs plain EM, one iteration at a time.
    family : {"gaussian", "poisson", "bernoulli", "gamma"}, default="gaussian"
        The experts' family (:mod:`fastmoe.families`): Poisson (log link) for
        counts, Bernoulli (logit) for a 0/1 response, Gamma (log link, a shape
        per expert) for a positive one. Their M-step is generalised EM (one
        IRLS step per expert, see ``fastmoe._glm``); ``reg_var`` and
        ``penalty`` serve Gaussian experts alone.
    offset : array-like of shape (n,), optional
        A known term added to every expert's linear predictor: the log
        exposure of Poisson counts (for Gaussian experts, the model is that of
        y - offset).
    random_state : None, int or numpy Generator, default=None
        Seeds the starts; the fit is reproducible from it.
    n_threads : int, optional
        Threads of the compiled kernels (None: all cores).

    Returns
    -------
    MoEFit
        The best start's parameters, log-likelihood, iterations, convergence
        and history, with the split-merge moves it accepted.

    Examples
    --------
    >>> from fastmoe import fit_moe
    >>> from fastmoe.datasets import make_moe_regression
    >>> X, y, truth, _ = make_moe_regression(2000, 2, 2, random_state=0)
    >>> fit = fit_moe(X, y, 2, random_state=0)
    >>> fit.converged
    True
    """
    opts = EMOptions(max_iter=max_iter, tol=tol, n_init=n_init, init=init,
                     init_iter=init_iter, reg_var=reg_var, gate_penalty=gate_penalty,
                     penalty=penalty, l1_strength=l1_strength, gate_steps=gate_steps,
                     split_merge=split_merge, accelerate=accelerate)
    if get_family(family).name != "gaussian":
        from ._glm import fit_glm_moe

        return fit_glm_moe(X, y, n_experts, family=family, sample_weight=sample_weight,
                           offset=offset, options=opts, random_state=random_state,
                           n_threads=n_threads)
    X, y, w = check_X_y(X, y, sample_weight)
    if offset is not None:
        y = y - _offset(offset, X.shape[0])
    K = check_int(n_experts, "n_experts")
    n = X.shape[0]
    if K > n:
        raise ValueError(f"n_experts={K} is more than the number of samples "
                         f"(n_samples = {n}); use n_experts <= n_samples.")
    n_threads = resolve_threads(n_threads)
    rng = check_random_state(random_state)
    if isinstance(init, MoEParams):
        init.require_gaussian("init of family='gaussian'")
    if isinstance(init, MoEParams) and (init.n_experts != K or init.n_features != X.shape[1]):
        raise ValueError(f"init MoEParams has {init.n_experts} experts and "
                         f"{init.n_features} features; expected {K} and {X.shape[1]}.")
    # EM runs on standardised covariates and response (fastmoe._frame): the
    # fit does not depend on the units, nor on an offset, of X and y
    frame = Frame.of(X, y, w)
    # the finest spread float64 can tell apart at the response's magnitude
    resolution = Y_RESOLUTION * np.finfo(float).eps * float(np.max(np.abs(y[w > 0])))
    if not robust_scale(y, frame.y_mean, w, axis=None) > resolution:
        raise ValueError(f"y is constant (every response with weight is {frame.y_mean:.6g}, "
                         "up to float64 rounding): a mixture of experts needs a response that "
                         "varies.")
    X, y = frame.X(X), frame.y(y)
    data = EMData(X, y, w, K, n_threads, opts.gate_penalty)
    # relative to Var(y) (1 in the frame), and never below the square of what
    # float64 resolves at the response's magnitude
    var_floor = max(opts.reg_var * data.var_y, (resolution / frame.y_scale) ** 2)
    init = frame.params_in(opts.init) if isinstance(opts.init, MoEParams) else opts.init
    best, finals, moves = _best_of_starts(data, opts, init, var_floor, rng)
    alpha, beta, var, ll, it, converged, history, notes, objective = best
    pen = ll - objective
    beta = beta.copy()
    beta[:, 0] += data.y_shift
    if not converged:
        warnings.warn(f"EM did not converge in max_iter={opts.max_iter} iterations (relative "
                      f"change still above tol={opts.tol:g}); increase max_iter or tol.",
                      exceptions.ConvergenceWarning, stacklevel=2)
    if notes:
        warnings.warn("; ".join(notes) + ". Consider fewer experts or a larger reg_var.",
                      exceptions.DegenerateExpertWarning, stacklevel=2)
    params = frame.params_out(MoEParams.from_aug(alpha, beta, var))
    shift = frame.log_jacobian(data.total_weight)  # log f(y) = log f(v) - log(y_scale)
    ll, history, finals = ll + shift, history + shift, [f + shift for f in finals]
    history.setflags(write=False)
    if opts.penalty == "l1":
        params, ll, pen, it, converged, history = _l1_stage(X, y, w, frame, params, opts,
                                                            n_threads)
        ll, history = ll + shift, history + shift
        history.setflags(write=False)
    return MoEFit(params.canonical(), ll, it, converged, history, tuple(finals), tuple(notes),
                  tuple(moves), pen)


def _best_of_starts(data: EMData, opts: EMOptions, init, var_floor: float, rng):
    """EM from ``opts.n_init`` starts (short runs first when
    ``opts.short_runs``), the best run to convergence, then the split-merge
    moves: (best run, every start's objective, the moves accepted).

    The short runs are plain EM: they only rank the starts, and in 20
    iterations the extrapolation's extra pass per cycle costs more than it
    saves (measured on the authors' design at 200 000 rows, d=20, K=5, 3
    starts: 3.9 s accelerated against 3.4 s plain; with plain short runs
    3.6 s against 3.75 to 4.0 s)."""
    K = data.K
    em = dict(tol=opts.tol, gate_steps=opts.gate_steps, var_floor=var_floor,
              accelerate=opts.accelerate)
    short = opts.short_runs
    runs = []
    for _ in range(opts.n_init):
        start_rng = np.random.default_rng(int(rng.integers(2**63 - 1)))
        alpha, beta, var = _initial_params(data, init, start_rng, var_floor)
        runs.append(run_em(data, alpha, beta, var,
                           max_iter=opts.init_iter if short else opts.max_iter,
                           **(dict(em, accelerate=False) if short else em)))
    finals = [run.objective for run in runs]
    best = max(runs, key=lambda run: _rank(run, var_floor))
    moments = covariate_moments(data) if opts.split_merge else None
    moves: list[str] = []
    if short and not best.converged:  # the best short run goes on to convergence
        if opts.split_merge:
            best = _try_move(data, best, moments, moves, max_iter=opts.init_iter, **em)
        if not best.converged:
            more = run_em(data, *best.params, max_iter=opts.max_iter - best.n_iter, **em)
            best = more._replace(n_iter=best.n_iter + more.n_iter,
                                 history=np.concatenate([best.history, more.history[1:]]))
    for _ in range(K - 1 if opts.split_merge else 0):
        done = len(moves)
        best = _try_move(data, best, moments, moves, max_iter=opts.max_iter, **em)
        if len(moves) == done:
            break
    return best, finals, moves


def _collapsed(run: EMRun, var_floor: float) -> bool:
    """Whether an expert of ``run`` has its variance at the floor."""
    return bool(np.any(run.var <= var_floor * (1.0 + 1e-9)))


def _rank(run: EMRun, var_floor: float) -> tuple:
    """The order of runs: a run with an expert collapsed to the variance
    floor below every run without, then by the objective.

    The Gaussian likelihood is unbounded: an expert can take a handful of
    rows with (nearly) equal responses and a variance at the floor, and its
    likelihood then exceeds every proper optimum's. Such an optimum is
    spurious (McLachlan and Peel 2000, section 3.10): the standard remedy is
    the largest optimum among the runs without a collapsed expert. Measured
    on AER's STAR (test scores on 37 distinct values, K = 4): 3 of 10 single
    starts ended with an expert at the floor on one score value, 374 nats
    above the 7 others' optimum, and the three-start fit then depended on
    the seed by 0.077 nats per held-out row."""
    return (not _collapsed(run, var_floor), run.objective)


def _l1_stage(X, y, w, frame: Frame, params: MoEParams, opts: EMOptions, n_threads: int):
    """The LASSO option: EM on the L1-penalised log-likelihood from the
    maximum-likelihood fit ``params`` (in the frame of X, y): (params in the
    data's units, log-likelihood and penalty and history in the frame,
    iterations, converged)."""
    lam = auto_l1_strength(float(w.sum()), X.shape[1], params.n_experts) \
        if isinstance(opts.l1_strength, str) else opts.l1_strength
    params, ll, pen, it, converged, history = lasso_em(
        X, y, w, frame.params_in(params), lam, max_iter=opts.max_iter, tol=opts.tol,
        reg_var=opts.reg_var, n_threads=n_threads)
    if not converged:
        warnings.warn(f"the L1-penalised EM did not converge in max_iter={opts.max_iter} "
                      "iterations; increase max_iter or tol.",
                      exceptions.ConvergenceWarning, stacklevel=3)
    return frame.params_out(params), ll, pen, it, converged, history


def _try_move(data: EMData, run: EMRun, moments, moves: list, *, max_iter, tol, gate_steps,
              var_floor, accelerate) -> EMRun:
    """``run`` with a split-merge move (_split_move) if it has a duplicated pair
    of experts and EM from the move ranks higher (:func:`_rank`) within
    ``max_iter`` iterations: no expert at the variance floor where ``run``
    has one, or else a higher log-likelihood; else ``run`` unchanged."""
    pair = duplicate_pair(run.beta, run.var, moments)
    if pair is None:
        return run
    alpha, beta, var, message = _split_move(data, *run.params, var_floor, pair)
    alt = run_em(data, alpha, beta, var, max_iter=max_iter, tol=tol, gate_steps=gate_steps,
                 var_floor=var_floor, accelerate=accelerate)
    if not _rank(alt, var_floor) > (not _collapsed(run, var_floor),
                                    run.objective + tol * abs(run.objective)):
        return run
    what = "penalised log-likelihood" if data.penalised else "log-likelihood"
    moves.append(f"{message}: {what} {run.objective:.8g} -> {alt.objective:.8g}")
    return alt

"""What every EM fit shares, whatever its experts' family: the result
(:class:`MoEFit`) and the constants of its starts and empty experts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._params import MoEParams

#: standard deviation of a random start's gate logits over the covariates
#: (init="random"); see random_regions
START_GATE_SCALE = 3.0

#: An expert whose total responsibility falls below this share of the total
#: weight is treated as empty (its previous parameters are kept).
EMPTY_SHARE = 1e-10
#: Two experts whose conditional densities are closer than this (symmetric
#: KL divergence averaged over the covariates) duplicate each other: the
#: split-merge move (fastmoe._em._split_move, fastmoe._glm._split_move).
#: Measured: duplicated pairs 0.25 (a 62500-row shard of the authors' design)
#: and 1.37 (the 4000-row trap in tests/test_em.py); distinct experts of the
#: authors' design 33 or more.
DUPLICATE_KL = 2.0


@dataclass(frozen=True)
class MoEFit:
    """Result of :func:`fit_moe`.

    Attributes
    ----------
    params : the fitted MoEParams of the best start (of highest log-likelihood,
        among the starts with no Gaussian expert at the variance floor where
        there are any), experts in canonical order (increasing intercept,
        MoEParams.canonical).
    log_likelihood : weighted log-likelihood of ``params`` on the data.
    n_iter : EM iterations of the best start.
    converged : whether the best start met ``tol`` before ``max_iter``.
    history : (n_iter + 1,) log-likelihood at the start and after each iteration.
    init_log_likelihoods : log-likelihood of every start, in order, at the end
        of its run (its short run with ``init_iter``).
    degenerate : messages about experts that collapsed in the best start.
    moves : messages about the split-merge moves that were accepted (see
        :func:`fit_moe`, ``split_merge``); after one, ``history`` and ``n_iter``
        are those of the EM run from the move.
    penalty : the penalty at ``params``: the gate penalty (``gate_penalty``)
        or, with ``penalty="l1"``, the L1 term; 0 without one. ``history``
        (and, for the gate penalty, ``init_log_likelihoods``) then hold the
        penalised log-likelihood EM maximised, and ``log_likelihood -
        penalty`` is the last entry of ``history``.
    """

    params: MoEParams
    log_likelihood: float
    n_iter: int
    converged: bool
    history: np.ndarray = field(repr=False)
    init_log_likelihoods: tuple
    degenerate: tuple = ()
    moves: tuple = ()
    penalty: float = 0.0


def random_regions(X, K: int, rng, mean=0.0, var=1.0) -> np.ndarray:
    """(n, K) responsibilities of random gates whose logits have standard
    deviation about ``START_GATE_SCALE`` over the covariates.

    A random start (init="random") fits each expert on the soft region these
    gates give it, so the K experts start different, then runs EM from
    uniform gates: the rows choose their experts by fit. Measured on the
    authors' design (16 shards of 62500 rows, d=20, K=5, 3 starts each, 20
    iterations per start): random responsibilities independent of X
    (Dirichlet draws, the previous start) give K nearly equal experts, and 8
    of 48 starts were near the best optimum after 20 iterations, 2 shards
    ended in a poor optimum and the slowest fit took 6.9 s; with this start
    22 of 48, none and 4.8 s. Keeping the random gates as EM's starting gates
    did as well there but trapped 2 of 6 shards of 1000 rows at d=2, whose
    gates then split the rows along the wrong direction."""
    d = X.shape[1]
    A = rng.standard_normal((K, d)) * (START_GATE_SCALE / np.sqrt(d)) / np.sqrt(var)
    logits = (X - mean) @ A.T
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)

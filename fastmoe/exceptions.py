"""Exceptions and warnings raised by fastmoe.

Every exception here survives pickling (the process pools and Dask workers
send them back to the caller): each defines ``__reduce__`` from its own
constructor arguments.

The warning classes subclass scikit-learn's ``ConvergenceWarning`` (so a
filter on that class also silences fastmoe's). They are created on first
use (PEP 562), so that importing the engine does not import scikit-learn.
"""

import threading


class ShardError(ValueError):
    """A shard could not be fitted.

    Parameters
    ----------
    index : int
        Which shard, in the caller's order.
    reason : str
        Why, in one line.
    n_rows : int, default=0
        The rows it held (0 when it could not be read).
    rows_usable : bool, default=False
        Whether its rows are valid data that only a local model could not be
        fitted to (fewer rows than the model has coefficients, or a constant
        response): the refinement rounds can still use them.
    """

    def __init__(self, index: int, reason: str, n_rows: int = 0, rows_usable: bool = False):
        self.index = int(index)
        self.reason = str(reason)
        self.n_rows = int(n_rows)
        self.rows_usable = bool(rows_usable)
        super().__init__(f"shard {self.index}: {self.reason}")

    def __reduce__(self):
        return (type(self), (self.index, self.reason, self.n_rows, self.rows_usable))


class ExclusionLimitError(ValueError):
    """``exclude_failed`` would leave out more rows than ``max_excluded`` allows.

    Parameters
    ----------
    failed : list of int
        The local models that look like failed fits.
    share : float
        The share of the rows they hold.
    max_excluded : float
        The share allowed.
    """

    def __init__(self, failed, share: float, max_excluded: float):
        self.failed = [int(m) for m in failed]
        self.share = float(share)
        self.max_excluded = float(max_excluded)
        super().__init__(
            f"exclude_failed would leave out the local model(s) {self.failed}, which look like "
            f"failed fits but hold {self.share:.1%} of the rows, more than "
            f"max_excluded={self.max_excluded:g}: pass max_excluded={self.share:.3g} (or more) "
            "to leave them out, or exclude_failed=False to keep them.")

    def __reduce__(self):
        return (type(self), (self.failed, self.share, self.max_excluded))


_WARNINGS = ("ConvergenceWarning", "DegenerateExpertWarning")
_lock = threading.Lock()


def _define_warnings() -> None:
    from sklearn.exceptions import ConvergenceWarning as _SkConvergenceWarning

    class ConvergenceWarning(_SkConvergenceWarning):
        """An iterative fit stopped at max_iter before meeting tol."""

    class DegenerateExpertWarning(ConvergenceWarning):
        """An expert collapsed (its variance hit the floor or it lost all its mass)."""

    for cls in (ConvergenceWarning, DegenerateExpertWarning):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls


def __getattr__(name: str):
    if name in _WARNINGS:
        with _lock:
            if name not in globals():
                _define_warnings()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ConvergenceWarning", "DegenerateExpertWarning", "ExclusionLimitError",  # noqa: F822
           "ShardError"]  # (PEP 562)

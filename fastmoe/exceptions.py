"""Exceptions and warnings raised by fastmoe.

Every exception here survives pickling (the process pools and Dask workers
send them back to the caller): each defines ``__reduce__`` from its own
constructor arguments.
"""

from sklearn.exceptions import ConvergenceWarning as _SkConvergenceWarning


class ConvergenceWarning(_SkConvergenceWarning):
    """An iterative fit stopped at max_iter before meeting tol."""


class DegenerateExpertWarning(ConvergenceWarning):
    """An expert collapsed (its variance hit the floor or it lost all its mass)."""


class ShardError(ValueError):
    """A shard could not be fitted; ``index`` says which, ``reason`` why and
    ``n_rows`` how many rows it held (0 when it could not be read)."""

    def __init__(self, index: int, reason: str, n_rows: int = 0):
        self.index = int(index)
        self.reason = str(reason)
        self.n_rows = int(n_rows)
        super().__init__(f"shard {self.index}: {self.reason}")

    def __reduce__(self):
        return (type(self), (self.index, self.reason, self.n_rows))


__all__ = ["ConvergenceWarning", "DegenerateExpertWarning", "ShardError"]

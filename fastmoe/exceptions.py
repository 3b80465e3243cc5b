"""Warnings raised by fastmoe (all subclass scikit-learn's ConvergenceWarning)."""

from sklearn.exceptions import ConvergenceWarning as _SkConvergenceWarning


class ConvergenceWarning(_SkConvergenceWarning):
    """An iterative fit stopped at max_iter before meeting tol."""


class DegenerateExpertWarning(ConvergenceWarning):
    """An expert collapsed (its variance hit the floor or it lost all its mass)."""


__all__ = ["ConvergenceWarning", "DegenerateExpertWarning"]

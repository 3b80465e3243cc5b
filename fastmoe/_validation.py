"""Input checks shared by every public entry point.

Each check returns arrays the kernels accept (C-contiguous float64, copied only
when needed: inputs are never written to) or raises a ValueError that names the
argument, the offending value and the fix.
"""

from __future__ import annotations

import numbers

import numpy as np


def check_random_state(random_state) -> np.random.Generator:
    """None, an int, a Generator or a legacy RandomState -> a Generator.

    Never touches numpy's global RNG.
    """
    if random_state is None:
        return np.random.default_rng()
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be None, an int >= 0 or a Generator; "
                             f"got {random_state}.")
        return np.random.default_rng(int(random_state))
    raise ValueError(f"random_state must be None, an int >= 0 or a numpy Generator; "
                     f"got {random_state!r}.")


def _as_float_array(a, name: str) -> np.ndarray:
    if hasattr(a, "__array__") or isinstance(a, (list, tuple)):
        arr = np.asarray(a)
    else:
        raise ValueError(f"{name} must be array-like; got {type(a).__name__}.")
    if arr.dtype.kind in "US":  # str_, bytes_
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype} (text). Convert "
                         "numbers stored as text explicitly (np.asarray(a, dtype=float)) "
                         "and encode categorical columns.")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or np.issubdtype(arr.dtype, np.bool_)):
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be numeric; got dtype {arr.dtype} "
                             f"({exc}). Encode categorical columns first.") from exc
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real; got complex dtype {arr.dtype}.")
    return np.ascontiguousarray(arr, dtype=np.float64)


def check_X(X, n_features: int | None = None, name: str = "X") -> np.ndarray:
    """2-D, finite, numeric, non-empty; optionally of a known width."""
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise TypeError(f"{name}: sparse input is not supported; pass a dense array "
                        f"(X.toarray()).")
    X = _as_float_array(X, name)
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features); got {X.ndim}-D shape {X.shape}. "
            "Reshape your data either using array.reshape(-1, 1) if your data has a single "
            "feature or array.reshape(1, -1) if it contains a single sample.")
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: 0 sample(s) (shape={X.shape}); need at least 1.")
    if X.shape[1] == 0:
        raise ValueError(f"{name} has 0 feature(s) (shape={X.shape}); need at least 1.")
    if not np.all(np.isfinite(X)):
        bad = np.argwhere(~np.isfinite(X))[0]
        raise ValueError(f"{name} contains NaN or infinity (first at row {bad[0]}, column "
                         f"{bad[1]}); remove or impute those values.")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features, but the model expects "
                         f"{n_features} features.")
    return X


def check_y(y, n: int, name: str = "y") -> np.ndarray:
    y = _as_float_array(y, name)
    if y.ndim == 2 and y.shape[1] == 1:
        y = np.ascontiguousarray(y[:, 0])
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n_samples,); got shape {y.shape}.")
    if y.shape[0] != n:
        raise ValueError(f"X and {name} have inconsistent numbers of samples: {n} and "
                         f"{y.shape[0]}.")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains NaN or infinity (first at index "
                         f"{int(np.argmax(~np.isfinite(y)))}); remove those rows.")
    return y


def check_X_y(X, y, sample_weight=None, n_features: int | None = None):
    """Validated (X, y, sample_weight); weights default to ones."""
    X = check_X(X, n_features)
    y = check_y(y, X.shape[0])
    return X, y, check_sample_weight(sample_weight, X.shape[0])


def check_sample_weight(sample_weight, n: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n)
    w = _as_float_array(sample_weight, "sample_weight")
    if w.ndim == 0:
        w = np.full(n, float(w))
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},) to match X; got {w.shape}.")
    if not np.all(np.isfinite(w)):
        raise ValueError("sample_weight contains NaN or infinity.")
    if np.any(w < 0):
        raise ValueError(f"sample_weight must be >= 0; got a minimum of {w.min()}.")
    if not np.any(w > 0):
        raise ValueError("sample_weight is zero everywhere; give some rows a positive weight.")
    return w


def check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")
    return int(value)


def check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_float(value, name: str, minimum: float = 0.0, inclusive: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if ok:
        ok = value >= minimum if inclusive else value > minimum
    if not ok:
        rel = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be a finite number {rel} {minimum}; got {value!r}.")
    return float(value)


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}; got {value!r}.")
    return value


def check_level(level) -> float:
    """A predictive interval's probability, in [0.5, 1). Below 0.5 it is
    refused as the other convention (a miscoverage alpha)."""
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating, np.integer)) \
            or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a probability in [0.5, 1), the interval's coverage "
                         f"(0.9 for a 90% interval); got {level!r}.")
    if level < 0.5:
        raise ValueError(f"level={level!r} is the probability the interval holds (0.9 for a 90% "
                         f"interval); for a {100 * (1 - level):g}% interval pass level="
                         f"{1 - level:g}.")
    return float(level)

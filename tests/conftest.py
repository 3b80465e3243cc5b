from pathlib import Path

import numpy as np
import pytest

from fastmoe import _kernels

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference_octave_substitute"


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def reference(name: str) -> np.ndarray:
    """A reference array from ../shared (tests using it skip when it is absent)."""
    path = REFERENCE / f"{name}.npy"
    if not path.exists():
        pytest.skip(f"the authors' reference outputs are not here ({path.parent}: they are "
                    "shared beside the repository, not part of it); this skip is expected on "
                    "a plain checkout")
    return np.load(path)


def read_only(arrays) -> tuple:
    """The arrays made read-only: a cached problem or reference is shared by
    every cell of a test's grid, so no cell may change it."""
    for a in arrays:
        if isinstance(a, np.ndarray):
            a.setflags(write=False)
    return tuple(arrays)


def scale_mixture(n: int, seed: int, gate_slope: float = 0.0):
    """(X, y): two experts on one line y = x0 - x1 / 2 with noise 1 and 2,
    the broad one chosen with probability 1 / (1 + exp(-gate_slope x0)); a
    design on which plain EM crawls."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2))
    wide = rng.random(n) < 1 / (1 + np.exp(-gate_slope * X[:, 0]))
    return X, X @ [1.0, -0.5] + np.where(wide, 2.0, 1.0) * rng.standard_normal(n)


@pytest.fixture(params=["simd", "plain"])
def kernel_path(request):
    """Run a test on the AVX2/FMA path of the C kernels (where the CPU has it)
    and on their plain path."""
    if request.param == "simd" and not _kernels.simd_available():
        pytest.skip("this CPU has no AVX2/FMA")
    previous = _kernels.set_simd(request.param == "simd")
    yield request.param
    _kernels.set_simd(previous)

from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference_octave_substitute"


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def reference(name: str) -> np.ndarray:
    """A reference array from ../shared (tests using it skip when it is absent)."""
    path = REFERENCE / f"{name}.npy"
    if not path.exists():
        pytest.skip(f"reference data not available ({path})")
    return np.load(path)

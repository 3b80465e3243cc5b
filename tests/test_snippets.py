"""Every Python code block of the README, the quickstart and the user guide
runs as written, in order, from an empty folder: the blocks of one document
share one namespace, as a reader who pastes them one after another would.

A block that imports an optional engine that is not installed (matplotlib,
Dask) is skipped with its reason, and so is a later block that needs a name
only the skipped one defines. The Spark and Ray patterns need a running
session or cluster: tests/test_cluster_patterns.py runs them as they stand."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from docblocks import blocks_of

#: they start worker processes, engines or subprocesses
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "quickstart.rst",
             *sorted((ROOT / "docs" / "user_guide").glob("*.rst"))]
OPTIONAL = {"matplotlib": "plot", "dask": "dask", "distributed": "dask", "pyspark": "spark",
            "ray": "ray"}


CASES = [(path, i) for path in DOCUMENTS for i in range(len(blocks_of(path)))]
_scopes: dict[Path, dict] = {}
#: the first lines of the blocks that tests/test_cluster_patterns.py runs
ENGINE_PATTERNS = ("# Spark", "# Ray")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An empty folder per document, for the files its blocks write."""
    return {path: tmp_path_factory.mktemp(path.stem) for path in DOCUMENTS}


def test_the_documents_have_blocks():
    counts = {path.name: len(blocks_of(path)) for path in DOCUMENTS}
    assert counts["README.md"] >= 4 and counts["quickstart.rst"] >= 2, counts


@pytest.mark.parametrize("path, index", CASES,
                         ids=[f"{p.relative_to(ROOT)}:{i}" for p, i in CASES])
def test_block_runs_as_written(path, index, folders, monkeypatch):
    scope = _scopes.setdefault(path, {"__name__": "__snippet__", "_skipped": []})
    code = blocks_of(path)[index]
    if code.startswith(ENGINE_PATTERNS):
        pytest.skip("an engine pattern: tests/test_cluster_patterns.py runs it against a "
                    "local engine")
    monkeypatch.chdir(folders[path])
    monkeypatch.setenv("MPLBACKEND", "Agg")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(code, f"{path.name} block {index}", "exec"), scope)
    except ModuleNotFoundError as error:
        top = (error.name or "").split(".")[0]
        if top not in OPTIONAL:
            raise
        scope["_skipped"].append(index)
        pytest.skip(f"{top} is not installed (pip install '.[{OPTIONAL[top]}]')")
    except NameError as error:
        if not scope["_skipped"]:
            raise
        pytest.skip(f"needs a name from skipped block(s) {scope['_skipped']}: {error}")
    finally:
        if "matplotlib.pyplot" in os.sys.modules:
            os.sys.modules["matplotlib.pyplot"].close("all")

"""The user guide's patterns for other engines (joblib, Spark, Ray), run as
they stand in docs/user_guide/distributed.rst against real local engines,
each checked against the same shards fitted one after another. Spark needs
pyspark and a Java runtime, Ray needs ray; each test skips with its reason
where they are missing."""

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from docblocks import blocks_of

from fastmoe import aggregate_messages, fit_local
from fastmoe.datasets import make_moe_regression

#: they start worker processes, engines or subprocesses
pytestmark = pytest.mark.integration

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "user_guide" / "distributed.rst"
N_SHARDS = 3


def snippet(first_line: str) -> str:
    """The user guide's python block that begins with ``first_line``."""
    found = [b for b in blocks_of(GUIDE) if b.startswith(first_line)]
    assert len(found) == 1, f"the guide has {len(found)} blocks starting {first_line!r}"
    return found[0]


@pytest.fixture(scope="module")
def shards():
    X, y, _, _ = make_moe_regression(3 * 1500, 2, 3, random_state=4)
    return [(X[i::N_SHARDS], y[i::N_SHARDS]) for i in range(N_SHARDS)]


@pytest.fixture(scope="module")
def serial(shards):
    """The same shards fitted one after another in this process."""
    return aggregate_messages([fit_local(X, y, 3, random_state=i)
                               for i, (X, y) in enumerate(shards)])


def assert_same_model(result, reference):
    for name in ("gate_coef", "gate_intercept", "expert_coef", "expert_intercept",
                 "expert_var"):
        np.testing.assert_array_equal(getattr(result.params, name),
                                      getattr(reference.params, name), err_msg=name)


def test_joblib_pattern(shards, serial):
    scope = {"shards": shards}
    exec(snippet("# joblib"), scope)
    assert_same_model(scope["result"], serial)


def test_joblib_rounds_pattern(shards, serial):
    """The guide's rounds through joblib take the estimator's server loop to
    the same model as the same loop over the shards in this process."""
    from fastmoe.machine import round_statistics
    from fastmoe.server import refine

    scope = {"shards": shards}
    exec(snippet("# joblib"), scope)
    exec(snippet("# Rounds with joblib"), scope)

    def evaluate(models):
        totals = []
        for model in models:
            parts = [round_statistics(X, y, model) for X, y in shards]
            totals.append(sum(parts[1:], parts[0]))
        return totals, 0.0

    want = refine(serial.params, evaluate)
    got = scope["refined"]
    assert got.converged and len(got.history) == len(want.history)
    for name in ("gate_aug", "expert_aug", "expert_var"):
        np.testing.assert_array_equal(getattr(got.params, name), getattr(want.params, name))


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """Start the engines away from the repository's root: their workers put
    their working directory on sys.path, and there ``import fastmoe`` would
    find the source tree, without its compiled kernels, instead of the
    installed package."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("engines"))
    yield
    os.chdir(before)


@pytest.fixture(scope="module")
def spark(elsewhere):
    pytest.importorskip("pyspark", reason="pyspark is not installed (pip install '.[spark]')")
    if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
        pytest.skip("Spark needs a Java runtime (Debian: openjdk-17-jre-headless)")
    from pyspark.sql import SparkSession

    # the Python workers must import this fastmoe
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("fastmoe-test")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .getOrCreate())
    yield session
    session.stop()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_spark_pattern(spark, shards, serial):
    import pandas as pd

    frames = []
    for i, (X, y) in enumerate(shards):
        frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
        frame["y"], frame["part"], frame["row"] = y, i, np.arange(len(y))
        frames.append(frame)
    # shuffled, so that the pattern's own sort is what restores each shard
    data = pd.concat(frames).sample(frac=1.0, random_state=0)
    scope = {"sdf": spark.createDataFrame(data).repartition(4)}
    exec(snippet("# Spark"), scope)
    assert_same_model(scope["result"], serial)


@pytest.fixture(scope="module")
def ray_cluster(elsewhere):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install '.[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_ray_pattern(ray_cluster, shards, serial):
    scope = {"shards": shards}
    exec(snippet("# Ray"), scope)
    assert_same_model(scope["result"], serial)

"""fastmoe: fast softmax-gated Gaussian mixture-of-experts regression.

Centralised EM fits and one-shot distributed learning by optimal-transport
aggregation of local experts (Chamroukhi & Pham, arXiv 2312.09877).

The public names below are imported on first use (PEP 562), so that
``import fastmoe.engine`` loads neither scikit-learn nor Dask.
"""

import importlib

from . import _runtime  # noqa: F401  (first: the OpenMP wait policy, see there)

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "MoEFit": "_em",
    "fit_moe": "_em",
    "MoEParams": "_params",
    "AggregationResult": "aggregation",
    "aggregate": "aggregation",
    "aligned_average": "baselines",
    "medoid": "baselines",
    "greedy_merge": "baselines",
    "fedavg": "baselines",
    "FedAvgResult": "baselines",
    "naive_average": "baselines",
    "transport_divergence": "aggregation",
    "DistributedMoERegressor": "distributed",
    "DistributedMoEClassifier": "distributed",
    "LocalMessage": "message",
    "aggregate_messages": "server",
    "fit_local": "machine",
    "select_n_experts": "model_selection",
    "ConvergenceWarning": "exceptions",
    "DegenerateExpertWarning": "exceptions",
    "ShardError": "exceptions",
    "GaussianMoERegressor": "moe",
    "MoERegressor": "moe",
    "MoEClassifier": "moe",
    "fit_many": "many",
    "ManyResult": "many",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'fastmoe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))

"""fastmoe: fast softmax-gated Gaussian mixture-of-experts regression.

Centralised EM fits and one-shot distributed learning by optimal-transport
aggregation of local experts (Chamroukhi & Pham, arXiv 2312.09877).
"""

from . import _runtime  # noqa: F401  (first: the OpenMP wait policy, see there)
from ._em import MoEFit, fit_moe
from ._params import MoEParams
from .aggregation import (
    AggregationResult,
    aggregate,
    aligned_average,
    medoid,
    naive_average,
    transport_divergence,
)
from .distributed import (
    DistributedMoERegressor,
    LocalMessage,
    aggregate_messages,
    fit_local,
    select_n_experts,
)
from .exceptions import ConvergenceWarning, DegenerateExpertWarning, ShardError
from .moe import GaussianMoERegressor

__version__ = "0.1.0"

__all__ = [
    "AggregationResult",
    "aggregate",
    "aligned_average",
    "medoid",
    "naive_average",
    "transport_divergence",
    "ConvergenceWarning",
    "DegenerateExpertWarning",
    "DistributedMoERegressor",
    "LocalMessage",
    "ShardError",
    "aggregate_messages",
    "fit_local",
    "select_n_experts",
    "GaussianMoERegressor",
    "MoEFit",
    "MoEParams",
    "__version__",
    "fit_moe",
]

"""Diagnostics, one import away: the metrics (``fastmoe.metrics``), the
aggregation health report (``fastmoe.health``) and the studies
(``fastmoe.studies``).
"""

from .health import (  # noqa: F401
    FAILED_COST_FACTOR,
    OUTLIER_FACTOR,
    SUPPORT_PER_GATE_PARAMETER,
    aggregation_health,
    health_report,
)
from .metrics import (  # noqa: F401
    align_to,
    alignment,
    clustering_scores,
    correlation,
    map_labels,
    model_metrics,
    parameter_rmse,
    relative_prediction_error,
    stacked_mse,
)
from .studies import (  # noqa: F401
    ESTIMATORS,
    STUDY_METRICS,
    SUPPORT_TOTAL,
    StudyResult,
    authors_comparison,
    consistency_study,
    loglog_slope,
)

__all__ = ["aggregation_health", "health_report", "align_to", "clustering_scores",
           "model_metrics", "parameter_rmse", "relative_prediction_error", "stacked_mse",
           "StudyResult", "authors_comparison", "consistency_study", "loglog_slope"]

"""
Does the distributed error shrink like the centralised one?
===========================================================

A small consistency study: for three sample sizes, fit centrally and over
four machines, measure the parameter error against the truth, and fit the
log-log slope of the error against N (about -1/2 for a consistent
estimator). A real study uses more repetitions and sizes (``fastmoe study``).
"""

import matplotlib.pyplot as plt

from fastmoe.diagnostics import consistency_study
from fastmoe.plotting import plot_study

study = consistency_study([2000, 8000, 32000], n_machines=(4,), repetitions=2,
                          estimators=("centralised", "ot-kl"), n_test=2000)
print(study.to_markdown())
for key, slope in study.slopes.items():
    print(key, slope)

fig, ax = plt.subplots(figsize=(6, 4))
plot_study(study, kind="error", ax=ax)
fig.tight_layout()

"""
Fit a mixture of experts and look at it
=======================================

Three experts on one covariate: the gates say which expert is in charge
where, and the predictive interval widens where two experts overlap.
"""

import matplotlib.pyplot as plt
import numpy as np

from fastmoe import GaussianMoERegressor
from fastmoe.datasets import make_moe_regression
from fastmoe.plotting import plot_gates, plot_prediction

X, y, truth, labels = make_moe_regression(3000, 1, 3, random_state=0)
model = GaussianMoERegressor(n_experts=3, n_init=3, random_state=0).fit(X, y)

fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
plot_gates(model, X, feature=0, ax=top)
plot_prediction(model, X, y, feature=0, level=0.9, ax=bottom)
fig.tight_layout()

# %%
# The 90% predictive intervals of new draws from the same truth cover about
# 90% of them:
X_new, y_new, _, _ = make_moe_regression(20000, 1, 3, params=truth, random_state=1)
lo, hi = model.predict_interval(X_new, level=0.9).T
print(f"coverage of the 90% interval: {np.mean((lo <= y_new) & (y_new <= hi)):.3f}")

"""
Distributed fit and its health report
=====================================

Twenty thousand rows split over eight machines: each fits a local model and
sends one message; the server aggregates the 24 local experts into 3. The
picture shows which global expert each machine's experts went to (one per
machine each, when all is well) and what each machine's models cost.
"""

import matplotlib.pyplot as plt

from fastmoe import DistributedMoERegressor, GaussianMoERegressor
from fastmoe.datasets import make_moe_regression
from fastmoe.plotting import plot_health

X, y, truth, labels = make_moe_regression(20000, 3, 3, random_state=0)
X_test, y_test, _, _ = make_moe_regression(10000, 3, 3, params=truth, random_state=1)

dist = DistributedMoERegressor(n_experts=3, n_machines=8, backend="serial",
                               random_state=0).fit(X, y)
central = GaussianMoERegressor(n_experts=3, n_init=3, random_state=0).fit(X, y)

print(dist.aggregation_.report())
print(f"test log-likelihood per row: distributed {dist.log_likelihood(X_test, y_test) / 1e4:.4f}, "
      f"centralised {central.log_likelihood(X_test, y_test) / 1e4:.4f}")
print(f"{dist.message_bytes_.sum() / 1e3:.0f} kB sent by 8 machines")

fig, ax = plt.subplots(figsize=(6, 3.5))
plot_health(dist.aggregation_, ax=ax)
fig.tight_layout()

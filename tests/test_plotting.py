"""fastmoe.plotting: every plot renders a non-empty picture from fitted models,
an aggregation and a study, and none changes the user's matplotlib backend."""

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")

from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fastmoe import (  # noqa: E402
    DistributedMoERegressor,
    GaussianMoERegressor,
    fit_moe,
    plotting,  # noqa: E402
)
from fastmoe.datasets import make_moe_regression  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return make_moe_regression(3000, 2, 3, random_state=0)


@pytest.fixture(scope="module")
def dist(data):
    X, y, _, _ = data
    return DistributedMoERegressor(3, n_machines=3, backend="serial", random_state=0).fit(X, y)


def render(ax, path):
    """Save the Axes' figure to PNG and return its pixels."""
    assert isinstance(ax, Axes)
    ax.figure.savefig(path, dpi=60)
    return matplotlib.image.imread(path)


def assert_drawn(pixels):
    """Not a blank canvas: many distinct colours, and ink on it."""
    rgb = pixels[..., :3].reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) > 20
    assert (rgb.mean(axis=1) < 0.5).mean() > 0.002


@pytest.mark.parametrize("others", ["mean", "data"])
def test_plot_gates(data, tmp_path, others):
    X, y, truth, _ = data
    model = GaussianMoERegressor(3, random_state=0).fit(X, y)
    fig = Figure()
    ax = plotting.plot_gates(model, X, feature=1, others=others, ax=fig.add_subplot())
    assert len(ax.get_legend().get_texts()) == 3
    assert_drawn(render(ax, tmp_path / "gates.png"))
    if others == "mean":  # the lines are the model's gate probabilities
        t, p = ax.get_lines()[0].get_data()
        grid = np.tile(X.mean(axis=0), (len(t), 1))
        grid[:, 1] = t
        np.testing.assert_allclose(p, model.params_.gate_proba(grid)[:, 0])


def test_plot_prediction(data, tmp_path):
    X, y, truth, _ = data
    fit = fit_moe(X, y, 3, random_state=0)
    ax = plotting.plot_prediction(fit, X, y, feature=0, level=0.9, ax=Figure().add_subplot())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "90% predictive interval" in labels and "E[y | x]" in labels
    assert_drawn(render(ax, tmp_path / "prediction.png"))
    t, mean = ax.get_lines()[-1].get_data()
    assert np.all(np.diff(t) > 0) and np.all(np.isfinite(mean))


def test_plot_health(dist, tmp_path):
    ax = plotting.plot_health(dist.aggregation_, ax=Figure().add_subplot())
    image = ax.get_images()[0].get_array()
    assert image.shape == (3, 3)
    np.testing.assert_allclose(image.sum(axis=1), 1.0)
    assert len(ax.get_yticklabels()) == 3 and "cost" in ax.get_yticklabels()[0].get_text()
    assert_drawn(render(ax, tmp_path / "health.png"))


def test_plot_health_at_its_default_size_shows_every_label_whole(dist):
    """Nothing is clipped: the y tick labels, the axis labels and the colour
    bar lie inside the figure as drawn at its default size."""
    import matplotlib.pyplot as plt

    ax = plotting.plot_health(dist.aggregation_)
    fig = ax.figure
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        texts = [*ax.get_yticklabels(), *ax.get_xticklabels(), ax.yaxis.label, ax.xaxis.label,
                 ax.title]
        for text in texts:
            extent = text.get_window_extent(renderer)
            assert (extent.x0 >= box.x0 - 0.5 and extent.x1 <= box.x1 + 0.5
                    and extent.y0 >= box.y0 - 0.5 and extent.y1 <= box.y1 + 0.5), \
                text.get_text()
    finally:
        plt.close(fig)


@pytest.mark.parametrize("kind", ["error", "time"])
def test_plot_study(tmp_path, kind):
    from fastmoe.diagnostics import consistency_study

    res = consistency_study([1000, 2000], (2,), n_features=1, n_experts=2, repetitions=2,
                            n_test=500, random_state=0)
    ax = plotting.plot_study(res, kind, ax=Figure().add_subplot())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    if kind == "error":
        assert any("slope" in text for text in labels)
    else:  # whole machines on the axis: the study's M and the centralised fit's 1
        assert list(ax.get_xticks()) == [1, 2]
    assert_drawn(render(ax, tmp_path / "study.png"))
    paths = res.plot(str(tmp_path / "s"))
    assert [p.rsplit("_", 2)[-2:] for p in paths] == [["vs", "n.png"], ["vs", "m.png"]]
    for p in paths:
        assert_drawn(matplotlib.image.imread(p))


def test_the_backend_is_left_alone(data, dist, tmp_path):
    import matplotlib.pyplot as plt

    X, y, _, _ = data
    before = matplotlib.get_backend()
    for ax in (plotting.plot_gates(dist, X), plotting.plot_prediction(dist, X, y),
               plotting.plot_health(dist.aggregation_)):
        assert isinstance(ax, Axes)
        plt.close(ax.figure)
    assert matplotlib.get_backend() == before


def test_bad_arguments(data):
    X, y, truth, _ = data
    with pytest.raises(ValueError, match="feature must be a covariate index"):
        plotting.plot_gates(truth, X, feature=2)
    with pytest.raises(ValueError, match="expects 2"):
        plotting.plot_gates(truth, X[:, :1])
    with pytest.raises(TypeError, match="expected a MoEParams"):
        plotting.plot_gates(object(), X)
    with pytest.raises(ValueError, match="others"):
        plotting.plot_gates(truth, X, others="median")

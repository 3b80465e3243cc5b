"""flexmix (R) driven by fastmoe's engine through reticulate
(interop/flexmix/fastmoe.R), and the Python side of those drivers."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastmoe import _r, engine
from fastmoe.datasets import make_moe_regression

DRIVERS = Path(__file__).resolve().parents[1] / "interop" / "flexmix" / "fastmoe.R"


def _column_major(a) -> bytes:
    return np.asarray(a, dtype=np.float64).T.tobytes()


def test_the_python_side_reads_r_column_major_bytes():
    X, y, truth, _ = make_moe_regression(500, 2, 3, random_state=0)
    w = truth.posterior(X, y)[:, 1]
    out = _r.experts(_column_major(X), _column_major(y), _column_major(w), 500, 2)
    coef, intercept, var = engine.update_experts(engine.expert_statistics(X, y, w[:, None]))
    np.testing.assert_allclose(out, [intercept[0], *coef[0], var[0]], rtol=1e-13)
    T = truth.posterior(X, y)
    B = _r.gates(_column_major(X), _column_major(T), _column_major(np.ones(500)), 500, 2, 3)
    fit = engine.fit_gates(X, T, reference=0)
    np.testing.assert_allclose(np.reshape(B, (3, 3)),
                               np.column_stack([fit.gate_intercept, fit.gate_coef]),
                               rtol=1e-12, atol=1e-14)
    again = _r.gates(_column_major(X), _column_major(T), _column_major(np.ones(500)), 500, 2, 3,
                     init=B)
    np.testing.assert_allclose(again, B, atol=1e-8)
    with pytest.raises(ValueError, match="expected 1000 numbers from R; got 999"):
        _r.experts(_column_major(X)[:-8], _column_major(y), _column_major(w), 500, 2)


@pytest.mark.parametrize("family", ["poisson", "bernoulli"])
def test_the_glm_driver_reuses_its_rows_and_refits_new_ones(family):
    """_r.glm_expert keeps the last rows it was sent, prepared; each call
    equals engine.fit_family_experts on the rows and weights it was given,
    from a start or without, and a new data set is not fitted on the old."""
    fits = []
    for seed in (0, 1, 0):  # the same rows, other rows, the first rows again
        X, y, truth, _ = make_moe_regression(800, 2, 2, family=family, random_state=seed)
        w = truth.posterior(X, y)[:, 0]
        for start in (None, [0.1, 0.0, 0.0]):
            got = _r.glm_expert(_column_major(X), _column_major(y), _column_major(w), 800, 2,
                                family, start)
            init = None if start is None else (np.array([start[1:]]), np.array(start[:1]),
                                               np.ones(1))
            want = engine.fit_family_experts(X, y, w[:, None], family, init=init)
            np.testing.assert_allclose(got, [want.intercept[0], *want.coef[0]], rtol=1e-8,
                                       atol=1e-10)
            fits.append(got)
    assert not np.allclose(fits[0], fits[2])  # the second data set's own fit
    np.testing.assert_allclose(fits[4], fits[0], rtol=1e-12)
    with pytest.raises(ValueError, match="finite and non-negative"):
        _r.glm_expert(_column_major(X), _column_major(y), _column_major(-w), 800, 2, family)


def _r_ready() -> str | None:
    """Why the R test cannot run here, or None."""
    if shutil.which("Rscript") is None:
        return "Rscript not installed (Debian: r-base-core r-cran-flexmix r-cran-reticulate)"
    probe = subprocess.run(["Rscript", "-e", "library(flexmix); library(reticulate)"],
                           capture_output=True, text=True)
    if probe.returncode:
        return "R packages flexmix and reticulate not installed"
    return None


def _run_r(script: str, folder) -> dict:
    """Run an R script with the drivers, from another folder (Python then
    imports the installed fastmoe, not the source tree): its output lines
    "KEY numbers..." as {KEY: [[numbers], ...]}."""
    env = dict(os.environ, RETICULATE_PYTHON=sys.executable, FASTMOE_DRIVERS=str(DRIVERS))
    run = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, env=env,
                         timeout=300, cwd=folder)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {}
    for line in run.stdout.splitlines():
        key, *values = line.split()
        rows.setdefault(key, []).append([float(v) for v in values])
    return rows


def _r_simulated(n: int, K: int, family: str) -> str:
    """R lines that source the drivers and build the data frame ``d`` (x1,
    x2, y) of make_moe_regression(n, 2, K, family=family, random_state=3)."""
    return f"""source(Sys.getenv("FASTMOE_DRIVERS"))
sim <- reticulate::py_run_string(local = TRUE, code = "
from fastmoe.datasets import make_moe_regression
X, y, _, _ = make_moe_regression({n}, 2, {K}, family='{family}', random_state=3)
x1, x2, y = X[:, 0].tolist(), X[:, 1].tolist(), y.tolist()")
d <- data.frame(x1 = unlist(sim$x1), x2 = unlist(sim$x2), y = unlist(sim$y))
"""


R_SCRIPT = _r_simulated(3000, 3, "gaussian") + r"""
set.seed(1)
start <- kmeans(scale(as.matrix(d)), centers = 3, nstart = 1)$cluster
own <- flexmix(y ~ x1 + x2, data = d, k = 3, cluster = start, model = FLXMRglm(),
               concomitant = FLXPmultinom(~ x1 + x2))
fm <- flexmix(y ~ x1 + x2, data = d, k = 3, cluster = start, model = FLXMRfastmoe(),
              concomitant = FLXPfastmoe(~ x1 + x2))
cat("LOGLIK", as.numeric(logLik(own)), as.numeric(logLik(fm)), "\n")
cat("K", own@k, fm@k, "\n")
cat("EXPERTS", parameters(own), "\n")
cat("EXPERTS", parameters(fm), "\n")
cat("GATES", parameters(own, which = "concomitant"), "\n")
cat("GATES", parameters(fm, which = "concomitant"), "\n")
"""


@pytest.mark.integration
@pytest.mark.skipif(_r_ready() is not None, reason=str(_r_ready()))
def test_flexmix_with_fastmoe_drivers_matches_its_own_fit(tmp_path):
    rows = _run_r(R_SCRIPT, tmp_path)
    (ll_own, ll_fm), = rows["LOGLIK"]
    assert rows["K"] == [[3.0, 3.0]]
    # the ML variance: at least flexmix's log-likelihood, and only just above it
    assert ll_fm >= ll_own - 1e-6 * abs(ll_own)
    assert ll_fm - ll_own < 5.0
    own, fm = (np.array(p).reshape(3, -1) for p in rows["EXPERTS"])  # coef (3) + sigma, per k
    np.testing.assert_allclose(fm[:, :3], own[:, :3], atol=2e-3)
    np.testing.assert_allclose(fm[:, 3], own[:, 3], rtol=2e-3)
    gates_own, gates_fm = (np.array(p) for p in rows["GATES"])
    np.testing.assert_allclose(gates_fm, gates_own, atol=5e-3)


R_POISSON = _r_simulated(4000, 2, "poisson") + r"""
set.seed(1)
start <- kmeans(scale(as.matrix(d)), centers = 2, nstart = 1)$cluster
own <- flexmix(y ~ x1 + x2, data = d, k = 2, cluster = start,
               model = FLXMRglm(family = "poisson"), concomitant = FLXPmultinom(~ x1 + x2))
fm <- flexmix(y ~ x1 + x2, data = d, k = 2, cluster = start,
              model = FLXMRfastmoe(family = "poisson"), concomitant = FLXPfastmoe(~ x1 + x2))
cat("LOGLIK", as.numeric(logLik(own)), as.numeric(logLik(fm)), "\n")
cat("EXPERTS", parameters(own), "\n")
cat("EXPERTS", parameters(fm), "\n")
"""


@pytest.mark.integration
@pytest.mark.skipif(_r_ready() is not None, reason=str(_r_ready()))
def test_flexmix_with_fastmoes_poisson_experts_reaches_its_own_fit(tmp_path):
    rows = _run_r(R_POISSON, tmp_path)
    (ll_own, ll_fm), = rows["LOGLIK"]
    assert ll_fm == pytest.approx(ll_own, rel=1e-7)
    own, fm = (np.array(p) for p in rows["EXPERTS"])
    np.testing.assert_allclose(fm, own, atol=1e-4)


R_BINOMIAL = _r_simulated(3000, 2, "bernoulli") + r"""
trials <- 1 + (seq_len(nrow(d)) %% 3)
set.seed(2)
d$s <- rbinom(nrow(d), trials, ifelse(d$y > 0, 0.8, 0.3))
d$f <- trials - d$s
set.seed(1)
start <- kmeans(scale(as.matrix(d[, c("x1", "x2", "s")])), centers = 2, nstart = 1)$cluster
own <- flexmix(cbind(s, f) ~ x1 + x2, data = d, k = 2, cluster = start,
               model = FLXMRglm(family = "binomial"), concomitant = FLXPmultinom(~ x1 + x2))
fm <- flexmix(cbind(s, f) ~ x1 + x2, data = d, k = 2, cluster = start,
              model = FLXMRfastmoe(family = "binomial"), concomitant = FLXPfastmoe(~ x1 + x2))
cat("LOGLIK", as.numeric(logLik(own)), as.numeric(logLik(fm)), "\n")
cat("EXPERTS", parameters(own), "\n")
cat("EXPERTS", parameters(fm), "\n")
bad <- tryCatch(flexmix(s ~ x1 + x2, data = d, k = 2, cluster = start,
                        model = FLXMRfastmoe(family = "binomial")),
                error = function(e) conditionMessage(e))
cat("REFUSED", as.numeric(grepl("2 column", bad, fixed = TRUE)), "\n")
"""


@pytest.mark.integration
@pytest.mark.skipif(_r_ready() is not None, reason=str(_r_ready()))
def test_flexmix_with_fastmoes_binomial_experts_reaches_its_own_fit(tmp_path):
    """A two-column y of successes and failures (1 to 3 trials a row): the
    driver sends each row as two weighted 0/1 rows of fastmoe's Bernoulli
    experts and reaches FLXMRglm(family = "binomial")'s fit."""
    rows = _run_r(R_BINOMIAL, tmp_path)
    (ll_own, ll_fm), = rows["LOGLIK"]
    assert ll_fm == pytest.approx(ll_own, rel=1e-7)
    own, fm = (np.array(p) for p in rows["EXPERTS"])
    np.testing.assert_allclose(fm, own, atol=1e-4)
    assert rows["REFUSED"] == [[1.0]]


R_GAMMA = _r_simulated(3000, 2, "gamma") + r"""
options(digits = 15)
set.seed(1)
start <- kmeans(scale(as.matrix(cbind(d[, 1:2], log(d$y)))), centers = 2, nstart = 1)$cluster
fm <- flexmix(y ~ x1 + x2, data = d, k = 2, cluster = start,
              model = FLXMRfastmoe(family = "Gamma"), concomitant = FLXPfastmoe(~ x1 + x2),
              control = list(tolerance = 1e-10, iter.max = 2000L))
cat("LOGLIK", as.numeric(logLik(fm)), "\n")
cat("EXPERTS", parameters(fm), "\n")
cat("GATES", parameters(fm, which = "concomitant"), "\n")
one <- flexmix(y ~ 1, data = d, k = 1, model = FLXMRfastmoe(family = "Gamma"))
cat("ONE", as.numeric(logLik(one)), parameters(one), "\n")
bad <- tryCatch(flexmix(I(y - 10) ~ x1 + x2, data = d, k = 2, cluster = start,
                        model = FLXMRfastmoe(family = "Gamma")),
                error = function(e) conditionMessage(e))
cat("REFUSED", as.numeric(grepl("positive response", bad, fixed = TRUE)), "\n")
"""


@pytest.mark.integration
@pytest.mark.skipif(_r_ready() is not None, reason=str(_r_ready()))
def test_flexmix_with_fastmoes_gamma_experts_ends_at_fastmoes_optimum(tmp_path):
    """FLXMRfastmoe(family = "Gamma") fits fastmoe's Gamma experts (log link,
    each expert's ML shape): flexmix's log-likelihood is fastmoe's for the
    same model, and fastmoe's EM from it does not move it (flexmix's own
    Gamma driver takes the inverse link: another model, no comparison). One
    component with an intercept alone is the ML Gamma fit of the response."""
    from scipy import stats

    from fastmoe import MoEParams, fit_moe

    rows = _run_r(R_GAMMA, tmp_path)
    X, y, _, _ = make_moe_regression(3000, 2, 2, family="gamma", random_state=3)
    (ll,), = rows["LOGLIK"]
    experts = np.array(rows["EXPERTS"][0]).reshape(2, 4)  # intercept, x1, x2, shape
    B = np.array(rows["GATES"][0]).reshape(2, 3)  # per component: intercept, x1, x2
    model = MoEParams(B[:, 1:], B[:, 0], experts[:, 1:3], experts[:, 0], 1.0 / experts[:, 3],
                      "gamma")
    assert model.log_likelihood(X, y) == pytest.approx(ll, rel=1e-9)
    again = fit_moe(X, y, 2, family="gamma", init=model, max_iter=200)
    assert again.log_likelihood - ll < 1e-4
    (ll_one, b0, shape), = rows["ONE"]
    a, _, scale = stats.gamma.fit(y, floc=0)
    assert shape == pytest.approx(a, rel=1e-6)
    assert np.exp(b0) == pytest.approx(a * scale, rel=1e-6)
    assert ll_one == pytest.approx(stats.gamma.logpdf(y, a, scale=scale).sum(), rel=1e-9)
    assert rows["REFUSED"] == [[1.0]]

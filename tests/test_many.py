"""fastmoe.fit_many: many small fits in one compiled call, against
fastmoe.fit_moe, with every bad data set reported by its status."""

import numpy as np
import pytest
from conftest import read_only

from fastmoe import fit_many, fit_moe
from fastmoe.datasets import make_moe_regression


@pytest.fixture(scope="module")
def sets():
    return [make_moe_regression(300, 2, 2, random_state=i)[:2] for i in range(40)]


def test_every_data_set_gets_one_result_and_bad_ones_say_why(sets):
    bad = list(sets)
    bad[1] = (sets[1][0], np.full(300, 2.5))
    bad[2] = (sets[2][0][:3], sets[2][1][:3])
    y = sets[3][1].copy()
    y[10] = np.nan
    bad[3] = (sets[3][0], y)
    bad[4] = "not a data set"
    bad[5] = (sets[5][0][:, :1], sets[5][1])
    res = fit_many(bad, 2, random_state=0)
    assert len(res) == len(bad)
    assert "constant" in res[1].status
    assert "too few" in res[2].status
    assert "NaN" in res[3].status
    assert "not an (X, y) pair" in res[4].status
    assert "covariates" in res[5].status
    for i, r in enumerate(res):
        assert (r.params is None) == (i in (1, 2, 3, 4, 5))
        if r.ok:
            assert r.params.n_experts == 2 and r.converged


def test_an_expert_never_vanishes_silently():
    X = np.random.default_rng(0).standard_normal((200, 1))
    y = 2.0 * X[:, 0] + 1e-3 * np.random.default_rng(1).standard_normal(200)
    res = fit_many([(X, y)], 3, random_state=0)[0]
    assert res.ok == (res.params is not None and res.params.n_experts == 3)


def test_each_fit_is_a_fixed_point_of_fit_moes_em(sets):
    for r, (X, y) in zip(fit_many(sets[:10], 2, random_state=0), sets[:10]):
        again = fit_moe(X, y, 2, init=r.params, split_merge=False)
        assert again.log_likelihood == pytest.approx(r.log_likelihood, rel=1e-6)
        assert r.log_likelihood == pytest.approx(r.params.log_likelihood(X, y), rel=1e-10)


def test_it_reaches_fit_moes_optimum(sets):
    gaps = [(r.log_likelihood - fit_moe(X, y, 2, random_state=0).log_likelihood) / len(y)
            for r, (X, y) in zip(fit_many(sets, 2, random_state=0), sets)]
    assert np.mean(np.abs(gaps) < 1e-4) >= 0.9


def test_reproducible_and_independent_of_threads(sets):
    a = fit_many(sets, 2, random_state=3, n_jobs=1)
    b = fit_many(sets, 2, random_state=3, n_jobs=2)
    for r, s in zip(a, b):
        np.testing.assert_array_equal(r.params.expert_aug, s.params.expert_aug)
        np.testing.assert_array_equal(r.params.gate_aug, s.params.gate_aug)


def test_units_of_the_covariates_and_response_do_not_matter(sets):
    moved = [(X * [1e3, 1e-4] + [1e7, -2.0], 1e5 * y + 3e6) for X, y in sets[:8]]
    for r, s, (X, _), (Xm, _) in zip(fit_many(sets[:8], 2, random_state=0),
                                     fit_many(moved, 2, random_state=0), sets[:8], moved):
        np.testing.assert_allclose(1e5 * r.params.predict_mean(X) + 3e6,
                                   s.params.predict_mean(Xm), rtol=1e-6)


def test_inputs_are_not_modified(sets):
    frozen = [read_only((X.copy(), y.copy())) for X, y in sets[:3]]
    fit_many(frozen, 2, random_state=0)


def test_other_families_run_per_data_set():
    sets = [make_moe_regression(400, 2, 2, family="poisson", random_state=i)[:2]
            for i in range(3)]
    sets.append((sets[0][0], -sets[0][1] - 1.0))
    res = fit_many(sets, 2, family="poisson", random_state=0, n_jobs=1)
    assert [r.ok for r in res] == [True, True, True, False]
    assert res[0].params.family == "poisson"
    assert "y >= 0" in res[3].status

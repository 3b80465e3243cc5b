"""robust=True: a corrupted or lying machine among honest ones is named and
left out; honest machines are not."""

from dataclasses import replace

import numpy as np
import pytest

from fastmoe import DistributedMoERegressor, MoEParams, aggregate_messages, fit_local
from fastmoe.datasets import make_moe_regression
from fastmoe.server import inconsistent_machines, pooled_support


@pytest.fixture(scope="module")
def honest():
    X, y, truth, _ = make_moe_regression(32000, 3, 3, random_state=0)
    Xt, yt, _, _ = make_moe_regression(10000, 3, 3, params=truth, random_state=1)
    msgs = [fit_local(X[i::16], y[i::16], 3, random_state=i) for i in range(16)]
    return msgs, Xt, yt


def forge(msg, factor=40):
    """The message of a machine that lies: its model forged, its n inflated."""
    p = msg.params
    fake = MoEParams(-p.gate_coef, p.gate_intercept, 2 * p.expert_coef[::-1],
                     p.expert_intercept + 3, 0.5 * p.expert_var)
    return replace(msg, params=fake, n=msg.n * factor)


def per_row(result, X, y):
    return result.params.log_likelihood(X, y) / len(y)


def test_forged_machine_is_caught_only_with_robust(honest):
    msgs, Xt, yt = honest
    clean = aggregate_messages(msgs)
    bad = list(msgs)
    bad[5] = forge(msgs[5])
    plain = aggregate_messages(bad)  # 40x is within the plausible claims: no warning
    assert plain.excluded == () and plain.inconsistent == ()
    assert per_row(plain, Xt, yt) < per_row(clean, Xt, yt) - 0.5
    robust = aggregate_messages(bad, robust=True)
    assert robust.inconsistent == (5,) and robust.excluded == (5,)
    assert any("messages[5] left out as inconsistent" in n for n in robust.notes)
    assert "NOTE: messages[5] left out as inconsistent" in robust.report()
    assert abs(per_row(robust, Xt, yt) - per_row(clean, Xt, yt)) < 0.02
    assert len(robust.machine) == 15 * 3


def test_honest_machines_are_kept(honest):
    msgs, _, _ = honest
    assert aggregate_messages(msgs, robust=True).inconsistent == ()


def test_inflated_n_alone_is_caught(honest):
    msgs, _, _ = honest
    lying = list(msgs)
    lying[2] = replace(msgs[2], n=msgs[2].n * 40)
    Xs = pooled_support(lying, None, np.random.default_rng(0), 5000)
    assert set(inconsistent_machines(lying, Xs)) == {2}


def test_two_machines_cannot_outvote_each_other(honest):
    msgs, _, _ = honest
    pair = [msgs[0], forge(msgs[1])]
    Xs = pooled_support(pair, None, np.random.default_rng(0), 5000)
    assert inconsistent_machines(pair, Xs) == {}


def test_estimator_names_the_inconsistent_shard():
    X, y, _, _ = make_moe_regression(12000, 2, 2, random_state=3)
    shards = [(X[i::6], y[i::6]) for i in range(6)]
    # a shard whose responses were corrupted: flipped in sign
    shards[4] = (shards[4][0], -shards[4][1] + 10.0)
    # with rounds (the default): its rows fit the final model far worse than
    # its own model fits them; robust=True leaves it out of the last rounds
    est = DistributedMoERegressor(2, backend="serial", robust=True, random_state=0)
    with pytest.warns(UserWarning, match=r"shard\(s\) \[4\] do not look like"):
        est.fit_shards(shards)
    assert est.inconsistent_shards_ == [4] and est.excluded_shards_ == [4]
    assert est.excluded_rows_ == 2000 and "nats per row" in est.inconsistent_reasons_[4]
    assert est.refine_history_[-1]["rows"] == 12000 - 2000
    # without robust it is named and kept
    named = DistributedMoERegressor(2, backend="serial", random_state=0)
    with pytest.warns(UserWarning, match="robust=True leaves them out"):
        named.fit_shards(shards)
    assert named.inconsistent_shards_ == [4] and named.excluded_rows_ == 0
    # the one-shot estimator: the consensus filter on the messages
    once = DistributedMoERegressor(2, backend="serial", robust=True, random_state=0,
                                   refine_rounds=0)
    with pytest.warns(UserWarning, match=r"shard\(s\) \[4\] do not look like"):
        once.fit_shards(shards)
    assert once.inconsistent_shards_ == [4] and 4 in once.excluded_shards_


def test_a_shard_too_small_to_judge_is_not_named():
    """Its own model's fit is no evidence below GAP_MIN_ROWS_PER_PARAMETER
    rows per free parameter: a mirrored shard of 20 rows (K = 2, d = 2:
    P = 11) is neither named nor left out; at 2 000 rows it is."""
    from fastmoe.distributed import GAP_MIN_ROWS_PER_PARAMETER, rows_inconsistent

    X, y, _, _ = make_moe_regression(12000, 2, 2, random_state=3)
    shards = [(X[i::6], y[i::6]) for i in range(6)]
    shards[4] = (shards[4][0][:20], -shards[4][1][:20] + 10.0)
    est = DistributedMoERegressor(2, backend="serial", robust=True, random_state=0)
    est.fit_shards(shards)
    assert est.inconsistent_shards_ == [] and est.excluded_rows_ == 0
    own = {i: m.meta["log_likelihood"] for i, m in enumerate(est.messages_)}
    P = est.params_.n_parameters
    assert 20 < GAP_MIN_ROWS_PER_PARAMETER * P
    assert 4 in rows_inconsistent(est.round_statistics_, own)  # judged without the rule
    assert rows_inconsistent(est.round_statistics_, own, GAP_MIN_ROWS_PER_PARAMETER * P) == {}


def test_the_rounds_without_a_left_out_shard_restart_from_fresh_starts():
    """With robust=True the rounds go again without the named shard from the
    model they reached and from the server's starts refitted without its
    message (not from that model alone, which its rows pulled away)."""
    X, y, _, _ = make_moe_regression(12000, 2, 2, random_state=3)
    shards = [(X[i::6], y[i::6]) for i in range(6)]
    shards[4] = (shards[4][0], -shards[4][1] + 10.0)
    est = DistributedMoERegressor(2, backend="serial", robust=True, random_state=0)
    with pytest.warns(UserWarning, match="do not look like"):
        est.fit_shards(shards)
    starts = [h for h in est.refine_history_ if h["step"] == "start"]
    assert len(starts) == 2 and starts[1]["candidates"] > 1
    assert starts[1]["rows"] == 10000 and est.refine_converged_

"""Replies of 0 examples (clients with no data) take no part in any aggregation rule."""

from __future__ import annotations

import numpy as np
import pytest

from covey.aggregate import (
    AggregationError,
    Contribution,
    bulyan,
    krum,
    median,
    multi_krum,
    qfedavg,
    run_round,
    trimmed_mean,
)

P = {"w": np.zeros(3)}


def _c(cid: int, w: list[float], n: int, loss: float = 1.0) -> Contribution:
    return Contribution(cid, n, weights={"w": np.asarray(w, float)}, metrics={"loss": loss})


def _empty(cid: int) -> Contribution:
    # what a ready client without data replies: the model it got, 0 examples, loss 0.0
    return _c(cid, [0.0, 0.0, 0.0], 0, 0.0)


@pytest.mark.parametrize("q", [0.0, 0.2, 1.0])
def test_qfedavg_steps_as_the_paper_over_the_clients_that_trained(q: float) -> None:
    # Each empty reply added h_k (L F^q, with F = eps) to the normalizer: with q=0,
    # two of them cut the step to a third.
    lr, eps = 0.1, 1e-10
    trained = [_c(0, [1.0, 2.0, -1.0], 10, 2.0), _c(1, [0.5, 0.0, 3.0], 5, 0.5)]
    step = qfedavg(q=q, lr=lr, eps=eps)
    _, agg = run_round(step, step.init(P), 1, P, [*trained, _empty(2), _empty(3)])
    assert agg is not None
    big_l = 1.0 / lr
    num, h = np.zeros(3), 0.0
    for c in trained:  # Li et al. 2020, Algorithm 2, by hand
        f = float(c.metrics["loss"]) + eps
        dw = big_l * (P["w"] - c.as_weights(P)["w"])
        num += f**q * dw
        h += q * f ** (q - 1) * float(dw @ dw) + big_l * f**q
    np.testing.assert_allclose(agg.apply(P)["w"], P["w"] - num / h, rtol=1e-12)
    assert (agg.num_clients, agg.num_examples, agg.info) == (2, 15, {"no_examples": 2})


def test_qfedavg_of_empty_replies_only_keeps_the_model() -> None:
    step = qfedavg()
    with pytest.raises(AggregationError, match="round 1: all 2 contributions have num_examples"):
        run_round(step, step.init(P), 1, P, [_empty(0), _empty(1)])


def test_median_and_trimmed_mean_count_no_vote_for_an_empty_reply() -> None:
    trained = [_c(0, [1.0] * 3, 10), _c(1, [2.0] * 3, 10), _c(2, [4.0] * 3, 1)]
    for step, want in ((median(), 2.0), (trimmed_mean(0.25), 7 / 3)):
        _, agg = run_round(step, step.init(P), 1, P, [*trained, _empty(3), _empty(4)])
        assert agg is not None
        np.testing.assert_allclose(agg.apply(P)["w"], [want] * 3)
        assert agg.info["no_examples"] == 2
        assert agg.num_clients == 3


def test_krum_picks_no_empty_reply_and_an_attacker_of_0_examples_removes_itself() -> None:
    # Krum chose an empty reply (every one the same, so closest to its neighbours).
    honest = [_c(i, [1.0 + 0.1 * i] * 3, 10) for i in range(5)]
    step = krum(1)
    _, agg = run_round(step, step.init(P), 1, P, [*honest, _empty(5), _empty(6), _empty(7)])
    assert agg is not None
    assert agg.info["selected"][0] in range(5)
    assert agg.info["no_examples"] == 3
    attacker = _c(9, [1e6] * 3, 0)  # claims no data: it takes no part, and leaves no trace
    for make in (lambda: krum(1), lambda: multi_krum(1, 2), lambda: bulyan(0)):
        step = make()
        _, alone = run_round(step, step.init(P), 1, P, honest)
        _, with_it = run_round(step, step.init(P), 1, P, [*honest, attacker])
        assert alone is not None
        assert with_it is not None
        np.testing.assert_array_equal(with_it.apply(P)["w"], alone.apply(P)["w"])


def test_a_rule_short_of_updates_names_the_empty_replies() -> None:
    step = krum(1)
    replies = [_c(i, [1.0] * 3, 10) for i in range(3)] + [_empty(3), _empty(4)]
    with pytest.raises(AggregationError, match=r"got 3.*2 more have num_examples=0"):
        run_round(step, step.init(P), 1, P, replies)
    with pytest.raises(AggregationError, match="all 2 contributions have num_examples=0"):
        run_round(median(), median().init(P), 1, P, [_empty(0), _empty(1)])

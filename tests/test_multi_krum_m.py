"""A Multi-Krum ``m`` that no round of a run can reach is warned of as the run starts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import covey
from covey.aggregate import chain, clip_norm, multi_krum
from covey.deploy._servechecks import check_capacity
from covey.sim._options import _checked
from covey.strategies import Strategy

pytestmark = pytest.mark.timeout(60)


def test_a_simulation_whose_rounds_never_reach_m_plus_f_updates_warns() -> None:
    # Before: m=10 of 6 clients, f=1 averaged the 5 best every round, as m=None does,
    # without a word.
    with pytest.warns(UserWarning, match="m=10 is never used") as caught:
        _checked(covey.MultiKrum(f=1, m=10), 6, 3)
    (said,) = [str(w.message) for w in caught]
    assert said == (
        "MultiKrum: m=10 is never used: a round of n updates averages at most n - f of "
        "them, and a round here has at most 6 (num_clients=6), so each averages its 5 best, "
        "as m=None does; lower m to at most 5, or leave it out"
    )


def test_a_sample_too_small_for_m_names_the_sampling() -> None:
    strategy = covey.MultiKrum(f=1, m=8, fraction_fit=0.1, min_fit_clients=2)
    with pytest.warns(UserWarning, match=r"at most 5 \(num_clients=20, fraction_fit=0.1, min_fi"):
        _checked(strategy, 20, 3)  # 10% of 20 is 2, raised to Krum's need, 2f+3 = 5


def test_a_server_whose_max_clients_cannot_reach_m_warns() -> None:
    with pytest.warns(UserWarning, match=r"m=9 is never used: .* at most 7 \(max_clients=7\)"):
        check_capacity(covey.MultiKrum(f=2, m=9), 7)


def test_multi_krum_in_a_chain_is_found() -> None:
    strategy = Strategy(aggregator=chain(clip_norm(1.0), multi_krum(1, 6)), min_available_clients=5)
    with pytest.warns(UserWarning, match="m=6 is never used"):
        _checked(strategy, 6, 1)


@pytest.mark.parametrize(
    "strategy",
    [
        covey.MultiKrum(f=1, m=5),  # 6 clients: the 5 best of 6 are m
        covey.MultiKrum(f=1),  # n - f: nothing asked for
        covey.MultiKrum(f=1, m=1),  # Krum: reached in every round
        covey.Krum(f=1),
    ],
)
def test_an_m_some_round_reaches_is_not_warned_of(strategy: Strategy) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _checked(strategy, 6, 3)
        check_capacity(strategy, 6)


def test_multi_krum_with_m_1_keeps_krums_choice() -> None:
    # m=1 is Krum by definition (Blanchard et al.): the same update, nothing lost.
    rng = np.random.default_rng(0)
    start = {"w": np.zeros(3)}
    updates = [rng.normal(size=3) for _ in range(7)] + [np.full(3, 1e6)]
    results = [covey.FitResult(weights={"w": w}, num_examples=1) for w in updates]
    krum = covey.Krum(f=2).aggregate(start, results)["w"]
    np.testing.assert_array_equal(covey.MultiKrum(f=2, m=1).aggregate(start, results)["w"], krum)

"""A strategy that picks its clients itself cannot pass for the sampling DP accounts for.

``central`` credits Poisson sampling (and ``dp_ftrl`` a round-robin) in its
epsilon; a ``Strategy`` subclass overriding ``sample`` would have the round loop
take its clients instead, the same ones every round here, while the ledger kept
crediting the amplification.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

import covey
from covey import privacy


class _FirstThree(covey.Strategy):
    def sample(
        self, available: Sequence[int], count: int, round: int, seed: int, purpose: int
    ) -> list[int]:
        return sorted(available)[:3]


def test_central_refuses_a_strategy_that_samples_its_own_clients() -> None:
    with pytest.raises(ValueError, match=r"_FirstThree overrides sample\(\)"):
        privacy.central(
            _FirstThree(fraction_fit=0.1, min_fit_clients=0),
            noise_multiplier=1.0,
            clip=1.0,
            delta=1e-5,
            expected_clients=3,
        )


def test_dp_ftrl_refuses_a_strategy_that_samples_its_own_clients() -> None:
    with pytest.raises(ValueError, match=r"_FirstThree overrides sample\(\)"):
        privacy.dp_ftrl(_FirstThree(), noise_multiplier=1.0, clip=1.0, delta=1e-5, tree_rounds=4)


def test_a_subclass_that_keeps_the_sampling_is_accepted() -> None:
    class _Named(covey.Strategy):
        def fit_config(self, round: int) -> dict[str, int]:
            return {"round": round}

    dp = privacy.central(
        _Named(fraction_fit=0.1, min_fit_clients=0), noise_multiplier=1.0, clip=1.0, delta=1e-5
    )
    assert dp.name.startswith("DP-")


def _central(strategy: covey.Strategy) -> covey.Strategy:
    return privacy.central(strategy, noise_multiplier=1.0, clip=1.0, delta=1e-5)


def _ftrl(strategy: covey.Strategy) -> covey.Strategy:
    return privacy.dp_ftrl(strategy, noise_multiplier=1.0, clip=1.0, delta=1e-5, tree_rounds=2)


@pytest.mark.parametrize("outer", [_central, _ftrl], ids=["central", "dp_ftrl"])
@pytest.mark.parametrize("inner", [_central, _ftrl], ids=["central", "dp_ftrl"])
def test_a_strategy_with_differential_privacy_already_is_refused_when_wrapped_again(
    outer: Callable[[covey.Strategy], covey.Strategy],
    inner: Callable[[covey.Strategy], covey.Strategy],
) -> None:
    # dp_ftrl(central(...)) was built, its round-robin replacing the Poisson draw that
    # central's accountant charges, and failed only as the run started ("round 0 was
    # not sampled by the selector it installs"); central(central(...)) said "drop the
    # selector" of a user who gave none.
    wrapped = inner(covey.FedAvg(fraction_fit=0.5, min_fit_clients=0))
    with pytest.raises(ValueError, match=f"{wrapped.name} already has differential privacy"):
        outer(wrapped)

"""A strategy that picks its clients itself cannot pass for the sampling DP accounts for.

``central`` credits Poisson sampling (and ``dp_ftrl`` a round-robin) in its
epsilon; a ``Strategy`` subclass overriding ``sample`` would have the round loop
take its clients instead, the same ones every round here, while the ledger kept
crediting the amplification.
"""

from __future__ import annotations

from collections.abc import Sequence

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

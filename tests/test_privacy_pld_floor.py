"""Noise too small for the PLD accountant's grid is refused with a clear error, not an overflow.

dp-accounting's PLD accountant takes the exponential of its grid step; the step
covey gives it grows as the noise shrinks (to bound memory), and for a noise
multiplier below about 3e-5 it would pass 709 and overflow inside the library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

import covey
from covey import privacy


class _Step(covey.Client):
    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] + 0.01}, num_examples=3)


@pytest.mark.parametrize("z", [2e-5, 1e-6, 1e-12])
def test_epsilon_with_pld_refuses_noise_too_small_for_its_grid(z: float) -> None:
    with pytest.raises(ValueError, match="accountant='rdp'") as caught:
        privacy.epsilon(z, 0.5, 3, 1e-5, accountant="pld")
    assert f"{z:g}" in str(caught.value)
    assert privacy.epsilon(z, 0.5, 3, 1e-5) > 1e9  # RDP accounts it


def test_local_dp_refuses_an_epsilon_its_pld_ledger_cannot_account_when_built() -> None:
    with pytest.raises(ValueError, match=r"LocalDP\(epsilon=1e\+09\).*accountant='rdp'"):
        privacy.LocalDP(_Step(), epsilon=1e9, delta=1e-5, clip=0.5)
    client = privacy.LocalDP(_Step(), epsilon=1e9, delta=1e-5, clip=0.5, accountant="rdp")
    result = client.fit({"w": np.zeros(3)}, {"round": 1})
    spent = result.metrics["dp_epsilon"]
    assert isinstance(spent, float)
    assert spent >= 1e9


def test_central_with_pld_refuses_noise_too_small_for_its_grid() -> None:
    with pytest.raises(ValueError, match=r"noise_multiplier=1e-06.*accountant='rdp'"):
        privacy.central(
            covey.FedAvg(fraction_fit=0.5),
            noise_multiplier=1e-6,
            clip=1.0,
            delta=1e-5,
            accountant="pld",
        )
    privacy.central(covey.FedAvg(fraction_fit=0.5), noise_multiplier=1e-6, clip=1.0, delta=1e-5)

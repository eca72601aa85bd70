"""LocalDP sites with equal PLD ledgers compute their epsilon once, not once per site.

A PLD epsilon takes seconds to compose (tens of seconds at a large epsilon on a
busy machine): ten sites each composing the same ledger every round made a
three-round LocalDP simulation of ten clients take minutes of accounting alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

import covey
from covey import privacy
from covey.privacy import _accounting


class _Step(covey.Client):
    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] + 0.01}, num_examples=3)


def test_sites_with_equal_pld_ledgers_compose_the_distribution_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float] = []
    real = _accounting.epsilon_of

    def counted(*args: Any, **kwargs: Any) -> float:
        calls.append(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(_accounting, "epsilon_of", counted)
    # an epsilon no other test asks for, so that nothing is cached before this test
    sites = [privacy.LocalDP(_Step(), epsilon=1.234, delta=1e-5, clip=0.5) for _ in range(4)]
    spent = [
        float(site.fit({"w": np.zeros(3)}, {"round": 1}).metrics["dp_epsilon"]) for site in sites
    ]
    assert len(calls) == 1
    assert spent == [spent[0]] * 4
    assert spent[0] == pytest.approx(1.234, rel=1e-3)
    again = [
        float(site.fit({"w": np.zeros(3)}, {"round": 2}).metrics["dp_epsilon"]) for site in sites
    ]
    assert len(calls) == 2  # a second round's ledger is another one
    assert again == [again[0]] * 4
    assert again[0] > spent[0]

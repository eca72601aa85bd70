"""The process backend under failure: stuck clients."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

import covey
from covey import FitResult


class Stuck(covey.Client):
    """Client 3 never returns from its fit in round 2."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> FitResult:
        if self.cid == 3 and config["round"] == 2:
            time.sleep(3600)
        return FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


@pytest.mark.slow
def test_a_worker_stuck_past_the_deadline_is_replaced(shm_files: list[str]) -> None:
    result = covey.simulate(
        Stuck,
        6,
        3,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        backend="process",
        num_workers=2,
        round_timeout=2.0,
    )
    # Worker 1 holds clients 1, 3, 5: 1 replied, 3 is stuck, 5 waits behind it.
    record = result.history[2]
    assert record.fit_participants == [0, 1, 2, 4]
    assert [f.cid for f in record.fit_failures] == [3, 5]
    for failure in record.fit_failures:
        assert "no reply in time" in failure.error
        assert "timeout of 2 s" in failure.error
    # The stuck worker was stopped and replaced: the next round has every client.
    assert result.history[3].fit_participants == list(range(6))

"""A client's error text of megabytes is kept as its start and end, not in full.

A ``fit`` raising a 20 MB message kept 20 MB per failure in the run's history
(the process grew by about 400 MB over 10 failures), and sent it whole from a
worker process. A failure keeps the start and the end of its text: the end
names what was raised.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytest

import covey
from covey.core import Failure
from covey.core._roundrecord import ERROR_CHARS, TRACEBACK_CHARS

pytestmark = pytest.mark.timeout(120)

HUGE = 5_000_000


class Loud(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        if config["round"] == 1 and self.cid == 0:
            raise RuntimeError("start " + "x" * HUGE + " the end")
        return covey.FitResult(weights=weights, num_examples=1)


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_huge_error_message_is_kept_as_its_start_and_end(
    backend: Literal["inline", "process"],
) -> None:
    result = covey.simulate(
        Loud,
        4,
        2,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(3)},
        backend=backend,
        num_workers=1,
        round_timeout=60,
    )
    failures = result.history.rounds[1].fit_failures
    assert len(failures) == 1
    for failure in failures:
        assert len(failure.error) <= ERROR_CHARS
        assert len(failure.traceback) <= TRACEBACK_CHARS
        assert failure.error.startswith("RuntimeError: start xxx")
        assert "characters cut" in failure.traceback
        assert "Traceback (most recent call last)" in failure.traceback
        assert failure.traceback.rstrip().endswith("the end")
    assert result.history.rounds[2].aggregated


def test_a_failure_made_by_hand_is_clipped_too() -> None:
    failure = Failure(0, "fit", "e" * 10_000, "t" * 100_000)
    assert len(failure.error) <= ERROR_CHARS
    assert len(failure.traceback) <= TRACEBACK_CHARS
    assert Failure(0, "fit", "short", "also short").traceback == "also short"
    again = Failure(0, "fit", failure.error, failure.traceback)  # read back from a history
    assert (again.error, again.traceback) == (failure.error, failure.traceback)

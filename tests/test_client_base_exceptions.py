"""A deployed client whose fit raises what is no Exception fails that task and stays useful.

``sys.exit()`` in a client's ``fit`` (a script's helper, argparse) or an
asyncio ``CancelledError`` leaked by its event loop ended the client's task
thread: the client stayed connected and heartbeating, never replied, and was
"busy" for every later round. A server without ``--round-timeout`` waited for
that reply for ever.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

import covey

sys.path.insert(0, str(Path(__file__).parent))
from _live import Fit, Joined, Served

pytestmark = pytest.mark.timeout(120)


class Leaving(covey.Client):
    """Raises ``error`` in its fit of round 1, and trains (adds one) in every other round."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        if config["round"] == 1:
            raise self.error
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (SystemExit(3), "called sys.exit(3) (SystemExit) in its fit task"),
        (asyncio.CancelledError(), "raised CancelledError, which is no Exception,"),
    ],
)
def test_a_client_raising_a_base_exception_in_fit_fails_the_task_and_goes_on(
    error: BaseException, said: str
) -> None:
    strategy = covey.FedAvg(min_available_clients=2, min_fit_clients=1, fraction_evaluate=0.0)
    # The round timeout only bounds the test: the failed task's reply comes at once.
    served = Served(strategy, 2, round_timeout=20.0)
    site = Joined(served.port, Leaving(error), name="site")
    steady = Joined(served.port, Fit(), name="steady")
    result = served.join(90)
    site.join()
    steady.join()
    first, second = result.history[1], result.history[2]
    names = result.history.clients
    failures = {names[f.cid]: f for f in first.fit_failures}
    assert list(failures) == ["site"]
    assert said in failures["site"].error
    assert "the task fails and this client goes on" in failures["site"].error
    assert type(error).__name__ in (failures["site"].traceback or "")
    # not left "busy" with a task it will never finish: it trains in round 2
    assert sorted(names[c] for c in second.fit_participants) == ["site", "steady"]
    assert not second.fit_failures
    assert site.error is None
    assert steady.error is None

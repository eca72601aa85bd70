"""The process backend drops the replies of an exchange given up on, saying so at DEBUG."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

import covey
from covey import FitResult
from covey.core import Task
from covey.sim import ProcessTransport


class Rounds(covey.Client):
    """Returns the round its task was sent in, as its weights and its metric."""

    def fit(self, weights: Any, config: Any) -> FitResult:
        r = config["r"]
        return FitResult(weights={"w": np.full(2, float(r))}, num_examples=1, metrics={"r": r})


def _tasks(r: int, cids: list[int]) -> dict[int, Task]:
    return {cid: Task("fit", r, {"r": r}, {"w": np.zeros(2)}) for cid in cids}


def test_a_reply_of_an_exchange_given_up_on_is_dropped_with_a_debug_line(
    shm_files: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with ProcessTransport(lambda cid: Rounds(), 2, num_workers=1) as transport:
        first: Any = transport.exchange(_tasks(1, [0, 1]))  # a generator, to be closed
        assert next(first).cid == 0
        first.close()  # its reader gave up on it: client 1's reply is still to come
        with caplog.at_level(logging.DEBUG, logger="covey"):
            replies = list(transport.exchange(_tasks(2, [1])))
    [reply] = replies
    assert reply.ok, reply.error
    assert reply.cid == 1
    assert reply.result.metrics == {"r": 2}  # the current round's, not the one queued before
    assert np.array_equal(reply.result.weights["w"], [2.0, 2.0])
    reply.release()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "worker 0: dropping a stale fit reply of client 1 from exchange 1" in "\n".join(said)

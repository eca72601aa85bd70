"""A deployed client names the unit of a failed task's number: a round, or an update."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.core._messages import Task
from covey.transport.grpc._server import GrpcServerTransport

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, next_reply

pytestmark = pytest.mark.timeout(120)

MODEL = {"w": np.zeros(4)}


class _Fails(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        raise RuntimeError("out of data")


def _failed_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "failed: " in r.getMessage()]


def test_a_failed_task_of_an_asynchronous_run_is_named_by_its_update(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    client = Joined(transport.port, _Fails(), name="fails", max_attempts=1)
    try:
        with caplog.at_level(logging.WARNING, logger="covey"):
            assert transport.wait_for_clients(1, 20)
            (cid,) = transport.clients()
            transport.submit(cid, Task("fit", 7, {}, MODEL))  # as the FedBuff loop does
            assert "out of data" in (next_reply(transport).error or "")
            replies: list[Any] = []
            exchange = threading.Thread(
                target=lambda: replies.extend(
                    # its header carries no unit, as every header of an older server
                    transport.exchange({cid: Task("fit", 3, {}, MODEL)}, timeout=60)
                )
            )
            exchange.start()
            exchange.join(60)
            assert "out of data" in (replies[0].error or "")
        lines = _failed_lines(caplog)
        assert lines[0].startswith("task fit of update 7 failed: ")
        assert lines[1].startswith("task fit of round 3 failed: ")
    finally:
        transport.close()
        client.join(30)

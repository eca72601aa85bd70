"""Which failed attempts in a row a waiting client or site logs, as docs/analytics.md says.

The guide said a site waiting for its query server "logs each attempt"; it logs
the first five failures in a row, then the 8th, 16th, 32nd..., each with its count
(the others at DEBUG), so a site left waiting for days does not fill its log.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from covey.transport.grpc._attempt import log_retry

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "analytics.md"


def test_a_waiting_site_logs_the_first_five_failures_then_powers_of_two(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="covey"):
        for failures in range(1, 40):
            log_retry(failures, "could not connect to {}", "127.0.0.1:1", "refused", 30.0)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    counts = [1] + [int(m.split("(")[2].split(" ")[0]) for m in logged[1:]]
    assert counts == [1, 2, 3, 4, 5, 8, 16, 32]
    text = " ".join(GUIDE.read_text(encoding="utf-8").split())
    assert "logs the first five attempts that fail in a row, then the 8th, 16th, 32nd" in text
    assert "logs each attempt" not in text

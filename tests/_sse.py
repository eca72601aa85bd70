"""Reading the dashboard's server-sent event stream in tests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any


def next_event(stream: Iterable[bytes], within: float | None = None) -> tuple[str, Any]:
    """The next event of an SSE stream: its name and its JSON data.

    With ``within``, fail if no event came in that many seconds (the stream's
    keep-alive comments come every few seconds, so the wait ends soon after).
    """
    kind, data = "", None
    deadline = None if within is None else time.monotonic() + within
    for raw in stream:
        if deadline is not None and time.monotonic() > deadline:
            raise AssertionError(f"no event in {within} s")
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif not line and kind:
            return kind, data
    raise AssertionError("the event stream ended")

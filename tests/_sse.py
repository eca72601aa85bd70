"""Reading the dashboard's server-sent event stream in tests."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def next_event(stream: Iterable[bytes]) -> tuple[str, Any]:
    """The next event of an SSE stream: its name and its JSON data."""
    kind, data = "", None
    for raw in stream:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif not line and kind:
            return kind, data
    raise AssertionError("the event stream ended")

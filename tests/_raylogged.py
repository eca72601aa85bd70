"""A client wrapper that logs where and when each fit ran, for the Ray cluster tests."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import covey
from covey import FitResult


class Logged(covey.Client):
    """Wraps a client: records (cid, start, end, pid, node) of every fit in a shared folder."""

    def __init__(self, inner: Any, cid: int, log_dir: str, sleep: float = 0.0) -> None:
        self.inner = inner
        self.cid = cid
        self.log_dir = log_dir
        self.sleep = sleep

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        start = time.time()
        if self.sleep:
            time.sleep(self.sleep)
        result = self.inner.fit(weights, config)
        import ray

        node = ray.get_runtime_context().get_node_id()
        row: dict[str, Any] = {"cid": self.cid, "start": start, "end": time.time()}
        row["pid"] = os.getpid()
        row["node"] = node
        path = Path(self.log_dir) / f"{self.cid}-{config['round']}.json"
        path.write_text(json.dumps(row))
        return result

    def evaluate(self, weights: Any, config: dict[str, Any]) -> Any:
        return self.inner.evaluate(weights, config)


def read_log(log_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(log_dir.glob("*.json"))]


def most_at_once(rows: list[dict[str, Any]]) -> int:
    """The most intervals [start, end) that overlap at one instant."""
    events = sorted([(r["start"], 1) for r in rows] + [(r["end"], -1) for r in rows])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best

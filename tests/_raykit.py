"""A client and a process listing shared by the tests of a local Ray's actors and start-up."""

from __future__ import annotations

from typing import Any

import psutil

import covey
from covey import FitResult


class Plus(covey.Client):
    """Adds its id to the weights."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights={"w": weights["w"] + self.cid}, num_examples=1)


def ray_children() -> list[int]:
    """PIDs of this process's descendants that belong to a Ray (raylet, GCS, workers, agents)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "ray" in line:
            found.append(child.pid)
    return found

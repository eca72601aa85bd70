"""A large model (COVEY_TEST_MB megabytes of float32) for the transport's size tests.

Client k returns the global weights plus one; the server records its peak
memory after every round in COVEY_TEST_MARKERS/server-peak.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

import covey
from covey.deploy import ServerApp

SIZE = int(float(os.environ.get("COVEY_TEST_MB", "300")) * 2**20) // 4


class Plus(covey.Client):
    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] + np.float32(1)}, num_examples=1)


def client_fn(cid: int) -> Plus:
    return Plus()


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def central(rnd: int, weights: covey.Weights) -> tuple[float, dict[str, Any]]:
    markers = os.environ.get("COVEY_TEST_MARKERS")
    if markers:
        Path(markers, "server-peak").write_text(str(peak_rss()))
    return 0.0, {"mean": float(weights["w"][:: 1 << 16].mean())}


def server_app() -> ServerApp:
    return ServerApp(
        strategy=covey.FedAvg(fraction_fit=1.0, min_fit_clients=2, fraction_evaluate=0.0),
        initial_weights=lambda: {"w": np.zeros(SIZE, dtype=np.float32)},
        rounds=2,
        evaluate_fn=central,
    )

"""Results near each limit on a client's result, by client: one table for every backend.

Used by ``test_result_limits_alike`` (inline, process, deployed) and ``test_ray``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import covey
from covey.core._weights import WeightsSpec
from covey.transport.grpc._wire import WireError, WireLimits, result_to_wire

MB = 1 << 20
MODEL_SIZE = 5000  # elements: above the smallest cap on arrays (4096), far below 1 Mi


def model() -> dict[str, Any]:
    return {"w": np.zeros(MODEL_SIZE)}


NEAR: dict[int, tuple[bool, dict[str, Any]]] = {
    0: (True, {}),
    1: (True, {f"s{i}": "x" * 1_000_000 for i in range(3)}),  # 3 MB of JSON
    2: (False, {f"s{i}": "x" * 1_000_000 for i in range(5)}),  # 5 MB: over 4 MiB
    3: (True, {"s": "x" * MB}),  # the longest string
    4: (False, {"s": "x" * (MB + 1)}),
    5: (True, {"hist": np.zeros(MODEL_SIZE)}),  # an array as large as the model
    6: (False, {"hist": np.zeros(MODEL_SIZE + 1)}),
    7: (False, {"a": np.zeros(MODEL_SIZE // 2 + 1), "b": np.zeros(MODEL_SIZE // 2)}),
    8: (True, {"deep": np.zeros((1,) * 29)}),
    9: (False, {"deep": np.zeros((1,) * 30)}),
}
"""By client: whether a deployed server accepts its fit result's metrics, and the metrics."""


class Near(covey.Client):
    """Client ``cid`` reports ``NEAR[cid]``'s metrics with its update."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        update = {"w": np.full(MODEL_SIZE, float(self.cid))}
        return covey.FitResult(delta=update, num_examples=1, metrics=NEAR[self.cid][1])


def result(cid: int) -> covey.FitResult:
    return Near(cid).fit(model(), {})


SERVER = WireLimits.for_spec(WeightsSpec.of(model()))
"""What a deployed server reads its clients' results with once it has sent the model."""


def refused(cid: int) -> str | None:
    """The failure client ``cid``'s result is sent as over the network, None if it is sent.

    A deployed client checks it against the server's limits (those of the model its
    task carried) before sending, so that the server never refuses what it is sent.
    """
    try:
        result_to_wire(result(cid), SERVER)
    except WireError as exc:
        return f"cannot send the result: {exc}"
    return None

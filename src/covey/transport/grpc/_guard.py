"""What a client accepts from its server, and the properties it reports.

A client allocates the buffer for a task's arrays when the task's header
announces their size, so that size is checked first: against the model's
layout when the client was given it, else against a fixed cap. Arrays inside a
task's JSON config are capped by :class:`~covey.transport.grpc._wire.WireLimits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from covey.core import _codec
from covey.core._weights import WeightsSpec
from covey.transport.grpc import _wire
from covey.transport.grpc.proto import covey_pb2 as pb

__all__ = ["MAX_TASK_BYTES", "TaskLimits", "WithProperties"]

MAX_TASK_BYTES = 4 * 1024**3  # what a client accepts when it is given no spec


@dataclass(frozen=True)
class TaskLimits:
    """What a client accepts from its server: bytes of a task, sizes inside its JSON."""

    max_bytes: int
    wire: _wire.WireLimits

    @classmethod
    def of(cls, spec: WeightsSpec | None, max_bytes: int) -> TaskLimits:
        """The limits for a client given ``spec`` (or none) and a cap of ``max_bytes``."""
        if spec is not None:
            # The model, once more for extra arrays of its shape (e.g. SCAFFOLD's
            # control variate), and room for the names of those arrays.
            model = _codec.encoded_size(
                {
                    n: np.broadcast_to(np.zeros((), d), s)
                    for n, s, d in zip(spec.names, spec.shapes, spec.dtypes, strict=True)
                }
            )
            max_bytes = min(max_bytes, 2 * model + 1024 * 1024)
        return cls(max_bytes, _wire.WireLimits.for_spec(spec))

    def check(self, header: pb.TaskHeader) -> int:
        """The bytes a task announces, refused (ConnectionError) over the limit."""
        size = int(header.weights_size) + int(header.extras_size)
        if size > self.max_bytes:
            raise ConnectionError(
                f"the server announced a {header.kind} task of {size} bytes, more than this "
                f"client accepts ({self.max_bytes} bytes); refusing it"
            )
        return size


class WithProperties:
    """A client whose ``properties()`` adds ``connect(properties=...)`` to its own."""

    def __init__(self, client: Any, properties: dict[str, Any]) -> None:
        self._client = client
        self._properties = properties

    def properties(self) -> dict[str, Any]:
        own = self._client.properties() if hasattr(self._client, "properties") else {}
        return {**dict(own), **self._properties}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

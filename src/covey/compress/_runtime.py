"""Compressed fit rounds: the client-side encoder and the server-side decoder.

The server side is :class:`CompressedTransport`, wrapped around any
transport: it turns each ``"fit"`` task into a ``"fit_compressed"`` task
carrying the scheme, and each encoded reply back into the
:class:`~covey.FitResult` (a delta) that the round loop and every aggregation
step expect. So compression composes with every strategy that runs its fit
round through ``Transport.exchange``. The client side is the
``"fit_compressed"`` task kind registered here: it runs the client's ``fit``,
takes the delta, keeps top-k's error feedback on the client, and encodes.

The wrapper also counts the array bytes of every exchange, both ways, so
that a simulation can record bytes per round in its history.
"""

from __future__ import annotations

import traceback
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from covey.clients._client import register_task
from covey.compress._schemes import Encoded, Scheme, TopK, topk_with_feedback
from covey.core._messages import FitResult, Reply, Task
from covey.core._weights import Weights, WeightsSpec, subtract

KIND = "fit_compressed"


@dataclass(frozen=True)
class CompressedFitPayload:
    """What a ``"fit_compressed"`` task carries besides the weights.

    Args:
        scheme: How to encode the update.
        seed: Seeds stochastic rounding, with the round and ``cid``.
        cid: The client's id.
        extras: The ``"fit"`` task's own payload (broadcast arrays), or None.
    """

    scheme: Scheme
    seed: int
    cid: int
    extras: Any = None


# Top-k's error feedback, kept on the client side for each client object.
_residuals: weakref.WeakKeyDictionary[Any, dict[str, np.ndarray]] = weakref.WeakKeyDictionary()
_residuals_by_id: dict[int, dict[str, np.ndarray]] = {}


def _residual(client: Any) -> dict[str, np.ndarray] | None:
    try:
        return _residuals.get(client)
    except TypeError:  # an object that takes no weak reference
        return _residuals_by_id.get(id(client))


def _keep_residual(client: Any, residual: dict[str, np.ndarray]) -> None:
    try:
        _residuals[client] = residual
    except TypeError:
        _residuals_by_id[id(client)] = residual


def _fit_compressed(client: Any, task: Task) -> Encoded:
    """Run ``client.fit`` and encode its update (the task handler of ``"fit_compressed"``)."""
    payload = task.payload
    if not isinstance(payload, CompressedFitPayload) or task.weights is None:
        raise TypeError("a fit_compressed task needs weights and a CompressedFitPayload")
    config = dict(task.config)
    config["round"] = task.round
    if payload.extras is not None:
        config["extras"] = payload.extras
    result = client.fit(task.weights, config)
    if not isinstance(result, FitResult):
        raise TypeError(
            f"{type(client).__name__}.fit() returned {type(result).__name__}, "
            "expected covey.FitResult"
        )
    delta = result.delta
    if delta is None:
        weights: Weights = result.weights  # type: ignore[assignment]
        delta = subtract(weights, task.weights)
    scheme = payload.scheme
    if isinstance(scheme, TopK):
        spec = WeightsSpec.of(task.weights)
        parts, residual = topk_with_feedback(scheme, delta, _residual(client), spec)
        _keep_residual(client, residual)
    else:
        rng = np.random.default_rng([payload.seed, task.round, payload.cid])
        parts = scheme.encode(delta, rng)
    return Encoded(scheme.name, parts, result.num_examples, dict(result.metrics), result.extras)


register_task(KIND, _fit_compressed)


def _nbytes(weights: Weights | None) -> int:
    return 0 if weights is None else sum(int(a.nbytes) for a in weights.values())


def _result_nbytes(result: Any) -> int:
    if isinstance(result, Encoded):
        return result.nbytes
    if isinstance(result, FitResult):
        up = _nbytes(result.weights) + _nbytes(result.delta)
        return up + sum(_nbytes(w) for w in result.extras.values())
    return 0


class CompressedTransport:
    """A transport whose fit rounds travel compressed; counts bytes both ways.

    Args:
        inner: The transport that reaches the clients.
        scheme: How clients encode their updates (None: no rewriting, only counting).
        seed: Seeds the clients' stochastic rounding.
    """

    def __init__(self, inner: Any, scheme: Scheme | None, *, seed: int = 0) -> None:
        self.inner = inner
        self.scheme = scheme
        self.seed = seed
        self.bytes_sent = 0
        self.bytes_received = 0
        self.num_workers = int(getattr(inner, "num_workers", 0))

    def clients(self) -> Sequence[int]:
        """The inner transport's clients."""
        clients: Sequence[int] = self.inner.clients()
        return clients

    def take_counts(self) -> tuple[int, int]:
        """``(bytes sent, bytes received)`` since the last call, and reset them."""
        counts = (self.bytes_sent, self.bytes_received)
        self.bytes_sent = self.bytes_received = 0
        return counts

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        """Send ``tasks`` (fit tasks compressed) and yield decoded replies."""
        sizes: dict[int, int] = {}
        out: dict[int, Task] = {}
        specs: dict[int, WeightsSpec] = {}
        for cid, task in tasks.items():
            size = sizes.get(id(task))
            if size is None:
                extras = task.payload if task.kind == "fit" and task.payload else {}
                size = _nbytes(task.weights) + sum(_nbytes(w) for w in extras.values())
                sizes[id(task)] = size
            self.bytes_sent += size
            if task.kind == "fit" and self.scheme is not None and task.weights is not None:
                if id(task) not in specs:
                    specs[id(task)] = WeightsSpec.of(task.weights)
                payload = CompressedFitPayload(self.scheme, self.seed, cid, task.payload)
                out[cid] = Task(KIND, task.round, task.config, task.weights, payload)
            else:
                out[cid] = task
        for reply in self.inner.exchange(out, timeout=timeout):
            self.bytes_received += _result_nbytes(reply.result)
            if reply.kind == KIND:
                spec = specs.get(id(tasks.get(reply.cid)))
                yield self._decode(reply, spec)
            else:
                yield reply

    def _decode(self, reply: Reply, spec: WeightsSpec | None) -> Reply:
        """The reply to a compressed fit task as the plain fit reply the loop expects."""
        if reply.error is not None:
            return Reply(reply.cid, "fit", error=reply.error)
        encoded = reply.result
        try:
            if not isinstance(encoded, Encoded) or spec is None or self.scheme is None:
                raise TypeError(f"reply is {type(encoded).__name__}, expected an encoded update")
            if encoded.scheme != self.scheme.name:
                raise ValueError(
                    f"update encoded with {encoded.scheme!r}, not {self.scheme.name!r}"
                )
            delta = self.scheme.decode(encoded.parts, spec)
            result = FitResult(
                delta=delta,
                num_examples=encoded.num_examples,
                metrics=encoded.metrics,
                extras=encoded.extras,
            )
        except (TypeError, ValueError):
            return Reply(reply.cid, "fit", error=traceback.format_exc())
        return Reply(reply.cid, "fit", result=result)

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()

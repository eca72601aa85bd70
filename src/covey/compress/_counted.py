"""Bytes of an asynchronous run's exchanges, counted as tasks leave and replies arrive.

A served asynchronous run (FedBuff over the network) sends single tasks and
takes replies one at a time through an :class:`~covey.transport.AsyncTransport`;
:class:`CountedAsyncTransport` wraps it and counts the array bytes both ways,
as :class:`~covey.compress.CompressedTransport` counts a synchronous round's,
and given a scheme it compresses each fit task's update as that one does.
"""

from __future__ import annotations

from typing import Any

from covey.compress._plain import check_scheme, plain_nbytes
from covey.compress._runtime import decode_reply
from covey.compress._schemes import Scheme
from covey.compress._task import KIND, compressed_task, scheme_value
from covey.compress._wrapper import CountingWrapper, result_nbytes, task_nbytes
from covey.core._messages import Reply, Task
from covey.core._weights import WeightsSpec


class CountedAsyncTransport(CountingWrapper):
    """An asynchronous transport whose tasks and replies are counted in bytes, and compressed.

    Counted are the arrays of each task submitted (the weights and the arrays
    sent besides them) and of each reply taken (its weights or delta and
    extras; an encoded update's parts); :meth:`take_counts` hands over what was
    counted since its last call, which a run records in each global update. A
    task later cancelled was sent all the same and stays counted, one the inner
    transport says never reached its client (its ``reached(cid)`` false once the
    client's failed reply came) is taken back; a failed reply carries no arrays.

    With a ``scheme``, each fit task goes out as a ``"fit_compressed"`` task
    and its client's encoded update comes back as the plain fit reply (a delta
    from the model that task carried) the loop expects; a malformed one is that
    client's failed reply, as in a synchronous round.

    Args:
        inner: The transport that reaches the clients.
        scheme: How clients encode their updates (None: no rewriting, only counting).
        seed: Seeds the clients' stochastic rounding.
        run: A token naming this run (see :class:`~covey.compress.CompressedTransport`).

    Raises:
        TypeError: ``scheme`` lacks ``name``, ``encode`` or ``decode``, or its
            ``name`` is not a str.
    """

    def __init__(
        self, inner: Any, scheme: Scheme | None = None, *, seed: int = 0, run: str | None = None
    ) -> None:
        check_scheme(scheme)
        self.inner = inner
        self.bytes_sent = 0
        self.bytes_received = 0
        self.scheme = scheme
        self.seed = seed
        self.run = run
        self._carried = None if scheme is None else scheme_value(scheme)
        # The layout of the model each client's compressed task carried and the task's
        # update, until it replies.
        self._specs: dict[int, tuple[WeightsSpec, int]] = {}
        self._spec: WeightsSpec | None = None
        # The bytes of each client's latest task, taken back if it never reached the client.
        self._sent: dict[int, int] = {}

    def submit(self, cid: int, task: Task, *, timeout: float | None = None) -> None:
        """Send ``task`` to ``cid`` (compressed, with a scheme) and count its arrays."""
        sent = task
        self._specs.pop(cid, None)
        if task.kind == "fit" and self._carried is not None and task.weights is not None:
            spec = self._spec
            if spec is None or not spec.conforms(task.weights, finite=False):
                spec = self._spec = WeightsSpec.of(task.weights)
            name = getattr(self.inner, "client_name", None)  # a deployed client's, in its errors
            who = name(cid) if name is not None else None
            sent = compressed_task(task, self._carried, self.seed, cid, self.run, who)
            self._specs[cid] = (spec, task.round)
        self.inner.submit(cid, sent, timeout=timeout)
        size = self._sent[cid] = task_nbytes(task)
        self.bytes_sent += size

    def next_reply(self, timeout: float | None = None) -> Reply | None:
        """The next reply, decoded if it is an encoded update; its arrays counted."""
        reply: Reply | None = self.inner.next_reply(timeout)
        if reply is None:
            return None
        size = self._sent.pop(reply.cid, 0)
        reached = getattr(self.inner, "reached", None)
        if reply.error is not None and reached is not None and not reached(reply.cid):
            self.bytes_sent -= size  # held back while the client was busy, never sent
        if reply.kind == KIND:
            self.bytes_received += plain_nbytes(reply.result)
            spec, rnd = self._specs.pop(reply.cid, (None, 0))
            decoded = decode_reply(reply, self.scheme, spec)
            if decoded.error is not None and reply.error is None and spec is not None:
                self.refused(reply.cid, rnd, decoded.error, unit="update")  # its site is told
            return decoded
        if reply.error is None and reply.result is not None:
            self.bytes_received += result_nbytes(reply.result)
        return reply

    def cancel(self, cid: int) -> None:
        """Forget ``cid``'s task in flight (its bytes, sent, stay counted)."""
        self._specs.pop(cid, None)
        self._sent.pop(cid, None)
        self.inner.cancel(cid)

    def now(self) -> float:
        """Seconds on the inner transport's clock."""
        return float(self.inner.now())

    def close(self, *args: Any, **kwargs: Any) -> None:
        """Close the inner transport (with whatever it takes, e.g. a reason)."""
        self.inner.close(*args, **kwargs)

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

import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from covey.clients._client import lend, register_builtin
from covey.clients._mistakes import ResultRefused, call_fit
from covey.compress._feedback import topk_with_feedback
from covey.compress._intwrap import refuse_wrapped
from covey.compress._ownscheme import check_parts, decoded
from covey.compress._plain import (
    check_scheme,
    encoded_from_plain,
    encoded_to_plain,
    plain_nbytes,
    scheme_spec,
)
from covey.compress._schemes import Encoded, Scheme, TopK
from covey.compress._task import KIND, CompressedFitPayload, compressed_task, scheme_value
from covey.compress._wrapper import CountingWrapper, result_nbytes, task_nbytes
from covey.core._messages import FitResult, Reply, Task, fit_nbytes
from covey.core._replay import ByRound
from covey.core._weights import Weights, WeightsError, WeightsSpec, subtract

# Top-k's error feedback, kept on the client side for each client object and client id
# (one object may serve several ids) within one run, and gone with the object. Each
# residual keeps the ones before its last rounds: a round a resumed server sends again
# starts from the residual it started from the first time.
_Residuals = dict[int, ByRound[dict[str, np.ndarray]]]
_residuals: weakref.WeakKeyDictionary[Any, tuple[str | None, _Residuals]] = (
    weakref.WeakKeyDictionary()
)


def _residuals_of(client: Any, run: str | None) -> _Residuals:
    """The residuals ``client`` keeps by client id in ``run`` (those of another run dropped)."""
    try:
        kept = _residuals.get(client)
    except TypeError:
        raise TypeError(_NO_WEAKREF.format(type(client).__name__)) from None
    if kept is None or kept[0] != run:
        kept = (run, {})
        _residuals[client] = kept
    return kept[1]


# Keyed by id() instead, a client built later at a freed client's address (client_cache=0,
# or the next run in this process) would take over that client's residual.
_NO_WEAKREF = (
    "top-k's error feedback is kept per client object, and a {0} takes no weak "
    "reference: add '__weakref__' to {0}.__slots__ (or subclass covey.Client)"
)


def _fit_compressed(client: Any, task: Task) -> dict[str, Any]:
    """Run ``client.fit`` and encode its update (the task handler of ``"fit_compressed"``).

    Returns the encoded update as plain data (:func:`~covey.compress.encoded_to_plain`).
    """
    payload, config = CompressedFitPayload.of(task)
    weights_in: Weights = task.weights  # type: ignore[assignment]  # checked by of()
    config["round"] = task.round
    if payload.extras is not None:
        config["extras"] = payload.extras
    result = call_fit(client, lend(client, weights_in), config)  # weights_in used below
    # Checked as the server checks an uncompressed update: the encodings are flat, so
    # the server could not tell an update of another shape (or dtype) of the same size.
    spec = _spec_of(weights_in)
    delta = result.delta
    if delta is None:
        weights: Weights = result.weights  # type: ignore[assignment]
        _check_update(spec, weights, "weights", payload)
        delta = subtract(weights, weights_in)
        refuse_wrapped(weights, weights_in, delta, payload.name or f"client {payload.cid}")
    else:
        _check_update(spec, delta, "delta", payload)
    scheme = payload.scheme
    if isinstance(scheme, TopK):
        residual = _residuals_of(client, payload.run).setdefault(payload.cid, ByRound())
        parts, after = topk_with_feedback(scheme, delta, residual.at(task.round), spec)
        residual.advance(task.round, after)
    else:
        rng = np.random.default_rng([payload.seed, task.round, payload.cid])
        parts = scheme.encode(delta, rng)
        if scheme_spec(scheme) is None:  # a scheme of one's own: its mistakes named
            check_parts(scheme, parts)
    encoded = Encoded(scheme.name, parts, result.num_examples, dict(result.metrics), result.extras)
    return encoded_to_plain(encoded)


#: The layout of the model the last compressed fit task carried: every client of a
#: round, and mostly of a run, gets a model laid out alike.
_last_spec: WeightsSpec | None = None


def _spec_of(weights: Weights) -> WeightsSpec:
    """``WeightsSpec.of(weights)``; the last one's if ``weights`` are laid out as it says."""
    global _last_spec
    last = _last_spec
    if last is not None and last.describes(weights):
        return last
    last = _last_spec = WeightsSpec.of(weights)
    return last


def _check_update(
    spec: WeightsSpec, update: Weights, what: str, payload: CompressedFitPayload
) -> None:
    """Refuse ``update`` (the client's weights or delta) unless it matches ``spec``.

    Refused with the words the server gives a plain update it refuses, naming the
    client as the server does (``site-1's weights: ...``), with no traceback.
    """
    if spec.conforms(update, finite=False):
        return
    who = payload.name or f"client {payload.cid}"
    try:
        spec.check(update, what=f"{who}'s {what}", finite=False)
    except WeightsError as exc:
        raise ResultRefused(str(exc)) from None


register_builtin(KIND, _fit_compressed)


def decode_reply(reply: Reply, scheme: Scheme | None, spec: WeightsSpec | None) -> Reply:
    """The reply to a compressed fit task as the plain fit reply a round loop expects.

    ``spec`` is the layout of the model the task carried (None: no such task was
    sent). A reply that is not a well-formed update in the run's ``scheme``
    becomes a failed reply of that client, naming what is wrong; nothing else
    changes.
    """
    if reply.error is not None:
        return Reply(reply.cid, "fit", error=reply.error)
    try:
        if spec is None or scheme is None:
            raise TypeError(f"a {KIND} reply from client {reply.cid}, which was sent no such task")
        encoded = encoded_from_plain(reply.result, scheme, spec)
        delta = decoded(scheme, encoded.parts, spec)
        result = FitResult(
            delta=delta,
            num_examples=encoded.num_examples,
            metrics=encoded.metrics,
            extras=encoded.extras,
        )
    except (TypeError, ValueError) as exc:
        return Reply(reply.cid, "fit", error=f"refused the encoded update: {exc}")
    return Reply(reply.cid, "fit", result=result)


class CompressedTransport(CountingWrapper):
    """A transport whose fit rounds travel compressed; counts bytes both ways.

    Counted are the bytes of the arrays of each exchange: the weights and the
    arrays broadcast with each task, once per client that receives them, and
    the arrays of each reply (an encoded update's parts, or a plain fit
    reply's weights or delta, with the arrays sent besides it). Headers,
    JSON and the transport's own framing are not counted. A task the inner
    transport says never reached its client (its ``reached(cid)`` false once
    the client's reply came: a client the simulated availability has offline)
    is not counted.

    Args:
        inner: The transport that reaches the clients.
        scheme: How clients encode their updates (None: no rewriting, only counting).
        seed: Seeds the clients' stochastic rounding.
        run: A token naming this run, sent to clients so that a client object
            starts each run without the top-k residuals of an earlier one.
        by_client: Hold each client's bytes (its last task's and the replies to it)
            until :meth:`deliver` names the client: an asynchronous simulation
            computes replies ahead of the update they arrive in.

    Raises:
        TypeError: ``scheme`` lacks ``name``, ``encode`` or ``decode``, or its
            ``name`` is not a str.
    """

    def __init__(
        self,
        inner: Any,
        scheme: Scheme | None,
        *,
        seed: int = 0,
        run: str | None = None,
        by_client: bool = False,
    ) -> None:
        check_scheme(scheme)
        self.inner = inner
        self.scheme = scheme
        self.seed = seed
        self.run = run
        self.bytes_sent = 0
        self.bytes_received = 0
        self._held: dict[int, list[int]] | None = {} if by_client else None
        self.num_workers = int(getattr(inner, "num_workers", 0))
        self._carried = None if scheme is None else scheme_value(scheme)

    def client_name(self, cid: int) -> str | None:
        """The inner transport's name for client ``cid``; None where it names none.

        Args:
            cid: The client's id.
        """
        name = getattr(self.inner, "client_name", None)
        return name(cid) if callable(name) else None

    def deliver(self, cid: int) -> None:
        """Count the bytes held for ``cid`` (with ``by_client``; a no-op otherwise).

        Args:
            cid: The client whose update the run took in: the bytes of its last
                task and of the replies to it are counted, once.
        """
        held = None if self._held is None else self._held.pop(cid, None)
        if held is not None:
            self.bytes_sent += held[0]
            self.bytes_received += held[1]

    def _count(self, cid: int, sent: int | None, received: int = 0, unsent: int = 0) -> None:
        """Count a task's bytes (``sent``) or a reply's for ``cid``, or hold them (by_client).

        ``unsent``: the bytes of ``cid``'s task, counted, that never reached it.
        """
        if self._held is None:
            self.bytes_sent += (sent or 0) - unsent
            self.bytes_received += received
        elif sent is not None:  # a new task: what an earlier one held was never delivered
            self._held[cid] = [sent, received]
        else:
            held = self._held.setdefault(cid, [0, 0])
            held[0] -= unsent
            held[1] += received

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        """Send ``tasks`` (fit tasks compressed) and yield decoded replies.

        With a scheme, each ``"fit"`` task that carries weights goes as a
        ``"fit_compressed"`` one, and its encoded reply comes back as a plain
        fit reply with a ``delta``; a reply that is no well-formed update in
        the scheme becomes a failed reply, and its client is told (see
        ``refused``). Other tasks and their replies pass as they are.

        Args:
            tasks: The task of each client, by client id.
            timeout: Seconds to wait for the replies, handed on to the inner
                transport's ``exchange`` as it is.

        Returns:
            The replies, in the order the inner transport yields them.
        """
        if self._carried is None and self._held is None:
            return self._counted(tasks, timeout)
        return self._compressed(tasks, timeout)

    def _counted(self, tasks: Mapping[int, Task], timeout: float | None) -> Iterator[Reply]:
        """:meth:`exchange` with no scheme: the tasks and replies as they are, their bytes counted.

        Counts what :meth:`_compressed` counts, each reply by :meth:`count_reply`.
        """
        self.count_sent(tasks)
        reached = getattr(self.inner, "reached", None)
        for reply in self.inner.exchange(tasks, timeout=timeout):
            self.count_reply(reply, tasks, reached)
            yield reply
            del reply  # not kept while the next client runs

    def count_sent(self, tasks: Mapping[int, Task]) -> None:
        """Count the bytes of ``tasks`` as sent (with no scheme, not held by client).

        Args:
            tasks: The tasks sent, by client id: each task's weights and (for a
                fit task) payload arrays count once per client.
        """
        sizes: dict[tuple[str, int, int], int] = {}
        sent = size = 0
        last = None
        for task in tasks.values():
            if task is not last:  # a round's clients mostly share one task object
                last = task
                key = (task.kind, id(task.weights), id(task.payload))
                size = sizes.get(key, -1)
                if size < 0:
                    size = sizes[key] = task_nbytes(task)
            sent += size
        self.bytes_sent += sent

    def count_reply(self, reply: Reply, tasks: Mapping[int, Task], reached: Any = None) -> None:
        """Count the bytes of ``reply`` to one of ``tasks`` (with no scheme, not held by client).

        A failed reply of a client that ``reached`` (the inner transport's
        ``reached(cid)``, if it has one) says its task never got to takes back
        the bytes of that task.

        Args:
            reply: A reply the inner transport gave: its result's arrays count
                as received.
            tasks: The tasks of the exchange, by client id, as given to
                :meth:`count_sent`.
            reached: The inner transport's ``reached(cid) -> bool``, or None
                (every task reached its client).
        """
        result = reply.result
        if type(result) is FitResult:
            self.bytes_received += fit_nbytes(result)
        elif reply.error is not None:
            if reached is not None and not reached(reply.cid):
                unsent = tasks.get(reply.cid)
                self.bytes_sent -= 0 if unsent is None else task_nbytes(unsent)
        elif result is not None:
            self.bytes_received += result_nbytes(result)

    def direct(self) -> Any:
        """The inner transport, when it can run one task at a time here and this one only counts.

        None unless this wrapper has no scheme and counts as each exchange goes,
        and the inner transport runs tasks in this process (it has
        ``fit_one(cid, task)``, see :class:`~covey.sim._inline.InlineTransport`): the
        round loop may then run a fit round's tasks itself, counting with
        :meth:`count_sent` and :meth:`count_reply`.
        """
        if self._carried is not None or self._held is not None:
            return None
        return self.inner if callable(getattr(self.inner, "fit_one", None)) else None

    def _compressed(self, tasks: Mapping[int, Task], timeout: float | None) -> Iterator[Reply]:
        """:meth:`exchange` with a scheme, or holding each client's bytes (``by_client``)."""
        out: dict[int, Task] = {}
        specs: dict[int, WeightsSpec] = {}
        # Keyed by the weights and payload a task carries, not the task: with per-client
        # configs each client has a task of its own, all carrying the same model.
        sizes: dict[tuple[str, int, int], int] = {}
        task_bytes: dict[int, int] = {}
        name = getattr(self.inner, "client_name", None)  # a deployed client's, in its errors
        for cid, task in tasks.items():
            key = (task.kind, id(task.weights), id(task.payload))
            size = sizes.get(key)
            if size is None:
                size = sizes[key] = task_nbytes(task)
            self._count(cid, size)
            task_bytes[cid] = size
            if task.kind == "fit" and self._carried is not None and task.weights is not None:
                if id(task.weights) not in specs:
                    specs[id(task.weights)] = WeightsSpec.of(task.weights)
                who = name(cid) if name is not None else None
                out[cid] = compressed_task(task, self._carried, self.seed, cid, self.run, who)
            else:
                out[cid] = task
        reached = getattr(self.inner, "reached", None)
        for reply in self.inner.exchange(out, timeout=timeout):
            if reply.error is not None and reached is not None and not reached(reply.cid):
                self._count(reply.cid, None, 0, unsent=task_bytes.get(reply.cid, 0))
            if reply.kind == KIND:
                self._count(reply.cid, None, plain_nbytes(reply.result))
                sent = tasks.get(reply.cid)
                spec = None if sent is None or sent.kind != "fit" else specs.get(id(sent.weights))
                decoded = decode_reply(reply, self.scheme, spec)
                if decoded.error is not None and reply.error is None and sent is not None:
                    self.refused(reply.cid, sent.round, decoded.error)  # its site is told
                yield decoded
            else:
                self._count(reply.cid, None, result_nbytes(reply.result))
                yield reply
            del reply  # not kept while the next client runs

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()

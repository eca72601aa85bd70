"""The body of a Ray backend's actor: builds clients where it runs and streams their replies.

An actor runs the clients of a call one after another and sends their replies
as a stream (the transport, in ``_ray.py``, calls :meth:`ClientHost.run` as a
Ray streaming generator): a reply sent is the driver's, whatever happens to the
actor after. Replies of clients that finish within :data:`FLUSH_SECONDS` of
the last ones sent go together, so quick clients cost no more than one
message per chunk; a client that takes longer is sent on its own at once.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from covey.clients._build import build_client
from covey.clients._client import ClientFn, run_task
from covey.core import _codec
from covey.core._messages import Reply, Task
from covey.core._weights import Weights, fingerprint
from covey.sim._inline import exited, lent_weights_changed
from covey.sim._sendable import as_received, as_sent
from covey.sim._worker import _sendable

Item = tuple[int, str, int, Mapping[str, Any], Any]

#: Seconds of client work an actor gathers before it sends the replies so far: a
#: message costs about a third of a millisecond, so sending each quick client's reply
#: alone would slow a round of cheap clients several times over. If the actor dies,
#: only the replies of the clients it finished since its last message are lost.
FLUSH_SECONDS = 0.02


class ClientHost:
    """The body of one actor: builds clients where it runs and answers their tasks.

    Args:
        client_fn: ``cid -> Client``, called in the actor the first time ``cid`` runs
            there (and again if the client was evicted from the cache).
        cache: Most clients kept built; None keeps every client built here.
    """

    def __init__(self, client_fn: ClientFn, cache: int | None) -> None:
        self._client_fn = client_fn
        self._cache = cache
        self._clients: OrderedDict[int, Any] = OrderedDict()
        self._weights: tuple[Any, Weights | None, tuple[int, ...]] = (None, None, ())

    def where(self) -> Iterator[tuple[int, str]]:
        """``(pid, node id)`` of this actor, as a stream: it opens the actor's way back."""
        import ray

        yield os.getpid(), str(ray.get_runtime_context().get_node_id())

    def _client(self, cid: int) -> Any:
        client = self._clients.get(cid)
        if client is None:
            client = build_client(self._client_fn, cid)
            if self._cache != 0:
                self._clients[cid] = client
                if self._cache is not None and len(self._clients) > self._cache:
                    self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(cid)
        return client

    def _answer(self, cid: int, task: Task) -> Reply:
        try:
            # A reply whose arrays no pickle carries would fail its whole message.
            return as_received(_sendable(run_task(self._client(cid), cid, task), task))
        except Exception:  # noqa: BLE001 - a failing client_fn or task is that client's error
            return Reply(cid, task.kind, error=traceback.format_exc())
        except KeyboardInterrupt:  # Ray cancelling the call: not the client's
            raise
        except BaseException as exc:  # noqa: BLE001 - sys.exit(), a CancelledError
            # The client's alone: left to end the actor, it would fail every client
            # of this call and the ones the actor holds, as if the actor had died.
            return Reply(cid, task.kind, error=traceback.format_exc() + exited(exc, task.kind))

    def run(
        self, token: int, encoded: Any, items: list[Item], sent: tuple[int, ...] = ()
    ) -> Iterator[list[Reply]]:
        """Run each ``(cid, kind, round, config, payload)`` item; yield their replies in order.

        Each list yielded answers the next items of the call. ``sent`` is the
        fingerprint of the weights as the driver encoded them: the object store's
        buffer is shared by the actors of a node, so one that a client changed is
        seen changed by every later client, here and in them; the replies of the
        clients run since the last check are refused then.
        """
        weights: Weights | None = None
        if encoded is not None:
            if self._weights[0] != token:
                # A read-only view of the object store's buffer: no copy.
                decoded = _codec.decode(memoryview(encoded), verify=False)
                self._weights = (token, decoded, sent or fingerprint(decoded))
            weights = self._weights[1]
        replies: list[Reply] = []
        tasks: dict[int, Task] = {}
        since = time.perf_counter()
        for n, (cid, kind, rnd, config, payload) in enumerate(items, 1):
            tasks[cid] = task = Task(kind, rnd, config, weights, as_sent(payload))
            replies.append(self._answer(cid, task))
            if n == len(items) or time.perf_counter() - since >= FLUSH_SECONDS:
                if weights is not None and fingerprint(weights) != self._weights[2]:
                    why = "their replies are refused (the server's model is unchanged)"
                    error = lent_weights_changed(tasks, why)
                    replies = [Reply(r.cid, r.kind, error=error) for r in replies]
                yield replies
                replies, tasks = [], {}
                since = time.perf_counter()

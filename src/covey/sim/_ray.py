"""The Ray backend: clients run in long-lived Ray actors, on one machine or a cluster.

Each client group (clients that need the same resources) gets a pool of actors,
each holding that group's ``num_cpus``/``num_gpus``/custom resources for the whole
run, so no more clients run at once than the resources allow. Client ``cid``
always runs in the same actor, which builds it with ``client_fn`` where it runs
(data is loaded there, never shipped from the driver) and keeps the most recent
``client_cache`` clients warm. Per round the global weights are encoded once and
put in the object store; every actor maps them read-only without copying. An
actor runs its clients in chunks and streams their replies back as they finish
(``_rayhost``); the round loop folds them in client-id order as they come.

The weights go out in covey's codec; tasks, clients and replies travel in Ray's
own serialization, so a Ray cluster must be trusted like the machine it runs on.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from covey.clients._client import ClientFn
from covey.core import _codec
from covey.core._messages import Reply, Task
from covey.core._weights import Weights, fingerprint
from covey.sim._rayhost import ClientHost, Item
from covey.sim._rayplan import (
    Resources,
    actors_for,
    check_fits,
    crowded,
    ray_need,
    start_failed,
    unanswered,
    unpicklable,
    wait_all,
)
from covey.sim._rayreplies import abandon, collect
from covey.sim._raystart import (
    check_pickles,
    ray_module,
    release_one_host,
    shutdown,
    start_or_join,
    watch_local,
)
from covey.sim._raywatch import unwatch
from covey.sim._sendable import Unsent

logger = logging.getLogger("covey")

#: Clients an actor runs per call (their replies stream back as they finish: see
#: covey.sim._rayhost.FLUSH_SECONDS); each call costs about a millisecond of its own.
#: A large round uses larger chunks (up to MAX_CHUNK), about CHUNKS_PER_ACTOR per actor.
CHUNK = 64
MAX_CHUNK = 256
CHUNKS_PER_ACTOR = 8
#: Most bytes of model a chunk's clients are sent (a chunk of fit replies holds as much):
#: a large model goes a few clients, or one, per call.
CHUNK_BYTES = 64 * 2**20
#: Seconds the actors have to start by default (``simulate(ray_start_timeout=...)``).
START_TIMEOUT = 120.0


class RayTransport:
    """Clients in long-lived Ray actors; a local Ray, or a cluster at ``address``.

    Args:
        client_fn: ``cid -> Client``; called inside the actors.
        num_clients: Clients have ids ``0 .. num_clients - 1``.
        client_resources: What one client needs, e.g. ``{"num_cpus": 1, "num_gpus": 0.5}``
            (custom resource names allowed); or, with ``client_group``, one such
            mapping per group name. Default ``{"num_cpus": 1}``.
        client_group: ``cid -> group name`` when resources differ per group; each
            resource is shared equally among the groups that need it.
        address: A running cluster to join (``"127.0.0.1:6379"``, ``"auto"``); None
            (or ``"local"``) starts a local Ray for this run and stops it at :meth:`close`.
        num_actors: Most actors per group (default: as many as the resources allow).
        client_cache: Most clients each actor keeps built (None: all; 0: build per task).
        start_timeout: Seconds a cluster at ``address`` has to answer (or a local Ray
            to start) and the actors have to start (a clear error if they cannot be
            placed, e.g. resources no node has); None: 10 s for the cluster, 120 s for
            a local Ray, :data:`START_TIMEOUT` for the actors.
        init_args: Extra keyword arguments for ``ray.init``.
    """

    def __init__(
        self,
        client_fn: ClientFn,
        num_clients: int,
        *,
        client_resources: Resources | Mapping[str, Resources] | None = None,
        client_group: Callable[[int], str] | None = None,
        address: str | None = None,
        num_actors: int | None = None,
        client_cache: int | None = None,
        start_timeout: float | None = None,
        init_args: Mapping[str, Any] | None = None,
    ) -> None:
        local = address in (None, "local")  # a Ray started for this run
        ray = ray_module(local=local)
        try:  # refused before Ray starts: what ray_module set for it is taken back
            groups = self._groups(client_resources, client_group)
            if num_actors is not None and num_actors < 1:
                raise ValueError(f"num_actors must be at least 1, got {num_actors}")
            if client_cache is not None and client_cache < 0:
                raise ValueError(f"client_cache must be >= 0 or None, got {client_cache}")
            check_pickles(ray, client_fn)
        except BaseException:
            release_one_host(ray)
            raise
        self._owns_ray = start_or_join(ray, address, init_args, start_timeout)
        self._ray = ray
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._actors: dict[str, list[Any]] = {}
        try:  # however it ends (Ctrl-C too), a Ray started here is stopped
            # A local Ray of its own ends with this process, even one killed with SIGKILL.
            self._watchdog = watch_local(ray) if self._owns_ray and local else None
            self._clients = range(num_clients)
            self._group_of = client_group
            self._client_fn = client_fn
            self._cache = client_cache
            self._start_timeout = START_TIMEOUT if start_timeout is None else start_timeout
            self._token = 0
            self._published: tuple[Weights | None, Any] = (None, None)
            self._start_actors(groups, num_actors, local)
        except BaseException:
            self.close()
            raise

    def _start_actors(
        self, groups: Mapping[str, dict[str, float]], num_actors: int | None, local: bool
    ) -> None:
        ray = self._ray
        total = ray.cluster_resources()
        if self._owns_ray and local:
            check_fits(groups, total)
        # An actor streams its replies: those it sent outlive it if it dies mid-call.
        stream = ray.method(num_returns="streaming")
        stream(ClientHost.run)
        stream(ClientHost.where)
        self._host = ray.remote(ClientHost)
        self._spec: dict[str, tuple[dict[str, float], int]] = {}
        users: dict[str, int] = {}
        for need in groups.values():
            for key, value in need.items():
                users[key] = users.get(key, 0) + (value > 0)
        for name, need in groups.items():
            count = actors_for(need, total, users)
            if num_actors is not None:
                count = min(count, num_actors)
            self._spec[name] = (need, max(1, min(count, len(self._clients))))
        many = crowded({g: c for g, (_, c) in self._spec.items()}, total.get("CPU", 0.0))
        if many is not None and num_actors is None:
            logger.warning(many)
        self._where: dict[tuple[str, int], tuple[int, str]] = {}
        # Slots whose replacement the cluster had no room for (a node left): their
        # clients run in the group's other actors.
        self._retired: set[tuple[str, int]] = set()
        for name in self._spec:
            self._actors[name] = [self._start(name, i) for i in range(self._spec[name][1])]
        self._await_ready(
            [(g, i) for g, actors in self._actors.items() for i in range(len(actors))]
        )

    @staticmethod
    def _groups(
        client_resources: Resources | Mapping[str, Resources] | None,
        client_group: Callable[[int], str] | None,
    ) -> dict[str, dict[str, float]]:
        if client_resources is None:
            client_resources = {"num_cpus": 1}
        nested = any(isinstance(v, Mapping) for v in client_resources.values())
        if nested != (client_group is not None):
            raise ValueError(
                "give client_group together with one resource mapping per group, e.g. "
                "client_resources={'big': {'num_cpus': 2}, 'small': {'num_cpus': 1}}, "
                "or a single mapping {'num_cpus': 1} without client_group"
            )
        if not nested:
            return {"": ray_need(client_resources)}  # type: ignore[arg-type]
        if not client_resources:
            raise ValueError("client_resources names no group")
        return {str(k): ray_need(v) for k, v in client_resources.items()}  # type: ignore[arg-type]

    def _start(self, group: str, index: int) -> Any:
        need = self._spec[group][0]
        options: dict[str, Any] = {"num_cpus": need.get("CPU", 0.0), "max_restarts": 0}
        if need.get("GPU"):
            options["num_gpus"] = need["GPU"]
        if need.get("memory"):
            options["memory"] = need["memory"]
        custom = {k: v for k, v in need.items() if k not in ("CPU", "GPU", "memory")}
        if custom:
            options["resources"] = custom
        try:
            return self._host.options(**options).remote(self._client_fn, self._cache)
        except TypeError as exc:
            if "serializ" not in str(exc):
                raise
            raise TypeError(unpicklable(self._client_fn, exc)) from exc

    def _await_ready(self, keys: Sequence[tuple[str, int]], *, retire: bool = False) -> None:
        """Wait for the actors of ``keys`` to start; with ``retire``, go on without late ones."""
        ray = self._ray
        refs = {self._actors[g][i].where.remote(): (g, i) for g, i in keys}  # streams
        ready, waiting = wait_all(ray, list(refs), self._start_timeout)
        if waiting:
            g, _ = refs[waiting[0]]
            why = (
                f"{len(waiting)} of {len(refs)} Ray actors did not start within "
                f"{self._start_timeout:g} s (ray_start_timeout); each needs {self._spec[g][0]} "
                f"and the cluster has {ray.cluster_resources()} (available now: "
                f"{ray.available_resources()})"
            )
            if not retire:
                raise RuntimeError(why)
            self._retire([refs[ref] for ref in waiting], why)
        for ref in ready:
            try:
                pid, node = ray.get(next(ref))
            except ray.exceptions.RayActorError as exc:
                raise RuntimeError(start_failed(self._client_fn, exc)) from exc
            self._where[refs[ref]] = (int(pid), str(node))

    @property
    def num_workers(self) -> int:
        """The number of actors over all groups."""
        return sum(
            (g, i) not in self._retired for g, a in self._actors.items() for i in range(len(a))
        )

    def clients(self) -> Sequence[int]:
        """Ids of the simulated clients."""
        return self._clients

    def _home(self, cid: int) -> tuple[str, int]:
        named = None if self._group_of is None else self._group_of(cid)
        group = "" if self._group_of is None else str(named)
        if group not in self._spec:
            # the value as returned: 1 shown as '1' read as a group name that was there
            raise ValueError(
                f"client_group({cid}) returned {named!r} ({type(named).__name__}), not one of "
                f"the groups of client_resources {sorted(self._spec)}"
            )
        count = self._spec[group][1]
        slot = cid % count
        while (group, slot) in self._retired:  # its clients go to the next slot left
            slot = (slot + 1) % count
        return group, slot

    def _publish(self, weights: Weights | None) -> tuple[int, Any, int, tuple[int, ...]]:
        """``(token, object ref, bytes, fingerprint)`` of ``weights`` in the object store."""
        if weights is None:
            return 0, None, 0, ()
        if self._published[0] is not weights:
            buffer = np.empty(_codec.encoded_size(weights), dtype=np.uint8)
            _codec.encode_into(weights, buffer.data)
            self._token += 1
            put = (self._token, self._ray.put(buffer), buffer.nbytes, fingerprint(weights))
            self._published = (weights, put)
        return self._published[1]  # type: ignore[no-any-return]

    def _revive(self) -> None:
        dead = [
            (g, i)
            for g, actors in self._actors.items()
            for i, actor in enumerate(actors)
            if actor is None and (g, i) not in self._retired
        ]
        for g, i in dead:
            logger.warning(
                "starting a new Ray actor for group %r slot %d; its clients are rebuilt", g, i
            )
            self._actors[g][i] = self._start(g, i)
        if dead:
            self._await_ready(dead, retire=True)

    def _retire(self, keys: Sequence[tuple[str, int]], why: str) -> None:
        """Give up the actor slots ``keys`` (no room in the cluster): the others take their clients.

        Raises:
            RuntimeError: ``why``, if a group is left with no actor.
        """
        for g, i in keys:
            with contextlib.suppress(Exception):
                self._ray.kill(self._actors[g][i], no_restart=True)  # cancels its placement
            self._actors[g][i] = None
            self._retired.add((g, i))
        for g in sorted({g for g, _ in keys}):
            left = [i for i in range(self._spec[g][1]) if (g, i) not in self._retired]
            if not left:
                raise RuntimeError(f"{why}; no actor of the run is left to run its clients")
            gone = sorted(i for gg, i in self._retired if gg == g)
            logger.warning(
                "%s: the run goes on with %d actor(s)%s (a node left the cluster?); the "
                "clients of slot(s) %s are rebuilt in the others",
                why,
                len(left),
                f" for group {g!r}" if g else "",
                ", ".join(map(str, gone)),
            )

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        """Send each actor its clients' tasks in chunks; yield replies as the actors send them.

        A task whose config or payload a deployed server could not send fails its
        client instead (:func:`~covey.sim._sendable.unsent`), as on every backend.
        Actors that died or were stopped are started anew first. Each model goes to
        the object store once, however many tasks carry it.

        Args:
            tasks: The task for each client, by client id; each goes to the actor
                that holds its client.
            timeout: Seconds for the whole exchange; a client not answered by then
                gets a failed reply, and its actor is stopped and replaced at the next
                exchange. None waits until every client has answered.

        Returns:
            A generator of one reply per task, failed ones included (an actor that
            died fails the clients it had not answered), in the order they come.
            Closing it early stops the actors still busy with it.

        Raises:
            ValueError: if ``client_group`` names a group ``client_resources`` lacks.
            RuntimeError: if an actor started anew cannot be placed and its group
                is left without any actor.
        """
        self._revive()
        deadline = None if timeout is None else time.monotonic() + timeout
        homes: dict[tuple[str, int, int], list[Item]] = {}
        refs: dict[int, tuple[Any, int, tuple[int, ...]]] = {0: (None, 0, ())}
        tokens: dict[int, int] = {}  # id(weights) -> token: each model goes out once
        unsendable: list[Reply] = []  # a task a deployed server could not send fails its client
        unsent = Unsent()
        for cid in sorted(tasks):
            task = tasks[cid]
            failed = unsent(cid, task)
            if failed is not None:
                unsendable.append(failed)
                continue
            token = tokens.get(id(task.weights), -1)
            if token < 0:
                token, ref, nbytes, sent = self._publish(task.weights)
                tokens[id(task.weights)] = token
                refs[token] = ref, nbytes, sent
            g, i = self._home(cid)
            homes.setdefault((g, i, token), []).append(
                (cid, task.kind, task.round, task.config, task.payload)
            )
        pending: dict[Any, tuple[str, int, list[int]]] = {}
        held: dict[tuple[str, int], list[int]] = {}
        for (g, i, token), items in homes.items():
            encoded, nbytes, sent = refs[token]
            actor = self._actors[g][i]
            held.setdefault((g, i), []).extend(c for c, *_ in items)
            size = min(MAX_CHUNK, max(CHUNK, -(-len(items) // CHUNKS_PER_ACTOR)))
            size = max(1, min(size, CHUNK_BYTES // max(1, nbytes)))
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                ref = actor.run.remote(token, encoded, chunk, sent)
                pending[ref] = (g, i, [c for c, *_ in chunk])
        late = False
        try:
            yield from unsendable
            yield from collect(self._ray, self._actors, self._where, pending, held, tasks, deadline)
            late = True  # _collect returns with calls pending only when the deadline passed
            for g, i, cids in list(pending.values()):
                if not cids:  # answered in full, its end not yet seen
                    continue
                why = unanswered(f"{g}/{i}" if g else str(i), cids, timeout)
                yield from (Reply(cid, tasks[cid].kind, error=why) for cid in cids)
        finally:
            abandon(self._ray, self._actors, pending, late)

    def close(self) -> None:
        """Stop the actors; stop Ray too if this transport started it."""
        ray = getattr(self, "_ray", None)
        if ray is None:
            return
        for actors in getattr(self, "_actors", {}).values():
            for actor in actors:
                if actor is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
        self._actors = {}
        self._published = (None, None)
        if self._owns_ray:
            self._owns_ray = False
            try:
                shutdown(ray)
            finally:
                unwatch(self._watchdog)  # after the Ray it watched

    def __enter__(self) -> RayTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

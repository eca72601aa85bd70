"""Running SecAgg+ over any transport: task handlers on clients, :func:`secure_sum` on the server.

The protocol stages (:mod:`._client_stages`, :mod:`._server_stages`) are pure;
this module carries their messages as four task kinds, ``secagg.advertise``,
``secagg.share``, ``secagg.mask`` and ``secagg.unmask``, through
:meth:`Transport.exchange`, and keeps each client's protocol state between
stages (in the process where the client lives, dropped when the run ends or a
new one starts). What a client sums is computed by an *input function*
registered under a name with :func:`register_input`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covey.clients._client import register_task
from covey.core._messages import Reply, Task
from covey.core._weights import Weights
from covey.secagg import _client_stages as cs
from covey.secagg import _server_stages as ss
from covey.secagg._dp import Noise
from covey.secagg._params import GraphPlan, ThreatModel, plan
from covey.secagg._ring import RangeError, ring_bits
from covey.transport._base import Transport

logger = logging.getLogger("covey")

InputFn = Callable[[Any, Any], np.ndarray]
"""``(client, payload) -> 1-D int64 vector`` with entries in ``[-bound, bound]``."""
TaskInputFn = Callable[[Any, Task, Any], np.ndarray]

KINDS = ("secagg.advertise", "secagg.share", "secagg.mask", "secagg.unmask")
_INPUTS: dict[str, TaskInputFn] = {}
_STATES: dict[int, cs.ClientState] = {}  # id(client) -> its state in the current run


class SecAggAbort(RuntimeError):
    """A run of secure aggregation stopped before revealing a sum.

    Attributes:
        reason: Why, e.g. too few survivors to unmask a dropped client.
        stage: The stage that stopped: ``advertise``, ``share``, ``mask`` or ``unmask``.
        dropped: Clients that dropped out or were excluded, with why.
    """

    def __init__(self, reason: str, stage: str, dropped: Mapping[int, str]) -> None:
        super().__init__(f"secure aggregation aborted in stage {stage}: {reason}")
        self.reason = reason
        self.stage = stage
        self.dropped = dict(dropped)


@dataclass(frozen=True)
class SecureSumResult:
    """The outcome of :func:`secure_sum`.

    Attributes:
        total: The exact integer sum (int64) of the survivors' vectors.
        survivors: Clients whose vectors are in ``total``, sorted.
        dropped: Clients that left after sharing keys (recovered), with why.
        excluded: Clients that left before sharing keys (not in the sum), with why.
        plan: The graph's degree and threshold.
        bits: The ring's width.
        seconds: Wall time of each stage.
    """

    total: np.ndarray
    survivors: list[int]
    dropped: dict[int, str]
    excluded: dict[int, str]
    plan: GraphPlan
    bits: int
    seconds: dict[str, float] = field(default_factory=dict)


def register_input(kind: str, fn: InputFn) -> None:
    """Name a client-side computation whose result :func:`secure_sum` can add up.

    Args:
        kind: The name the server passes as ``input_kind``.
        fn: ``(client, payload) -> np.ndarray``: a 1-D integer vector of the length
            and within the bound the server asks for; computed on the client, it
            never leaves it unmasked.

    Example:
        >>> import numpy as np
        >>> register_input("doc.count", lambda client, payload: np.array([1], dtype=np.int64))
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"an input kind must be a non-empty string, got {kind!r}")
    _INPUTS[kind] = lambda client, task, payload: fn(client, payload)


def register_task_input(kind: str, fn: TaskInputFn) -> None:
    """Like :func:`register_input`, for inputs that need the task (its weights and config)."""
    _INPUTS[kind] = fn


# -- the client side ---------------------------------------------------------------------


def _int_keys(table: Any, what: str) -> dict[int, Any]:
    if not isinstance(table, Mapping):
        raise cs.ProtocolAbort(f"{what} is not a mapping")
    try:
        return {int(k): v for k, v in table.items()}
    except (TypeError, ValueError):
        raise cs.ProtocolAbort(f"{what} has a key that is not a client id") from None


def _state(client: Any, payload: Mapping[str, Any]) -> cs.ClientState:
    state = _STATES.get(id(client))
    if state is None or state.setup.session != payload.get("session"):
        raise cs.ProtocolAbort("no secure-aggregation run in progress with this session")
    return state


def _advertise(client: Any, task: Task) -> dict[str, Any]:
    p = task.payload
    _STATES.pop(id(client), None)
    setup = cs.Setup(
        session=p["session"],
        cid=int(p["cid"]),
        x=int(p["x"]),
        neighbors=_int_keys(p["neighbors"], "the neighbour list"),
        threshold=int(p["threshold"]),
        length=int(p["length"]),
        bits=int(p["bits"]),
        bound=int(p["bound"]),
    )
    identity = getattr(client, "secagg_identity", None)
    if p.get("signed") and identity is None:
        raise cs.ProtocolAbort("the server requires signed keys but this client has no identity")
    state, reply = cs.advertise(setup, identity)
    _STATES[id(client)] = state
    return reply


def _share(client: Any, task: Task) -> dict[str, Any]:
    state = _state(client, task.payload)
    keys = _int_keys(task.payload.get("keys"), "the neighbour keys")
    try:
        state, reply = cs.share(state, keys, getattr(client, "secagg_identity", None))
    except cs.ProtocolAbort:
        _STATES.pop(id(client), None)
        raise
    _STATES[id(client)] = state
    return reply


def _mask(client: Any, task: Task) -> dict[str, Any]:
    p = task.payload
    state = _state(client, p)
    _STATES.pop(id(client), None)  # back only if this stage succeeds
    fn = _INPUTS.get(str(p.get("input_kind")))
    if fn is None:
        raise cs.ProtocolAbort(f"no secure-sum input registered as {p.get('input_kind')!r}")
    values = np.asarray(fn(client, task, p.get("input")))
    if values.dtype.kind not in "iu" or values.ndim != 1:
        raise RangeError(f"an input function must return a 1-D integer vector, got {values.dtype}")
    values = values.astype(np.int64)
    inner = int(p.get("input_bound", state.setup.bound))
    if values.size and int(np.abs(values).max()) > inner:
        raise RangeError(f"an input value is outside [-{inner}, {inner}]")
    noise = p.get("noise")
    if noise is not None:
        entries = min(int(noise.get("entries", values.size)), values.size)
        draws = Noise(noise["mechanism"], float(noise["sigma"])).sample(entries)
        values = values.copy()
        values[:entries] += draws
    sealed = _int_keys(p.get("shares"), "the shares")
    state, packed = cs.mask(state, sealed, values)
    _STATES[id(client)] = state
    return {"masked": np.frombuffer(packed, dtype=np.uint8)}


def _unmask(client: Any, task: Task) -> dict[str, Any]:
    p = task.payload
    state = _state(client, p)
    _STATES.pop(id(client), None)  # a run reveals at most once
    alive, dropped = p.get("alive"), p.get("dropped")
    if not isinstance(alive, list) or not isinstance(dropped, list):
        raise cs.ProtocolAbort("the unmasking request has no survivor and dropout lists")
    _, reply = cs.unmask(state, [int(c) for c in alive], [int(c) for c in dropped])
    return reply


for _kind, _handler in zip(KINDS, (_advertise, _share, _mask, _unmask), strict=True):
    register_task(_kind, _handler)


# -- the server side ---------------------------------------------------------------------


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _exchange(
    transport: Transport,
    tasks: Mapping[int, Task],
    timeout: float | None,
    out: dict[int, str],
) -> dict[int, Any]:
    """Send the tasks; return the successful results, recording each failure in ``out``."""
    results: dict[int, Any] = {}
    for reply in transport.exchange(tasks, timeout=timeout):
        if reply.cid not in tasks or reply.cid in results:
            continue
        if reply.ok:
            results[reply.cid] = reply.result
        else:
            out.setdefault(reply.cid, _first_line(reply.error or "failed"))
    for cid in tasks:
        if cid not in results:
            out.setdefault(cid, "no reply in time")
    return results


def _setup_payload(s: cs.Setup) -> dict[str, Any]:
    return {
        "session": s.session,
        "cid": s.cid,
        "x": s.x,
        "neighbors": {str(v): x for v, x in s.neighbors.items()},
        "threshold": s.threshold,
        "length": s.length,
        "bits": s.bits,
        "bound": s.bound,
    }


def secure_sum(
    transport: Transport,
    cids: Sequence[int],
    *,
    round: int,
    input_kind: str,
    payload: Any = None,
    length: int,
    bound: int,
    threat: ThreatModel | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    weights: Weights | None = None,
    config: Mapping[str, Any] | None = None,
    noise: Noise | None = None,
    noise_entries: int | None = None,
    complete: bool | None = None,
    signed: bool = False,
) -> SecureSumResult:
    """Add up a vector computed on each client so the server learns only the sum.

    Runs SecAgg+ (SecAgg when the graph must be complete) over ``transport``:
    four exchanges with the clients, which tolerate clients dropping out after
    they shared keys, up to what the threat model allows.

    Args:
        transport: Any :class:`~covey.transport.Transport`.
        cids: The clients taking part (at least 2).
        round: The round number the tasks carry.
        input_kind: The name an input function was registered under
            (:func:`register_input`), on every client.
        payload: What the input function receives (JSON data, bytes, small arrays).
        length: Entries of each client's vector.
        bound: Each entry lies in ``[-bound, bound]``; the ring is chosen so the
            sum of ``len(cids)`` such vectors (plus noise) never wraps.
        threat: The threat model that fixes the graph's degree and threshold
            (default: 5% corrupt clients, 5% dropout, curious server).
        timeout: Seconds each of the four exchanges may take.
        seed: Seeds the graph's permutation (tests only: it must be unpredictable).
        weights: Model weights sent with the masked-input task (for federated learning).
        config: Config sent with the masked-input task.
        noise: Distributed DP noise each client adds before masking.
        noise_entries: Add the noise to the first this many entries only (default: all).
        complete: Force the complete graph (True, SecAgg) or a sparse one (False).
        signed: Require clients to sign their keys (they need a ``secagg_identity``).

    Returns:
        A :class:`SecureSumResult`; ``total`` is exact (no wrap-around).

    Raises:
        SecAggAbort: When too few clients remain to finish without revealing anything.
    """
    cid_list = sorted(int(c) for c in cids)
    if length < 0 or bound < 0:
        raise ValueError(f"length and bound must be >= 0, got {length}, {bound}")
    graph = plan(len(cid_list), threat, complete=complete)
    total_bound = bound + (noise.tail_bound if noise is not None else 0)
    bits = ring_bits(len(cid_list), total_bound)
    state, setups = ss.setup(cid_list, graph, length, total_bound, bits, seed)
    failures: dict[int, str] = {}
    seconds: dict[str, float] = {}
    session = state.session
    stage = "advertise"
    try:
        t0 = time.perf_counter()
        tasks = {
            u: Task(KINDS[0], round, {}, None, {**_setup_payload(s), "signed": signed})
            for u, s in setups.items()
        }
        replies = _exchange(transport, tasks, timeout, failures)
        if signed:
            for u, r in replies.items():
                if not (isinstance(r, Mapping) and "sig" in r and "name" in r):
                    failures.setdefault(u, "keys not signed")
            replies = {u: r for u, r in replies.items() if u not in failures}
        state, keys = ss.collect_keys(state, _mappings(replies))
        seconds["advertise"] = time.perf_counter() - t0

        stage, t0 = "share", time.perf_counter()
        tasks = {
            u: Task(
                KINDS[1],
                round,
                {},
                None,
                {"session": session, "keys": {str(v): k for v, k in keys[u].items()}},
            )
            for u in keys
        }
        replies = _exchange(transport, tasks, timeout, failures)
        state, inbox = ss.route_shares(state, _mappings(replies))
        seconds["share"] = time.perf_counter() - t0

        stage, t0 = "mask", time.perf_counter()
        common = {
            "session": session,
            "input_kind": input_kind,
            "input": payload,
            "input_bound": bound,
            "noise": None
            if noise is None
            else {"mechanism": noise.mechanism, "sigma": noise.sigma},
        }
        tasks = {
            v: Task(
                KINDS[2],
                round,
                dict(config or {}),
                weights,
                {**common, "shares": {str(u): b for u, b in inbox[v].items()}},
            )
            for v in inbox
        }
        for reply in transport.exchange(tasks, timeout=timeout):
            if reply.cid not in tasks:
                continue
            if not reply.ok:
                state.dropped.setdefault(reply.cid, _first_line(reply.error or "failed"))
                continue
            res = reply.result
            masked = res.get("masked") if isinstance(res, Mapping) else None
            state = ss.add_masked(state, reply.cid, masked)
        state, alive, dropped = ss.request_unmask(state)
        seconds["mask"] = time.perf_counter() - t0

        stage, t0 = "unmask", time.perf_counter()
        request = {"session": session, "alive": alive, "dropped": dropped}
        tasks = {v: Task(KINDS[3], round, {}, None, request) for v in alive}
        replies = _exchange(transport, tasks, timeout, {})
        total = ss.finish(state, alive, dropped, _mappings(replies))
        seconds["unmask"] = time.perf_counter() - t0
    except cs.ProtocolAbort as exc:
        why = dict(failures)
        why.update(state.left)
        why.update(state.dropped)
        raise SecAggAbort(str(exc), stage, why) from None
    excluded = {u: failures.get(u, why) for u, why in state.left.items()}
    for u in cid_list:
        if u not in state.routed and u not in excluded:
            excluded[u] = failures.get(u, "left before sharing keys")
    dropped_why = {u: state.dropped.get(u, "no masked input") for u in dropped}
    return SecureSumResult(total, alive, dropped_why, excluded, graph, bits, seconds)


def _mappings(replies: Mapping[int, Any]) -> dict[int, Mapping[str, Any]]:
    return {u: r for u, r in replies.items() if isinstance(r, Mapping)}


def forget(client: Any) -> None:
    """Drop any protocol state kept for ``client`` (its secrets with it)."""
    _STATES.pop(id(client), None)


__all__ = [
    "KINDS",
    "InputFn",
    "Reply",
    "SecAggAbort",
    "SecureSumResult",
    "forget",
    "register_input",
    "register_task_input",
    "secure_sum",
]

"""The client side of secure aggregation: task handlers, input functions, per-run state.

Importing this module teaches every client runtime the five task kinds of
SecAgg+ (``secagg.advertise``, ``secagg.share``, ``secagg.mask``,
``secagg.consistency``, run only with signed keys, and ``secagg.unmask``).
Each handler decodes the server's message, calls the pure
stage function of :mod:`._client_stages` and keeps the client's state for the
next stage (in the process where the client lives, by run: a run's state is
dropped when the run ends or fails in this client, or when the client starts
more than :data:`RUNS_PER_CLIENT` newer runs, so that one site can answer two
analysts' secure queries at once). What a client sums is computed by an *input
function* registered under a name.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from covey.clients._client import register_builtin
from covey.core._messages import Task
from covey.secagg import _client_stages as cs
from covey.secagg._dp import Noise
from covey.secagg._params import MAX_CLIENTS
from covey.secagg._ring import RangeError

InputFn = Callable[[Any, Any], np.ndarray]
"""``(client, payload) -> 1-D int64 vector`` with entries in ``[-bound, bound]``."""
TaskInputFn = Callable[[Any, Task, Any], np.ndarray]

KINDS = (
    "secagg.advertise",
    "secagg.share",
    "secagg.mask",
    "secagg.unmask",
    "secagg.consistency",
)
_INPUTS: dict[str, TaskInputFn] = {}
RUNS_PER_CLIENT = 4
"""Most runs a client keeps state for at once; a newer one drops the oldest."""
_Runs = OrderedDict[bytes, cs.ClientState]  # session -> state
_STATES: dict[int, tuple[object, _Runs]] = {}  # id(client) -> (weakref to it, or it), runs
"""A client's runs by its id, with a reference that tells the client from a later object
that Python gave the same id once the client was collected (a simulation's client_cache
builds clients anew): that one must not inherit its secrets."""
_LOCK = threading.Lock()  # clients of one process may run stages of two runs at once


def register_input(kind: str, fn: InputFn) -> None:
    """Name a client-side computation whose result :func:`secure_sum` can add up.

    Args:
        kind: The name the server passes as ``input_kind``.
        fn: ``(client, payload) -> np.ndarray``: a 1-D integer vector of the length
            and within the bound the server asks for; computed on the client, it
            never leaves it unmasked.

    Registering a name again replaces its function; names starting with
    ``covey.`` are covey's own (secure FedAvg's update, analytics' answers) and
    cannot be replaced.

    Example:
        >>> import numpy as np
        >>> register_input("doc.count", lambda client, payload: np.array([1], dtype=np.int64))
    """
    _check_kind(kind)
    _INPUTS[kind] = lambda client, task, payload: fn(client, payload)


def register_task_input(kind: str, fn: TaskInputFn) -> None:
    """Like :func:`register_input`, for inputs that need the task (its weights and config).

    Args:
        kind: The name the server passes as ``input_kind``.
        fn: ``(client, task, payload) -> np.ndarray``: as :func:`register_input`'s,
            also given the :class:`~covey.core.Task` the client performs.
    """
    _check_kind(kind)
    _INPUTS[kind] = fn


def register_builtin_input(kind: str, fn: TaskInputFn) -> None:
    """Register one of covey's own inputs (named ``covey.*``; for covey's subpackages)."""
    if not kind.startswith(_OWN):  # an invariant of covey, not an input check
        raise RuntimeError(f"internal error: covey's input {kind!r} must start with {_OWN!r}")
    _INPUTS[kind] = fn


_OWN = "covey."


def _input(kind: str) -> TaskInputFn | None:
    """The input function registered as ``kind``; secure FedAvg's is registered on first use."""
    if kind == "covey.secagg.fit" and kind not in _INPUTS:
        from covey.secagg import _secure  # noqa: F401 - registers it (and imports this module)
    return _INPUTS.get(kind)


def _check_kind(kind: object) -> None:
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"an input kind must be a non-empty string, got {kind!r}")
    if kind.startswith(_OWN):
        raise ValueError(
            f"input kind {kind!r} is in covey's own namespace ({_OWN}*), which cannot be "
            "replaced: give your input another name"
        )


def forget(client: Any) -> None:
    """Drop any protocol state kept for ``client`` (its secrets with it).

    Args:
        client: The client object the protocol's tasks ran on (nothing kept: no-op).
    """
    with _LOCK:
        _STATES.pop(id(client), None)


def _collected(key: int, ref: object) -> None:
    """Drop the runs of a client that was garbage collected (no lock: called from the GC)."""
    entry = _STATES.get(key)
    if entry is not None and entry[0] is ref:
        _STATES.pop(key, None)


def _runs(client: Any) -> _Runs | None:
    """The client's runs, None if it has none; call with ``_LOCK`` held.

    Runs kept under the client's id for another object, collected since, are not its.
    """
    key = id(client)
    entry = _STATES.get(key)
    if entry is not None:
        owner = entry[0]
        if (owner() if isinstance(owner, weakref.ref) else owner) is client:
            return entry[1]
        _STATES.pop(key, None)
    return None


def _new_runs(client: Any) -> _Runs:
    """A new, empty table of runs for ``client``; call with ``_LOCK`` held."""
    key = id(client)
    try:  # a weak reference, so that the runs go with the client
        owner = weakref.ref(client, lambda ref: _collected(key, ref))
    except TypeError:  # no weak references to it: hold it while it has runs
        owner = client
    runs: _Runs = OrderedDict()
    _STATES[key] = (owner, runs)
    return runs


def _keep(client: Any, state: cs.ClientState) -> None:
    """Keep ``state`` for its run's next stage, dropping the client's oldest run past the cap."""
    with _LOCK:
        runs = _runs(client)
        if runs is None:
            runs = _new_runs(client)
        runs[state.setup.session] = state
        while len(runs) > RUNS_PER_CLIENT:
            runs.popitem(last=False)


def _drop(client: Any, session: object) -> None:
    """Drop the client's state of run ``session``, if it has one."""
    with _LOCK:
        runs = _runs(client)
        if runs is not None and isinstance(session, bytes):
            runs.pop(session, None)
            if not runs:
                del _STATES[id(client)]


# -- the client side ---------------------------------------------------------------------


def _int_keys(table: Any, what: str) -> dict[int, Any]:
    if not isinstance(table, Mapping):
        raise cs.ProtocolAbort(f"{what} is not a mapping")
    try:
        return {int(k): v for k, v in table.items()}
    except (TypeError, ValueError):
        raise cs.ProtocolAbort(f"{what} has a key that is not a client id") from None


def _state(client: Any, payload: Mapping[str, Any]) -> cs.ClientState:
    session = payload.get("session")
    with _LOCK:
        runs = _runs(client)
        state = runs.get(session) if runs is not None and isinstance(session, bytes) else None
    if runs is None:
        raise cs.ProtocolAbort(
            "no secure-aggregation run in progress: this client holds no keys of the round "
            "(it was rebuilt or restarted since it advertised them, e.g. its worker process "
            "died, or a simulation's client_cache is smaller than the clients of a round), "
            "so it drops out of the round"
        )
    if state is None:
        raise cs.ProtocolAbort(
            "no secure-aggregation run in progress with this session: it ended or failed in "
            f"this client, or {RUNS_PER_CLIENT} newer runs replaced it"
        )
    return state


def _advertise(client: Any, task: Task) -> dict[str, Any]:
    p = task.payload
    _drop(client, p.get("session"))  # a session id used again starts afresh
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
    _keep(client, state)
    return reply


def _share(client: Any, task: Task) -> dict[str, Any]:
    state = _state(client, task.payload)
    keys = _int_keys(task.payload.get("keys"), "the neighbour keys")
    try:
        state, reply = cs.share(state, keys, getattr(client, "secagg_identity", None))
    except cs.ProtocolAbort:
        _drop(client, state.setup.session)
        raise
    _keep(client, state)
    return reply


def _mask(client: Any, task: Task) -> dict[str, Any]:
    p = task.payload
    state = _state(client, p)
    _drop(client, state.setup.session)  # back only if this stage succeeds
    fn = _input(str(p.get("input_kind")))
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
    _keep(client, state)
    return {"masked": np.frombuffer(packed, dtype=np.uint8)}


def _lists(p: Mapping[str, Any], what: str) -> tuple[list[int], list[int]]:
    """The survivor and dropout lists of a request: client ids, at most MAX_CLIENTS in all."""
    alive, dropped = p.get("alive"), p.get("dropped")
    if not isinstance(alive, list) or not isinstance(dropped, list):
        raise cs.ProtocolAbort(f"the {what} has no survivor and dropout lists")
    if len(alive) + len(dropped) > MAX_CLIENTS:
        raise cs.ProtocolAbort(
            f"the {what} lists {len(alive) + len(dropped)} clients, more than {MAX_CLIENTS}"
        )
    for c in (*alive, *dropped):
        if isinstance(c, bool | np.bool_) or not isinstance(c, int | np.integer):
            raise cs.ProtocolAbort(f"the {what} lists {c!r}, which is not a client id")
        if not -(2**63) <= int(c) < 2**63:
            raise cs.ProtocolAbort(f"the {what} lists {c!r}, which is not a client id")
    return [int(c) for c in alive], [int(c) for c in dropped]


def _consistency(client: Any, task: Task) -> dict[str, Any]:
    p = task.payload
    state = _state(client, p)
    _drop(client, state.setup.session)  # back only if this stage succeeds
    alive, dropped = _lists(p, "consistency-check request")
    state, reply = cs.consistency(state, alive, dropped, getattr(client, "secagg_identity", None))
    _keep(client, state)
    return reply


def _unmask(client: Any, task: Task) -> dict[str, Any]:
    p = task.payload
    state = _state(client, p)
    _drop(client, state.setup.session)  # a run reveals at most once
    alive, dropped = _lists(p, "unmasking request")
    signatures = p.get("signatures")
    table = None if signatures is None else _int_keys(signatures, "the survivor-list signatures")
    _, reply = cs.unmask(state, alive, dropped, table)
    return reply


_STAGES = (_advertise, _share, _mask, _unmask, _consistency)
for _kind, _handler in zip(KINDS, _STAGES, strict=True):
    register_builtin(_kind, _handler)

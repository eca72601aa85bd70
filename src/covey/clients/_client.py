"""The client side: the :class:`Client` base class and the runtime that turns a Task into a Reply.

The runtime knows nothing of transports. Each task kind maps to a handler
``(client, task) -> result``; a transport (in-memory, process pool, network)
calls :func:`run_task` wherever the client lives.
"""

from __future__ import annotations

import copy
import importlib
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from covey.clients._current import TASK as _TASK
from covey.clients._current import within
from covey.clients._hints import hint
from covey.clients._mistakes import (
    ResultRefused,
    check_signature,
    not_a_fit_result,
    not_a_result,
    not_built,
)
from covey.core._interrupt import as_interrupt, interrupt_in
from covey.core._messages import Config, EvaluateResult, FitResult, Reply, Task
from covey.core._roundrecord import TRACEBACK_CHARS, clipped
from covey.core._weights import Weights


class NoEvaluate(NotImplementedError):
    """Raised by :meth:`Client.evaluate` a subclass left out: a set-up, not an incident.

    Its reply is the one line saying so, without the traceback (covey's own frames):
    a federation of clients without ``evaluate`` that still evaluates each round
    kept a traceback per client and round in its history.
    """


class Client:
    """A participant in a federation: it trains and evaluates on data that never leaves it.

    Subclass it and implement :meth:`fit` (and :meth:`evaluate` for federated
    evaluation). The same subclass runs in :func:`covey.simulate` and in a
    deployed federation; nothing in it knows which.

    The ``weights`` a client receives are read-only arrays shared with the
    server (no copy is made): copy them before changing them in place, or set
    ``writes_weights = True`` on the class.

    Attributes:
        writes_weights: Whether ``fit`` and ``evaluate`` may write into the arrays
            they are given (``w -= lr * grad``) and return them as the update.
            The arrays are then the client's own: a deployed client gets the
            received message's memory itself, made writable, and sends the
            arrays it returns from there (one model in memory, not two); in
            simulation, where clients share the global model, each task gets a
            copy (on the process backend, in the shared memory of its reply:
            returned as they are, those arrays are sent without another copy).
            False by default.
        secagg_identity: The client's long-term identity for secure aggregation
            with ``signed=True``: a :class:`covey.secagg.Identity` it signs its round
            keys with (None by default: the client signs nothing).

    Example:
        >>> import numpy as np
        >>> import covey
        >>> class Shift(covey.Client):
        ...     def fit(self, weights, config):
        ...         return covey.FitResult(delta={"w": np.ones(2)}, num_examples=10)
        >>> Shift().fit({"w": np.zeros(2)}, {"round": 1}).num_examples
        10
    """

    writes_weights: ClassVar[bool] = False
    secagg_identity: object | None = None  # a covey.secagg.Identity (a layer above this one)

    def fit(self, weights: Weights, config: Config) -> FitResult:
        """Train on local data starting from ``weights``.

        Args:
            weights: The global model (read-only arrays, unless the class sets
                ``writes_weights``).
            config: ``{"round": r, ...}`` plus what the strategy sends this round,
                and ``"extras"`` when an aggregation step broadcasts arrays to
                clients (e.g. SCAFFOLD's control variate, see
                :class:`covey.clients.ControlVariate`).

        Returns:
            New weights or a delta, the number of examples, and metrics.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement fit()")

    def evaluate(self, weights: Weights, config: Config) -> EvaluateResult:
        """Evaluate ``weights`` on local data.

        Args:
            weights: The global model (read-only arrays, unless the class sets
                ``writes_weights``).
            config: ``{"round": r, ...}`` plus what the strategy sends this round.

        Returns:
            The loss, the number of examples and metrics.
        """
        raise NoEvaluate(f"{type(self).__name__} does not implement evaluate()")

    def properties(self) -> dict[str, Any]:
        """Facts the server may select this client by, or set its own config by (none by default).

        ``Strategy(where=...)`` selects by them, and ``on_client_fit_config`` (or
        ``on_client_evaluate_config``) sees them as ``client.properties``.
        """
        return {}


@runtime_checkable
class ClientLike(Protocol):
    """What covey needs of a client object: a ``fit`` method.

    ``evaluate`` and ``properties`` are used when present; subclassing
    :class:`Client` gives all three.
    """

    def fit(self, weights: Weights, config: Config) -> FitResult:
        """Train on local data starting from ``weights``.

        Args:
            weights: The global model of the round.
            config: The round's fit config (with ``"round"``).
        """
        ...


ClientFn = Callable[[int], ClientLike]
"""``cid -> client``: builds the client with id ``cid`` (in simulation, where its data is)."""

TaskHandler = Callable[[Any, Task], Any]
"""A function ``(client, task) -> result`` that performs one kind of task."""


_MUTABLE = (list, dict, set, bytearray, np.ndarray)


def _config(task: Task) -> Config:
    """The config a client is given: its own copy, nested lists, dicts and arrays included.

    In simulation the clients of a round share the task's config; a client that
    changed a list in it would change what later clients see, which a process
    worker or a deployed client (each decoding its own copy) never does.
    """
    given = task.config
    config = (
        {k: copy.deepcopy(v) if isinstance(v, _MUTABLE) else v for k, v in given.items()}
        if given
        else {}  # the common empty config: no comprehension's frame
    )
    config["round"] = task.round
    if task.kind == "fit" and task.payload is not None:
        config["extras"] = task.payload
    return config


def _fit(client: Any, task: Task) -> FitResult:
    if task.weights is None:
        raise ValueError("a fit task carries no weights")
    try:
        # A dict of its own: a client that rebinds entries (``weights[k] = new``)
        # changes neither the task, the global model, nor another client's weights.
        # The common empty config without _config's frame (a simulated round runs 1,000s).
        config = _config(task) if task.config or task.payload is not None else {"round": task.round}
        result = client.fit(dict(task.weights), config)
    except TypeError as exc:
        check_signature(client, "fit", exc)
        raise
    if type(result) is not FitResult and not isinstance(result, FitResult):
        raise not_a_fit_result(client, result)
    return result


def _evaluate(client: Any, task: Task) -> EvaluateResult:
    if task.weights is None:
        raise ValueError("an evaluate task carries no weights")
    try:
        result = client.evaluate(dict(task.weights), _config(task))  # as in _fit
    except TypeError as exc:
        check_signature(client, "evaluate", exc)
        raise
    if not isinstance(result, EvaluateResult):
        raise not_a_result(client, "evaluate", result)
    return result


def _properties(client: Any, task: Task) -> dict[str, Any]:
    method = getattr(type(client), "properties", None)
    if (method is None or method is Client.properties) and callable(
        getattr(client, "get_properties", None)
    ):  # Flower's name: without this, the client would report no properties at all
        raise TypeError(
            f"{type(client).__name__} defines get_properties(config) but covey asks a "
            "client's properties() (no argument): rename it to properties(self)"
        )
    props = client.properties()
    if not isinstance(props, dict):
        raise TypeError(
            f"{type(client).__name__}.properties() returned {type(props).__name__}, expected dict"
        )
    return props


_HANDLERS: dict[str, TaskHandler] = {
    "fit": _fit,
    "evaluate": _evaluate,
    "properties": _properties,
}


# Every kind covey itself performs, with the part of covey that performs it: the
# ones of optional subpackages too, registered when those are imported.
BUILTIN_KINDS: dict[str, str] = {
    "fit": "covey.Client.fit",
    "evaluate": "covey.Client.evaluate",
    "properties": "covey.Client.properties",
    "fit_compressed": "covey.compress",
    "secagg.advertise": "covey.secagg",
    "secagg.share": "covey.secagg",
    "secagg.mask": "covey.secagg",
    "secagg.consistency": "covey.secagg",
    "secagg.unmask": "covey.secagg",
    "analyze": "covey.analytics",
}

# The module registering each built-in kind of the base install, imported the first time
# a runtime needs that kind: ``import covey`` loads neither (nor their cryptography), yet
# every client, process-backend worker and deployed client performs them. "analyze"
# is registered with covey.analytics' Site (an optional extra), which its clients are.
_REGISTERED_BY: dict[str, str] = {
    "fit_compressed": "covey.compress._runtime",
    # covey.secagg's handlers, with the input of secure FedAvg (covey.secagg.secure).
    **dict.fromkeys(
        (
            "secagg.advertise",
            "secagg.share",
            "secagg.mask",
            "secagg.consistency",
            "secagg.unmask",
        ),
        "covey.secagg._secure",
    ),
}


def _handler(kind: str) -> TaskHandler | None:
    """The handler of ``kind``, its module imported first if it registers a built-in kind."""
    if kind not in _HANDLERS and kind in _REGISTERED_BY:
        importlib.import_module(_REGISTERED_BY[kind])
    return _HANDLERS.get(kind)


def register_task(kind: str, handler: TaskHandler) -> None:
    """Teach every client runtime a new kind of task.

    Registering a kind of your own again replaces its handler (a module or
    notebook cell run twice); covey's own kinds (``"fit"``, ``"evaluate"``,
    ``"properties"``, ``"fit_compressed"``, the ``"secagg.*"`` stages and
    ``"analyze"``) cannot be replaced, whether or not their subpackage is imported.

    Args:
        kind: The task kind, e.g. ``"count_rows"``.
        handler: ``(client, task) -> result``; what it returns becomes ``Reply.result``.

    Raises:
        ValueError: ``kind`` is empty, not a string, or one of covey's own kinds.
    """
    if not kind or not isinstance(kind, str):
        raise ValueError(f"task kind must be a non-empty string, got {kind!r}")
    if kind in BUILTIN_KINDS:
        raise ValueError(
            f"task kind {kind!r} is built in ({BUILTIN_KINDS[kind]}) and cannot be "
            "replaced: give your task kind another name"
        )
    _HANDLERS[kind] = handler


def register_builtin(kind: str, handler: TaskHandler) -> None:
    """Register one of covey's own task kinds (for covey's subpackages, at import)."""
    if kind not in BUILTIN_KINDS:  # an invariant of covey, not an input check
        raise RuntimeError(f"internal error: {kind!r} is not in BUILTIN_KINDS")
    _HANDLERS[kind] = handler


def task_kinds() -> tuple[str, ...]:
    """The task kinds this runtime can perform."""
    for kind in _REGISTERED_BY:
        _handler(kind)
    return tuple(_HANDLERS)


def run_task(client: Any, cid: int, task: Task) -> Reply:
    """Perform ``task`` on ``client`` and return its :class:`Reply`; never raises.

    An exception inside the client becomes ``Reply.error`` with the traceback (a
    result covey's own check refuses, its message alone); one that Ctrl-C caused
    (as the client imported a compiled module, say) is raised as the
    ``KeyboardInterrupt`` it was: the run's, not the client's.

    Args:
        client: The client that performs it (a :class:`Client` or any object the
            task kind's registered handler takes).
        cid: The client's id, put in the reply.
        task: The task; its ``kind`` picks the handler (an unknown kind is an error reply).
    """
    kind = task.kind
    handler = _HANDLERS.get(kind) or _handler(kind)  # no frame for a loaded kind
    if handler is None:
        where = "where this client runs: register it in a module the client's code imports"
        named = repr(kind[:100]) + ("..." if len(kind) > 100 else "")  # maybe a server's
        error = f"unknown task kind {named}: no handler is registered for it {where}"
        return Reply(cid, kind, error=error + " (covey.clients.register_task)")
    if client is None:  # the commonest slip: a client_fn without its return
        return Reply(cid, kind, error=f"client_fn({cid}) returned None, expected a covey.Client")
    if isinstance(client, type):  # the next one: the class itself, its call forgotten
        return Reply(
            cid,
            kind,
            error=f"client_fn({cid}) returned the class {client.__name__}, not a client: "
            f"return an instance of it ({client.__name__}(...))",
        )
    method = _NEEDS.get(kind)
    if method is not None and not callable(getattr(client, method, None)):
        return Reply(cid, kind, error=_not_a_client(client, cid, method))
    try:
        if (
            kind in _OWN_WEIGHTS
            and task.weights is not None
            and getattr(client, "writes_weights", False) is True
        ):
            task = _own_weights(task)
        return Reply(cid, kind, result=within(cid, task.round, handler, client, task))
    except Exception as exc:  # noqa: BLE001 - any error in the client's code is its reply's
        return _failed(cid, kind, exc)


def fit_result(client: Any, cid: int, task: Task) -> FitResult | Reply:
    """:func:`run_task` for a ``"fit"`` task, giving a client's :class:`FitResult` itself.

    A round loop that folds a client's result at once needs no :class:`Reply`
    around it: the result when the client succeeded, else the failed Reply
    :func:`run_task` gives. Never raises but for Ctrl-C, as :func:`run_task`.
    """
    if (
        client is None
        or isinstance(client, type)
        or getattr(client, "writes_weights", False) is True
        or not callable(getattr(client, "fit", None))
    ):
        reply = run_task(client, cid, task)
        return reply if reply.error is not None else reply.result
    token = _TASK.set((cid, task.round))  # as within(), without its call: per client and round
    try:
        return _fit(client, task)
    except Exception as exc:  # noqa: BLE001 - as in run_task
        return _failed(cid, "fit", exc)
    finally:
        _TASK.reset(token)


def _failed(cid: int, kind: str, exc: Exception) -> Reply:
    """The reply of a client whose task raised ``exc``; called while ``exc`` is handled.

    Raises:
        KeyboardInterrupt: if Ctrl-C caused ``exc``: the run's, not the client's.
    """
    if interrupt_in(exc) is not None:
        raise as_interrupt(exc) from exc
    if isinstance(exc, ResultRefused):  # worded as the server refuses a plain update
        return Reply(cid, kind, error=str(exc))
    if type(exc) is NoEvaluate:
        return Reply(cid, kind, error=f"NotImplementedError: {exc}")
    return Reply(cid, kind, error=clipped(traceback.format_exc() + hint(exc), TRACEBACK_CHARS))


#: The task kinds whose handler uses the weights only to call the client: a client that
#: writes into its weights gets them as its own. Other handlers (compressed or secure
#: fits) still need the weights received after ``fit`` and hand it a copy (:func:`lend`).
_OWN_WEIGHTS = frozenset({"fit", "evaluate"})


def lend(client: Any, weights: Weights) -> Weights:
    """The weights to give ``client.fit`` when the caller needs ``weights`` unchanged afterwards.

    A new dict of the same (read-only) arrays, unless the client writes into its
    weights (``writes_weights``); then a copy of the arrays, so the caller can
    still compute the update as the client's result minus ``weights``. Either
    way, entries the client rebinds (``weights[k] = new``) leave ``weights`` as it was.

    Args:
        client: The client about to be called.
        weights: The weights the task carried.
    """
    if getattr(client, "writes_weights", False) is not True:
        return dict(weights)
    return {name: np.array(array, copy=True) for name, array in weights.items()}


def _own_weights(task: Task) -> Task:
    """``task`` with weights its client may write into: read-only (shared) arrays copied.

    Writable arrays are a buffer this task alone holds (see :func:`hand_over`);
    the global model a simulation shares, and a mapped broadcast, are read-only.
    """
    weights = task.weights
    if weights is None or all(a.flags.writeable for a in weights.values()):
        return task
    own = {n: a if a.flags.writeable else np.array(a, copy=True) for n, a in weights.items()}
    return replace(task, weights=own)


def not_an_exception(exc: BaseException) -> str:
    """How ``exc``, no ``Exception``, ended a task, for the hint of its failed reply.

    Example:
        >>> not_an_exception(SystemExit(3))
        'called sys.exit(3) (SystemExit)'
    """
    if isinstance(exc, SystemExit):
        code = "" if exc.code is None else repr(exc.code)
        return f"called sys.exit({code}) (SystemExit)"
    return f"raised {type(exc).__name__}, which is no Exception,"


def hand_over(client: Any, kind: str, weights: Weights | None) -> None:
    """Make a ``kind`` task's ``weights`` writable in place if ``client`` writes into its weights.

    For a transport whose ``weights`` view a buffer that belongs to this one
    task (a received message): the client then trains in that memory, with no
    copy. Arrays whose memory cannot be written stay read-only, and
    :func:`run_task` copies them.
    """
    if weights is None or getattr(client, "writes_weights", False) is not True:
        return
    if kind not in _OWN_WEIGHTS:  # the handler still needs them as received
        return
    for array in weights.values():
        try:
            array.flags.writeable = True
        except ValueError:  # over read-only memory: run_task copies it
            continue


#: The method of the client each built-in task kind calls.
_NEEDS = {"fit": "fit", "fit_compressed": "fit", "evaluate": "evaluate"}


def _not_a_client(client: object, cid: int, method: str) -> str:
    """The error for a client without the method a task needs (e.g. ``client_fn`` returned 42)."""
    kind = type(client).__name__
    if method == "evaluate" and callable(getattr(client, "fit", None)):
        return f"{kind} does not implement evaluate()"
    if hint := not_built(client):
        return f"client_fn({cid}) returned a {kind}, not a client{hint}"
    return (
        f"client_fn({cid}) returned {kind}, not a client: it has no {method}() method "
        "(expected a covey.Client)"
    )

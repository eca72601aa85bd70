"""How a client's own mistakes are named: a ``fit`` that cannot be called, a result of another kind.

Every task handler that calls ``client.fit`` names them alike, so a client gets
the same message whether its update travels plain, compressed or masked.
"""

from __future__ import annotations

import inspect
from typing import Any

from covey.core._messages import Config, FitResult
from covey.core._recordhint import RECORDS, record_instead
from covey.core._weights import Weights


def not_a_result(client: Any, method: str, result: object) -> TypeError:
    """The error for a ``fit`` or ``evaluate`` that returned ``result``, not covey's record.

    It says what to return instead: Flower's tuple, a dict of the record's
    entries and a missing ``return`` (None) are each named as such, and an
    ``async def`` method (its coroutine, closed unrun) is told to be a plain one.
    """
    record = RECORDS[method][0]
    if inspect.iscoroutine(result):
        result.close()  # never run: close it, so that no "never awaited" warning follows
        return TypeError(
            f"{type(client).__name__}.{method}() is a coroutine function (async def): covey "
            f"calls {method} as a plain function and takes its covey.{record}; define it with "
            "def, and run any asynchronous work inside it (asyncio.run(...))"
        )
    missing = (
        f" (the {method} method returned nothing: is its return statement missing?)"
        if result is None
        else ""
    )
    return TypeError(
        f"{type(client).__name__}.{method}() returned {type(result).__name__}, expected "
        f"covey.{record}: return {record_instead(method, result)}{missing}"
    )


class ResultRefused(Exception):
    """A client's result that covey's own check of it refuses, as the server refuses an update.

    Its failed reply is the message alone, as the server words a refused plain
    update (``client 1's weights: 'w' has shape (7,), expected (6,)``): the
    mistake is in what the client returned, not in the code that raised, so no
    traceback or class path is put before it.
    """


def not_built(client: object) -> str:
    """The hint for a ``client_fn`` that did not return its client, or ``""``.

    One that yields it is a generator function; one defined with ``async def``
    returns a coroutine (closed here unrun, so that no "never awaited" warning
    follows).
    """
    if inspect.isgenerator(client):
        return (
            f": {client.gi_code.co_name} yields the client, which makes it a generator "
            "function; return the client instead (return MyClient(...), not yield)"
        )
    if inspect.iscoroutine(client):
        client.close()
        return (
            f": {client.cr_code.co_name} is a coroutine function (async def), which returns "
            "a coroutine; define it with def and return the client (run any asynchronous "
            "set-up inside it with asyncio.run(...))"
        )
    return ""


def check_signature(client: Any, method: str, exc: TypeError) -> None:
    """Raise a TypeError saying how covey calls ``method`` if its signature cannot take that.

    Called when the call raised ``exc``: a ``fit(self, weights)`` gets Python's
    "takes 2 positional arguments but 3 were given", which says nothing of the config.
    """
    bound = getattr(client, method)
    try:
        signature = inspect.signature(bound)
    except (TypeError, ValueError):  # a builtin or a C method: nothing to say
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise TypeError(
            f"{type(client).__name__}.{method}({', '.join(signature.parameters)}) cannot be "
            f"called as {method}(weights, config): covey gives it the weights and the "
            f"round's config (a dict holding 'round'); define it as "
            f"def {method}(self, weights, config)"
        ) from exc


def not_a_fit_result(client: Any, result: object) -> TypeError:
    """The error for a ``fit`` that returned ``result``, no :class:`~covey.FitResult`."""
    return not_a_result(client, "fit", result)


def call_fit(client: Any, weights: Weights, config: Config) -> FitResult:
    """``client.fit(weights, config)``, its result checked as a ``"fit"`` task checks it.

    Raises:
        TypeError: ``fit`` cannot be called so (saying how covey calls it), or it
            returned no :class:`~covey.FitResult` (a tuple: saying what to return).
    """
    try:
        result = client.fit(weights, config)
    except TypeError as exc:
        check_signature(client, "fit", exc)
        raise
    if not isinstance(result, FitResult):
        raise not_a_fit_result(client, result)
    return result

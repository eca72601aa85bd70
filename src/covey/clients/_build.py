"""Building a client from ``client_fn``, with a hint for the usual slips (a Flower client_fn)."""

from __future__ import annotations

import inspect
from typing import Any

from covey.clients._client import ClientFn

#: What a Flower ``Context`` has that a client id does not.
_CONTEXT_ATTRIBUTES = ("node_config", "run_config", "node_id", "run_id", "state")


def build_client(client_fn: ClientFn, cid: int) -> Any:
    """``client_fn(cid)``, with a hint when ``client_fn`` was written for Flower.

    Raises:
        TypeError: if ``client_fn`` read ``node_config`` (or another attribute of a
            Flower ``Context``) from the client id, or called Flower's ``to_client()``;
            chained to the original error. Or if ``client_fn`` is a client object
            rather than a function making one, or takes no client id.
    """
    uncallable = not_callable(client_fn)
    if uncallable is not None:
        raise TypeError(uncallable)
    try:
        return client_fn(cid)
    except TypeError as exc:
        _check_client_fn(client_fn, exc)
        raise
    except AttributeError as exc:
        text = str(exc)
        if text.endswith("has no attribute 'to_client'"):
            raise TypeError(
                f"{text}: covey's client_fn returns the covey.Client itself; drop Flower's "
                ".to_client()"
            ) from exc
        if text.startswith("'int' object has no attribute") and any(
            f"'{name}'" in text for name in _CONTEXT_ATTRIBUTES
        ):
            raise TypeError(
                f"covey calls client_fn(cid) with the client id, an int from 0 to "
                f"num_clients - 1 (here {cid}), not a context: use cid as the partition id "
                "(Flower's context.node_config['partition-id']) and pass other settings "
                "to client_fn yourself, e.g. with functools.partial"
            ) from exc
        raise


def not_callable(client_fn: object) -> str | None:
    """Why ``client_fn`` cannot be called to build a client (a client object, None...), or None."""
    if callable(client_fn):
        return None
    name = type(client_fn).__name__
    if callable(getattr(client_fn, "fit", None)):  # a client object: the usual slip
        return (
            f"client_fn is a client ({name} object), not a function of the client id: pass "
            f"{name} itself if it takes the id, or a function cid -> client"
        )
    return f"client_fn must be a function cid -> client (or a Client class taking cid), got {name}"


def cannot_take_cid(client_fn: object) -> str | None:
    """Why ``client_fn`` cannot be called as ``client_fn(cid)``, or None if it can (or may).

    A ``lambda: MyClient()`` gets Python's "takes 0 positional arguments but 1
    was given" when called, which says nothing of the id.
    """
    try:
        signature = inspect.signature(client_fn)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a builtin or an extension type: nothing to say
        return None
    try:
        signature.bind(0)
    except TypeError:
        name = getattr(client_fn, "__qualname__", type(client_fn).__name__)
        return (
            f"{name}{signature} cannot be called as client_fn(cid): covey calls it with "
            "the client id, an int from 0 to num_clients - 1; give it that parameter "
            "(lambda cid: MyClient(), or a client class whose __init__ takes cid)"
        )
    return None


def _check_client_fn(client_fn: Any, exc: TypeError) -> None:
    """Raise a TypeError saying how covey calls ``client_fn`` if its signature cannot take a cid.

    Called when the call raised ``exc``.
    """
    why = cannot_take_cid(client_fn)
    if why is not None:
        raise TypeError(why) from exc

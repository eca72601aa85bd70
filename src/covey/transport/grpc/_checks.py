"""What a client checks before it dials or allocates: the address, a task's size, properties.

gRPC accepts what it cannot use: a port above 65535 silently becomes another
port, and a host without a port dials 443. Both sides of the transport check
the address first and refuse a bad one with a message that says what is wrong.

A client allocates the buffer for a task's arrays when the task's header
announces their size, so that size is checked first: against the model's
layout when the client was given it, else against a fixed cap. Arrays inside a
task's JSON config are capped by :class:`~covey.transport.grpc._wire.WireLimits`.
"""

from __future__ import annotations

import math
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from covey.core import _codec
from covey.core._text import clipped
from covey.core._weights import WeightsSpec
from covey.transport.grpc import _wire
from covey.transport.grpc.proto import covey_pb2 as pb

__all__ = [
    "HEARTBEATS",
    "MAX_KINDS",
    "MAX_TASK_BYTES",
    "AddressError",
    "TaskLimits",
    "WithProperties",
    "check_address",
    "check_config",
    "check_heartbeat",
    "check_no_nan",
    "kinds_problem",
    "nan_at",
    "own_name",
    "shown_kind",
    "stated_properties",
    "welcome_heartbeat",
]

_HOST = re.compile(r"^[A-Za-z0-9_.\-]+$")


class AddressError(ValueError):
    """An address that is not ``host:port`` with a valid port."""


def check_address(address: str, *, listen: bool) -> tuple[str, int]:
    """Split ``address`` into host and port, refusing what gRPC would misread.

    Args:
        address: ``host:port``, ``[ipv6]:port``, or ``host:0`` to listen on a free port.
        listen: True for an address to listen on (port 0 allowed), False to dial.

    Returns:
        ``(host, port)``.

    Raises:
        AddressError: naming what is wrong.

    Example:
        >>> check_address("127.0.0.1:9092", listen=True)
        ('127.0.0.1', 9092)
    """
    text = address.strip()
    scheme, is_url, rest = text.partition("://")
    if is_url:  # a URL copied whole: its scheme is no part of a gRPC address
        bare = rest.split("/", 1)[0] or "HOST:PORT"
        raise AddressError(
            f"{address!r} is a URL: give HOST:PORT without {scheme + '://'!r}, e.g. {bare}"
        )
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise AddressError(f"{address!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
        if not host or not all(c in "0123456789abcdefABCDEF:." for c in host):
            raise AddressError(f"{address!r}: {host!r} is not an IPv6 address")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise AddressError(f"{address!r} has no port; give HOST:PORT (e.g. {_example(text)})")
        if ":" in host:
            raise AddressError(
                f"{address!r}: an IPv6 address goes in brackets, e.g. [{host}]:{port_text or 9092}"
            )
        if not host or not _HOST.match(host):
            raise AddressError(f"{address!r}: {host!r} is not a host name or address")
    if not port_text.isdigit():
        raise AddressError(f"{address!r}: the port {port_text!r} is not a number")
    port = int(port_text)
    low = 0 if listen else 1
    if not low <= port <= 65535:
        raise AddressError(f"{address!r}: the port must be between {low} and 65535, not {port}")
    return host, port


def _example(text: str) -> str:
    """A ``HOST:PORT`` for an address given without one of the two: its host, or its port."""
    if text.isdigit():  # a port alone (`--address 9092`)
        return f"127.0.0.1:{text}"
    return f"{text or 'localhost'}:9092"


MAX_TASK_BYTES = 4 * 1024**3  # what a client accepts when it is given no spec


@dataclass(frozen=True)
class TaskLimits:
    """What a client accepts from its server: bytes of a task, sizes inside its JSON, its model."""

    max_bytes: int
    wire: _wire.WireLimits
    spec: WeightsSpec | None = None  # the model: a task's weights must match it

    @classmethod
    def of(cls, spec: WeightsSpec | None, max_bytes: int) -> TaskLimits:
        """The limits for a client given ``spec`` (or none) and a cap of ``max_bytes``."""
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_task_bytes must be an int >= 1, got {max_bytes!r}")
        if spec is not None:
            # The model, once more for extra arrays of its shape (e.g. SCAFFOLD's
            # control variate), and room for the names of those arrays.
            model = _codec.encoded_size(
                {
                    n: np.broadcast_to(np.zeros((), d), s)
                    for n, s, d in zip(spec.names, spec.shapes, spec.dtypes, strict=True)
                }
            )
            max_bytes = min(max_bytes, 2 * model + 1024 * 1024)
        return cls(max_bytes, _wire.WireLimits.for_spec(spec), spec)

    def check_weights(self, kind: str, weights: Any) -> None:
        """Refuse (WeightsError) a task's weights that do not match the model given to connect."""
        if self.spec is not None and weights is not None:
            what = f"the weights of the server's {shown_kind(kind)} task"
            self.spec.check(weights, what=what)

    def check(self, header: pb.TaskHeader) -> int:
        """The bytes a task announces, refused (ConnectionError) over the limit."""
        size = int(header.weights_size) + int(header.extras_size)
        if size > self.max_bytes:
            raise ConnectionError(
                f"the server announced a {shown_kind(header.kind)} task of {size} bytes, more "
                f"than this client accepts ({self.max_bytes} bytes); refusing it"
            )
        return size


def check_config(config: Any) -> dict[str, Any]:
    """A task's config as the client's code will get it: a JSON object holding no NaN.

    Infinities may mean something (no limit); NaN never does, and reaching a
    client's training it would only come back as a refused update.

    Raises:
        covey.transport.grpc._wire.WireError: naming what is wrong and where.

    Example:
        >>> check_config({"lr": 0.1, "clip": float("inf")})
        {'lr': 0.1, 'clip': inf}
    """
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise _wire.WireError(f"the server's config is a {type(config).__name__}, not an object")
    check_no_nan(config)
    return config


def check_no_nan(config: Any) -> None:
    """Refuse a config holding NaN anywhere, naming the entry (as :func:`check_config`).

    Raises:
        covey.transport.grpc._wire.WireError: ``the server's config holds NaN at lr``.
    """
    where = nan_at(config)
    if where is not None:
        raise _wire.WireError(f"the server's config holds NaN at {where or 'its top'}")


def nan_at(value: Any, path: str = "") -> str | None:
    """The path of the first NaN in ``value`` (``lr``, ``opt.betas[1]``), else None.

    ``value`` is JSON as decoded (depth already capped), or a config as a server
    builds it, which may also hold tuples and NumPy scalars: a simulated client
    is refused its task as a deployed one is (see :mod:`covey.sim._sendable`).

    Example:
        >>> nan_at({"opt": {"betas": (0.9, float("nan"))}})
        'opt.betas[1]'
    """
    if isinstance(value, float | np.floating):
        return path if value != value else None
    if isinstance(value, np.ndarray):
        return path if value.dtype.kind == "f" and bool(np.isnan(value).any()) else None
    items: Any = ()
    if isinstance(value, Mapping):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    for where, item in items:
        found = nan_at(item, where)
        if found is not None:
            return found
    return None


class WithProperties:
    """A client whose ``properties()`` adds ``connect(properties=...)`` to its own."""

    def __init__(self, client: Any, properties: dict[str, Any]) -> None:
        self._client = client
        self._properties = properties

    def properties(self) -> dict[str, Any]:
        own = self._client.properties() if hasattr(self._client, "properties") else {}
        return {**dict(own), **self._properties}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def check_client(client: Any) -> None:
    """Refuse what is no client object before dialling: a client class, a ``client_fn``, None.

    Raises:
        TypeError: naming what was given and the call that makes a client of it.
    """
    if client is None:
        raise TypeError("connect() needs a client object (a covey.Client), got None")
    if isinstance(client, type):
        name = client.__name__
        raise TypeError(
            f"connect() needs a client object, got the class {name}: make one, {name}(...)"
        )
    if callable(client) and not any(hasattr(client, m) for m in ("fit", "evaluate")):
        name = getattr(client, "__qualname__", type(client).__name__)
        raise TypeError(
            f"connect() needs a client object, got the function {name}: call it, "
            "connect(client_fn(cid), ...) (covey client --app MODULE:client_fn --cid N "
            "does that call itself)"
        )


def stated_properties(client: Any, extra: dict[str, Any] | None) -> dict[str, Any]:
    """What a client states in its ``Hello``: ``client.properties()`` with ``extra`` over them.

    Raises:
        TypeError: naming the method, if it returns no dict or a value the network
            cannot carry.
        Exception: what ``client.properties()`` raises, with a note naming it.
    """
    method = f"{type(client).__name__}.properties()"
    own: Any = {}
    if hasattr(client, "properties"):
        try:
            own = client.properties()
        except Exception as exc:  # the user's error, told where it came from
            exc.add_note(f"raised by {method}, which connect() calls to state them")
            raise
        if not isinstance(own, dict):
            raise TypeError(f"{method} returned {type(own).__name__}, expected dict")
    props = {**own, **(extra or {})}
    try:
        _wire.dumps(props)
    except _wire.WireError as exc:
        raise TypeError(f"{method} (with connect's properties=): {exc}") from None
    return props


MAX_NAME = 256
"""Most characters of the name an insecure client gives in its ``Hello``."""


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a client (too long, or holding control characters), or None.

    A server records each name it admits, and writes it in its log: a name of
    megabytes, or one holding a line break (a forged log line), is refused.
    """
    if len(name) > MAX_NAME:
        return f"a name of {len(name)} characters is over the limit of {MAX_NAME}"
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        return f"the name holds the control character {bad!r}"
    return None


MAX_KINDS = 256
"""Most task kinds a client's ``Hello`` may list (each at most :data:`MAX_NAME` characters)."""


def kinds_problem(kinds: Sequence[str]) -> str | None:
    """Why a ``Hello`` listing ``kinds`` cannot be admitted (too many, or one too long), or None.

    A server keeps each connection's kinds while it is connected, and names them
    when a task cannot be sent: a list of a million kinds, or one of megabytes,
    is refused.
    """
    if len(kinds) > MAX_KINDS:
        return f"{len(kinds)} task kinds are over the limit of {MAX_KINDS}"
    long = next((kind for kind in kinds if len(kind) > MAX_NAME), None)
    if long is not None:
        return (
            f"a task kind of {len(long)} characters ({long[:60]!r}...) is over the limit "
            f"of {MAX_NAME}"
        )
    return None


def shown_kind(kind: str) -> str:
    """A task kind a server sent, as the client's log names it: escaped, cut to :data:`MAX_NAME`.

    A client lists the kinds it runs in its ``Hello``, none longer; a server's
    task may still name any string, up to megabytes of escape sequences.
    """
    return clipped(kind, MAX_NAME)


def own_name(name: str, tls: object | None) -> str:
    """The name an insecure client gives: its own, or one picked for this call's life."""
    if tls is None and not name:
        return f"anonymous-{secrets.token_hex(4)}"
    why = None if tls is not None else name_problem(name)
    if why is not None:
        raise ValueError(f"name {name[:60]!r}: {why}")
    return name


HEARTBEATS = (0.01, 600.0)
"""The heartbeat intervals covey takes, in seconds: a server states one in its ``Welcome``.

A client takes a server silent for six intervals for gone: the interval a server
states is how long a client trusts a connection that no longer carries anything.
Up to ten minutes, that is an hour at most; a server stating a day (a hostile
one) held its clients on a dead connection for six days. Below 0.01 s a client
gives up on a server that has said nothing for six intervals at once, and
reconnects for ever. A server refuses to serve with an interval its clients
would refuse.
"""


def check_heartbeat(heartbeat: float) -> None:
    """Refuse a heartbeat interval that is no number of seconds in :data:`HEARTBEATS`."""
    if (
        isinstance(heartbeat, bool)
        or not isinstance(heartbeat, int | float)
        or not (math.isfinite(heartbeat) and heartbeat > 0)
    ):
        raise ValueError(f"heartbeat must be a number of seconds above 0, got {heartbeat!r}")
    low, high = HEARTBEATS
    if not low <= heartbeat <= high:
        raise ValueError(
            f"heartbeat must be between {low:g} and {high:g} seconds (ten minutes), "
            f"got {heartbeat!r}"
        )


def welcome_heartbeat(stated: float) -> float | None:
    """The heartbeat interval a server's ``Welcome`` states; None if it states none (0).

    Raises:
        ValueError: naming the value, if it is not a number of seconds in :data:`HEARTBEATS`.
    """
    if stated == 0:
        return None
    low, high = HEARTBEATS
    if not low <= stated <= high:  # NaN included
        raise ValueError(
            f"the server sent a Welcome stating a heartbeat interval of {stated!r} s, outside "
            f"the {low:g} to {high:g} s this client accepts (a server silent for six of them "
            "is taken for gone); check that the address is a covey server's, and that it "
            "runs this covey release"
        )
    return stated

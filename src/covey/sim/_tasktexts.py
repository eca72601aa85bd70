"""The process backend's tasks as the JSON texts its pipe carries, checked as when deployed."""

from __future__ import annotations

from typing import Any

from covey.sim._sendable import LIMITS as _LIMITS
from covey.sim._shm import TaskItem
from covey.transport.grpc import _wire

__all__ = ["TaskTexts"]


class TaskTexts:
    """Tasks as JSON texts, checked against the limits the worker reads them with.

    Call it with each task's ``cid, kind, round, config, payload, extras``
    (``extras``: the payload is in the broadcast file, see :func:`broadcast_extras`)
    for its :data:`TaskItem`. A round's tasks share one config and one payload
    object (or each client has its own): the JSON of the last of each is used
    again for a task that carries the same object, which covey does not change
    once it is on a task (as :class:`~covey.sim._sendable.Unsent` relies on).

    Raises:
        WireError: for a config or payload JSON cannot carry, or one larger than a
            worker accepts (as the gRPC transport's ``task_header``): ``its config:``
            then the size, the limit and the entry. A config is held to the caps a
            deployed server sends it within (4 MiB of JSON), not the pipe's looser
            :data:`~covey.sim._sendable.LIMITS`: a client's config a deployed server
            could not send fails that client here too. So is a payload, unless it is
            named arrays (:func:`~covey.transport.grpc._wire.is_extras`), which a
            deployed server sends as arrays, not JSON, and the pipe carries within its
            own limits.
    """

    def __init__(self) -> None:
        """Nothing put in JSON yet."""
        self._config: tuple[Any, str] | None = None
        self._payload: tuple[Any, bool, str | None] | None = None

    def __call__(
        self, cid: int, kind: str, rnd: int, config: Any, payload: Any, extras: bool
    ) -> TaskItem:
        if self._config is None or self._config[0] is not config:
            self._config = (config, _within("config", config, _wire.WireLimits()))
        last = self._payload
        if last is None or last[0] is not payload or last[1] is not extras:
            last = self._payload = (payload, extras, _payload_text(payload, extras))
        return (cid, kind, rnd, self._config[1], last[2])


def _payload_text(payload: Any, extras: bool) -> str | None:
    if extras:
        return None
    limits = _LIMITS if _wire.is_extras(payload) else _wire.WireLimits()
    return _within("payload", payload, limits)


def _within(part: str, value: Any, limits: _wire.WireLimits) -> str:
    """``value`` as JSON within ``limits``; a ``WireError`` names ``part`` first."""
    try:
        return _wire.dumps_within(value, limits).decode()
    except _wire.WireError as exc:
        raise _wire.WireError(f"its {part}: {exc}") from None

"""Stand-ins for what the server's admission check is given: a call's context and events."""

from __future__ import annotations

from typing import Any


class Aborted(Exception):
    """What :meth:`Context.abort` raises, as gRPC's own abort ends the handler."""


class Context:
    """A gRPC call's context whose peer presented a certificate with ``auth``."""

    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self.auth = auth
        self.aborted: tuple[Any, str] | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.auth

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5"

    def abort(self, code: Any, why: str) -> None:
        self.aborted = (code, why)
        raise Aborted(why)


class Events:
    """The fleet events recorded, as ``(name, event, detail)`` tuples."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def event(self, *args: str) -> None:
        self.events.append(args)

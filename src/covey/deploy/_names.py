"""Each client's chosen name: ids stay internal, names go into history, logs and failures."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from covey.core._history import History, RoundRecord

if TYPE_CHECKING:
    from covey.server._store import RunStore

__all__ = ["ClientNames", "LateStore"]


class _Records(Protocol):
    """Where a run keeps its clients' ids and fleet events (the run store)."""

    def client_id(self, name: str) -> int:
        """The stable id of client ``name``."""
        ...

    def log_event(self, client: str, event: str, detail: str = "") -> None:
        """Record a fleet event."""
        ...


class ClientNames:
    """Gives each client name a stable id and remembers the name of every id.

    Args:
        records: The run's store (ids kept across restarts), or None for ids
            ``0, 1, 2, ...`` in order of first sight, kept in memory.
        shared: A dict to keep filled with ``id -> name`` (a console reads it).
        on_event: Also called with every fleet event ``(name, event, detail)``.
    """

    def __init__(
        self,
        records: _Records | None,
        shared: dict[int, str] | None = None,
        on_event: Callable[[str, str, str], None] | None = None,
    ) -> None:
        """No client seen yet (besides those in ``shared``)."""
        self.records = records
        self.names: dict[int, str] = shared if shared is not None else {}
        self.on_event = on_event
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def client_id(self, name: str) -> int:
        """The stable id of client ``name``, remembering the name."""
        if self.records is not None:
            cid = self.records.client_id(name)
        else:
            with self._lock:
                cid = self._ids.setdefault(name, len(self._ids))
        with self._lock:
            self.names[cid] = name
        return cid

    def event(self, name: str, event: str, detail: str = "") -> None:
        """Record a fleet event and pass it on."""
        if self.records is not None:
            self.records.log_event(name, event, detail)
        if self.on_event is not None:
            self.on_event(name, event, detail)

    def name_history(self, history: History) -> None:
        """Name the failures of ``history``'s last round, and give it every client's name."""
        if history.rounds:
            self.name_failures(history.rounds[-1])
        with self._lock:
            history.clients = dict(self.names)

    def name_failures(self, record: RoundRecord) -> None:
        """Put each failed client's name on its failure in ``record``."""
        with self._lock:
            for failure in record.failures:
                failure.name = failure.name or self.names.get(failure.cid, "")


class LateStore:
    """The run store as the transport sees it: it exists only once the port is bound.

    Args:
        store: The store of a resumed run, or None until :meth:`ready` gives it.
    """

    def __init__(self, store: RunStore | None) -> None:
        self._store = store
        self._ready = threading.Event()
        if store is not None:
            self._ready.set()

    def ready(self, store: RunStore | None) -> None:
        """Give the store, once the run is open (None: a run that keeps nothing)."""
        self._store = store
        self._ready.set()

    def _wait(self) -> RunStore:
        self._ready.wait(30.0)
        if self._store is None:
            raise RuntimeError("the run store is not open")
        return self._store

    def client_id(self, name: str) -> int:
        """The stable id of client ``name``, once the store is open."""
        return self._wait().client_id(name)

    def log_event(self, client: str, event: str, detail: str = "") -> None:
        """Record a fleet event, once the store is open."""
        self._wait().log_event(client, event, detail)

    def close(self) -> None:
        """Close the store, if it is open."""
        if self._store is not None:
            self._store.close()

"""Checkpoints off the round's critical path: round r is written while round r+1 trains.

:class:`BackgroundSaver` hands each completed round to one writer thread and
returns at once. At most one save is in flight: submitting round r+1 first
waits for round r's save to finish, so a slow disk delays the loop by at most
one round and memory holds at most one extra reference to a model (the
weights the loop has already replaced, never a copy). Each save is
:meth:`RunStore.save_round`, atomic on its own, so a crash at any moment
(SIGKILL included) leaves the newest *completed* save loadable.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from covey.core._weights import Weights
from covey.server._store import RunStore

logger = logging.getLogger("covey")


class SaveError(RuntimeError):
    """A round could not be written to the run folder (a full disk, say): the run stops.

    The deployed server raises it when it awaits round r's save as round r + 1
    folds its first reply; the round loop reports it as the failed save it is,
    not as a failure of the aggregation step.
    """


class BackgroundSaver:
    """Writes rounds to a :class:`RunStore` in a writer thread, one at a time.

    Args:
        store: Where rounds are saved.
        keep_last: If given, only the newest ``keep_last`` rounds keep their weights
            file (see :meth:`RunStore.save_round`).

    Example:
        >>> saver = BackgroundSaver(store)  # doctest: +SKIP
        >>> saver.submit(1, weights, record, state)  # doctest: +SKIP
        >>> saver.flush()  # waits, and raises what a save raised  # doctest: +SKIP
    """

    def __init__(self, store: RunStore, *, keep_last: int | None = None) -> None:
        self.store = store
        self.keep_last = keep_last
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.round = 0  # the round saved last, or in flight

    def submit(
        self,
        round: int,
        weights: Weights,
        record: Mapping[str, Any] | None,
        server_state: bytes | None = None,
    ) -> None:
        """Start saving ``round``; waits for the previous save first.

        ``weights`` must not change after this call: the round loops replace
        their global weights each round rather than write into them, so passing
        the loop's current weights is safe.

        Raises:
            Exception: what the previous save raised, if it failed.
        """
        self.flush()
        arrays = dict(weights)  # the mapping may be rebound by the loop; the arrays are not
        self.round = round
        self._thread = threading.Thread(
            target=self._save,
            args=(round, arrays, record, server_state),
            name=f"covey-save-round-{round}",
            daemon=True,
        )
        self._thread.start()

    def _save(
        self,
        round: int,
        weights: Weights,
        record: Mapping[str, Any] | None,
        server_state: bytes | None,
    ) -> None:
        try:
            self.store.save_round(round, weights, record, server_state, keep_last=self.keep_last)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop's thread by flush()
            self._error = exc

    def flush(self) -> None:
        """Wait for the save in flight, if any; raise its error if it failed."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            logger.error("saving a round failed: %s", error)
            raise error

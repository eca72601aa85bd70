"""Checkpoints off the round's critical path: round r is written while round r+1 trains.

:class:`BackgroundSaver` hands each completed round to one writer thread and
returns at once. At most one save is in flight: submitting round r+1 first
waits for round r's save to finish, so a slow disk delays the loop by at most
one round and memory holds at most one extra reference to a model (the
weights the loop has already replaced, never a copy). Each save is
:meth:`RunStore.save_round`, atomic on its own, so a crash at any moment
(SIGKILL included) leaves the newest *completed* save loadable.
:func:`flushing` makes a run's strategy await the save in flight when the
next round folds its first reply.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from covey.aggregate import Contribution, Step
from covey.aggregate._base import WRAPS
from covey.core._history import History, RoundRecord
from covey.core._recordvalues import Written, changed, written
from covey.core._weights import Weights
from covey.server._callbacks import REPLAYED, RoundCallback
from covey.server._lasteval import save_evaluation
from covey.server._room import no_room, room_note
from covey.server._roundfiles import WEIGHTS_DIR
from covey.server._state import dump_state
from covey.server._store import RunStore
from covey.strategies._strategy import Strategy
from covey.strategies._subclass import replace_strategy

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
        # A resumed run's last saved round, which may come again evaluated (see _lasteval).
        self._resumed = store.last_round()

    def submit_round(
        self,
        record: RoundRecord,
        weights: Weights,
        agg_state: Any,
        types: Mapping[str, type] | None,
        *,
        pending_callbacks: bool = False,
        returned: Mapping[str, Any] | None = None,
    ) -> None:
        """Start saving a loop's completed round: its record, model and aggregation state.

        The run's last saved round, given again as a resumed run evaluates it
        (:mod:`covey.server._lasteval`), has its record written over the saved one,
        at once; its model and state are the saved ones already.

        Args:
            record: The round's record (the round number is its ``round``).
            weights: The loop's global weights after the round (see :meth:`submit`).
            agg_state: The loop's aggregation state after the round.
            types: The named tuple types a resume rebuilds (see
                :func:`~covey.server._state.state_types`).
            pending_callbacks: The run has ``on_round`` callbacks, called with the
                round while it is saved: the save marks them as yet to return
                (see :meth:`RunStore.save_round`).
            returned: The record of the round saved before, as its callbacks left it
                (:func:`rewritten`), written over that round's saved one with this save.

        Raises:
            covey.server.StateError: the state holds what cannot be stored.
            Exception: what the previous save raised, if it failed.
        """
        if record.round == self._resumed:  # the saved round, evaluated now: its record only
            # (``returned`` is this round's as its callbacks left it: ``record`` holds it)
            self.flush()
            save_evaluation(self.store, asdict(record), pending_callbacks=pending_callbacks)
            return
        state = dump_state(agg_state, types)
        self.submit(record.round, weights, asdict(record), state, pending_callbacks, returned)

    def submit(
        self,
        round: int,
        weights: Weights,
        record: Mapping[str, Any] | None,
        server_state: bytes | None = None,
        pending_callbacks: bool = False,
        returned: Mapping[str, Any] | None = None,
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
            args=(round, arrays, record, server_state, pending_callbacks, returned),
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
        pending_callbacks: bool,
        returned: Mapping[str, Any] | None,
    ) -> None:
        try:
            self.store.save_round(
                round,
                weights,
                record,
                server_state,
                keep_last=self.keep_last,
                pending_callbacks=pending_callbacks,
                returned=returned,
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the loop's thread by flush()
            self._error = exc

    def flush(self) -> None:
        """Wait for the save in flight, if any; raise its error if it failed."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            what = "an update" if self.store.step == "update" else "a round"
            logger.error("saving %s failed: %s", what, error)
            raise error

    def no_room_beside(self, exc: OSError) -> None:
        """Say a full disk that ``exc``, a file written beside the save in flight, found.

        ``history.json`` (and a deployed run's ``plot.png``) is written while the
        round's weights file, the larger, is saved in the writer thread: which of
        them finds the disk full first is chance. The save is awaited: if it failed
        too, its error (naming the round's file and the room the kept rounds
        need) is raised, caused by ``exc``; else ``exc`` says that room too.
        """
        if not no_room(exc):
            return
        try:
            self.flush()
        except Exception as failed:
            raise failed from exc
        store = self.store
        note = room_note(store.run_dir / WEIGHTS_DIR, self.keep_last, store.step)
        exc.args = (f"{exc}{note}",)


def written_beside(
    saver: BackgroundSaver | None, write: Callable[[History], object], history: History
) -> None:
    """``write(history)``, a file written beside the round's save; a full disk said as such.

    See :meth:`BackgroundSaver.no_room_beside`: the run stops with the save's error when
    both found the disk full, whichever found it first.
    """
    try:
        write(history)
    except OSError as exc:
        if saver is not None:
            saver.no_room_beside(exc)
        raise


def flushing(strategy: Strategy, saver: Callable[[], BackgroundSaver | None]) -> Strategy:
    """``strategy`` whose aggregation first waits for the save in flight, if any.

    The previous round's checkpoint is written while clients train; it is
    awaited when the first reply is folded, so the model it holds is freed
    before the round's accumulator and replies take memory.

    Args:
        strategy: The run's strategy.
        saver: Returns the run's saver (None while there is none).

    Returns:
        The strategy with its aggregation step wrapped; a failed save raises
        :class:`SaveError` naming the round and the run folder.
    """
    inner = strategy.aggregator

    def update(state: Any, event: Any) -> Any:
        background = saver()
        if background is not None and isinstance(event, Contribution):
            try:
                background.flush()
            except Exception as exc:
                store = background.store  # an asynchronous run's rounds are its updates
                where = f"saving {store.step} {background.round} to {store.run_dir}"
                raise SaveError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
        return inner.update(state, event)

    setattr(update, WRAPS, inner)  # once a contribution passed, it is ``inner``
    return replace_strategy(strategy, aggregator=Step(inner.init, update))


def rewritten(record: RoundRecord, before: Written) -> dict[str, Any] | None:
    """``record`` as a dict to save again if its callbacks wrote into it since ``before``.

    The round's save holds its record as it was before its ``on_round`` callbacks
    ran; what they wrote (see :func:`~covey.core._recordvalues.settle`) is written
    over it with the next round's save, or as the run ends
    (:meth:`RunStore.callbacks_returned`), so a resumed run loads the round as
    the run never stopped holds it. None: they wrote nothing (nothing to save).
    """
    return asdict(record) if changed(record, before) else None


Called = tuple[int, dict[str, Any] | None]
"""The round :func:`call_pending` called the callbacks with, and its record to save again."""


def call_pending(
    store: RunStore,
    history: History | None,
    start: int,
    on_round: RoundCallback | None,
) -> Called | None:
    """Call ``on_round`` with the saved round whose callbacks the stopped run left unfinished.

    A run stopped by a callback that raised, or killed before its callbacks
    returned, left that round marked in its store (:attr:`RunStore.pending_callbacks`);
    the resumed run calls them with the round's saved record before it goes on,
    as the stopped run would have. A round marked but not resumed after (its files
    did not survive: it is run again) is not called here.

    Args:
        store: The resumed run's store.
        history: The rounds the run resumes with.
        start: The first round the resumed run runs.
        on_round: The run's callback, if any.

    Returns:
        The round whose callbacks returned now and its record to save again
        (:func:`rewritten`), or None if none was called.
    """
    if on_round is None or history is None:
        return None
    pending = store.pending_callbacks
    if pending is None or pending != start - 1:
        return None
    record = next((r for r in reversed(history.rounds) if r.round == pending), None)
    if record is None:
        return None
    logger.info(
        "calling on_round with %s %d again: its callbacks had not all returned when the run "
        "stopped",
        store.step,
        pending,
    )
    token = REPLAYED.set(pending)  # a console says it is the saved round, not a new one
    before = written(record)
    try:
        on_round(record)
    finally:
        REPLAYED.reset(token)
    return pending, rewritten(record, before)

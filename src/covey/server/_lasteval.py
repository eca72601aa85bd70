"""The final evaluation of a resumed run whose last round was saved before it was due.

With ``evaluate_every=N`` a run evaluates every ``N``-th round and its last one.
A run stopped (killed, or stopped by a failing callback) after saving a round
``r`` that was not due, then resumed with ``rounds=r``, has no round left to
train: the loop evaluates the saved model of round ``r`` then, federated and
central as the run is set to, and hands the round's record, now holding the
evaluation, to its round callback once more. The run's saver writes that record
over the one saved (:func:`save_evaluation`, one transaction), and
``history.json`` and the trackers take it as they take any round. A kill during
the evaluation leaves the saved record as it was, so the next resume evaluates
again; one after the record is written finds the round evaluated.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from covey.core._history import RoundRecord
from covey.server._refusednote import refused_note
from covey.server._roundfiles import record_json
from covey.server._runrecords import PENDING_KEY
from covey.server._store import RunStore
from covey.strategies._checks import clients

if TYPE_CHECKING:
    from covey.server._base import _LoopBase

__all__ = ["add_counts", "evaluate_saved_last", "lacks_final_evaluation", "save_evaluation"]


def lacks_final_evaluation(record: RoundRecord, every: int) -> bool:
    """Whether ``record``, a run's last round, was saved without the evaluation it is due.

    A round ``evaluate_every`` made due was evaluated when it ran; one that was not
    holds no trace of an evaluation (no loss, metric, participant or failure of
    either kind) until its final evaluation is recorded.
    """
    if every == 1 or record.round % every == 0:
        return False
    return not (
        record.evaluate_participants
        or record.evaluate_failures
        or record.evaluate_loss is not None
        or record.evaluate_metrics
        or record.central_loss is not None
        or record.central_metrics
    )


def evaluate_saved_last(loop: _LoopBase, rounds: int, *, federated: bool = True) -> None:
    """Evaluate the saved round ``rounds`` of a run resumed with no round left to train.

    The loop's model is that round's saved one. ``federated``: the loop is a
    :class:`~covey.server.RoundLoop`, whose clients evaluate it too (an asynchronous
    loop's ``evaluate_fn`` alone does). Does nothing when the round is not the
    history's last or was evaluated already.
    """
    rounds_done = loop.history.rounds
    record = rounds_done[-1] if rounds_done else None
    if record is None or record.round != rounds or rounds == 0:
        return
    if not lacks_final_evaluation(record, loop.strategy.evaluate_every):
        return
    t0 = time.perf_counter()
    evaluated = federated and _federated(loop, rounds, record)
    t1 = time.perf_counter()
    central = loop._central(record)
    t2 = time.perf_counter()
    durations = record.durations  # a stage that did not run takes no time, and is not named
    if evaluated:
        durations["evaluate"] = durations.get("evaluate", 0.0) + t1 - t0
    if central:
        durations["central"] = durations.get("central", 0.0) + t2 - t1
    durations["total"] = durations.get("total", 0.0) + t2 - t0
    loop._say_renamed(record)
    if loop.on_round is not None:  # the run's saver writes the record over the saved one
        loop.on_round(record)


def _federated(loop: Any, rnd: int, record: RoundRecord) -> bool:
    """The federated evaluation of round ``rnd`` by the clients of a round loop; if it ran."""
    strategy, wait = loop.strategy, getattr(loop.transport, "wait_for_clients", None)
    wanted = max(strategy.min_available_clients, 1)
    waits = strategy.client_count("evaluate", wanted) > 0
    # deployed: clients reconnect (too few: said, skipped, in one line with the wait's note)
    waited = ""
    if wait and waits and not wait(wanted, loop.wait_timeout):
        waited = f" (the final evaluation waited {loop.wait_timeout} s for {clients(wanted)})"
        waited += refused_note(loop.transport)
    return bool(loop._federated_evaluate(rnd, record, waited))


def add_counts(record: RoundRecord, counts: tuple[int, int]) -> None:
    """Add the bytes sent and received ``counts`` to ``record``.

    A round evaluated later (see :func:`evaluate_saved_last`) keeps its fit's too.
    """
    record.bytes_sent = (record.bytes_sent or 0) + counts[0]
    record.bytes_received = (record.bytes_received or 0) + counts[1]


def save_evaluation(
    store: RunStore, record: Mapping[str, Any], *, pending_callbacks: bool = False
) -> None:
    """Write the evaluated ``record`` of the run's last saved round over the one saved.

    One transaction: a kill leaves the saved record or the new one.
    ``pending_callbacks`` marks the round's ``on_round`` callbacks as yet to
    return, as :meth:`RunStore.save_round` does.

    Raises:
        ValueError: the record is not of the run's last saved round.
    """
    rnd = record.get("round")
    last = store.last_round()
    if not isinstance(rnd, int) or rnd != last:
        raise ValueError(
            f"cannot record the evaluation of {store.step} {rnd!r} in {store.run_dir}: only "
            f"its last saved {store.step} ({last}) is evaluated again"
        )
    text = record_json(rnd, record)
    store._db.for_writing()  # a run opened to read: refused naming the folder
    with store._db.transaction() as conn:
        conn.execute("UPDATE rounds SET record = ? WHERE round = ?", (text, rnd))
        if pending_callbacks:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (PENDING_KEY, str(rnd))
            )

"""What a SCAFFOLD client is told with each fit task: the last round that applied its change.

A SCAFFOLD client computes ``Delta c_i`` as it builds its reply, before the server
has seen it; the server's ``c`` takes that change only if the round folded the
reply and applied its aggregate (not a reply past ``round_timeout``, one a step
dropped or refused, a client that failed after building it, a round whose
aggregation failed or whose new ``c`` overflowed). Each fit task of a run whose
aggregator holds ``scaffold()`` therefore carries, in its config, the last round
whose applied aggregate held that client's update (0: none), read from the
history; the client keeps its change of ``c_i`` only if that is the round it
was made in (:class:`covey.clients.ControlVariate`), so ``c`` stays the mean of
the clients' ``c_i`` over ``N``. The history is that of a resumed run too, so a
round sent again after a resume is answered from the same count.

An asynchronous (FedBuff) run folds a reply into whichever update is filling
when it arrives, so a client is told instead the round of the task (the update
it was sent in, ``config["round"]``) whose reply the last applied update took:
the loop lists those rounds beside the update's participants in its record
(``aggregate_info["scaffold_sent"]``). A client has one task at a time and
gets none while its reply waits in the buffer, so no two of its replies that
an update took came from tasks of one round.
"""

from __future__ import annotations

from collections.abc import Mapping

from covey.aggregate import Step
from covey.aggregate._scaffold import APPLIED_ROUND, tracks_control
from covey.core._history import History, RoundRecord
from covey.core._messages import Task

__all__ = ["SENT", "AppliedRounds"]

SENT = "scaffold_sent"
"""An asynchronous update's ``aggregate_info`` entry: the round of each participant's task."""


class AppliedRounds:
    """For each client, the last round whose applied aggregate took its update."""

    def __init__(self) -> None:
        self._last: dict[int, int] = {}
        self._read = 0  # records of the history read so far

    def told(
        self, aggregator: Step, tasks: Mapping[int, Task], history: History
    ) -> dict[int, Task]:
        """``tasks``, each fit task with :data:`APPLIED_ROUND` in its config under SCAFFOLD.

        Without ``scaffold()`` in ``aggregator``, the tasks as they are.
        """
        if not tracks_control(aggregator):
            return dict(tasks)
        rounds = history.rounds
        if len(rounds) < self._read:  # another history (a run resumed in this object)
            self._last, self._read = {}, 0
        for record in rounds[self._read :]:
            if record.aggregated and "scaffold_overflow" not in record.aggregate_info:
                for cid, sent in zip(record.fit_participants, _sent(record), strict=True):
                    self._last[cid] = max(sent, self._last.get(cid, 0))
        self._read = len(rounds)
        return {
            cid: Task(
                task.kind,
                task.round,
                {**task.config, APPLIED_ROUND: self._last.get(cid, 0)},
                task.weights,
                task.payload,
            )
            for cid, task in tasks.items()
        }


def _sent(record: RoundRecord) -> list[int]:
    """The round of each participant's task: the round's own, or as an async update lists them."""
    sent = record.aggregate_info.get(SENT)
    if isinstance(sent, list) and len(sent) == len(record.fit_participants):
        return [int(r) for r in sent]
    return [record.round] * len(record.fit_participants)

"""The metrics a round's clients report, with a cap on the distinct names among them.

Each result carries at most :data:`~covey.core._messages.MAX_METRICS` metrics,
but nothing bounded the names of a round's clients together: a thousand
clients each reporting a thousand names of their own made a million names in
the round's record, the server's memory and ``history.json``. A round keeps
at most :data:`MAX_ROUND_METRICS` distinct names for its fit metrics, and as
many for its evaluate metrics; a client whose metrics would add names past
that fails alone, saying so, before its update is folded, and the round goes
on with the others.
"""

from __future__ import annotations

from collections.abc import Callable

from covey.aggregate._base import Contribution
from covey.core._messages import Metrics
from covey.core._roundrecord import Failure

__all__ = ["MAX_ROUND_METRICS", "RoundMetrics"]

MAX_ROUND_METRICS = 5000
"""The most distinct metric names a round's clients may report together (fit and evaluate each).

Five results of :data:`~covey.core._messages.MAX_METRICS` names each, all different;
clients reporting the same names (the usual case) never come near it.
"""


class RoundMetrics(list[tuple[int, Metrics]]):
    """``(num_examples, metrics)`` of each client a round counted, and the names among them.

    Args:
        kind: The clients' task kind (``"fit"`` or ``"evaluate"``), named in a refusal.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.names: set[str] = set()

    def refusal(self, metrics: Metrics) -> str | None:
        """Why a client reporting ``metrics`` cannot be counted in the round, or None.

        Example:
            >>> taken = RoundMetrics("fit")
            >>> taken.append((10, {"acc": 0.5}))
            >>> taken.refusal({"acc": 0.7}) is None
            True
        """
        if len(self.names) + len(metrics) <= MAX_ROUND_METRICS:
            return None  # the usual case: no name counted twice needed
        new = [name for name in metrics if name not in self.names]
        if len(self.names) + len(new) <= MAX_ROUND_METRICS:
            return None
        return (
            f"its {self.kind} metrics add {len(new)} names the round's other clients did not "
            f"report (the first {new[0][:60]!r}) to their {len(self.names)}, over the limit of "
            f"{MAX_ROUND_METRICS} distinct metric names in a round: report the same names from "
            "every client (an array metric holds many values under one name)"
        )

    def admit(
        self,
        contribution: Contribution | None,
        record_failure: Callable[[list[Failure], Failure], None],
        failures: list[Failure],
    ) -> Contribution | None:
        """``contribution``, or None with ``record_failure(failures, ...)`` saying why it is not."""
        if contribution is None:
            return None
        why = self.refusal(contribution.metrics)
        if why is None:
            return contribution
        record_failure(failures, Failure(contribution.cid, self.kind, why))
        return None

    def append(self, item: tuple[int, Metrics]) -> None:
        """Count a client's ``(num_examples, metrics)``, and its metrics' names."""
        super().append(item)
        self.names.update(item[1])

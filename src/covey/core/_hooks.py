"""Run hooks: what a strategy may ask of the round loop besides aggregation.

A hook sees the aggregation chain's state at fixed points of a run and may
adjust it at the start, stop the run cleanly before a round, add to each round's
record, and speak once at the end. The loop knows nothing of what a hook does;
differential privacy (:mod:`covey.privacy`) uses one to account its budget.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from covey.core._history import History, RoundRecord

RESUMED_AFTER_CRASH = "resumed_after_crash"
"""Set in a resumed history's config when a server died without ending the run (SIGKILL,
power loss), or failed after changing the model, since its last saved round: what it had
sent since is unknown. The value counts such servers (``True`` counts one): each may
have released a round unsaved."""


def unsaved_releases(history: History) -> int:
    """How many rounds may have left dead servers unsaved (:data:`RESUMED_AFTER_CRASH`)."""
    value = history.config.get(RESUMED_AFTER_CRASH)
    if not history.rounds or value is None or value is False:
        return 0
    return 1 if value is True else max(int(value), 0)


def stopped_unsaved(history: History) -> str:
    """Says that a server stopped before saving the round after the history's last one.

    Whether it was killed, interrupted or failed is not recorded, so none is named.
    """
    after = history.rounds[-1].round + 1 if history.rounds else 1
    return (
        f"a server of this run stopped without saving round {after} (killed, interrupted or failed)"
    )


@runtime_checkable
class RunHook(Protocol):
    """Called by the round loop at the start, around each round, and at the end of a run."""

    def start(self, state: Any, seed: int | None, history: History) -> Any:
        """Return the aggregation state to run with.

        Args:
            state: The aggregation chain's state (fresh, or restored on resume).
            seed: The run's seed in simulation; None in a deployed run.
            history: The history so far (empty unless the run resumes).
        """
        ...

    def before_round(self, round: int, state: Any) -> str | None:
        """A reason to stop the run before ``round``, or None to run it.

        Args:
            round: The number of the round about to run (1 for the first).
            state: The aggregation state the round starts from.
        """
        ...

    def after_round(self, record: RoundRecord, state: Any) -> None:
        """Add to the record of a finished round (``state`` is the state after it).

        ``record`` is the round's own: a round that ``evaluate_every`` does not
        evaluate holds no evaluation (``evaluate_loss`` and ``central_loss`` None),
        never an earlier round's, so a hook that stops the run on an evaluated
        metric decides on the rounds that hold one. The history given to
        :meth:`start` holds ``record`` from the next :meth:`before_round` on.

        Args:
            record: The finished round's record, which the hook may add to.
            state: The aggregation state after the round.
        """
        ...

    def finish(self, history: History, state: Any) -> None:
        """The run is over (all rounds done, or stopped before one).

        Args:
            history: The run's history, every finished round in it.
            state: The aggregation state the run ended with.
        """
        ...

"""Client state that a round sent again starts from where it stood the first time.

A deployed server checkpoints round r while round r + 1 trains. Killed then,
it resumes from its last saved round and sends the rounds after it again, to
clients that already trained in them. A client whose state changes in every
round it trains in (SCAFFOLD's control variate, top-k's error feedback) keeps
the state it had before each of its last rounds, and a task for a round it
already trained in rewinds it there, so the repeated round gives the bits it
gave the first time.
"""

from __future__ import annotations

from typing import Final, Generic, TypeVar

__all__ = ["KEPT_ROUNDS", "ByRound"]

T = TypeVar("T")

KEPT_ROUNDS: Final = 2
"""The rounds a client can go back: the round in flight and the one being checkpointed."""


class ByRound(Generic[T]):
    """A value that changes once per round, and what it was before its last rounds.

    Args:
        value: The value before the first round (None: not made yet).

    Example:
        >>> state = ByRound(0)
        >>> for rnd in (1, 2, 3):
        ...     state.advance(rnd, state.at(rnd) + 10)
        >>> state.at(2)  # round 2 sent again: the value before round 2
        10
    """

    def __init__(
        self, value: T | None = None, before: list[tuple[int, T | None]] | None = None
    ) -> None:
        self.value = value
        # (round, the value before it), oldest first; given: as :attr:`before` was
        self._before: list[tuple[int, T | None]] = list(before or [])[-KEPT_ROUNDS:]

    @property
    def before(self) -> list[tuple[int, T | None]]:
        """Each of the last rounds with the value before it, oldest first (to keep on disk).

        A client rebuilt from its files (a simulation resumed after a kill) needs them:
        the run may resume from the round before the one being checkpointed.
        """
        return list(self._before)

    def at(self, round: int | None) -> T | None:
        """The value to train round ``round`` from: rewound if that round was trained before.

        Args:
            round: The task's round; None (unknown) takes the value as it is.
        """
        if round is not None:
            while self._before and self._before[-1][0] >= round:
                self.value = self._before.pop()[1]
        return self.value

    def advance(self, round: int | None, value: T) -> None:
        """Round ``round`` changed the value to ``value``; keep the one before it."""
        if round is not None:
            self._before.append((round, self.value))
            del self._before[:-KEPT_ROUNDS]
        self.value = value

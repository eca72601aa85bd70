"""The short way through a mean: a round loop folds plain replies without events.

FedAvg's step (:func:`~covey.aggregate.weighted_mean`, alone or first in a
chain such as ``chain(weighted_mean(), server_adam())``) turns each reply into
a :class:`~covey.aggregate.Contribution`, passes it down the chain and folds
it. For the common reply (full weights, every value bounded, no extras) a
round loop can fold it straight into the mean's sums instead: the same
function on the same numbers in the same order, so the result is the same to
the bit, without the objects and calls of the event chain. Any other reply
goes the general way, after :meth:`ShortFold.state` hands the sums back.
"""

from __future__ import annotations

from typing import Any

from covey.aggregate._base import MEAN, STEPS, Step, innermost
from covey.aggregate._mean import _UNGUARDED, _fold_unguarded, _MeanState
from covey.core._weights import Weights


class ShortFold:
    """A mean's running sums, open for folding plain replies one after another.

    Made by :func:`short_fold` from the aggregation state after ``Begin``;
    :meth:`state` gives the aggregation state back, with everything folded.
    """

    __slots__ = (
        "_first",
        "_state",
        "acc",
        "count",
        "ex_w",
        "scale",
        "scratch",
        "taken",
        "total",
        "weighted",
    )

    def __init__(self, state: Any, first: _MeanState | None, weighted: bool) -> None:
        self._state = state
        self._first = first  # the mean's state inside a chain's tuple; None: state is it
        mean: _MeanState = state if first is None else first
        # Only once a first contribution made the sums and the scratch, all bounded.
        usable = mean.scratch is not None and mean.bounded and not mean.ints
        self.acc = mean.acc_weights if usable else None
        self.scratch = mean.scratch
        self.weighted = weighted
        self.scale = mean.scale_weights
        # Running sums as the mean keeps them, added to in the same order: the same floats.
        self.ex_w = mean.examples_weights
        self.total = mean.total
        self.taken = 0  # contributions folded here
        self.count = 0  # their examples

    def take(self, weights: Weights, num_examples: int, bounded: bool) -> bool:
        """Fold a client's checked full ``weights``; False: it must go the general way.

        ``bounded`` is what :meth:`~covey.core.WeightsSpec.conformity` said of them.
        """
        acc = self.acc
        n = float(num_examples) if self.weighted or not num_examples else 1.0
        if acc is None or not bounded or n == 0.0:
            return False
        total = self.total + n
        if total > _UNGUARDED:
            return False
        _fold_unguarded(acc, self.scratch, weights, n / self.scale)  # type: ignore[arg-type]
        self.ex_w += n
        self.total = total
        self.taken += 1
        self.count += num_examples
        return True

    def state(self) -> Any:
        """The aggregation state with every contribution :meth:`take` folded."""
        mean = self._state if self._first is None else self._first
        if self.taken:
            mean = mean._replace(
                examples_weights=self.ex_w,
                total=self.total,
                clients=mean.clients + self.taken,
                examples=mean.examples + self.count,
            )
        return mean if self._first is None else (mean, *self._state[1:])


def short_fold(step: Step, state: Any) -> ShortFold | None:
    """A :class:`ShortFold` over ``state``, if ``step`` is a mean or a chain that starts with one.

    None for any other step, and before ``Begin`` (no round's model yet).
    """
    update = innermost(step)
    steps = getattr(update, STEPS, None)
    first = None
    if steps is not None:
        if not isinstance(state, tuple) or not state:
            return None
        update, first = innermost(steps[0]), state[0]
    weighted = getattr(update, MEAN, None)
    mean = state if first is None else first
    if weighted is None or type(mean) is not _MeanState or mean.params is None:
        return None
    return ShortFold(state, first, bool(weighted))

"""The server's limits on federated XGBoost: the trees a reply adds, and the booster's size."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from covey.aggregate import Aggregate, End, Step
from covey.aggregate._base import carrying
from covey.core._history import History, RoundRecord
from covey.core._weights import Weights, WeightsError
from covey.xgboost._model import from_weights, num_trees, parse
from covey.xgboost._validate import parallel_trees, trees_per_iteration

__all__ = [
    "FULL",
    "CapHook",
    "capping",
    "check_count",
    "check_local_rounds",
    "check_max_trees",
    "mark_full",
    "past_cap",
    "start_within",
]

logger = logging.getLogger(__name__)


def check_count(
    client: dict[str, Any], added: int, local_rounds: int, per: tuple[int, int], what: str
) -> None:
    """Refuse a client's model that adds another number of trees than ``local_rounds`` grow.

    A model with more would bloat the global booster (and crowd out the other
    clients' trees under the capacity or ``max_trees``); one with fewer did not
    boost the rounds asked.

    Raises:
        WeightsError: naming the trees expected and the trees the model adds.
    """
    groups, parallel = per
    expected = local_rounds * groups * parallel
    if added == expected:
        return
    hint = ""
    model = client["learner"]["gradient_booster"]["model"]
    try:
        theirs = parallel_trees(model, what)
    except WeightsError as exc:
        hint = f" ({exc})"
    else:
        if theirs != parallel:
            hint = (
                f" (it grows num_parallel_tree={theirs}, the global model {parallel}: make "
                "initial_model with the clients' params)"
            )
    raise WeightsError(
        f"{what} adds {added} trees to the global model, {expected} expected: local_rounds="
        f"{local_rounds} boosting rounds of {groups * parallel} tree(s) each ({groups} per "
        f"class and target, num_parallel_tree={parallel}){hint}; clients boost the fit "
        "config's 'local_rounds' rounds"
    )


def check_max_trees(max_trees: Any) -> int | None:
    """``max_trees`` as given, if it is None or a whole number of trees of at least 1."""
    if max_trees is None:
        return None
    if isinstance(max_trees, bool) or not isinstance(max_trees, int | np.integer):
        raise TypeError(
            "max_trees must be an int (the most trees the global booster keeps) or None "
            f"(no bound), got {type(max_trees).__name__} {max_trees!r:.80}"
        )
    if max_trees < 1:
        raise ValueError(
            f"max_trees must be at least 1 (the most trees the global booster keeps), "
            f"got {max_trees}"
        )
    return int(max_trees)


def check_local_rounds(local_rounds: Any) -> int:
    """``local_rounds`` as given, if it is a whole number of boosting rounds of at least 1."""
    if isinstance(local_rounds, bool) or not isinstance(local_rounds, int | np.integer):
        raise TypeError(
            "local_rounds must be an int (the boosting rounds each client runs per round), "
            f"got {type(local_rounds).__name__} {local_rounds!r:.80}"
        )
    if local_rounds < 1:
        raise ValueError(
            "local_rounds must be at least 1 (the boosting rounds each client runs per round), "
            f"got {local_rounds}"
        )
    return int(local_rounds)


def start_within(params: Weights, max_trees: int) -> None:
    """Refuse a global model that already holds more than ``max_trees``, or a cap of no iteration.

    Raises:
        WeightsError: naming the model's trees, or the trees of one boosting iteration.
    """
    doc = parse(from_weights(params))
    trees = len(doc["learner"]["gradient_booster"]["model"]["trees"])
    if trees > max_trees:
        raise WeightsError(
            f"initial weights: the booster holds {trees} trees, more than max_trees={max_trees}: "
            "raise max_trees or start from a smaller booster"
        )
    groups, parallel = trees_per_iteration(doc)
    if groups * parallel > max_trees:
        raise WeightsError(
            f"max_trees={max_trees} holds no boosting iteration of this model, which grows "
            f"{groups * parallel} trees per iteration (one per class and target, "
            f"num_parallel_tree={parallel} each): raise max_trees"
        )


def past_cap(
    cap: int | None,
    params: Weights,
    base: bytes,
    merged: bytes,
    event: End,
    clients: int,
    examples: int,
) -> Aggregate | None:
    """The round's aggregate if ``merged`` holds more than ``cap`` trees: the global model, kept.

    Whole rounds only: a round whose new trees would take the booster past
    ``max_trees`` adds none of them (its ``aggregate_info`` holds
    ``max_trees_reached`` and the ``trees_left_out``). None: the round's model fits.
    """
    if cap is None:
        return None
    trees = num_trees(merged)
    if trees <= cap:
        return None
    added = trees - num_trees(base)
    logger.info(
        "round %d: the clients' %d new trees would take the booster past max_trees=%d; "
        "the global model is kept as it is",
        event.round,
        added,
        cap,
    )
    info = {**event.info, "max_trees_reached": True, "trees_left_out": added}
    return Aggregate(event.round, clients, examples, weights=params, info=info)


FULL = "max_trees_full"
"""Set (True) in the ``aggregate_info`` of a round after which the next could add no tree."""


def mark_full(
    out: Aggregate, cap: int | None, model: bytes, local_rounds: int, clients: int
) -> Aggregate:
    """``out``, its info holding :data:`FULL` if another round would take ``model`` past ``cap``.

    A round with as many ``clients`` as this one adds ``local_rounds`` boosting
    rounds of one tree per output group and parallel tree, per client: if they
    do not fit under ``cap``, the next round would train for nothing (its trees
    left out whole), so the run stops (see :class:`CapHook`). Always so after a
    round whose trees were left out.
    """
    if cap is None:
        return out
    doc = parse(model)
    groups, parallel = trees_per_iteration(doc)
    trees = len(doc["learner"]["gradient_booster"]["model"]["trees"])
    if trees + clients * local_rounds * groups * parallel > cap:
        out.info[FULL] = True
    return out


class CapHook:
    """Stops a run (a :class:`covey.core.RunHook`) once its booster can take no more rounds.

    The round after which another with as many clients would take the booster
    past ``max_trees`` records :data:`FULL` in its ``aggregate_info``; the run
    stops before the next round, whose trees would be left out, instead of having
    the clients train for nothing (``history.stopped_reason`` says so, and the
    round loop logs it). A resumed run reads the mark from its history and stops again.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._full: int | None = None  # the round whose aggregate filled the booster

    def start(self, state: Any, seed: int | None, history: History) -> Any:
        """Find, on resume, the round that filled the booster (if one did)."""
        self._full = next((r.round for r in history.rounds if r.aggregate_info.get(FULL)), None)
        return state

    def before_round(self, round: int, state: Any) -> str | None:
        """Stop the run if the booster is full."""
        if self._full is None:
            return None
        return (
            f"max_trees={self.cap} reached: after round {self._full} the booster has no room "
            "for another round's trees, so no client trains again (to grow more, start a new "
            "run from its model with a larger max_trees)"
        )

    def after_round(self, record: RoundRecord, state: Any) -> None:
        """Note the round that filled the booster."""
        if self._full is None and record.aggregate_info.get(FULL):
            self._full = record.round

    def finish(self, history: History, state: Any) -> None:
        """Nothing to say: the loop logs why it stopped."""


def capping(step: Step, cap: int | None) -> Step:
    """``step``, carrying the run hook that stops the run once ``cap`` trees leave no room.

    Whatever strategy runs the step (a preset, or a ``Strategy`` of one's own with
    it alone or in a chain), the run stops before a round whose trees could not
    join the booster (see :class:`CapHook`).
    """
    return step if cap is None else carrying(step, CapHook(cap))

"""The server's limits on federated XGBoost: the trees a reply adds, and the booster's size."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from covey.aggregate import Aggregate, End
from covey.core._weights import Weights, WeightsError
from covey.xgboost._model import from_weights, num_trees, parse
from covey.xgboost._validate import parallel_trees, trees_per_iteration

__all__ = ["check_count", "check_local_rounds", "check_max_trees", "past_cap", "start_within"]

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

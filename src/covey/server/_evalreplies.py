"""A synchronous round's evaluate replies, each counted or recorded as a failure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from covey.core._history import Failure, RoundRecord
from covey.core._messages import EvaluateResult, Reply
from covey.server._base import _LoopBase
from covey.server._cidorder import in_cid_order
from covey.server._firstline import first_line
from covey.server._roundmetrics import RoundMetrics


def take_evaluations(
    loop: _LoopBase,
    replies: Iterable[Reply],
    cids: Sequence[int],
    record: RoundRecord,
    results: RoundMetrics,
    losses: list[tuple[int, float]],
) -> None:
    """Count each usable reply into ``record``, ``results`` and ``losses``; the rest fail.

    A client of ``cids`` with no reply failed with "no reply in time".
    """
    answered: set[int] = set()
    for reply in in_cid_order(replies, cids):
        answered.add(reply.cid)
        res = reply.result
        if not reply.ok:
            err = reply.error or ""
            loop._record_failure(
                record.evaluate_failures,
                Failure(reply.cid, "evaluate", first_line(err), err),
                record,
            )
        elif (why := _unusable(res) or results.refusal(res.metrics)) is not None:
            loop._refuse(record.evaluate_failures, Failure(reply.cid, "evaluate", why), record)
        else:
            record.evaluate_participants.append(reply.cid)
            record.evaluate_examples += res.num_examples
            losses.append((res.num_examples, res.loss))
            results.append((res.num_examples, res.metrics))
    for cid in cids:
        if cid not in answered:
            loop._record_failure(
                record.evaluate_failures, Failure(cid, "evaluate", "no reply in time"), record
            )


def _unusable(result: Any) -> str | None:
    """Why an evaluate reply's result cannot be counted, or None.

    A loss that is no finite number is refused, unless the reply counts no
    example: the mean over an empty test set is NaN, and it weighs nothing.
    """
    if not isinstance(result, EvaluateResult):
        return f"reply is {type(result).__name__}, expected EvaluateResult"
    if result.num_examples and not math.isfinite(result.loss):
        return f"its loss is {result.loss}, not a finite number"
    return None

"""What to give instead of covey's result records: Flower's tuples, dicts, anything else.

The clients' task runtime (a ``fit`` that returned a tuple) and
:meth:`covey.Strategy.aggregate` (results given as tuples) word it alike.
"""

from __future__ import annotations

from collections.abc import Mapping

RECORDS = {
    "fit": (
        "FitResult",
        "weights={name: array}, num_examples=n, metrics={...}",
        "(parameters, num_examples, metrics)",
    ),
    "evaluate": (
        "EvaluateResult",
        "loss=loss, num_examples=n, metrics={...}",
        "(loss, num_examples, metrics)",
    ),
}
"""Per method, its record's name, the fields to build it with and Flower's tuple."""


def record_instead(method: str, given: object) -> str:
    """The record a ``method`` result must be, built, and what ``given`` is instead.

    Flower's tuple and a dict of the record's entries are each named as such.

    Example:
        >>> record_instead("evaluate", {"loss": 0.5})
        'covey.EvaluateResult(loss=loss, num_examples=n, metrics={...}) rather than a dict'
    """
    record, fields, flower = RECORDS[method]
    if isinstance(given, tuple):
        instead = f" rather than a {flower} tuple"
    elif isinstance(given, Mapping):
        instead = " rather than a dict"
    else:
        instead = ""
    return f"covey.{record}({fields}){instead}"

"""How a history names the values each round records: the losses and the metrics, by source.

A round's own loss from server-side evaluation (``central_loss``) or from
federated evaluation (``evaluate_loss``) is read as ``"loss"``. A metric of
the same source named ``loss`` is therefore read as ``"loss_metric"`` (and one
named ``loss_metric`` as ``"loss_metric_metric"``, and so on), the names the
trackers log them under, so that no value is hidden behind another. The
clients' training metrics (``"fit"``) have no loss of their own: each is read
by its own name.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from covey.core._jsonvalues import as_float

if TYPE_CHECKING:  # read by the dashboard and `covey runs`, which start without NumPy
    from covey.core._roundrecord import RoundRecord

__all__ = [
    "FLOWER_ATTRIBUTES",
    "SOURCES",
    "Source",
    "metric_items",
    "metric_value",
    "read_as",
    "renamed_metrics",
    "stored_name",
]

Source = Literal["central", "evaluate", "fit"]

SOURCES: tuple[Source, ...] = ("central", "evaluate", "fit")

_EVALUATIONS: tuple[Source, ...] = ("central", "evaluate")

_OWN = re.compile(r"loss(_metric)*")
"""Metric names that would meet the round's own loss (``loss``) or the name given it instead."""

#: Flower's ``History`` attributes and how covey's history reads the same values.
FLOWER_ATTRIBUTES = {
    "losses_centralized": 'history.metric("loss")',
    "metrics_centralized": "history.metric(name)",
    "losses_distributed": 'history.metric("loss", source="evaluate")',
    "metrics_distributed": 'history.metric(name, source="evaluate")',
    "metrics_distributed_fit": 'history.metric(name, source="fit")',
}


def read_as(name: str, source: str) -> str:
    """The name :meth:`History.metric` reads the metric ``name`` of ``source`` by.

    Example:
        >>> read_as("loss", "central"), read_as("accuracy", "central"), read_as("loss", "fit")
        ('loss_metric', 'accuracy', 'loss')
    """
    return f"{name}_metric" if source != "fit" and _OWN.fullmatch(name) else name


def stored_name(name: str, source: str) -> str:
    """The metric of ``source`` :meth:`History.metric` reads as ``name`` (:func:`read_as` undone).

    ``"loss"`` itself names the round's loss (from ``"central"`` and ``"evaluate"``), no metric.
    """
    own = source != "fit" and name != "loss" and _OWN.fullmatch(name)
    return name.removesuffix("_metric") if own else name


def _stored(record: RoundRecord, source: Source) -> tuple[float | None, dict[str, Any]]:
    """The loss and the metrics one round records from ``source``."""
    if source == "central":
        return record.central_loss, record.central_metrics
    if source == "evaluate":
        return record.evaluate_loss, record.evaluate_metrics
    return None, record.fit_metrics


def metric_items(record: RoundRecord, source: Source) -> list[tuple[str, Any]]:
    """The values one round records from ``source``, as :meth:`History.metric` names them.

    The loss comes first (if any), then the metrics in the order they were reported.
    """
    loss, metrics = _stored(record, source)
    named = [(read_as(str(name), source), value) for name, value in metrics.items()]
    return ([("loss", loss)] if loss is not None else []) + named


def metric_value(record: RoundRecord, name: str, source: Source = "central") -> float | None:
    """One round's value of a metric (see :meth:`History.metric`), or None if it has none."""
    loss, metrics = _stored(record, source)
    if source == "fit":
        value: Any = metrics.get(name)
    elif name == "loss":
        value = loss
    else:
        value = metrics.get(stored_name(name, source))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return as_float(value)
    return None


def renamed_metrics(record: RoundRecord) -> list[tuple[Source, str, str]]:
    """``(source, name, read as)`` of each metric of a round :meth:`History.metric` renames.

    Those are the metrics named ``loss`` (or ``loss_metric``, ...) of server-side
    and federated evaluation: ``"loss"`` reads the round's own loss.
    """
    return [
        (source, str(name), read_as(str(name), source))
        for source in _EVALUATIONS
        for name in _stored(record, source)[1]
        if read_as(str(name), source) != name
    ]

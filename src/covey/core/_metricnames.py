"""How a history names the values each round records: the losses and the metrics, by source."""

from __future__ import annotations

from typing import Any, Literal

from covey.core._jsonvalues import as_float
from covey.core._roundrecord import RoundRecord

__all__ = ["FLOWER_ATTRIBUTES", "SOURCES", "Source", "metric_items", "metric_value"]

Source = Literal["central", "evaluate", "fit"]

SOURCES: tuple[Source, ...] = ("central", "evaluate", "fit")

#: Flower's ``History`` attributes and how covey's history reads the same values.
FLOWER_ATTRIBUTES = {
    "losses_centralized": 'history.metric("loss")',
    "metrics_centralized": "history.metric(name)",
    "losses_distributed": 'history.metric("loss", source="evaluate")',
    "metrics_distributed": 'history.metric(name, source="evaluate")',
    "metrics_distributed_fit": 'history.metric(name, source="fit")',
}


def metric_items(record: RoundRecord, source: Source) -> list[tuple[str, Any]]:
    """The named values one round records from ``source``, its loss first (if any)."""
    if source == "central":
        loss, metrics = record.central_loss, record.central_metrics
    elif source == "evaluate":
        loss, metrics = record.evaluate_loss, record.evaluate_metrics
    else:
        loss, metrics = None, record.fit_metrics
    return ([("loss", loss)] if loss is not None else []) + list(metrics.items())


def metric_value(record: RoundRecord, name: str, source: Source = "central") -> float | None:
    """One round's value of a metric (see :meth:`History.metric`), or None if it has none."""
    if source == "central":
        value: Any = record.central_loss if name == "loss" else record.central_metrics.get(name)
    elif source == "evaluate":
        value = record.evaluate_loss if name == "loss" else record.evaluate_metrics.get(name)
    else:
        value = record.fit_metrics.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return as_float(value)
    return None

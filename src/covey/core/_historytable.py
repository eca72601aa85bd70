"""A run's metrics as a pandas table: one row per round, one column per metric.

On request, each round's participation, bytes and stage times follow the metrics.

Imported only by :meth:`History.to_pandas`: pandas is optional (the
``analytics`` extra), and ``import covey`` never needs it.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

import pandas as pd

from covey.core._history import SOURCES, History, RoundRecord, Source
from covey.core._jsonvalues import as_float
from covey.core._metricnames import metric_items

__all__ = ["column_names", "metrics_frame"]


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _values(record: RoundRecord, source: Source) -> dict[str, Any]:
    """The values one round records from ``source``, named as :meth:`History.metric` names them.

    ``"loss"`` is the round's loss (``central_loss``, ``evaluate_loss``); a metric
    of that name is ``"loss_metric"``, except from ``"fit"``, whose loss is a
    metric like any other.
    """
    return dict(metric_items(record, source))


def column_names(history: History) -> list[tuple[Source, str]]:
    """``(source, name)`` of each numeric metric the run records, in the table's order.

    The sources go central, evaluate, fit; within one, the loss comes first, then
    the metrics in the order the run first reported them.
    """
    columns: list[tuple[Source, str]] = []
    for source in SOURCES:
        seen: dict[str, None] = {}
        for record in history.rounds:
            for name, value in _values(record, source).items():
                if _is_number(value):
                    seen.setdefault(name)
        if "loss" in seen:  # the loss first, as History.metric names it
            columns.append((source, "loss"))
        columns += [(source, name) for name in seen if name != "loss"]
    return columns


def _costs(record: RoundRecord) -> dict[str, float]:
    """One round's participation, bytes and stage times, as :meth:`History.to_pandas` names them."""
    sent, received = record.bytes_sent, record.bytes_received
    return {
        "clients_fit": float(len(record.fit_participants)),
        "failures_fit": float(len(record.fit_failures)),
        "examples_fit": float(record.fit_examples),
        "clients_evaluate": float(len(record.evaluate_participants)),
        "failures_evaluate": float(len(record.evaluate_failures)),
        "bytes_sent": math.nan if sent is None else as_float(sent),
        "bytes_received": math.nan if received is None else as_float(received),
        **{
            f"seconds_{stage}": as_float(t) if _is_number(t) else math.nan
            for stage, t in record.durations.items()
        },
    }


def metrics_frame(history: History, *, costs: bool = False) -> pd.DataFrame:
    """The table :meth:`History.to_pandas` returns."""
    columns = column_names(history)
    data: dict[str, list[float]] = {f"{s}_{n}": [] for s, n in columns}
    extra = [_costs(record) for record in history.rounds] if costs else []
    for name in dict.fromkeys(k for row in extra for k in row):
        data[name] = [row.get(name, math.nan) for row in extra]
    for record in history.rounds:
        values = {source: _values(record, source) for source in SOURCES}
        for source, name in columns:
            value = values[source].get(name)
            number = as_float(value) if _is_number(value) else math.nan
            data[f"{source}_{name}"].append(number)
    index = pd.Index([r.round for r in history.rounds], name="round", dtype="int64")
    return pd.DataFrame(data, index=index, columns=list(data), dtype="float64")

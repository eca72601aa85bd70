"""Round callbacks that log a run to the experiment trackers people already use.

Pass one as ``on_round`` to :func:`covey.simulate` or :func:`covey.serve`::

    from covey.trackers import TensorBoardLogger
    with TensorBoardLogger("tb/run-1") as log:
        covey.simulate(client_fn, 100, 30, on_round=log, ...)

Each needs its extra: ``covey[tensorboard]`` or ``covey[mlflow]``. The scalars
logged per round are those of :func:`round_scalars`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from covey.trackers._mlflow import MLflowLogger
    from covey.trackers._scalars import round_scalars
    from covey.trackers._tensorboard import TensorBoardLogger

_WHERE = {
    "MLflowLogger": "_mlflow",
    "TensorBoardLogger": "_tensorboard",
    "round_scalars": "_scalars",
}

__all__ = [
    "MLflowLogger",
    "TensorBoardLogger",
    "round_scalars",
]


def __getattr__(name: str) -> Any:
    """Import the public names lazily (each tracker is an optional extra)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'covey.trackers' has no attribute {name!r}")
    return getattr(importlib.import_module(f"covey.trackers.{module}"), name)

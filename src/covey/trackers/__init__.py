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

from covey.core._extras import MissingExtraError
from covey.core._lazy import public_dir

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


_EXTRA = {"_mlflow": ("MLflow", "mlflow"), "_tensorboard": ("TensorBoard", "tensorboard")}
"""The library and the extra each tracker module needs."""


def _load(name: str) -> Any:
    """Import the public names lazily (each tracker is an optional extra).

    Raises:
        ImportError: naming the extra to install when the tracker's library is missing.
    """
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'covey.trackers' has no attribute {name!r}")
    try:
        loaded = importlib.import_module(f"covey.trackers.{module}")
    except ImportError as exc:
        if module not in _EXTRA or exc.name is None or exc.name.startswith("covey"):
            raise
        library, extra = _EXTRA[module]
        raise MissingExtraError(
            f"covey.trackers.{name} needs {library} ({exc.name} is missing): "
            f"pip install 'covey[{extra}]'"
        ) from exc
    return getattr(loaded, name)


if not TYPE_CHECKING:  # type checkers see the imports above: a misspelt name is an error
    __getattr__ = _load


__dir__ = public_dir(__name__)

"""The core: weights, their codec, the messages of a round, and the history of a run.

Everything here is pure data and pure functions: no I/O, no threads, no network.
Every other layer builds on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from covey.core import _gcstart as _gcstart  # counted at `import covey`, before any run
from covey.core._lazy import lazy_exports

if TYPE_CHECKING:  # loaded on first use: NumPy is slow to import
    from covey.core._codec import CodecError, decode, encode
    from covey.core._extras import MissingExtraError
    from covey.core._history import Failure, History, RoundRecord
    from covey.core._hooks import RunHook
    from covey.core._messages import Config, EvaluateResult, FitResult, Metrics, Reply, Task
    from covey.core._weights import Weights, WeightsError, WeightsSpec

__all__ = [
    "CodecError",
    "Config",
    "EvaluateResult",
    "Failure",
    "FitResult",
    "History",
    "Metrics",
    "MissingExtraError",
    "Reply",
    "RoundRecord",
    "RunHook",
    "Task",
    "Weights",
    "WeightsError",
    "WeightsSpec",
    "decode",
    "encode",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "CodecError": "_codec",
            "Config": "_messages",
            "EvaluateResult": "_messages",
            "Failure": "_history",
            "FitResult": "_messages",
            "History": "_history",
            "Metrics": "_messages",
            "MissingExtraError": "_extras",
            "Reply": "_messages",
            "RoundRecord": "_history",
            "RunHook": "_hooks",
            "Task": "_messages",
            "Weights": "_weights",
            "WeightsError": "_weights",
            "WeightsSpec": "_weights",
            "decode": "_codec",
            "encode": "_codec",
        },
    )

"""The core: weights, their codec, the messages of a round, and the history of a run.

Everything here is pure data and pure functions: no I/O, no threads, no network.
Every other layer builds on it.
"""

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

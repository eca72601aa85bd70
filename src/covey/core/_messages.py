"""Typed records that travel between the round loop and clients.

The loop and its clients speak only in :class:`Task` and :class:`Reply`. The
``kind`` of a task is an open string: ``"fit"`` and ``"evaluate"`` are built in,
and other protocols (analytics queries, the stages of secure aggregation) add
their own kinds by registering a handler with :func:`covey.clients.register_task`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar, overload

import numpy as np

from covey.core._metricvalues import FLOAT_MAX, item_of, own_metrics, too_large
from covey.core._metricvalues import MAX_METRICS as MAX_METRICS
from covey.core._signature import InitSignature
from covey.core._weights import Weights, flower_hint, unnamed_hint

Scalar = bool | int | float | str | bytes
MetricValue = Scalar | np.generic
"""A metric as a result or ``evaluate_fn`` gives it: a NumPy scalar as the Python value it holds."""
Count = int | np.integer[Any]
"""A count as covey takes it: a NumPy integer (``mask.sum()``, ``np.int64(3)``) as a Python int."""
Real = float | np.floating[Any] | np.integer[Any]
"""A real number as covey takes it: a NumPy one (``np.float32(0.5)``) as the Python number."""
_R = TypeVar("_R")
Metrics = dict[str, Scalar | np.ndarray[Any, Any]]
"""A client's metrics as covey keeps them: Python scalars, and numeric arrays (copies)."""
ResultMetrics = Mapping[str, MetricValue | np.ndarray[Any, Any]] | None
Config = dict[str, Any]
"""The settings a round sends a client's ``fit`` or ``evaluate`` (``on_fit_config``'s result)."""


def slot_setters(cls: type, *names: str) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot descriptors' setters of ``names`` on the slotted class ``cls``.

    A frozen dataclass's generated ``__init__`` sets each field through
    ``object.__setattr__``; the records built once per client and round (a
    reply, a fit result, a contribution) set their slots through these instead,
    which takes about half the work, and stay just as frozen afterwards.
    """
    return tuple(cls.__dict__[name].__set__ for name in names)


MAX_EXAMPLES = 2**53
"""The most examples a result may declare: every count up to it is exact in float64,
and weighing updates by it cannot overflow (10**400 examples would stop aggregation)."""

MAX_ROUNDS = 10**9
"""The most rounds a run may be asked for: a billion rounds of a millisecond are 11 days,
and each round's number fits the run folder's integers and the messages' fields."""


def plain(value: Any) -> Any:
    """``value`` as a Python number if it is a NumPy one (``np.int64(3)`` gives ``3``), else as is.

    For settings typed ``int`` or ``float``: a count computed with NumPy
    (``mask.sum()``, ``len(x) // 2`` of an array's shape) is taken like a Python one.
    NumPy booleans are left as they are (a flag is no count).
    """
    if isinstance(value, np.integer | np.floating):
        return value.item()
    return value


@overload
def plain_count(value: Count) -> int: ...
@overload
def plain_count(value: Count | None) -> int | None: ...
def plain_count(value: Count | None) -> int | None:
    """A :data:`Count` setting as :func:`plain` gives it (anything else as is, for its check)."""
    kept: int | None = plain(value)
    return kept


@overload
def plain_real(value: Real) -> float: ...
@overload
def plain_real(value: Real | None) -> float | None: ...
def plain_real(value: Real | None) -> float | None:
    """A :data:`Real` setting as :func:`plain` gives it (anything else as is, for its check)."""
    kept: float | None = plain(value)
    return kept


def real(value: Any) -> TypeGuard[float]:
    """Whether ``value`` is a real number (NumPy's included), not a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def finite(value: Any) -> TypeGuard[float]:
    """Whether ``value`` is a real number that is finite as a float.

    An int past the largest float (``2**1100``) is not: it compares as finite, but
    the first ``float()`` of it raises a bare ``OverflowError``.
    """
    if not real(value):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def shown(value: Any) -> str:
    """``repr(value)`` for a message; an int too large for a float is named by its size.

    Its digits say nothing (and past 4300 of them Python refuses to write them).
    """
    if isinstance(value, int) and not isinstance(value, bool) and not finite(value):
        return f"an int too large for a float ({value.bit_length()} bits)"
    return repr(value)


def _check_count(value: object, what: str) -> int:
    """``value`` as a Python int if it is a count of examples (NumPy integers too), else raise."""
    if isinstance(value, np.integer):
        value = int(value)  # mask.sum(), x.shape[0] of some libraries
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        tensor = hasattr(value, "item") and not isinstance(value, np.generic)  # torch, 0-d arrays
        hint = f" (a {type(value).__name__}: use int(x) or x.item() for its number)"
        raise ValueError(
            f"{what} must be a non-negative int, got {value!r}{hint if tensor else ''}"
        )
    if value > MAX_EXAMPLES:
        raise ValueError(f"{what} must be at most 2**53, got an int of {value.bit_length()} bits")
    return value


class _Required:
    def __repr__(self) -> str:
        return "<required>"  # as help() and inspect.signature show the default


_NO_COUNT: Any = _Required()
"""``FitResult``'s ``num_examples`` when none was given (refused, saying what to pass)."""


def _counted(
    cls: type[_R], args: tuple[Any, ...], kwargs: Mapping[str, Any], given: str, what: str
) -> _R:
    """A new ``cls`` result, refused with what to pass if made without ``num_examples``.

    Python's "missing 1 required keyword-only argument" does not say what the count is (type
    checkers see it required, in ``__init__``); given nothing (``pickle``, ``copy``), it makes one.
    """
    name = cls.__name__
    if args:
        raise TypeError(
            f"{name} takes keyword arguments only, e.g. {name}({given}, num_examples=len(y))"
        )
    if kwargs and "num_examples" not in kwargs:
        raise TypeError(
            f"{name} needs num_examples=, the number of examples {what}, e.g. "
            f"{name}({given}, num_examples=len(y))"
        )
    return object.__new__(cls)


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class FitResult:
    """What a client's ``fit`` returns: new weights or an update, and its data size.

    Give exactly one of ``weights`` (the full model after local training) or
    ``delta`` (local weights minus the weights received).

    Args:
        weights: The full local model after training.
        delta: The update: local weights minus the global weights received.
        num_examples: Number of training examples used; FedAvg weighs by it.
        metrics: Scalars to report, e.g. ``{"train_loss": 0.3}``; a NumPy scalar
            (``np.float32``, ``np.int64``) is kept as the Python number it holds.
        extras: Other model-shaped arrays to send, by name, for aggregation steps
            that need them (e.g. SCAFFOLD's ``"scaffold_delta_c"``); the server
            checks each against the model's layout like the update itself.
    """

    weights: Weights | None = None
    delta: Weights | None = None
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    extras: Mapping[str, Weights] = field(default_factory=dict)

    if not TYPE_CHECKING:  # at run time a missing num_examples is explained (below: typed)

        def __init__(
            self,
            *args: Any,
            weights: Weights | None = None,
            delta: Weights | None = None,
            num_examples: Count = _NO_COUNT,
            metrics: ResultMetrics = None,
            extras: Mapping[str, Weights] | None = None,
        ) -> None:
            """Check and keep what a client's ``fit`` returns (see the class)."""
            if args or num_examples is _NO_COUNT:  # one test on the hot path, no frame
                given = {"weights": weights} if delta is None else {"delta": delta}
                _counted(
                    FitResult,
                    args,
                    given,
                    "delta=update" if delta is not None else "weights=new",
                    "trained on (FedAvg weighs each update by it)",
                )
            set_weights, set_delta, set_count, set_metrics, set_extras = _FIT_RESULT_SLOTS
            set_weights(self, weights)
            set_delta(self, delta)
            set_count(self, num_examples)
            set_metrics(self, {} if metrics is None else metrics)
            set_extras(self, {} if extras is None else extras)
            self.__post_init__()

    else:

        def __init__(
            self,
            *,
            weights: Weights | None = None,
            delta: Weights | None = None,
            num_examples: Count,
            metrics: ResultMetrics = None,
            extras: Mapping[str, Weights] | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        weights, delta = self.weights, self.delta
        if (weights is None) == (delta is None):
            raise ValueError("FitResult needs exactly one of weights= or delta=")
        n = self.num_examples
        if type(n) is not int or n < 0 or n > MAX_EXAMPLES:
            object.__setattr__(self, "num_examples", _check_count(n, "FitResult.num_examples"))
        if self.metrics or type(self.metrics) is not dict:
            object.__setattr__(self, "metrics", own_metrics(self.metrics, "FitResult.metrics"))
        if weights is not None:
            if not _all_arrays(weights):
                object.__setattr__(self, "weights", _arrays(weights, "FitResult.weights"))
        elif not _all_arrays(delta):
            object.__setattr__(self, "delta", _arrays(delta, "FitResult.delta"))
        extras = self.extras
        if not extras and (type(extras) is dict or isinstance(extras, Mapping)):
            return
        if not isinstance(self.extras, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Mapping) for k, v in self.extras.items()
        ):
            raise TypeError("FitResult.extras must be a dict of names to weights mappings")
        if self.extras:
            extras = {k: _arrays(v, f"FitResult.extras[{k!r}]") for k, v in self.extras.items()}
            object.__setattr__(self, "extras", extras)


_FIT_RESULT_SLOTS = slot_setters(FitResult, "weights", "delta", "num_examples", "metrics", "extras")


def _all_arrays(weights: object) -> bool:
    """Whether ``weights`` is a dict whose every value is a NumPy array (the usual case)."""
    if type(weights) is not dict:
        return False
    for value in weights.values():  # a loop: no generator object per call
        if type(value) is not np.ndarray or not value.dtype.isnative:
            return False
    return True


def fit_nbytes(result: FitResult) -> int:
    """The bytes of the arrays ``result`` carries: its weights or delta, and its extras."""
    arrays: Weights = result.weights if result.delta is None else result.delta  # type: ignore[assignment]
    total = 0
    for array in arrays.values():
        total += array.nbytes
    for extra in result.extras.values() if result.extras else ():
        for array in extra.values():
            total += array.nbytes
    return total


def _arrays(weights: object, what: str) -> Weights:
    """``weights`` as plain NumPy arrays in this machine's byte order; anything else refused.

    NumPy scalars become 0-d arrays, subclasses (``np.matrix``, ``np.memmap``) plain
    arrays over the same memory, and arrays in the other byte order (``>f4``) native
    ones, as they arrive from another process: the update is the same on every backend.
    """
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"{what} must be a dict of names to NumPy arrays, got {type(weights).__name__}"
            + unnamed_hint(weights)
        )
    for value in weights.values():  # the usual case, checked fast: every value an array
        if type(value) is not np.ndarray or not value.dtype.isnative:
            break
    else:
        return weights
    convert = False
    for name, value in weights.items():
        if isinstance(value, np.ma.MaskedArray):
            raise TypeError(
                f"{what}[{name!r}] is a masked array; send its values (array.filled(...))"
            )
        if isinstance(value, np.ndarray):
            convert = convert or type(value) is not np.ndarray or not value.dtype.isnative
            continue
        if isinstance(value, np.generic):
            convert = True
            continue
        if hasattr(value, "detach"):
            hint = " (convert tensors with .detach().cpu().numpy())"
        else:
            hint = flower_hint(value) or " (wrap it with np.asarray)"
        raise TypeError(f"{what}[{name!r}] is {type(value).__name__}, expected a NumPy array{hint}")
    if not convert:
        return weights
    return {name: _plain(value) for name, value in weights.items()}


def _plain(value: Any) -> np.ndarray[Any, Any]:
    """``value`` (an array or a NumPy scalar) as a plain array in native byte order."""
    array: np.ndarray[Any, Any] = np.asarray(value)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluateResult:
    """What a client's ``evaluate`` returns.

    Args:
        loss: The loss of the received model on local data.
        num_examples: Number of examples evaluated; federated metrics weigh by it.
        metrics: Other scalars, e.g. ``{"accuracy": 0.91}`` (any mapping of names to
            scalars, NumPy's included; kept as a dict of Python values).
    """

    loss: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    __signature__ = InitSignature()  # help(EvaluateResult) shows the fields, not __new__'s

    if TYPE_CHECKING:  # any mapping of names to scalars is taken (a dict[str, float] too)

        def __init__(
            self,
            *,
            loss: float | np.floating[Any],
            num_examples: Count,
            metrics: ResultMetrics = None,
        ) -> None: ...

    def __new__(cls, *args: Any, **kwargs: Any) -> EvaluateResult:
        if args or "num_examples" not in kwargs:
            what = "evaluated (federated metrics weigh by it)"
            return _counted(cls, args, kwargs, "loss=loss", what)
        return object.__new__(cls)

    def __post_init__(self) -> None:
        loss: Any = self.loss
        if isinstance(loss, bool | str | bytes | bytearray):  # float() takes "0.25"
            raise TypeError(f"EvaluateResult.loss must be a number, got {type(loss).__name__}")
        if not isinstance(loss, int | float):  # a NumPy or torch scalar, say
            try:
                # item_of: a torch loss that requires grad warned when made a float
                object.__setattr__(self, "loss", float(item_of(loss)))
            except (TypeError, ValueError):
                raise TypeError(
                    f"EvaluateResult.loss must be a number, got {type(self.loss).__name__}"
                ) from None
        elif type(self.loss) is int and not -FLOAT_MAX <= self.loss <= FLOAT_MAX:
            raise too_large(self.loss, "EvaluateResult.loss")
        n = _check_count(self.num_examples, "EvaluateResult.num_examples")
        object.__setattr__(self, "num_examples", n)
        metrics = {} if self.metrics is None else self.metrics  # None: no metrics, as in FitResult
        object.__setattr__(self, "metrics", own_metrics(metrics, "EvaluateResult.metrics"))


@dataclass(frozen=True, slots=True)
class Task:
    """One request from the server to a client.

    Args:
        kind: What to do: ``"fit"``, ``"evaluate"`` or a registered kind.
        round: The round number, 1-based (0 for work outside rounds).
        config: Settings for this task; the client sees them with ``"round"`` added.
        weights: The global weights, shared read-only by every task of a round.
        payload: Kind-specific data (a query, a protocol stage's message). For
            ``"fit"`` it is None or a dict of model-shaped arrays that aggregation
            steps broadcast (e.g. SCAFFOLD's control variate); the client sees it
            as ``config["extras"]``.
    """

    kind: str
    round: int
    config: Mapping[str, Any] = field(default_factory=dict)
    weights: Weights | None = None
    payload: Any = None


@dataclass(frozen=True, slots=True, init=False)
class Reply:
    """A client's answer to a :class:`Task`: a result, or the error it raised.

    Args:
        cid: The client's id.
        kind: The kind of the task answered.
        result: The handler's result (e.g. a :class:`FitResult`) when it succeeded.
        error: The error text with traceback when it failed.
    """

    cid: int
    kind: str
    result: Any = None
    error: str | None = None

    def __init__(self, cid: int, kind: str, result: Any = None, error: str | None = None) -> None:
        """A reply of client ``cid`` to a ``kind`` task (see the class)."""
        set_cid, set_kind, set_result, set_error = _REPLY_SLOTS
        set_cid(self, cid)
        set_kind(self, kind)
        set_result(self, result)
        set_error(self, error)

    @property
    def ok(self) -> bool:
        """Whether the client succeeded."""
        return self.error is None

    def release(self) -> None:
        """Let go of what the result holds outside the heap once it has been used.

        A no-op for a reply held in memory; a :class:`DeferredReply` unmaps its
        result. The round loops call it right after folding a reply.
        """


_REPLY_SLOTS = slot_setters(Reply, "cid", "kind", "result", "error")


class DeferredReply(Reply):
    """A successful reply whose result is loaded when first read and dropped on :meth:`release`.

    A transport that keeps a large reply outside memory (e.g. in a file) hands
    it over as a ``DeferredReply``: ``result`` calls ``load`` the first time it
    is read (mapping the file), and :meth:`release` forgets the loaded result
    and calls ``unload``. Reading ``result`` again loads it again. So replies
    waiting for their turn take no memory, and at most the ones being folded do.

    Args:
        cid: The client's id.
        kind: The kind of the task answered.
        load: ``() -> result``: builds the result (may raise on bad data).
        unload: ``() -> None``: frees what ``load`` took; the result is not used after it.

    Example:
        >>> reply = DeferredReply(3, "fit", lambda: 42, lambda: None)
        >>> reply.ok, reply.result
        (True, 42)
        >>> reply.release()
    """

    __slots__ = ("_load", "_loaded", "_unload", "_value")
    _load: Callable[[], Any]
    _unload: Callable[[], None]
    _value: Any
    _loaded: bool

    def __init__(
        self, cid: int, kind: str, load: Callable[[], Any], unload: Callable[[], None]
    ) -> None:
        """A reply of client ``cid`` to a ``kind`` task whose result ``load`` builds."""
        setter = object.__setattr__
        setter(self, "cid", cid)
        setter(self, "kind", kind)
        setter(self, "error", None)
        setter(self, "_load", load)
        setter(self, "_unload", unload)
        setter(self, "_value", None)
        setter(self, "_loaded", False)

    @property
    def result(self) -> Any:
        """The result, loaded on first use."""
        if not self._loaded:
            object.__setattr__(self, "_value", self._load())
            object.__setattr__(self, "_loaded", True)
        return self._value

    def release(self) -> None:
        """Forget the loaded result and free what it held."""
        object.__setattr__(self, "_value", None)
        object.__setattr__(self, "_loaded", False)
        self._unload()

    def __repr__(self) -> str:
        """The reply without loading its result."""
        state = "loaded" if self._loaded else "not loaded"
        return f"DeferredReply(cid={self.cid}, kind={self.kind!r}, result {state})"

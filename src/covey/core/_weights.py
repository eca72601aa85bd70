"""Named NumPy arrays: the model state that moves between server and clients.

A model's weights are a mapping from names to arrays, like a torch ``state_dict``.
This module validates weights against the global model's layout and does the
little arithmetic the round loop needs. It does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast, overload

import numpy as np
from numpy.typing import NDArray

from covey.core._pages import BLOCK, sum_of_squares
from covey.core._weighthints import (
    dtype_hint,
    integer_model_hint,
    made_by,
    tensor_hint,
)
from covey.core._weighthints import (
    flower_hint as flower_hint,  # core._messages reads these two from here
)
from covey.core._weighthints import unnamed_hint as unnamed_hint

Array = NDArray[Any]
Weights = Mapping[str, Array]
"""A model's state: names mapped to NumPy arrays."""


_MADE_BY: Final = "raised by initial_weights "


@overload
def made(initial_weights: Weights | Callable[[], Weights]) -> Weights: ...
@overload
def made(initial_weights: Weights | Callable[[], Weights] | None) -> Weights | None: ...
def made(initial_weights: Weights | Callable[[], Weights] | None) -> Weights | None:
    """The initial weights, from the function that makes them if given one.

    A torch model is callable too, but it is not such a function: it is returned
    as it is, for the layout check to refuse it naming how to get its weights.
    What the function raises (a checkpoint file it cannot read) gets a note naming it.
    """
    given: Any = initial_weights
    if callable(given) and not made_by(given, "torch"):
        try:
            return given()  # type: ignore[no-any-return]
        except Exception as exc:  # the app's own error, told where it came from
            if not any(str(n).startswith(_MADE_BY) for n in getattr(exc, "__notes__", ())):
                name = getattr(given, "__qualname__", None) or type(given).__name__
                exc.add_note(f"{_MADE_BY}{name}()")  # once: ServerApp.weights calls made too
            raise
    return given  # type: ignore[no-any-return]


_SCALAR = " (a NumPy scalar: np.asarray makes it a 0-d array)"


class WeightsError(ValueError):
    """Weights that do not match the global model (names, shapes, dtypes, values)."""


_KINDS: Final = ("b", "i", "u", "f")


def _check_entry(name: object, value: object) -> None:
    """Refuse a name that is no non-empty UTF-8 string, or a value that is no plain array."""
    if not isinstance(name, str) or not name:
        raise WeightsError(f"weight names must be non-empty strings, got {name!r}")
    if not name.isascii() and not is_unicode_text(name):
        raise WeightsError(
            f"weight name {name!r} is not valid Unicode text (it holds a lone "
            "surrogate): it cannot be encoded as UTF-8, as files and messages need"
        )
    if not isinstance(value, np.ndarray):
        raise WeightsError(
            f"weight {name!r} must be a NumPy array, got {type(value).__name__}"
            + (_SCALAR if isinstance(value, np.generic) else tensor_hint(value))
        )
    if isinstance(value, np.ma.MaskedArray):
        raise WeightsError(
            f"weight {name!r} is a masked array; give its values (array.filled(...))"
        )


def _refuse_dtype(name: str, dtype: np.dtype[Any]) -> None:
    """Refuse an array of ``dtype``: neither bool, integer nor float up to float64."""
    if dtype.kind not in _KINDS:
        raise WeightsError(
            f"weight {name!r} has dtype {dtype}; only bool, integer and "
            "floating-point arrays are supported" + dtype_hint(dtype)
        )
    raise WeightsError(
        f"weight {name!r} has dtype {dtype} (long double), whose layout "
        "depends on the machine; use float64, float32 or float16"
    )


def _do(what: str) -> str:
    """``"do"`` after weights (``"client 7's weights"``), ``"does"`` after a delta, an extra..."""
    return "do" if what.endswith("weights") else "does"


@dataclass(frozen=True, slots=True)
class WeightsSpec:
    """The layout of a model: its array names, shapes and dtypes, in order.

    Args:
        names: Array names, in the model's order.
        shapes: Shape of each array.
        dtypes: Dtype of each array.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype[np.generic], ...]
    # (name, shape, dtype, floating) per array: what conforms() walks, built once.
    _layout: tuple[tuple[str, tuple[int, ...], np.dtype[np.generic], bool], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        layout = tuple(
            (n, s, d, d.kind == "f")
            for n, s, d in zip(self.names, self.shapes, self.dtypes, strict=True)
        )
        object.__setattr__(self, "_layout", layout)

    @classmethod
    def of(cls, weights: Weights) -> WeightsSpec:
        """The spec of ``weights``, checking that they can be a model at all.

        Args:
            weights: A mapping of non-empty names to NumPy arrays of bool, integer or
                float (up to float64) dtype; anything else raises :class:`WeightsError`.
        """
        if not isinstance(weights, Mapping):
            raise WeightsError(
                f"weights must be a mapping of names to NumPy arrays, got {type(weights).__name__}"
                + unnamed_hint(weights)
            )
        if not weights:
            raise WeightsError("weights are empty: a model needs at least one array")
        names: list[str] = []
        shapes: list[tuple[int, ...]] = []
        dtypes: list[np.dtype[np.generic]] = []
        for name, value in weights.items():
            # One cheap test per array for the usual plain array under an ASCII
            # name; anything else is checked in full (a model has hundreds).
            if (
                type(value) is not np.ndarray
                or type(name) is not str
                or not name
                or not name.isascii()
            ):
                _check_entry(name, value)
            dtype = value.dtype
            if dtype.kind not in _KINDS or (dtype.kind == "f" and dtype.itemsize > 8):
                _refuse_dtype(name, dtype)
            names.append(name)
            shapes.append(value.shape)
            dtypes.append(dtype)
        return cls(tuple(names), tuple(shapes), tuple(dtypes))

    def describes(self, weights: object) -> bool:
        """Whether ``WeightsSpec.of(weights)`` is this spec; never raises.

        True for a mapping of plain arrays under this spec's names (str), in its
        order, each of its shape and dtype: cheaper than laying ``weights`` out
        anew, for a caller that keeps the spec of the last weights it met.

        Args:
            weights: The mapping to compare with this spec (any object).
        """
        layout = self._layout
        try:
            if not isinstance(weights, Mapping) or len(weights) != len(layout):
                return False
            for (key, value), (name, shape, dtype, _) in zip(weights.items(), layout, strict=True):
                if (
                    type(value) is not np.ndarray
                    or type(key) is not str
                    or key != name
                    or value.shape != shape
                    or (value.dtype is not dtype and value.dtype != dtype)
                ):
                    return False
        except Exception:  # noqa: BLE001 - a mapping that cannot be read is none of this spec
            return False
        return True

    @property
    def nbytes(self) -> int:
        """Total size of the arrays in bytes."""
        return sum(
            math.prod(shape) * dtype.itemsize
            for shape, dtype in zip(self.shapes, self.dtypes, strict=True)
        )

    def describe(self) -> str:
        """A one-line human description, e.g. ``W: float64[64, 10], b: float64[10]``."""
        return ", ".join(
            f"{n}: {d.name}[{', '.join(map(str, s))}]"
            for n, s, d in zip(self.names, self.shapes, self.dtypes, strict=True)
        )

    def check(self, weights: object, *, what: str = "weights", finite: bool = True) -> None:
        """Raise :class:`WeightsError` unless ``weights`` match this spec exactly.

        Args:
            weights: The mapping to check.
            what: How to name the weights in the error (e.g. ``"client 7's delta"``).
            finite: Also require every floating-point value to be finite.
        """
        if self.conforms(weights, finite=finite):
            return
        self._explain(weights, what)
        checked: Weights = weights  # type: ignore[assignment]
        for name in self._float_names():
            if not _all_finite(checked[name]):
                arr = checked[name]
                bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
                raise WeightsError(f"{what}: {name!r} has {bad} non-finite value(s) (NaN or Inf)")
        raise WeightsError(f"{what} {_do(what)} not match the model")  # pragma: no cover

    def conforms(self, weights: object, *, finite: bool = True) -> bool:
        """Whether ``weights`` match this spec exactly (and are finite); never raises.

        The fast path of :meth:`check`, for the round loop's hot path: call
        :meth:`check` for the error message only when this says False.

        Args:
            weights: The mapping to test.
            finite: Also require every floating-point value to be finite.
        """
        return self.conformity(weights, finite=finite) is not None

    def conformity(self, weights: object, *, finite: bool = True) -> bool | None:
        """:meth:`conforms`, telling also whether every value's square is finite.

        None when ``weights`` do not conform; else, with ``finite``, True when every
        floating-point array's sum of squares is finite, so that every value is
        under the square root of its dtype's largest (a sum of ``n * value`` over
        fewer than 2**63 examples then cannot overflow); False otherwise.

        Args:
            weights: The arrays to compare with this spec (any object: never raises).
            finite: Look at the floating-point values too; with False they are
                not read, and weights that conform give False, not True.
        """
        bounded = finite
        try:
            if len(weights) != len(self.names):  # type: ignore[arg-type]
                return None
            for name, shape, dtype, floating in self._layout:
                value = weights[name]  # type: ignore[index]
                if (
                    value.shape != shape
                    or (value.dtype is not dtype and value.dtype != dtype)
                    or not isinstance(value, np.ndarray)
                ):
                    return None
                if not (floating and finite):
                    continue
                # vdot inline (no frame per array): see _all_finite for why it is exact.
                squares = _vdot(value, value) if value.size <= BLOCK else sum_of_squares(value)
                if not _isfinite(squares):
                    if not _all_finite(value):
                        return None
                    bounded = False
        except (KeyError, AttributeError, TypeError):
            return None
        return bounded

    def _float_names(self) -> list[str]:
        return [n for n, d in zip(self.names, self.dtypes, strict=True) if d.kind == "f"]

    def _explain(self, weights: object, what: str) -> None:
        if not isinstance(weights, Mapping):
            raise WeightsError(
                f"{what} must be a mapping of names to NumPy arrays, got {type(weights).__name__}"
                + unnamed_hint(weights)
            )
        missing = [n for n in self.names if n not in weights]
        extra = [str(n) for n in weights if n not in self.names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if extra:
                parts.append(f"unexpected {extra}")
            raise WeightsError(f"{what} {_do(what)} not match the model: {'; '.join(parts)}")
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes, strict=True):
            value = weights[name]
            if not isinstance(value, np.ndarray):
                raise WeightsError(
                    f"{what}: {name!r} must be a NumPy array, got {type(value).__name__}"
                    + tensor_hint(value)
                )
            if value.shape != shape:
                raise WeightsError(f"{what}: {name!r} has shape {value.shape}, expected {shape}")
            if value.dtype != dtype:
                raise WeightsError(
                    f"{what}: {name!r} has dtype {value.dtype}, expected {dtype}"
                    + integer_model_hint(name, value.dtype, dtype)
                )
        # The layout matches: what remains wrong is a non-finite value.


def is_unicode_text(name: str) -> bool:
    """Whether ``name`` encodes as UTF-8 (it holds no lone surrogate)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# np.vdot without its array-function dispatch (a Python frame per call); the
# plain function where NumPy does not expose the implementation.
_vdot: Any = getattr(np.vdot, "_implementation", np.vdot)
_isfinite = math.isfinite


def _all_finite(array: Array) -> bool:
    # The sum of squares (vdot: one C call, no temporary, and it sets no
    # floating-point error flag, so no overflow warning) is finite iff every
    # value is, unless huge finite values overflow it: the exact check settles that.
    if math.isfinite(_vdot(array, array)):
        return True
    return bool(np.isfinite(array).all())


def native(weights: Weights) -> Weights:
    """``weights`` as plain arrays in this machine's byte order (converted only where not).

    A model given in the other byte order (``dtype(">f8")`` on a little-endian
    machine) would make every update a client computes (in native order) look
    like another dtype; the global model is kept in native order instead. An
    array subclass (``np.matrix``, whose ``*`` is a matrix product; ``np.memmap``)
    becomes a plain array over the same memory, and a NumPy scalar
    (``np.float32(0)``) a 0-d array, as in a client's :class:`~covey.FitResult`.
    """
    if not isinstance(weights, Mapping) or all(
        not isinstance(a, np.ndarray | np.generic) or (type(a) is np.ndarray and a.dtype.isnative)
        for a in weights.values()
    ):
        return weights  # (anything but named arrays is refused by the spec, by name)
    return {name: _native_array(a) for name, a in weights.items()}


def _native_array(value: Any) -> Any:
    if isinstance(value, np.generic):  # a NumPy scalar: its 0-d array, as a client's reply
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or isinstance(value, np.ma.MaskedArray):
        return value  # refused by the spec, by name
    array: Array = np.asarray(value)
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def freeze(weights: Weights) -> dict[str, Array]:
    """Read-only views of ``weights``: clients get the global model by reference.

    Each view reads its memory through a read-only buffer, so a client cannot
    make it writable again (``array.flags.writeable = True`` raises) and
    change the global model, the other clients' copy of it, in place.

    Returns:
        A new dict whose arrays share memory with ``weights`` but cannot be written.
    """
    out: dict[str, Array] = {}
    for name, value in weights.items():
        try:
            view = np.asarray(memoryview(cast(Any, value)).toreadonly())  # stubs differ by NumPy
        except (TypeError, ValueError):  # a dtype the buffer protocol cannot carry
            view = value.view()
        if view.dtype != value.dtype or view.shape != value.shape:
            view = value.view()
        view.flags.writeable = False
        out[name] = view
    return out


def copy(weights: Weights) -> dict[str, Array]:
    """A deep copy of ``weights`` (writable, C-contiguous)."""
    return {name: np.array(value, copy=True, order="C") for name, value in weights.items()}


def add(weights: Weights, delta: Weights) -> dict[str, Array]:
    """``weights + delta`` per array, keeping each array's dtype.

    Integers wrap around; a bool array counts modulo 2, so its delta is the mask of
    the entries that flip (``weights ^ delta``), as :func:`subtract` makes it.
    """
    return _per_array(np.add, weights, delta)


def subtract(weights: Weights, other: Weights) -> dict[str, Array]:
    """``weights - other`` per array, keeping each array's dtype.

    Integers wrap around; for a bool array (modulo 2) the difference is the mask of
    the entries that differ, ``weights ^ other`` (NumPy has no bool subtraction).
    A float difference past the dtype's range is inf, without NumPy's warning: the
    steps that take it check what they produce.
    """
    with np.errstate(over="ignore"):
        return _per_array(np.subtract, weights, other)


def _per_array(op: np.ufunc, weights: Weights, other: Weights) -> dict[str, Array]:
    """``op(weights, other)`` per array in its dtype; for a bool array ``weights ^ other``."""
    # asarray: a ufunc returns a scalar, not an array, for 0-d inputs.
    return {
        name: np.asarray(
            np.logical_xor(value, other[name])
            if value.dtype.kind == "b"
            else op(value, other[name], dtype=value.dtype, casting="same_kind")
        )
        for name, value in weights.items()
    }


def global_norm(weights: Weights) -> float:
    """The L2 norm of all arrays taken together."""
    total = 0.0
    for value in weights.values():
        flat = value.reshape(-1)
        total += float(np.dot(flat, flat)) if flat.dtype.kind == "f" else float(np.sum(flat**2))
    return float(np.sqrt(total))


def fingerprint(weights: Weights) -> tuple[int, ...]:
    """Per array, the wrapping sum of its 64-bit words and of its trailing bytes.

    One vectorized pass over the model, no copy of a contiguous array: about
    1 ms for 40 MB, where a CRC-32 takes 12. Any write that changes one word
    changes its sum; only a write that moves values without changing them
    (a permutation) keeps it.
    """
    out: list[int] = []
    for array in weights.values():
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        whole = raw.size - raw.size % 8
        out.append(int(np.add.reduce(raw[:whole].view(np.uint64), dtype=np.uint64)))
        out.append(int(np.add.reduce(raw[whole:], dtype=np.uint64)))
    return tuple(out)

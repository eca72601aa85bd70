"""The values a client's metrics may hold, checked and copied as every transport carries them."""

from __future__ import annotations

import contextlib
import numbers
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from covey.core._jsonvalues import TAGS, exact_scalar
from covey.core._weights import is_unicode_text

MAX_METRICS = 1000
"""The most metrics one result may carry: a reply of 200,000 names (3 MB of JSON) made
every round's record, the server's memory and ``history.json`` grow by tens of MB."""

MAX_METRIC_NAME = 1024
"""The most characters of a metric name a client or ``evaluate_fn`` may report: a name of
100,000 characters made ``covey runs show`` print a table of 160 KB, and a client's was
capped only by the wire's ``WireLimits.max_string`` (1 Mi characters)."""

MAX_CENTRAL_NAME = MAX_METRIC_NAME
"""The cap on ``evaluate_fn``'s metric names: the same as a client's."""

_SCALARS = (bool, int, float, str, bytes)


def item_of(value: Any) -> Any:
    """The number a one-element array or tensor of any library holds, else ``value`` as is.

    A 0-d torch tensor (``loss``, ``correct.sum()``) gives its number through
    ``item()``, as NumPy's scalars do; torch is never imported here, and a
    tensor that requires grad is detached first (torch warns when one is
    turned into a number). Values ``item()`` cannot turn into one number (an
    array of several) are returned as they are.
    """
    if isinstance(value, _SCALARS) or not callable(getattr(value, "item", None)):
        return value
    torch = sys.modules.get("torch")
    tensor = getattr(torch, "Tensor", None)
    if tensor is not None and isinstance(value, tensor):
        value = value.detach()
    with contextlib.suppress(TypeError, ValueError, RuntimeError):  # torch: several elements
        return value.item()
    return value


METRIC_TYPES = (bool, int, float, str, bytes, np.generic, np.ndarray)
FLOAT_MAX = float(np.finfo(np.float64).max)
"""The largest float: an int metric or loss beyond it has no float value to average."""


def fits_a_float(value: int) -> bool:
    """Whether a float holds ``value`` (up to rounding): ``float(10**400)`` overflows."""
    try:
        float(value)
    except OverflowError:
        return False
    return True


def too_large(value: int, what: str) -> ValueError:
    """The error for an int ``what`` that no float holds (averaging it would overflow)."""
    return ValueError(
        f"{what} is an int of {value.bit_length()} bits, too large for a float "
        f"(at most about {FLOAT_MAX:.3g}), so it cannot be averaged"
    )


def own_metrics(value: object, what: str) -> dict[str, Any]:
    """A copy of metrics ``value`` as another process receives them; refused if no transport can.

    The process backend and the network carry metrics as JSON: a name that is
    not a string came back as one (``3`` as ``"3"``), and a value of another
    type failed the client there while the inline and Ray backends took it.
    The copy is taken when the result is made: a client that goes on changing
    the dict it returned (one dict for every round, say) changes nothing the
    server holds, and NumPy scalars become the Python values they hold
    (``np.str_`` a ``str``), as on every other backend. Arrays are copied.
    """
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict of names to scalars, got {type(value).__name__}")
    if len(value) > MAX_METRICS:
        raise ValueError(
            f"{what} holds {len(value)} metrics, over the limit of {MAX_METRICS}: report "
            "fewer (an array metric holds many values under one name)"
        )
    out: dict[str, Any] = {}
    for name, metric in value.items():
        if type(name) is not str:
            raise TypeError(f"{what} names a metric by {type(name).__name__} {name!r}, not a str")
        if len(name) > MAX_METRIC_NAME:
            raise ValueError(
                f"{what} names a metric {name[:40]!r}... of {len(name)} characters, over the "
                f"limit of {MAX_METRIC_NAME}: choose a shorter name"
            )
        if name in TAGS:
            raise ValueError(
                f"{what} names a metric {name!r}, a name the history keeps for its own tags "
                "(bytes and NaN or infinite floats are written to history.json as a dict of "
                "that one key): choose another name"
            )
        if not name.isascii() and not is_unicode_text(name):
            raise ValueError(
                f"{what} names a metric {name!r}, which is not valid Unicode text (it holds a "
                "lone surrogate): it cannot be encoded as UTF-8, as logs, trackers and files need"
            )
        out[name] = _own_value(metric, f"{what}[{name!r}]")
    return out


def _hint(metric: Any) -> str:
    """What to report instead of ``metric``, a value no transport carries ('' if nothing to say)."""
    if not isinstance(metric, np.ndarray | np.generic) and hasattr(metric, "item"):
        return (
            " (it holds several values: report one number, x.mean().item() say, or an array "
            "of them, np.asarray(x) or a torch tensor's x.detach().cpu().numpy())"
        )
    if metric is None:
        return " (leave the metric out of this result, or report float('nan'))"
    if isinstance(metric, Mapping):
        return " (report each of its values as a metric of its own name)"
    if isinstance(metric, list | tuple):
        return " (report an array of numbers as np.asarray(x))"
    if isinstance(metric, numbers.Complex) and not isinstance(metric, numbers.Real):
        return " (report its parts as metrics of their own: x.real and x.imag)"
    if isinstance(metric, numbers.Number) and not isinstance(metric, np.generic):
        return " (report it as float(x))"  # a Decimal, a Fraction
    return ""


def _own_value(metric: Any, where: str) -> Any:
    """One metric's value as every transport carries it; refused, naming ``where``, if none can.

    A one-element tensor (a torch ``loss``) counts as its number, as
    ``evaluate_fn``'s metrics and ``EvaluateResult.loss`` take it.
    """
    if not isinstance(metric, METRIC_TYPES):
        metric = item_of(metric)
    if not isinstance(metric, METRIC_TYPES) or (
        isinstance(metric, np.ndarray | np.generic)
        and metric.dtype.kind not in ("biuf" if isinstance(metric, np.ndarray) else "biufUS")
    ):
        raise TypeError(
            f"{where} is {type(metric).__name__}, expected a number, bool, str or bytes"
            f"{_hint(metric)}"
        )
    if type(metric) is int and not -FLOAT_MAX <= metric <= FLOAT_MAX:
        raise too_large(metric, where)
    if isinstance(metric, np.generic):
        metric = metric.item()
        if isinstance(metric, np.generic):  # a long double's item() is itself
            metric = float(metric)
    elif isinstance(metric, np.ndarray):
        # a long double array as float64, as its scalar: JSON (the wire) has no long doubles
        wide = metric.dtype.kind == "f" and metric.dtype.itemsize > 8
        metric = np.array(metric, dtype=np.float64 if wide else None)
    elif type(metric) not in _SCALARS:  # an IntEnum, a str subclass: the wire's plain value
        metric = exact_scalar(metric)
    if isinstance(metric, str) and not metric.isascii() and not is_unicode_text(metric):
        raise ValueError(
            f"{where} is a str holding a lone surrogate ({metric!r}): it cannot be "
            "encoded as UTF-8, as logs, trackers and files need"
        )
    return metric

"""The server's own evaluation of the global model: ``evaluate_fn(round, weights)``, checked."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from covey.core._jsonvalues import TAGS, exact_scalar, shared_name
from covey.core._messages import Scalar
from covey.core._metricvalues import FLOAT_MAX, MAX_METRIC_NAME, MAX_METRICS, item_of
from covey.core._weights import Weights, fingerprint, is_unicode_text
from covey.strategies._checks import name_of
from covey.strategies._metrics import R2_MOMENTS

__all__ = ["central_evaluation"]


def central_evaluation(
    evaluate_fn: Callable[..., Any], rnd: int, weights: Weights, *, step: str = "round"
) -> tuple[float, dict[str, Scalar]] | None:
    """``evaluate_fn(rnd, weights)``'s loss and metrics, checked; None if it returned None.

    ``step`` is what ``rnd`` counts in errors: ``"round"``, or an asynchronous run's
    ``"update"``.

    It gets a dict of its own (entries it rebinds or adds never reach the global
    model) holding the server's read-only arrays, with no copy.

    Raises:
        RuntimeError: ``evaluate_fn`` changed the arrays in place, through a library
            that ignores NumPy's read-only flag (``torch.from_numpy``): the global
            model would have changed without a word.
        ValueError: it wrote into them through NumPy (its error, and the fix).
        TypeError: what it returned is not ``(loss, metrics)``.
        Exception: what ``evaluate_fn`` raised, with a note naming it and the round.
    """
    before = fingerprint(weights)
    try:
        out = evaluate_fn(rnd, dict(weights))
    except Exception as exc:  # the user's error, told where it came from
        note = f"raised by evaluate_fn {name_of(evaluate_fn)} in {step} {rnd}"
        if isinstance(exc, ValueError) and ("read-only" in str(exc) or "WRITEABLE" in str(exc)):
            said = ValueError(f"evaluate_fn raised {exc}; {_EVALUATE_COPY}")
            said.add_note(note)
            raise said from exc
        exc.add_note(note)
        raise
    if fingerprint(weights) != before:
        raise RuntimeError(
            f"{step} {rnd}: evaluate_fn changed the global weights in place, through a "
            f"library that ignores NumPy's read-only flag; the run stops so that no {step} "
            f"trains from a changed model. {_EVALUATE_COPY}"
        )
    return None if out is None else _central_result(out)


_SCALARS = (bool, int, float, str, bytes)


def _central_result(out: object) -> tuple[float, dict[str, Scalar]]:
    """``evaluate_fn``'s ``(loss, metrics)``, checked, NumPy scalars made plain Python scalars.

    A subclass of a Python scalar (``np.float64``, ``np.str_``, an ``IntEnum``)
    becomes the plain value ``history.json`` reads back.

    The sums a regressor's client reports to pool R^2 across clients
    (:data:`~covey.strategies._metrics.R2_MOMENTS`) are left out: a
    ``SklearnClient`` evaluating the server's test set gives its R^2 itself.

    Raises:
        TypeError: naming what is wrong, if ``out`` is not a number and a dict of
            names to scalars (an array as a metric would stop the run later, when
            the history is written).
    """
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise TypeError(f"evaluate_fn must return (loss, metrics) or None, got {_shape_of(out)}")
    loss, metrics = out
    number = _loss_of(loss)
    if not isinstance(metrics, Mapping):
        hint = ""
        if isinstance(metrics, int | float) or hasattr(metrics, "item"):
            hint = ': name the value, return (loss, {"accuracy": value})'
        raise TypeError(
            "evaluate_fn's metrics must be a dict of names to scalars, "
            f"got {type(metrics).__name__}{hint}"
        )
    if len(metrics) > MAX_METRICS + (R2_MOMENTS in metrics):
        raise ValueError(
            f"evaluate_fn's metrics hold {len(metrics)} names, over the limit of {MAX_METRICS} "
            "a result may carry: report fewer (and log the rest from evaluate_fn itself)"
        )
    checked: dict[str, Scalar] = {}
    for key, value in metrics.items():
        if key == R2_MOMENTS:
            continue
        value = item_of(value)  # NumPy scalars, 0-d arrays and tensors
        if not isinstance(key, str):
            raise TypeError(
                f"evaluate_fn's metrics must be named by strings, got {type(key).__name__} "
                f"{key!r:.40} as a name (write {{{str(key)!r:.40}: ...}})"
            )
        _check_name(key)
        if not isinstance(value, _SCALARS):
            raise TypeError(_not_scalar(key, value))
        if isinstance(value, str) and not value.isascii() and not is_unicode_text(value):
            raise ValueError(
                f"evaluate_fn's metric {key!r} is a str holding a lone surrogate ({value!r:.60}): "
                "it cannot be encoded as UTF-8, as logs, trackers and files need"
            )
        # np.float64 and np.str_ are float and str; the name kept once for every round
        checked[shared_name(key)] = exact_scalar(value)
    return number, checked


def _check_name(key: str) -> None:
    """Refuse ``evaluate_fn``'s metric name ``key``: too long, a history's tag, or no UTF-8.

    A client's metric names are refused alike (``own_metrics``).
    """
    if len(key) > MAX_METRIC_NAME:
        raise ValueError(
            f"evaluate_fn's metric {key[:40]!r}... has a name of {len(key)} characters, over "
            f"the limit of {MAX_METRIC_NAME}: choose a shorter name"
        )
    if not key.isascii() and not is_unicode_text(key):
        raise ValueError(
            f"evaluate_fn's metric {key!r:.60} has a name holding a lone surrogate, which is "
            "not valid Unicode text: it cannot be encoded as UTF-8, as logs, trackers and "
            "files need"
        )
    if key in TAGS:
        raise ValueError(
            f"evaluate_fn's metric {key!r} has a name the history keeps for its own tags "
            "(bytes and NaN or infinite floats are written to history.json as a dict of "
            "that one key): choose another name"
        )


def _not_scalar(key: str, value: object) -> str:
    """Why ``evaluate_fn``'s metric ``key`` of ``value`` (no scalar) is refused, and what to do."""
    several = hasattr(value, "shape") or hasattr(value, "item")  # an array or tensor of many
    hint = (
        ": report one number (x.mean().item(), say), or several metrics of one number each"
        if several
        else ""
    )
    return (
        f"evaluate_fn's metric {key!r} is {type(value).__name__}, expected a number, bool, "
        f"str or bytes{hint}"
    )


def _loss_of(loss: object) -> float:
    """``evaluate_fn``'s loss as a float; a bool (as a client's is) or no number refused.

    Raises:
        TypeError: ``loss`` is no number (a bool, a string).
        ValueError: it is an int too large for a float (past about ``1.8e308``).
    """
    value = item_of(loss)  # Python and NumPy numbers, 0-d arrays and tensors
    try:
        if isinstance(value, bool | np.bool_ | str | bytes):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"evaluate_fn's loss must be a number, got {type(loss).__name__}") from None
    except OverflowError:
        bits = value.bit_length() if isinstance(value, int) else "too many"
        raise ValueError(
            f"evaluate_fn's loss is an int of {bits} bits, too large for a float "
            f"(at most about {FLOAT_MAX:.3g})"
        ) from None


def _shape_of(out: object) -> str:
    """What ``evaluate_fn`` returned instead of ``(loss, metrics)``, and Flower's habit behind it.

    Flower's message API has ``evaluate_fn`` return one record of metrics, the loss
    among them; its clients' ``evaluate`` returns ``(loss, num_examples, metrics)``.
    """
    kind = type(out).__name__
    if isinstance(out, Mapping):
        loss = "metrics.pop('loss'), metrics" if "loss" in out else "loss, metrics"
        return f"a {kind}: the loss goes apart from the metrics, as in return {loss}"
    if isinstance(out, tuple | list):
        hint = ""
        if len(out) == 3:
            hint = ": a client's evaluate returns (loss, num_examples, metrics), evaluate_fn "
            hint += "returns (loss, metrics)"
        return f"a {kind} of {len(out)} item{'' if len(out) == 1 else 's'}{hint}"
    if isinstance(out, int | float | np.number) and not isinstance(out, bool):
        return f"{kind}: return (loss, {{}}) for a loss with no metrics"
    return kind


_EVALUATE_COPY = (
    "the weights evaluate_fn receives are the server's own arrays, read-only: copy them "
    "before changing them in place (torch.tensor(array), not torch.from_numpy(array); "
    "or {name: array.copy() for name, array in weights.items()})"
)

"""Safe encodings of tasks and results for transports that cross a trust boundary.

Nothing that arrives from the network is unpickled. Small structured data
(configs, metrics, payloads) is JSON, with bytes and non-finite floats tagged;
arrays travel as codec-encoded weights next to the JSON.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from covey.core._messages import EvaluateResult, FitResult
from covey.core._weights import Weights


class WireError(ValueError):
    """A message that cannot be decoded into a task or a result."""


def _to_json(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"__bytes__": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, np.generic):
        return _to_json(value.item())
    if isinstance(value, np.ndarray):
        return {"__array__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    raise WireError(f"cannot send a value of type {type(value).__name__} over the network")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__bytes__" in value and len(value) == 1:
            return base64.b64decode(value["__bytes__"])
        if "__float__" in value and len(value) == 1:
            return float(value["__float__"])
        if "__array__" in value and len(value) == 2:
            return np.asarray(value["__array__"], dtype=np.dtype(value["dtype"]))
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def dumps(value: Any) -> bytes:
    """JSON bytes for ``value`` (scalars, bytes, small arrays, dicts, lists)."""
    return json.dumps(_to_json(value), separators=(",", ":"), allow_nan=False).encode()


def loads(data: bytes) -> Any:
    """The value :func:`dumps` encoded; raises :class:`WireError` on bad input."""
    if not data:
        return None
    try:
        return _from_json(json.loads(data))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise WireError(f"malformed JSON in message: {exc}") from None


def flatten_extras(extras: Mapping[str, Weights]) -> dict[str, Any]:
    """Named weights mappings as one flat mapping (for the codec), keys ``[extra, name]``."""
    return {
        json.dumps([extra, name]): array
        for extra, weights in extras.items()
        for name, array in weights.items()
    }


def unflatten_extras(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Undo :func:`flatten_extras`; raises :class:`WireError` on keys it did not make."""
    out: dict[str, dict[str, Any]] = {}
    for key, array in flat.items():
        try:
            extra, name = json.loads(key)
        except (ValueError, TypeError):
            raise WireError(f"malformed extra array name {key!r}") from None
        if not isinstance(extra, str) or not isinstance(name, str):
            raise WireError(f"malformed extra array name {key!r}")
        out.setdefault(extra, {})[name] = array
    return out


def is_extras(value: Any) -> bool:
    """Whether ``value`` is a non-empty mapping of names to weights (arrays by name)."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(
            isinstance(k, str)
            and isinstance(v, Mapping)
            and all(isinstance(a, np.ndarray) for a in v.values())
            for k, v in value.items()
        )
    )


def result_to_wire(result: Any) -> tuple[bytes, Weights | None]:
    """Split a task's result into JSON bytes and optional weights to send as chunks."""
    if isinstance(result, FitResult):
        form = "weights" if result.weights is not None else "delta"
        arrays = result.weights if result.weights is not None else result.delta
        head = {
            "type": "fit",
            "form": form,
            "num_examples": result.num_examples,
            "metrics": result.metrics,
        }
        return dumps(head), arrays
    if isinstance(result, EvaluateResult):
        head = {
            "type": "evaluate",
            "loss": result.loss,
            "num_examples": result.num_examples,
            "metrics": result.metrics,
        }
        return dumps(head), None
    return dumps({"type": "value", "value": result}), None


def result_from_wire(
    data: bytes, weights: Weights | None, extras: Mapping[str, Weights] | None = None
) -> Any:
    """Rebuild a result from :func:`result_to_wire`'s output; raises :class:`WireError`."""
    head = loads(data)
    if not isinstance(head, dict) or "type" not in head:
        raise WireError("a reply's result has no type")
    try:
        kind = head["type"]
        if kind == "fit":
            if weights is None:
                raise WireError("a fit result came without weights")
            if head["form"] == "weights":
                return FitResult(
                    weights=weights,
                    num_examples=head["num_examples"],
                    metrics=head["metrics"],
                    extras=dict(extras or {}),
                )
            if head["form"] == "delta":
                return FitResult(
                    delta=weights,
                    num_examples=head["num_examples"],
                    metrics=head["metrics"],
                    extras=dict(extras or {}),
                )
            raise WireError(f"unknown fit result form {head['form']!r}")
        if kind == "evaluate":
            return EvaluateResult(
                loss=head["loss"], num_examples=head["num_examples"], metrics=head["metrics"]
            )
        if kind == "value":
            return head.get("value")
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"malformed {head.get('type')} result: {exc}") from None
    raise WireError(f"unknown result type {kind!r}")

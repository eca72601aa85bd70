"""An XGBoost booster as covey Weights: its JSON model bytes in a fixed-capacity byte array.

A federation's weights keep one layout from round to round, while a booster
grows with every tree. So the model travels as ``{"model": uint8[capacity],
"size": int64[1]}``: XGBoost's own JSON serialization (never pickle) in the
first ``size`` bytes of a buffer whose capacity is fixed when the federation
starts. Every size is checked against that capacity before anything is read.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from covey.core._extras import MissingExtraError
from covey.core._weights import Array, Weights, WeightsError
from covey.xgboost._validate import check_model

__all__ = [
    "MODEL",
    "SIZE",
    "booster_from_weights",
    "empty_booster",
    "from_weights",
    "num_trees",
    "to_weights",
    "xgboost_module",
]

MODEL = "model"
"""The weights entry holding the model bytes."""
SIZE = "size"
"""The weights entry holding how many bytes of ``MODEL`` are used."""


def xgboost_module() -> Any:
    """The ``xgboost`` module, or an ImportError saying how to install it."""
    try:
        return importlib.import_module("xgboost")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            "covey.xgboost needs XGBoost: pip install 'covey[xgboost]'"
        ) from exc


def to_weights(model: bytes | bytearray | memoryview, capacity: int) -> dict[str, Array]:
    """Model bytes (XGBoost JSON) as weights of a fixed ``capacity``.

    Args:
        model: The serialized booster, e.g. ``booster.save_raw("json")``.
        capacity: The byte capacity every model of the federation shares.

    Returns:
        ``{"model": uint8[capacity], "size": int64[1]}``.

    Raises:
        ValueError: The model is larger than ``capacity``, or in XGBoost's binary
            UBJSON format (``save_raw()``'s default) rather than JSON.
    """
    data = memoryview(model).cast("B")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be a positive int, got {capacity!r}")
    if _ubjson(data[:2].tobytes()):
        raise ValueError(f"the booster is {_UBJSON}")
    if data.nbytes > capacity:
        raise ValueError(
            f"the booster takes {data.nbytes} bytes, more than the federation's capacity of "
            f"{capacity}: start it with a larger capacity (initial_model(..., capacity=...)) "
            "or grow fewer or shallower trees"
        )
    buffer = np.zeros(capacity, dtype=np.uint8)
    buffer[: data.nbytes] = np.frombuffer(data, dtype=np.uint8)
    return {MODEL: buffer, SIZE: np.array([data.nbytes], dtype=np.int64)}


def from_weights(weights: Weights) -> bytes:
    """The model bytes inside ``weights``, checked against the buffer's capacity.

    Args:
        weights: XGBoost weights as :func:`to_weights` makes them: the model's
            bytes in a 1-D uint8 buffer and its length, one integer.

    Returns:
        The first ``size`` bytes of the buffer, copied.

    Raises:
        WeightsError: The entries are missing, of the wrong kind, or ``size`` is
            out of range.
    """
    if MODEL not in weights or SIZE not in weights:
        raise WeightsError(f"XGBoost weights need {MODEL!r} and {SIZE!r} entries")
    buffer, size = np.asarray(weights[MODEL]), np.asarray(weights[SIZE])
    if buffer.dtype != np.uint8 or buffer.ndim != 1:
        raise WeightsError(f"{MODEL!r} must be a 1-D uint8 array, got {buffer.dtype}{buffer.shape}")
    if size.shape != (1,) or size.dtype.kind not in "iu":
        raise WeightsError(f"{SIZE!r} must be one integer, got {size.dtype}{size.shape}")
    n = int(size[0])
    if not 0 <= n <= buffer.size:
        raise WeightsError(f"{SIZE!r} is {n}, outside the model buffer's 0..{buffer.size} bytes")
    return buffer[:n].tobytes()


def parse(model: bytes, what: str | None = None, *, averaged: bool = True) -> dict[str, Any]:
    """The JSON document of a serialized booster, with a clear error if it is not one.

    ``what`` names a client's model in errors (``"client model 2"``); without it
    the model is the global one, whose bytes a strategy for arrays may have averaged
    (``averaged=False``: the initial weights, which no strategy has touched yet).
    """
    hint, prefix = (_AVERAGED if averaged else "", "") if what is None else ("", f"{what}: ")
    try:
        doc = json.loads(model)
        booster = doc["learner"]["gradient_booster"]
        _check_booster(booster)
        trees = booster["model"]["trees"]
    except WeightsError as exc:
        raise WeightsError(f"{prefix}{exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        if _ubjson(model[:2]):  # no averaging makes these bytes: say what they are
            raise WeightsError(f"{prefix}the model is {_UBJSON}") from None
        raise WeightsError(
            f"{prefix}not an XGBoost JSON model of a tree booster: {exc}{hint}"
        ) from None
    if not isinstance(trees, list):
        raise WeightsError(f"{prefix}not an XGBoost JSON model: 'trees' is not a list{hint}")
    return doc  # type: ignore[no-any-return]


_UBJSON = (
    "in XGBoost's binary UBJSON format (save_raw()'s default), not JSON, which covey.xgboost "
    "carries: give booster.save_raw('json') (or a model saved as .json)"
)


def _ubjson(head: bytes) -> bool:
    """Whether a model's first bytes open a UBJSON object (a type marker after ``{``).

    No JSON text has one of those letters after its opening brace.
    """
    return head[:1] == b"{" and head[1:2] in (b"L", b"l", b"i", b"I", b"U", b"$", b"#")


def _check_booster(booster: Any) -> None:
    """Refuse a model of another booster than ``gbtree``, naming it (its JSON holds no trees)."""
    name = booster.get("name") if isinstance(booster, dict) else None
    if isinstance(name, str) and name != "gbtree":
        raise WeightsError(
            f"booster {name!r} is not supported by XGBoostBagging or XGBoostCyclic (dart "
            "rescales earlier trees, gblinear has none): train with booster='gbtree'"
        )


_AVERAGED = (
    " (a model's bytes averaged by a strategy for arrays, such as FedAvg, read so: "
    "aggregate XGBoost models with XGBoostBagging or XGBoostCyclic)"
)


def num_trees(model: bytes) -> int:
    """How many trees a serialized booster holds.

    Args:
        model: The booster's JSON bytes (``Booster.save_raw("json")``).

    Raises:
        covey.WeightsError: ``model`` is no XGBoost JSON model of a tree booster.
    """
    return len(parse(model)["learner"]["gradient_booster"]["model"]["trees"])


def load_booster(model: bytes, nthread: int | None = None) -> Any:
    """An ``xgboost.Booster`` from JSON bytes; a model XGBoost refuses raises WeightsError.

    ``nthread``: the threads the booster predicts and trains on (None: XGBoost's
    default). A model's JSON holds none, so a booster loaded without it would
    run on every core whatever its training was given.
    """
    xgb = xgboost_module()
    params = {} if nthread is None else {"nthread": nthread}
    try:
        return xgb.Booster(params, model_file=bytearray(model))
    except xgb.core.XGBoostError as exc:
        raise WeightsError(f"XGBoost cannot load the model: {_first_line(exc)}") from None


def booster_from_weights(weights: Weights, params: Mapping[str, Any] | None = None) -> Any:
    """An ``xgboost.Booster`` loaded from ``weights`` (for prediction or more training).

    Every tree is checked first (see ``covey.xgboost._validate``): XGBoost
    trusts the JSON it loads, and a malformed tree would crash the process.

    Args:
        weights: The model's weights (see :func:`to_weights`).
        params: The XGBoost parameters the booster runs with: their ``nthread``
            is set on it (the model's JSON holds none; without it the booster
            predicts on every core). None: XGBoost's default.
    """
    return booster_from_bytes(from_weights(weights), params)


def booster_from_bytes(
    model: bytes | bytearray | memoryview, params: Mapping[str, Any] | None = None
) -> Any:
    """An ``xgboost.Booster`` from serialized JSON (what :func:`from_weights` gives), checked first.

    ``params``: as for :func:`booster_from_weights`, their ``nthread`` set on the booster.

    Raises:
        WeightsError: the bytes are no booster, or one of its trees is malformed.
    """
    model = bytes(model)
    doc = parse(model)
    check_model(doc, "the model")
    return load_booster(model, None if params is None else threads(params))


def threads(params: Mapping[str, Any]) -> int | None:
    """The ``nthread`` of XGBoost parameters, for the data and predictions as for training.

    Without it XGBoost builds a ``DMatrix`` and predicts on every core, whatever
    ``nthread`` the training was given; None when the parameters set none (or
    one XGBoost's training will judge, as it does any other parameter).
    """
    value = params.get("nthread")
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return None
    return int(value)


def _check_supported(params: dict[str, Any]) -> None:
    """Refuse training parameters whose trees the federated bagging cannot combine.

    Only gradient-boosted trees with one value per leaf are aggregated: DART
    (which rescales earlier trees as it drops them), linear boosters and
    vector-leaf trees (``multi_strategy="multi_output_tree"``) are not.
    """
    booster = params.get("booster", "gbtree")
    if booster != "gbtree":
        raise ValueError(
            f"params['booster'] = {booster!r}: covey.xgboost combines booster='gbtree' "
            "models only (dart rescales earlier trees, gblinear has none)"
        )
    strategy = params.get("multi_strategy", "one_output_per_tree")
    if strategy != "one_output_per_tree":
        raise ValueError(
            f"params['multi_strategy'] = {strategy!r}: covey.xgboost combines trees with "
            "one value per leaf only (multi_strategy='one_output_per_tree', the default)"
        )


def empty_booster(params: dict[str, Any], num_features: int) -> bytes:
    """A booster with no trees: the starting global model, made without any data.

    ``params`` must set ``base_score`` (the prediction before any tree) so that
    every client boosts from the same start; XGBoost would otherwise estimate
    it from each client's own data.

    Args:
        params: XGBoost training parameters (objective, num_class, base_score, ...).
        num_features: Input features, at least 1.

    Returns:
        The JSON bytes of the booster.

    Raises:
        ValueError: ``base_score`` is not set, ``num_features`` is below 1, a
            ``multi:`` objective has no ``num_class``, or XGBoost refuses ``params``.
    """
    if "base_score" not in params:
        raise ValueError(
            "set params['base_score'] (e.g. 0.5 for binary:logistic): every client must "
            "boost from the same starting prediction"
        )
    if isinstance(num_features, bool) or not isinstance(num_features, int | np.integer):
        raise TypeError(f"num_features must be an int, got {type(num_features).__name__}")
    if num_features < 1:
        raise ValueError(
            f"num_features must be at least 1 (the input features, x's columns), got {num_features}"
        )
    _check_supported(params)
    _check_classes(params)
    xgb = xgboost_module()
    x = np.zeros((1, int(num_features)), dtype=np.float32)
    try:
        booster = xgb.train(
            dict(params),
            xgb.DMatrix(x, label=np.zeros(1), nthread=threads(params)),
            num_boost_round=0,
        )
    except xgb.core.XGBoostError as exc:
        raise ValueError(f"XGBoost refuses params: {_first_line(exc)}") from None
    return bytes(booster.save_raw("json"))


def _check_classes(params: dict[str, Any]) -> None:
    """Refuse a multi-class objective without a number of classes (XGBoost's own error is terse)."""
    objective = params.get("objective")
    if not isinstance(objective, str) or not objective.startswith("multi:"):
        return
    if params.get("num_class") is None:
        raise ValueError(
            f"objective {objective!r} needs params['num_class']: set it to the number of "
            "classes (labels 0..num_class - 1)"
        )


def _first_line(exc: BaseException) -> str:
    """An XGBoost error's message without its C++ stack trace."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

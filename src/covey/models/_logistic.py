"""Multinomial logistic regression in NumPy, trained by minibatch SGD."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from covey.clients._client import Client
from covey.clients._fedprox import proximal_mu
from covey.clients._scaffold import ControlVariate, server_control
from covey.core._messages import Config, EvaluateResult, FitResult, finite
from covey.core._qfair import loss_before_fit
from covey.core._weights import Array, Weights, WeightsError

FloatArray = NDArray[Any]
IntArray = NDArray[Any]


def logistic_init(num_features: int, num_classes: int, dtype: Any = np.float64) -> dict[str, Array]:
    """Zero weights ``{"W": (features, classes), "b": (classes,)}``.

    Args:
        num_features: The input features, ``x``'s columns.
        num_classes: The classes, one past the largest label.
        dtype: The arrays' floating-point dtype.

    Raises:
        TypeError: ``num_features`` or ``num_classes`` is not an int (a string, a
            float, a bool), or ``dtype`` is no floating-point NumPy dtype.
        ValueError: ``num_features`` or ``num_classes`` is below 1.
    """
    features = _size(num_features, "num_features", "the input features, x's columns")
    classes = _size(num_classes, "num_classes", "one past the largest label")
    try:
        kind = np.dtype(dtype)
    except TypeError:
        kind = None
    if kind is None or not np.issubdtype(kind, np.floating):
        raise TypeError(f"logistic_init(): dtype must be a floating-point dtype, got {dtype!r}")
    return {"W": np.zeros((features, classes), dtype=kind), "b": np.zeros(classes, dtype=kind)}


def _size(value: Any, name: str, meaning: str) -> int:
    """``value`` as an int >= 1, else an error naming the argument ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"logistic_init(): {name} must be an int ({meaning}), got "
            f"{type(value).__name__} {value!r}" + (": use int(...)" if _numeric(value) else "")
        )
    if value < 1:
        raise ValueError(f"logistic_init(): {name} must be at least 1 ({meaning}), got {value}")
    return int(value)


def _numeric(value: Any) -> bool:
    """Whether ``value`` is a string or float that reads as a whole number (``"64"``, ``64.0``)."""
    try:
        return float(value) == int(float(value)) and not isinstance(value, bool)
    except (TypeError, ValueError, OverflowError):
        return False


def _softmax(logits: FloatArray) -> FloatArray:
    z: FloatArray = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def logistic_sgd_epoch(
    weights: Weights,
    x: FloatArray,
    y: IntArray,
    *,
    lr: float,
    batch_size: int,
    order: IntArray,
    anchor: Weights | None = None,
    mu: float = 0.0,
    correction: Weights | None = None,
) -> dict[str, Array]:
    """One epoch of minibatch SGD on the mean softmax cross-entropy.

    Args:
        weights: ``{"W", "b"}``; not modified.
        x: Features, shape ``(n, features)``.
        y: Integer labels, shape ``(n,)``.
        lr: Learning rate.
        batch_size: Examples per step; the last batch may be smaller.
        order: The order in which to visit the examples (a permutation of ``n``).
        anchor: FedProx: the global weights; with ``mu > 0`` every step adds the
            proximal term's gradient ``mu (w - anchor)``.
        mu: FedProx's proximal weight.
        correction: SCAFFOLD: ``c - c_i``, added to every step's gradient.

    Returns:
        The new weights (fresh arrays).

    Raises:
        ValueError: a label of ``y`` is not a class index of the weights (a negative
            one would silently train the last class).
    """
    x, y = _check_inputs(weights, x, y)
    W = np.array(weights["W"], dtype=np.float64 if weights["W"].dtype.kind != "f" else None)
    b = np.array(weights["b"], dtype=W.dtype)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        grad = _grad({"W": W, "b": b}, x[idx], y[idx])
        if anchor is not None and mu > 0:
            grad = {
                "W": grad["W"] + mu * (W - anchor["W"]),
                "b": grad["b"] + mu * (b - anchor["b"]),
            }
        if correction is not None:
            grad = {"W": grad["W"] + correction["W"], "b": grad["b"] + correction["b"]}
        W -= lr * grad["W"]
        b -= lr * grad["b"]
    return {"W": W, "b": b}


def logistic_grad(weights: Weights, x: FloatArray, y: IntArray) -> dict[str, Array]:
    """Gradient of the mean softmax cross-entropy of ``weights`` on the batch ``(x, y)``.

    Args:
        weights: ``{"W": (features, classes), "b": (classes,)}``.
        x: The examples, one row of features each.
        y: The labels, class indices in ``[0, classes)``.

    Raises:
        ValueError: ``weights`` are not ``{"W": (features, classes), "b": (classes,)}``
            for ``x``, ``x`` and ``y`` differ in length, or a label is not a class index.
    """
    x, y = _check_inputs(weights, x, y)
    return _grad(weights, x, y)


def _grad(weights: Weights, x: FloatArray, y: IntArray) -> dict[str, Array]:
    p = _softmax(x @ weights["W"] + weights["b"])
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    return {"W": x.T @ p, "b": p.sum(axis=0)}


def logistic_evaluate(weights: Weights, x: FloatArray, y: IntArray) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``weights`` on ``(x, y)``.

    Without examples (``x`` of 0 rows, an empty partition) both are NaN, the mean
    over nothing, as :class:`LogisticClient` reports no loss nor accuracy for no
    data (a made-up 0.0 would read as a model that is always right, or always wrong).

    Args:
        weights: ``{"W": (features, classes), "b": (classes,)}``.
        x: The examples, one row of features each.
        y: The labels, class indices in ``[0, classes)``.

    Raises:
        ValueError: ``weights`` are not ``{"W": (features, classes), "b": (classes,)}``
            for ``x``, ``x`` and ``y`` differ in length, or a label of ``y`` is not a
            class index of the weights.
    """
    x, y = _check_inputs(weights, x, y)
    if len(y) == 0:
        return math.nan, math.nan
    logits = x @ weights["W"] + weights["b"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(y)), y].mean())
    accuracy = float((logits.argmax(axis=1) == y).mean())
    return loss, accuracy


def _settings(lr: Any, epochs: Any, batch_size: Any, where: str) -> tuple[float, int, int]:
    """``(lr, epochs, batch_size)``, checked: a batch size or epochs below 1 trains nothing."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{where}{name!r} must be an int >= 1, got {value!r}")
    if not (finite(lr) and lr > 0):  # an int past the largest float is no rate either
        raise ValueError(f"{where}'lr' must be a finite number > 0, got {lr!r}")
    return float(lr), int(epochs), int(batch_size)


def _label_bound(y: Any, name: str) -> int:
    """One past the largest label of ``y``, checked to be integers from 0 (class indices)."""
    arr = np.asarray(y)
    if arr.dtype.kind not in "iub":
        raise ValueError(
            f"{name} must hold integer class indices 0..k-1, got dtype {arr.dtype} "
            "(map labels to indices first, e.g. with np.unique(y, return_inverse=True))"
        )
    if arr.size == 0:
        return 0
    low = int(arr.min())
    if low < 0:
        raise ValueError(
            f"{name} must hold class indices 0..k-1, got label {low} (a negative index "
            "would silently train the last class's column)"
        )
    return int(arr.max()) + 1


def _labels_fit(y: Any, weights: Weights) -> None:
    """Refuse labels that are not class indices of ``weights`` (``0 .. classes - 1``)."""
    bound = _label_bound(y, "y")
    classes = np.shape(weights["W"])[-1]
    if bound > classes:
        raise ValueError(
            f"y has label {bound - 1}, but the weights have {classes} classes "
            f"(class indices must be below {classes})"
        )


def _check_inputs(weights: Any, x: Any, y: Any) -> tuple[FloatArray, IntArray]:
    """``(x, y)`` as arrays; what the functions above would fail on deep in NumPy is refused.

    Weights of another model (other names, shapes that do not fit ``x``), rows and
    labels of different lengths and labels that are not class indices, each named.
    """
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"weights must be a mapping of names to arrays ({{'W', 'b'}}), got "
            f"{type(weights).__name__}"
        )
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.dtype.kind not in "iuf":
        raise ValueError(
            f"x must be a 2-D array of numbers (rows, features), got {x.dtype} of shape {x.shape}"
        )
    _check_rows(x, y, "x", "y")
    _check_layout({k: np.asarray(v) for k, v in weights.items()}, x, 0, "y")
    _labels_fit(y, weights)
    return x, y


def _check_layout(weights: Weights, x: FloatArray, bound: int, name: str) -> None:
    """Refuse weights that are not ``{"W": (features, classes), "b": (classes,)}`` for ``x, y``.

    A checkpoint of another model otherwise fails deep in NumPy (a ``KeyError``,
    shapes that do not broadcast) without naming the array at fault.
    """
    names = sorted(weights)
    if names != ["W", "b"]:
        raise WeightsError(
            f"weights do not match logistic regression: expected the arrays ['W', 'b'], got {names}"
        )
    W, b = weights["W"], weights["b"]
    features = x.shape[1] if x.ndim == 2 else None
    if W.ndim != 2 or (features is not None and W.shape[0] != features):
        raise WeightsError(
            f"weight 'W' has shape {W.shape}, logistic regression on data of {features} "
            f"features needs ({features}, classes)"
        )
    if b.shape != (W.shape[1],):
        raise WeightsError(
            f"weight 'b' has shape {b.shape}, 'W' of shape {W.shape} needs ({W.shape[1]},)"
        )
    if bound > W.shape[1]:
        raise WeightsError(
            f"weight 'W' has {W.shape[1]} classes, but {name} has label {bound - 1} "
            f"(class indices must be below {W.shape[1]})"
        )


def _check_rows(x: Any, y: Any, x_name: str, y_name: str) -> None:
    """Refuse features and labels of different lengths.

    Otherwise a client trains on the rows that have a label and then fails in NumPy
    ("operands could not be broadcast together") when it evaluates.
    """
    rows, labels = len(x), len(y)
    if rows != labels:
        raise ValueError(
            f"{x_name} and {y_name} need the same length (one label per row), "
            f"got {rows} and {labels}"
        )


class LogisticClient(Client):
    """A client that trains logistic regression on its local data with minibatch SGD.

    The visiting order of each epoch is drawn from ``default_rng([seed, cid, round, epoch])``.
    Under :func:`covey.FedProx` every step adds the proximal term's gradient
    ``mu (w - w_global)``; under :func:`covey.Scaffold` the client keeps its control
    variate ``c_i`` (in memory, or in ``scaffold_path``) and corrects every step by
    ``c - c_i`` (option II).
    The config may override ``lr``, ``epochs`` and ``batch_size`` per round
    (checked like the arguments: a ValueError names a bad one).
    A client without data to evaluate (or to train on) reports ``num_examples=0``
    and no accuracy nor loss metric: a NaN loss from :meth:`evaluate`, which the
    server weighs by 0, and no ``train_loss``/``train_accuracy`` from :meth:`fit`.

    Args:
        cid: The client's id (seeds its shuffling).
        x: Local training features.
        y: Local training labels, integer class indices ``0..k-1``.
        x_val: Local validation features for :meth:`evaluate` (None, with
            ``y_val`` None: the training data).
        y_val: Local validation labels.
        lr: Learning rate, a finite number > 0.
        epochs: Local epochs per round, at least 1.
        batch_size: Minibatch size, at least 1.
        seed: Seed of the shuffling.
        scaffold_path: Under SCAFFOLD, a file in which the client keeps ``c_i`` between
            runs, as :class:`covey.torch.TorchClient` does (a restarted deployed
            client, or a resumed simulation whose ``client_fn`` builds it again,
            goes on from it); None keeps it in memory.
    """

    def __init__(
        self,
        cid: int,
        x: FloatArray,
        y: IntArray,
        x_val: FloatArray | None = None,
        y_val: IntArray | None = None,
        *,
        lr: float = 0.1,
        epochs: int = 1,
        batch_size: int = 32,
        seed: int = 0,
        scaffold_path: str | os.PathLike[str] | None = None,
    ) -> None:
        _settings(lr, epochs, batch_size, "")
        if (x_val is None) != (y_val is None):
            raise ValueError(
                "x_val and y_val go together: give both, or neither to evaluate on the "
                "training data"
            )
        self.cid = cid
        self.x, self.y = x, y
        self.x_val = x if x_val is None else x_val
        self.y_val = y if y_val is None else y_val
        _check_rows(self.x, self.y, "x", "y")
        _check_rows(self.x_val, self.y_val, "x_val", "y_val")
        self.lr, self.epochs, self.batch_size, self.seed = lr, epochs, batch_size, seed
        self._bound = _label_bound(self.y, "y")
        self._val_bound = _label_bound(self.y_val, "y_val")
        self._scaffold_path = scaffold_path
        self._control: ControlVariate | None = None

    def fit(self, weights: Weights, config: Config) -> FitResult:
        """Train for ``epochs`` epochs and return the new weights.

        When q-FedAvg asks (``config["loss_before_fit"]``), the loss of ``weights``
        on the training data is reported too, under the name it gives.

        Args:
            weights: The global model of the round.
            config: The round's fit config; ``"lr"``, ``"epochs"`` and ``"batch_size"``
                in it override the client's own.
        """
        lr, epochs, batch_size = _settings(
            config.get("lr", self.lr),
            config.get("epochs", self.epochs),
            config.get("batch_size", self.batch_size),
            "config ",
        )
        _check_layout(weights, self.x, self._bound, "y")
        asked = loss_before_fit(config)  # q-FedAvg: the loss at the received weights
        before = None
        if asked is not None:  # no data: 0.0, the update is nothing (a NaN q-FedAvg refuses)
            before = logistic_evaluate(weights, self.x, self.y)[0] if len(self.y) else 0.0
        correction = None
        if server_control(config) is not None:  # SCAFFOLD
            if self._control is None:
                self._control = ControlVariate(self._scaffold_path)
            correction = self._control.correction(weights, config)
        mu = proximal_mu(config)
        new: Weights = weights
        for epoch in range(epochs):
            rng = np.random.default_rng([self.seed, self.cid, int(config["round"]), epoch])
            order = rng.permutation(len(self.y))
            new = logistic_sgd_epoch(
                new,
                self.x,
                self.y,
                lr=lr,
                batch_size=batch_size,
                order=order,
                anchor=weights,
                mu=mu,
                correction=correction,
            )
        metrics: dict[str, Any] = {}
        if len(self.y):  # no training data: no loss nor accuracy to report (not 0.0)
            loss, acc = logistic_evaluate(new, self.x, self.y)
            metrics = {"train_loss": loss, "train_accuracy": acc}
        if asked is not None:
            metrics[asked] = before
        if correction is not None and self._control is not None:
            steps = epochs * -(-len(self.y) // batch_size)  # 0 without data: c_i is kept
            return self._control.fit_result(
                new, num_examples=len(self.y), steps=steps, lr=lr, metrics=metrics
            )
        return FitResult(weights=dict(new), num_examples=len(self.y), metrics=metrics)

    def evaluate(self, weights: Weights, config: Config) -> EvaluateResult:
        """Loss and accuracy on the local validation data.

        Without validation data (an empty partition) the reply counts 0 examples,
        its loss is NaN (the mean over nothing, which weighs nothing) and its
        metrics hold no ``"accuracy"``: a per-client metric function never sees a
        made-up 0.0.

        Args:
            weights: The model to evaluate.
            config: The round's evaluate config (not read).
        """
        _check_layout(weights, self.x_val, self._val_bound, "y_val")
        if not len(self.y_val):
            return EvaluateResult(loss=float("nan"), num_examples=0, metrics={})
        loss, acc = logistic_evaluate(weights, self.x_val, self.y_val)
        return EvaluateResult(loss=loss, num_examples=len(self.y_val), metrics={"accuracy": acc})

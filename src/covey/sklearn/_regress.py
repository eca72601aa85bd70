"""What :class:`covey.sklearn.SklearnClient` does for a regressor: its targets and its scores.

A regressor federates as a classifier does when it trains on from the
parameters set into it: with ``partial_fit`` (``SGDRegressor``, its passive-aggressive
``learning_rate="pa1"`` too, ``MLPRegressor``), or, for an lbfgs MLP, a
warm-started ``fit``. Regressors that refit from scratch (``LinearRegression``,
``Ridge``) are refused, naming those that work. Targets
are finite numbers, one column (or, for a model with several outputs, one per
output); the loss is the mean squared error, beside R^2 and the mean absolute
error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from covey.sklearn._params import _single_target, is_mlp
from covey.strategies._metrics import R2_MOMENTS, r2_moments

__all__ = [
    "check_regressor",
    "evaluate_regressor",
    "regression_targets",
    "regressor_scores",
    "train_loss",
]

SUPPORTED = "SGDRegressor and MLPRegressor"


def check_regressor(model: Any, classes: Any) -> None:
    """Refuse ``classes`` for a regressor, and a regressor that cannot train on with partial_fit.

    An MLP passes: without ``partial_fit`` it trains on with ``warm_start``.

    Raises:
        ValueError: ``classes`` is given.
        TypeError: ``model`` is no MLP and has no ``partial_fit``.
    """
    name = type(model).__name__
    if classes is not None:
        raise ValueError(
            f"{name} is a regressor: give it no classes (classes= names a classifier's "
            "labels), and pass a test set by keyword (x_test=..., y_test=...)"
        )
    if hasattr(model, "partial_fit") or is_mlp(model):
        return
    raise TypeError(
        f"SklearnClient federates regressors that train on with partial_fit ({SUPPORTED}); "
        f"{name} has no partial_fit, so it would fit each client's data from scratch and "
        "drop the global parameters (or write a covey.Client with "
        "covey.sklearn.get_params/set_params for it)"
    )


def regression_targets(y: npt.ArrayLike, name: str, model: Any) -> npt.NDArray[np.float64]:
    """``y`` as a regressor's targets: finite numbers, ``(n,)``, or ``(n, k)`` for k outputs.

    A column vector ``(n, 1)`` is flattened, as scikit-learn would (with a warning).

    Raises:
        TypeError: ``y`` holds anything but real numbers.
        ValueError: Another shape, several columns for a model with one output, or a
            NaN or infinite target.
    """
    raw = np.asarray(y)
    if raw.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers (a regressor's targets), got {raw.dtype} values")
    arr = raw.astype(np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.ravel()
    if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] == 0):
        raise ValueError(
            f"{name} must hold one target per example (or a row of targets for a model "
            f"with several outputs), got shape {arr.shape}"
        )
    if arr.ndim == 2 and _single_target(model):
        raise ValueError(
            f"{type(model).__name__} predicts one target, but {name} has {arr.shape[1]} "
            "columns: give it one, federate one model per target, or use MLPRegressor, "
            "which predicts several"
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1))
        raise ValueError(
            f"{name} holds NaN or infinite targets in {len(rows)} examples (the first at "
            f"row {rows[0]}): drop or impute them before federating"
        )
    return arr


def _errors(model: Any, x: Any, y: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """The prediction errors on ``x, y``, one row per example, one column per output."""
    predicted = np.asarray(model.predict(x), dtype=np.float64)
    errors: npt.NDArray[np.float64] = (predicted.reshape(np.shape(y)) - y).reshape(len(y), -1)
    return errors


def evaluate_regressor(model: Any, x: Any, y: npt.ArrayLike) -> tuple[float, dict[str, float]]:
    """The mean squared error, and ``{"r2": ..., "mae": ...}``, of a regressor on ``x, y``.

    Over several outputs each is their plain mean, as scikit-learn's
    ``"uniform_average"``. R^2 of targets that do not vary is 1.0 for exact
    predictions and 0.0 otherwise, as ``r2_score``'s ``force_finite`` has it.
    """
    y_arr = np.asarray(y, dtype=np.float64)
    return _scores(y_arr, _errors(model, x, y_arr))


def regressor_scores(model: Any, x: Any, y: npt.ArrayLike) -> tuple[float, dict[str, Any]]:
    """:func:`evaluate_regressor`'s scores, with the sums that pool R^2 across clients.

    The sums (:data:`covey.strategies._metrics.R2_MOMENTS`) let the server's
    ``weighted_metrics`` report the R^2 of every client's test data pooled, not a
    mean of the clients' own; they are left out if a prediction is not finite
    (an array on the wire must be), and ``"r2"`` is then the clients' mean.
    """
    y_arr = np.asarray(y, dtype=np.float64)
    errors = _errors(model, x, y_arr)
    loss, metrics = _scores(y_arr, errors)
    moments = r2_moments(y_arr, errors)
    out: dict[str, Any] = dict(metrics)
    if np.isfinite(moments).all():
        out[R2_MOMENTS] = moments
    return loss, out


def _scores(
    y_arr: npt.NDArray[np.float64], errors: npt.NDArray[np.float64]
) -> tuple[float, dict[str, float]]:
    """The mean squared error, R^2 and MAE of ``errors`` on targets ``y_arr``."""
    squared = (errors**2).sum(axis=0)
    spread = ((y_arr.reshape(errors.shape) - y_arr.reshape(errors.shape).mean(axis=0)) ** 2).sum(
        axis=0
    )
    varies = spread > 0
    r2 = np.where(varies, 1.0 - squared / np.where(varies, spread, 1.0), 0.0)
    r2[~varies & (squared == 0)] = 1.0
    mse = float(squared.mean() / len(errors))
    mae = float(np.abs(errors).mean())
    return mse, {"r2": float(r2.mean()), "mae": mae}


def train_loss(
    model: Any, x: Any, y: npt.NDArray[Any], sample_weight: npt.NDArray[np.float64] | None
) -> float:
    """The mean squared error on the training data, weighted by ``sample_weight``."""
    errors = _errors(model, x, y)
    return float(np.average((errors**2).mean(axis=1), weights=sample_weight))

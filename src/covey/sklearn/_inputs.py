"""The inputs of :class:`covey.sklearn.SklearnClient` checked: its model's kind, labels, weights."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from covey.sklearn._params import _outputs
from covey.sklearn._regress import check_regressor

__all__ = ["check_labels", "class_labels", "model_kind", "refuse_one_pass", "sample_weights"]


def model_kind(model: Any, classes: Sequence[Any] | None) -> list[Any] | None:
    """A classifier's ``classes`` checked (a list), or None for a regressor, else refused."""
    from sklearn.base import is_classifier, is_regressor

    name = type(model).__name__
    if is_regressor(model):
        check_regressor(model, classes)
        return None
    if not is_classifier(model):
        raise TypeError(
            f"SklearnClient federates classifiers and regressors; {name} is neither "
            "(write a covey.Client with covey.sklearn.get_params/set_params for it)"
        )
    if classes is None:
        raise ValueError(
            f"{name} is a classifier: give every class label of the federation as classes="
        )
    checked = list(classes)
    _outputs(checked)  # at least two, distinct
    return checked


def refuse_one_pass(**data: object) -> None:
    """Refuse data given as an iterator (a generator): it is used up after one pass.

    ``np.asarray`` would wrap it in a 0-d object array, refused later as a shape.
    """
    for name, value in data.items():
        if isinstance(value, Iterator):
            raise TypeError(
                f"{name} is a {type(value).__name__}, an iterator that is used up after one "
                "pass, and the client trains on its data every round: give an array, a list "
                "or a DataFrame (e.g. np.asarray(list(...)))"
            )


def class_labels(y: npt.ArrayLike, name: str) -> npt.NDArray[Any]:
    """``y`` as one label per example; a column vector ``(n, 1)`` is flattened."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must hold one label per example, got shape {arr.shape} "
            "(multi-output classifiers are not supported)"
        )
    return arr


def check_labels(y: npt.NDArray[Any], classes: list[Any], name: str) -> None:
    """Refuse labels that are not among ``classes`` (the model has no output for them)."""
    known = set(classes)
    unknown = [label for label in np.unique(y).tolist() if label not in known]
    if unknown:
        raise ValueError(
            f"{name} holds labels {unknown[:10]} that are not among classes={classes}: "
            "give every class label of the federation as classes"
        )


def sample_weights(
    sample_weight: npt.ArrayLike | None, model: Any, method: str, n: int
) -> npt.NDArray[np.float64] | None:
    """``sample_weight`` checked: one finite weight >= 0 per training example, some > 0."""
    if sample_weight is None:
        return None
    import inspect

    from sklearn.base import is_regressor

    name = type(model).__name__
    if "sample_weight" not in inspect.signature(getattr(model, method)).parameters:
        some = (
            "SGDRegressor, MLPRegressor"
            if is_regressor(model)
            else "SGDClassifier, LogisticRegression, MLPClassifier"
        )
        raise TypeError(
            f"sample_weight was given, but {name}.{method} takes no sample_weight: use an "
            f"estimator that does (e.g. {some}), or leave sample_weight out"
        )
    try:
        weights = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"sample_weight must be numbers, got {type(sample_weight).__name__}"
        ) from None
    if weights.ndim == 2 and weights.shape[1] == 1:
        weights = weights.ravel()
    if weights.shape != (n,):
        raise ValueError(
            f"sample_weight must hold one weight per training example ({n}), "
            f"got shape {weights.shape}"
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("sample_weight must be finite and >= 0")
    if n and not np.any(weights > 0):
        raise ValueError("sample_weight must have at least one weight > 0")
    return weights

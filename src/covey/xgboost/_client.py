"""A ready :class:`covey.Client` that boosts the global XGBoost model on local data."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from covey.clients import Client
from covey.core import Config, EvaluateResult, FitResult
from covey.core._weights import Array, Weights, WeightsError
from covey.xgboost._model import (
    MODEL,
    booster_from_bytes,
    booster_from_weights,
    empty_booster,
    threads,
    to_weights,
    xgboost_module,
)
from covey.xgboost._validate import _scores

__all__ = ["XGBoostClient", "evaluate_booster", "initial_model"]

logger = logging.getLogger("covey")


def initial_model(
    params: dict[str, Any], num_features: int, *, capacity: int = 1 << 20
) -> dict[str, Array]:
    """The starting global model: a booster with no trees, as weights of ``capacity`` bytes.

    Args:
        params: XGBoost parameters; ``base_score`` must be set (see
            :func:`covey.xgboost.empty_booster`).
        num_features: Input features (x's columns), at least 1.
        capacity: The largest model, in bytes of XGBoost JSON, the federation
            can hold; every round's model is sent in a buffer of this size.

    Returns:
        Weights for ``covey.simulate(initial_weights=...)`` or a ``ServerApp``.
    """
    return to_weights(empty_booster(params, num_features), capacity)


def evaluate_booster(
    booster: Any, x: npt.ArrayLike, y: npt.ArrayLike, *, nthread: int | None = None
) -> tuple[float, dict[str, float]]:
    """The loss of a booster on ``x, y``, and its accuracy for classifiers.

    Binary objectives give the log loss and the accuracy at probability 0.5:
    ``binary:logistic`` predicts the probability, ``binary:logitraw`` the
    logit (taken through the sigmoid first). ``multi:softprob`` gives the
    multi-class log loss and the accuracy. Objectives that predict a class
    and no probability (``binary:hinge``, ``multi:softmax``) give the error
    rate ``1 - accuracy`` as the loss, and the accuracy. Other objectives
    give the mean squared error.

    Args:
        booster: An ``xgboost.Booster``, the weights holding one, or its serialized
            bytes (:func:`covey.xgboost.from_weights`).
        x: Features.
        y: Labels or targets.
        nthread: The threads XGBoost predicts with (None: the booster's own ``nthread``,
            XGBoost's default of every core for a booster loaded from weights or bytes).

    Returns:
        ``(loss, metrics)``.

    Raises:
        ValueError: ``x`` has other features than the booster, ``y`` another
            length than ``x``'s rows, or a classifier's labels lie outside its
            classes (whole numbers ``0..num_class - 1``; ``[0, 1]`` for binary).
    """
    xgb = xgboost_module()
    own = None if nthread is None else {"nthread": nthread}
    if isinstance(booster, Mapping):
        booster = booster_from_weights(booster, own)
    elif isinstance(booster, bytes | bytearray | memoryview):
        booster = booster_from_bytes(booster, own)
    elif not isinstance(booster, xgb.Booster):
        raise TypeError(
            f"evaluate_booster() needs an xgboost.Booster, the weights holding one or the "
            f"model's bytes (covey.xgboost.from_weights), got {type(booster).__name__}"
        )
    y_arr, x_arr = np.asarray(y), np.asarray(x)
    _check_features(booster, x_arr.shape[-1] if x_arr.ndim == 2 else -1, "x")
    _check_rows(x_arr, y_arr, "x", "y")
    if nthread is not None:
        booster.set_param({"nthread": nthread})
    else:
        nthread = _threads_of(booster)
    data = xgb.DMatrix(x_arr, nthread=nthread)
    pred = np.asarray(booster.predict(data), dtype=np.float64)
    objective = _objective(booster)
    _check_labels(y_arr, objective, _classes(booster, pred))
    eps = 1e-12
    if pred.ndim == 2:  # class probabilities
        p = np.clip(pred[np.arange(len(y_arr)), y_arr.astype(np.int64)], eps, 1.0)
        accuracy = float(np.mean(pred.argmax(axis=1) == y_arr))
        return float(-np.mean(np.log(p))), {"accuracy": accuracy}
    if objective in ("binary:hinge", "multi:softmax"):  # the predicted class, no probability
        accuracy = float(np.mean(pred == y_arr))
        return 1.0 - accuracy, {"accuracy": accuracy}
    if objective.startswith("binary:"):
        if objective == "binary:logitraw":  # a logit (margin), not a probability
            pred = 0.5 * (1.0 + np.tanh(0.5 * pred))  # the sigmoid, without overflow
        p = np.clip(pred, eps, 1.0 - eps)
        loss = -np.mean(y_arr * np.log(p) + (1.0 - y_arr) * np.log(1.0 - p))
        return float(loss), {"accuracy": float(np.mean((pred > 0.5) == (y_arr > 0.5)))}
    return float(np.mean((pred - y_arr) ** 2)), {}


def _threads_of(booster: Any) -> int | None:
    """The ``nthread`` a booster was configured with, or None for XGBoost's default (0)."""
    generic = json.loads(booster.save_config())["learner"].get("generic_param", {})
    value = str(generic.get("nthread", "0"))
    return int(value) if value.isdecimal() and int(value) > 0 else None


def _check_rows(x: npt.NDArray[Any], y: npt.NDArray[Any], x_name: str, y_name: str) -> None:
    """Refuse labels of another length than the features' rows (else a C++ or broadcast error)."""
    rows = x.shape[0] if x.ndim else 1
    labels = y.shape[0] if y.ndim else 1
    if rows != labels:
        raise ValueError(
            f"{y_name} has {labels} labels, {x_name} {rows} rows (examples): give one label "
            f"per row of {x_name}"
        )


def _classes(booster: Any, pred: npt.NDArray[Any]) -> int:
    """The booster's number of classes (0 for a model that predicts no class)."""
    if pred.ndim == 2:
        return int(pred.shape[1])
    params = json.loads(booster.save_config())["learner"]["learner_model_param"]
    return int(params.get("num_class", 0))


def _check_labels(y: npt.NDArray[Any], objective: str, classes: int) -> None:
    """Refuse classifier labels outside the classes, which would give a wrong loss or an IndexError.

    Multi-class labels must be whole numbers ``0..classes - 1``; binary labels
    lie in ``[0, 1]``.
    """
    if not objective.startswith(("multi:", "binary:")) and classes < 2:
        return
    if y.dtype.kind not in "biuf":
        raise ValueError(f"y holds {y.dtype} values, the labels of a classifier are numbers")
    if classes > 1:
        valid = np.isfinite(y) & (y >= 0) & (y < classes) & (np.mod(y, 1) == 0)
        wanted = f"whole numbers 0..{classes - 1} (one per class of the model)"
    else:
        valid = (y >= 0) & (y <= 1)
        wanted = "in [0, 1] (0 or 1 for a class)"
    if not np.all(valid):
        bad = y[~valid].ravel()[0].item()
        raise ValueError(
            f"y holds the label {bad!r}, the labels of objective {objective!r} are {wanted}: "
            "give the labels the model was trained on"
        )


def _check_features(booster: Any, columns: int, what: str) -> None:
    """Refuse data with another number of features than the booster (XGBoost gives a C++ trace)."""
    expected = int(booster.num_features())
    if columns != expected:
        raise ValueError(
            f"{what} has {columns} features (columns), the global model {expected}: every "
            "client must hold the same features, in the same order"
        )


def _check_targets(booster: Any, targets: int) -> None:
    """Refuse labels of another number of target columns than the booster's (a C++ trace)."""
    params = json.loads(booster.save_config())["learner"]["learner_model_param"]
    expected = int(params.get("num_target", 1))
    if targets != expected:
        raise ValueError(
            f"y_train has {targets} target column(s), the global model {expected}: "
            "initial_model makes a booster of one target; federate one model per target"
        )


def _check_classes(booster: Any, params: Mapping[str, Any]) -> None:
    """Refuse a global model of another number of classes than ``params`` train (a C++ trace).

    A start made for three classes boosted with a binary objective fails inside
    XGBoost on the labels' shape; checked only when the client's params name an
    objective or classes (else XGBoost keeps the model's own).
    """
    if "objective" not in params and "num_class" not in params:
        return
    learner = json.loads(booster.save_config())["learner"]
    has = int(float(learner["learner_model_param"].get("num_class", 0)))
    objective = str(params.get("objective", learner["objective"]["name"]))
    wants = int(params.get("num_class", 0)) if objective.startswith("multi:") else 0
    if max(has, 1) != max(wants, 1):
        model = f"{has} classes" if has > 1 else "no classes"
        ours = f"{wants} classes" if wants > 1 else "no classes"
        raise WeightsError(
            f"the global model has {model} (objective {learner['objective']['name']!r}), "
            f"this client's params {ours} (objective {objective!r}): start the federation "
            "from a model made with the clients' params (initial_model(params, ...))"
        )


def _base_scores(text: Any) -> Any:
    """A ``base_score``'s distinct values: one set for every class and target is one value."""
    scores = _scores(text)
    return tuple(sorted(set(scores))) if isinstance(scores, tuple) else scores


_TRAINED_WITH: dict[str, Callable[[dict[str, Any]], Any]] = {
    "objective": lambda learner: learner["objective"]["name"],
    "base_score": lambda learner: _base_scores(learner["learner_model_param"].get("base_score")),
    "booster": lambda learner: learner["gradient_booster"]["name"],
}
"""The params a client's trees must share with the global model, read from a learner's config."""


def _check_trained_with(booster: Any, params: Mapping[str, Any]) -> None:
    """Refuse, before boosting, params whose trees the server would refuse as they arrive.

    Another objective, ``base_score`` or booster than the global model's grows
    trees that do not join it: the client would train (and send its model) every
    round for nothing. Read from XGBoost's own config once ``params`` are set on
    the booster (an alias such as ``reg:linear`` is the objective it names);
    params that set none of them keep the model's.
    """
    given = {key: params[key] for key in _TRAINED_WITH if key in params}
    if not given:
        return
    model = json.loads(booster.save_config())["learner"]
    booster.set_param(given)
    ours = json.loads(booster.save_config())["learner"]
    for key, read in _TRAINED_WITH.items():
        theirs, mine = read(model), read(ours)
        if theirs != mine:
            shown = repr(theirs)
            if key == "base_score" and isinstance(theirs, tuple):
                shown = ", ".join(map("{:g}".format, theirs))
            raise WeightsError(
                f"this client's params train with {key} {params[key]!r}, the global model "
                f"with {shown}: the server refuses trees grown so; give every client the "
                f"global model's {key} (start the federation from initial_model(params, ...) "
                "with the clients' params)"
            )


def _objective(booster: Any) -> str:
    config = json.loads(booster.save_config())
    return str(config["learner"]["objective"]["name"])


class XGBoostClient(Client):
    """Grow trees on local data from the global booster: the client of bagging and cyclic training.

    ``fit`` loads the global booster, adds ``local_rounds`` boosting rounds on
    ``x_train, y_train`` and sends the whole booster back (the server keeps the
    trees it added). ``evaluate`` reports :func:`evaluate_booster` on the test data.

    The fit config's ``"local_rounds"`` wins over the client's own:
    :func:`~covey.xgboost.XGBoostBagging` and :func:`~covey.xgboost.XGBoostCyclic`
    send theirs every round, and refuse a model that adds another number of trees.

    Args:
        x_train: Local training features.
        y_train: Local labels or targets.
        params: XGBoost parameters (``objective``, ``max_depth``, ``eta``, ...).
        x_test: Local test features (None, with ``y_test`` None: evaluate on the
            training data).
        y_test: Local test labels.
        local_rounds: Boosting rounds per fit when the fit config sets none (default
            1). Given, and other than the config's, a warning says the config's wins.

    Example:
        >>> import numpy as np
        >>> from covey.xgboost import XGBoostClient, initial_model, num_trees, from_weights
        >>> x = np.random.default_rng(0).normal(size=(50, 3)); y = (x[:, 0] > 0) * 1.0
        >>> params = {"objective": "binary:logistic", "base_score": 0.5, "max_depth": 2}
        >>> client = XGBoostClient(x, y, params, local_rounds=2)
        >>> result = client.fit(initial_model(params, 3, capacity=1 << 16), {"round": 1})
        >>> num_trees(from_weights(result.weights))
        2
    """

    def __init__(
        self,
        x_train: npt.ArrayLike,
        y_train: npt.ArrayLike,
        params: dict[str, Any],
        x_test: npt.ArrayLike | None = None,
        y_test: npt.ArrayLike | None = None,
        *,
        local_rounds: int | None = None,
    ) -> None:
        xgb = xgboost_module()
        self._told_rounds = local_rounds is None  # the default is no choice to warn about
        local_rounds = 1 if local_rounds is None else local_rounds
        if isinstance(local_rounds, bool) or not isinstance(local_rounds, int) or local_rounds < 1:
            raise ValueError(f"local_rounds must be an int >= 1, got {local_rounds!r}")
        self.params = dict(params)
        labels, features = np.asarray(y_train), np.asarray(x_train)
        _check_rows(features, labels, "x_train", "y_train")
        self.targets = int(labels.shape[1]) if labels.ndim == 2 else 1
        self.nthread = threads(self.params)
        self.train = xgb.DMatrix(features, label=labels, nthread=self.nthread)
        self.num_examples = int(self.train.num_row())
        if self.num_examples == 0:
            raise ValueError("x_train holds no examples")
        if (x_test is None) != (y_test is None):
            raise ValueError(
                "x_test and y_test go together: give both, or neither to evaluate on the "
                "training data"
            )
        if x_test is None or y_test is None:
            self.x_test, self.y_test = np.asarray(x_train), np.asarray(y_train)
        else:
            self.x_test, self.y_test = np.asarray(x_test), np.asarray(y_test)
            _check_rows(self.x_test, self.y_test, "x_test", "y_test")
        self.local_rounds = local_rounds

    def fit(self, weights: Weights, config: Config) -> FitResult:
        """Boost the global model ``local_rounds`` rounds on local data.

        Args:
            weights: The global booster (see :func:`covey.xgboost.to_weights`).
            config: The round's config; its ``"local_rounds"``, if set, wins over the
                client's own.

        Returns:
            The whole booster as weights of the same capacity, and the number of
            training examples.
        """
        xgb = xgboost_module()
        rounds = config.get("local_rounds", self.local_rounds)
        if isinstance(rounds, bool) or not isinstance(rounds, int | np.integer) or rounds < 1:
            raise ValueError(f"config 'local_rounds' must be an int >= 1, got {rounds!r}")
        if rounds != self.local_rounds and not self._told_rounds:
            self._told_rounds = True  # once per client: the server's value holds every round
            logger.warning(
                "XGBoostClient: the server's local_rounds=%d wins over this client's "
                "local_rounds=%d; give the strategy local_rounds=%d to boost that many",
                rounds,
                self.local_rounds,
                self.local_rounds,
            )
        start = booster_from_weights(weights, self.params)
        _check_features(start, int(self.train.num_col()), "x_train")
        _check_targets(start, self.targets)
        _check_classes(start, self.params)
        _check_trained_with(start, self.params)
        booster = xgb.train(self.params, self.train, num_boost_round=int(rounds), xgb_model=start)
        model = to_weights(booster.save_raw("json"), int(np.asarray(weights[MODEL]).size))
        return FitResult(weights=model, num_examples=self.num_examples)

    def evaluate(self, weights: Weights, config: Config) -> EvaluateResult:
        """The loss (and accuracy) of the global booster on the local test data.

        Args:
            weights: The global booster.
            config: The round's config (unused).

        Returns:
            The loss, the number of examples and the metrics of :func:`evaluate_booster`.
        """
        booster = booster_from_weights(weights, self.params)
        loss, metrics = evaluate_booster(booster, self.x_test, self.y_test, nthread=self.nthread)
        return EvaluateResult(loss=loss, num_examples=len(self.y_test), metrics=metrics)

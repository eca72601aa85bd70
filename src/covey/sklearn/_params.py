"""Get, set and initialize the parameters of scikit-learn linear models and MLPs as Weights."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from covey.core._weights import Array, Weights, WeightsError
from covey.sklearn._support import check_kind, check_options, trains_by_fit

__all__ = ["get_params", "initial_params", "is_mlp", "prime", "set_params"]


def is_mlp(model: Any) -> bool:
    """Whether ``model`` is a multi-layer perceptron (``coefs_`` and ``intercepts_`` lists).

    Told by its ``hidden_layer_sizes`` (``MLPClassifier``, ``MLPRegressor``), which
    an unfitted model has too.

    Args:
        model: A scikit-learn estimator, fitted or not.
    """
    return hasattr(model, "hidden_layer_sizes")


def _layers(model: Any) -> list[int]:
    sizes = model.hidden_layer_sizes
    return [int(s) for s in (sizes if hasattr(sizes, "__iter__") else [sizes])]


def _outputs(classes: Sequence[Any]) -> int:
    """The outputs of a classifier over ``classes``: 1 for two, else one per class."""
    if len(classes) < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {list(classes)}")
    if len(np.unique(np.asarray(classes))) != len(classes):
        raise ValueError(f"classes must be distinct, got {list(classes)}")
    return 1 if len(classes) == 2 else len(classes)


def features(x: Any) -> Any:
    """``x`` as an array of features, keeping a SciPy sparse matrix sparse.

    ``np.asarray`` would wrap a sparse matrix in a 0-d object array, which
    scikit-learn refuses.
    """
    import scipy.sparse

    if scipy.sparse.issparse(x):
        return x
    return np.asarray(x)


def get_params(model: Any, *, copy: bool = True) -> dict[str, Array]:
    """The learned parameters of a fitted model as named arrays.

    Linear models (``SGDClassifier``, ``LogisticRegression``, ``Perceptron``, ...)
    give ``{"coef": coef_, "intercept": intercept_}``; an ``MLPClassifier`` gives
    ``{"coefs.0": ..., "intercepts.0": ..., "coefs.1": ...}``, one pair per layer.

    Args:
        model: A fitted estimator.
        copy: Return arrays the model does not share (it may change its own in
            place when it trains on), in C order, as a file writer wants them;
            ``False`` returns the model's arrays.

    Returns:
        Named ``float`` arrays.

    Raises:
        TypeError: ``model`` is neither a linear model nor an MLP.
        ValueError: ``model`` is not fitted (or primed) yet.

    Example:
        >>> from sklearn.linear_model import SGDClassifier
        >>> from covey.sklearn import get_params
        >>> model = SGDClassifier().fit([[0.0, 1.0], [1.0, 0.0]], [0, 1])
        >>> {k: v.shape for k, v in get_params(model).items()}
        {'coef': (1, 2), 'intercept': (1,)}
    """
    check_kind(model)
    if is_mlp(model):
        if not hasattr(model, "coefs_"):
            raise ValueError(
                f"{type(model).__name__} is not fitted yet: give it the federation's shape "
                "with covey.sklearn.prime(model, x, y, classes) (or fit it) first"
            )
        out = {f"coefs.{i}": c for i, c in enumerate(model.coefs_)}
        out.update({f"intercepts.{i}": b for i, b in enumerate(model.intercepts_)})
    else:
        if not hasattr(model, "coef_"):
            raise ValueError(
                f"{type(model).__name__} is not fitted yet: give it the federation's shape "
                "with covey.sklearn.prime(model, x, y, classes) (or fit it) first"
            )
        out = {"coef": model.coef_, "intercept": np.atleast_1d(model.intercept_)}
    # C order: scikit-learn keeps some coef_ in Fortran order, which a safetensors
    # writer (safetensors.numpy.save_file) would store transposed, silently.
    return {k: np.array(v, copy=True, order="C") if copy else np.asarray(v) for k, v in out.items()}


def set_params(model: Any, weights: Weights) -> None:
    """Copy ``weights`` into a model's parameters (the model must be fitted or primed).

    The arrays are copied (the weights a client receives are read-only and
    scikit-learn updates its parameters in place), in the model's own float
    dtypes (float32 for an SGD model trained on float32 features).

    Args:
        model: The estimator, with parameters of the same names and shapes.
        weights: Named arrays as :func:`get_params` gives them.

    Raises:
        WeightsError: A name is missing or unexpected, a shape differs, or an
            array is complex; the model is then left unchanged.
    """
    current = get_params(model, copy=False)
    missing = [n for n in current if n not in weights]
    extra = [str(n) for n in weights if n not in current]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + (
            [f"unexpected {extra}"] if extra else []
        )
        raise WeightsError(f"weights do not match {type(model).__name__}: {'; '.join(parts)}")
    for name, value in current.items():
        if np.shape(weights[name]) != value.shape:
            raise WeightsError(
                f"weight {name!r} has shape {np.shape(weights[name])}, "
                f"{type(model).__name__}'s is {value.shape}"
            )
        if np.asarray(weights[name]).dtype.kind == "c":
            raise WeightsError(
                f"weight {name!r} is complex, {type(model).__name__}'s is {value.dtype}: "
                "copying it would drop the imaginary part"
            )
    # in the model's own float dtype: SGD trained on float32 features refuses float64
    new = {
        k: np.array(weights[k], dtype=v.dtype if v.dtype.kind == "f" else np.float64, copy=True)
        for k, v in current.items()
    }
    if is_mlp(model):
        model.coefs_ = [new[f"coefs.{i}"] for i in range(len(model.coefs_))]
        model.intercepts_ = [new[f"intercepts.{i}"] for i in range(len(model.intercepts_))]
    else:
        model.coef_ = new["coef"]
        # a single-target regressor fitted by scikit-learn holds a scalar intercept
        # (HuberRegressor and the generalized linear models break on a 1-element array)
        scalar = np.ndim(model.intercept_) == 0
        model.intercept_ = new["intercept"][0] if scalar else new["intercept"]
        if getattr(model, "_standard_coef", None) is not None:
            # SGD with average=True trains on from its own (unaveraged) iterate and
            # running average, not from coef_: both start from the weights set.
            model._standard_coef = new["coef"].copy()
            model._standard_intercept = new["intercept"].copy()
            model._average_coef = new["coef"].copy()
            model._average_intercept = new["intercept"].copy()


def initial_params(
    model: Any,
    num_features: int,
    classes: Sequence[Any] | None = None,
    *,
    targets: int = 1,
    seed: int = 0,
) -> dict[str, Array]:
    """Starting global parameters for ``model``, without any data.

    Linear models start at zero. An MLP starts from scikit-learn's own scheme
    (Glorot uniform, weights and biases alike, with bound
    ``sqrt(6 / (fan_in + fan_out))``, or ``sqrt(2 / (fan_in + fan_out))`` for the
    logistic activation), drawn from ``seed``.

    Args:
        model: The (unfitted) estimator, for its architecture.
        num_features: Input features.
        classes: Every class label of the federation (classifiers only).
        targets: Target columns of a regressor (``SGDRegressor``, ``Ridge``,
            ``MLPRegressor``): with 1 a linear regressor's ``coef`` has shape
            ``(num_features,)``, as scikit-learn gives it.
        seed: Seeds the MLP's initialization.

    Returns:
        Named arrays with the shapes :func:`get_params` gives after fitting.

    Raises:
        TypeError: ``model`` is neither a linear model nor an MLP, or
            ``num_features`` is not an int.
        ValueError: ``num_features`` below 1, a classifier without ``classes``, a
            regressor with them, ``targets`` below 1 or above 1 for a single-target regressor
            (``SGDRegressor``, ``HuberRegressor``), or an option the model cannot train federated
            with (``early_stopping=True``, ``class_weight="balanced"`` with
            ``partial_fit``, ``solver="liblinear"``).

    References:
        Glorot and Bengio, "Understanding the difficulty of training deep
        feedforward neural networks", AISTATS 2010.
    """
    from sklearn.base import is_regressor

    check_kind(model)
    check_options(model)
    regressor = is_regressor(model)
    if isinstance(num_features, bool) or not isinstance(num_features, int | np.integer):
        raise TypeError(
            f"initial_params(): num_features must be an int (the input features, x's columns), "
            f"got {type(num_features).__name__} {num_features!r}"
        )
    if num_features < 1:
        raise ValueError(f"initial_params(): num_features must be at least 1, got {num_features}")
    num_features = int(num_features)
    if isinstance(targets, bool) or not isinstance(targets, int) or targets < 1:
        raise ValueError(f"targets must be an int >= 1, got {targets!r}")
    if regressor and classes is not None:
        raise ValueError(
            f"{type(model).__name__} is a regressor: give its number of target columns "
            "as targets=, not classes"
        )
    if regressor:
        _check_targets(model, targets)
        outputs = targets
    elif classes is None:
        raise ValueError(f"{type(model).__name__} is a classifier: give every class as classes=")
    else:
        outputs = _outputs(classes)
    if not is_mlp(model):
        if regressor and outputs == 1:
            return {"coef": np.zeros(num_features), "intercept": np.zeros(1)}
        return {
            "coef": np.zeros((outputs, num_features)),
            "intercept": np.zeros(outputs),
        }
    rng = np.random.default_rng(seed)
    units = [num_features, *_layers(model), outputs]
    factor = 2.0 if model.activation == "logistic" else 6.0
    out: dict[str, Array] = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(units)):
        bound = float(np.sqrt(factor / (fan_in + fan_out)))
        out[f"coefs.{i}"] = rng.uniform(-bound, bound, (fan_in, fan_out))
        out[f"intercepts.{i}"] = rng.uniform(-bound, bound, fan_out)
    return {
        **{k: v for k, v in out.items() if k.startswith("coefs")},
        **{k: v for k, v in out.items() if k.startswith("intercepts")},
    }


def prime(
    model: Any, x: npt.ArrayLike, y: npt.ArrayLike, classes: Sequence[Any] | None = None
) -> None:
    """Give an unfitted model its structure (classes, layers) so parameters can be set.

    Models with ``partial_fit`` take one pass over ``x, y``, with every class
    named (an MLP with ``solver="lbfgs"``, classifier or regressor, takes the
    layers of a copy with ``solver="sgd"`` that does: one pass, not an L-BFGS fit);
    other classifiers (``LogisticRegression``) get ``coef_`` and ``intercept_``
    of zeros and their ``classes_``, and other regressors (``LinearRegression``,
    ``Ridge``, ``HuberRegressor``, ``PoissonRegressor``) one ``fit`` on ``x, y``.
    Either way :func:`set_params` then overwrites what was learned. A model
    already fitted is left alone.

    Args:
        model: The estimator.
        x: Local features (only their shape matters for the result).
        y: Local labels, or a regressor's targets (one column, or one per target).
        classes: Every class label of the federation, so that a client that
            lacks some of them still has the global model's shape; None for a
            regressor.

    Raises:
        TypeError: ``model`` is neither a linear model nor an MLP.
        ValueError: A classifier without ``classes``, a regressor with them or
            with several target columns it cannot predict, or an option the
            model cannot train federated with, named with what to use instead
            (``early_stopping=True`` or ``class_weight="balanced"`` with
            ``partial_fit``, ``LogisticRegression(solver="liblinear")``).
    """
    from sklearn.base import is_regressor

    check_kind(model)
    fitted = hasattr(model, "coefs_") if is_mlp(model) else hasattr(model, "coef_")
    if fitted:
        return
    check_options(model)
    x_arr = features(x)
    if is_regressor(model):
        if classes is not None:
            raise ValueError(
                f"{type(model).__name__} is a regressor: prime it without classes (classes=None)"
            )
        _prime_regressor(model, x_arr, np.asarray(y))
        return
    if classes is None:
        raise ValueError(f"{type(model).__name__} is a classifier: give every class as classes=")
    if is_mlp(model) and trains_by_fit(model):
        _prime_mlp(model, x_arr, np.asarray(y), classes)
        return
    if hasattr(model, "partial_fit"):
        model.partial_fit(x_arr, np.asarray(y), classes=np.asarray(classes))
        return
    outputs = _outputs(classes)
    model.classes_ = np.unique(np.asarray(classes))  # sorted, as scikit-learn's own fit sets it
    model.coef_ = np.zeros((outputs, x_arr.shape[1]))
    model.intercept_ = np.zeros(outputs)
    model.n_features_in_ = x_arr.shape[1]
    if not set(np.unique(np.asarray(y)).tolist()) <= set(model.classes_.tolist()):
        raise WeightsError("local labels include classes outside `classes`")


def _single_target(model: Any) -> bool:
    """Whether ``model`` predicts one target column only (``SGDRegressor``, ``HuberRegressor``)."""
    if is_mlp(model):  # an MLP fits any number of targets, whatever its tags say
        return False
    tags = getattr(model, "__sklearn_tags__", None)
    return tags is not None and not tags().target_tags.multi_output


def _check_targets(model: Any, targets: int) -> None:
    if targets > 1 and _single_target(model):
        raise ValueError(
            f"{type(model).__name__} predicts one target, got {targets} target columns: "
            "federate one model per target, or use MLPRegressor, which predicts several "
            "and SklearnClient federates (Ridge, LinearRegression, Lasso and ElasticNet "
            "predict several too, but refit from scratch: only a covey.Client of your own "
            "federates them, with get_params/set_params)"
        )


def _prime_regressor(model: Any, x: Any, y: npt.NDArray[Any]) -> None:
    """A regressor's structure: one ``partial_fit`` pass, or one ``fit`` on the local data.

    A fit, not zeros in the fitted shapes: some regressors need more fitted state
    than ``coef_`` and ``intercept_`` to predict or to warm-start (a generalized
    linear model's loss, ``HuberRegressor``'s ``scale_``).
    """
    if y.ndim == 2 and y.shape[1] == 1:  # one target: coef (features,), as initial_params
        y = y.ravel()
    _check_targets(model, 1 if y.ndim == 1 else y.shape[1])
    from sklearn.exceptions import ConvergenceWarning

    from covey.clients._quiet import ignoring

    with ignoring(ConvergenceWarning):  # what it learns is overwritten by set_params
        if is_mlp(model) and trains_by_fit(model):
            # MLPRegressor has a partial_fit whatever its solver, which for lbfgs would run
            # a whole fit of up to max_iter iterations: a one-pass twin gives the layers
            _prime_mlp(model, x, y, None)
        elif hasattr(model, "partial_fit"):
            model.partial_fit(x, y)
        else:
            model.fit(x, y)


def _prime_mlp(model: Any, x: Any, y: npt.NDArray[Any], classes: Sequence[Any] | None) -> None:
    """An MLP with ``solver="lbfgs"`` (trained by ``fit``): its layers, from a twin.

    A copy of the model with ``solver="sgd"`` takes one ``partial_fit`` pass (a
    classifier's with every class named), and the model takes that copy's fitted state
    (layers, classes, output activation), so that a warm-started ``fit`` trains on
    from the parameters set.
    """
    from sklearn.base import clone

    # warm_start off: with it, a first partial_fit would refuse local labels lacking a class
    # early_stopping off: partial_fit refuses it (and lbfgs, which never stops early, ignores it)
    twin = clone(model).set_params(solver="sgd", warm_start=False, early_stopping=False)
    named = {} if classes is None else {"classes": np.asarray(classes)}
    twin.partial_fit(x, y, **named)
    hyperparameters = model.get_params(deep=False)
    for name, value in vars(twin).items():
        if name not in hyperparameters:
            setattr(model, name, value)

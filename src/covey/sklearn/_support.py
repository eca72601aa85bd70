"""Which scikit-learn estimators, and which of their options, covey.sklearn can federate.

covey.sklearn moves the parameters of linear models (``coef_``, ``intercept_``)
and MLPs (``coefs_``, ``intercepts_``), and trains them from the global
parameters each round: ``partial_fit`` passes where the estimator has it, else
a warm-started ``fit``. An estimator of another kind (trees, naive Bayes,
clustering) has no such parameters, and some options cannot work that way
(``early_stopping``, ``class_weight="balanced"`` with ``partial_fit``, the
``liblinear`` solver that ignores ``warm_start``): scikit-learn either raises
deep inside every client's training, every round, or silently trains from
scratch. They are refused here, up front, naming the option and what to use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_epochs", "check_kind", "check_options", "trains_by_fit"]


def _linear(model: Any) -> bool:
    """Whether ``model`` is a linear model whose parameters are ``coef_`` and ``intercept_``."""
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel

    if isinstance(model, LinearClassifierMixin | LinearModel):
        return True
    cls = type(model)
    # SGDRegressor and the generalized linear regressors (PoissonRegressor, ...) share
    # no public base class; RANSACRegressor wraps another estimator and has no coef_
    return cls.__module__.startswith("sklearn.linear_model.") and cls.__name__ != (
        "RANSACRegressor"
    )


def trains_by_fit(model: Any) -> bool:
    """Whether ``model`` trains each round with one warm-started ``fit``, not ``partial_fit``.

    So do the models without ``partial_fit`` (``LogisticRegression``, whose solvers
    each run up to ``max_iter`` iterations over all the local data) and an MLP with
    ``solver="lbfgs"``: scikit-learn offers an MLP's ``partial_fit`` for its
    stochastic solvers only (``MLPRegressor`` has one whatever its solver, which
    would run a whole L-BFGS fit per call, and is not relied on).
    """
    if not hasattr(model, "partial_fit"):
        return True
    return hasattr(model, "hidden_layer_sizes") and model.get_params(deep=False).get(
        "solver"
    ) not in ("sgd", "adam")


def check_epochs(model: Any, epochs: Any, where: str) -> None:
    """Refuse ``epochs`` other than 1 for a model that trains by ``fit`` (:func:`trains_by_fit`).

    Its round is one ``fit`` of up to ``max_iter`` iterations, each over all the local
    data: there are no passes to count, and a second fit from where the first
    stopped would only run ``max_iter`` more iterations under another name.

    Raises:
        ValueError: naming ``max_iter`` as what bounds the local work instead.
    """
    if epochs == 1 or not trains_by_fit(model):
        return
    options = model.get_params(deep=False)
    solver = f"solver={options['solver']!r}" if "solver" in options else "no partial_fit"
    limit = f"max_iter={options['max_iter']}" if "max_iter" in options else "its own fit"
    raise ValueError(
        f"{where} is {epochs!r}, but {type(model).__name__} ({solver}) trains each round "
        f"with one fit warm-started from the global parameters, of up to {limit} "
        "iterations over all the local data: bound a round's local work with max_iter and "
        "leave epochs at 1 (or use a model trained with partial_fit passes, e.g. "
        "SGDClassifier, SGDRegressor, or an MLP with solver='adam' or 'sgd')"
    )


def check_kind(model: Any) -> None:
    """Refuse an estimator whose parameters are not those of a linear model or an MLP.

    A fitted estimator with ``coef_`` (or an MLP's ``coefs_``) passes, whatever
    its class.

    Raises:
        TypeError: ``model`` is, e.g., a tree ensemble, naive Bayes or a clustering,
            or a class rather than an estimator (``SGDClassifier`` for ``SGDClassifier()``).
    """
    if isinstance(model, type):
        raise TypeError(
            f"model is the class {model.__name__}: give an estimator, {model.__name__}() "
            "(with its options, e.g. SGDClassifier(loss='log_loss'))"
        )
    if hasattr(model, "hidden_layer_sizes") or hasattr(model, "coef_") or _linear(model):
        return
    hint = (
        ": federate its final estimator, and transform each client's data with the "
        "steps before it (fitted with the same settings everywhere)"
        if hasattr(model, "steps")
        else ", so its fitted state cannot be averaged across clients"
    )
    raise TypeError(
        f"covey.sklearn federates the parameters of linear models (coef_ and intercept_: "
        f"SGDClassifier, LogisticRegression, Perceptron, SGDRegressor, Ridge, ...) and "
        f"MLPs (MLPClassifier, MLPRegressor); {type(model).__name__} has neither{hint}"
    )


def check_options(model: Any) -> None:
    """Refuse options with which ``model`` cannot train on from the global parameters.

    Raises:
        ValueError: ``early_stopping=True`` or ``class_weight="balanced"`` on a
            model trained with ``partial_fit``, or ``LogisticRegression`` with
            ``solver="liblinear"``.
    """
    name = type(model).__name__
    options = model.get_params(deep=False)
    incremental = not trains_by_fit(model)  # an MLP trains by partial_fit with "sgd" and "adam"
    if incremental and options.get("early_stopping"):
        raise ValueError(
            f"{name}(early_stopping=True) cannot train federated: clients train with "
            "partial_fit, which scikit-learn refuses with early_stopping (it holds out "
            "no validation split): set early_stopping=False, and bound the training with "
            "the rounds of the run and the clients' epochs instead"
        )
    if incremental and isinstance(options.get("class_weight"), str):
        raise ValueError(
            f"{name}(class_weight={options['class_weight']!r}) cannot train federated: "
            "clients train with partial_fit, which scikit-learn refuses with class weights "
            "computed from the training labels: give the weights as a dict {class: weight} "
            "(e.g. sklearn.utils.class_weight.compute_class_weight('balanced', classes=..., "
            "y=...) over the federation's label counts), or pass sample_weight to each client"
        )
    if not incremental and options.get("solver") == "liblinear":
        raise ValueError(
            f"{name}(solver='liblinear') cannot train federated: liblinear ignores "
            "warm_start, so every client would train from scratch each round and drop the "
            "global parameters: use another solver, e.g. 'lbfgs' (the default), "
            "'newton-cholesky' or 'saga'"
        )

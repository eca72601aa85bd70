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

__all__ = ["check_kind", "check_options"]


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


def check_kind(model: Any) -> None:
    """Refuse an estimator whose parameters are not those of a linear model or an MLP.

    A fitted estimator with ``coef_`` (or an MLP's ``coefs_``) passes, whatever
    its class.

    Raises:
        TypeError: ``model`` is, e.g., a tree ensemble, naive Bayes or a clustering.
    """
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
    incremental = hasattr(model, "partial_fit")  # an MLP has it for solver "sgd" and "adam"
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

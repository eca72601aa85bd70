"""A round's learning rate (the fit config's ``"lr"``) set into a scikit-learn estimator.

SGD-trained linear models (``SGDClassifier``, ``Perceptron``, ``SGDRegressor``)
step by ``eta0`` under the ``"constant"``, ``"invscaling"`` and ``"adaptive"``
schedules, and read it at every ``partial_fit``. An MLP (``solver="sgd"`` or
``"adam"``) reads ``learning_rate_init`` only when it builds its optimiser, at its
first ``partial_fit``; later passes go on with that optimiser (its momentum or
Adam's moments), so the rate is set there too. Estimators without such a rate
(``LogisticRegression``, ``SGDClassifier(learning_rate="optimal")``, whose rate
comes from ``alpha``, the passive-aggressive step bound ``eta0`` of ``"pa1"`` and
``"pa2"``, an MLP with ``solver="lbfgs"``) cannot take one: :func:`rate_name`
says why, and :func:`set_rate` refuses them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from covey.sklearn._params import is_mlp

__all__ = ["checked_rate", "rate_name", "set_rate"]


def rate_name(model: Any) -> tuple[str | None, str]:
    """The option of ``model`` that is its learning rate and ``""``; else None and why not."""
    options = model.get_params(deep=False)
    name = type(model).__name__
    if is_mlp(model):
        solver = options.get("solver")
        if solver in ("sgd", "adam"):
            return "learning_rate_init", ""
        return None, (
            f"{name}(solver={solver!r}) takes no learning rate: use solver='sgd' or 'adam'"
        )
    if "eta0" in options:
        schedule = options.get("learning_rate", "constant")  # Perceptron: always constant
        if schedule in ("constant", "invscaling", "adaptive"):
            return "eta0", ""
        return None, (
            f"{name}(learning_rate={schedule!r}) does not step by eta0 (its rate comes from "
            "alpha under 'optimal'; eta0 bounds a passive-aggressive step under 'pa1' and "
            "'pa2'): use learning_rate='constant', 'invscaling' or 'adaptive'"
        )
    return None, (
        f"{name} has no learning rate to set: use an estimator trained by SGD "
        "(SGDClassifier or SGDRegressor with learning_rate='constant', an MLPClassifier or "
        "MLPRegressor with solver='sgd' or 'adam')"
    )


def checked_rate(lr: Any) -> float:
    """``lr`` as a float, if it is a finite number > 0."""
    if (
        isinstance(lr, bool)
        or not isinstance(lr, int | float | np.integer | np.floating)
        or not (np.isfinite(lr) and lr > 0)
    ):
        raise ValueError(f"config 'lr' must be a finite number > 0, got {lr!r}")
    return float(lr)


def set_rate(model: Any, option: str, lr: Any) -> None:
    """Set ``lr`` as ``model``'s ``option`` (from :func:`rate_name`), its MLP optimiser's too."""
    setattr(model, option, lr)
    optimizer = getattr(model, "_optimizer", None)  # an MLP's, built by its first pass
    if optimizer is None or option != "learning_rate_init":
        return
    before = float(optimizer.learning_rate_init)
    optimizer.learning_rate_init = lr  # Adam derives each step's rate from it
    schedule = getattr(optimizer, "lr_schedule", None)  # SGD's rate is kept
    if schedule == "constant":
        optimizer.learning_rate = lr
    elif schedule == "invscaling":  # as SGDOptimizer.iteration_ends(t_) computes it
        optimizer.learning_rate = lr / (model.t_ + 1) ** optimizer.power_t
    elif schedule == "adaptive":  # the divisions by 5 so far are kept
        optimizer.learning_rate = optimizer.learning_rate * (lr / before)

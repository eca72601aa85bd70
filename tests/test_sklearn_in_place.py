"""A scikit-learn estimator trained on the read-only weights it was lent, as Flower's examples do.

Flower hands each client a fresh copy, so ``model.coef_ = parameters[0]`` works
there; scikit-learn's SGD estimators then train ``coef_`` in place, through
compiled code that ignores NumPy's read-only flag. covey's error must say so,
and how to copy.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import warnings
from typing import Any

import numpy as np
import pytest

import covey
from covey import EvaluateResult, FitResult

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import SGDClassifier  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 4))
Y = (X[:, 0] > 0).astype(int)


class Uncopied(covey.Client):
    """Sets coef_ to the lent arrays themselves, then trains with partial_fit."""

    def __init__(self, cid: int, copy: bool = False) -> None:
        self.copy = copy
        self.x, self.y = X[cid::2], Y[cid::2]
        self.model = SGDClassifier(loss="log_loss", random_state=0)
        self.model.partial_fit(self.x[:2], self.y[:2], classes=[0, 1])

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        coef, intercept = weights["coef"], weights["intercept"]
        if self.copy:
            coef, intercept = coef.copy(), intercept.copy()
        elif multiprocessing.parent_process() is not None:  # a worker, which dies of it:
            faulthandler.disable()  # without the interpreter's crash report on stderr
        self.model.coef_, self.model.intercept_ = coef, intercept
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.partial_fit(self.x, self.y)
        new = {"coef": self.model.coef_, "intercept": self.model.intercept_}
        return FitResult(weights=new, num_examples=len(self.y))

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=0.0, num_examples=1)


def _initial() -> dict[str, np.ndarray]:
    return {"coef": np.zeros((1, 4)), "intercept": np.zeros(1)}


def _strategy() -> covey.Strategy:
    return covey.FedAvg(fraction_evaluate=0.0, accept_failures=False)


def test_inline_an_sgd_estimator_training_the_lent_coef_is_told_to_copy_it() -> None:
    with pytest.raises(RuntimeError, match="changed in place") as info:
        covey.simulate(Uncopied, 2, 1, _strategy(), _initial())
    said = str(info.value)
    assert "scikit-learn's SGD estimators" in said
    assert "model.coef_ = weights['coef'].copy()" in said


@pytest.mark.slow
def test_process_an_sgd_estimator_training_the_lent_coef_is_told_to_copy_it() -> None:
    with pytest.raises(covey.FederationError) as info:
        covey.simulate(Uncopied, 2, 1, _strategy(), _initial(), backend="process", num_workers=1)
    errors = [f.error for r in info.value.history.rounds for f in r.fit_failures]
    assert errors
    for error in errors:
        assert "scikit-learn's SGD estimators" in error, error
        assert "model.coef_ = weights['coef'].copy()" in error, error


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_an_sgd_estimator_given_copies_trains(backend: Any) -> None:
    result = covey.simulate(
        lambda cid: Uncopied(cid, copy=True), 2, 1, _strategy(), _initial(), backend=backend
    )
    assert np.abs(result.weights["coef"]).sum() > 0

"""The starting-weight helpers name an argument of the wrong type instead of NumPy's bare error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from covey.models import logistic_init


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("64", 10), r"num_features must be an int .*got str '64': use int\(\.\.\.\)"),
        ((64.0, 10), r"num_features must be an int .*got float 64\.0"),
        ((True, 10), r"num_features must be an int .*got bool True"),
        ((64, "10"), r"num_classes must be an int .*got str '10'"),
        ((64, 10, "float65"), r"dtype must be a floating-point dtype, got 'float65'"),
        ((64, 10, np.int32), r"dtype must be a floating-point dtype"),
    ],
)
def test_logistic_init_names_an_argument_of_the_wrong_type(
    args: tuple[Any, ...], match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        logistic_init(*args)


@pytest.mark.parametrize(("args", "name"), [((0, 10), "num_features"), ((4, -1), "num_classes")])
def test_logistic_init_refuses_sizes_below_one(args: tuple[int, int], name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be at least 1"):
        logistic_init(*args)


def test_logistic_init_takes_numpy_integers_and_float_dtypes() -> None:
    features: Any = np.int64(3)
    classes: Any = np.int32(2)
    weights = logistic_init(features, classes, dtype="float32")
    assert weights["W"].shape == (3, 2)
    assert weights["W"].dtype == np.float32
    assert weights["b"].shape == (2,)


@pytest.mark.parametrize("bad", ["64", 64.0, True])
def test_sklearn_initial_params_names_a_num_features_of_the_wrong_type(bad: Any) -> None:
    pytest.importorskip("sklearn")
    from sklearn.linear_model import SGDClassifier

    from covey.sklearn import initial_params

    with pytest.raises(TypeError, match=r"num_features must be an int"):
        initial_params(SGDClassifier(), bad, classes=[0, 1])
    four: Any = np.int64(4)
    assert initial_params(SGDClassifier(), four, classes=[0, 1])["coef"].shape == (1, 4)

"""The ready clients take a local test split whole: features and labels, or neither."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import SGDClassifier

from covey.models import LogisticClient
from covey.sklearn import SklearnClient


def _data() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(12, 3))
    return x, np.arange(12) % 2


def test_sklearn_client_refuses_half_a_test_split() -> None:
    # x_test alone (or y_test alone) silently evaluated on the training data
    x, y = _data()
    with pytest.raises(ValueError, match="x_test and y_test go together"):
        SklearnClient(SGDClassifier(), x, y, classes=[0, 1], x_test=x[:4])
    with pytest.raises(ValueError, match="x_test and y_test go together"):
        SklearnClient(SGDClassifier(), x, y, classes=[0, 1], y_test=y[:4])
    with pytest.raises(ValueError, match="x_test and y_test need the same length, got 4 and 5"):
        SklearnClient(SGDClassifier(), x, y, [0, 1], x[:4], y[:5])
    client = SklearnClient(SGDClassifier(), x, y, [0, 1], x[:4], y[:4])
    assert len(client.y_test) == 4


def test_logistic_client_refuses_half_a_validation_split() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="x_val and y_val go together"):
        LogisticClient(0, x, y, x_val=x[:4])
    with pytest.raises(ValueError, match="x_val and y_val go together"):
        LogisticClient(0, x, y, y_val=y[:4])


def test_xgboost_client_refuses_half_a_test_split() -> None:
    pytest.importorskip("xgboost")
    from covey.xgboost import XGBoostClient

    x, y = _data()
    params = {"objective": "binary:logistic", "base_score": 0.5, "nthread": 1}
    with pytest.raises(ValueError, match="x_test and y_test go together"):
        XGBoostClient(x, y.astype(float), params, x_test=x[:4])


def test_logistic_client_refuses_features_and_labels_of_different_lengths() -> None:
    # It trained on the rows that had a label, then failed in evaluate with NumPy's
    # "operands could not be broadcast together with shapes (12,) (11,)".
    x, y = _data()
    with pytest.raises(ValueError, match=r"x and y need the same length .*got 12 and 11"):
        LogisticClient(0, x, y[:11])
    with pytest.raises(ValueError, match=r"x_val and y_val need the same length .*got 4 and 5"):
        LogisticClient(0, x, y, x[:4], y[:5])
    assert len(LogisticClient(0, x, y, x[:4], y[:4]).y_val) == 4

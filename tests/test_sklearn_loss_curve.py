"""An MLP's loss_curve_ keeps the last round's losses: the model and its state stay one size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.neural_network import MLPClassifier

import covey
from covey.sklearn import SklearnClient, initial_params


def test_the_loss_curve_and_the_state_file_stay_one_size(tmp_path: Path) -> None:
    # Before: one more loss a pass for ever, each written to the state file every round.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    y = (x[:, 0] > 0).astype(int)
    path = tmp_path / "state.covey"
    make = lambda: MLPClassifier((4,), learning_rate_init=0.01, random_state=0)  # noqa: E731
    client = SklearnClient(make(), x, y, classes=[0, 1], epochs=3, state_path=path)
    weights: covey.Weights = initial_params(make(), 4, [0, 1])
    sizes = []
    for rnd in range(1, 41):
        fitted = client.fit(weights, {"round": rnd}).weights
        assert fitted is not None
        weights = fitted
        sizes.append(path.stat().st_size)
        assert len(client.model.loss_curve_) == 3
    assert sizes[-1] == sizes[5]
    # a client built again on the file trains on from it, with the same short curve
    again = SklearnClient(make(), x, y, classes=[0, 1], epochs=3, state_path=path)
    assert again.fit(weights, {"round": 41}).num_examples == 40
    assert len(again.model.loss_curve_) == 3

"""covey.xgboost: one client's unmergeable trees fail that client alone; user mistakes named."""

from __future__ import annotations

import numpy as np
import pytest

import covey

xgb = pytest.importorskip("xgboost")

from covey.xgboost import (  # noqa: E402
    XGBoostBagging,
    XGBoostClient,
    XGBoostCyclic,
    evaluate_booster,
    from_weights,
    initial_model,
    num_trees,
)

BINARY = {"objective": "binary:logistic", "base_score": 0.5, "max_depth": 2, "nthread": 1}


def _data(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    return x, (x[:, 0] > 0).astype(float)


def _federation(
    strategy: covey.Strategy, clients: int, *, bad_cid: int, bad: dict[str, object]
) -> covey.sim.SimulationResult:
    """Two inline rounds of ``clients`` XGBoost clients, ``bad_cid`` trained with ``bad``."""

    def client(cid: int) -> XGBoostClient:
        return XGBoostClient(*_data(cid), {**BINARY, **bad} if cid == bad_cid else BINARY)

    return covey.simulate(
        client,
        num_clients=clients,
        rounds=2,
        strategy=strategy,
        initial_weights=initial_model(BINARY, 4, capacity=1 << 16),
        backend="inline",
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"objective": "binary:logitraw"}, "trained for objective 'binary:logitraw'"),
        ({"booster": "dart"}, "booster 'dart' is not supported by XGBoostBagging"),
        ({"eta": float("inf")}, "holds inf or NaN"),
    ],
    ids=["objective", "dart", "eta-inf"],
)
def test_a_client_whose_trees_cannot_be_merged_fails_alone(
    bad: dict[str, object], message: str
) -> None:
    # Before, the merge refused the whole round: no round was aggregated, 0 trees.
    result = _federation(XGBoostBagging(fraction_evaluate=0.0), 3, bad_cid=1, bad=bad)
    for record in result.history.rounds[1:]:
        assert record.fit_participants == [0, 2]
        assert "error" not in record.aggregate_info
        [failure] = record.fit_failures
        assert failure.cid == 1
        assert message in failure.error
        assert "FedAvg" not in failure.error
    assert num_trees(from_weights(result.weights)) == 2 * 2


def test_cyclic_names_a_dart_booster() -> None:
    # Before, the round failed saying the bytes were averaged by a strategy such as FedAvg.
    cyclic = XGBoostCyclic(fraction_evaluate=0.0)
    result = _federation(cyclic, 2, bad_cid=0, bad={"booster": "dart"})
    error = result.history.rounds[1].aggregate_info["error"]
    assert "booster 'dart' is not supported" in error
    assert "FedAvg" not in error
    assert num_trees(from_weights(result.weights)) == 1


MULTI = {"objective": "multi:softprob", "num_class": 3, "base_score": 0.5, "max_depth": 2}


@pytest.mark.parametrize(
    ("params", "labels", "message"),
    [
        (MULTI, [-1.0, 0.0, 1.0, 2.0], r"label -1\.0, .* are whole numbers 0\.\.2"),
        (MULTI, [0.0, 3.0, 1.0, 2.0], r"label 3\.0, .* are whole numbers 0\.\.2"),
        (MULTI, [0.0, 0.5, 1.0, 2.0], r"label 0\.5, .* are whole numbers 0\.\.2"),
        ({**MULTI, "objective": "multi:softmax"}, [0.0, 1.0, 7.0, 2.0], r"label 7\.0"),
        (BINARY, [0.0, 1.0, -1.0, 1.0], r"label -1\.0, .* are in \[0, 1\]"),
    ],
)
def test_labels_outside_the_classes_are_named(
    params: dict[str, object], labels: list[float], message: str
) -> None:
    # Before: negative labels gave a silently wrong loss, labels past the classes an IndexError.
    x = _data(0, n=4)[0]
    with pytest.raises(ValueError, match=message):
        evaluate_booster(initial_model(params, 4, capacity=1 << 16), x, np.array(labels))


@pytest.mark.parametrize("params", [MULTI, BINARY, {**BINARY, "objective": "reg:squarederror"}])
def test_labels_of_another_length_than_x_are_named(params: dict[str, object]) -> None:
    # Before: NumPy's "operands could not be broadcast together".
    x, y = _data(0, n=10)
    with pytest.raises(ValueError, match=r"y has 6 labels, x 10 rows \(examples\)"):
        evaluate_booster(initial_model(params, 4, capacity=1 << 16), x, y[:6])


def test_labels_of_another_length_than_the_features_are_refused_by_the_client() -> None:
    # Before: XGBoost's "Check failed: p_info->Size() % n_samples == 0" and a C++ trace.
    x, y = _data(0, n=10)
    with pytest.raises(ValueError, match=r"y_train has 6 labels, x_train 10 rows"):
        XGBoostClient(x, y[:6], BINARY)
    with pytest.raises(ValueError, match=r"y_test has 3 labels, x_test 10 rows"):
        XGBoostClient(x, y, BINARY, x, y[:3])


@pytest.mark.parametrize(
    ("params", "features", "message"),
    [
        (BINARY, 0, r"num_features must be at least 1 .*got 0"),
        ({**MULTI, "num_class": None}, 4, r"'multi:softprob' needs params\['num_class'\]"),
        ({**BINARY, "objective": "multi:softmax"}, 4, r"'multi:softmax' needs params\['num_cl"),
        ({**BINARY, "max_depth": -1}, 4, r"XGBoost refuses params: value -1 for .*max_depth"),
    ],
)
def test_a_model_xgboost_cannot_make_is_refused_naming_the_argument(
    params: dict[str, object], features: int, message: str
) -> None:
    # Before: XGBoostError, with a C++ stack trace for num_features=0.
    with pytest.raises(ValueError, match=message) as info:
        initial_model({k: v for k, v in params.items() if v is not None}, features)
    assert "Stack trace" not in str(info.value)

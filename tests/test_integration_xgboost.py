"""covey.xgboost: the model as bytes in arrays, tree merging, bagging and cyclic federations."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import covey
from covey import WeightsError
from covey.aggregate import Aggregate, AggregationError, Begin, Contribution, End
from covey.sim import SimulationResult
from covey.strategies import Strategy

xgb = pytest.importorskip("xgboost")

from covey.xgboost import (  # noqa: E402
    XGBoostBagging,
    XGBoostClient,
    XGBoostCyclic,
    bagging,
    cyclic,
    empty_booster,
    evaluate_booster,
    from_weights,
    initial_model,
    merge_trees,
    num_trees,
    to_weights,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BINARY = {"objective": "binary:logistic", "base_score": 0.5, "max_depth": 2, "nthread": 1}
MULTI = {"objective": "multi:softprob", "num_class": 3, "base_score": 0.5, "max_depth": 2}


def _data(seed: int, n: int = 80, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = (x[:, 0] > 0).astype(int) + (classes == 3) * (x[:, 1] > 0.3)
    return x, y.astype(float)


def test_bytes_round_trip_in_a_fixed_capacity() -> None:
    weights = to_weights(b'{"a": 1}', 64)
    assert weights["model"].shape == (64,)
    assert weights["model"].dtype == np.uint8
    assert from_weights(weights) == b'{"a": 1}'
    with pytest.raises(ValueError, match="more than the federation's capacity of 4"):
        to_weights(b"12345", 4)


def test_declared_size_is_checked_against_the_buffer() -> None:
    weights = to_weights(b"abc", 8)
    weights["size"] = np.array([9], dtype=np.int64)
    with pytest.raises(WeightsError, match=r"outside the model buffer's 0\.\.8 bytes"):
        from_weights(weights)
    with pytest.raises(WeightsError, match="need 'model' and 'size'"):
        from_weights({"model": weights["model"]})
    with pytest.raises(WeightsError, match="not an XGBoost JSON model"):
        merge_trees(b"[1, 2]", [])


def test_the_start_needs_a_base_score() -> None:
    with pytest.raises(ValueError, match="base_score"):
        empty_booster({"objective": "binary:logistic"}, 4)
    assert num_trees(empty_booster(BINARY, 4)) == 0


def _boost(base: bytes, params: dict[str, object], seed: int, rounds: int) -> bytes:
    x, y = _data(seed, classes=params.get("num_class", 2))  # type: ignore[arg-type]
    booster = xgb.train(
        params,
        xgb.DMatrix(x, label=y),
        num_boost_round=rounds,
        xgb_model=xgb.Booster(model_file=bytearray(base)),
    )
    return bytes(booster.save_raw("json"))


def _margin(model: bytes, x: np.ndarray) -> np.ndarray:
    booster = xgb.Booster(model_file=bytearray(model))
    return np.asarray(booster.predict(xgb.DMatrix(x), output_margin=True), dtype=np.float64)


@pytest.mark.parametrize("params", [BINARY, MULTI], ids=["binary", "multiclass"])
def test_merged_margin_is_base_plus_scaled_client_steps(params: dict[str, object]) -> None:
    base = _boost(empty_booster(params, 4), params, seed=9, rounds=1)
    clients = [_boost(base, params, seed=s, rounds=2) for s in range(3)]
    factors = [0.5, 0.3, 0.2]
    merged = merge_trees(base, list(zip(clients, factors, strict=True)))
    per_round = 3 if "num_class" in params else 1
    assert num_trees(merged) == per_round * (1 + 3 * 2)
    x = _data(99)[0]
    expected = _margin(base, x) + sum(
        f * (_margin(c, x) - _margin(base, x)) for c, f in zip(clients, factors, strict=True)
    )
    np.testing.assert_allclose(_margin(merged, x), expected, rtol=1e-5, atol=1e-5)


def test_a_model_that_does_not_extend_the_global_one_is_refused() -> None:
    base = _boost(empty_booster(BINARY, 4), BINARY, seed=0, rounds=3)
    shorter = _boost(empty_booster(BINARY, 4), BINARY, seed=1, rounds=1)
    with pytest.raises(WeightsError, match="fewer than the global model's 3"):
        merge_trees(base, [(shorter, 1.0)])
    other = empty_booster({**BINARY, "objective": "binary:logistic"}, 5)
    with pytest.raises(WeightsError, match="other features, classes or targets"):
        merge_trees(base, [(other, 1.0)])
    # Trees grown from another base_score, or for another objective, were appended
    # as if they fit the global model's residuals.
    start = empty_booster(BINARY, 4)
    high = {**BINARY, "base_score": 0.9}
    shifted = _boost(empty_booster(high, 4), high, seed=2, rounds=1)
    with pytest.raises(WeightsError, match=r"boosts from base_score \[9E-1\], the global"):
        merge_trees(start, [(shifted, 1.0)])
    regression = {**BINARY, "objective": "reg:squarederror"}
    squared = _boost(empty_booster(regression, 4), regression, seed=3, rounds=1)
    with pytest.raises(WeightsError, match="trained for objective 'reg:squarederror'"):
        merge_trees(start, [(squared, 1.0)])


def test_xgboost_models_averaged_by_fedavg_are_told_the_strategy_to_use() -> None:
    # FedAvg averaged the models' bytes; the next round failed "not an XGBoost JSON
    # model ...: Expecting value", which did not point at the strategy.
    start = initial_model(BINARY, 4, capacity=1 << 16)
    with pytest.raises(covey.FederationError) as info:
        covey.simulate(_client, 3, 2, covey.FedAvg(fraction_evaluate=0.0), start)
    assert "aggregate XGBoost models with XGBoostBagging or XGBoostCyclic" in str(info.value)


def _client(cid: int) -> XGBoostClient:
    return XGBoostClient(*_data(cid), BINARY, local_rounds=2)


def test_data_with_other_features_than_the_model_is_named() -> None:
    start = initial_model(BINARY, 4, capacity=1 << 16)
    x, y = _data(0)
    client = XGBoostClient(x[:, :3], y, BINARY)
    with pytest.raises(ValueError, match=r"x_train has 3 features .*the global model 4"):
        client.fit(start, {"round": 1})
    with pytest.raises(ValueError, match=r"x has 5 features .*the global model 4"):
        evaluate_booster(start, np.hstack([x, x[:, :1]]), y)


def test_a_booster_is_evaluated_from_itself_its_weights_or_its_bytes() -> None:
    # Before, the model's bytes (from_weights) or a read-only mapping of the weights failed
    # with "'bytes' object has no attribute 'num_features'".
    from types import MappingProxyType

    x, y = _data(0)
    client = XGBoostClient(x, y, BINARY, local_rounds=2)
    weights = client.fit(initial_model(BINARY, 4, capacity=1 << 16), {"round": 1}).weights
    assert weights is not None
    booster = xgb.Booster(model_file=bytearray(from_weights(weights)))
    expected = evaluate_booster(booster, x, y)
    assert expected[0] < 0.6
    for given in (weights, MappingProxyType(dict(weights)), from_weights(weights)):
        assert evaluate_booster(given, x, y) == expected
    with pytest.raises(TypeError, match=r"needs an xgboost.Booster.*got list"):
        evaluate_booster([weights], x, y)
    with pytest.raises(WeightsError):
        evaluate_booster(b"{not a model", x, y)


def test_bagging_grows_every_clients_trees_each_round() -> None:
    result = covey.simulate(
        _client,
        num_clients=3,
        rounds=2,
        strategy=XGBoostBagging(local_rounds=2),
        initial_weights=initial_model(BINARY, 4, capacity=1 << 16),
    )
    assert not result.history.failures()
    assert num_trees(from_weights(result.weights)) == 2 * 3 * 2
    assert result.history.metric("accuracy", source="evaluate")[-1][1] > 0.8


def test_cyclic_takes_clients_in_turn() -> None:
    result = covey.simulate(
        _client,
        num_clients=3,
        rounds=4,
        strategy=XGBoostCyclic(local_rounds=2, fraction_evaluate=0.0),
        initial_weights=initial_model(BINARY, 4, capacity=1 << 16),
    )
    assert [r.fit_participants for r in result.history.rounds[1:]] == [[0], [1], [2], [0]]
    assert num_trees(from_weights(result.weights)) == 4 * 2
    with pytest.raises(TypeError, match="fixes \\['selector'\\]"):
        XGBoostCyclic(selector=lambda c, r, g: c)


def test_cyclic_step_refuses_several_clients_in_a_round() -> None:
    start = initial_model(BINARY, 4, capacity=1 << 16)
    result = covey.simulate(
        _client,
        num_clients=2,
        rounds=1,
        strategy=Strategy(aggregator=cyclic(local_rounds=2), fraction_evaluate=0.0),
        initial_weights=start,
    )
    record = result.history.rounds[1]
    assert "one client per round" in record.aggregate_info["error"]
    assert from_weights(result.weights) == from_weights(start)


def _one_round(capacity: int) -> SimulationResult:
    return covey.simulate(
        _client,
        num_clients=2,
        rounds=1,
        strategy=XGBoostBagging(local_rounds=2, fraction_evaluate=0.0),
        initial_weights=initial_model(BINARY, 4, capacity=capacity),
    )


def test_a_client_model_past_the_capacity_fails_with_a_clear_error() -> None:
    with pytest.raises(covey.FederationError, match="more than the federation's capacity of 600"):
        _one_round(600)


def test_a_merged_model_past_the_capacity_leaves_the_global_model_unchanged() -> None:
    result = _one_round(2000)
    assert not result.history.failures()
    assert "capacity of 2000" in result.history.rounds[1].aggregate_info["error"]
    assert num_trees(from_weights(result.weights)) == 0


@pytest.mark.slow
def test_federated_boosters_beat_every_client_alone() -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import xgboost_federated as example
    finally:
        sys.path.remove(str(EXAMPLES))
    scores = example.compare(example.Clients(num_clients=4, per_client=150), rounds=5)
    alone = [v for k, v in scores.items() if k.endswith("alone")]
    assert len(alone) == 4
    loss, accuracy = scores["bagging"]
    assert loss < min(a[0] for a in alone), scores
    assert accuracy > max(a[1] for a in alone), scores
    assert scores["cyclic"][1] > 0.8


def test_exports() -> None:
    import covey.xgboost

    assert sorted(covey.xgboost.__all__) == [
        "MODEL",
        "SIZE",
        "XGBoostBagging",
        "XGBoostClient",
        "XGBoostCyclic",
        "bagging",
        "booster_from_weights",
        "cyclic",
        "empty_booster",
        "evaluate_booster",
        "from_weights",
        "initial_model",
        "merge_trees",
        "num_trees",
        "round_robin",
        "to_weights",
    ]


def test_a_tampered_tree_is_refused_by_the_merge() -> None:
    base = empty_booster(BINARY, 4)
    client = json.loads(_boost(base, BINARY, seed=0, rounds=1))
    tree = client["learner"]["gradient_booster"]["model"]["trees"][0]
    tree["left_children"] = [5, -1, -1]  # points past the tree's nodes
    start = to_weights(base, 1 << 16)
    step = bagging()
    state = step.init(start)
    state, _ = step.update(state, Begin(1, start))
    forged = to_weights(json.dumps(client).encode(), 1 << 16)
    # Refused as it arrives: that client fails alone, the round goes on without it.
    with pytest.raises(AggregationError, match="links to node 5, not a new node"):
        step.update(state, Contribution(0, 10, weights=forged))
    _, out = step.update(state, End(1))
    assert out == ()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("split_indices", [7, 0, 0], "feature outside 0..3"),
        ("split_conditions", [0.0, float("nan"), 1.0], "finite numbers"),
        ("parents", [2147483647, 0, 1], "node 2's parent is not 0"),
        ("base_weights", [0.0, 1.0], "one value per node"),
        ("right_children", [1, -1, -1], "not a new node"),
    ],
)
def test_malformed_trees_are_named(field: str, value: list[float], message: str) -> None:
    base = empty_booster(BINARY, 4)
    client = json.loads(_boost(base, BINARY, seed=0, rounds=1))
    tree = client["learner"]["gradient_booster"]["model"]["trees"][0]
    assert tree["left_children"] == [1, -1, -1]
    tree[field] = value
    with pytest.raises(WeightsError, match=message):
        merge_trees(base, [(json.dumps(client).encode(), 1.0)])


def test_cyclic_keeps_the_servers_copy_of_the_old_trees() -> None:
    start = initial_model(BINARY, 4, capacity=1 << 16)
    base = _boost(from_weights(start), BINARY, seed=0, rounds=1)
    honest = _boost(base, BINARY, seed=1, rounds=1)
    doc = json.loads(honest)
    old = doc["learner"]["gradient_booster"]["model"]["trees"][0]
    old["split_conditions"] = [c * 100 for c in old["split_conditions"]]
    params = to_weights(base, 1 << 16)
    step = cyclic()
    state = step.init(params)
    state, _ = step.update(state, Begin(2, params))
    tampered = to_weights(json.dumps(doc).encode(), 1 << 16)
    state, _ = step.update(state, Contribution(0, 10, weights=tampered))
    _, out = step.update(state, End(2))
    aggregate = out[0]
    assert isinstance(aggregate, Aggregate)
    new = aggregate.weights
    assert new is not None
    x = _data(5)[0]
    np.testing.assert_allclose(_margin(from_weights(new), x), _margin(honest, x), rtol=1e-6)


def test_deeply_nested_json_is_a_clear_error() -> None:
    with pytest.raises(WeightsError, match="not an XGBoost JSON model"):
        merge_trees(b"[" * 100_000 + b"]" * 100_000, [])


def test_a_client_refuses_a_malformed_global_model() -> None:
    doc = json.loads(_boost(empty_booster(BINARY, 4), BINARY, seed=0, rounds=1))
    doc["learner"]["gradient_booster"]["model"]["trees"][0]["left_children"][0] = 50
    weights = to_weights(json.dumps(doc).encode(), 1 << 16)
    with pytest.raises(WeightsError, match="the model's tree 0: node 0 links to node 50"):
        _client(0).fit(weights, {"round": 1})


def test_process_workers_boost_after_the_parent_has_boosted() -> None:
    # XGBoost runs on GNU OpenMP, whose thread pool does not survive a fork: once
    # the parent had boosted, every forked worker waited forever in its first round
    x, y = _data(7, n=400)
    params = {**MULTI, "objective": "binary:logistic"}
    params.pop("num_class")
    xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=2)  # the parent's pool
    shards = [(x[k::4], y[k::4]) for k in range(4)]
    result = covey.simulate(
        lambda cid: XGBoostClient(*shards[cid], params),
        4,
        2,
        XGBoostBagging(fraction_evaluate=0.0, accept_failures=False),
        initial_model(params, num_features=4),
        backend="process",
        num_workers=2,
        start_method="fork",
        round_timeout=60,
    )
    assert num_trees(from_weights(result.weights)) == 8  # 4 clients, 2 rounds


@pytest.mark.parametrize("objective", ["binary:logitraw", "binary:hinge", "multi:softmax"])
def test_objectives_without_probabilities_are_scored_as_classifiers(objective: str) -> None:
    from scipy.special import expit
    from sklearn.metrics import accuracy_score, log_loss

    classes = 3 if objective == "multi:softmax" else 2
    x, y = _data(0, n=120, classes=classes)
    params = {"objective": objective, "base_score": 0.5, "max_depth": 2, "nthread": 1}
    if classes == 3:
        params["num_class"] = 3
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=3)
    predicted = booster.predict(xgb.DMatrix(x))
    loss, metrics = evaluate_booster(booster, x, y)
    if objective == "binary:logitraw":  # a logit per example: its sigmoid is the probability
        proba = expit(predicted.astype(np.float64))
        assert loss == pytest.approx(log_loss(y, proba), rel=1e-9)
        assert metrics == {"accuracy": pytest.approx(accuracy_score(y, proba > 0.5))}
    else:  # the predicted class: the error rate is the loss
        assert metrics == {"accuracy": pytest.approx(accuracy_score(y, predicted))}
        assert loss == pytest.approx(1.0 - float(metrics["accuracy"]))
    assert float(metrics["accuracy"]) > 0.7


def test_labels_of_several_targets_are_refused_naming_the_columns() -> None:
    x, y = _data(0)
    params = {"objective": "reg:squarederror", "base_score": 0.5, "max_depth": 2, "nthread": 1}
    client = XGBoostClient(x, np.c_[y, -y], params)
    # before the fix: XGBoost's "Check failed: info.labels.Size() == preds.Size()" and a C++ trace
    with pytest.raises(ValueError, match=r"y_train has 2 target column\(s\), the global model 1"):
        client.fit(initial_model(params, 4, capacity=1 << 16), {"round": 1})


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"booster": "dart"}, "params\\['booster'\\] = 'dart'"),
        ({"booster": "gblinear"}, "params\\['booster'\\] = 'gblinear'"),
        ({"multi_strategy": "multi_output_tree"}, "params\\['multi_strategy'\\]"),
    ],
)
def test_a_booster_bagging_cannot_combine_is_refused_when_the_model_is_made(
    extra: dict[str, object], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        initial_model({**BINARY, **extra}, 4, capacity=1 << 16)

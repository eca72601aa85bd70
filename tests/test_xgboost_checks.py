"""covey.xgboost: one client's unmergeable trees fail that client alone; user mistakes named."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import numpy as np
import pytest

import covey
from covey.core import Config
from covey.core._weights import WeightsError

xgb = pytest.importorskip("xgboost")

from covey.xgboost import (  # noqa: E402
    XGBoostBagging,
    XGBoostClient,
    XGBoostCyclic,
    bagging,
    booster_from_weights,
    empty_booster,
    evaluate_booster,
    from_weights,
    initial_model,
    merge_trees,
    num_trees,
    round_robin,
    to_weights,
)
from covey.xgboost._model import booster_from_bytes  # noqa: E402

BINARY = {"objective": "binary:logistic", "base_score": 0.5, "max_depth": 2, "nthread": 1}


def _data(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    return x, (x[:, 0] > 0).astype(float)


def _federation(
    strategy: covey.Strategy,
    clients: int,
    *,
    bad_cid: int,
    bad: dict[str, object],
    rounds: int = 2,
    sends: Callable[[bytes], bytes] | None = None,
) -> covey.sim.SimulationResult:
    """Inline rounds of ``clients`` XGBoost clients, ``bad_cid`` trained with ``bad``.

    ``sends``: what ``bad_cid`` replies instead of its trained model, made from it.
    """

    def client(cid: int) -> XGBoostClient:
        if cid == bad_cid and sends is not None:
            return _Forging(sends)
        if cid == bad_cid:
            return _Unchecked(*_data(cid), {**BINARY, **bad})
        return XGBoostClient(*_data(cid), BINARY)

    return covey.simulate(
        client,
        num_clients=clients,
        rounds=rounds,
        strategy=strategy,
        initial_weights=initial_model(BINARY, 4, capacity=1 << 16),
        backend="inline",
    )


class _Unchecked(XGBoostClient):
    """Boosts the global model with its params as XGBoost does, without XGBoostClient's checks.

    As a client of one's own would: what it sends is the server's to refuse.
    """

    def fit(self, weights: covey.Weights, config: Config) -> covey.FitResult:
        start = booster_from_weights(weights, self.params)
        rounds = int(config.get("local_rounds", 1))
        booster = xgb.train(self.params, self.train, num_boost_round=rounds, xgb_model=start)
        size = int(np.asarray(weights["model"]).size)
        model = to_weights(booster.save_raw("json"), size)
        return covey.FitResult(weights=model, num_examples=self.num_examples)


#: Client settings whose trees no strategy can merge, and what the failure says.
UNMERGEABLE = [
    ({"objective": "binary:logitraw"}, "trained for objective 'binary:logitraw'"),
    ({"booster": "dart"}, "booster 'dart' is not supported by XGBoostBagging"),
    ({"eta": float("inf")}, "holds inf or NaN"),
]
UNMERGEABLE_IDS = ["objective", "dart", "eta-inf"]


@pytest.mark.parametrize(("bad", "message"), UNMERGEABLE, ids=UNMERGEABLE_IDS)
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


@pytest.mark.parametrize(("bad", "message"), UNMERGEABLE, ids=UNMERGEABLE_IDS)
def test_cyclic_fails_a_client_whose_trees_cannot_join_and_keeps_the_model(
    bad: dict[str, object], message: str
) -> None:
    # Before, the round's client took part and the round failed at its end, recorded as
    # the round's aggregation error rather than as that client's failed fit.
    cyclic = XGBoostCyclic(fraction_evaluate=0.0)
    result = _federation(cyclic, 3, bad_cid=1, bad=bad, rounds=3)
    first, second, third = result.history.rounds[1:]
    assert [first.fit_participants, second.fit_participants, third.fit_participants] == [
        [0],
        [],
        [2],
    ]
    [failure] = second.fit_failures
    assert failure.cid == 1
    assert failure.error.startswith("refused by the aggregation step: ")
    assert message in failure.error
    assert "FedAvg" not in failure.error
    for record in (first, second, third):
        assert "error" not in record.aggregate_info
    # Client 2 boosted the booster of round 1, the latest valid one: no tree is lost.
    assert num_trees(from_weights(result.weights)) == 2


#: Params an XGBoostClient refuses before it boosts, and what its failure says.
TRAINED_WITH = [
    (
        {"objective": "binary:logitraw"},
        "objective 'binary:logitraw', the global model with 'binary:logistic'",
    ),
    ({"base_score": 0.3}, "base_score 0.3, the global model with 0.5:"),
    ({"booster": "dart"}, "booster 'dart', the global model with 'gbtree'"),
]


@pytest.mark.parametrize(("bad", "message"), TRAINED_WITH, ids=["objective", "base_score", "dart"])
def test_a_client_of_another_objective_fails_alone_before_it_boosts(
    bad: dict[str, object], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the client boosted (and sent its model) every round only for the server
    # to refuse its trees as they arrived.
    start = initial_model(BINARY, 4, capacity=1 << 16)
    client = XGBoostClient(*_data(1), {**BINARY, **bad})

    def boosted(*args: object, **kwargs: object) -> None:
        raise AssertionError("the client boosted")

    with monkeypatch.context() as patched:
        patched.setattr(xgb, "train", boosted)
        with pytest.raises(
            WeightsError, match="this client's params train with " + re.escape(message)
        ):
            client.fit(start, {"round": 1})
    for strategy in (XGBoostBagging(fraction_evaluate=0.0), XGBoostCyclic(fraction_evaluate=0.0)):
        result = covey.simulate(
            lambda cid: XGBoostClient(*_data(cid), {**BINARY, **bad} if cid == 1 else BINARY),
            num_clients=3,
            rounds=3,
            strategy=strategy,
            initial_weights=start,
            backend="inline",
        )
        failures = result.history.failures()
        assert [(r, f.cid) for r, f in failures] == (
            [(1, 1), (2, 1), (3, 1)] if strategy.name == "XGBoostBagging" else [(2, 1)]
        )
        assert all(message in f.error for _, f in failures)
        assert len(result.history.rounds) == 4  # the run goes on with the others


def test_params_that_train_as_the_global_model_boost() -> None:
    # An alias, a base_score written otherwise, or params naming none of them: no refusal.
    regression = {"objective": "reg:squarederror", "base_score": 0.5, "max_depth": 2, "nthread": 1}
    start = initial_model(regression, 4, capacity=1 << 16)
    for params in ({**regression, "base_score": "0.5"}, {"max_depth": 2, "nthread": 1}):
        trained = XGBoostClient(*_data(1), params).fit(start, {"round": 1})
        assert trained.weights is not None
        assert num_trees(from_weights(trained.weights)) == 1
    # A model of three classes holds a base_score per class: the params' one value is each.
    multi = {**BINARY, "objective": "multi:softprob", "num_class": 3}
    trained = XGBoostClient(*_data(1), multi).fit(initial_model(multi, 4), {"round": 1})
    assert trained.weights is not None
    assert num_trees(from_weights(trained.weights)) == 3


class _Forging(XGBoostClient):
    """A client that trains honestly, then replies with ``sends(its model)``."""

    def __init__(self, sends: Callable[[bytes], bytes]) -> None:
        super().__init__(*_data(9), BINARY)
        self.sends = sends

    def fit(self, weights: covey.Weights, config: Config) -> covey.FitResult:
        trained = super().fit(weights, config)
        assert trained.weights is not None
        forged = self.sends(from_weights(trained.weights))
        capacity = int(np.asarray(weights["model"]).size)
        return covey.FitResult(weights=to_weights(forged, capacity), num_examples=60)


def _other_booster(params: dict[str, object], features: int) -> Callable[[bytes], bytes]:
    """Reply with a booster of one tree grown for ``params`` on ``features`` features."""

    def sends(model: bytes) -> bytes:
        x = np.random.default_rng(3).normal(size=(30, features))
        start = xgb.Booster(model_file=bytearray(empty_booster(params, features)))
        label = (x[:, 0] > 0).astype(float)
        booster = xgb.train(params, xgb.DMatrix(x, label=label), 1, xgb_model=start)
        return bytes(booster.save_raw("json"))

    return sends


def _nan_leaf(model: bytes) -> bytes:
    doc = json.loads(model)
    tree = doc["learner"]["gradient_booster"]["model"]["trees"][-1]
    leaf = tree["left_children"].index(-1)
    tree["split_conditions"][leaf] = float("nan")
    tree["base_weights"][leaf] = float("nan")
    return json.dumps(doc).encode()


def _without_model_param(model: bytes) -> bytes:
    doc = json.loads(model)
    del doc["learner"]["learner_model_param"]
    return json.dumps(doc).encode()


MULTI_OF_4 = {"objective": "multi:softprob", "num_class": 3, "base_score": 0.5, "max_depth": 2}
FORGED = [
    (lambda m: np.random.default_rng(0).bytes(len(m)), "not an XGBoost JSON model"),
    (lambda m: b"", "not an XGBoost JSON model"),
    (_other_booster(BINARY, 5), "(num_feature '5', the global model's '4')"),
    (_other_booster({**MULTI_OF_4, "nthread": 1}, 4), "(num_class '3', the global model's '0')"),
    (_nan_leaf, "holds inf or NaN"),
    (_without_model_param, "lacks a field of an XGBoost model or has a malformed one"),
]
FORGED_IDS = ["random-bytes", "empty", "features", "classes", "nan-leaf", "no-model-param"]


@pytest.mark.parametrize(("sends", "message"), FORGED, ids=FORGED_IDS)
def test_cyclic_fails_a_forged_reply_by_name_and_goes_on(
    sends: Callable[[bytes], bytes], message: str
) -> None:
    # Before, the round failed at its end (no booster, other features or classes, NaN)
    # or the run stopped with a KeyError (a model without learner_model_param).
    cyclic = XGBoostCyclic(fraction_evaluate=0.0)
    result = _federation(cyclic, 3, bad_cid=1, bad={}, rounds=3, sends=sends)
    assert [r.fit_participants for r in result.history.rounds[1:]] == [[0], [], [2]]
    [failure] = result.history.rounds[2].fit_failures
    assert failure.cid == 1
    assert "refused by the aggregation step: the client's model" in failure.error
    assert message in failure.error
    assert "FedAvg" not in failure.error
    assert all("error" not in r.aggregate_info for r in result.history.rounds[1:])
    assert num_trees(from_weights(result.weights)) == 2


@pytest.mark.parametrize(("sends", "message"), FORGED, ids=FORGED_IDS)
def test_bagging_fails_a_forged_reply_by_name(
    sends: Callable[[bytes], bytes], message: str
) -> None:
    # Before, a model without learner_model_param stopped the run with a KeyError, and
    # random bytes were said to be averaged by a strategy such as FedAvg.
    bagging = XGBoostBagging(fraction_evaluate=0.0)
    result = _federation(bagging, 3, bad_cid=1, bad={}, sends=sends)
    for record in result.history.rounds[1:]:
        assert record.fit_participants == [0, 2]
        [failure] = record.fit_failures
        assert failure.cid == 1
        assert message in failure.error
        assert "FedAvg" not in failure.error
    assert num_trees(from_weights(result.weights)) == 2 * 2


def _crash(model: bytes) -> bytes:
    raise RuntimeError("out of memory")


def test_cyclic_goes_on_past_a_client_whose_fit_fails() -> None:
    # Before, the round's one client failing left 0 of 1 replies: the run stopped.
    cyclic = XGBoostCyclic(fraction_evaluate=0.0)
    result = _federation(cyclic, 3, bad_cid=1, bad={}, rounds=3, sends=_crash)
    assert [r.fit_participants for r in result.history.rounds[1:]] == [[0], [], [2]]
    [failure] = result.history.rounds[2].fit_failures
    assert (failure.cid, failure.stage) == (1, "fit")
    assert "out of memory" in failure.error
    assert num_trees(from_weights(result.weights)) == 2


def test_round_robin_picks_no_client_of_none() -> None:
    # Before: ZeroDivisionError.
    assert round_robin([], 3, np.random.default_rng(0)) == []
    assert round_robin([5, 2], 3, np.random.default_rng(0)) == [2]


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


def _trained() -> bytes:
    """A binary booster of two trees, on four features."""
    start = xgb.Booster(model_file=bytearray(empty_booster(BINARY, 4)))
    booster = xgb.train(BINARY, xgb.DMatrix(*_data(0)), 2, xgb_model=start)
    return bytes(booster.save_raw("json"))


def _edited(model: bytes, edit: Callable[[dict[str, object]], None]) -> bytes:
    doc = json.loads(model)
    edit(doc)
    return json.dumps(doc).encode()


def _leaf_vector(size: str) -> Callable[[dict[str, object]], None]:
    def edit(doc: dict[str, object]) -> None:
        tree = doc["learner"]["gradient_booster"]["model"]["trees"][-1]  # type: ignore[index]
        tree["tree_param"]["size_leaf_vector"] = size

    return edit


def test_a_client_tree_of_negative_leaf_vectors_is_refused_before_xgboost_loads_it() -> None:
    # Before, a size_leaf_vector below 0 passed the check and XGBoost, loading the
    # merged model, crashed the server with a segmentation fault.
    base = empty_booster(BINARY, 4)
    with pytest.raises(covey.core.WeightsError, match="leaf vectors of -1: not supported"):
        merge_trees(base, [(_edited(_trained(), _leaf_vector("-1")), 1.0)])
    old = _edited(_trained(), _leaf_vector("0"))  # as XGBoost 1.x writes one value per leaf
    assert num_trees(merge_trees(base, [(old, 1.0)])) == 2


def _model_param(key: str, value: str | None) -> Callable[[dict[str, object]], None]:
    def edit(doc: dict[str, object]) -> None:
        params = doc["learner"]["learner_model_param"]  # type: ignore[index]
        if value is None:
            del params[key]
        else:
            params[key] = value

    return edit


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num_class", "abc", "learner_model_param 'num_class' is 'abc'"),
        ("num_feature", None, "learner_model_param lacks 'num_feature'"),
        ("num_target", "-2", "learner_model_param 'num_target' is '-2'"),
    ],
)
def test_a_global_model_of_malformed_counts_is_refused_naming_the_count(
    key: str, value: str | None, message: str
) -> None:
    # Before, a count that is no number raised a bare ValueError (or KeyError), and a
    # num_target below 1 passed every check: XGBoost then hung allocating its outputs.
    model = _edited(_trained(), _model_param(key, value))
    with pytest.raises(covey.core.WeightsError, match=message):
        merge_trees(model, [(model, 1.0)])
    if key != "num_target":  # XGBoost would hang on this one in the old code
        with pytest.raises(covey.core.WeightsError, match=message):
            booster_from_weights(to_weights(model, 1 << 20))


def test_a_start_without_model_param_is_refused_naming_the_field() -> None:
    model = _edited(_trained(), lambda doc: doc["learner"].pop("learner_model_param"))  # type: ignore[attr-defined]
    with pytest.raises(covey.core.WeightsError, match="lacks a field of an XGBoost model"):
        booster_from_weights(to_weights(model, 1 << 20))


def test_a_global_model_of_a_billion_classes_is_refused_before_xgboost_loads_it() -> None:
    # Before, num_class 1e9 passed every check: XGBoost then hung allocating its outputs.
    model = _edited(_trained(), _model_param("num_class", "1000000000"))
    with pytest.raises(covey.core.WeightsError, match=r"num_class '1000000000' .*over the cap"):
        booster_from_weights(to_weights(model, 1 << 20))


@pytest.mark.parametrize("base_score", ["[5E-1,5E-1]", "[1E-1,2E-1,3E-1,4E-1]", "[x]"])
def test_a_base_score_of_the_wrong_length_is_refused_naming_it(base_score: str) -> None:
    # Before, a model of one output with two base scores loaded, and failed only at predict.
    model = _edited(_trained(), _model_param("base_score", base_score))
    with pytest.raises(covey.core.WeightsError, match="'base_score'"):
        booster_from_weights(to_weights(model, 1 << 20))


@pytest.mark.parametrize(
    ("params", "labels"),
    [
        ({"objective": "multi:softprob", "num_class": 300}, lambda rng: rng.integers(0, 300, 600)),
        (
            {"objective": "reg:squarederror", "multi_strategy": "one_output_per_tree"},
            lambda rng: rng.normal(size=(600, 3)),
        ),
    ],
    ids=["300-classes", "3-targets"],
)
def test_models_of_many_classes_or_targets_and_their_base_scores_load(
    params: dict[str, object], labels: Callable[[np.random.Generator], np.ndarray]
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4))
    booster = xgb.train({**params, "max_depth": 1, "nthread": 1}, xgb.DMatrix(x, labels(rng)), 1)
    model = bytes(booster.save_raw("json"))
    loaded = booster_from_weights(to_weights(model, 1 << 24))
    assert num_trees(merge_trees(model, [(model, 1.0)])) == num_trees(model)
    assert loaded.predict(xgb.DMatrix(x[:2])).shape[0] == 2
    old = _edited(model, _model_param("base_score", "[5E-1]"))  # one for all, as XGBoost 2 wrote
    booster_from_weights(to_weights(old, 1 << 24))


@pytest.mark.parametrize("base_score", ["[NaN]", "[inf]", "-Infinity", "[5E-1,nan]"])
def test_a_base_score_that_is_not_finite_is_refused_naming_it(base_score: str) -> None:
    # Before, a NaN or infinite base_score loaded, and every prediction came out NaN or inf.
    model = _edited(_trained(), _model_param("base_score", base_score))
    if base_score == "[5E-1,nan]":
        model = _edited(model, _model_param("num_target", "2"))
    with pytest.raises(covey.core.WeightsError, match=r"'base_score' is .*not finite"):
        booster_from_weights(to_weights(model, 1 << 20))


def test_the_client_builds_its_data_and_predicts_on_the_params_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``nthread`` in the params bounds the client's DMatrix and predictions, not training alone.

    XGBoost builds a DMatrix on every core unless told otherwise; on a machine
    running many simulated clients that oversubscribes the cores many times over.
    """
    made: list[object] = []
    real = xgb.DMatrix

    def recording(*args: object, **kwargs: object) -> object:
        made.append(kwargs.get("nthread"))
        return real(*args, **kwargs)

    monkeypatch.setattr(xgb, "DMatrix", recording)
    x, y = _data(0)
    client = XGBoostClient(x, y, BINARY)
    start = initial_model(BINARY, 4, capacity=1 << 16)
    fitted = client.fit(start, {"round": 1}).weights
    assert fitted is not None
    client.evaluate(fitted, {})
    assert made
    assert made == [1] * len(made)
    made.clear()
    evaluate_booster(fitted, x, y, nthread=2)
    assert made == [2]
    made.clear()
    XGBoostClient(x, y, {**BINARY, "nthread": "3"})
    XGBoostClient(x, y, {k: v for k, v in BINARY.items() if k != "nthread"})
    assert made == [3, None]


def _nthread(booster: object) -> str:
    config = json.loads(booster.save_config())  # type: ignore[attr-defined]
    return str(config["learner"]["generic_param"]["nthread"])


def test_a_booster_loaded_from_weights_runs_on_the_params_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model's JSON holds no ``nthread``: every booster loaded for the params is given theirs."""
    start = initial_model(BINARY, 4, capacity=1 << 16)
    assert _nthread(booster_from_weights(start, BINARY)) == "1"
    assert _nthread(booster_from_weights(start, {**BINARY, "nthread": "3"})) == "3"
    assert _nthread(booster_from_bytes(from_weights(start), {"nthread": 2})) == "2"
    started: list[str] = []
    real = xgb.train

    def recording(*args: object, **kwargs: object) -> object:
        started.append(_nthread(kwargs["xgb_model"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(xgb, "train", recording)
    x, y = _data(0)
    client = XGBoostClient(x, y, BINARY)
    fitted = client.fit(start, {"round": 1}).weights
    assert started == ["1"]
    assert fitted is not None
    predicted: list[str] = []
    predict = xgb.Booster.predict

    def predicting(self: object, *args: object, **kwargs: object) -> object:
        predicted.append(_nthread(self))
        return predict(self, *args, **kwargs)

    monkeypatch.setattr(xgb.Booster, "predict", predicting)
    client.evaluate(fitted, {})
    evaluate_booster(fitted, x, y, nthread=2)
    assert predicted == ["1", "2"]


def test_a_trained_booster_is_evaluated_on_its_own_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``nthread``, evaluate_booster builds its data on the threads the booster has."""
    x, y = _data(0)
    trained = xgb.train(BINARY, xgb.DMatrix(x, label=y, nthread=1), num_boost_round=2)
    made: list[object] = []
    real = xgb.DMatrix

    def recording(*args: object, **kwargs: object) -> object:
        made.append(kwargs.get("nthread"))
        return real(*args, **kwargs)

    monkeypatch.setattr(xgb, "DMatrix", recording)
    evaluate_booster(trained, x, y)
    evaluate_booster(to_weights(trained.save_raw("json"), 1 << 16), x, y)
    assert made == [1, None]


class _Declaring(XGBoostClient):
    """A client that trains honestly, then declares its model ``size`` bytes long."""

    def __init__(self, size: int) -> None:
        super().__init__(*_data(9), BINARY)
        self.size = size

    def fit(self, weights: covey.Weights, config: Config) -> covey.FitResult:
        trained = super().fit(weights, config).weights
        assert trained is not None
        forged = {"model": trained["model"], "size": np.array([self.size], dtype=np.int64)}
        return covey.FitResult(weights=forged, num_examples=60)


@pytest.mark.parametrize("size", [10**12, -1, 2**63 - 1])
@pytest.mark.parametrize("name", ["bagging", "cyclic"])
def test_a_reply_declaring_a_size_past_its_buffer_fails_that_client_alone(
    name: str, size: int
) -> None:
    strategy = XGBoostBagging if name == "bagging" else XGBoostCyclic
    result = covey.simulate(
        lambda cid: _Declaring(size) if cid == 1 else XGBoostClient(*_data(cid), BINARY),
        num_clients=3,
        rounds=3,
        strategy=strategy(fraction_evaluate=0.0),
        initial_weights=initial_model(BINARY, 4, capacity=1 << 16),
        backend="inline",
    )
    failures = [f for r in result.history.rounds[1:] for f in r.fit_failures]
    assert failures
    assert [f.cid for f in failures] == [1] * len(failures)
    refused = f"'size' is {size}, outside the model buffer's 0..65536"
    assert all(refused in f.error for f in failures)
    assert all("error" not in r.aggregate_info for r in result.history.rounds[1:])
    assert num_trees(from_weights(result.weights)) == (3 * 2 if name == "bagging" else 2)
    booster_from_weights(result.weights, BINARY).predict(xgb.DMatrix(_data(0)[0]))


def test_a_stale_reply_of_asynchronous_rounds_is_refused_naming_why() -> None:
    # Before, a reply trained from an older booster was rebuilt against the newer one and
    # refused as "not an XGBoost JSON model ...: 'utf-8' codec can't decode byte".
    strategy = covey.Strategy(
        aggregator=bagging(), buffer_size=2, fraction_evaluate=0.0, min_fit_clients=2
    )
    result = covey.simulate(
        lambda cid: XGBoostClient(*_data(cid), BINARY),
        num_clients=4,
        rounds=4,
        strategy=strategy,
        initial_weights=initial_model(BINARY, 4, capacity=1 << 16),
        backend="inline",
        seed=0,
    )
    failures = [f for _, f in result.history.failures()]
    assert failures  # clients still training when the buffer filled reply from an older model
    for failure in failures:
        assert "update(s) older than the global one" in failure.error
        assert "synchronous rounds (no buffer_size)" in failure.error

"""Starting a run from a checkpoint: weights of another layout, files, tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import covey
from covey.data import load_digits
from covey.models import LogisticClient, logistic_init


def _client(cid: int) -> LogisticClient:
    data = load_digits()
    idx = np.arange(cid * 40, cid * 40 + 40)
    return LogisticClient(cid, data.x_train[idx], data.y_train[idx], lr=0.5)


@pytest.mark.parametrize(
    ("initial", "message"),
    [
        ({"weight": np.zeros((64, 10)), "b": np.zeros(10)}, r"expected the arrays \['W', 'b'\]"),
        ({"W": np.zeros((63, 10)), "b": np.zeros(10)}, r"'W' has shape \(63, 10\)"),
        ({"W": np.zeros((64, 9)), "b": np.zeros(10)}, r"'b' has shape \(10,\)"),
        ({"W": np.zeros((64, 3)), "b": np.zeros(3)}, r"'W' has 3 classes.*label [3-9]"),
    ],
)
def test_logistic_client_names_the_array_a_checkpoint_of_another_layout_gets_wrong(
    initial: dict[str, np.ndarray], message: str
) -> None:
    # Before, a KeyError or NumPy's broadcast error, naming no array.
    with pytest.raises(covey.FederationError, match=r"WeightsError: .*" + message):
        covey.simulate(_client, 2, 1, covey.FedAvg(fraction_evaluate=0.0), initial)
    with pytest.raises(covey.WeightsError, match=message):
        _client(0).evaluate(initial, {})


def test_logistic_client_warm_starts_from_a_finished_run() -> None:
    first = covey.simulate(_client, 2, 2, covey.FedAvg(), logistic_init(64, 10))
    second = covey.simulate(_client, 3, 1, covey.FedAdam(), first.weights)
    assert [r.round for r in second.history.rounds] == [0, 1]
    assert not np.array_equal(second.weights["W"], first.weights["W"])


def test_a_file_path_as_initial_weights_says_to_read_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    for given in (str(path), path):
        with pytest.raises(covey.WeightsError, match=r"not a file.*safetensors.numpy.load_file"):
            covey.simulate(_client, 2, 1, covey.FedAvg(), given)  # type: ignore[arg-type]


def test_a_safe_open_handle_as_initial_weights_says_to_load_the_file(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "model.safetensors"
    save_file(logistic_init(64, 10), path)
    # Before, "got safe_open" and nothing more.
    said = r"got safe_open: a safetensors.safe_open handle .*safetensors.numpy.load_file\(path\)"
    with safe_open(path, "np") as handle, pytest.raises(covey.WeightsError, match=said):
        covey.simulate(_client, 2, 1, covey.FedAvg(), handle)
    result = covey.simulate(_client, 2, 1, covey.FedAvg(), load_file(path))  # as it says
    assert [r.round for r in result.history.rounds] == [0, 1]


def test_a_torch_state_dict_as_initial_weights_names_to_weights() -> None:
    torch = pytest.importorskip("torch")
    state = torch.nn.Linear(3, 2).state_dict()
    with pytest.raises(covey.WeightsError, match=r"got Tensor: .*covey\.torch\.to_weights"):
        covey.simulate(_client, 2, 1, covey.FedAvg(), state)


def test_a_simulated_run_keeps_its_rounds_in_a_store_unless_top_k_compresses_it(
    tmp_path: Path,
) -> None:
    from covey.server import RunStore

    covey.simulate(_client, 2, 1, covey.FedAvg(), logistic_init(64, 10), run_dir=tmp_path / "r")
    with RunStore.open(tmp_path / "r") as store:
        assert (store.rounds(), store.status) == ([0, 1], "finished")
    covey.simulate(
        _client,
        2,
        1,
        covey.FedAvg(),
        logistic_init(64, 10),
        run_dir=tmp_path / "k",
        compression="topk:0.5",
    )
    with pytest.raises(FileNotFoundError, match=r"run\.sqlite; it is a simulated run.*top-k"):
        RunStore.open(tmp_path / "k")


def test_a_weights_file_is_synced_and_readable_as_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from covey.server import RunStore

    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with RunStore.create(tmp_path / "run", config={}) as store:
        store.save_round(0, logistic_init(3, 2), None)
    final = tmp_path / "run" / "weights" / "round-00000.safetensors"
    # safetensors writes a file of its own and renames it over the one it is given:
    # the data was never synced, and the file was left with mode 0600.
    assert final.stat().st_ino in synced
    assert final.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("json", r"not an XGBoost JSON model"),
        ("size", r"'size' is 1000000000, outside the model buffer"),
        ("names", r"XGBoost weights need 'model' and 'size'"),
        # Before, accepted: every client's int64 reply was then refused as another dtype.
        ("int32", r"'size' is int32, the clients reply with int64"),
    ],
)
def test_an_xgboost_checkpoint_that_is_no_booster_is_refused_before_round_1(
    damage: str, message: str
) -> None:
    pytest.importorskip("xgboost")
    from covey.xgboost import XGBoostBagging, XGBoostClient, XGBoostCyclic, initial_model

    params = {"objective": "binary:logistic", "base_score": 0.5, "max_depth": 2, "nthread": 1}
    start = {k: v.copy() for k, v in initial_model(params, 4, capacity=1 << 16).items()}
    if damage == "json":
        start["model"][:8] = ord("A")
    elif damage == "size":
        start["size"][0] = 10**9
    elif damage == "int32":
        start["size"] = start["size"].astype(np.int32)
    else:
        start = {"weight": start["model"], "size": start["size"]}
    built: list[int] = []

    def client_fn(cid: int) -> XGBoostClient:
        built.append(cid)
        x = np.random.default_rng(cid).normal(size=(20, 4))
        return XGBoostClient(x, (x[:, 0] > 0).astype(int), params)

    # Before, every client failed in round 1 with the same error, and the run
    # stopped as "0 of 2 sampled clients replied".
    for strategy in (XGBoostBagging(fraction_evaluate=0.0), XGBoostCyclic(fraction_evaluate=0.0)):
        with pytest.raises(covey.WeightsError, match=r"initial weights: .*" + message):
            covey.simulate(client_fn, 2, 1, strategy, start)
    assert built == []


def test_a_simulations_run_dir_keeps_its_final_model_as_the_docs_say(tmp_path: Path) -> None:
    # docs/deployment.md said simulate() keeps no weights files; with run_dir it keeps
    # the newest two rounds', the final model among them, bit for bit.
    from covey.server import RunStore

    result = covey.simulate(
        _client, 2, 3, covey.FedAvg(), logistic_init(64, 10), run_dir=tmp_path / "r"
    )
    kept = sorted(p.name for p in (tmp_path / "r" / "weights").iterdir())
    assert kept == ["round-00002.safetensors", "round-00003.safetensors"]
    with RunStore.open(tmp_path / "r") as store:
        weights, _, _ = store.load_round(3)
    assert all(np.array_equal(weights[n], result.weights[n]) for n in result.weights)


def test_the_best_round_loads_as_the_simulation_guide_shows(tmp_path: Path) -> None:
    # The guide passed best_round's (round, value) to load_round, which failed with
    # "int() argument must be ... not 'tuple'".
    from covey.server import RunStore

    strategy = covey.FedAvg(fraction_evaluate=1.0)
    run_dir = tmp_path / "r"
    result = covey.simulate(
        _client, 2, 3, strategy, logistic_init(64, 10), run_dir=run_dir, keep_last=None
    )
    best, value = result.history.best_round("accuracy", source="evaluate")
    with RunStore.open(run_dir) as store:
        weights, record, _ = store.load_round(best)
        assert set(weights) == set(result.weights)
        assert record is not None
        with pytest.raises(TypeError, match=r"got the tuple \(\d+, .*best_round gives"):
            store.load_round((best, value))  # type: ignore[arg-type]


def test_an_xgboost_checkpoint_in_ubjson_is_named_so() -> None:
    xgb = pytest.importorskip("xgboost")
    from covey.xgboost import XGBoostBagging, XGBoostClient, initial_model, to_weights

    params = {"objective": "binary:logistic", "base_score": 0.5, "max_depth": 2, "nthread": 1}
    x = np.random.default_rng(0).normal(size=(40, 4))
    y = (x[:, 0] > 0).astype(int)
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=2)
    said = r"UBJSON format \(save_raw\(\)'s default\), not JSON.*booster\.save_raw\('json'\)"
    # Before, to_weights took save_raw()'s UBJSON, and the run was refused as "not an
    # XGBoost JSON model ... (a model's bytes averaged by a strategy for arrays, such as
    # FedAvg ...)", of a run no strategy had touched yet.
    with pytest.raises(ValueError, match=said):
        to_weights(booster.save_raw(), 1 << 16)
    start = {k: v.copy() for k, v in initial_model(params, 4, capacity=1 << 16).items()}
    raw = np.frombuffer(bytes(booster.save_raw("ubj")), dtype=np.uint8)
    start["model"][: raw.size] = raw
    start["size"][0] = raw.size
    strategy = XGBoostBagging(fraction_evaluate=0.0)
    fed = (lambda cid: XGBoostClient(x, y, params), 2, 1, strategy)
    with pytest.raises(covey.WeightsError, match=r"initial weights: the model is in .*" + said):
        covey.simulate(*fed, start)
    # A damaged JSON start is not said to be averaged either.
    start = {k: v.copy() for k, v in initial_model(params, 4, capacity=1 << 16).items()}
    start["model"][:8] = ord("A")
    with pytest.raises(covey.WeightsError, match="not an XGBoost JSON model") as refused:
        covey.simulate(*fed, start)
    assert "FedAvg" not in str(refused.value)
    result = covey.simulate(*fed, to_weights(booster.save_raw("json"), 1 << 16))  # as it says
    assert [r.round for r in result.history.rounds] == [0, 1]


def test_an_xgboost_start_of_other_classes_than_the_clients_is_named() -> None:
    pytest.importorskip("xgboost")
    from covey.xgboost import XGBoostBagging, XGBoostClient, initial_model

    binary = {"objective": "binary:logistic", "base_score": 0.5, "max_depth": 2, "nthread": 1}
    three = {**binary, "objective": "multi:softprob", "num_class": 3}
    x = np.random.default_rng(0).normal(size=(40, 4))
    y = (x[:, 0] > 0).astype(int)
    said = (
        r"the global model has 3 classes \(objective 'multi:softprob'\), this client's params "
        r"no classes \(objective 'binary:logistic'\): start the federation from a model made "
        r"with the clients' params"
    )
    # Before, XGBoost's own "Check failed: info.labels.Size() == preds.Size() (40 vs. 120)".
    with pytest.raises(covey.FederationError, match=r"WeightsError: " + said):
        covey.simulate(
            lambda cid: XGBoostClient(x, y, binary),
            2,
            1,
            XGBoostBagging(fraction_evaluate=0.0),
            initial_model(three, 4, capacity=1 << 16),
        )
    fitted = XGBoostClient(x, y % 3, three).fit(initial_model(three, 4, capacity=1 << 16), {})
    assert fitted.num_examples == 40


@pytest.mark.parametrize(
    ("declared", "said"),
    [(2**62, "more than a terabyte long"), (200_000_000, "200,000,000 bytes long")],
)
def test_a_weights_file_declaring_a_huge_header_is_refused_in_words(
    tmp_path: Path, declared: int, said: str
) -> None:
    import struct

    from covey.server import RunStore

    with RunStore.create(tmp_path / "run", config={}) as store:
        store.save_round(0, logistic_init(3, 2), None)
    path = tmp_path / "run" / "weights" / "round-00000.safetensors"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", declared) + data[8:])
    # Before, "its header would be more than a terabyte bytes long".
    with RunStore.open(tmp_path / "run") as store, pytest.raises(ValueError, match="corrupt") as no:
        store.load_round(0)
    assert f"its header would be {said}, in a file of {len(data):,} bytes" in str(no.value)

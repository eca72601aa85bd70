"""covey.torch: a TorchClient keeps layers local (FedBN, FedPer), in fit, evaluate and on disk."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import covey  # noqa: E402
from _procs import killed_then_resumed  # noqa: E402
from _torchkit import one_thread, tiny_loader  # noqa: E402
from covey.clients._current import within  # noqa: E402
from covey.core import WeightsError  # noqa: E402
from covey.torch import TorchClient, to_weights  # noqa: E402

BN = ["1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    yield from one_thread()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))


def _client(seed: int = 0, **kwargs: object) -> TorchClient:
    return TorchClient(
        _model(),
        nn.CrossEntropyLoss(),
        lambda params: torch.optim.SGD(params, lr=0.1),
        tiny_loader(16, seed),
        **kwargs,  # type: ignore[arg-type]
    )


def _own(client: TorchClient) -> dict[str, np.ndarray]:
    return to_weights(client.model, copy=True)


def test_local_layers_send_no_update_and_keep_the_clients_values() -> None:
    client = _client(local=[nn.BatchNorm1d, "2.*"])
    glob = to_weights(_model(), copy=True)
    result = client.fit(glob, {"round": 1})
    assert result.delta is not None
    local = [*BN, "2.weight", "2.bias"]
    for name in local:
        assert not result.delta[name].any(), name
        assert result.delta[name].dtype == glob[name].dtype
    assert result.delta["0.weight"].any()  # the shared layer trains and is sent
    after = _own(client)
    assert int(after["1.num_batches_tracked"]) == 2
    assert not np.array_equal(after["1.running_mean"], glob["1.running_mean"])
    # evaluate and the next fit start from the client's own values, not the global ones
    evaluated = client.evaluate(glob, {"round": 1})
    for name in local:
        assert np.array_equal(_own(client)[name], after[name]), name
    plain = _client()  # the global model as it is: another loss
    assert plain.evaluate(glob, {"round": 1}).loss != evaluated.loss
    client.fit(glob, {"round": 2})
    assert int(_own(client)["1.num_batches_tracked"]) == 4


def _fedbn(cid: int) -> TorchClient:
    return _client(cid, local=[nn.BatchNorm1d])


def test_fedbn_leaves_the_global_normalization_as_it_was() -> None:
    init = to_weights(_model(), copy=True)
    runs = [
        covey.simulate(
            _fedbn, 2, 2, covey.FedAvg(), init, backend=backend, num_workers=1, round_timeout=60
        )
        for backend in ("inline", "process")
    ]
    result = runs[0]
    for name in init:  # the process backend gives the same bits
        assert np.array_equal(runs[1].weights[name], result.weights[name]), name
    losses = [[r.evaluate_loss for r in run.history.rounds] for run in runs]
    assert losses[0] == losses[1]  # each client evaluated its own normalization
    assert result.history.failures() == []
    for name in BN:
        assert np.array_equal(result.weights[name], init[name]), name
    assert result.weights["1.num_batches_tracked"].dtype == np.int64
    assert not np.array_equal(result.weights["0.weight"], init["0.weight"])


def test_local_path_gives_a_rebuilt_client_its_layers(tmp_path: Path) -> None:
    path = tmp_path / "0.covey"
    glob = to_weights(_model(), copy=True)
    first = _client(local=["2.*"], local_path=path)
    first.fit(glob, {"round": 1})
    kept = _own(first)
    again = _client(local=["2.*"], local_path=path)  # a restart
    again.evaluate(glob, {"round": 2})
    assert np.array_equal(_own(again)["2.weight"], kept["2.weight"])
    assert np.array_equal(_own(again)["0.weight"], glob["0.weight"])
    other = _client(local=["0.*"], local_path=path)  # another client's file
    with pytest.raises(WeightsError, match=r"holds \['2.bias', '2.weight'\]"):
        other.fit(glob, {"round": 2})


def test_local_entries_that_pick_nothing_are_refused() -> None:
    with pytest.raises(ValueError, match=r"local entry 'head.\*' picks none .*0.weight"):
        _client(local=["head.*"])
    with pytest.raises(ValueError, match="local entry 'BatchNorm2d' picks none"):
        _client(local=[nn.BatchNorm2d])
    # State no client sends is told so, with what to do: it said only "picks none".
    first = nn.Linear(4, 5)
    first.register_buffer("scratch", torch.zeros(2), persistent=False)
    model = nn.Sequential(first, nn.Dropout(0.0), nn.Linear(5, 3))
    loader = tiny_loader(16, 0)
    with pytest.raises(
        ValueError,
        match=r"picks none .*; it picks buffers registered with persistent=False \(0\.scratch\), "
        "which are not in the state_dict: no client sends them, so leave them out of local",
    ):
        TorchClient(model, nn.CrossEntropyLoss(), torch.optim.SGD, loader, local=["*.scratch"])
    with pytest.raises(
        ValueError,
        match=r"'Dropout' picks none .*; the model's Dropout layers hold no parameters nor "
        "persistent buffers, so no client sends anything of them: leave them out of local",
    ):
        TorchClient(model, nn.CrossEntropyLoss(), torch.optim.SGD, loader, local=[nn.Dropout])
    with pytest.raises(TypeError, match=r"a list of patterns or module classes: \['2.\*'\]"):
        _client(local="2.*")
    with pytest.raises(TypeError, match="got int 3"):
        _client(local=[3])


def test_a_tied_tensor_local_under_one_name_only_is_refused() -> None:
    # One tensor under two names would otherwise take the mean of the client's own
    # value and the global one at every load.
    first, second = nn.Linear(5, 3), nn.Linear(5, 3, bias=False)
    second.weight = first.weight
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), first, second)
    loader = tiny_loader(16)
    optimizer = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    with pytest.raises(ValueError, match=r"local picks \['2.weight'\] but not \['3.weight'\]"):
        TorchClient(model, nn.CrossEntropyLoss(), optimizer, loader, local=["2.*"])
    TorchClient(model, nn.CrossEntropyLoss(), optimizer, loader, local=["2.*", "3.*"])


SCRIPT = """
import os, signal, sys
from pathlib import Path
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import covey
from covey.torch import TorchClient, to_weights

torch.set_num_threads(1)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))


class Killed(TorchClient):
    def fit(self, weights, config):
        result = super().fit(weights, config)  # client 0's layers of round 3 are on disk
        if __name__ == "__main__" and config["round"] == 3 and self.cid == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return result


def client(cid, states):
    g = torch.Generator().manual_seed(cid)
    n = 16 + 8 * cid
    data = TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
    made = Killed(model(), nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1),
                  DataLoader(data, batch_size=8), local=[nn.BatchNorm1d, "2.*"],
                  local_path=None if states is None else Path(states) / f"l{cid}.bin")
    made.cid = cid
    return made


def run(run_dir, states, resume, rounds=5):
    return covey.simulate(
        lambda cid: client(cid, states), num_clients=3, rounds=rounds,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights=to_weights(model(), copy=True), run_dir=run_dir, resume=resume,
    )


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], False)
"""


def test_a_killed_run_resumes_with_its_clients_local_layers(tmp_path: Path) -> None:
    namespace, whole = killed_then_resumed(tmp_path, SCRIPT, "local_run", "l")
    run = namespace["run"]
    # Without the files, the resumed clients start their local layers afresh from the model.
    run(tmp_path / "lost", None, False, rounds=2)
    lost = dict(run(tmp_path / "lost", None, True).weights)
    assert any(not np.array_equal(lost[k], v) for k, v in whole.items())


def test_a_round_sent_again_starts_from_the_layers_before_it(tmp_path: Path) -> None:
    glob = to_weights(_model(), copy=True)
    kept = _client(local=["2.*"])
    whole = [kept.fit(glob, {"round": r}).delta for r in (1, 2, 3)]
    path = tmp_path / "0.covey"
    first = _client(local=["2.*"], local_path=path)
    for r in (1, 2, 3):
        first.fit(glob, {"round": r})
    for client in (first, _client(local=["2.*"], local_path=path)):  # kept, and rebuilt
        for r in (2, 3):  # round 2 sent again after round 3 trained
            got = client.fit(glob, {"round": r}).delta
            assert got is not None
            for name, value in whole[r - 1].items():  # type: ignore[union-attr]
                np.testing.assert_array_equal(got[name], value)


def test_the_first_round_sent_again_after_the_second_starts_afresh(tmp_path: Path) -> None:
    # Killed in round 2 while round 1's checkpoint was written, a run resumes from
    # round 0 and sends round 1 again: the file then holds rounds 2 and 1, and was
    # refused as another run's.
    glob = to_weights(_model(), copy=True)
    path = tmp_path / "0.covey"
    client = _client(local=["2.*"], local_path=path)
    whole = [client.fit(glob, {"round": r}).delta for r in (1, 2)]
    rebuilt = _client(local=["2.*"], local_path=path)
    for r in (1, 2):
        got = rebuilt.fit(glob, {"round": r}).delta
        assert got is not None
        for name, value in whole[r - 1].items():  # type: ignore[union-attr]
            np.testing.assert_array_equal(got[name], value, err_msg=f"round {r}: {name}")


def test_scaffold_leaves_the_local_layers_uncorrected() -> None:
    # Before: the server's c - c_i was added to the local layers' gradients too, though
    # they have no global model to drift from.
    glob = to_weights(_model(), copy=True)
    trained = []
    for value in (0.0, 5.0):
        # c on the local layer only: the shared ones train alike in both fits
        control = {k: np.full_like(v, value if k == "2.weight" else 0.0) for k, v in glob.items()}
        client = _client(local=["2.*"])
        client.fit(glob, {"round": 1, "extras": {"scaffold_c": control}})
        trained.append(_own(client))
    for name in glob:
        np.testing.assert_array_equal(trained[0][name], trained[1][name])


def test_a_local_layers_file_of_another_shape_is_refused_naming_it(tmp_path: Path) -> None:
    # refused as the global model's: "weight '2.weight' has shape (4, 5), the model's is (3, 5)"
    path = tmp_path / "0.covey"
    torch.manual_seed(0)
    wider = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 4))
    other = TorchClient(
        wider,
        nn.CrossEntropyLoss(),
        lambda params: torch.optim.SGD(params, lr=0.1),
        tiny_loader(16, 0),
        local=["2.*"],
        local_path=path,
    )
    other.fit(to_weights(wider, copy=True), {"round": 1})
    glob = to_weights(_model(), copy=True)
    for call in ("fit", "evaluate"):
        client = _client(local=["2.*"], local_path=path)
        with pytest.raises(WeightsError) as info:
            getattr(client, call)(glob, {"round": 2})
        assert str(info.value) == (
            f"the local layers' file {path} holds '2.weight' of shape (4, 5), the model's is "
            "(3, 5): it is another model's; delete it to start the local layers afresh from "
            "the model"
        )


def test_local_path_without_local_layers_is_refused(tmp_path: Path) -> None:
    # ignored: every layer was global, and nothing was written to the file
    path = tmp_path / "0.covey"
    with pytest.raises(ValueError, match=r"^local_path=") as info:
        _client(local_path=path)
    assert str(info.value) == (
        f"local_path={str(path)!r} keeps the local layers, but local= names none: give "
        "local=[...] the layers to keep (patterns such as 'head.*', or module classes), "
        "or leave local_path out"
    )


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_fit_copies_its_local_layers_only(tmp_path: Path, on_disk: bool) -> None:
    # each fit copied the whole model once or twice to keep a small head's values
    def make(**kwargs: object) -> TorchClient:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 512), nn.Linear(512, 512), nn.Linear(512, 3))
        return TorchClient(
            model,
            nn.CrossEntropyLoss(),
            lambda params: torch.optim.SGD(params, lr=0.1),
            tiny_loader(16, 0),
            **kwargs,  # type: ignore[arg-type]
        )

    def peak(client: TorchClient) -> int:
        glob = to_weights(make().model, copy=True)
        client.fit(glob, {"round": 1})  # the first fit takes the global head
        tracemalloc.start()
        try:
            client.fit(glob, {"round": 2})
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    path = tmp_path / "0.covey" if on_disk else None
    plain = peak(make())  # the delta: one model's size
    assert peak(make(local=["2.*"], local_path=path)) < 1.5 * plain


def test_a_module_s_name_given_for_its_entries_is_refused_naming_the_pattern() -> None:
    # said only the model's first eight names, which left out the module's own
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(5)], nn.Linear(4, 3))
    for given in ("5", "5."):
        with pytest.raises(ValueError, match=r"^local entry") as info:
            TorchClient(model, nn.CrossEntropyLoss(), torch.optim.SGD, [], local=[given])
        assert str(info.value) == (
            f"local entry {given!r} picks none of the model's state_dict names: it names a "
            "module, whose entries are 5.weight, 5.bias; give '5.*' to keep them all local"
        )


def test_a_module_class_picks_a_module_shared_under_two_names_under_both() -> None:
    # refused as tied weights local under '1.weight' only: the class picked the first name
    norm = nn.BatchNorm1d(4)
    model = nn.Sequential(nn.Linear(4, 4), norm, nn.Linear(4, 4), norm, nn.Linear(4, 3))
    client = TorchClient(model, nn.CrossEntropyLoss(), torch.optim.SGD, [], local=[nn.BatchNorm1d])
    assert sorted(client._local.names) == sorted(
        f"{i}.{k}"
        for i in (1, 3)
        for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    )


def test_scaffold_sends_no_control_variate_change_for_the_local_layers() -> None:
    # Before: c_i of a local layer took its mean gradient, and the change went to the
    # server, whose c then drifted for a layer no client corrects with it.
    glob = to_weights(_model(), copy=True)
    zeros = {k: np.zeros_like(v) for k, v in glob.items()}
    client = _client(local=[nn.BatchNorm1d, "2.*"])
    for rnd in (1, 2):
        result = client.fit(glob, {"round": rnd, "extras": {"scaffold_c": zeros}})
        change = result.extras["scaffold_delta_c"]
        for name in [*BN, "2.weight", "2.bias"]:
            assert not change[name].any(), name
            assert change[name].dtype == glob[name].dtype
        assert change["0.weight"].any()  # the shared layer's c_i learns
    assert client._control is not None
    assert client._control.value is not None
    assert not client._control.value["2.weight"].any()


_CONTROLS: list[dict[str, np.ndarray]] = []  # the server's c each fit was sent


class _Seen(TorchClient):
    """A client that records the server's ``c`` each fit is sent."""

    def fit(self, weights, config):
        _CONTROLS.append({k: np.array(v) for k, v in config["extras"]["scaffold_c"].items()})
        return super().fit(weights, config)


@pytest.mark.parametrize("compression", [None, "q8"])
def test_the_servers_control_variate_stays_zero_for_the_local_layers(
    compression: str | None,
) -> None:
    _CONTROLS.clear()

    def make(cid: int) -> TorchClient:
        loader = tiny_loader(16, cid)
        optimizer = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
        return _Seen(_model(), nn.CrossEntropyLoss(), optimizer, loader, local=["2.*"])

    init = to_weights(_model(), copy=True)
    strategy = covey.Scaffold(num_clients=2, fraction_evaluate=0.0)
    result = covey.simulate(make, 2, 3, strategy, init, round_timeout=60, compression=compression)
    assert result.history.failures() == []
    last = _CONTROLS[-1]  # the c of round 3, after two rounds of changes
    assert not last["2.weight"].any()
    assert not last["2.bias"].any()
    assert last["0.weight"].any()
    for name in ("2.weight", "2.bias"):
        np.testing.assert_array_equal(result.weights[name], init[name])


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_one_local_path_shared_by_two_clients_is_refused(tmp_path: Path, backend: str) -> None:
    # Before: clients built per task (client_cache=0, or the process backend's workers)
    # each read the file another client had written, and trained on its layers silently.
    path = tmp_path / "shared.covey"

    def make(cid: int) -> TorchClient:
        return _client(cid, local=[nn.BatchNorm1d], local_path=path)

    options: dict[str, object] = {"backend": backend}
    if backend == "inline":
        options["client_cache"] = 0
    with pytest.raises(covey.FederationError, match="client 1: ") as info:
        covey.simulate(
            make,
            2,
            1,
            covey.FedAvg(fraction_evaluate=0.0),
            to_weights(_model(), copy=True),
            num_workers=1,
            round_timeout=60,
            **options,  # type: ignore[arg-type]
        )
    assert f"the local layers' file {path} is client 0's, not client 1's" in str(info.value)


def test_a_client_reads_back_its_own_local_path_in_a_task(tmp_path: Path) -> None:
    # the owner is the runtime's client id; a fit called directly (no task) checks none
    path = tmp_path / "3.covey"
    glob = to_weights(_model(), copy=True)
    within(3, 1, _client(local=["2.*"], local_path=path).fit, glob, {"round": 1})
    within(3, 2, _client(local=["2.*"], local_path=path).fit, glob, {"round": 2})
    _client(local=["2.*"], local_path=path).fit(glob, {"round": 3})
    with pytest.raises(WeightsError, match="is client 3's, not client 4's"):
        within(4, 4, _client(local=["2.*"], local_path=path).evaluate, glob, {"round": 4})


LOCAL = [nn.BatchNorm1d, "2.*"]


def _noised(weights: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """``weights`` with the local entries' floats noised, as central DP noises them."""
    rng = np.random.default_rng(seed)
    return {
        k: v + rng.normal(0, 0.5, v.shape).astype(v.dtype)
        if k.startswith(("1.", "2.")) and v.dtype.kind == "f"
        else v
        for k, v in weights.items()
    }


@pytest.mark.parametrize("call", ["fit", "evaluate"])
def test_a_new_client_starts_its_local_layers_from_its_model(call: str) -> None:
    # Before: from the server's copy of them, which no update moves but central DP
    # noises every round: a client's first task started them from noise.
    glob = to_weights(_model(), copy=True)
    clean, noisy = _client(local=LOCAL), _client(local=LOCAL)
    first = getattr(clean, call)(glob, {"round": 3})
    second = getattr(noisy, call)(_noised(glob, 0), {"round": 3})
    for name, value in _own(clean).items():
        np.testing.assert_array_equal(_own(noisy)[name], value, err_msg=name)
    if call == "evaluate":
        assert first.loss == second.loss


def test_a_first_round_sent_again_starts_from_the_models_local_layers(tmp_path: Path) -> None:
    # Before: from the server's copy the second time, noised again by central DP
    glob = to_weights(_model(), copy=True)
    client = _client(local=LOCAL, local_path=tmp_path / "0.covey")
    first = client.fit(_noised(glob, 1), {"round": 1}).delta
    again = client.fit(_noised(glob, 2), {"round": 1}).delta
    assert first is not None
    assert again is not None
    for name, value in first.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_a_local_layers_file_whose_owner_is_no_id_is_refused(tmp_path: Path) -> None:
    from covey.core._codec import decode, encode

    path = tmp_path / "0.covey"
    glob = to_weights(_model(), copy=True)
    within(0, 1, _client(local=["2.*"], local_path=path).fit, glob, {"round": 1})
    stored = dict(decode(path.read_bytes()))
    assert int(stored["owner"]) == 0
    path.write_bytes(bytes(encode({**stored, "owner": np.array([0.5])})))
    with pytest.raises(ValueError, match=r"holds owner as float64\(1,\): it is not this client's"):
        _client(local=["2.*"], local_path=path).fit(glob, {"round": 2})


def test_a_round_sent_again_to_a_kept_client_without_a_file_starts_from_the_layers_before_it() -> (
    None
):
    # Before: without local_path it started from the layers as round 3 left them, so
    # a restarted server's round sent again gave other bits than the first time.
    glob = to_weights(_model(), copy=True)
    kept = _client(local=["2.*"])
    whole = [kept.fit(glob, {"round": r}).delta for r in (1, 2, 3)]
    for r in (2, 3, 1):  # rounds 2 and 3 sent again, then the client's first
        got = kept.fit(glob, {"round": r}).delta
        assert got is not None
        for name, value in whole[r - 1].items():  # type: ignore[union-attr]
            np.testing.assert_array_equal(got[name], value, err_msg=f"round {r}: {name}")
    # the evaluation of a round sent again judges the layers after it
    evaluated = _client(local=["2.*"])
    evaluated.fit(glob, {"round": 1})
    after_one = evaluated.evaluate(glob, {"round": 1}).loss
    evaluated.fit(glob, {"round": 2})
    assert evaluated.evaluate(glob, {"round": 1}).loss == after_one
    # kept: the last three fits; one sent again from before them is refused, naming them
    for r in (4, 5, 6):
        kept.fit(glob, {"round": r})
    with pytest.raises(ValueError, match=r"trained its local layers in rounds \[6, 5, 4\]"):
        kept.fit(glob, {"round": 2})

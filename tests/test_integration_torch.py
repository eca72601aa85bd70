"""covey.torch: state_dict <-> Weights without needless copies, TorchClient, the CNN example."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey import WeightsError

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from _torchkit import one_thread  # noqa: E402
from covey.torch import (  # noqa: E402
    TorchClient,
    evaluate_model,
    load_weights,
    to_state_dict,
    to_weights,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    yield from one_thread()


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _loader(n: int = 40, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return DataLoader(TensorDataset(x, y), batch_size=8)


def test_to_weights_shares_cpu_memory_read_only() -> None:
    net = _net()
    weights = to_weights(net)
    assert list(weights) == list(net.state_dict())  # buffers included, state_dict order
    assert "1.running_mean" in weights
    assert weights["1.num_batches_tracked"].dtype == np.int64
    param = net.state_dict()["0.weight"]
    assert np.shares_memory(weights["0.weight"], param.numpy())
    assert not weights["0.weight"].flags.writeable
    with torch.no_grad():
        param.add_(1.0)
    np.testing.assert_array_equal(weights["0.weight"], param.numpy())


def test_to_weights_copy_owns_its_memory() -> None:
    net = _net()
    weights = to_weights(net, copy=True)
    assert not np.shares_memory(weights["0.weight"], net.state_dict()["0.weight"].numpy())
    assert weights["0.weight"].flags.writeable


def test_bfloat16_becomes_float32() -> None:
    net = nn.Linear(2, 2).to(torch.bfloat16)
    weights = to_weights(net)
    assert weights["weight"].dtype == np.float32


def test_to_state_dict_shares_read_only_arrays_without_warning() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    array.setflags(write=False)
    tensors = to_state_dict({"w": array})
    assert np.shares_memory(tensors["w"].numpy(), array)


def test_load_weights_copies_in_place_and_keeps_parameter_identity() -> None:
    net, other = _net(), _net()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(2.0)
    before = [id(p) for p in net.parameters()]
    source = to_weights(other, copy=True)
    load_weights(net, source)
    assert [id(p) for p in net.parameters()] == before
    for name, value in to_weights(net).items():
        np.testing.assert_array_equal(value, source[name])
    assert not np.shares_memory(to_weights(net)["0.weight"], source["0.weight"])


def test_load_weights_names_what_does_not_match() -> None:
    net = _net()
    weights = to_weights(net, copy=True)
    del weights["0.bias"]
    with pytest.raises(WeightsError, match=r"missing \['0.bias'\]"):
        load_weights(net, weights)
    weights = to_weights(net, copy=True)
    weights["0.bias"] = np.zeros(9, dtype=np.float32)
    with pytest.raises(WeightsError, match=r"'0.bias' has shape \(9,\)"):
        load_weights(net, weights)


def test_a_failed_load_weights_leaves_the_model_unchanged() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    zeros = {k: np.zeros_like(v) for k, v in to_weights(net).items()}
    bad_shape = dict(zeros, **{"2.weight": np.zeros((4, 2), dtype=np.float32)})
    bad_dtype = dict(zeros, **{"2.bias": np.array(["a", "b"])})
    for bad, match in [
        (bad_shape, r"'2.weight' has shape"),
        (bad_dtype, r"'2.bias' has dtype <U1"),
    ]:
        with pytest.raises(WeightsError, match=match):
            load_weights(net, bad)
        after = net.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_an_expanded_buffer_is_named_and_the_model_left_unchanged() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)
            # one row of memory seen as four: copy_ cannot write it
            self.register_buffer("grid", torch.arange(3.0).expand(4, 3))

    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    zeros = {k: np.zeros(v.shape, dtype=v.dtype) for k, v in to_weights(net).items()}
    with pytest.raises(WeightsError, match=r"'grid' is an expanded tensor"):
        load_weights(net, zeros)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("entry", "value", "said"),
    [
        ("bn.num_batches_tracked", np.nan, r"'bn\.num_batches_tracked' holds NaN or inf"),
        ("bn.num_batches_tracked", np.inf, r"'bn\.num_batches_tracked' holds NaN or inf"),
        ("fc.weight", 1e300, r"'fc\.weight' holds 1e\+300, beyond the largest torch\.float32"),
    ],
    ids=["nan-into-int64", "inf-into-int64", "float64-beyond-float32"],
)
def test_values_a_cast_would_change_are_named_and_the_model_left_unchanged(
    entry: str, value: float, said: str
) -> None:
    # NaN went into an int64 buffer as -9223372036854775808, and 1e300 into float32 as inf.
    net = nn.Sequential()
    net.add_module("fc", nn.Linear(3, 2))
    net.add_module("bn", nn.BatchNorm1d(2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    weights = {k: v.astype(np.float64) for k, v in to_weights(net).items()}
    weights[entry] = np.full(np.shape(weights[entry]), value)
    with pytest.raises(WeightsError, match=said):
        load_weights(net, weights)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    weights[entry] = np.zeros(np.shape(weights[entry]))  # float64 within range: cast, taken
    load_weights(net, weights)


@pytest.mark.parametrize(
    ("entry", "array", "said"),
    [
        # int64 into float16 became inf; a float beyond int64 became INT64_MIN; 2**64-1 -1.
        ("fc.weight", np.full((2, 3), 100_000, np.int64), r"holds 1e\+05, beyond the largest"),
        ("bn.num_batches_tracked", np.array(1e30), r"holds values from 1e\+30 to 1e\+30"),
        ("bn.num_batches_tracked", np.array(2**64 - 1, np.uint64), r"beyond the model's torch"),
        ("bn.num_batches_tracked", np.array(-(2**40), np.int64), None),  # fits: taken
        ("fc.weight", np.full((2, 3), 60_000, np.int64), None),  # under 65504: taken
    ],
    ids=["int64-into-float16", "1e30-into-int64", "uint64-max-into-int64", "fits", "fits16"],
)
def test_integers_a_cast_would_change_are_named(entry: str, array: Any, said: str | None) -> None:
    net = nn.Sequential()
    net.add_module("fc", nn.Linear(3, 2).half())
    net.add_module("bn", nn.BatchNorm1d(2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    weights = {**to_weights(net, copy=True), entry: array}
    if said is None:
        load_weights(net, weights)
        assert float(net.state_dict()[entry].reshape(-1)[0]) == float(array.reshape(-1)[0])
        return
    with pytest.raises(WeightsError, match=said):
        load_weights(net, weights)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _hand_fit(weights: covey.Weights, mu: float) -> dict[str, np.ndarray]:
    """The same training as TorchClient.fit, written out by hand."""
    net = _net()
    net.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
    anchor = {k: p.detach().clone() for k, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()
    for _ in range(2):
        for x, y in _loader():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss = loss + 0.5 * mu * sum(
                ((p - anchor[k]) ** 2).sum() for k, p in net.named_parameters()
            )
            loss.backward()
            opt.step()
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_torch_client_fit_is_the_hand_written_loop(mu: float) -> None:
    initial = to_weights(_net(), copy=True)
    client = TorchClient(
        _net(), nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), _loader(), epochs=2
    )
    config: dict[str, object] = {"round": 1}
    if mu:
        config["proximal_mu"] = mu
    result = client.fit(initial, config)
    assert result.delta is not None
    assert result.num_examples == 40
    assert float(result.metrics["train_loss"]) > 0
    expected = _hand_fit(initial, mu)
    for name, delta in result.delta.items():
        np.testing.assert_allclose(initial[name] + delta, expected[name], rtol=1e-5, atol=1e-6)


def test_fedprox_keeps_the_update_closer_to_the_global_model() -> None:
    initial = to_weights(_net(), copy=True)

    def norm(mu: float) -> float:
        client = TorchClient(
            _net(), nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), _loader()
        )
        delta = client.fit(initial, {"round": 1, "proximal_mu": mu, "epochs": 3}).delta
        assert delta is not None
        params = dict(_net().named_parameters())
        return float(sum(np.sum(delta[k].astype(np.float64) ** 2) for k in params))

    assert norm(5.0) < 0.8 * norm(0.0)


def test_torch_client_evaluate_reports_loss_and_accuracy() -> None:
    net = _net()
    client = TorchClient(
        _net(), nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), _loader(), _loader(24)
    )
    result = client.evaluate(to_weights(net, copy=True), {"round": 1})
    assert result.num_examples == 24
    net.eval()
    x, y = next(iter(DataLoader(_loader(24).dataset, batch_size=24)))
    with torch.no_grad():
        out = net(x)
    assert result.loss == pytest.approx(float(nn.functional.cross_entropy(out, y)), rel=1e-5)
    assert result.metrics["accuracy"] == pytest.approx(float((out.argmax(1) == y).float().mean()))


def _binary(n: int = 40) -> tuple[Any, Any, nn.Module]:
    """Inputs, 0/1 labels (one in four is 1) and a logit model right on 35 of them."""
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    labels = (torch.arange(n) % 4 == 0).long()
    x[:, 0] = torch.where(labels == 1, 2.0, -2.0)
    x[::8, 0] *= -1  # every other positive is misclassified: 35 of 40 right
    net = nn.Linear(3, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[3.0, 0.0, 0.0]]))
        net.bias.zero_()
    return x, labels, net


class _Squeezed(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Any) -> Any:
        return self.inner(x).squeeze(1)


@pytest.mark.parametrize("outputs", ["(B, 1)", "(B,)"])
@pytest.mark.parametrize("targets", ["long (B,)", "float (B,)", "float (B, 1)", "bool (B,)"])
def test_binary_accuracy_of_one_logit_per_example(outputs: str, targets: str) -> None:
    x, labels, net = _binary()
    model = net if outputs == "(B, 1)" else _Squeezed(net)
    y = {
        "long (B,)": labels,
        "float (B,)": labels.float(),
        "float (B, 1)": labels.float()[:, None],
        "bool (B,)": labels.bool(),
    }[targets]

    def loss_fn(out: Any, target: Any) -> Any:
        return nn.functional.binary_cross_entropy_with_logits(
            out.reshape(-1), target.reshape(-1).float()
        )

    with torch.no_grad():
        expected = float(((net(x)[:, 0] > 0) == (labels == 1)).float().mean())
    assert expected == pytest.approx(0.875)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    _, n, metrics = evaluate_model(model, loss_fn, loader)
    assert n == 40
    assert metrics == {"accuracy": pytest.approx(expected)}


def test_binary_accuracy_of_probabilities_under_bce_loss() -> None:
    x, labels, net = _binary()
    model = nn.Sequential(net, nn.Sigmoid())
    loader = DataLoader(TensorDataset(x, labels.float()[:, None]), batch_size=8)
    _, _, metrics = evaluate_model(model, nn.BCELoss(), loader)
    assert metrics == {"accuracy": pytest.approx(0.875)}
    client = TorchClient(model, nn.BCELoss(), torch.optim.SGD, loader)
    result = client.evaluate(to_weights(model, copy=True), {"round": 1})
    assert result.metrics == {"accuracy": pytest.approx(0.875)}


def test_a_regression_loss_on_0_1_targets_has_no_accuracy() -> None:
    x, labels, net = _binary()
    loader = DataLoader(TensorDataset(x, labels.float()[:, None]), batch_size=8)
    assert evaluate_model(net, nn.MSELoss(), loader)[2] == {}


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main, self.aux = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x: Any) -> Any:
        return self.main(x), self.aux(x)


def test_a_model_with_several_outputs_evaluates_its_loss() -> None:
    ce = nn.CrossEntropyLoss()

    def loss_fn(out: Any, y: Any) -> Any:
        return ce(out[0], y) + 0.5 * ce(out[1], y)

    model = _TwoHeads()
    client = TorchClient(model, loss_fn, lambda p: torch.optim.SGD(p, lr=0.1), _loader())
    weights = client.initial_weights()
    assert client.fit(weights, {"round": 1}).num_examples == 40
    result = client.evaluate(weights, {"round": 1})
    assert result.num_examples == 40
    assert result.loss > 0
    assert result.metrics == {}


def test_a_summed_loss_gives_the_mean_loss_per_example_whatever_the_batch_size() -> None:
    # reduction="sum" was multiplied by the batch size again: 4x the loss with batches of
    # 4, 20x with batches of 20
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    weights = to_weights(net, copy=True)
    mean = evaluate_model(net, nn.CrossEntropyLoss(), _loader())[0]
    summed = nn.CrossEntropyLoss(reduction="sum")
    for batch_size in (4, 20):
        loader = DataLoader(_loader().dataset, batch_size=batch_size)
        assert evaluate_model(net, summed, loader)[0] == pytest.approx(mean, rel=1e-5)
        client = TorchClient(nn.Linear(4, 3), summed, lambda p: torch.optim.SGD(p, lr=0.0), loader)
        assert client.evaluate(weights, {}).loss == pytest.approx(mean, rel=1e-5)
        fitted = client.fit(weights, {"round": 1})  # lr 0: the loss at the weights sent
        assert fitted.metrics["train_loss"] == pytest.approx(mean, rel=1e-5)
    with pytest.raises(ValueError, match="reduction='none'"):
        TorchClient(_net(), nn.CrossEntropyLoss(reduction="none"), torch.optim.SGD, _loader())
    with pytest.raises(ValueError, match="reduction='none'"):
        evaluate_model(net, nn.CrossEntropyLoss(reduction="none"), _loader())


LOSSES = [nn.CrossEntropyLoss(), nn.CrossEntropyLoss(reduction="sum")]


@pytest.mark.parametrize(
    "loss_fn", [*LOSSES, nn.CrossEntropyLoss(ignore_index=2)], ids=["mean", "sum", "ignore-2"]
)
def test_targets_the_loss_ignores_count_for_nothing(loss_fn: Any) -> None:
    # Padding targets (-100) counted as examples: a model right on every real target had
    # accuracy 0.5, and each batch's mean loss was weighed by its padded size.
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    ignored = loss_fn.ignore_index
    x = torch.randn(12, 4)
    y = torch.tensor([0, 1, -1, -1, 1, 1, -1, 0, 1, 0, 0, -1])  # -1: padding
    y[y == -1] = ignored
    batches = [(x[:4], y[:4]), (x[4:5], y[4:5]), (x[5:], y[5:])]
    kept = y != ignored
    loss, n, metrics = evaluate_model(net, loss_fn, batches)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(net(x)[kept], y[kept])
        right = (net(x).argmax(dim=1) == y)[kept]
    assert loss == pytest.approx(float(expected), rel=1e-5)
    assert n == 12  # the examples given
    assert metrics["accuracy"] == pytest.approx(float(right.float().mean()))
    client = TorchClient(nn.Linear(4, 3), loss_fn, lambda p: torch.optim.SGD(p, lr=0.0), batches)
    fitted = client.fit(to_weights(net, copy=True), {"round": 1})  # lr 0: the loss at the weights
    assert fitted.metrics["train_loss"] == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match=r"every target .* the loss ignores"):
        evaluate_model(net, loss_fn, [(x[:2], torch.full((2,), ignored))])


def test_regression_outputs_have_no_accuracy() -> None:
    x = torch.randn(10, 3)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=5)
    loss, n, metrics = evaluate_model(nn.Linear(3, 1), nn.MSELoss(), loader)
    assert n == 10
    assert loss > 0
    assert metrics == {}


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        TorchClient(_net(), nn.CrossEntropyLoss(), torch.optim.SGD, _loader(), epochs=0)
    client = TorchClient(_net(), nn.CrossEntropyLoss(), torch.optim.SGD, [])
    with pytest.raises(ValueError, match="config 'epochs'"):
        client.fit(to_weights(_net(), copy=True), {"round": 1, "epochs": "2"})


def test_a_one_pass_iterator_of_batches_is_refused_when_the_client_is_built() -> None:
    batches = list(_loader())
    opt = torch.optim.SGD
    with pytest.raises(TypeError, match="train_loader is a generator, an iterator that is used"):
        TorchClient(_net(), nn.CrossEntropyLoss(), opt, (b for b in batches))
    with pytest.raises(TypeError, match="test_loader is a list_iterator"):
        TorchClient(_net(), nn.CrossEntropyLoss(), opt, batches, iter(batches))
    client = TorchClient(_net(), nn.CrossEntropyLoss(), opt, batches, epochs=2)
    weights = to_weights(_net(), copy=True)
    for rnd in (1, 2):  # a list is passed over again every epoch and round
        assert client.fit(weights, {"round": rnd}).num_examples == 40


def test_a_loss_class_an_optimizer_or_a_dataset_is_refused_naming_what_to_give() -> None:
    # Before, they failed in fit: "Boolean value of Tensor with more than one value is
    # ambiguous", "'SGD' object is not callable", "len() of a 0-d tensor".
    net, loss, opt, loader = _net(), nn.CrossEntropyLoss(), torch.optim.SGD, _loader()
    with pytest.raises(TypeError, match=r"loss_fn is the class CrossEntropyLoss: give an instance"):
        TorchClient(net, nn.CrossEntropyLoss, opt, loader)
    with pytest.raises(TypeError, match=r"optimizer_fn is an optimizer \(SGD\): give a function"):
        TorchClient(net, loss, torch.optim.SGD(net.parameters(), lr=0.1), loader)
    dataset = loader.dataset
    with pytest.raises(TypeError, match=r"train_loader is a TensorDataset.*DataLoader\(dataset"):
        TorchClient(net, loss, opt, dataset)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="test_loader is a TensorDataset"):
        TorchClient(net, loss, opt, loader, dataset)  # type: ignore[arg-type]


def test_a_torch_model_given_as_initial_weights_is_told_to_give_its_weights() -> None:
    # Before, simulate called the model as a function of no argument: "forward() missing
    # 1 required positional argument".
    def client_fn(cid: int) -> TorchClient:
        return TorchClient(_net(), nn.CrossEntropyLoss(), torch.optim.SGD, _loader())

    strategy = covey.FedAvg(fraction_evaluate=0.0)
    said = r"got Sequential: give the model's weights, covey\.torch\.to_weights\(model, copy=True\)"
    with pytest.raises(WeightsError, match=said):
        covey.simulate(client_fn, 2, 1, strategy, _net())
    from covey.deploy import serve

    with pytest.raises(WeightsError, match=said):
        serve(strategy, 1, _net(), "127.0.0.1:0", insecure=True)
    made = covey.simulate(client_fn, 2, 1, strategy, lambda: to_weights(_net(), copy=True))
    assert sorted(made.weights) == sorted(to_weights(_net()))  # a function making them is called


def test_simulated_federation_with_torch_clients() -> None:
    def client_fn(cid: int) -> TorchClient:
        return TorchClient(
            _net(), nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), _loader(seed=cid)
        )

    result = covey.simulate(
        client_fn,
        num_clients=3,
        rounds=3,
        strategy=covey.FedAvg(),
        initial_weights=to_weights(_net(), copy=True),
    )
    losses = [loss for _, loss in result.history.metric("loss", source="evaluate")]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_cnn_example_learns_non_iid_digits() -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import torch_digits
    finally:
        sys.path.remove(str(EXAMPLES))
    accuracy = torch_digits.compare(torch_digits.Digits(num_clients=8), rounds=8, mu=0.1)
    assert set(accuracy) == {"FedAvg", "FedProx(mu=0.1)"}
    assert all(a > 0.7 for a in accuracy.values()), accuracy


def test_exports() -> None:
    import covey.torch

    assert sorted(covey.torch.__all__) == [
        "TorchClient",
        "evaluate_model",
        "load_weights",
        "to_state_dict",
        "to_weights",
    ]

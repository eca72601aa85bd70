"""covey.torch and DPSGD given the usual slips of a PyTorch user: each named, with its fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from covey.core import Task  # noqa: E402
from covey.sim._inline import lent_weights_changed  # noqa: E402
from covey.torch import TorchClient, evaluate_model, to_weights  # noqa: E402


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Any) -> Any:
        return self.fc(x)


def _data(dtype: Any = torch.float32) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g, dtype=dtype)
    return DataLoader(TensorDataset(x, torch.randint(0, 3, (16,), generator=g)), batch_size=8)


def _sgd(params: Any) -> Any:
    return torch.optim.SGD(params, lr=0.1)


def test_a_float64_batch_for_a_float32_model_names_the_dtypes_and_the_fix() -> None:
    # It raised torch's "mat1 and mat2 must have the same dtype", naming neither fix.
    client = TorchClient(Net(), nn.CrossEntropyLoss(), _sgd, _data(torch.float64))
    weights = client.initial_weights()
    for run in (client.fit, client.evaluate):
        with pytest.raises(TypeError, match=r"inputs are torch\.float64.*weights torch\.float32"):
            run(weights, {"round": 1})
    with pytest.raises(TypeError) as caught:
        client.fit(weights, {"round": 1})
    assert ".float()" in str(caught.value)
    assert "model.double()" in str(caught.value)
    assert "torch.set_default_dtype" in str(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError)
    # The same data for a float64 model trains.
    model = Net().double()
    TorchClient(model, nn.CrossEntropyLoss(), _sgd, _data(torch.float64)).fit(
        to_weights(model, copy=True), {"round": 1}
    )


@pytest.mark.parametrize(
    ("model", "data", "fixes"),
    [
        (
            "half",
            torch.float32,
            "convert the data, .half() on the tensors, or the model, model.float()",
        ),
        (
            "bfloat16",
            torch.float32,
            "convert the data, .bfloat16() on the tensors, or the model, model.float()",
        ),
        (
            "float",
            torch.float16,
            "convert the data, .float() on the tensors, or the model, model.half()",
        ),
        (
            "half",
            torch.float64,
            "convert the data, .half() on the tensors (NumPy arrays are float64: "
            "torch.from_numpy(x).half()), or the model, model.double() (or "
            "torch.set_default_dtype(torch.float64) before building it)",
        ),
    ],
)
def test_a_batch_for_a_model_of_another_precision_names_the_casts_between_the_two(
    model: str, data: Any, fixes: str
) -> None:
    # A float16 model given float32 data was told to convert the data with .float() (which
    # it already was) or the model with model.double().
    client = TorchClient(getattr(Net(), model)(), nn.CrossEntropyLoss(), _sgd, _data(data))
    with pytest.raises(TypeError) as caught:
        client.fit(client.initial_weights(), {"round": 1})
    assert f"torch computes a layer in one dtype: {fixes} (torch: " in str(caught.value)


def test_a_model_whose_every_parameter_is_frozen_is_told_it_has_nothing_to_train() -> None:
    # It raised torch's "element 0 of tensors does not require grad and does not have a grad_fn".
    model = Net()
    model.requires_grad_(False)
    client = TorchClient(model, nn.CrossEntropyLoss(), _sgd, _data())
    with pytest.raises(ValueError, match=r"every parameter of the model has requires_grad=False"):
        client.fit(client.initial_weights(), {"round": 1})
    model.fc.bias.requires_grad_(True)  # one layer frozen, another not: it trains
    delta = client.fit(client.initial_weights(), {"round": 1}).delta
    assert delta is not None
    assert delta["fc.bias"].any()
    assert not delta["fc.weight"].any()


def test_an_error_of_another_kind_with_float64_data_is_torchs_own() -> None:
    def loss(out: Any, y: Any) -> Any:
        raise RuntimeError("the loss broke")

    client = TorchClient(Net().double(), loss, _sgd, _data(torch.float64))
    with pytest.raises(RuntimeError, match="the loss broke"):
        client.fit(client.initial_weights(), {"round": 1})


def test_a_model_class_is_refused_naming_the_instance_to_give() -> None:
    # It raised AttributeError: 'torch.device' object has no attribute '_apply'.
    with pytest.raises(TypeError, match=r"model is the class Net: give an instance, Net\(\)"):
        TorchClient(Net, nn.CrossEntropyLoss(), _sgd, _data())


@pytest.mark.parametrize("start", [True, False])
def test_evaluate_model_leaves_the_model_in_the_mode_it_found_it(start: bool) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    model.train(start)
    model[1].train(not start)  # a layer kept in another mode than the model's
    evaluate_model(model, nn.CrossEntropyLoss(), _data())
    assert model.training is start
    assert model[0].training is start
    assert model[1].training is not start


def test_evaluate_model_leaves_the_mode_when_it_fails() -> None:
    model = Net().train()
    with pytest.raises(TypeError, match="float64"):
        evaluate_model(model, nn.CrossEntropyLoss(), _data(torch.float64))
    assert model.training


def test_evaluate_model_gives_the_same_numbers_in_either_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model(torch.randn(8, 4))  # some running statistics
    model.eval()
    first = evaluate_model(model, nn.CrossEntropyLoss(), _data())
    model.train()
    assert evaluate_model(model, nn.CrossEntropyLoss(), _data()) == first


def _task(kind: str, rnd: int, weights: dict[str, Any]) -> dict[int, Task]:
    return {0: Task(kind, rnd, {}, weights), 1: Task(kind, rnd, {}, weights)}


def test_the_in_place_write_error_names_batch_norm_and_the_task_it_happened_in() -> None:
    weights = to_weights(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), copy=True)
    said = lent_weights_changed(_task("evaluate", 2, weights), "the run stops")
    assert "later clients evaluated a changed model" in said
    assert "trained" not in said
    assert "BatchNorm running statistics ('1.running_mean'" in said
    assert "in train mode updates them in place" in said
    assert "call model.eval() before evaluating" in said
    said = lent_weights_changed(_task("fit", 2, weights), "the run stops")
    assert "later clients trained from a changed model" in said
    assert "BatchNorm" in said
    assert "model.eval()" not in said
    # Round 1 names the initial weights' views, for the task at hand.
    said = lent_weights_changed(_task("evaluate", 1, weights), "the run stops")
    assert "a model the clients go on to evaluate (or train)" in said
    # A model without BatchNorm is not told about it.
    plain = lent_weights_changed(_task("fit", 2, to_weights(Net(), copy=True)), "it stops")
    assert "BatchNorm" not in plain


def test_a_batch_norm_in_train_mode_writing_through_evaluate_is_named() -> None:
    import covey
    from covey.torch import to_state_dict

    class Writer(covey.Client):
        def __init__(self) -> None:
            self.model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))

        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            return covey.FitResult(
                delta={k: np.zeros_like(v) for k, v in weights.items()}, num_examples=1
            )

        def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
            self.model.load_state_dict(to_state_dict(weights), assign=True)
            self.model(torch.randn(8, 4))  # train mode: the running statistics move
            return covey.EvaluateResult(loss=0.0, num_examples=8)

    initial = to_weights(Writer().model, copy=True)
    strategy = covey.FedAvg(fraction_fit=1.0, fraction_evaluate=1.0)
    with pytest.raises(RuntimeError, match="changed in place") as caught:
        covey.simulate(lambda cid: Writer(), 2, 1, strategy, initial, progress=False)
    said = str(caught.value)
    assert "evaluate task" in said
    assert "later clients evaluated a changed model" in said
    assert "call model.eval()" in said


def test_central_dp_names_batch_norms_counter_and_how_to_drop_it() -> None:
    import covey
    from covey import privacy

    dp = privacy.central(covey.FedAvg(), noise_multiplier=1.0, clip=1.0, delta=1e-5)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with pytest.raises(TypeError, match=r"\['1\.num_batches_tracked'\]") as caught:
        dp.aggregator.init(to_weights(model))
    said = str(caught.value)
    assert "BatchNorm's num_batches_tracked buffer" in said
    assert "m.num_batches_tracked = None" in said
    assert "track_running_stats=False" in said
    assert "GroupNorm" in said
    # The fix it gives works: the counter leaves the weights, and the model still trains.
    model[1].num_batches_tracked = None  # type: ignore[assignment]
    dp.aggregator.init(to_weights(model))
    model.train()(torch.randn(8, 4))
    # Integer arrays of another origin are told no more than before.
    with pytest.raises(TypeError) as caught:
        dp.aggregator.init({"w": np.zeros(3), "c": np.zeros(2, np.int64)})
    assert "BatchNorm" not in str(caught.value)


def test_central_dp_says_how_to_keep_another_integer_buffer_out_of_the_weights() -> None:
    import covey
    from covey import privacy

    # It said "keep integer state out of the model", and no more on how.
    dp = privacy.central(covey.FedAvg(), noise_multiplier=1.0, clip=1.0, delta=1e-5)
    model = nn.Linear(4, 3)
    model.register_buffer("mask", torch.tensor([True, False, True]))
    with pytest.raises(TypeError, match=r"\['mask'\]") as caught:
        dp.aggregator.init(to_weights(model))
    said = str(caught.value)
    assert "register_buffer(name, tensor, persistent=False)" in said
    assert "BatchNorm" not in said
    # The fix it gives works: the buffer leaves the weights.
    model.register_buffer("mask", torch.tensor([True, False, True]), persistent=False)
    dp.aggregator.init(to_weights(model))


def _dpsgd(model: Any, loader: Any) -> Any:
    pytest.importorskip("opacus")
    from covey.privacy import DPSGD

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return DPSGD(
        model, optimizer, loader, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, seed=0
    )


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_dpsgd_refuses_a_loss_that_is_not_the_batchs_mean(reduction: str) -> None:
    # reduction="sum" trained, with Opacus told the mean: each example's gradient was scaled
    # by the batch's size before its clip, and the sum was reported as the mean loss.
    dp = _dpsgd(Net(), _data())
    with pytest.raises(ValueError, match=rf"reduction='{reduction}'.*loss_reduction='mean'"):
        dp.train(1, nn.CrossEntropyLoss(reduction=reduction), round=1)
    assert dp.ledger.rounds == 0  # refused before any step
    assert np.isfinite(dp.train(1, nn.CrossEntropyLoss(), round=1))


def test_dpsgd_names_a_float64_batch_for_a_float32_model() -> None:
    dp = _dpsgd(Net(), _data(torch.float64))
    with pytest.raises(TypeError, match=r"inputs are torch\.float64.*\.float\(\)") as caught:
        dp.train(1, round=1)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_dpsgd_refuses_a_dataset_or_a_class_naming_what_to_give() -> None:
    # A Dataset raised AttributeError inside Opacus; a model class, inside covey.
    data = _data().dataset
    with pytest.raises(TypeError, match=r"data_loader is a TensorDataset: give a torch\.utils"):
        _dpsgd(Net(), data)
    with pytest.raises(TypeError, match=r"DataLoader\(dataset, batch_size=64\)"):
        _dpsgd(Net(), data)
    with pytest.raises(TypeError, match="data_loader is a list"):
        _dpsgd(Net(), list(_data()))
    from covey.privacy import DPSGD

    with pytest.raises(TypeError, match="module is the class Net: give an instance"):
        DPSGD(Net, None, _data(), noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)

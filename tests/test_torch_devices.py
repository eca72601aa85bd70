"""covey.torch: a device the machine lacks, or a batch that is no pair, is refused naming it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from _torchkit import one_thread, tiny_loader  # noqa: E402
from covey.torch import TorchClient, evaluate_model  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    yield from one_thread()


def _client(device: Any) -> TorchClient:
    return TorchClient(
        nn.Linear(4, 3),
        nn.CrossEntropyLoss(),
        lambda p: torch.optim.SGD(p, lr=0.1),
        tiny_loader(),
        device=device,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_a_cuda_device_on_a_machine_without_one_is_refused_naming_it(device: Any) -> None:
    with pytest.raises(ValueError, match=r"device .*cuda.* is not available.*device='cpu'"):
        _client(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_central_evaluation_on_a_missing_cuda_device_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"device 'cuda' is not available.*device='cpu'"):
        evaluate_model(nn.Linear(4, 3), nn.CrossEntropyLoss(), tiny_loader(), device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
@pytest.mark.parametrize("device", [0, 1])
def test_a_device_index_on_a_machine_without_an_accelerator_is_refused(device: int) -> None:
    # torch's own text was "Cannot access accelerator device when none is available."
    with pytest.raises(
        ValueError,
        match=rf"device {device} is the index of an accelerator \(a CUDA device, "
        rf"'cuda:{device}'\), and this machine has none.*"
        r"covey trains on 'cpu', 'cuda:N' or 'mps'; give device='cpu'",
    ):
        _client(device)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_an_mps_device_on_a_machine_without_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"device 'mps' is not available.*device='cpu'"):
        _client("mps")


def test_a_string_that_is_no_device_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"device 'gpu' is not a torch device.*'cpu' or 'cuda:0'"):
        _client("gpu")


@pytest.mark.parametrize("device", [3.5, True, None])
def test_a_device_of_another_type_is_refused_naming_it(device: Any) -> None:
    with pytest.raises(TypeError, match=r"device must be a str .* got "):
        _client(device)


@pytest.mark.parametrize(
    ("batches", "said"),
    [
        (
            [(torch.randn(4, 4), torch.zeros(4, dtype=torch.long), torch.ones(4))],
            "got a tuple of 3",
        ),
        ([[torch.randn(4, 4)]], "got a list of 1 item"),
    ],
)
def test_a_batch_that_is_no_pair_is_named_with_its_length(batches: Any, said: str) -> None:
    client = TorchClient(
        nn.Linear(4, 3), nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), batches
    )
    weights = {k: v.detach().numpy().copy() for k, v in client.model.state_dict().items()}
    with pytest.raises(TypeError, match=f"must be a pair \\(inputs, targets\\), {said}"):
        client.fit(weights, {"round": 1})


def test_a_pair_of_tensors_given_as_the_loader_names_the_data_loader_to_build() -> None:
    x, y = torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
    client = TorchClient(
        nn.Linear(4, 3), nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), (x, y)
    )
    weights = {k: v.detach().numpy().copy() for k, v in client.model.state_dict().items()}
    with pytest.raises(
        TypeError,
        match=r"got Tensor: a loader given as the pair of tensors \(x, y\) yields x, then y; "
        r"give DataLoader\(TensorDataset\(x, y\), batch_size=\.\.\.\) instead",
    ):
        client.fit(weights, {"round": 1})

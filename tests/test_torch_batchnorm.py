"""covey.torch: a training batch of one example that BatchNorm cannot normalize is named."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from _torchkit import one_thread, tiny_loader  # noqa: E402
from covey.torch import TorchClient, to_weights  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    yield from one_thread()


def _normalized() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))


def _client(model: nn.Module, loader: DataLoader) -> TorchClient:
    return TorchClient(
        model, nn.CrossEntropyLoss(), lambda params: torch.optim.SGD(params, lr=0.1), loader
    )


def test_a_last_batch_of_one_example_names_drop_last() -> None:
    # 17 examples in batches of 8: the last batch holds one. Before: torch's bare
    # "Expected more than 1 value per channel when training", which named no fix.
    model = _normalized()
    client = _client(model, tiny_loader(17))
    with pytest.raises(ValueError, match="train_loader gave a batch of 1 example,") as caught:
        client.fit(to_weights(model, copy=True), {"round": 1})
    message = str(caught.value)
    assert "BatchNorm" in message
    assert "17 examples in batches of 8 leave 1" in message
    assert "drop_last=True" in message
    assert "batch_size" in message


def test_a_batch_size_of_one_is_named_too() -> None:
    model = _normalized()
    loader = DataLoader(tiny_loader(4).dataset, batch_size=1)
    with pytest.raises(ValueError, match=r"batch_size=1: every batch\): build train_loader"):
        _client(model, loader).fit(to_weights(model, copy=True), {"round": 1})

"""FedProx's and SCAFFOLD's gradient terms leave frozen parameters alone, whatever the optimizer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from covey.torch import TorchClient, to_weights  # noqa: E402


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    net[0].requires_grad_(False)  # a frozen feature extractor
    return net


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    ],
)
def test_fedprox_does_not_train_frozen_parameters(optimizer: Any) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
    client = TorchClient(
        _net(), nn.CrossEntropyLoss(), optimizer, DataLoader(TensorDataset(x, y), batch_size=4)
    )
    delta = client.fit(to_weights(_net(), copy=True), {"round": 1, "proximal_mu": 0.1}).delta
    assert delta is not None
    assert not np.any(delta["0.weight"])  # frozen: unchanged
    assert not np.any(delta["0.bias"])
    assert np.any(delta["2.weight"])  # the trained layer moved
    assert client.model[0].weight.grad is None


def test_scaffolds_correction_leaves_frozen_parameters_without_a_gradient() -> None:
    from covey.clients import torch_add_correction

    net = _net()
    correction = {k: np.zeros(tuple(p.shape), np.float32) for k, p in net.named_parameters()}
    torch_add_correction(net, correction)
    assert net[0].weight.grad is None
    assert net[0].bias.grad is None
    assert net[2].weight.grad is not None


def _sparse_embedding_grad() -> nn.Embedding:
    torch.manual_seed(0)
    emb = nn.Embedding(6, 3, sparse=True)
    emb(torch.tensor([1, 4, 1])).sum().backward()
    assert emb.weight.grad is not None
    assert emb.weight.grad.is_sparse
    return emb


def test_gradient_terms_reach_a_sparse_embedding_gradient() -> None:
    """add_ of a dense term into a sparse gradient raised: FedProx failed every client."""
    from covey.clients import torch_add_correction, torch_add_proximal_grad

    emb = _sparse_embedding_grad()
    grad = emb.weight.grad
    assert grad is not None
    dense = grad.to_dense()
    anchor = {"weight": np.zeros((6, 3), np.float32)}
    torch_add_proximal_grad(emb, anchor, 0.5)
    grad = emb.weight.grad
    assert grad is not None
    assert not grad.is_sparse
    expected = dense + 0.5 * emb.weight.detach()
    torch.testing.assert_close(emb.weight.grad, expected)

    emb = _sparse_embedding_grad()
    correction = {"weight": np.full((6, 3), 0.25, np.float32)}
    torch_add_correction(emb, correction)
    torch.testing.assert_close(emb.weight.grad, dense + 0.25)


def test_fedprox_trains_a_model_with_a_sparse_embedding() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 2))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 10, (16,), generator=g), torch.randint(0, 2, (16,), generator=g)
    client = TorchClient(
        net,
        nn.CrossEntropyLoss(),
        lambda p: torch.optim.SGD(p, lr=0.1),
        DataLoader(TensorDataset(x, y), batch_size=4),
    )
    start = to_weights(net, copy=True)
    delta = client.fit(start, {"round": 1, "proximal_mu": 0.1}).delta
    assert delta is not None
    assert np.any(delta["0.weight"])

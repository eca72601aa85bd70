"""covey.torch: a module's extra state that is not a tensor holds no weights."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import covey

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from _torchkit import one_thread, tiny_loader  # noqa: E402
from covey.torch import TorchClient, load_weights, to_weights  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    yield from one_thread()


class _Tagged(nn.Module):
    """A layer with settings kept in its state_dict as extra state (a dict, no tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.tag = "v1"

    def forward(self, x: Any) -> Any:
        return self.body(x)

    def get_extra_state(self) -> dict[str, str]:
        return {"tag": self.tag}

    def set_extra_state(self, state: dict[str, str]) -> None:
        self.tag = state["tag"]


def _tagged_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(_Tagged(), nn.ReLU(), nn.Linear(3, 3))


def test_extra_state_that_is_no_tensor_is_left_out_of_the_weights() -> None:
    net = _tagged_net()
    assert "0._extra_state" in net.state_dict()
    weights = to_weights(net, copy=True)
    assert list(weights) == ["0.body.weight", "0.body.bias", "2.weight", "2.bias"]
    other = _tagged_net()
    tagged = other[0]
    assert isinstance(tagged, _Tagged)
    tagged.tag = "mine"
    with torch.no_grad():
        tagged.body.weight.zero_()
    load_weights(other, weights)
    assert np.array_equal(tagged.body.weight.detach().numpy(), weights["0.body.weight"])
    assert tagged.tag == "mine"  # the module's own settings stay as they are


def test_a_model_with_extra_state_federates() -> None:
    def client_fn(cid: int) -> TorchClient:
        return TorchClient(
            _tagged_net(),
            nn.CrossEntropyLoss(),
            lambda p: torch.optim.SGD(p, lr=0.1),
            tiny_loader(seed=cid),
        )

    initial = to_weights(_tagged_net(), copy=True)
    result = covey.simulate(
        client_fn,
        num_clients=2,
        rounds=2,
        strategy=covey.FedAvg(fraction_fit=1.0, fraction_evaluate=1.0),
        initial_weights=initial,
    )
    assert list(result.weights) == list(initial)
    assert not np.array_equal(result.weights["2.weight"], initial["2.weight"])
    assert result.history.rounds[-1].fit_failures == []

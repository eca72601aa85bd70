"""TorchClient takes a per-round learning rate from the fit config, as LogisticClient does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import TensorDataset  # noqa: E402

import covey  # noqa: E402
from covey.torch import TorchClient, to_weights  # noqa: E402


def _batches() -> list[Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(8, 1, generator=g, dtype=torch.float64)
    data = TensorDataset(x, y)
    return [data[0:4], data[4:8]]


def _client(momentum: float = 0.0) -> Any:
    model = torch.nn.Linear(3, 1).double()
    return TorchClient(
        model,
        torch.nn.MSELoss(),
        lambda p: torch.optim.SGD(p, lr=0.5, momentum=momentum),
        _batches(),
    )


def _by_hand(weights: dict[str, np.ndarray], lr: float) -> dict[str, np.ndarray]:
    """Plain SGD on the mean squared error, batch by batch."""
    w, b = weights["weight"].copy(), weights["bias"].copy()
    for x, y in _batches():
        xn, yn = x.numpy(), y.numpy()
        g = 2 * (xn @ w.T + b - yn) / len(yn)
        w, b = w - lr * (g.T @ xn), b - lr * g.sum(0)
    return {"weight": w, "bias": b}


def test_the_fit_configs_lr_sets_the_optimizers_learning_rate() -> None:
    # The config's "lr" was ignored: a learning-rate schedule sent with on_fit_config
    # left TorchClient training at optimizer_fn's rate, silently.
    client = _client()
    start = to_weights(torch.nn.Linear(3, 1).double(), copy=True)
    result = client.fit(start, {"round": 1, "lr": 0.05})
    expected = _by_hand(start, 0.05)
    assert result.delta is not None
    for name in expected:
        np.testing.assert_allclose(start[name] + result.delta[name], expected[name], rtol=1e-12)
    # Without it, optimizer_fn's own rate.
    result = _client().fit(start, {"round": 1})
    assert result.delta is not None
    expected = _by_hand(start, 0.5)
    np.testing.assert_allclose(start["bias"] + result.delta["bias"], expected["bias"])


def test_a_schedule_sent_each_round_reaches_every_client() -> None:
    start = to_weights(torch.nn.Linear(3, 1).double(), copy=True)
    rates = {1: 0.1, 2: 0.01}
    strategy = covey.FedAvg(fraction_evaluate=0.0, on_fit_config=lambda rnd: {"lr": rates[rnd]})
    result = covey.simulate(lambda cid: _client(), 2, 2, strategy, start)
    expected = _by_hand(_by_hand(start, 0.1), 0.01)  # both clients train alike
    for name in expected:
        np.testing.assert_allclose(result.weights[name], expected[name], rtol=1e-12)


@pytest.mark.parametrize(
    "lr", [0, -0.1, float("inf"), True, "0.1", None, pytest.param(2**1100, id="int-past-float")]
)
def test_a_config_lr_that_is_no_rate_is_refused_naming_it(lr: object) -> None:
    start = to_weights(torch.nn.Linear(3, 1).double(), copy=True)
    with pytest.raises(ValueError, match=r"config 'lr' must be a finite number > 0, got"):
        _client().fit(start, {"round": 1, "lr": lr})

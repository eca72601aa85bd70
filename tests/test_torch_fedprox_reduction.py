"""TorchClient's FedProx term against a hand-computed replay, for a mean and a summed loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from covey.torch import TorchClient  # noqa: E402

SIZES = (3, 3, 2)  # the last batch is smaller: its term scales with its own size
LR, MU = 0.05, 0.7


def batches() -> list[tuple[Any, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for n in SIZES:
        x, t = rng.normal(size=(n, 2)), rng.normal(size=(n, 1))
        out.append((torch.tensor(x), torch.tensor(t)))
    return out


def initial() -> dict[str, np.ndarray]:
    return {"weight": np.array([[0.4, -0.3]]), "bias": np.array([0.2])}


def replay(summed: bool) -> dict[str, np.ndarray]:
    """SGD on ``loss + mu/2 ||w - w_global||^2``, the loss being a batch's mean or sum.

    A summed loss is the batch size times the mean, so the proximal term is scaled
    alike: every step descends ``B (mean loss + mu/2 ||w - w_global||^2)``.
    """
    w0, b0 = initial()["weight"][0], initial()["bias"][0]
    w, b = w0.copy(), b0
    for x, t in batches():
        xb, tb = x.numpy(), t.numpy()[:, 0]
        r = xb @ w + b - tb
        scale = 1.0 if summed else 1.0 / len(tb)
        gw = scale * 2 * xb.T @ r + (len(tb) if summed else 1.0) * MU * (w - w0)
        gb = scale * 2 * r.sum() + (len(tb) if summed else 1.0) * MU * (b - b0)
        w, b = w - LR * gw, b - LR * gb
    return {"weight": w[None, :] - w0[None, :], "bias": np.array([b - b0])}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_proximal_term_scales_with_the_losss_reduction(reduction: str) -> None:
    model = torch.nn.Linear(2, 1, dtype=torch.float64)
    client = TorchClient(
        model,
        torch.nn.MSELoss(reduction=reduction),
        lambda p: torch.optim.SGD(p, lr=LR),
        batches(),
    )
    result = client.fit(initial(), {"round": 1, "proximal_mu": MU})
    assert result.delta is not None
    expected = replay(summed=reduction == "sum")
    for name, value in expected.items():
        np.testing.assert_allclose(result.delta[name], value, rtol=1e-12, atol=1e-14)

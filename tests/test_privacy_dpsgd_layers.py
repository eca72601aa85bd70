"""DP-SGD through Opacus: what it cannot train is named, a model in eval mode is taken."""

from __future__ import annotations

import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from covey.privacy import DPSGD  # noqa: E402


def _dpsgd(net: nn.Module) -> DPSGD:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(60, 4, generator=g), torch.randint(0, 3, (60,), generator=g))
    return DPSGD(
        net,
        torch.optim.SGD(net.parameters(), lr=0.1),
        DataLoader(data, batch_size=20),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-5,
        seed=0,
    )


def _mlp(*middle: Any) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), *middle, nn.ReLU(), nn.Linear(8, 3))


def test_a_batch_norm_layer_is_refused_naming_it_and_the_fix() -> None:
    with pytest.raises(ValueError, match="Opacus cannot train these layers") as caught:
        _dpsgd(_mlp(nn.BatchNorm1d(8)))
    message = str(caught.value)
    assert "'1' (BatchNorm1d)" in message
    assert "ModuleValidator.fix(model)" in message
    assert type(caught.value) is ValueError  # not Opacus' list of errors


def test_a_model_in_eval_mode_is_taken_and_trained() -> None:
    net = _mlp()
    net.eval()  # as after evaluating the global model it received
    dp = _dpsgd(net)
    assert not net.training  # its mode is kept until it trains
    loss = dp.train(epochs=1)
    assert math.isfinite(loss)
    assert net.training
    assert dp.epsilon() > 0


def test_a_model_already_made_private_is_refused_saying_to_keep_one_dpsgd() -> None:
    net = _mlp()
    _dpsgd(net).train(epochs=1)
    with pytest.raises(ValueError, match=r"already made private by another DPSGD.*one DPSGD"):
        _dpsgd(net)

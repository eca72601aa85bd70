"""TorchClient when the global model's dtypes are not the model's own (float64, bfloat16)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from covey.torch import TorchClient, to_weights  # noqa: E402


def _client(dtype: Any) -> TorchClient:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g, dtype=dtype), torch.randint(0, 2, (16,), generator=g)
    return TorchClient(
        nn.Linear(4, 2).to(dtype),
        nn.CrossEntropyLoss(),
        lambda p: torch.optim.SGD(p, lr=0.1),
        DataLoader(TensorDataset(x, y), batch_size=8),
    )


@pytest.mark.parametrize(
    ("model", "global_dtype"),
    [
        (torch.float32, np.float64),
        (torch.float64, np.float32),
        (torch.bfloat16, np.float32),
        (torch.float32, np.float16),
    ],
)
def test_the_delta_comes_in_the_global_models_dtype(
    model: Any, global_dtype: type[np.floating[Any]]
) -> None:
    torch.manual_seed(0)
    init = {k: v.astype(global_dtype) for k, v in to_weights(nn.Linear(4, 2)).items()}
    client = _client(model)
    result = client.fit(init, {"round": 1})
    assert result.delta is not None
    assert {v.dtype for v in result.delta.values()} == {np.dtype(global_dtype)}
    assert all(np.any(v != 0) for v in result.delta.values())
    # and a federation of them runs: the server checks each delta against the global dtypes
    run = covey.simulate(lambda cid: _client(model), 2, 1, covey.FedAvg(), init)
    assert run.history.failures() == []
    assert {v.dtype for v in run.weights.values()} == {np.dtype(global_dtype)}


def test_load_weights_takes_big_endian_arrays_and_refuses_complex_ones() -> None:
    from covey import WeightsError
    from covey.torch import load_weights

    source = to_weights(nn.Linear(3, 2), copy=True)
    net = nn.Linear(3, 2)
    load_weights(net, {k: v.astype(v.dtype.newbyteorder(">")) for k, v in source.items()})
    for name, value in to_weights(net).items():
        np.testing.assert_array_equal(value, source[name])
    before = {k: v.copy() for k, v in to_weights(net).items()}
    bad = dict(source, bias=source["bias"] + 1j)
    with pytest.raises(WeightsError, match=r"'bias' is complex, the model's is torch.float32"):
        load_weights(net, bad)
    for name, value in to_weights(net).items():
        np.testing.assert_array_equal(value, before[name])


def test_load_weights_takes_ml_dtypes_bfloat16_arrays_and_checks_their_range() -> None:
    from covey import WeightsError
    from covey.torch import load_weights

    ml_dtypes = pytest.importorskip("ml_dtypes")
    net = nn.Linear(2, 1).to(torch.bfloat16)
    source = {"weight": np.array([[1.5, -2.25]]), "bias": np.array([3.0])}
    load_weights(net, {k: v.astype(ml_dtypes.bfloat16) for k, v in source.items()})
    for name, value in to_weights(net).items():
        np.testing.assert_array_equal(value, source[name])
    half = nn.Linear(2, 1).half()
    with pytest.raises(WeightsError, match=r"'weight' holds 9\.994e\+05, beyond the largest"):
        load_weights(half, {"weight": np.full((1, 2), 1e6, ml_dtypes.bfloat16), "bias": np.ones(1)})
    with pytest.raises(
        WeightsError, match=r"float8_e4m3fn, .*: convert it with .astype\(np.float32"
    ):
        load_weights(half, {"weight": np.ones((1, 2), ml_dtypes.float8_e4m3fn), "bias": np.ones(1)})


class Tied(nn.Module):
    """``out`` shares ``inp``'s weight: one tensor under two state_dict names."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 3, bias=False)
        self.out = nn.Linear(3, 3, bias=False)
        self.out.weight = self.inp.weight
        self.head = nn.Linear(3, 2)

    def forward(self, x: Any) -> Any:
        return self.head(torch.relu(self.out(torch.relu(self.inp(x)))))


def test_tied_weights_take_their_names_common_value_or_their_mean() -> None:
    # Two different values for one tensor: the first name's was dropped without a word
    # (a q8 or DP round aggregates each name on its own, so they do differ).
    from covey.torch import load_weights

    net = Tied()
    source = to_weights(Tied(), copy=True)
    load_weights(net, source)
    for name, value in to_weights(net).items():
        np.testing.assert_array_equal(value, source[name])
    apart = dict(source, **{"inp.weight": source["out.weight"] + 1.0})
    load_weights(net, apart)
    shared = net.inp.weight.detach().numpy()
    assert net.out.weight is net.inp.weight
    np.testing.assert_allclose(shared, source["out.weight"] + 0.5, rtol=1e-6)


def test_a_tied_model_trains_on_both_names_aggregates_under_q8() -> None:
    from covey.torch import load_weights

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 16, 3, generator=g), torch.randint(0, 2, (3, 16), generator=g)

    def client_fn(cid: int) -> TorchClient:
        data = DataLoader(TensorDataset(x[cid], y[cid]), batch_size=8)
        return TorchClient(
            Tied(), nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), data
        )

    torch.manual_seed(0)
    run = covey.simulate(
        client_fn, 3, 2, covey.FedAvg(), to_weights(Tied(), copy=True), compression="q8"
    )
    assert run.history.failures() == []
    final = Tied()
    load_weights(final, run.weights)
    mean = (run.weights["inp.weight"].astype(np.float64) + run.weights["out.weight"]) / 2
    np.testing.assert_allclose(final.inp.weight.detach().numpy(), mean, rtol=1e-6)


def test_the_torch_proximal_term_of_a_float16_model_is_finite_and_differentiable() -> None:
    from covey import clients

    torch.manual_seed(0)
    net = nn.Linear(1000, 1000).half()
    anchor = clients.torch_snapshot(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3)  # a sum of squares of about 90,000: past float16's 65504
    term = clients.torch_proximal_term(net, anchor, 1.0)
    expected = 0.5 * sum(
        float(((p.detach().double() - anchor[n].double()) ** 2).sum())
        for n, p in net.named_parameters()
    )
    assert float(term.detach()) == pytest.approx(expected, rel=1e-4)
    term.backward()
    assert net.weight.grad is not None
    assert torch.isfinite(net.weight.grad).all()

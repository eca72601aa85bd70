"""covey.torch with wrapped models: Opacus' GradSampleModule and torch.compile prefix the names."""

from __future__ import annotations

import numpy as np
import pytest

from covey import WeightsError

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from covey.torch import load_weights, to_weights  # noqa: E402


class _Compiled(nn.Module):
    """Holds its model as torch.compile's wrapper does (compiling itself is slow to import)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._orig_mod = model


def test_a_wrapped_model_and_plain_weights_are_told_apart_by_their_prefix() -> None:
    plain, wrapped = torch.nn.Linear(3, 2), _Compiled(torch.nn.Linear(3, 2))
    with pytest.raises(WeightsError, match=r"missing \['_orig_mod.weight', '_orig_mod.bias'\]"):
        load_weights(wrapped, to_weights(plain))
    with pytest.raises(WeightsError, match=r"model's names all start with '_orig_mod.'"):
        load_weights(wrapped, to_weights(plain))
    with pytest.raises(WeightsError, match=r"weights' names all start with '_orig_mod.'"):
        load_weights(plain, to_weights(wrapped))
    load_weights(wrapped._orig_mod, to_weights(plain))  # the wrapped module takes them
    np.testing.assert_array_equal(to_weights(wrapped)["_orig_mod.bias"], to_weights(plain)["bias"])


def test_unrelated_names_get_no_prefix_hint() -> None:
    with pytest.raises(WeightsError) as caught:
        load_weights(torch.nn.Linear(3, 2), {"w": np.zeros((2, 3)), "b": np.zeros(2)})
    assert "start with" not in str(caught.value)
    # A layer renamed from `new_fc` to `fc` was told "'new_' ... a wrapper's".
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(3, 2))
    renamed = {f"new_{k}": v for k, v in to_weights(model).items()}
    with pytest.raises(WeightsError) as caught:
        load_weights(model, renamed)
    assert "start with" not in str(caught.value)


def test_a_wrapper_prefix_is_named_whatever_the_order_of_the_names() -> None:
    plain = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    wrapped = _Compiled(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)))
    weights = dict(sorted(to_weights(plain).items(), reverse=True))  # read back in another order
    with pytest.raises(WeightsError, match=r"model's names all start with '_orig_mod.'"):
        load_weights(wrapped, weights)


def test_dpsgd_weights_load_and_read_through_the_module_it_was_given() -> None:
    pytest.importorskip("opacus")
    from torch.utils.data import DataLoader, TensorDataset

    from covey.privacy import DPSGD

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    global_model = to_weights(net, copy=True)
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    dp = DPSGD(
        net,
        torch.optim.SGD(net.parameters(), lr=0.5),
        DataLoader(data, batch_size=4),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-5,
        seed=0,
    )
    with pytest.raises(WeightsError, match=r"model's names all start with '_module.'"):
        load_weights(dp.module, global_model)
    load_weights(net, global_model)
    dp.train(epochs=1)
    trained = to_weights(net)
    assert list(trained) == list(global_model)
    assert not np.array_equal(trained["0.weight"], global_model["0.weight"])
    np.testing.assert_array_equal(trained["0.weight"], to_weights(dp.module)["_module.0.weight"])


def test_initial_weights_that_are_views_of_the_trained_model_are_named_as_the_cause() -> None:
    # It blamed a client for writing through NumPy's read-only flag, and nothing else.
    import covey
    from covey.torch import TorchClient

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]

    def client_fn(cid: int) -> TorchClient:
        optimizer = lambda p: torch.optim.SGD(p, lr=0.5)  # noqa: E731
        return TorchClient(model, nn.CrossEntropyLoss(), optimizer, data)

    strategy = covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0)
    with pytest.raises(RuntimeError) as caught:
        covey.simulate(client_fn, 2, 2, strategy, to_weights(model), progress=False)
    assert "round 1: the global weights changed in place" in str(caught.value)
    assert "give to_weights(model, copy=True)" in str(caught.value)
    # With a copy, the same clients train.
    model = nn.Linear(4, 3)
    result = covey.simulate(client_fn, 2, 2, strategy, to_weights(model, copy=True), progress=False)
    assert not any(r.failures for r in result.history.rounds)

"""DP-SGD through Opacus: the hospitals example trains better than chance and reports epsilon."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import privacy_hospitals  # noqa: E402

pytestmark = pytest.mark.slow


def test_hospitals_train_better_than_chance_and_report_epsilon() -> None:
    accuracy, spent = privacy_hospitals.run(rounds=3, noise_multiplier=1.0)
    y = privacy_hospitals.Y_TEST
    majority = max(np.mean(y), 1 - np.mean(y))
    assert accuracy > majority + 0.1
    assert len(spent) == privacy_hospitals.HOSPITALS
    assert all(0.0 < eps < 20.0 for eps in spent)


def test_client_ledger_agrees_with_opacus_and_grows_per_round() -> None:
    hospital = privacy_hospitals.Hospital(0, noise_multiplier=1.2)
    weights = privacy_hospitals.weights_of(privacy_hospitals.make_model())
    first = hospital.fit(weights, {"round": 1}).metrics["dp_epsilon"]
    second = hospital.fit(weights, {"round": 2}).metrics["dp_epsilon"]
    assert 0.0 < first < second
    # Opacus reads the same steps with its own RDP code (another RDP-to-DP conversion).
    assert hospital.dp.opacus_epsilon() == pytest.approx(second, rel=0.25)
    assert hospital.dp.ledger.rounds == 2 * len(hospital.dp.data_loader)


@pytest.mark.parametrize("drop_last", [False, True])
def test_the_ledger_accounts_the_rate_opacus_samples_at(drop_last: bool) -> None:
    import dp_accounting as dpa
    from torch.utils.data import DataLoader, TensorDataset

    from covey.privacy import DPSGD

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    data = TensorDataset(torch.randn(100, 4), torch.randint(0, 2, (100,)))
    loader = DataLoader(data, batch_size=30, drop_last=drop_last)  # 4 or 3 batches an epoch
    dp = DPSGD(
        net,
        torch.optim.SGD(net.parameters(), lr=0.1),
        loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-5,
        seed=0,
    )
    dp.train(epochs=2)
    rate = 1 / len(loader)
    assert dp.sampling_rate == pytest.approx(rate)
    accountant = dpa.rdp.RdpAccountant()
    accountant.compose(dpa.PoissonSampledDpEvent(rate, dpa.GaussianDpEvent(1.0)), 2 * len(loader))
    assert dp.epsilon() == pytest.approx(accountant.get_epsilon(1e-5))
    with pytest.raises(ValueError, match=r"delta must be a number in \(0, 1\)"):
        DPSGD(net, dp.optimizer, loader, noise_multiplier=1.0, max_grad_norm=1.0, delta=1.0)


def test_an_unknown_accountant_or_an_empty_loader_is_named() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from covey.privacy import DPSGD

    net = torch.nn.Linear(4, 2)
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    empty = TensorDataset(torch.randn(0, 4), torch.randint(0, 2, (0,)))
    settings: dict[str, Any] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = DataLoader(data, batch_size=4)
    with pytest.raises(ValueError, match="unknown accountant 'pdl'"):
        DPSGD(net, optimizer, loader, accountant="pdl", **settings)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no examples"):
        DPSGD(net, optimizer, DataLoader(empty, batch_size=4), **settings)


def test_a_delta_not_below_one_over_the_examples_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from covey.privacy import DPSGD

    net = torch.nn.Linear(4, 2)
    data = TensorDataset(torch.randn(50, 4), torch.randint(0, 2, (50,)))
    settings: dict[str, Any] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "seed": 0}
    with caplog.at_level("WARNING", logger="covey"):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        DPSGD(net, optimizer, DataLoader(data, batch_size=10), delta=1e-5, **settings)
        assert "not below 1 /" not in caplog.text
        net = torch.nn.Linear(4, 2)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        DPSGD(net, optimizer, DataLoader(data, batch_size=10), delta=0.05, **settings)
    assert "DPSGD: delta=0.05 is not below 1 / 50" in caplog.text

"""DP-SGD: every Poisson-sampled step is taken, the empty ones too, as the ledger accounts."""

from __future__ import annotations

import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from covey.privacy import DPSGD  # noqa: E402


def _dpsgd(net: Any, data: Any, batch_size: int = 2, **options: Any) -> Any:
    """DP-SGD of ``net`` on ``data`` in batches of ``batch_size`` (noise 1, clip 1, seed 0)."""
    return DPSGD(
        net,
        torch.optim.SGD(net.parameters(), lr=0.1),
        DataLoader(data, batch_size=batch_size),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-5,
        seed=0,
        **options,
    )


def test_an_empty_poisson_batch_still_takes_its_noisy_step() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    data = TensorDataset(torch.randn(10, 4), torch.randint(0, 2, (10,)))
    dp = _dpsgd(net, data)
    # What Opacus' Poisson loader yields when it draws no example: zero-length tensors.
    x, y = data[:3]
    dp.data_loader = [(x, y), (x[:0], y[:0]), (x[:1], y[:1])]
    moved: list[bool] = []
    step = dp.optimizer.step

    def watched_step() -> object:
        before = [p.detach().clone() for p in net.parameters()]
        out = step()
        moved.append(
            any(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))
        )
        return out

    dp.optimizer.step = watched_step
    loss = dp.train(epochs=1)
    assert not math.isnan(loss)  # the mean of the two batches that drew examples
    # The empty batch moved the model too (noise alone), and Opacus' accountant saw it.
    assert moved == [True, True, True]
    assert sum(n for *_, n in dp.engine.accountant.history) == dp.ledger.rounds == 3


@pytest.mark.parametrize("epochs", [0, -1, 1.5, True])
def test_epochs_that_train_nothing_are_refused(epochs: object) -> None:
    net = torch.nn.Linear(4, 2)
    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    dp = _dpsgd(net, data, 4)
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        dp.train(epochs)
    assert dp.ledger.rounds == 0


def test_the_seed_fixes_the_poisson_batches_too() -> None:
    data = TensorDataset(torch.randn(40, 4), torch.arange(40) % 2)

    def run(global_seed: int) -> tuple[list[int], Any]:
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 2)
        dp = _dpsgd(net, data, 8)
        torch.manual_seed(global_seed)  # whatever else drew from torch's global generator
        dp.train(epochs=1)
        return [len(y) for _, y in dp.data_loader], net.weight.detach().clone()

    (sizes_a, weight_a), (sizes_b, weight_b) = run(1), run(2)
    assert sizes_a == sizes_b
    assert torch.equal(weight_a, weight_b)


def test_a_ledger_path_keeps_the_budget_across_rebuilt_clients(tmp_path: Any) -> None:
    # A site rebuilt between rounds (a restart, a resumed simulation) must go on
    # from what it spent, not report the steps since it was built again.
    data = TensorDataset(torch.randn(24, 4), torch.arange(24) % 2)
    path = tmp_path / "dpsgd-ledger.json"

    def make(**options: Any) -> DPSGD:
        net = torch.nn.Linear(4, 2)
        return _dpsgd(net, data, 8, **options)

    for _ in range(3):
        make(ledger_path=path).train(epochs=1)
    once = make()
    once.train(epochs=3)  # the same steps on one object
    kept = make(ledger_path=path)
    assert kept.ledger == once.ledger
    assert kept.epsilon() == pytest.approx(once.epsilon())
    with pytest.raises(ValueError, match=r"DPSGD: the privacy ledger .* 'rdp', not 'pld'"):
        make(ledger_path=path, accountant="pld")
    path.write_text("[")
    with pytest.raises(ValueError, match="DPSGD: cannot read the privacy ledger"):
        make(ledger_path=path)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"noise_multiplier": "1"}, "noise_multiplier must be a finite number > 0, got '1'"),
        ({"noise_multiplier": math.inf}, "noise_multiplier must be a finite number > 0"),
        ({"max_grad_norm": -1.0}, "max_grad_norm must be a finite number > 0, got -1.0"),
        ({"delta": None}, r"delta must be a number in \(0, 1\), got None"),
    ],
)
def test_dpsgd_names_a_bad_setting(settings: dict[str, Any], match: str) -> None:
    net = torch.nn.Linear(4, 2)
    data = TensorDataset(torch.randn(8, 4), torch.arange(8) % 2)
    options: dict[str, Any] = {
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "delta": 1e-5,
        **settings,
    }
    with pytest.raises(ValueError, match=match):
        DPSGD(
            net,
            torch.optim.SGD(net.parameters(), lr=0.1),
            DataLoader(data, batch_size=4),
            **options,
        )


def test_a_train_that_fails_part_way_charges_the_steps_it_took(tmp_path: Any) -> None:
    # The steps before a loader's OSError changed the model and were charged to
    # nothing: a caller retrying train() and uploading released them uncounted.
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    data = TensorDataset(torch.randn(10, 4), torch.randint(0, 2, (10,)))
    ledger = tmp_path / "ledger.json"
    dp = _dpsgd(net, data, ledger_path=ledger)
    x, y = data[:3]

    def failing() -> Any:
        yield x[:2], y[:2]
        yield x[2:], y[2:]
        raise OSError("the data share went away")

    dp.data_loader = failing()
    with pytest.raises(OSError, match="went away"):
        dp.train(epochs=1)
    assert dp.ledger.rounds == 2
    assert dp.epsilon() > 0
    assert ledger.is_file()


def test_a_seeded_site_built_again_on_its_ledger_draws_new_noise(tmp_path: Any) -> None:
    # Seeded as at its first build, the rebuilt site drew the same batches and noise:
    # from the same weights its two rounds' models were equal, and in general they
    # differed by the gradients alone, without noise.
    data = TensorDataset(torch.randn(24, 4), torch.arange(24) % 2)
    path = tmp_path / "dpsgd-ledger.json"
    start = torch.nn.Linear(4, 2).state_dict()

    def round_on_a_new_site() -> Any:
        net = torch.nn.Linear(4, 2)
        net.load_state_dict(start)
        site = _dpsgd(net, data, 8, ledger_path=path)
        site.train(epochs=1)
        return net.weight.detach().clone()

    first, second = round_on_a_new_site(), round_on_a_new_site()
    assert not torch.equal(first, second)


def test_a_seeded_site_built_again_each_round_without_a_ledger_draws_new_noise() -> None:
    # Without a ledger_path a rebuilt seeded site knew nothing of the rounds before:
    # every round it drew its first build's batches and noise, so two rounds' updates
    # from one model were equal (and in general differed by their gradients alone).
    data = TensorDataset(torch.randn(24, 4), torch.arange(24) % 2)
    start = torch.nn.Linear(4, 2).state_dict()

    def round_on_a_new_site(rnd: int) -> Any:
        net = torch.nn.Linear(4, 2)
        net.load_state_dict(start)
        _dpsgd(net, data, 8).train(epochs=1, round=rnd)
        return net.weight.detach().clone()

    first, second = round_on_a_new_site(1), round_on_a_new_site(2)
    assert not torch.equal(first, second)
    # ... while a run started again with the same seed draws the same noise.
    assert torch.equal(round_on_a_new_site(1), first)


def test_one_site_training_one_round_twice_draws_new_noise() -> None:
    data = TensorDataset(torch.randn(24, 4), torch.arange(24) % 2)
    net = torch.nn.Linear(4, 2)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    site = _dpsgd(net, data, 8)
    site.train(epochs=1, round=3)
    first = net.weight.detach().clone()
    net.load_state_dict(start)
    site.train(epochs=1, round=3)
    assert not torch.equal(net.weight.detach(), first)


@pytest.mark.parametrize("rnd", [-1, 1.0, True, "1"])
def test_a_round_that_is_no_round_number_is_refused(rnd: object) -> None:
    net = torch.nn.Linear(4, 2)
    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    dp = _dpsgd(net, data, 4)
    with pytest.raises(ValueError, match="round must be an int >= 0"):
        dp.train(1, round=rnd)
    assert dp.ledger.rounds == 0

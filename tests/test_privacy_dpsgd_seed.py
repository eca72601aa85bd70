"""DP-SGD's seed: each client and each round draws noise of its own, and a run repeats."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import covey  # noqa: E402
from covey.clients import run_task  # noqa: E402
from covey.clients._client import fit_result  # noqa: E402
from covey.core._messages import Task  # noqa: E402
from covey.privacy import DPSGD  # noqa: E402

torch.manual_seed(0)
DATA = TensorDataset(torch.randn(24, 4), torch.arange(24) % 2)
START = {k: v.detach().numpy().copy() for k, v in torch.nn.Linear(4, 2).state_dict().items()}


def _site(net: Any, **options: Any) -> DPSGD:
    """DP-SGD of ``net`` on the one small data set every client holds here (seed 0)."""
    return DPSGD(
        net,
        torch.optim.SGD(net.parameters(), lr=0.1),
        DataLoader(DATA, batch_size=8),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-5,
        seed=0,
        **options,
    )


class Rebuilt(covey.Client):
    """A client that builds its DPSGD again for every fit and never passes the round."""

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        net = torch.nn.Linear(4, 2)
        net.load_state_dict({k: torch.tensor(np.array(v)) for k, v in weights.items()})
        _site(net).train(epochs=1)
        new = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
        return covey.FitResult(weights=new, num_examples=len(DATA))


def _fit(cid: int, rnd: int) -> np.ndarray:
    reply = run_task(Rebuilt(), cid, Task("fit", rnd, weights=START))
    assert reply.error is None, reply.error
    return np.asarray(reply.result.weights["weight"])


def test_two_clients_given_one_seed_draw_noise_of_their_own() -> None:
    # Every client drew the seed's noise and batches: from one model, on the same data,
    # their updates were equal, their noise perfectly correlated.
    assert not np.array_equal(_fit(0, 1), _fit(1, 1))
    # The inline backend's short way, which calls fit without a Reply, tells it too.
    first, second = (fit_result(Rebuilt(), cid, Task("fit", 1, weights=START)) for cid in (0, 1))
    assert isinstance(first, covey.FitResult)
    assert isinstance(second, covey.FitResult)
    assert first.weights is not None
    assert second.weights is not None
    assert not np.array_equal(first.weights["weight"], second.weights["weight"])


def test_a_site_built_again_each_round_draws_new_noise_without_being_told_the_round() -> None:
    # train() without round= drew its first build's noise again every round.
    assert not np.array_equal(_fit(3, 1), _fit(3, 2))


def test_a_run_started_again_draws_the_same_noise() -> None:
    assert np.array_equal(_fit(2, 4), _fit(2, 4))


def test_client_names_the_stream_outside_a_task_and_over_the_runtimes_id() -> None:
    def trained(client: int | str | None, rnd: int = 1) -> Any:
        net = torch.nn.Linear(4, 2)
        net.load_state_dict({k: torch.tensor(v) for k, v in START.items()})
        _site(net, client=client).train(epochs=1, round=rnd)
        return net.weight.detach().clone()

    assert not torch.equal(trained(0), trained(1))
    assert not torch.equal(trained("site-a"), trained("site-b"))
    assert not torch.equal(trained(0), trained(None))  # the old streams, for no client
    assert torch.equal(trained("site-a"), trained("site-a"))
    # The id given wins over the runtime's: a site draws the same noise in simulation
    # (cid 5) and deployed (whatever id the server gave its name).
    net = torch.nn.Linear(4, 2)
    net.load_state_dict({k: torch.tensor(v) for k, v in START.items()})

    class Named(covey.Client):
        def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
            _site(net, client="site-a").train(epochs=1)
            return covey.FitResult(weights=dict(weights), num_examples=1)

    assert run_task(Named(), 5, Task("fit", 1, weights=START)).error is None
    assert torch.equal(net.weight.detach(), trained("site-a"))


@pytest.mark.parametrize("client", [-1, True, 1.0, "", b"a"])
def test_a_client_that_names_no_client_is_refused(client: object) -> None:
    with pytest.raises(ValueError, match="client must be an int >= 0 or a non-empty str"):
        _site(torch.nn.Linear(4, 2), client=client)


def test_a_seeded_site_told_neither_round_nor_client_says_what_it_draws_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dp = _site(torch.nn.Linear(4, 2))
    with caplog.at_level(logging.WARNING, logger="covey"):
        dp.train(epochs=1)
        dp.train(epochs=1)
    said = [r.getMessage() for r in caplog.records if "outside a covey task" in r.getMessage()]
    assert len(said) == 1  # once per object
    assert "draws the same noise and batches every round" in said[0]
    assert "train(round=config['round'])" in said[0]
    assert "every client given this seed draws the same noise" in said[0]
    assert "DPSGD(client=...)" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="covey"):
        _site(torch.nn.Linear(4, 2), client=0).train(epochs=1, round=1)
        run_task(Rebuilt(), 0, Task("fit", 1, weights=START))
    assert "outside a covey task" not in caplog.text

"""A small CNN on scikit-learn's 8x8 digit images, label-skewed across clients: FedAvg vs FedProx.

Run it with ``python examples/torch_digits.py`` (needs ``pip install 'covey[torch]'``).
The data ships with scikit-learn: nothing is downloaded.

The clients that script simulates join a served federation unchanged:
``client_fn`` makes client ``cid``, and ``fedavg_server`` and ``fedprox_server``
are the server side of each strategy (a round starts once all 20 clients
joined; the test set judges each round's model there). From ``examples/``::

    covey server --app torch_digits:fedavg_server --insecure --address 127.0.0.1:9092
    covey client --app torch_digits:client_fn --cid 0 --server 127.0.0.1:9092 --insecure
    ...                                       # and --cid 1 to 19, one per client

(``--certs``/``--name`` instead of ``--insecure`` between machines; importing
this file runs nothing.)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import covey
from covey.data import Dataset, dirichlet, load_digits
from covey.deploy import ServerApp
from covey.sim import SimulationResult
from covey.torch import TorchClient, evaluate_model, load_weights, to_weights

ROUNDS = 15


class SmallCNN(nn.Module):
    """Two 3x3 convolutions and a linear layer over 1x8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x4x4
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16x2x2
        )
        self.head = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def as_images(x: object) -> torch.Tensor:
    """Digits rows of 64 pixels (scaled to [0, 1] by covey.data) as 1x8x8 float images."""
    return torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8)


@dataclass
class Digits:
    """``num_clients`` label-skewed (Dirichlet ``alpha``) clients: ``Digits()(cid)`` is one.

    An instance is a ``client_fn``, for ``covey.simulate`` and ``covey client --app``
    alike; the data is read when the first client is made.
    """

    num_clients: int = 20
    alpha: float = 0.3
    seed: int = 0
    device: str = "cpu"

    @cached_property
    def data(self) -> Dataset:
        return load_digits(seed=self.seed)

    @cached_property
    def parts(self) -> list[Any]:
        return dirichlet(
            self.data.y_train, num_clients=self.num_clients, alpha=self.alpha, seed=self.seed
        )

    def __call__(self, cid: int) -> TorchClient:
        x, y = self.data.client(self.parts[cid])
        loader = DataLoader(
            TensorDataset(as_images(x), torch.tensor(y)),
            batch_size=16,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed * 1000 + cid),
        )
        return TorchClient(
            SmallCNN(),
            nn.CrossEntropyLoss(),
            lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
            loader,
            epochs=2,
            device=self.device,
        )

    def initial_weights(self) -> covey.Weights:
        torch.manual_seed(self.seed)
        return to_weights(SmallCNN(), copy=True)

    def fedavg(self) -> covey.Strategy:
        # Half the clients train each round, drawn once all of them joined.
        return covey.FedAvg(
            fraction_fit=0.5, fraction_evaluate=0.0, min_available_clients=self.num_clients
        )

    def fedprox(self, mu: float = 0.1) -> covey.Strategy:
        return covey.FedProx(
            proximal_mu=mu,
            fraction_fit=0.5,
            fraction_evaluate=0.0,
            min_available_clients=self.num_clients,
        )

    def central(self) -> Callable[[int, covey.Weights], tuple[float, dict[str, float]]]:
        """The server's ``evaluate_fn``: test loss and accuracy of each round's model."""
        test_loader = DataLoader(
            TensorDataset(as_images(self.data.x_test), torch.tensor(self.data.y_test)),
            batch_size=256,
        )
        server_model = SmallCNN().to(self.device)
        loss_fn = nn.CrossEntropyLoss()

        def central(round: int, weights: covey.Weights) -> tuple[float, dict[str, float]]:
            load_weights(server_model, weights)
            loss, _, metrics = evaluate_model(server_model, loss_fn, test_loader, self.device)
            return loss, {"accuracy": float(metrics["accuracy"])}

        return central

    def server_app(self, strategy: covey.Strategy, rounds: int = ROUNDS) -> ServerApp:
        """The server side of this federation, as ``run`` simulates it."""
        return ServerApp(
            strategy=strategy,
            initial_weights=self.initial_weights,
            rounds=rounds,
            evaluate_fn=self.central(),
            seed=self.seed,
        )


client_fn = Digits()


def fedavg_server() -> ServerApp:
    return client_fn.server_app(client_fn.fedavg())


def fedprox_server() -> ServerApp:
    return client_fn.server_app(client_fn.fedprox())


def run(
    strategy: covey.Strategy, clients: Digits = client_fn, rounds: int = ROUNDS
) -> SimulationResult:
    """Train the CNN federated over ``clients`` with ``strategy``."""
    app = clients.server_app(strategy, rounds)
    return covey.simulate(
        client_fn=clients,
        num_clients=clients.num_clients,
        rounds=app.rounds,
        strategy=app.strategy,
        initial_weights=app.weights(),
        evaluate_fn=app.evaluate_fn,
        seed=app.seed,
    )


def compare(clients: Digits = client_fn, rounds: int = ROUNDS, mu: float = 0.1) -> dict[str, float]:
    """Final central test accuracy of FedAvg and of FedProx(``mu``) on the same federation."""
    out = {}
    for name, strategy in (
        ("FedAvg", clients.fedavg()),
        (f"FedProx(mu={mu})", clients.fedprox(mu)),
    ):
        result = run(strategy, clients, rounds)
        out[name] = result.history.metric("accuracy")[-1][1]
    return out


if __name__ == "__main__":  # `covey client --app torch_digits:client_fn` imports this file
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=client_fn.num_clients)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--mu", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a model this small gains nothing from more threads
    clients = (  # by default the very clients that `covey client` runs
        client_fn
        if args.clients == client_fn.num_clients
        else replace(client_fn, num_clients=args.clients)
    )
    for name, accuracy in compare(clients, args.rounds, args.mu).items():
        print(f"{name:16s} test accuracy {accuracy:.3f}")

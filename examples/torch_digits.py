"""A small CNN on scikit-learn's 8x8 digit images, label-skewed across clients: FedAvg vs FedProx.

Run it with ``python examples/torch_digits.py`` (needs ``pip install 'covey[torch]'``).
The data ships with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import covey
from covey.data import dirichlet, load_digits
from covey.sim import SimulationResult
from covey.torch import TorchClient, evaluate_model, load_weights, to_weights


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


def run(
    strategy: covey.Strategy,
    *,
    num_clients: int = 20,
    rounds: int = 15,
    alpha: float = 0.3,
    seed: int = 0,
    device: str = "cpu",
) -> SimulationResult:
    """Train the CNN federated over ``num_clients`` label-skewed (Dirichlet ``alpha``) clients."""
    torch.manual_seed(seed)
    data = load_digits(seed=seed)
    parts = dirichlet(data.y_train, num_clients=num_clients, alpha=alpha, seed=seed)
    loss_fn = nn.CrossEntropyLoss()

    def client_fn(cid: int) -> TorchClient:
        x, y = data.client(parts[cid])
        loader = DataLoader(
            TensorDataset(as_images(x), torch.tensor(y)),
            batch_size=16,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed * 1000 + cid),
        )
        return TorchClient(
            SmallCNN(),
            loss_fn,
            lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
            loader,
            epochs=2,
            device=device,
        )

    test_loader = DataLoader(
        TensorDataset(as_images(data.x_test), torch.tensor(data.y_test)), batch_size=256
    )
    server_model = SmallCNN().to(device)

    def central(round: int, weights: covey.Weights) -> tuple[float, dict[str, float]]:
        load_weights(server_model, weights)
        loss, _, metrics = evaluate_model(server_model, loss_fn, test_loader, device)
        return loss, {"accuracy": float(metrics["accuracy"])}

    torch.manual_seed(seed)
    return covey.simulate(
        client_fn=client_fn,
        num_clients=num_clients,
        rounds=rounds,
        strategy=strategy,
        initial_weights=to_weights(SmallCNN(), copy=True),
        evaluate_fn=central,
        seed=seed,
    )


def compare(num_clients: int = 20, rounds: int = 15, mu: float = 0.1) -> dict[str, float]:
    """Final central test accuracy of FedAvg and of FedProx(``mu``) on the same federation."""
    out = {}
    for name, strategy in (
        ("FedAvg", covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0)),
        (
            f"FedProx(mu={mu})",
            covey.FedProx(proximal_mu=mu, fraction_fit=0.5, fraction_evaluate=0.0),
        ),
    ):
        result = run(strategy, num_clients=num_clients, rounds=rounds)
        out[name] = result.history.metric("accuracy")[-1][1]
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--mu", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a model this small gains nothing from more threads
    for name, accuracy in compare(args.clients, args.rounds, args.mu).items():
        print(f"{name:16s} test accuracy {accuracy:.3f}")

"""Four hospitals train a tumour classifier with DP-SGD (Opacus) inside FedAvg.

Each hospital holds a share of scikit-learn's breast-cancer table (569 patients,
30 features, shipped with scikit-learn: nothing is downloaded). Local training
is DP-SGD through Opacus (per-example clipping, Gaussian noise, Poisson batches),
so each hospital can state what it spent: an (epsilon, delta) guarantee for each
of its patients, over every round it trained in.

Run it: ``python examples/privacy_hospitals.py`` (needs ``pip install 'covey[torch]'``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer

import covey
from covey.privacy import DPSGD

HOSPITALS = 4
DELTA = 1e-3  # below 1 / (patients per hospital)
SEED = 0  # reproducible noise (tests); leave it None in a real deployment


def load(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The table, standardized, shuffled, split 80/20 into train and test."""
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    cut = int(0.8 * len(y))
    mean, std = x[:cut].mean(axis=0), x[:cut].std(axis=0) + 1e-6
    x = (x - mean) / std
    return x[:cut], y[:cut], x[cut:], y[cut:]


X_TRAIN, Y_TRAIN, X_TEST, Y_TEST = load()


def make_model() -> torch.nn.Module:
    """A small MLP: 30 features -> 16 -> 2 classes."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def weights_of(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters as NumPy arrays."""
    return {k: v.detach().numpy().copy() for k, v in model.named_parameters()}


class Hospital(covey.Client):
    """One hospital: DP-SGD on its own patients, its budget in every fit's metrics."""

    def __init__(self, k: int, noise_multiplier: float = 1.0, lr: float = 0.2) -> None:
        part = np.array_split(np.arange(len(Y_TRAIN)), HOSPITALS)[k]
        data = torch.utils.data.TensorDataset(
            torch.from_numpy(X_TRAIN[part]), torch.from_numpy(Y_TRAIN[part])
        )
        loader = torch.utils.data.DataLoader(data, batch_size=16)
        self.net = make_model()
        self.dp = DPSGD(
            self.net,
            torch.optim.SGD(self.net.parameters(), lr=lr),
            loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=1.0,
            delta=DELTA,
            # One seed for the run; client=k gives each hospital noise and batches of
            # its own, the same in simulation and deployed, and train() adds the round.
            seed=SEED,
            client=k,
        )
        self.size = len(part)

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        with torch.no_grad():
            for name, p in self.net.named_parameters():
                p.copy_(torch.from_numpy(np.array(weights[name])))
        loss = self.dp.train(epochs=1, round=config["round"])
        return covey.FitResult(
            weights=weights_of(self.net),
            num_examples=self.size,
            metrics={"train_loss": loss, "dp_epsilon": self.dp.epsilon(), "dp_delta": DELTA},
        )


def accuracy(weights: covey.Weights) -> float:
    """Accuracy on the held-out patients."""
    net = make_model()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(np.array(weights[name])))
        predicted = net(torch.from_numpy(X_TEST)).argmax(dim=1).numpy()
    return float((predicted == Y_TEST).mean())


def run(rounds: int = 5, noise_multiplier: float = 1.0) -> tuple[float, list[float]]:
    """Federate the hospitals; return the test accuracy and each hospital's epsilon."""
    hospitals = [Hospital(k, noise_multiplier) for k in range(HOSPITALS)]
    result = covey.simulate(
        lambda cid: hospitals[cid],
        HOSPITALS,
        rounds,
        covey.FedAvg(fraction_evaluate=0.0),
        weights_of(make_model()),
        lambda rnd, w: (0.0, {"accuracy": accuracy(w)}),
    )
    return accuracy(result.weights), [h.dp.epsilon() for h in hospitals]


if __name__ == "__main__":
    acc, spent = run()
    majority = max(np.mean(Y_TEST), 1 - np.mean(Y_TEST))
    print(f"test accuracy {acc:.3f} (majority class {majority:.3f})")
    for k, eps in enumerate(spent):
        print(f"hospital {k}: ({eps:.2f}, {DELTA:g})-DP for each of its patients")

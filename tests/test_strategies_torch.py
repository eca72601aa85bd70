"""The FedProx and SCAFFOLD helpers for PyTorch models (skipped when torch is not installed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from covey import clients
from covey.data import iid, load_digits

torch = pytest.importorskip("torch")

DATA = load_digits(seed=0)
PARTS = iid(DATA.y_train, 4, seed=0)


def model() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 10))


def read_only(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for value in values.values():
        value.flags.writeable = False
    return values


def test_proximal_term_and_gradient_match_the_numpy_helpers() -> None:
    net = model()
    anchor = read_only({k: v.detach().numpy() + 0.5 for k, v in net.named_parameters()})
    weights = {k: v.detach().numpy().copy() for k, v in net.named_parameters()}
    term = clients.torch_proximal_term(net, anchor, 0.3)
    value = float(term.detach())
    assert value == pytest.approx(clients.proximal_term(weights, anchor, 0.3), rel=1e-5)
    term.backward()
    autograd = {k: p.grad.clone() for k, p in net.named_parameters()}
    zero = {k: np.zeros_like(v) for k, v in weights.items()}
    expected = clients.proximal_grad(zero, weights, anchor, 0.3)
    for k, g in autograd.items():
        np.testing.assert_allclose(g.numpy(), expected[k], rtol=1e-5, atol=1e-6)
    net.zero_grad(set_to_none=True)
    clients.torch_add_proximal_grad(net, clients.torch_snapshot(net), 0.3)  # at the anchor: 0
    assert all(float(p.grad.abs().max()) == 0.0 for p in net.parameters())
    clients.torch_add_proximal_grad(net, anchor, 0.3)
    clients.torch_add_proximal_grad(net, anchor, 0.0)  # mu = 0 adds nothing
    for k, p in net.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), expected[k], rtol=1e-5, atol=1e-6)


def test_scaffold_correction_is_added_to_the_gradients() -> None:
    net = model()
    correction = {k: np.full(tuple(p.shape), 0.25, np.float32) for k, p in net.named_parameters()}
    clients.torch_add_correction(net, correction)  # no grad yet: the correction is the grad
    tensors = clients.torch_tensors(correction, net)
    clients.torch_add_correction(net, tensors)
    for p in net.parameters():
        np.testing.assert_allclose(p.grad.numpy(), 0.5)


class TorchClient(covey.Client):
    """A linear softmax model trained with torch; FedProx via the proximal term, or SCAFFOLD."""

    def __init__(self, cid: int, algorithm: str) -> None:
        self.cid, self.algorithm = cid, algorithm
        x, y = DATA.client(PARTS[cid])
        self.x, self.y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
        self.net = model()
        self.control = clients.ControlVariate()

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        state = {k: torch.tensor(v) for k, v in weights.items()}
        self.net.load_state_dict(state)
        anchor = clients.torch_snapshot(self.net)
        mu = clients.proximal_mu(config)
        correction = None
        if self.algorithm == "scaffold":
            correction = clients.torch_tensors(self.control.correction(weights, config), self.net)
        optimizer = torch.optim.SGD(self.net.parameters(), lr=0.1)
        steps = 0
        for start in range(0, len(self.y), 32):
            optimizer.zero_grad()
            out = self.net(self.x[start : start + 32])
            loss = torch.nn.functional.cross_entropy(out, self.y[start : start + 32])
            if self.algorithm == "fedprox":
                loss = loss + clients.torch_proximal_term(self.net, anchor, mu)
            loss.backward()
            if correction is not None:
                clients.torch_add_correction(self.net, correction)
            optimizer.step()
            steps += 1
        new = {k: v.detach().numpy().copy() for k, v in self.net.state_dict().items()}
        if correction is not None:
            return self.control.fit_result(new, num_examples=len(self.y), steps=steps, lr=0.1)
        return covey.FitResult(weights=new, num_examples=len(self.y))


def initial() -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model().state_dict().items()}


def run(strategy: covey.Strategy, algorithm: str) -> covey.sim.SimulationResult:
    return covey.simulate(lambda cid: TorchClient(cid, algorithm), 4, 2, strategy, initial())


def test_torch_fedprox_with_mu_zero_is_fedavg_and_scaffold_runs() -> None:
    fedavg = run(covey.FedAvg(fraction_evaluate=0.0), "plain")
    prox0 = run(covey.FedProx(proximal_mu=0.0, fraction_evaluate=0.0), "fedprox")
    prox1 = run(covey.FedProx(proximal_mu=1.0, fraction_evaluate=0.0), "fedprox")
    for k in fedavg.weights:
        np.testing.assert_allclose(prox0.weights[k], fedavg.weights[k], rtol=0, atol=1e-7)
    assert any(not np.allclose(prox1.weights[k], fedavg.weights[k]) for k in fedavg.weights)
    with_scaffold = run(covey.Scaffold(num_clients=4, fraction_evaluate=0.0), "scaffold")
    assert all(r.aggregated for r in with_scaffold.history.rounds[1:])
    assert all(np.isfinite(v).all() for v in with_scaffold.weights.values())

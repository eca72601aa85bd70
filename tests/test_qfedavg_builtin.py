"""q-FedAvg with the built-in clients: each reports its loss at the weights it received."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from covey.core._qfair import loss_before_fit
from covey.data import load_digits
from covey.models import LogisticClient, logistic_evaluate, logistic_init


def _task_config(strategy: covey.Strategy) -> dict[str, Any]:
    return {**strategy.fit_task_config(1), "round": 1}


@pytest.fixture(scope="module")
def digits() -> Any:
    return load_digits()


def _logistic(cid: int, digits: Any) -> LogisticClient:
    idx = np.arange(cid, len(digits.y_train), 4)
    return LogisticClient(cid, digits.x_train[idx], digits.y_train[idx], lr=0.5)


def test_logistic_clients_train_under_qfedavg(digits: Any) -> None:
    # LogisticClient reported no loss at the received weights: every client of
    # every round failed with "reported no numeric 'loss' metric"
    strategy = covey.QFedAvg(q=0.5, client_lr=0.5, fraction_evaluate=0.0, accept_failures=False)
    start = logistic_init(digits.x_train.shape[1], 10)
    result = covey.simulate(lambda cid: _logistic(cid, digits), 4, 3, strategy, start)
    assert [r.round for r in result.history.rounds] == [0, 1, 2, 3]
    before = logistic_evaluate(start, digits.x_train, digits.y_train)[0]
    after = logistic_evaluate(result.weights, digits.x_train, digits.y_train)[0]
    assert after < before


def test_the_reported_loss_is_the_loss_at_the_received_weights(digits: Any) -> None:
    client = _logistic(0, digits)
    start = logistic_init(digits.x_train.shape[1], 10)
    config = _task_config(covey.QFedAvg(loss_key="f_k"))
    result = client.fit(start, config)
    assert result.metrics["f_k"] == logistic_evaluate(start, client.x, client.y)[0]
    assert float(result.metrics["train_loss"]) < float(result.metrics["f_k"])  # after training
    plain = client.fit(start, _task_config(covey.FedAvg()))
    assert "f_k" not in plain.metrics  # not asked: not spent
    assert "loss" not in plain.metrics


def test_sklearn_clients_train_under_qfedavg() -> None:
    pytest.importorskip("sklearn")
    from sklearn.linear_model import SGDClassifier

    from covey.sklearn import SklearnClient, evaluate_model, get_params, prime, set_params

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)

    def model() -> Any:
        return SGDClassifier(loss="log_loss", random_state=0)

    def client(cid: int) -> SklearnClient:
        part = slice(cid * 50, (cid + 1) * 50)
        return SklearnClient(model(), x[part], y[part], classes=[0, 1])

    primed = model()
    prime(primed, x[:2], y[:2], classes=[0, 1])
    start = get_params(primed)
    strategy = covey.QFedAvg(fraction_evaluate=0.0, accept_failures=False)
    result = covey.simulate(client, 4, 2, strategy, start)
    assert [r.round for r in result.history.rounds] == [0, 1, 2]
    reported = client(0).fit(start, _task_config(strategy)).metrics["loss"]
    probe = model()
    prime(probe, x[:2], y[:2], classes=[0, 1])
    set_params(probe, start)
    assert reported == evaluate_model(probe, x[:50], y[:50], [0, 1])[0]


def test_torch_clients_train_under_qfedavg() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from covey.torch import TorchClient, evaluate_model, load_weights, to_weights

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=g)
    y = (x[:, 0] > 0).long()

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def loader(cid: int) -> DataLoader:
        part = slice(cid * 30, (cid + 1) * 30)
        return DataLoader(TensorDataset(x[part], y[part]), batch_size=10)

    def client(cid: int) -> TorchClient:
        return TorchClient(
            net(), nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), loader(cid)
        )

    start = {k: v.copy() for k, v in to_weights(net()).items()}
    strategy = covey.QFedAvg(fraction_evaluate=0.0, accept_failures=False)
    result = covey.simulate(client, 4, 2, strategy, start)
    assert [r.round for r in result.history.rounds] == [0, 1, 2]
    reported = client(1).fit(start, _task_config(strategy)).metrics["loss"]
    probe = net()
    load_weights(probe, start)
    assert reported == pytest.approx(evaluate_model(probe, nn.CrossEntropyLoss(), loader(1))[0])


@pytest.mark.parametrize("bad", ["", 3, "x" * 129])
def test_a_loss_name_that_is_no_metric_name_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="loss_before_fit"):
        loss_before_fit({"loss_before_fit": bad})
    with pytest.raises(ValueError, match="loss_key must name a fit metric"):
        covey.QFedAvg(loss_key=bad)

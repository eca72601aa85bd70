"""A torch client's metrics and loss: a one-element tensor counts as its number, as NumPy's do."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import covey
from covey.server._central import central_evaluation

torch = pytest.importorskip("torch")


@pytest.fixture
def warn_always() -> Iterator[None]:
    """Torch warns once a process of a tensor that requires grad made a number: every time here."""
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(False)


def test_a_one_element_tensor_metric_is_taken_as_its_number() -> None:
    # Before, FitResult refused it ("is Tensor, expected a number, bool, str or bytes")
    # though evaluate_fn's metrics and EvaluateResult.loss took tensors.
    metrics = {"loss": torch.tensor(0.5), "correct": torch.tensor([3]), "ok": torch.tensor(True)}
    fit = covey.FitResult(weights={"w": np.zeros(2)}, num_examples=1, metrics=metrics)
    evaluated = covey.EvaluateResult(loss=0.5, num_examples=1, metrics=metrics)
    for result in (fit, evaluated):
        assert result.metrics == {"loss": 0.5, "correct": 3, "ok": True}
        assert [type(v) for v in result.metrics.values()] == [float, int, bool]


def test_a_loss_that_requires_grad_is_taken_without_a_warning(warn_always: None) -> None:
    # Before, float() of it gave torch's "Converting a tensor with requires_grad=True to
    # a scalar" UserWarning, pointing into covey (an error under filterwarnings=error).
    w = torch.tensor([0.5, 1.0], requires_grad=True)
    loss = (w * w).sum()
    assert covey.EvaluateResult(loss=loss, num_examples=1).loss == 1.25
    assert central_evaluation(lambda rnd, weights: (loss, {}), 0, {}) == (1.25, {})
    result = covey.EvaluateResult(loss=0.0, num_examples=1, metrics={"train_loss": loss})
    assert result.metrics == {"train_loss": 1.25}


def test_a_tensor_metric_of_several_values_is_refused_with_what_to_report() -> None:
    with pytest.raises(
        TypeError,
        match=r"FitResult.metrics\['per_class'\] is Tensor, expected a number, bool, str or "
        r"bytes \(it holds several values: report one number, x.mean\(\).item\(\) say, or an "
        r"array of them, np.asarray\(x\) or a torch tensor's x.detach\(\).cpu\(\).numpy\(\)\)",
    ):
        covey.FitResult(
            weights={"w": np.zeros(2)}, num_examples=1, metrics={"per_class": torch.ones(3)}
        )
    # evaluate_fn's metrics raised torch's bare RuntimeError "a Tensor with 3 elements
    # cannot be converted to Scalar".
    with pytest.raises(
        TypeError,
        match=r"evaluate_fn's metric 'per_class' is Tensor, expected a number, bool, str or "
        r"bytes: report one number \(x.mean\(\).item\(\), say\)",
    ):
        central_evaluation(lambda rnd, weights: (0.0, {"per_class": torch.ones(3)}), 0, {})


class Torchy(covey.Client):
    """Reports its metrics as the tensors a torch training loop computes."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        loss = torch.tensor(0.25, requires_grad=True) * 2
        return covey.FitResult(weights=weights, num_examples=1, metrics={"train_loss": loss})

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        correct = torch.tensor([1.0, 0.0, 1.0, 1.0]).mean()
        return covey.EvaluateResult(
            loss=torch.tensor(0.5), num_examples=4, metrics={"acc": correct}
        )


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_run_of_clients_reporting_tensors_keeps_their_numbers(backend: Any) -> None:
    result = covey.simulate(
        lambda cid: Torchy(), 2, 1, covey.FedAvg(), {"w": np.zeros(2)}, backend=backend
    )
    assert result.history.metric("train_loss", source="fit") == [(1, 0.5)]
    assert result.history.metric("acc", source="evaluate") == [(1, 0.75)]

"""covey.torch and DPSGD given the usual slips of a PyTorch user: each named, with its fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from covey.core import Task  # noqa: E402
from covey.sim._inline import lent_weights_changed  # noqa: E402
from covey.torch import to_weights  # noqa: E402


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Any) -> Any:
        return self.fc(x)


def _task(kind: str, rnd: int, weights: dict[str, Any]) -> dict[int, Task]:
    return {0: Task(kind, rnd, {}, weights), 1: Task(kind, rnd, {}, weights)}


def test_the_in_place_write_error_names_batch_norm_and_the_task_it_happened_in() -> None:
    weights = to_weights(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), copy=True)
    said = lent_weights_changed(_task("evaluate", 2, weights), "the run stops")
    assert "later clients evaluated a changed model" in said
    assert "trained" not in said
    assert "BatchNorm running statistics ('1.running_mean'" in said
    assert "in train mode updates them in place" in said
    assert "call model.eval() before evaluating" in said
    said = lent_weights_changed(_task("fit", 2, weights), "the run stops")
    assert "later clients trained from a changed model" in said
    assert "BatchNorm" in said
    assert "model.eval()" not in said
    # Round 1 names the initial weights' views, for the task at hand.
    said = lent_weights_changed(_task("evaluate", 1, weights), "the run stops")
    assert "a model the clients go on to evaluate (or train)" in said
    # A model without BatchNorm is not told about it.
    plain = lent_weights_changed(_task("fit", 2, to_weights(Net(), copy=True)), "it stops")
    assert "BatchNorm" not in plain


def test_a_batch_norm_in_train_mode_writing_through_evaluate_is_named() -> None:
    import covey
    from covey.torch import to_state_dict

    class Writer(covey.Client):
        def __init__(self) -> None:
            self.model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))

        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            return covey.FitResult(
                delta={k: np.zeros_like(v) for k, v in weights.items()}, num_examples=1
            )

        def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
            self.model.load_state_dict(to_state_dict(weights), assign=True)
            self.model(torch.randn(8, 4))  # train mode: the running statistics move
            return covey.EvaluateResult(loss=0.0, num_examples=8)

    initial = to_weights(Writer().model, copy=True)
    strategy = covey.FedAvg(fraction_fit=1.0, fraction_evaluate=1.0)
    with pytest.raises(RuntimeError, match="changed in place") as caught:
        covey.simulate(lambda cid: Writer(), 2, 1, strategy, initial, progress=False)
    said = str(caught.value)
    assert "evaluate task" in said
    assert "later clients evaluated a changed model" in said
    assert "call model.eval()" in said


def test_central_dp_names_batch_norms_counter_and_how_to_drop_it() -> None:
    import covey
    from covey import privacy

    dp = privacy.central(covey.FedAvg(), noise_multiplier=1.0, clip=1.0, delta=1e-5)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with pytest.raises(TypeError, match=r"\['1\.num_batches_tracked'\]") as caught:
        dp.aggregator.init(to_weights(model))
    said = str(caught.value)
    assert "BatchNorm's num_batches_tracked buffer" in said
    assert "m.num_batches_tracked = None" in said
    assert "track_running_stats=False" in said
    assert "GroupNorm" in said
    # The fix it gives works: the counter leaves the weights, and the model still trains.
    model[1].num_batches_tracked = None  # type: ignore[assignment]
    dp.aggregator.init(to_weights(model))
    model.train()(torch.randn(8, 4))
    # Integer arrays of another origin are told no more than before.
    with pytest.raises(TypeError) as caught:
        dp.aggregator.init({"w": np.zeros(3), "c": np.zeros(2, np.int64)})
    assert "BatchNorm" not in str(caught.value)

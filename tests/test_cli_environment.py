"""The command line where it runs: piped output, narrow terminals, text that looks like markup."""

from __future__ import annotations

import numpy as np
import pytest

import covey
from covey.core import Config, Metrics


class _Step(covey.Client):
    def fit(self, weights: covey.Weights, config: Config) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] + 1.0}, num_examples=1)


def _central(rnd: int, weights: covey.Weights) -> tuple[float, Metrics]:
    return 0.5, {"f1[/macro]": 0.25, "[bold]recall": 0.75}


def test_a_metric_named_like_markup_is_shown_as_is_on_the_progress_bar(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = covey.simulate(
        client_fn=lambda cid: _Step(),
        num_clients=2,
        rounds=1,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights={"w": np.zeros(2)},
        evaluate_fn=_central,
        progress=True,
    )
    assert result.history.metric("f1[/macro]") == [(0, 0.25), (1, 0.25)]
    out = capsys.readouterr().out
    assert "f1[/macro] 0.2500" in out
    assert "[bold]recall 0.7500" in out

"""Top-k's sparse updates under a robust strategy: the run warns once, at its start."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from covey.deploy._servechecks import served_scheme

ROBUST = [
    ("FedMedian", lambda: covey.FedMedian(fraction_evaluate=0.0)),
    ("FedTrimmedAvg", lambda: covey.FedTrimmedAvg(beta=0.2, fraction_evaluate=0.0)),
    ("Krum", lambda: covey.Krum(f=1, fraction_evaluate=0.0)),
    ("Bulyan", lambda: covey.Bulyan(f=1, fraction_evaluate=0.0)),
]


class Step(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.arange(8.0) + self.cid}, num_examples=1)


@pytest.mark.parametrize(("name", "make"), ROBUST)
def test_a_simulation_of_topk_with_a_robust_strategy_warns_once(name: str, make: Any) -> None:
    with pytest.warns(UserWarning, match=rf"topk:0\.1 with {name} .*dense scheme") as caught:
        covey.simulate(Step, 7, 2, make(), {"w": np.zeros(8)}, compression="topk:0.1")
    assert len([w for w in caught if "topk" in str(w.message)]) == 1


@pytest.mark.parametrize(("name", "make"), ROBUST)
def test_a_served_run_of_topk_with_a_robust_strategy_warns(name: str, make: Any) -> None:
    with pytest.warns(UserWarning, match=rf"topk:0\.1 with {name} .*q8, float16"):
        served_scheme("topk:0.1", None, make())


@pytest.mark.filterwarnings("error")
def test_topk_with_fedavg_and_a_dense_scheme_with_a_robust_strategy_do_not_warn() -> None:
    served_scheme("topk:0.1", None, covey.FedAvg())
    served_scheme("topk:0.1", None, covey.FedRFA())
    served_scheme("topk:0.1", None, covey.MultiKrum(f=1))
    served_scheme("q8", None, covey.FedMedian())
    served_scheme(None, None, covey.Krum(f=1))

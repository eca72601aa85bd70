"""Under attack: 20 of 100 digits clients send sign-flipped updates x10 (see the example)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "robust_aggregation.py"


@pytest.fixture(scope="module")
def workload() -> ModuleType:
    spec = importlib.util.spec_from_file_location("robust_aggregation", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def clean(workload: ModuleType) -> float:
    return float(workload.run("FedAvg", attacked=False))


def test_the_workload_is_the_one_described(workload: ModuleType) -> None:
    assert workload.NUM_CLIENTS == 100
    assert len(workload.ATTACKERS) == 20
    assert workload.BOOST == 10.0


def test_fedavg_collapses_under_attack(workload: ModuleType, clean: float) -> None:
    assert clean > 0.85
    assert workload.run("FedAvg", attacked=True) < 0.3


@pytest.mark.parametrize("rule", ["FedMedian", "FedTrimmedAvg", "Krum", "Bulyan"])
def test_robust_rules_stay_within_five_points_of_the_clean_run(
    workload: ModuleType, clean: float, rule: str
) -> None:
    attacked = workload.run(rule, attacked=True)
    assert attacked > clean - 0.05, (rule, attacked, clean)

"""The hospitals example runs and its first answer equals pandas on the pooled tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

EXAMPLE = (
    Path(__file__).resolve().parent.parent / "examples" / "hospitals-analytics" / "hospitals.py"
)


@pytest.mark.slow
def test_the_hospitals_example_answers_the_seed_question(
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = importlib.util.spec_from_file_location("hospitals_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["hospitals_example"] = module
    spec.loader.exec_module(module)
    answers = module.main(scale=0.1, epsilon=1.0)
    pooled = pd.concat(
        module.patients(max(20, int(n * 0.1)), age, w, seed=100 + i)
        for i, (n, age, w) in enumerate(module.HOSPITALS)
    )
    expected = pooled.groupby("condition")["age_at_diagnosis"].mean()
    first = answers["average age at diagnosis"].set_index("condition")
    for condition, mean in expected.items():
        assert first.loc[condition, "AVG(age_at_diagnosis)"] == pytest.approx(mean, rel=1e-6)
    dp = answers["average age at diagnosis from 18 with DP (epsilon=1.0)"]
    assert dp.attrs["privacy"]["epsilon"] == pytest.approx(1.0, rel=1e-3)
    assert dp.attrs["privacy"]["withholding"] == []  # within the policy's max_epsilon
    assert "most common conditions" in capsys.readouterr().out

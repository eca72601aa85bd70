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


def test_the_readme_writes_the_table_a_covey_site_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's ``python -c`` line writes the table its ``covey site`` line names."""
    from covey.analytics import Site
    from covey.analytics._cli import load_policy

    readme = (EXAMPLE.parent / "README.md").read_text(encoding="utf-8")
    line = next(x for x in readme.splitlines() if x.startswith("python -c "))
    code = line.removeprefix("python -c ").strip("'")
    site = next(x for x in readme.splitlines() if x.startswith("covey site --table"))
    table = site.split("--table patients=")[1].split()[0]
    policy = readme.split("```toml\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    exec(compile(code, "README.md", "exec"), {})  # the README's own line
    (tmp_path / "policy.toml").write_text(policy, encoding="utf-8")
    served = Site({"patients": str(tmp_path / table)}, load_policy(tmp_path / "policy.toml"))
    assert served is not None
    assert len(pd.read_parquet(tmp_path / table)) == 4000  # the first hospital's patients

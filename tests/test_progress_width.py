"""The progress bar keeps every figure whole, piped to a log or in a narrow terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import covey
from covey.core import Metrics

_METRICS = {"accuracy": 0.9123, "balanced_accuracy": 0.8765, "macro_f1": 0.8123, "auc": 0.9555}


class _Step(covey.Client):
    def fit(self, weights: covey.Weights, config: covey.core.Config) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] + 1.0}, num_examples=1)


def _central(rnd: int, weights: covey.Weights) -> tuple[float, Metrics]:
    return 0.125, dict(_METRICS)


def _bar(capsys: pytest.CaptureFixture[str]) -> str:
    """What two rounds print on the bar, its styles and cursor moves taken out."""
    covey.simulate(
        client_fn=lambda cid: _Step(),
        num_clients=2,
        rounds=2,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights={"w": np.zeros(2)},
        evaluate_fn=_central,
        progress=True,
    )
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().out)


def _figures() -> list[str]:
    return ["loss 0.1250", *(f"{name} {value:.4f}" for name, value in _METRICS.items())]


def test_a_piped_bar_is_one_whole_line_whatever_its_metrics(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # a log's width: the line is not cut at it
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    out = _bar(capsys)
    assert "…" not in out
    (line,) = [line for line in out.splitlines() if line.startswith("round 2/2")]
    for figure in _figures():
        assert figure in line


@pytest.mark.parametrize("columns", [30, 40, 60])
def test_a_narrow_terminal_gets_every_figure_of_the_bar_whole(
    columns: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws as in a terminal
    monkeypatch.setenv("COLUMNS", str(columns))
    out = _bar(capsys)
    last = out.split("\r")[-1]  # the bar as it was last drawn
    assert "…" not in last
    assert "round 2/2" in last
    assert re.search(r"\d:\d\d:\d\d", last)
    words = " ".join(last.split())
    for figure in _figures():
        assert figure in words


def test_an_ascii_output_gets_three_dots_for_rich_s_ellipsis(tmp_path: Path) -> None:
    src = str(Path(covey.__file__).parent.parent)
    env = {"PYTHONPATH": src, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update(PYTHONIOENCODING="ascii", COLUMNS="30", NO_COLOR="1")
    done = subprocess.run(
        [sys.executable, "-m", "covey", "--help"],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # rich's help of the group cuts its options to fit 30 columns (a command's is plain
    # text below 80 columns, and cuts nothing)
    assert b"..." in done.stdout
    assert b"\\u2026" not in done.stdout

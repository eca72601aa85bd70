"""Text from clients and folders reaches a terminal with its control characters escaped."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.core._text import printable

SPOOF = "\x1b[2J\x1b[31mSPOOF\x1b]0;title\x07 done\nround 9: forged"


def test_control_and_format_characters_are_written_as_escapes() -> None:
    assert printable(SPOOF) == ("\\x1b[2J\\x1b[31mSPOOF\\x1b]0;title\\x07 done\\nround 9: forged")
    assert printable("a\u202eb\udcffc\u2028") == "a\\u202eb\\udcffc\\u2028"
    assert printable("accuracy ä 日本 (top-5)") == "accuracy ä 日本 (top-5)"


class _Spoofing(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        if self.cid == 1:
            raise RuntimeError(SPOOF)
        return covey.FitResult(weights=dict(weights), num_examples=1)


def test_a_clients_error_with_escape_sequences_is_logged_and_shown_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # They reached the operator's terminal raw: a client could clear the screen, set
    # the window's title, or forge a log line.
    strategy = covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=1)
    with caplog.at_level(logging.WARNING, logger="covey"):
        covey.simulate(
            _Spoofing, 2, 1, strategy, {"w": np.zeros(2)}, run_dir=tmp_path / "run", progress=False
        )
    [line] = [r.getMessage() for r in caplog.records if "failed in fit" in r.getMessage()]
    assert line.startswith(
        "round 1: client 1 failed in fit: RuntimeError: \\x1b[2J\\x1b[31mSPOOF\\x1b]0;"
    )
    assert "\x1b" not in line
    monkeypatch.setenv("COLUMNS", "300")
    shown = CliRunner().invoke(app, ["runs", "show", str(tmp_path / "run")])
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.output
    assert "\\x1b[2J\\x1b[31mSPOOF" in shown.output

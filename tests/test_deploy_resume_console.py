"""A resumed run's console says the saved round it calls its callbacks with again is the saved one.

A run stopped before a round's ``on_round`` callbacks all returned calls them again
as it resumes; the server's console, one of them, printed that round's lines again
(``round 1: fit by site-a``, its durations) as if the resumed run had just run it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey import FitResult
from covey.core._history import RoundRecord
from covey.deploy import connect, serve
from covey.deploy._console import ServerConsole


class Plus(covey.Client):
    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights={"w": weights["w"] + 1}, num_examples=1)


def _serve(run_dir: Path, *, resume: bool, stop_after: int | None = None) -> list[str]:
    """Serve 2 rounds to one client named site-a; the console's lines (stopping after a round)."""
    lines: list[str] = []
    names: dict[int, str] = {}
    console = ServerConsole(lines.append, 1, names)
    sites: list[threading.Thread] = []

    def on_round(record: RoundRecord) -> None:
        console.on_round(record)
        if record.round == stop_after:
            raise RuntimeError("the tracker is down")

    def start_site(port: int) -> None:
        site = threading.Thread(
            target=connect,
            args=(Plus(), f"127.0.0.1:{port}"),
            kwargs={"insecure": True, "name": "site-a"},
            daemon=True,
        )
        site.start()
        sites.append(site)

    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=1, min_available_clients=1)
    try:
        serve(
            strategy,
            2,
            {"w": np.zeros(2)},
            "127.0.0.1:0",
            insecure=True,
            run_dir=run_dir,
            resume=resume,
            on_listen=start_site,
            on_round=on_round,
            client_names=names,
            plot=False,
            wait_timeout=30.0,
        )
    finally:
        for site in sites:
            site.join(timeout=30)
    return [line.partition("[/] ")[2] for line in lines]  # without the time of day


def test_the_resumed_console_says_the_round_called_again_is_the_saved_one(
    tmp_path: Path,
) -> None:
    with pytest.raises(RuntimeError, match="the tracker is down"):
        _serve(tmp_path / "run", resume=False, stop_after=1)
    lines = _serve(tmp_path / "run", resume=True)
    assert lines[0] == "resuming after round 1, saved before the run stopped"
    assert not [line for line in lines if line.startswith("round 1")]
    assert [line for line in lines if line.startswith("round 2: fit by")] == [
        "round 2: fit by site-a"
    ]

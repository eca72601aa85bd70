"""A server killed right after it started, before round 0 was saved, resumes from step 0.

The run folder then holds the run's settings and its clients' ids but no
round. Resuming starts it again from the app's initial weights (checked
against the layout the run recorded), instead of refusing and asking the
operator to delete the folder.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.deploy import serve
from covey.server._store import RunStore

APPS = Path(__file__).parent / "apps"


def _loss(rnd: int, weights: covey.Weights) -> tuple[float, dict[str, float]]:
    return float(np.sum(np.asarray(weights["w"]))), {}


def _killed_before_round_zero(run_dir: Path, weights: dict[str, np.ndarray]) -> None:
    """A run folder as a server killed before round 0's commit leaves it."""
    serve(covey.FedAvg(), 0, weights, "127.0.0.1:0", insecure=True, run_dir=run_dir, plot=False)
    with contextlib.closing(sqlite3.connect(run_dir / "run.sqlite")) as conn, conn:
        conn.execute("DELETE FROM rounds")
    with RunStore.open(run_dir) as store:
        store.set_status("running")
    for path in (run_dir / "weights").iterdir():
        path.unlink()


def test_a_run_killed_before_round_zero_resumes_from_step_zero(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    weights = {"w": np.arange(4.0)}
    _killed_before_round_zero(run_dir, weights)
    result = serve(
        covey.FedAvg(),
        0,
        lambda: {"w": np.arange(4.0)},
        "127.0.0.1:0",
        insecure=True,
        run_dir=run_dir,
        resume=True,
        evaluate_fn=_loss,
        plot=False,
    )
    assert [r.round for r in result.history.rounds] == [0]
    assert result.history.rounds[0].central_loss == 6.0
    with RunStore.open(run_dir) as store:
        assert store.status == "finished"
        assert store.rounds() == [0]
        assert store.config["model"] == result.history.config["model"]


def test_the_same_arrays_in_another_order_resume_from_step_zero(tmp_path: Path) -> None:
    # The layout recorded as text was compared in order: the same arrays given in
    # another order were refused, though a run that saved rounds takes them.
    run_dir = tmp_path / "run"
    _killed_before_round_zero(run_dir, {"w": np.arange(4.0), "b": np.zeros(2, np.float32)})
    result = serve(
        covey.FedAvg(),
        0,
        {"b": np.zeros(2, np.float32), "w": np.arange(4.0)},
        "127.0.0.1:0",
        insecure=True,
        run_dir=run_dir,
        resume=True,
        evaluate_fn=_loss,
        plot=False,
    )
    assert [r.round for r in result.history.rounds] == [0]
    assert result.history.rounds[0].central_loss == 6.0
    with RunStore.open(run_dir) as store:
        assert store.rounds() == [0]


def test_a_model_of_another_layout_is_refused_naming_both(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _killed_before_round_zero(run_dir, {"w": np.arange(4.0)})
    with pytest.raises(ValueError, match=r"float64\[4\].*float64\[5\]|float64\[5\].*float64\[4\]"):
        serve(
            covey.FedAvg(),
            0,
            {"w": np.arange(5.0)},
            "127.0.0.1:0",
            insecure=True,
            run_dir=run_dir,
            resume=True,
            plot=False,
        )


def test_covey_server_resume_starts_such_a_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(APPS))
    sys.modules.pop("tiny_app", None)
    import tiny_app

    run_dir = tmp_path / "run"
    _killed_before_round_zero(run_dir, tiny_app.initial())
    args = ["server", "--app", "tiny_app:server_app", "--insecure", "--resume", str(run_dir)]
    args += ["--address", "127.0.0.1:0", "--rounds", "0", "--no-plot"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    with RunStore.open(run_dir) as store:
        assert store.status == "finished"
        assert store.rounds() == [0]


def test_a_run_on_port_zero_records_the_port_it_got_so_a_resume_listens_there(
    tmp_path: Path,
) -> None:
    # Clients were told the port the server got; a resume without --address must
    # listen there again, not on a new random port they cannot find.
    run_dir = tmp_path / "run"
    ports: list[int] = []
    serve(
        covey.FedAvg(),
        0,
        {"w": np.zeros(2)},
        "127.0.0.1:0",
        insecure=True,
        run_dir=run_dir,
        plot=False,
        on_listen=ports.append,
    )
    with RunStore.open(run_dir) as store:
        assert store.config["address"] == f"127.0.0.1:{ports[0]}"
        store.set_status("failed")  # stopped, so that 0 rounds resume it
    serve(
        covey.FedAvg(),
        0,
        None,
        insecure=True,
        run_dir=run_dir,
        resume=True,
        plot=False,
        on_listen=ports.append,
    )
    assert ports[1] == ports[0]

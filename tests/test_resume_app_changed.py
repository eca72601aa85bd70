"""Resuming a run with an app whose model changed is refused before the server listens.

The saved model is the run's: its clients, built from the same app as the
server's initial weights, would only fail in the next round on a model of
another layout. The refusal names the arrays that differ and leaves the run
folder as it was.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.deploy import serve
from covey.server._store import RunStore

APPS = Path(__file__).parent / "apps"


def _stopped_run(run_dir: Path, weights: dict[str, np.ndarray]) -> None:
    """A run that saved round 0 and stopped (a finished one would not resume with 0 rounds)."""
    serve(covey.FedAvg(), 0, weights, "127.0.0.1:0", insecure=True, run_dir=run_dir, plot=False)
    with RunStore.open(run_dir) as store:
        store.set_status("failed")


def _never_listens(port: int) -> None:
    raise AssertionError(f"the server listened on {port} for an app of another model")


def _resume(run_dir: Path, weights: Any, **kwargs: Any) -> covey.deploy.ServeResult:
    with RunStore.open(run_dir) as store:  # stopped again, if a resume finished it
        store.set_status("failed")
    return serve(
        covey.FedAvg(),
        0,
        weights,
        "127.0.0.1:0",
        insecure=True,
        run_dir=run_dir,
        resume=True,
        plot=False,
        **kwargs,
    )


def test_an_app_whose_model_changed_is_refused_naming_the_array(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _stopped_run(run_dir, {"w": np.zeros(4), "b": np.zeros(2)})
    changed = {"w": np.zeros(5), "b": np.zeros(2, dtype=np.float32), "extra": np.zeros(1)}
    with pytest.raises(ValueError, match="do not have the layout") as refused:
        _resume(run_dir, lambda: changed, on_listen=_never_listens)
    said = str(refused.value)
    assert "'w' is float64[4] in the run's model but float64[5] in the app's" in said
    assert "'b' is float64[2] in the run's model but float32[2] in the app's" in said
    assert "'extra' is only in the app's (float64[1])" in said
    assert str(run_dir) in said
    assert "(round 0)" in said
    with RunStore.open(run_dir) as store:  # the folder is as it was
        assert store.status == "failed"
        assert store.rounds() == [0]


def test_the_same_arrays_or_no_initial_weights_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _stopped_run(run_dir, {"w": np.zeros(4), "b": np.zeros(2)})
    again = _resume(run_dir, lambda: {"b": np.ones(2), "w": np.ones(4)})  # another order
    assert again.weights["w"].tolist() == [0.0] * 4  # the saved model, not the app's
    assert _resume(run_dir, None).weights["b"].tolist() == [0.0] * 2


def test_covey_server_resume_with_a_changed_app_says_which_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(APPS))
    sys.modules.pop("tiny_app", None)
    run_dir = tmp_path / "run"
    _stopped_run(run_dir, {"w": np.zeros(4)})  # tiny_app's model is {"w": zeros(8)}
    args = ["server", "--app", "tiny_app:server_app", "--insecure", "--resume", str(run_dir)]
    args += ["--address", "127.0.0.1:0", "--rounds", "1", "--no-plot"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output  # a mistake no restart mends
    flat = " ".join(out.output.split())
    assert "'w' is float64[4] in the run's model but float64[8] in the app's" in flat
    assert "listening" not in flat

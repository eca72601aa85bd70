"""A finished run whose model file cannot be written fails, naming why and what it kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

import covey
import covey.server._roundfiles as roundfiles
from covey.cli import app
from covey.server import RunStore


@pytest.fixture
def full_disk_for_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing a ``model.safetensors`` or ``m.safetensors`` fails as a full disk does."""
    real = roundfiles.write_weights

    def write(final: Path, *args: Any, **kwargs: Any) -> str:
        if final.name in ("model.safetensors", "m.safetensors"):
            raise OSError(28, "No space left on device", str(final))
        return real(final, *args, **kwargs)

    monkeypatch.setattr(roundfiles, "write_weights", write)


def _said(result: Any) -> str:
    return " ".join(result.output.split())


def test_covey_run_fails_when_its_model_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_disk_for_models: None
) -> None:
    made = CliRunner().invoke(app, ["new", "full-fed", "--dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    root = tmp_path / "full-fed"
    monkeypatch.syspath_prepend(str(root))
    result = CliRunner().invoke(
        app, ["run", str(root), "--set", "rounds=1", "--set", "clients=2"], env={"COLUMNS": "200"}
    )
    said = _said(result)
    # Before, exit status 0 with only a yellow line: the model lost, the run a success.
    assert result.exit_code == 1, said
    (run,) = root.glob("runs/sim-*")
    assert f"the model was not saved to {run / 'model.safetensors'}:" in said
    assert "No space left on device" in said
    assert f"could not be written to {run / 'model.safetensors'}" in said
    kept = run / "weights" / "round-00001.safetensors"
    assert f"that model in {kept}" in said
    assert not (run / "model.safetensors").exists()
    history = covey.History.load(run)
    assert [r.round for r in history.rounds] == [0, 1]
    with RunStore.open(run) as store:
        weights, _, _ = store.load_round(1)
    assert set(weights) == set(load_file(kept))


def test_covey_demo_out_fails_when_the_model_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_disk_for_models: None
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            *("demo", "--rounds", "1", "--clients", "4", "--no-plot"),
            *("--run-dir", "r", "--out", "m.safetensors"),
        ],
        env={"COLUMNS": "200"},
    )
    said = _said(result)
    assert result.exit_code == 1, said
    assert "could not be written to m.safetensors" in said
    assert "r/weights/round-00001.safetensors" in said
    assert not (tmp_path / "m.safetensors").exists()


def test_a_model_that_cannot_be_written_is_named_not_its_temporary_file(tmp_path: Path) -> None:
    # Before: "the model was not saved: [Errno 2] No such file or directory:
    # '/proc/.x.5c95ba0273e9.tmp'", naming the temporary file it is written through.
    import io

    import numpy as np
    from rich.console import Console

    from covey.cli._model import save_model

    out = io.StringIO()
    to = tmp_path / "gone" / "m.safetensors"
    console = Console(file=out, width=300, highlight=False)
    assert not save_model(tmp_path, 3, {"w": np.zeros(2)}, console, to=to)
    said = " ".join(out.getvalue().split())
    assert said == f"the model was not saved to {to}: No such file or directory"

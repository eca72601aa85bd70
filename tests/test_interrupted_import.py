"""Ctrl-C while a compiled module initializes is Ctrl-C, not the ImportError it turns into.

SIGINT landing in the initialization of a compiled module (matplotlib's, as a
run draws its first plot) surfaces as ``ImportError("initialization failed")``
caused by the ``KeyboardInterrupt``. The run is interrupted, not failed: it is
recorded so, the interrupt is raised, and the command line exits 130.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from _procs import undated
from covey.core._interrupt import as_interrupt, interrupt_in


def _import_interrupted(*args: object, **kwargs: object) -> None:
    """What a Ctrl-C does to a compiled module's import: an ImportError caused by it."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as exc:
        raise ImportError("initialization failed") from exc


def _serve_round_0(**options: Any) -> Any:
    from covey.deploy._server import serve

    strategy = covey.FedAvg(fraction_evaluate=0.0)  # round 0 needs no client
    return serve(strategy, 0, {"w": np.zeros(2)}, "127.0.0.1:0", insecure=True, **options)


def _hidden() -> None:
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise RuntimeError("replaced") from None


def _while_stopping() -> None:
    try:
        raise KeyboardInterrupt("SIGTERM")
    except KeyboardInterrupt:
        raise OSError("while stopping")  # noqa: B904 - its context is the point


def test_the_interrupt_behind_an_error_is_found_as_python_shows_the_chain() -> None:
    with pytest.raises(ImportError) as caught:
        _import_interrupted()
    stop = as_interrupt(caught.value)
    assert isinstance(stop, KeyboardInterrupt)
    assert stop.__cause__ is caught.value
    assert as_interrupt(KeyboardInterrupt("SIGTERM")).args == ("SIGTERM",)
    plain = ValueError("no interrupt here")
    assert as_interrupt(plain) is plain
    with pytest.raises(RuntimeError) as hidden:  # replaced on purpose: not an interrupt
        _hidden()
    assert interrupt_in(hidden.value) is None
    with pytest.raises(OSError, match="while stopping") as raised:  # the interrupt stopped it
        _while_stopping()
    found = interrupt_in(raised.value)
    assert isinstance(found, KeyboardInterrupt)
    assert found.args == ("SIGTERM",)


def test_ctrl_c_as_a_served_run_draws_its_first_plot_is_recorded_as_an_interrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covey.server import _outputs
    from covey.server._store import RunStore

    run_dir = tmp_path / "run"
    monkeypatch.setattr(_outputs, "plot_history", _import_interrupted)
    with pytest.raises(KeyboardInterrupt) as stopped:
        _serve_round_0(run_dir=run_dir, plot=True)
    assert isinstance(stopped.value.__cause__, ImportError)  # where it landed, kept
    with RunStore.open(run_dir, exclusive=True) as store:  # let go of: it resumes
        assert store.status == "failed"
        assert store.events()[-1][2:] == ("stopped", "interrupted (SIGINT)")
    history = covey.History.load(run_dir)
    assert history.stopped_reason == "interrupted (SIGINT)"
    assert [r.round for r in history.rounds] == [0]
    monkeypatch.undo()
    resumed = _serve_round_0(run_dir=run_dir, resume=True, plot=False)
    assert [r.round for r in resumed.history.rounds] == [0]


def _app() -> types.SimpleNamespace:
    app = types.SimpleNamespace(
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        rounds=0,
        weights=lambda: {"w": np.zeros(1)},
        evaluate_fn=None,
    )
    app.seed, app.compression = 0, None
    return app


def _flags(run: Path) -> dict[str, Any]:
    flags = {"run": run, "resuming": False, "port_file": None, "address": "127.0.0.1:0"}
    flags |= {"certs": None, "insecure": True, "rounds": None, "plot": True}
    flags |= {"round_timeout": None, "wait_timeout": None, "heartbeat": None}
    flags |= {"compression": None, "keep_last": None}
    return flags | {"resume_hint": f"covey server --resume {run} --insecure"}


def test_covey_server_interrupted_as_its_plot_imports_exits_130_with_the_resume_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import signal

    import typer

    from covey.deploy._cli import _serve
    from covey.server import _outputs

    run = tmp_path / "run"
    monkeypatch.setattr(_outputs, "plot_history", _import_interrupted)
    sigterm = signal.getsignal(signal.SIGTERM)  # _serve sets its own handler
    try:
        with pytest.raises(typer.Exit) as info:
            _serve(_app(), {}, _flags(run))
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    said = " ".join(capsys.readouterr().err.split())
    assert info.value.exit_code == 130, said
    assert said.endswith(
        f"interrupted: the run in {run} is kept; continue it with "
        f"`covey server --resume {run} --insecure`"
    ), said


def test_covey_server_interrupted_as_it_sets_up_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import signal

    import typer

    import covey.deploy._server
    from covey.deploy._cli import _serve

    monkeypatch.setattr(covey.deploy._server, "serve", _import_interrupted)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(typer.Exit) as info:
            _serve(_app(), {}, _flags(tmp_path / "run"))
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    said = " ".join(undated(capsys.readouterr().err).split())
    assert info.value.exit_code == 130, said
    assert said == "interrupted before the run started"


def test_a_simulation_interrupted_as_a_module_imports_is_recorded_as_an_interrupt(
    tmp_path: Path,
) -> None:
    class Half(covey.Client):
        def fit(self, weights: covey.Weights, config: covey.core.Config) -> covey.FitResult:
            return covey.FitResult(weights={k: v / 2 for k, v in weights.items()}, num_examples=1)

    def ctrl_c(record: covey.core.RoundRecord) -> None:
        if record.round == 1:
            _import_interrupted()

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        covey.simulate(
            lambda cid: Half(),
            num_clients=2,
            rounds=3,
            strategy=covey.FedAvg(fraction_evaluate=0.0),
            initial_weights={"w": np.ones(2)},
            run_dir=run,
            on_round=ctrl_c,
        )
    assert covey.History.load(run).stopped_reason == "interrupted (SIGINT)"
    meta = json.loads((run / "run.json").read_text())
    assert (meta["status"], meta["stopped_reason"]) == ("failed", "interrupted (SIGINT)")


def test_the_command_line_exits_130_on_an_error_that_ctrl_c_caused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import covey.cli as cli
    import covey.cli._app as commands

    monkeypatch.setattr(commands, "app", _import_interrupted)
    monkeypatch.setattr("sys.argv", ["covey", "runs", "list"])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 130
    assert "ImportError" not in capsys.readouterr().err


def test_ctrl_c_as_a_simulated_client_imports_a_module_stops_the_run(tmp_path: Path) -> None:
    # The client's fit (inline: in this process) was interrupted, not the client failing:
    # the run went on, the client's failure recorded, as if Ctrl-C had not been pressed.
    class Importing(covey.Client):
        def fit(self, weights: covey.Weights, config: covey.core.Config) -> covey.FitResult:
            _import_interrupted()
            return covey.FitResult(weights=weights, num_examples=1)

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        covey.simulate(
            lambda cid: Importing(),
            num_clients=2,
            rounds=2,
            strategy=covey.FedAvg(fraction_evaluate=0.0),
            initial_weights={"w": np.ones(2)},
            backend="inline",
            run_dir=run,
        )
    assert covey.History.load(run).stopped_reason == "interrupted (SIGINT)"

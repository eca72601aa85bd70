"""One process writes a run folder at a time: the others are refused and leave it untouched."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.server._store import RunStore
from covey.sim._rundir import run_folder


def test_a_server_refused_a_simulations_folder_writes_nothing_in_it(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with run_folder(folder):  # as simulate(run_dir=...) holds it while it runs
        with pytest.raises(OSError, match="in use by another covey"):
            RunStore.create(folder, config={"rounds": 1}, exclusive=True)
        assert sorted(p.name for p in folder.iterdir()) == ["run.lock"]
    # Once let go, the folder takes a run as any new one does.
    with RunStore.create(folder, config={"rounds": 1}, exclusive=True) as store:
        store.save_round(0, {"w": np.zeros(2)}, None)
    assert RunStore.open(folder).rounds() == [0]


def test_a_simulation_refused_a_served_runs_folder(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with RunStore.create(folder, config={"rounds": 1}, exclusive=True):
        with pytest.raises(ValueError, match="in use by another run of this same process"):
            covey.simulate(
                lambda cid: covey.Client(), 2, 1, covey.FedAvg(), {"w": np.zeros(2)}, run_dir=folder
            )
        written = {p.name for p in folder.iterdir()}
        assert not written & {"history.json", "run.json"}


class Same(covey.Client):
    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(weights=dict(weights), num_examples=1)


HOLD = """
import sys
from pathlib import Path
from covey.server._rundb import hold_run

hold_run(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def _held(folder: Path) -> Iterator[int]:
    """``folder``'s run held by another live process (its pid yielded) for the block."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:  # its streams closed, and waited for, as the block ends
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            yield holder.pid
        finally:
            assert holder.stdin is not None
            holder.stdin.close()  # it exits, letting go of the lock
            holder.wait(30)


def test_a_resume_of_a_run_still_running_says_to_wait_or_stop_it(tmp_path: Path) -> None:
    # It said "give this run a folder of its own": no answer for a run to continue.
    folder = tmp_path / "run"

    def simulate(rounds: int, resume: bool) -> covey.sim.SimulationResult:
        strategy = covey.FedAvg(fraction_evaluate=0.0)
        weights = {"w": np.zeros(2)}
        return covey.simulate(
            lambda cid: Same(), 2, rounds, strategy, weights, run_dir=folder, resume=resume
        )

    simulate(1, False)
    with _held(folder) as pid, pytest.raises(ValueError, match="still running") as refused:
        simulate(2, True)
    said = str(refused.value)
    assert f"the run there is still running in pid {pid}" in said
    stop = f"stop it first (Ctrl-C in its terminal, or `kill {pid}`), then resume it"
    assert f"wait for it to end, or {stop}" in said
    assert "folder of its own" not in said
    result = simulate(2, True)  # once it ended, the resume goes on
    assert [r.round for r in result.history.rounds] == [0, 1, 2]


def test_a_served_run_resumed_while_still_running_says_to_wait_or_stop_it(
    tmp_path: Path,
) -> None:
    # It said "stop that server first, or give another run folder".
    from covey.deploy import serve

    folder = tmp_path / "run"
    with RunStore.create(folder, config={"rounds": 1}, exclusive=True):
        pass
    with _held(folder) as pid, pytest.raises(OSError, match="still running") as refused:
        serve(covey.FedAvg(), 2, None, insecure=True, run_dir=folder, resume=True)
    said = str(refused.value)
    assert f"the run in {folder} is still running in pid {pid}" in said
    stop = f"stop it first (Ctrl-C in its terminal, or `kill {pid}`), then resume it"
    assert f"wait for it to end, or {stop}" in said
    assert "another run folder" not in said


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_server_refuses_a_simulations_folder_before_writing_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, serve(run_dir=...) of a simulation that kept no checkpoint (top-k) wrote
    # its own history.json over the simulation's, and serve(resume=True) of one that
    # kept one went on with it as a served run, mixing the two in one folder.
    from typer.testing import CliRunner

    from covey.cli import app
    from covey.deploy import serve

    def simulate(folder: Path, compression: str | None) -> None:
        strategy = covey.FedAvg(fraction_evaluate=0.0)
        covey.simulate(
            lambda cid: Same(),
            2,
            2,
            strategy,
            {"w": np.zeros(8)},
            run_dir=folder,
            compression=compression,
        )

    kept, topk = tmp_path / "kept", tmp_path / "topk"
    simulate(kept, None)
    simulate(topk, "topk:0.5")
    before = {folder: _folder_files(folder) for folder in (kept, topk)}
    for folder, files in (
        (kept, "run.sqlite, history.json, run.json"),
        (topk, "history.json, run.json"),
    ):
        with pytest.raises(FileExistsError, match=rf"already holds a run \({files}\); a new run"):
            serve(covey.FedAvg(), 2, {"w": np.zeros(8)}, insecure=True, run_dir=folder)
    with pytest.raises(ValueError, match=r"holds a simulation, not a served run: continue it wi"):
        serve(covey.FedAvg(), 3, {"w": np.zeros(8)}, insecure=True, run_dir=kept, resume=True)
    with RunStore.open(kept) as store:
        assert store.status == "finished"
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    for folder in (kept, topk):
        result = CliRunner().invoke(
            app,
            ["server", "--app", "tiny_app:server_app", "--insecure", "--run-dir", str(folder)],
        )
        assert result.exit_code == 2, result.output
        assert "which a new run would write over; give another folder" in " ".join(
            result.output.split()
        )
    assert {folder: _folder_files(folder) for folder in (kept, topk)} == before

"""One process writes a run folder at a time: the others are refused and leave it untouched."""

from __future__ import annotations

from pathlib import Path

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

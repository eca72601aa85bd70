"""What an operator gets wrong when deploying: each mistake is refused, naming what is wrong."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import covey

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served


def test_a_port_held_by_another_covey_server_is_refused(tmp_path: Path) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    first = Served(strategy, 1, run_dir=tmp_path / "first")
    second = Served(
        strategy, 1, address=f"127.0.0.1:{first.port}", run_dir=tmp_path / "second", wait_timeout=2
    )
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
        second.join(30)  # a second server that listened would stop waiting for clients instead
    assert not (tmp_path / "second").exists()
    clients = [Joined(first.port, name=f"c{k}") for k in range(2)]
    assert [r.round for r in first.join().history.rounds] == [0, 1]
    for c in clients:
        c.join()


def test_a_run_folder_served_by_another_server_is_refused(tmp_path: Path) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    first = Served(strategy, 1, run_dir=tmp_path / "run")
    second = Served(
        strategy, 1, run_dir=tmp_path / "run", resume=True, address="127.0.0.1:0", wait_timeout=2
    )
    with pytest.raises(OSError, match=r"in use by another covey server \(pid \d+\)"):
        second.join(30)  # a second server on the run would wait for clients, then fail it
    clients = [Joined(first.port, name=f"c{k}") for k in range(2)]
    assert [r.round for r in first.join().history.rounds] == [0, 1]
    for c in clients:
        c.join()
    again = Served(strategy, 2, run_dir=tmp_path / "run", resume=True, address="127.0.0.1:0")
    clients = [Joined(again.port, name=f"c{k}") for k in range(2)]
    assert [r.round for r in again.join().history.rounds] == [0, 1, 2]  # the lock went with it
    for c in clients:
        c.join()

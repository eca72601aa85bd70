"""A run folder that can be written but whose ``run.sqlite`` cannot: resumes are refused clearly.

SQLite opens such a file read-only without a word; the resume then failed at its
first write (``attempt to write a readonly database``), with a traceback and
exit status 1, a round into a served run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import covey
from _clirun import (
    covey as covey_cli,
)
from _clirun import (
    in_tmp,  # noqa: F401 - the fixture, used by pytestmark
    last_line,
)
from covey.server._runlock import RunRefusedError

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served

pytestmark = pytest.mark.usefixtures("in_tmp")


@contextmanager
def _read_only(file: Path) -> Iterator[None]:
    """``file`` read-only to this process (its folder stays writable); as it was after."""
    if os.geteuid() != 0:
        file.chmod(0o444)
        try:
            yield
        finally:
            file.chmod(0o644)
        return
    # Root writes any file whatever its mode: a read-only bind mount of the file itself.
    mount = ["mount", "--bind", str(file), str(file)]
    bind = subprocess.run(mount, capture_output=True, check=False, timeout=30)
    if bind.returncode != 0:
        pytest.skip(f"root here may not mount (to make a file read-only to root): {bind}")
    try:
        remount = ["mount", "-o", "remount,ro,bind", str(file)]
        if subprocess.run(remount, capture_output=True, check=False, timeout=30).returncode != 0:
            pytest.skip("root here may not remount a bind mount read-only")
        yield
    finally:
        subprocess.run(["umount", str(file)], check=True, timeout=30)


def _said(text: str, run: Path) -> None:
    db = run / "run.sqlite"
    assert f"cannot open the run in {run} to serve or resume it: its database file {db}" in text
    assert "cannot be written" in text
    assert "copy the run folder somewhere writable" in text


def test_a_served_run_with_a_read_only_database_is_refused_before_it_listens() -> None:
    run = Path("run").absolute()
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, 1, run_dir=run, plot=False)
    Joined(served.port).join()
    served.join()
    before = sorted(p.name for p in run.iterdir())
    with _read_only(run / "run.sqlite"):
        with pytest.raises(RunRefusedError) as refused:
            covey.deploy.serve(strategy, 2, None, run_dir=run, resume=True, insecure=True)
        _said(str(refused.value), run)
        code, out = covey_cli(
            "server", "--app", "tiny_app:server_app", "--insecure", "--resume", str(run)
        )
        assert code == 2, out
        assert "Traceback" not in out
        _said(" ".join(last_line(out).split()), run)
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_simulation_with_a_read_only_database_is_refused() -> None:
    run = Path("sim").absolute()

    def client_fn(cid: int) -> covey.Client:
        from _live import Fit

        return Fit()

    strategy = covey.FedAvg(fraction_evaluate=0.0)
    covey.simulate(client_fn, 2, 1, strategy, {"w": np.zeros(4)}, run_dir=run)
    with _read_only(run / "run.sqlite"):
        with pytest.raises(RunRefusedError) as refused:
            covey.simulate(client_fn, 2, 2, strategy, {"w": np.zeros(4)}, run_dir=run, resume=True)
        _said(str(refused.value), run)
    result = covey.simulate(client_fn, 2, 2, strategy, {"w": np.zeros(4)}, run_dir=run, resume=True)
    assert [r.round for r in result.history.rounds] == [0, 1, 2]


def test_covey_run_resume_of_a_read_only_database_exits_2() -> None:
    assert covey_cli("new", "ro")[0] == 0
    code, out = covey_cli("run", "ro", "--set", "rounds=1")
    assert code == 0, out
    (run,) = (Path("ro") / "runs").absolute().iterdir()
    with _read_only(run / "run.sqlite"):
        code, out = covey_cli("run", "ro", "--resume", str(run), "--set", "rounds=2")
    assert code == 2, out
    assert last_line(out).startswith(f"error: --resume {run}: cannot open the run in "), out
    _said(" ".join(out.split("error:")[-1].split()), run)

"""Resuming a finished deployed run: nothing to do says so; more rounds train on, recorded."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from _procs import undated
from covey.cli import app
from covey.dashboard._runs import read_run, summary
from covey.deploy import serve
from covey.server._store import RunStore

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served

pytestmark = pytest.mark.timeout(120)

APPS = Path(__file__).parent / "apps"


def _strategy() -> covey.Strategy:
    return covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)


def _finished(run_dir: Path) -> None:
    weights = {"w": np.zeros(8)}
    serve(_strategy(), 0, weights, "127.0.0.1:0", insecure=True, run_dir=run_dir, plot=False)


def _never_listens(port: int) -> None:
    raise AssertionError(f"the server listened on {port} to resume a finished run")


def _resume(run_dir: Path, rounds: int, **options: Any) -> Any:
    """``serve(resume=True)`` of ``run_dir`` for ``rounds`` rounds (by default, not listening)."""
    options.setdefault("on_listen", _never_listens)
    return serve(
        _strategy(),
        rounds,
        None,
        "127.0.0.1:0",
        insecure=True,
        run_dir=run_dir,
        resume=True,
        plot=False,
        **options,
    )


def _stopped_after_round_2(run_dir: Path, planned: int = 2) -> None:
    """A served run of 2 rounds, left as a server asked for ``planned`` rounds and stopped."""
    served = Served(_strategy(), 2, run_dir=run_dir, address="127.0.0.1:0")
    joined = Joined(served.port)
    served.join(60)
    joined.join(30)
    with RunStore.open(run_dir) as store:
        if planned != 2:
            store.set_rounds(planned)
        store.set_status("failed")


def test_a_finished_run_resumed_with_no_more_rounds_says_so_before_listening(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    _finished(run_dir)
    with pytest.raises(ValueError, match=r"is finished \(round 0 was its last\)") as refused:
        _resume(run_dir, 0)
    assert "nothing to resume with rounds=0" in str(refused.value)
    assert "more rounds than 0" in str(refused.value)
    with RunStore.open(run_dir) as store:  # left as it was, and its lock let go
        assert store.status == "finished"


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_finished_run_resumed_with_more_rounds_trains_on_and_records_the_new_count(
    tmp_path: Path,
) -> None:
    # history.json kept the first count: `covey runs list` showed "2/1" after it.
    run_dir = tmp_path / "run"
    _finished(run_dir)
    served = Served(_strategy(), 2, run_dir=run_dir, resume=True, address="127.0.0.1:0")
    joined = Joined(served.port)
    result = served.join(60)
    joined.join(30)
    assert [r.round for r in result.history.rounds] == [0, 1, 2]
    assert result.history.config["rounds"] == 2
    assert covey.History.load(run_dir).config["rounds"] == 2
    with RunStore.open(run_dir) as store:  # it kept the first count: 0
        assert store.config["rounds"] == 2
    shown = summary(read_run("run", run_dir))  # the dashboard reads both files
    assert (shown["rounds_planned"], shown["status"]) == (2, "finished")


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_stopped_run_resumed_with_fewer_rounds_than_it_ran_is_refused_before_listening(
    tmp_path: Path,
) -> None:
    # It used to go on: marked finished with rounds=1 recorded and rounds 0-2 kept.
    run_dir = tmp_path / "run"
    _stopped_after_round_2(run_dir)
    with pytest.raises(
        ValueError, match=r"stopped after round 2: it cannot be resumed with rounds=1"
    ) as refused:
        _resume(run_dir, 1)
    assert "resume it with rounds=2 or more" in str(refused.value)
    with RunStore.open(run_dir) as store:  # left as it was, and its lock let go
        assert store.status == "failed"


def _tiny_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``tiny_app:server_app`` (one client) importable, fresh."""
    monkeypatch.syspath_prepend(str(APPS))
    monkeypatch.setenv("COVEY_TINY_CLIENTS", "1")
    sys.modules.pop("tiny_app", None)


def test_covey_server_resume_of_a_finished_run_without_rounds_keeps_its_own_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It used to take the app's count (2), listen and wait for clients, while the
    # run's history.json kept its own (0).
    _tiny_app(monkeypatch)
    run_dir = tmp_path / "run"
    args = ["server", "--app", "tiny_app:server_app", "--insecure", "--address", "127.0.0.1:0"]
    args += ["--no-plot", "--wait-timeout", "1"]
    first = CliRunner().invoke(app, [*args, "--rounds", "0", "--run-dir", str(run_dir)])
    assert first.exit_code == 0, first.output
    out = CliRunner().invoke(app, [*args, "--resume", str(run_dir)])
    flat = " ".join(out.output.split())
    assert out.exit_code == 2, out.output  # a mistake no restart mends
    assert "is finished (round 0 was its last)" in flat
    assert "covey run --set rounds=1 or more" in flat
    assert "nothing to resume with rounds=0" in flat
    assert "listening" not in flat


def test_covey_server_resume_refused_on_a_taken_port_does_not_say_the_run_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It printed "run stopped: the model after round 2 ..." though the run never started.
    import socket

    _tiny_app(monkeypatch)
    run_dir = tmp_path / "run"
    _stopped_after_round_2(run_dir, planned=4)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        args = ["server", "--app", "tiny_app:server_app", "--insecure", "--address", address]
        out = CliRunner().invoke(app, [*args, "--no-plot", "--resume", str(run_dir)])
    flat = " ".join(out.output.split())
    assert out.exit_code == 2, out.output  # a mistake in the address given
    assert f"{address} is in use" in flat
    assert "run stopped" not in flat
    assert (run_dir / "weights" / "round-00002.safetensors").is_file()  # kept as it was


def _counts(run_dir: Path) -> tuple[object, object, object]:
    """The round count of ``run.sqlite``, of ``history.json``, and the one a resume reads."""
    from covey.deploy._cli_resume import recorded_rounds
    from covey.server._rundb import open_read_only

    conn = open_read_only(run_dir / "run.sqlite")
    try:
        (text,) = conn.execute("SELECT config FROM run WHERE id = 1").fetchone()
    finally:
        conn.close()
    history = covey.History.load(run_dir).config.get("rounds")
    return json.loads(text).get("rounds"), history, recorded_rounds(run_dir)


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_resume_for_more_rounds_stopped_before_its_first_new_round_keeps_one_count(
    tmp_path: Path,
) -> None:
    # run.sqlite took the new count as the run was reopened, history.json only with
    # its first new round: a server killed while it waited for clients left run.sqlite
    # saying 2 and history.json (read first by a --resume without --rounds) saying 0.
    run_dir = tmp_path / "run"
    _finished(run_dir)
    seen: list[tuple[object, object, object]] = []

    def killed_while_waiting(port: int) -> None:  # what a kill -9 now leaves on disk
        seen.append(_counts(run_dir))
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _resume(run_dir, 2, on_listen=killed_while_waiting)
    assert seen == [(0, 0, 0)]
    assert _counts(run_dir) == (0, 0, 0)
    with pytest.raises(covey.FederationError, match="connected within"):  # no client came
        _resume(run_dir, 2, on_listen=None, wait_timeout=0.2)
    assert _counts(run_dir) == (0, 0, 0)


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_stopped_run_resumed_with_no_round_left_records_the_count_it_ended_at(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    _stopped_after_round_2(run_dir, planned=5)
    saved = json.loads((run_dir / "history.json").read_text())
    saved["config"]["rounds"] = 5
    (run_dir / "history.json").write_text(json.dumps(saved))
    # No client comes back: it waits for its one client at most wait_timeout.
    result = _resume(run_dir, 2, on_listen=None, wait_timeout=0.2)
    assert [r.round for r in result.history.rounds] == [0, 1, 2]
    assert _counts(run_dir) == (2, 2, 2)
    assert summary(read_run("run", run_dir))["status"] == "finished"


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_run_resumed_with_no_round_left_tells_its_returning_client_the_run_is_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A server killed after saving its last round stopped at once when resumed: its
    # clients, reconnecting, found no server and exited 1 after --retry-for.
    run_dir = tmp_path / "run"
    _stopped_after_round_2(run_dir)
    with caplog.at_level(logging.WARNING, logger="covey"):
        served = Served(_strategy(), 2, run_dir=run_dir, resume=True, wait_timeout=60.0)
        joined = Joined(served.port, max_attempts=3)
        result = served.join(90)
        joined.join(30)
    assert "the run was over already (round 2 was its last)" in caplog.text
    assert joined.error is None
    assert joined.result is not None
    assert (joined.result.reason, joined.result.tasks) == ("the run is over", 0)
    assert [r.round for r in result.history.rounds] == [0, 1, 2]
    assert summary(read_run("run", run_dir))["status"] == "finished"


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_resumed_run_deletes_the_output_files_a_killed_server_left_half_written(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    _finished(run_dir)
    # a server killed while it rewrote history.json and plot.png leaves these behind
    stale = [run_dir / ".history.json.0123456789ab.tmp", run_dir / ".plot.png.ba9876543210.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    served = Served(_strategy(), 1, run_dir=run_dir, resume=True, address="127.0.0.1:0")
    joined = Joined(served.port)
    served.join(60)
    joined.join(30)
    assert not [p.name for p in stale if p.exists()]
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_run_whose_weights_folder_cannot_be_written_is_refused_before_listening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It listened, took clients and trained a whole round before its first save failed.
    import os
    import tempfile

    from covey.deploy import _servechecks

    run_dir = tmp_path / "run"
    _stopped_after_round_2(run_dir, planned=4)
    weights = run_dir / "weights"
    if os.geteuid() != 0:
        weights.chmod(0o500)
    else:  # permissions do not stop root: the folder refuses as an immutable one would
        real = tempfile.mkstemp

        def refusing(*args: Any, **kwargs: Any) -> tuple[int, str]:
            if Path(kwargs.get("dir", "")) == weights:
                raise PermissionError(1, "Operation not permitted")
            return real(*args, **kwargs)

        monkeypatch.setattr(_servechecks.tempfile, "mkstemp", refusing)
    try:
        with pytest.raises(OSError, match=r"cannot be resumed: .*weights cannot be written"):
            _resume(run_dir, 4)
    finally:
        weights.chmod(0o700)
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".covey-write-check")]
    with RunStore.open(run_dir) as store:  # left as it was, and its lock let go
        assert store.status == "failed"


def test_a_resumed_run_samples_with_its_own_seed_whatever_the_app_gives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rounds after a resume sample the clients the run's recorded seed draws, as uninterrupted."""

    def strategy() -> covey.Strategy:
        return covey.FedAvg(
            fraction_fit=0.5, min_fit_clients=3, min_available_clients=6, fraction_evaluate=0.0
        )

    def served(rounds: int, seed: int, **options: Any) -> None:
        run = Served(strategy(), rounds, run_dir=tmp_path / "run", seed=seed, **options)
        joined = [Joined(run.port, name=f"site-{k}") for k in range(6)]
        run.join(60)
        for j in joined:
            j.join(30)

    served(2, seed=5)
    with RunStore.open(tmp_path / "run") as store:
        store.set_rounds(4)
        store.set_status("failed")
    with caplog.at_level("WARNING", logger="covey"):
        served(4, seed=0, resume=True, address=None)
    assert "with its own seed 5, not 0" in caplog.text
    history = covey.History.load(tmp_path / "run")
    assert history.config["seed"] == 5
    cids = sorted(int(cid) for cid in history.clients)
    drawn = {
        seed: [sorted(strategy().sample(cids, 3, rnd, seed, purpose=0)) for rnd in (3, 4)]
        for seed in (5, 0)
    }
    assert drawn[5] != drawn[0]  # else the test could not tell the seeds apart
    assert [sorted(r.fit_participants) for r in history.rounds[3:5]] == drawn[5]


def test_a_run_served_with_tls_and_resumed_without_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It was resumed with insecure=True under the one line any insecure server logs.
    from covey.deploy.certs import init_federation

    fed, run_dir = tmp_path / "fed", tmp_path / "run"
    init_federation(fed)
    serve(_strategy(), 0, {"w": np.zeros(8)}, "127.0.0.1:0", certs=fed, run_dir=run_dir)
    with RunStore.open(run_dir) as store:
        assert store.config["tls"] is True
    with caplog.at_level("WARNING", logger="covey"):
        served = Served(_strategy(), 1, run_dir=run_dir, resume=True, address="127.0.0.1:0")
        joined = Joined(served.port)
        served.join(60)
        joined.join()
    said = [r.getMessage() for r in caplog.records if "was served with TLS" in r.getMessage()]
    assert said == [
        f"the run in {run_dir} was served with TLS and now goes on WITHOUT it: the model and "
        "its clients' updates travel in the clear from this round on"
    ]
    with RunStore.open(run_dir) as store:
        assert store.config["tls"] is False


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_what_a_stopped_asynchronous_run_says_counts_updates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its server logs "update 2", but the line naming its model, the resume refusals
    # and the end of a resume with nothing left said "round 2".
    from covey.deploy._cli_resume import saved_model

    strategy = covey.FedBuff(buffer_size=1, min_available_clients=1)
    run_dir = tmp_path / "run"
    served = Served(strategy, 2, run_dir=run_dir)
    joined = Joined(served.port, name="site")
    served.join(60)
    joined.join(30)
    with RunStore.open(run_dir) as store:
        store.set_status("failed")
    weights = run_dir / "weights" / "round-00002.safetensors"
    said = saved_model(run_dir)
    assert said == f"the model after update 2, the last complete one, is in {weights}"
    options: dict[str, Any] = {"run_dir": run_dir, "resume": True, "plot": False}
    with pytest.raises(ValueError, match=r"stopped after update 2: it cannot be resumed"):
        serve(strategy, 1, None, "127.0.0.1:0", insecure=True, on_listen=_never_listens, **options)
    with caplog.at_level(logging.WARNING, logger="covey"):
        served = Served(strategy, 2, wait_timeout=60.0, **options)
        joined = Joined(served.port, name="site", max_attempts=3)
        served.join(90)
        joined.join(30)
    assert "the run was over already (update 2 was its last)" in caplog.text
    with pytest.raises(ValueError, match=r"is finished \(update 2 was its last\)"):
        serve(strategy, 2, None, "127.0.0.1:0", insecure=True, on_listen=_never_listens, **options)


def test_covey_server_of_a_failed_run_says_how_to_continue_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only `covey runs show` said it: the server's own output ended at its error.
    _tiny_app(monkeypatch)
    run_dir = tmp_path / "run"
    args = ["server", "--app", "tiny_app:server_app", "--insecure", "--address", "127.0.0.1:0"]
    args += ["--no-plot", "--wait-timeout", "1", "--run-dir", str(run_dir)]
    out = CliRunner().invoke(app, args)
    flat = " ".join(out.output.split())
    assert out.exit_code == 1, out.output  # no client came within the wait-timeout
    assert "error: round 1: only 0 of the 1 client needed" in flat
    assert flat.endswith(
        "continue the run from its start (no round of it finished) with `covey server "
        f"--resume {run_dir} --app tiny_app:server_app --insecure --no-plot --wait-timeout 1`"
    )


def test_covey_server_resuming_a_run_that_fails_again_says_how_to_continue_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tiny_app(monkeypatch)
    run_dir = tmp_path / "run"
    _stopped_after_round_2(run_dir)
    args = ["server", "--app", "tiny_app:server_app", "--insecure", "--address", "127.0.0.1:0"]
    args += ["--no-plot", "--wait-timeout", "1", "--resume", str(run_dir), "--rounds", "4"]
    out = CliRunner().invoke(app, args)
    flat = " ".join(undated(out.output).split())
    assert out.exit_code == 1, out.output
    model = run_dir / "weights" / "round-00002.safetensors"
    assert flat.endswith(
        f"run stopped: the model after round 2, the last complete one, is in {model} "
        "continue the run after its last complete round with `covey server "
        f"--resume {run_dir} --app tiny_app:server_app --insecure --rounds 4 --no-plot "
        "--wait-timeout 1`"
    )


def _grow_states(run_dir: Path) -> None:
    """Store each round's FedAvg state as a newer covey whose ``_MeanState`` has a field more."""
    import sqlite3

    import safetensors.numpy

    from covey.server import _state

    def grow(node: Any) -> None:
        if isinstance(node, dict):
            if str(node.get("__tuple__")).endswith("._MeanState"):
                node["items"].append(0)
            for value in node.values():
                grow(value)
        elif isinstance(node, list):
            for value in node:
                grow(value)

    conn = sqlite3.connect(run_dir / "run.sqlite")
    with conn:
        rows = conn.execute("SELECT round, server_state FROM rounds WHERE server_state NOT NULL")
        for rnd, data in rows.fetchall():
            arrays, tree = _state._parse(bytes(data))
            grow(tree)
            meta = {"format": 2, "tree": tree, "sha256": _state._digest(tree, arrays)}
            grown = safetensors.numpy.save(dict(arrays), metadata={"covey-state": json.dumps(meta)})
            conn.execute("UPDATE rounds SET server_state = ? WHERE round = ?", (grown, rnd))
    conn.close()


def _resume_grown_state(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, *more: str
) -> tuple[Any, str]:
    """``covey server --resume`` of a run whose states a newer covey grew: (result, output).

    The output is flattened to single spaces, undated.
    """
    _tiny_app(monkeypatch)
    _stopped_after_round_2(run_dir)
    _grow_states(run_dir)
    args = ["server", "--app", "tiny_app:server_app", "--insecure", "--address", "127.0.0.1:0"]
    args += ["--no-plot", "--wait-timeout", "1", "--resume", str(run_dir), "--rounds", "4"]
    out = CliRunner().invoke(app, [*args, *more])
    return out, " ".join(undated(out.output).split())


def test_covey_server_resuming_a_state_a_newer_covey_saved_says_so_and_not_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An older covey said "corrupt stored aggregation state: TypeError: _MeanState.__new__()
    # takes from 1 to 13 positional arguments but 14 were given"; this one then said how to
    # resume it with this covey, which would fail the same way, and exited 1 as for a retry.
    run_dir = tmp_path / "run"
    out, flat = _resume_grown_state(run_dir, monkeypatch)
    assert out.exit_code == 2, out.output  # no restart of this covey mends it
    from covey.aggregate._mean import _MeanState

    fields = len(_MeanState._fields)
    assert f"_MeanState of {fields + 1} fields where this covey's has {fields}" in flat
    assert "saved by a newer covey" in flat
    assert "corrupt" not in flat
    assert "continue the run" not in flat
    model = run_dir / "weights" / "round-00002.safetensors"
    assert f"run stopped: the model after round 2, the last complete one, is in {model}" in flat
    with RunStore.open(run_dir) as store:  # its rounds kept for the covey that saved them
        assert store.rounds() == [0, 1, 2]


def test_covey_server_refusing_a_state_it_cannot_load_never_listens_nor_says_it_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It used to listen, say it waited for clients and write its port file (clients
    # could join) before it loaded the saved state, and only then refused the resume.
    port_file = tmp_path / "port"
    out, flat = _resume_grown_state(tmp_path / "run", monkeypatch, "--port-file", str(port_file))
    assert out.exit_code == 2, out.output
    assert "saved by a newer covey" in flat
    assert "waiting" not in flat.lower()
    assert "listening" not in flat
    assert not port_file.exists()  # no port bound for clients to dial


def test_serve_refuses_a_state_it_cannot_load_before_it_listens(tmp_path: Path) -> None:
    from covey.server._rundb import NewerFormatError

    run_dir = tmp_path / "run"
    _stopped_after_round_2(run_dir)
    _grow_states(run_dir)
    listened: list[int] = []
    with pytest.raises(NewerFormatError, match="saved by a newer covey"):
        _resume(run_dir, 4, on_listen=listened.append)
    assert listened == []
    with RunStore.open(run_dir) as store:  # left as it was, and its lock let go
        assert store.rounds() == [0, 1, 2]
        assert store.status == "failed"

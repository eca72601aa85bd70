"""Run folders and peers of other covey versions: read what can be read, refuse the rest by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

import covey
from _live import Joined, Raw
from covey.core import RoundRecord
from covey.server._store import RunStore

# -- history.json and round records written by a newer covey --------------------------------


def _newer_history(folder: Path) -> None:
    """A history.json whose rounds and failures carry fields a newer covey added."""
    failure = {"cid": 1, "stage": "fit", "error": "boom", "site_time": 2.5}
    rounds = [
        {"round": 0, "central_loss": 1.0, "carbon_grams": 0.1},
        {"round": 1, "fit_participants": [0], "fit_failures": [failure], "carbon_grams": 0.2},
    ]
    text = json.dumps({"config": {"strategy": "FedAvg"}, "rounds": rounds, "signed_by": "x"})
    (folder / "history.json").write_text(text)


def test_a_history_with_fields_of_a_newer_covey_is_read(tmp_path: Path) -> None:
    _newer_history(tmp_path)
    with pytest.warns(UserWarning, match="left out field") as warned:
        history = covey.History.load(tmp_path)
    (warning,) = warned  # one warning names every field left out
    said = str(warning.message)
    for name in ("signed_by", "rounds[].carbon_grams", "rounds[].fit_failures.site_time"):
        assert name in said
    assert "it records no covey version" in said
    assert warning.filename == __file__  # it points at the caller
    assert [r.round for r in history] == [0, 1]
    assert history[0].central_loss == 1.0
    (failure,) = history[1].fit_failures
    assert (failure.cid, failure.error) == (1, "boom")


def test_runs_show_reads_a_history_of_a_newer_covey(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from covey.cli import app

    _newer_history(tmp_path)
    # No Python warning escapes the command (filterwarnings = error): it says it in one line.
    result = CliRunner().invoke(app, ["runs", "show", str(tmp_path)], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "boom" in result.stdout
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"warning: {tmp_path / 'history.json'}: left out field(s) covey ")
    assert "rounds[].carbon_grams" in line


def test_runs_list_says_once_per_run_which_fields_it_left_out_as_a_plain_line(
    tmp_path: Path,
) -> None:
    """Not in Python's ``file.py:123: UserWarning:`` format, and nothing lost."""
    import os
    import subprocess
    import sys

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _newer_history(tmp_path / name)
    env = {**os.environ, "COLUMNS": "100", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("PYTHONWARNINGS", None)
    out = subprocess.run(
        [sys.executable, "-m", "covey", "runs", "list", "--dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "UserWarning" not in out.stderr
    lines = out.stderr.splitlines()
    assert all(line.startswith("warning: ") and "carbon_grams" in line for line in lines)
    assert sorted(line.split()[1] for line in lines) == [
        f"{tmp_path / name / 'history.json'}:" for name in ("a", "b")
    ]
    assert out.stdout.count("simulated") == 2, out.stdout  # both listed


def test_a_typo_in_a_hand_edited_history_is_named_with_the_version_that_wrote_it(
    tmp_path: Path,
) -> None:
    history = covey.History([RoundRecord(0, central_loss=1.0), RoundRecord(1, central_loss=0.5)])
    history.config = {"strategy": "FedAvg", "covey_version": "0.9.1"}
    history.save(tmp_path / "history.json")
    text = (
        (tmp_path / "history.json").read_text().replace('"central_loss": 0.5', '"centrl_loss": 0.4')
    )
    (tmp_path / "history.json").write_text(text)
    with pytest.warns(UserWarning, match="centrl_loss") as warned:
        read = covey.History.load(tmp_path)
    (warning,) = warned
    said = str(warning.message)
    assert "rounds[].centrl_loss" in said
    assert "written by covey 0.9.1" in said
    assert f"covey {covey.__version__} does not know" in said
    assert str(tmp_path / "history.json") in said
    assert read[1].central_loss is None  # left out, as before


def test_a_history_of_known_fields_loads_without_a_warning(tmp_path: Path) -> None:
    covey.History([RoundRecord(0, central_loss=1.0)]).save(tmp_path / "history.json")
    assert covey.History.load(tmp_path)[0].central_loss == 1.0  # filterwarnings = error


def test_a_store_whose_records_carry_newer_fields_is_refused_naming_them(tmp_path: Path) -> None:
    """Resuming would rewrite the newer covey's history without them: refused, not dropped."""
    from covey.server._resume import resume_point

    store = RunStore.create(tmp_path / "run", config={"strategy": {"name": "FedAvg"}})
    try:
        for rnd in (0, 1):
            store.save_round(rnd, {"w": np.zeros(2)}, record={"round": rnd, "central_loss": 0.5})
        newer = json.dumps({"round": 1, "central_loss": 0.5, "carbon_grams": 0.1})
        with store._db.transaction() as conn:  # as a newer covey wrote it
            conn.execute("UPDATE rounds SET record = ? WHERE round = 1", (newer,))
        with pytest.raises(ValueError, match="carbon_grams") as info:
            resume_point(store, None)
        assert "newer covey" in str(info.value)
        assert f"covey {covey.__version__}" in str(info.value)
        assert store.rounds() == [0, 1]
        assert (tmp_path / "run" / "weights" / "round-00001.safetensors").exists()
    finally:
        store.close()


def test_a_record_of_unknown_fields_is_still_refused_when_saved(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run", config={})
    try:
        with pytest.raises(ValueError, match="carbon_grams"):
            store.save_round(0, {"w": np.zeros(2)}, record={"round": 0, "carbon_grams": 1})
    finally:
        store.close()


# -- aggregation state of a newer format ------------------------------------------------------


def _state_of_format(data: bytes, fmt: int) -> bytes:
    """Stored state bytes with their format number set to ``fmt``, as a newer covey writes."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    meta = json.loads(header["__metadata__"]["covey-state"])
    meta["format"] = fmt
    header["__metadata__"]["covey-state"] = json.dumps(meta)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def test_a_round_whose_state_has_a_newer_format_is_not_resumed_over(tmp_path: Path) -> None:
    """An older covey must not skip the newer rounds as damaged, then redo and delete them."""
    from covey.server._resume import resume_point
    from covey.server._state import dump_state

    folder = tmp_path / "run"
    store = RunStore.create(folder, config={"strategy": {"name": "FedAvgM"}})
    try:
        for rnd in (0, 1, 2):
            state = dump_state({"momentum": np.full(2, float(rnd))})
            store.save_round(rnd, {"w": np.zeros(2)}, record={"round": rnd}, server_state=state)
        for rnd in (1, 2):  # rounds served by a newer covey after a resume
            with store._db.transaction() as conn:
                (old,) = conn.execute(
                    "SELECT server_state FROM rounds WHERE round = ?", (rnd,)
                ).fetchone()
                conn.execute(
                    "UPDATE rounds SET server_state = ? WHERE round = ?",
                    (_state_of_format(bytes(old), 99), rnd),
                )
        with pytest.raises(ValueError, match="newer covey") as info:
            resume_point(store, None)
        assert "round 2" in str(info.value)
        assert "format 99" in str(info.value)
        assert covey.__version__ in str(info.value)
        assert store.rounds() == [0, 1, 2]
        assert sorted(p.name for p in (folder / "weights").iterdir()) == [
            "round-00000.safetensors",
            "round-00001.safetensors",
            "round-00002.safetensors",
        ]
    finally:
        store.close()


# -- a run served last by a newer covey release, or of a newer schema -------------------------


def _set_meta(folder: Path, key: str, value: str) -> None:
    import sqlite3

    conn = sqlite3.connect(folder / "run.sqlite")
    with conn:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
    conn.close()


def _newer_release() -> str:
    major, minor = (int(p) for p in covey.__version__.split(".")[:2])
    return f"{major}.{minor + 1}.0"


def test_a_run_a_newer_release_served_is_not_resumed_by_an_older_one(tmp_path: Path) -> None:
    import sqlite3

    folder = tmp_path / "run"
    RunStore.create(folder, config={}).close()
    newer = _newer_release()
    conn = sqlite3.connect(folder / "run.sqlite")
    with conn:  # a run folder made by the newer release (run.covey_version is its creator)
        conn.execute("UPDATE run SET covey_version = ?", (newer,))
    conn.close()
    with pytest.raises(ValueError, match=f"covey {newer}") as info:
        RunStore.open(folder, exclusive=True)
    assert f"covey {covey.__version__}" in str(info.value)
    RunStore.open(folder).close()  # reading it is fine
    # resumed by this release after the newer one's own resume: refused as well
    conn = sqlite3.connect(folder / "run.sqlite")
    with conn:
        conn.execute("UPDATE run SET covey_version = ?", (covey.__version__,))
    conn.close()
    _set_meta(folder, "served_by", newer)
    with pytest.raises(ValueError, match=f"last served by covey {newer}"):
        RunStore.open(folder, exclusive=True)


def test_a_run_of_a_newer_schema_names_the_covey_that_wrote_it(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    RunStore.create(folder, config={}).close()
    _set_meta(folder, "schema_version", "2")
    import sqlite3

    conn = sqlite3.connect(folder / "run.sqlite")
    with conn:
        conn.execute("UPDATE run SET covey_version = ?", (_newer_release(),))
    conn.close()
    with pytest.raises(ValueError, match="schema version 2") as info:
        RunStore.open(folder, exclusive=True)
    assert f"covey {_newer_release()}" in str(info.value)
    assert f"covey {covey.__version__}" in str(info.value)


def _future_schema_run(folder: Path) -> None:
    """A served run whose run.sqlite a newer covey wrote in a schema with other tables."""
    import sqlite3

    store = RunStore.create(folder, config={"strategy": {"name": "FedAvg"}, "rounds": 1})
    store.save_round(0, {"w": np.zeros(2)}, record={"round": 0, "central_loss": 0.5})
    store.close()
    covey.History([RoundRecord(0, central_loss=0.5)]).save(folder / "history.json")
    conn = sqlite3.connect(folder / "run.sqlite")
    with conn:
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        conn.execute("INSERT INTO meta (key, value) VALUES ('served_by', ?)", (_newer_release(),))
        conn.execute("ALTER TABLE run RENAME TO runs")
        conn.execute("ALTER TABLE events RENAME TO fleet_events")
    conn.close()


def test_the_dashboard_names_the_schema_of_a_newer_run(tmp_path: Path) -> None:
    from covey.dashboard._runs import RunReadError, read_run

    _future_schema_run(tmp_path / "run")
    with pytest.raises(RunReadError, match="schema version 3") as info:
        read_run("run", tmp_path / "run")
    assert f"covey {_newer_release()}" in str(info.value)
    assert f"covey {covey.__version__}" in str(info.value)


def test_runs_list_and_show_say_why_a_newer_run_is_unreadable(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from covey.cli import app

    _future_schema_run(tmp_path / "run")
    for args in (["runs", "show", str(tmp_path / "run")], ["runs", "list", "--dir", str(tmp_path)]):
        result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
        # show exits 2 on an unreadable run, as `covey runs report` does; list lists it
        assert result.exit_code == (2 if args[1] == "show" else 0), result.output
        assert "unreadable" in result.output
        assert "schema version 3" in " ".join(result.output.split())


# -- an analytics site's ledger file of a newer covey -----------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [({"format": 2}, "format 2"), ({"per_analyst": {"a": 1.0}}, "per_analyst")],
)
def test_a_site_ledger_of_a_newer_covey_is_refused_not_rewritten(
    tmp_path: Path, change: dict[str, object], named: str
) -> None:
    from covey.analytics._dp import Budget, event
    from covey.analytics._ledger_file import load_budget, save_budget

    path = tmp_path / "site.covey-budget.json"
    budget = Budget(5.0, 1e-6, owner="the site")
    budget.charge(event("laplace", 2.0, 1))
    save_budget(budget, path)
    assert json.loads(path.read_text())["format"] == 1
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ValueError, match=named) as info:
        load_budget(path, 5.0, 1e-6)
    assert "newer covey" in str(info.value)
    assert f"covey {covey.__version__}" in str(info.value)


# -- a server that does not serve this client's wire protocol at all --------------------------


def test_a_server_without_the_covey_method_is_a_refusal_not_retried() -> None:
    """What a covey release of another wire package (covey.v2) or another gRPC server gives."""
    from concurrent import futures

    import grpc

    from covey.transport.grpc import Refused

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = Joined(port, name="old", max_attempts=4, backoff=0.05)
        client.join(30)
        assert isinstance(client.error, Refused), client.error
        assert "UNIMPLEMENTED" in str(client.error)
        assert f"covey {covey.__version__}" in str(client.error)
        assert "/covey.v1.Federation/Join" in str(client.error)
    finally:
        server.stop(0)


def test_resuming_a_run_that_records_no_address_names_what_to_give(tmp_path: Path) -> None:
    """A run folder made without an address (an older covey, RunStore.create by hand)."""
    from covey.deploy._server import serve

    store = RunStore.create(tmp_path / "run", config={"strategy": {"name": "FedAvg"}})
    store.save_round(0, {"w": np.zeros(2)}, record={"round": 0})
    store.close()
    with pytest.raises(ValueError, match="records no address") as info:
        serve(covey.FedAvg(), 2, None, run_dir=tmp_path / "run", resume=True, insecure=True)
    assert "address=" in str(info.value)


def test_a_client_stating_an_absurd_version_gets_a_readable_refusal() -> None:
    """The refusal quotes a bounded part of it: 100 kB of version overflowed gRPC's headers."""
    import grpc

    from covey.transport.grpc._frames import PROTOCOL
    from covey.transport.grpc._server import GrpcServerTransport
    from covey.transport.grpc.proto import covey_pb2 as pb

    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=0.5)
    try:
        for hello in (
            pb.Hello(version="9." + "x" * 100_000, name="odd", protocol=PROTOCOL),
            pb.Hello(version=covey.__version__, name="odd", protocol=100_000 + 7),
        ):
            raw = Raw(transport.port, hello)
            with pytest.raises(grpc.RpcError) as info:
                next(raw.messages())
            raw.close()
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert len(info.value.details()) < 1000
            assert covey.__version__ in info.value.details()
    finally:
        transport.close()


# -- a task asking for what this client's covey does not know ---------------------------------


def test_a_compression_scheme_this_client_does_not_know_names_its_version() -> None:
    """A server of a covey with a scheme this one lacks: the failure says whose side is older."""
    from covey.clients._client import run_task
    from covey.compress._task import CONFIG_KEY
    from covey.core._messages import Task

    class Client(covey.Client):
        def fit(self, weights: object, config: object) -> covey.FitResult:
            raise AssertionError("not reached")

    head = {"scheme": "q2", "seed": 0, "cid": 0}
    task = Task("fit_compressed", 1, {CONFIG_KEY: head}, {"w": np.zeros(3)}, None)
    reply = run_task(Client(), 0, task)
    last = (reply.error or "").strip().splitlines()[-1]
    assert "'q2'" in last
    assert f"covey {covey.__version__}" in last


# -- a step's state whose named tuple another covey gave more or fewer fields -----------------


class _StepState(NamedTuple):
    total: float
    seen: int = 0


def _stored_as(items: tuple[Any, ...]) -> bytes:
    """State bytes a covey whose ``_StepState`` has ``len(items)`` fields would store."""
    from covey.server._state import dump_state

    fields = [(f"f{i}", type(v)) for i, v in enumerate(items)]
    other = NamedTuple("_StepState", fields)  # type: ignore[misc]
    other.__module__, other.__qualname__ = __name__, _StepState.__qualname__
    return dump_state({"mean": other(*items)})


def test_a_state_whose_named_tuple_a_newer_covey_extended_is_named_not_corrupt() -> None:
    """A newer covey added a field to a step's state: refused as newer, never as damage."""
    from covey.server._rundb import NewerFormatError
    from covey.server._state import load_state

    template = {"mean": _StepState(0.0)}
    with pytest.raises(NewerFormatError, match="newer covey") as info:
        load_state(_stored_as((1.5, 2, True)), template)
    said = str(info.value)
    assert "_StepState of 3 fields where this covey's has 2" in said
    assert covey.__version__ in said
    assert "corrupt" not in said
    # An older covey's state of fewer fields is read, the missing ones at their defaults.
    assert load_state(_stored_as((1.5,)), template) == {"mean": _StepState(1.5, 0)}
    assert load_state(_stored_as((1.5, 2)), template) == {"mean": _StepState(1.5, 2)}


def test_a_state_missing_a_field_this_covey_needs_names_the_version_skew() -> None:
    from covey.server._state import StateError, load_state

    with pytest.raises(StateError, match="of 0 fields where this covey's needs 1") as info:
        load_state(_stored_as(()), {"mean": _StepState(0.0)})
    assert "another covey version" in str(info.value)


# -- a client of another patch release joining -------------------------------------------------


def test_a_join_line_names_a_client_s_other_covey_version_and_only_that(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Patch releases roll out site by site: which site runs which shows as each joins.

    The version is the peer's own string: shown bounded, one line, its markup escaped.
    """
    import logging

    from covey.deploy._console import ServerConsole
    from covey.transport.grpc._frames import PROTOCOL
    from covey.transport.grpc._server import GrpcServerTransport
    from covey.transport.grpc.proto import covey_pb2 as pb

    ours = covey.__version__
    release = ".".join(ours.split(".")[:2])
    events: list[tuple[str, str, str]] = []
    lines: list[str] = []
    console = ServerConsole(lines.append, 3, {})

    def record(name: str, event: str, detail: str) -> None:
        events.append((name, event, detail))
        console.on_event(name, event, detail)

    hostile = f"{release}.7[bold]\n\x1b[31m" + "x" * 500
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=0.5, on_event=record)
    raws: list[Raw] = []
    try:
        with caplog.at_level(logging.INFO, logger="covey"):
            for name, version in (("same", ours), ("newer", f"{release}.99"), ("odd", hostile)):
                hello = pb.Hello(version=version, name=name, protocol=PROTOCOL)
                raws.append(Raw(transport.port, hello))
                assert next(raws[-1].messages()).WhichOneof("body") == "welcome"  # joined by then
    finally:
        for raw in raws:
            raw.close()
        transport.close()
    joined = [line.partition(" ")[2] for line in lines if " joined" in line]
    assert joined[0] == "client same joined (1 of 3 connected)"  # as before: nothing to say
    newer = f"(covey {release}.99; this server {ours})"
    assert joined[1] == f"client newer joined {newer} (2 of 3 connected)"
    odd = joined[2]
    assert odd.startswith(f"client odd joined (covey {release}.7\\[bold]??[31m")
    assert odd.endswith(f"...; this server {ours}) (3 of 3 connected)")
    assert len(odd) < 150
    said = [r.getMessage() for r in caplog.records if " joined as " in r.getMessage()]
    assert said[0] == "client same joined as 0"
    assert said[1] == f"client newer joined as 1 (covey {release}.99; this server {ours})"
    assert "\n" not in said[2]
    assert "\x1b" not in said[2]
    assert len(said[2]) < 150

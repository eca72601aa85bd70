"""Run folders and data files whose paths hold spaces, non-ASCII or URI characters."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import covey
from _procs import python_json
from covey.analytics import Policy, Site, query
from covey.cli import app
from covey.cli._runs import run_status
from covey.server._outputs import write_outputs
from covey.server._store import RunStore

ODD_NAMES = ["run #1", "100%41 done", "what?x=1", "ünï cödé run"]


def _finished_run(folder: Path) -> None:
    """A deployed run's folder as a finished server leaves it (one round)."""
    with RunStore.create(folder, config={"rounds": 1}) as store:
        store.save_round(0, {"w": np.zeros(2)}, {"round": 0})
        store.save_round(1, {"w": np.ones(2)}, {"round": 1})
        store.set_status("finished")
        history = store.history()
    history.config = {"rounds": 1}
    write_outputs(folder, history, plot=False)


@pytest.mark.parametrize("name", ODD_NAMES)
def test_a_run_folder_with_uri_characters_reads_as_it_is(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    _finished_run(folder)
    assert run_status(folder, covey.History.load(folder)) == "finished"


def test_runs_list_reads_every_odd_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ODD_NAMES:
        _finished_run(tmp_path / name)
    monkeypatch.setenv("COLUMNS", "250")
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert "unreadable" not in listed.output
    assert listed.output.count("finished") == len(ODD_NAMES)


def test_a_site_table_in_a_sqlite_file_under_a_hash_folder(tmp_path: Path) -> None:
    folder = tmp_path / "clinic #2"
    folder.mkdir()
    db = folder / "h.db"
    with closing(sqlite3.connect(db)) as con, con:
        pd.DataFrame({"age": [30, 40], "sex": ["F", "M"]}).to_sql("patients", con, index=False)
    policy = Policy(bounds={"age": (0, 120)}, min_group_size=1)
    site = Site({"patients": f"sqlite:///{db}"}, policy, name="clinic")
    answer = query([site], "SELECT COUNT(*), SUM(age) FROM patients", secure=False)
    assert answer.iloc[0]["COUNT(*)"] == 2
    assert answer.iloc[0]["SUM(age)"] == pytest.approx(70)


_READER = """
import json, sys
from pathlib import Path
import covey
from covey.cli._runs import run_status
from covey.dashboard._runs import read_run
from covey.server._store import RunStore

folder = Path(sys.argv[1])
out = {"status": run_status(folder, covey.History.load(folder))}
out["dashboard"] = read_run("run", folder).status
try:
    with RunStore.open(folder) as store:
        out["read"] = [store.last_round(), store.status, store.load_round(1)[0]["w"].tolist()]
        out["history"] = [r.round for r in store.history().rounds]
        try:
            store.set_status("failed")
            out["write"] = "written"
        except OSError as exc:
            out["write"] = f"OSError: {exc}"
except (OSError, ValueError) as exc:
    out["read"] = f"{type(exc).__name__}: {exc}"
try:
    RunStore.open(folder, exclusive=True).close()
    out["resume"] = "opened"
except (OSError, ValueError) as exc:
    out["resume"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def test_a_run_in_a_folder_the_reader_cannot_write_is_read_and_not_resumed() -> None:
    """A finished run on a read-only share or in a colleague's folder: listed, not resumable.

    ``RunStore.open`` reads it (before, it failed: it opened every run to write),
    and refuses only what writes, naming the folder.

    Root writes into any folder whatever its mode, so as root the folder is made
    read-only by a read-only bind mount of itself (a read-only share, exactly).
    """
    base = Path(tempfile.mkdtemp())
    folder = base / "run"
    mounted = False
    try:
        _finished_run(folder)
        if os.geteuid() == 0:
            mounted = _read_only_mount(folder)
        else:
            folder.chmod(0o555)
        out = python_json(_READER, str(folder))
        assert out["status"] == "finished"
        assert out["dashboard"] == "finished"
        assert out["read"] == [1, "finished", [1.0, 1.0]]
        assert out["history"] == [0, 1]
        assert out["write"].startswith(f"OSError: cannot write to the run in {folder}: "), out
        assert "it was opened to read only" in out["write"]
        assert out["resume"].startswith("RunRefusedError: "), out  # an OSError
        assert str(folder) in out["resume"]
        assert "the run folder cannot be written" in out["resume"], out
        assert sorted(p.name for p in folder.iterdir()) == ["history.json", "run.sqlite", "weights"]
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True, timeout=30)
        if folder.exists():
            folder.chmod(0o755)
        shutil.rmtree(base)


def test_a_new_run_folder_on_a_read_only_disk_is_refused_naming_it() -> None:
    """``covey server --run-dir`` under a read-only folder (a share, a full or read-only disk).

    It printed mkdir's bare ``[Errno 30] Read-only file system: 'PATH'``, naming no run
    folder and nothing to do.
    """
    base = Path(tempfile.mkdtemp())
    folder = base / "share"
    folder.mkdir()
    mounted = False
    try:
        if os.geteuid() == 0:
            mounted = _read_only_mount(folder)
        else:
            folder.chmod(0o555)
        run = folder / "study" / "run-1"
        with pytest.raises(OSError, match="cannot make the run folder") as refused:
            RunStore.create(run, config={"rounds": 1}, exclusive=True)
        said = str(refused.value)
        assert said.startswith(f"cannot make the run folder {run}: "), said
        assert f"({folder / 'study'})" in said  # the folder that could not be made
        assert "give a run folder where this user can write" in said
        assert refused.value.errno is not None  # as mkdir's, for a caller to tell the cause
        assert list(folder.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True, timeout=30)
        folder.chmod(0o755)
        shutil.rmtree(base)


def _read_only_mount(folder: Path) -> bool:
    """Bind-mount ``folder`` read-only onto itself (as root); skip where mounting is not allowed."""
    bind = subprocess.run(
        ["mount", "--bind", str(folder), str(folder)], capture_output=True, check=False, timeout=30
    )
    if bind.returncode != 0:
        pytest.skip(f"root here may not mount (needed to make a folder read-only to root): {bind}")
    remount = ["mount", "-o", "remount,ro,bind", str(folder)]
    if subprocess.run(remount, capture_output=True, check=False, timeout=30).returncode != 0:
        subprocess.run(["umount", str(folder)], check=True, timeout=30)
        pytest.skip("root here may not remount a bind mount read-only")
    return True


def test_the_resume_command_of_a_spaced_folder_can_be_pasted(tmp_path: Path) -> None:
    import shlex

    from covey.deploy._cli_resume import resume_hint

    run, certs = tmp_path / "my run ü", tmp_path / "fed #1"
    hint = resume_hint(run, app="my_fed:server_app", certs=certs, rounds=5)
    assert shlex.split(hint) == [
        *("covey", "server", "--resume", str(run), "--app", "my_fed:server_app"),
        *("--certs", str(certs), "--rounds", "5"),
    ]
    config = tmp_path / "fed settings.toml"
    assert shlex.split(resume_hint(run, config=config))[3:] == [str(run), "--config", str(config)]
    plain = resume_hint(Path("runs/study-1"), app="myfed:server_app", insecure=True)
    assert plain == "covey server --resume runs/study-1 --app myfed:server_app --insecure"


def test_the_resume_command_keeps_keep_last() -> None:
    from covey.deploy._cli_resume import resume_hint

    # Without it, the resumed run would keep every round's weights file again.
    hint = resume_hint(Path("runs/s"), app="myfed:server_app", insecure=True, keep_last=2)
    assert hint == "covey server --resume runs/s --app myfed:server_app --insecure --keep-last 2"


def test_the_resume_command_keeps_the_deadlines_the_run_folder_does_not(
    tmp_path: Path, served_flags: dict[str, Any]
) -> None:
    import shlex

    # The run folder keeps no round timeout: a resume pasted without it waited
    # for a paused client for ever, and one without --wait-timeout waited 300 s.
    base = ["server", "--app", "tiny_app:server_app", "--insecure", "--run-dir", "run"]
    timing = ["--round-timeout", "4.5", "--round-retries", "2", "--wait-timeout", "900"]
    result = CliRunner().invoke(app, [*base, *timing, "--heartbeat", "0.25"])
    assert result.exit_code == 0, result.output
    assert shlex.split(served_flags["resume_hint"])[7:] == [*timing, "--heartbeat", "0.25"]
    served_flags.clear()
    result = CliRunner().invoke(app, [*base[:-1], "run-2"])
    assert result.exit_code == 0, result.output
    assert "timeout" not in served_flags["resume_hint"]
    assert "--round-retries" not in served_flags["resume_hint"]
    # A --config file is read again on resume: only the command line's are repeated.
    settings = tmp_path / "server.toml"
    settings.write_text("[server]\nround_timeout = 7.0\n")
    served_flags.clear()
    given = [*base[:-1], "run-3", "--config", str(settings), "--heartbeat", "0.5"]
    result = CliRunner().invoke(app, given)
    assert result.exit_code == 0, result.output
    assert served_flags["round_timeout"] == 7.0
    hint = shlex.split(served_flags["resume_hint"])
    assert hint[4:6] == ["--config", str(settings)]
    assert hint[-2:] == ["--heartbeat", "0.5"]
    assert "--round-timeout" not in hint


def test_the_resume_command_repeats_a_tls_choice_the_command_line_made_over_the_file(
    tmp_path: Path, served_flags: dict[str, Any]
) -> None:
    import shlex

    # The file says insecure = true and the command line --no-insecure --certs: the
    # resume command repeated --config alone, and the resumed server went without TLS.
    made = CliRunner().invoke(app, ["certs", "init", "--dir", "fed"])
    assert made.exit_code == 0, made.output
    (tmp_path / "server.toml").write_text("[server]\ninsecure = true\n")
    base = ["server", "--app", "tiny_app:server_app", "--config", "server.toml"]
    result = CliRunner().invoke(app, [*base, "--no-insecure", "--certs", "fed", "--run-dir", "a"])
    assert result.exit_code == 0, result.output
    assert served_flags["tls"] is not None
    hint = shlex.split(served_flags["resume_hint"])
    assert hint[hint.index("--no-insecure") : hint.index("--no-insecure") + 3] == [
        *("--no-insecure", "--certs", "fed"),
    ]
    served_flags.clear()  # the file's own choice is read from it again: not repeated
    result = CliRunner().invoke(app, [*base, "--run-dir", "b"])
    assert result.exit_code == 0, result.output
    assert served_flags["tls"] is None
    assert "insecure" not in served_flags["resume_hint"]
    served_flags.clear()
    result = CliRunner().invoke(app, [*base, "--insecure", "--run-dir", "c"])
    assert result.exit_code == 0, result.output
    assert "--insecure" in shlex.split(served_flags["resume_hint"])


def test_the_command_line_s_tls_choice_wins_over_the_file_s_certs(
    tmp_path: Path, served_flags: dict[str, Any]
) -> None:
    import shlex

    # The file's certs = "fed" and --insecure were refused as "give --certs DIR or
    # --insecure, not both", though --no-insecure overrode a file's insecure = true.
    made = CliRunner().invoke(app, ["certs", "init", "--dir", "fed"])
    assert made.exit_code == 0, made.output
    (tmp_path / "server.toml").write_text('[server]\ncerts = "fed"\n')
    base = ["server", "--app", "tiny_app:server_app", "--config", "server.toml"]
    result = CliRunner().invoke(app, [*base, "--insecure", "--run-dir", "a"])
    assert result.exit_code == 0, result.output
    assert served_flags["tls"] is None
    assert served_flags["certs"] is None
    hint = shlex.split(served_flags["resume_hint"])
    assert "--insecure" in hint
    assert "--certs" not in hint
    # The hint pasted gets past the TLS choice (to the run folder, here never started).
    resumed = CliRunner().invoke(app, hint[1:])
    assert "not both" not in resumed.output
    assert "error: --resume a: no covey run there (no run.sqlite)" in resumed.output
    # --certs on the command line overrides the file's insecure = true the same way.
    (tmp_path / "server.toml").write_text("[server]\ninsecure = true\n")
    served_flags.clear()
    result = CliRunner().invoke(app, [*base, "--certs", "fed", "--run-dir", "b"])
    assert result.exit_code == 0, result.output
    assert served_flags["tls"] is not None
    # Both on the command line are still refused.
    result = CliRunner().invoke(app, [*base, "--certs", "fed", "--insecure", "--run-dir", "c"])
    assert result.exit_code == 2, result.output
    assert "error: give --certs DIR or --insecure, not both" in result.output


def test_a_covey_run_folder_moved_out_of_its_project_is_resumed_with_covey_run(
    tmp_path: Path,
) -> None:
    # It said `covey.simulate(..., run_dir=..., resume=True)` for a project's run.
    from covey.sim._rundir import resume_command

    moved = tmp_path / "moved run"
    moved.mkdir()
    assert resume_command(moved) == f"covey.simulate(..., run_dir={str(moved)!r}, resume=True)"
    (moved / "project.json").write_text("{}")  # what `covey run` keeps in its folders
    assert resume_command(moved) == (f"covey run <its project's folder> --resume '{moved}'")

"""Where ``covey runs`` finds runs: a project's ``runs-dir``, else ``runs/``; a run by name."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

from covey.core._files import MAX_SETTINGS_BYTES, read_given
from covey.deploy._cli_errors import fail
from covey.server._rundb import LOCK_NAME, is_held
from covey.sim._rundir import interrupted_set_up_reason, is_set_up_only

__all__ = ["STORE", "find_run", "project_runs"]

STORE = "run.sqlite"  # a deployed run's store (a simulation with a checkpoint keeps one too)


def project_runs(runs_dir: Path) -> Path:
    """``runs_dir``; for the default ``runs``, the ``runs-dir`` of the project here, if any.

    In a project's folder whose ``[tool.covey]`` names another ``runs-dir``,
    ``covey run`` keeps its runs there: ``covey runs list`` looked in ``runs/``
    and found none.
    """
    if runs_dir != Path("runs"):
        return runs_dir
    try:
        raw = read_given("pyproject.toml", MAX_SETTINGS_BYTES)  # a named pipe: not waited on
        table = tomllib.loads(raw.decode("utf-8")).get("tool", {}).get("covey", {})
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return runs_dir  # no project here (or one `covey run` would refuse): runs/
    given = table.get("runs-dir", table.get("runs_dir")) if isinstance(table, dict) else None
    return Path(given).expanduser() if isinstance(given, str) and given else runs_dir


def find_run(run: str, runs_dir: Path) -> Path:
    """The folder of ``run``: a path to a run folder, or a run's name under ``runs_dir``."""
    from covey.core._history import History
    from covey.dashboard._runs import is_run, run_name

    if run == "":  # Path("") is the current folder
        fail('RUN is empty (""); give a run folder, or a run\'s name under --dir')
    runs_dir = project_runs(runs_dir)  # a project's runs-dir, if it names one
    # A name as `covey runs list` shows it: bytes of a folder name that are not UTF-8
    # are written \xNN there (a backslash \\), as the dashboard names the run.
    candidates = [Path(run), runs_dir / run, runs_dir / run_name(run)]
    for candidate in candidates:
        if is_run(candidate) and not is_set_up_only(candidate):  # damaged: says why
            return candidate
    for candidate in candidates:
        _not_started(candidate)
    fail(
        f"no run {run!r}: give a run folder holding {History.FILE_NAME}, or a name "
        f"listed by `covey runs list --dir {shlex.quote(str(runs_dir))}`"
    )


def _not_started(folder: Path) -> None:
    """Say so if ``folder`` holds a simulation stopped (or starting) before its first round.

    Such a run wrote only its ``run.lock`` (or a ``covey run``'s ``project.json``).
    """
    if not is_set_up_only(folder):
        return
    if is_held(folder) is True:
        fail(f"{folder}: its run is starting ({_holder(folder)}): no round is done yet to show")
    fail(f"{folder}: {interrupted_set_up_reason(folder)}; there is nothing to show")


def _holder(folder: Path) -> str:
    """``pid N`` of the process that holds ``folder``'s run, as its ``run.lock`` says."""
    try:
        holder = (folder / LOCK_NAME).read_text(errors="replace").strip()
    except OSError:
        holder = ""
    return f"pid {holder or 'unknown'}"

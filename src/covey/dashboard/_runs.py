"""Find runs in a folder and read them without ever writing to them.

A run is a folder holding ``history.json`` (written by :func:`covey.simulate`
and by deployed servers) and/or ``run.sqlite`` (the store of a deployed server),
or only the ``run.lock`` (or a ``covey run``'s ``project.json``) of a simulation
setting up, or killed as it did.
``run.json`` beside ``history.json`` says what a simulation ran and whether it
is done. The SQLite store is opened read-only (a ``mode=ro`` URI), so watching a
live server never takes a write lock.

Round records are kept as the JSON dicts found on disk, not rebuilt into
:class:`covey.RoundRecord`: fields added by newer versions (e.g. ``privacy``)
pass through to the page untouched.

Example:
    >>> import tempfile
    >>> discover_runs(tempfile.mkdtemp())
    []
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from covey.core._interrupt import shown_status
from covey.core._runstep import last_finished_step, step_of_settings
from covey.dashboard._historycache import HistoryCache, parse_history
from covey.dashboard._runid import run_id as run_id
from covey.dashboard._runid import run_name as run_name
from covey.dashboard._runjson import (
    RunReadError as RunReadError,
)
from covey.dashboard._runjson import (
    read_from_store,
    read_run_json,
    within,
)
from covey.dashboard._runstore import STORE, foreign_history, read_store_within
from covey.dashboard._runstore import lacked_rounds as lacked_rounds
from covey.dashboard._tally import Tally, tally_of
from covey.dashboard._tally import as_number as as_number
from covey.dashboard._tally import best_metric as best_metric
from covey.dashboard._tally import metric_value as metric_value
from covey.server._readcopy import is_simulation
from covey.server._rundb import is_held
from covey.server._served import how_to_continue, killed_server_reason
from covey.sim._rundir import (
    SET_UP_FILES,
    how_to_resume,
    interrupted_set_up_reason,
    is_set_up_only,
    resumed_from,
    stopped_simulation_reason,
)

HISTORY: Final = "history.json"
META: Final = "run.json"
MAX_DEPTH: Final = 3
"""How deep below the runs folder runs are looked for."""
MAX_RUNS: Final = 10_000


@dataclass
class Signature:
    """What changes on disk when a run gets a new round: sizes and modification times."""

    parts: tuple[tuple[str, int, int], ...] = ()


@dataclass
class Run:
    """One run folder and what was read from it.

    Attributes:
        id: The run's path relative to the runs folder (``/``-separated).
        path: The run folder.
        kind: ``"simulated"`` or ``"deployed"``.
        meta: Settings: strategy, planned rounds, start time, status, ...
        rounds: One JSON dict per round, in round order.
        clients: Client names by id (deployed runs only).
        events: Fleet events ``(unix_time, client, event, detail)`` (deployed runs only).
        warning: Why ``history.json`` could not be read, its rounds read from
            ``run.sqlite`` instead (:func:`~covey.dashboard._runjson.read_from_store`);
            None when it was read.
        step: What its round numbers count: ``"update"`` in an asynchronous (FedBuff)
            run, as the settings of its ``history.json`` or store say, else ``"round"``.
        tally: Its best value and clients' rounds, kept by a reader that grows them
            with the new rounds of a run read again (:func:`~covey.dashboard._tally.grown`);
            None: walked from ``rounds`` when asked for.
    """

    id: str
    path: Path
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    clients: dict[int, str] = field(default_factory=dict)
    events: list[tuple[float, str, str, str]] = field(default_factory=list)
    warning: str | None = None
    step: str = "round"
    tally: Tally | None = field(default=None, compare=False, repr=False)

    @property
    def status(self) -> str:
        """``"running"``, ``"finished"``, ``"failed"``, ``"interrupted"``, ``"stopped"``, ...

        ``"stopped"``: the store (or a simulation's ``run.json``) says running,
        but no process holds the run: it crashed or was killed (a deployed run
        can be resumed). A simulation that wrote only its ``run.lock`` (or
        ``project.json``) is ``"starting"`` while a process holds it, else
        ``"interrupted"`` (killed as it set up; ``meta["stopped_reason"]`` says
        how to start it again). A run stopped by Ctrl-C or SIGTERM (recorded as
        failed, for that reason) is ``"interrupted"`` too; ``meta["stopped_reason"]``
        says how to continue it, if it can be.
        """
        value = self.meta.get("status")
        return value if isinstance(value, str) else "unknown"


def is_run(path: Path) -> bool:
    """Whether ``path`` is a run folder (one not past its set-up included).

    A ``history.json`` that is no regular file (a named pipe, a folder, a broken
    link) makes one too: the run is damaged, and is shown as unreadable, saying why,
    rather than left out without a word.
    """
    return has_history(path) or (path / STORE).is_file() or is_set_up_only(path)


def has_history(path: Path) -> bool:
    """Whether the folder ``path`` holds a ``history.json`` of any kind (a link, a pipe)."""
    return os.path.lexists(path / HISTORY)


def discover_runs(root: str | Path) -> list[tuple[str, Path]]:
    """``(id, folder)`` of every run in ``root`` (or ``root`` itself if it is a run).

    Args:
        root: The runs folder.

    Returns:
        The runs sorted by id (:func:`run_id` of the path relative to ``root``);
        a run's folders are not searched for more runs.
    """
    root = Path(root)
    if is_run(root):
        return [(run_id(root.resolve().name) or "run", root)]
    found: list[tuple[str, Path]] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return
        for child in children:
            if len(found) >= MAX_RUNS:
                return
            if is_run(child):
                found.append((run_id(child.relative_to(root).as_posix()), child))
            elif depth < MAX_DEPTH:
                walk(child, depth + 1)

    if root.is_dir():
        walk(root, 1)
    return found


def signature(path: Path) -> Signature:
    """Sizes and modification times of a run's files (changes when a round lands).

    It also holds whether a process holds ``run.lock``: a run killed mid-round
    changes no file, yet turns from running to stopped.
    """
    parts = []
    for name in (HISTORY, META, STORE, STORE + "-wal", *SET_UP_FILES):
        with contextlib.suppress(OSError):
            st = (path / name).stat()
            parts.append((name, st.st_size, st.st_mtime_ns))
    held = is_held(path)
    parts.append(("run.lock", -1 if held is None else int(held), 0))
    return Signature(tuple(parts))


def read_run(
    run_id: str,
    path: str | Path,
    *,
    root: str | Path | None = None,
    damaged: str | None = None,
    histories: HistoryCache | None = None,
) -> Run:
    """Read one run folder: its settings, rounds and (deployed) clients and events.

    A ``history.json`` that cannot be read (cut short by a kill, not JSON) beside
    a ``run.sqlite`` is passed over: the rounds come from the store, and
    :attr:`Run.warning` says why.

    Args:
        run_id: The id to give the run (e.g. one :func:`discover_runs` found).
        path: The run folder (holding ``history.json`` and/or ``run.sqlite``).
        root: The runs folder: a file of the run that resolves outside it (a
            symbolic link to a file elsewhere) is refused. None: not checked.
        damaged: Why ``history.json`` is damaged, as a stricter reader
            (:meth:`covey.History.load`) found: it is not read. None: it is read.
        histories: Keeps ``history.json`` parsed while it does not change (a
            dashboard reading a live run again at each round); its rounds are then
            shared with other reads. None: the file is parsed.

    Raises:
        RunReadError: if ``path`` is no run folder, or a file is too big, not JSON,
            not a covey run, or outside ``root``; a damaged ``history.json`` only
            if the store cannot be read either (or there is none).
    """
    path = Path(path)
    top = None if root is None else Path(root)
    if not is_run(path):
        raise RunReadError(f"{path} is not a run folder (no history.json or run.sqlite)")
    if is_set_up_only(path):
        return _set_up_run(run_id, path)
    db = path / STORE
    simulated = is_simulation(path) or not db.is_file()  # run.json, or run.sqlite's kind
    run = Run(run_id, path, "simulated" if simulated else "deployed")
    history = path / HISTORY
    if has_history(path) and damaged is None:  # no regular file: unreadable
        damaged = _read_history(run, within(history, top), db, histories)  # a link outside: refused
        if damaged is None and db.is_file():  # another run's history.json: read the store's
            damaged = foreign_history(path, {int(r["round"]): r for r in run.rounds})
    if damaged is not None:
        if not db.is_file():
            raise RunReadError(damaged)
        run = Run(run_id, path, run.kind, warning=read_from_store(damaged, db))
    # A simulation's run.json names its strategy only: the options are history.json's.
    asynchronous = step_of_settings(run.meta) == "update"
    run.meta.update(read_run_json(path, top) or {})  # damaged: refused, naming why
    if db.is_file():
        read_store_within(run, db, top, damaged)
    if asynchronous or step_of_settings(run.meta) == "update":
        run.step = "update"
    _how_to_go_on(run, db, simulated)
    if "status" not in run.meta and run.rounds and _all_rounds_done(run):
        run.meta["status"] = "finished"  # history.json alone: older covey, or History.save
    if not run.meta.get("updated_at"):
        with contextlib.suppress(OSError):
            run.meta["updated_at"] = history.stat().st_mtime
    return run


def _how_to_go_on(run: Run, db: Path, simulated: bool) -> None:
    """Mark a run no process holds any more ``stopped``; say how a stopped or failed run goes on.

    A run recorded as failed because Ctrl-C or SIGTERM stopped it is marked
    ``interrupted``. A failed or interrupted run with a checkpoint (``run.sqlite``)
    gets the command that continues it after its reason, as ``covey runs show`` prints it.
    """
    path = run.path
    step = run.step  # "update" in an asynchronous run
    last = last_finished_step([r["round"] for r in run.rounds], run.meta.get("stopped_reason"))
    if run.status == "running" and is_held(path) is False:
        run.meta["status"] = "stopped"
        run.meta["stopped_reason"] = (
            stopped_simulation_reason(path, step, last) if simulated else killed_server_reason(path)
        )
    stops = [d for _, who, e, d in run.events if (who, e) == ("server", "stopped") and d.strip()]
    if not simulated and "stopped_reason" not in run.meta and stops:  # before history.json
        run.meta["stopped_reason"] = stops[-1].strip().splitlines()[0]
    reason = run.meta.get("stopped_reason")
    if shown_status(run.status, reason) == "interrupted":  # by Ctrl-C or SIGTERM: no failure
        run.meta["status"] = "interrupted"
    going_on = run.status in ("failed", "interrupted") and db.is_file()
    if going_on and isinstance(reason, str) and reason:
        how = how_to_resume(path) if simulated else how_to_continue(path)
        run.meta["stopped_reason"] = f"{reason}; continue it {resumed_from(step, last)} with {how}"


def _set_up_run(run_id: str, path: Path) -> Run:
    """A simulation not past its set-up: starting (its lock held), or interrupted."""
    run = Run(run_id, path, "simulated")
    if is_held(path) is True:
        run.meta["status"] = "starting"
    else:
        run.meta["status"] = "interrupted"
        run.meta["stopped_reason"] = interrupted_set_up_reason(path)
    stamps = []
    for name in SET_UP_FILES:
        with contextlib.suppress(OSError):
            stamps.append((path / name).stat().st_mtime)
    if stamps:
        run.meta["updated_at"] = max(stamps)
    return run


def _read_history(
    run: Run, history: Path, db: Path, histories: HistoryCache | None = None
) -> str | None:
    """Fill ``run``'s rounds, settings and stop reason from its ``history.json``.

    ``histories``: where the file is kept parsed while it does not change (None: parsed).

    Returns:
        None; or why the file cannot be read, if the store ``db`` is there to read
        the rounds from instead.

    Raises:
        RunReadError: if the file cannot be read and there is no store.
    """
    try:
        data, rounds = parse_history(history) if histories is None else histories.read(history)
    except RunReadError as exc:
        if not db.is_file():
            raise
        return str(exc)
    run.rounds = rounds
    if isinstance(data.get("config"), dict):
        run.meta.update(data["config"])
    if isinstance(data.get("stopped_reason"), str):
        run.meta["stopped_reason"] = data["stopped_reason"]
    return None


def _all_rounds_done(run: Run) -> bool:
    """Whether the run holds its last planned round (``rounds`` in its settings)."""
    planned = run.meta.get("rounds")
    if isinstance(planned, bool) or not isinstance(planned, int):
        return False
    return bool(max(int(r["round"]) for r in run.rounds) >= planned)


def strategy_name(meta: dict[str, Any]) -> str:
    """The strategy's name: a string, or the ``name`` of a described strategy."""
    value = meta.get("strategy")
    if isinstance(value, dict):
        value = value.get("name")
    return value if isinstance(value, str) else "?"


def summary(run: Run) -> dict[str, Any]:
    """The run's row in the list of runs (JSON-ready).

    ``note`` says why it stopped, if it did; ``warning`` that its rounds were read
    from ``run.sqlite`` because its ``history.json`` is damaged (else None);
    ``step`` what its round numbers count: ``"update"`` in an asynchronous (FedBuff)
    run, else ``"round"``, as the page names them.
    """
    if run.tally is None:
        done = max((r["round"] for r in run.rounds), default=None)
    else:
        done = run.tally.done()
    started = run.meta.get("started") or run.meta.get("created_at")
    reason = run.meta.get("stopped_reason")
    return {
        "id": run.id,
        "kind": run.kind,
        "step": run.step,
        "status": run.status,
        "strategy": strategy_name(run.meta),
        "rounds_done": done,
        "rounds_planned": run.meta.get("rounds"),
        "best": best_metric(run.rounds) if run.tally is None else run.tally.best(),
        "started": started,
        "updated": run.meta.get("updated_at"),
        "note": reason if isinstance(reason, str) else None,
        "warning": run.warning,
    }


_CONNECT: Final = frozenset({"join", "rejoin"})
_DISCONNECT: Final = frozenset({"leave", "refused"})


def clients_table(run: Run) -> list[dict[str, Any]]:
    """The clients of a deployed run: connected or not, last seen, rounds taken part in.

    A client is connected after a ``join``/``rejoin`` event until a ``leave``;
    once the server stopped (status not ``"running"``) nobody is connected.
    """
    by_name: dict[str, dict[str, Any]] = {}
    for cid, name in sorted(run.clients.items()):
        by_name[name] = {
            "id": cid,
            "name": name,
            "connected": False,
            "last_seen": None,
            "last_event": None,
            "fit_rounds": [],
            "evaluate_rounds": [],
        }
    for when, name, event, detail in run.events:
        row = by_name.setdefault(
            name,
            {
                "id": None,
                "name": name,
                "connected": False,
                "fit_rounds": [],
                "evaluate_rounds": [],
            },
        )
        row["last_seen"] = when
        row["last_event"] = f"{event}: {detail}" if detail else event
        if event in _CONNECT:
            row["connected"] = True
        elif event in _DISCONNECT:
            row["connected"] = False
    counted = tally_of(run.rounds) if run.tally is None else run.tally
    for row in by_name.values():
        if row["id"] is not None:
            for column in ("fit_rounds", "evaluate_rounds"):
                row[column] = counted.client_rounds(column, row["id"])
    if run.status != "running":
        for row in by_name.values():
            row["connected"] = False
    return list(by_name.values())


def detail(run: Run) -> dict[str, Any]:
    """Everything the page shows of one run (JSON-ready)."""
    return {
        **summary(run),
        "meta": run.meta,
        "rounds": run.rounds,
        "client_names": {str(cid): name for cid, name in run.clients.items()},
        "clients": clients_table(run) if run.kind == "deployed" else [],
    }

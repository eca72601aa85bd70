"""``covey runs``: list the runs in a folder and show one run's rounds, clients and failures.

Every run folder, simulated (``covey demo``, ``simulate(run_dir=...)``, ``covey run``)
or deployed (``covey server``), holds a ``history.json``; these commands read it with
:meth:`covey.History.load`. More ``runs`` commands mount on :data:`runs_app`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from covey.cli._rounds import (
    MAX_MORE_COLUMNS,
    ROUND_COLUMNS,
    SHOWN_ROUNDS,
    endings,
    last_finished,
    metric_columns,
    print_rounds,
    round_table,
    settings_facts,
    shown_rounds,
    step_of,
    stopped_early,
)
from covey.cli._runsdir import STORE, find_run, project_runs
from covey.cli._runstatus import (
    continue_command,
    damaged_run_json,
    run_status,
    unopenable_run_json,
    unreadable_store,
    why_stopped,
)
from covey.dashboard._runjson import lacks_rounds, run_files_within
from covey.dashboard._runs import discover_runs, has_history, lacked_rounds, run_id
from covey.dashboard._runstore import foreign_history
from covey.deploy._cli_errors import USAGE_EXIT, fail, folder_flag
from covey.deploy._cli_help import HelpCommand
from covey.deploy._cli_tables import TEXT_FLOOR, output_console, print_table
from covey.deploy._shown import escape
from covey.server._rundb import is_held
from covey.sim._rundir import (
    SET_UP_FILES,
    interrupted_set_up_reason,
    is_set_up_only,
)

if TYPE_CHECKING:  # imported where used: NumPy is slow to load for `covey --help`
    from covey.cli._runtail import WholeRun
    from covey.core._history import History

__all__ = [
    "MAX_MORE_COLUMNS",
    "ROUND_COLUMNS",
    "TEXT_FLOOR",
    "endings",
    "find_run",
    "last_finished",
    "load_history",
    "metric_columns",
    "print_notices",
    "print_table",
    "round_table",
    "run_status",
    "runs_app",
    "stopped_early",
]

console = output_console()

warnings_console = Console(stderr=True, highlight=False, emoji=False)

runs_app = typer.Typer(
    help="Read the runs kept in run folders: `covey runs list`, `covey runs show RUN`.",
    no_args_is_help=True,
)

RunsDir = Annotated[
    Path,
    typer.Option(
        "--dir",
        help="The folder holding run folders (default: runs, or in a project's folder "
        "the runs-dir its pyproject.toml names).",
        parser=folder_flag("--dir"),
        metavar="PATH",
        show_default=False,
    ),
]


def _last(history: History, name: str, earlier: list[bool] | None = None) -> str:
    """The latest value of the metric ``name``, with its round if not the run's last.

    A run that evaluates every few rounds (``evaluate_every``) or stopped before its
    last evaluation has its latest value from an earlier round: ``0.4120 (r3)``
    (``u3``: an update of an asynchronous run), and ``earlier`` is told, for the
    line under the table that says what ``(r3)`` means.
    """
    from covey.core._history import metric_points

    for source in ("central", "evaluate"):
        values = metric_points(history, name, source)
        if values:
            rnd, value = values[-1]
            if rnd == history.rounds[-1].round:
                return f"{value:.4f}"
            if earlier is not None:
                earlier.append(True)
            return f"{value:.4f} ({step_of(history)[0]}{rnd})"
    return "-"


def load_history(folder: Path, notices: list[str], root: Path | None = None) -> History:
    """:meth:`History.load` of ``folder``, its warnings added to ``notices`` (not printed).

    A history a newer covey wrote (fields this covey does not know) warns; the
    command prints each such warning once, as a line of its own
    (:func:`print_notices`), rather than in Python's warning format. The rounds
    the run's store holds that the file lacks (after its last, or lost from it,
    which warns) are read from the store.

    Args:
        folder: The run folder.
        notices: Where the warnings go.
        root: The folder the command was given: a run file that is a link to a file
            outside it is refused, as the dashboard refuses it. None: not checked.

    Raises:
        ValueError: The run cannot be read, or (``RunReadError``) a file of it links
            outside ``root``.
    """
    from covey.core._history import History

    run_files_within(folder, root)
    if not has_history(folder) and (folder / STORE).is_file():
        return _store_history(folder, notices, root=root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            history = History.load(folder)
        except (ValueError, OSError) as exc:  # damaged, a pipe; a store keeps every round too
            if not (folder / STORE).is_file():
                raise
            return _store_history(folder, notices, damaged=str(exc), root=root)
    notices.extend(str(w.message) for w in caught if str(w.message) not in notices)
    with contextlib.suppress(ValueError):  # a store it cannot read: the command says so
        foreign = foreign_history(folder, {r.round: vars(r) for r in history.rounds})
        if foreign is not None:  # another run's history.json: the store's is the run's
            return _store_history(folder, notices, damaged=foreign, root=root)
        lacked, lost = lacked_rounds(folder, [record.round for record in history.rounds])
        history.rounds += History.from_dict({"rounds": lacked}).rounds  # history.json missed
        if lost:  # whole rounds gone from history.json: the store's, where they belong
            history.rounds.sort(key=lambda record: record.round)
            notices.append(
                lacks_rounds(folder / History.FILE_NAME, folder / STORE, lost, step_of(history))
            )
    return history


#: What the dashboard's reading of a run adds to its settings: not the run's config.
_READ_META = ("status", "created_at", "updated_at", "stopped_reason")


def _store_history(
    folder: Path, notices: list[str], damaged: str | None = None, root: Path | None = None
) -> History:
    """The history a run's ``run.sqlite`` holds, read only, as the dashboard reads it.

    A server killed before it wrote ``history.json`` (waiting for its first
    clients) leaves its store alone: its rounds, settings and clients are there.
    A run killed as it wrote ``history.json`` leaves it ``damaged`` (why, as
    :meth:`History.load` said): the store keeps every round, and ``notices`` gets
    a line saying they were read from there.
    """
    from covey.core._history import History
    from covey.dashboard._runs import read_run

    run = read_run(folder.name, folder, root=root, damaged=damaged)  # RunReadError: ValueError
    if run.warning is not None:
        notices.append(run.warning)
    config = {k: v for k, v in run.meta.items() if k not in _READ_META}
    clients = {str(cid): name for cid, name in run.clients.items()}
    return History.from_dict({"rounds": run.rounds, "config": config, "clients": clients})


def print_notices(notices: list[str]) -> None:
    """Print each of ``notices`` as one ``warning:`` line on standard error."""
    for notice in notices:
        warnings_console.print(f"[bold yellow]warning:[/] {escape(notice)}", soft_wrap=True)


def _runs_in(runs_dir: Path, notices: list[str]) -> list[tuple[str, Path, History | str | None]]:
    """Each run in ``runs_dir`` (as the dashboard finds them, three levels deep).

    Args:
        runs_dir: The folder holding run folders.
        notices: Where the warnings of reading the histories go.

    Returns:
        ``(name, folder, history)`` with the name relative to ``runs_dir``, and the
        history, or why it cannot be read, or None for a simulation that has not
        got past its set-up (:func:`~covey.sim._rundir.is_set_up_only`).
    """
    found: list[tuple[str, Path, History | str | None]] = []
    if not runs_dir.is_dir():
        return found
    for name, folder in discover_runs(runs_dir):
        if folder == runs_dir:  # --dir is itself a run folder
            name = folder.resolve().name
        if is_set_up_only(folder):
            found.append((name, folder, None))
            continue
        try:
            found.append((name, folder, load_history(folder, notices, runs_dir)))
        except (ValueError, OSError) as exc:  # damaged or half-written: listed, with why
            found.append((name, folder, str(exc)))
    return found


@runs_app.command("list", cls=HelpCommand)
def list_runs(
    folder: Annotated[
        Path | None,
        typer.Argument(
            help="The folder holding run folders (as --dir).",
            show_default=False,
            parser=folder_flag("FOLDER"),
            metavar="FOLDER",
        ),
    ] = None,
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """List the runs under FOLDER or --dir (three levels deep): status, metrics.

    The default is runs/, or in a project's folder the runs-dir it names.
    """
    from covey.core._history import History

    if folder is not None:  # `covey runs list runs/study`, as `covey dashboard runs/` reads
        if runs_dir != Path("runs") and runs_dir != folder:
            fail(f"runs list {folder} --dir {runs_dir}: give the folder once")
        runs_dir = folder
    runs_dir = project_runs(runs_dir)  # a project's runs-dir, if it names one
    if runs_dir != Path("runs") and not runs_dir.is_dir():  # a typo, not a folder of no runs
        fail(f"{runs_dir} is not a folder; give the folder holding run folders (default runs/)")
    notices: list[str] = []
    found = _runs_in(runs_dir, notices)
    if not found:
        console.print(
            f"no runs in {escape(str(runs_dir))} (a run folder holds {History.FILE_NAME})"
        )
        return
    table = Table(
        title=f"Runs in {escape(str(runs_dir))}", box=box.SIMPLE_HEAD, header_style="bold"
    )
    # What the runs' numbers count: "rounds", "updates" (FedBuff), or both, each row its own.
    steps = sorted({step_of(h) for _, _, h in found if isinstance(h, History)}, reverse=True)
    done = "/".join(f"{step}s" for step in steps) or "rounds"
    for column in ("run", "kind", "status", done, "clients", "accuracy", "loss", "modified"):
        text = column in ("run", "kind", "modified")  # these fold in a narrow terminal
        table.add_column(
            column,
            no_wrap=not text,
            overflow="fold",
            justify="left" if column == "run" else "right",
        )
    damaged: list[str] = []
    stopped: list[str] = []  # runs that can go on, and how
    earlier: list[bool] = []  # a metric shown is from before its run's last round
    for name, folder, history in found:
        table.add_row(*_row(name, folder, history, damaged, stopped, len(steps) > 1, earlier))
    print_table(table)
    if earlier:
        marks = "/".join(f"({step[0]}N)" for step in steps)
        units = " or ".join(f"{step} N" for step in steps)
        console.print(
            f"{marks}: the latest value was measured at {units}, before the run's last "
            + " or ".join(steps),
            soft_wrap=True,
        )
    for why in damaged:
        console.print(f"[red]unreadable[/]: {escape(why)}")
    for how in stopped:
        console.print(f"[yellow]{how}", soft_wrap=True)
    print_notices(notices)


def _row(
    name: str,
    folder: Path,
    history: History | str | None,
    damaged: list[str],
    stopped: list[str],
    mixed: bool = False,
    earlier: list[bool] | None = None,
) -> list[str]:
    """The cells of a run's row in ``covey runs list``; what to say below the table is added.

    Args:
        name: The run's name.
        folder: The run folder.
        history: Its history, why it cannot be read, or None for a run not past its set-up.
        damaged: Why runs cannot be read (said below the table).
        stopped: How runs that stopped go on, as markup lines (said below the table).
        mixed: Runs of both units are listed: the count names its own (``3/8 updates``).
        earlier: Told when a metric shown is from before the run's last round.
    """
    modified = _modified(folder)
    if history is None:  # killed (or still) setting up: nothing of it to read yet
        status = "starting" if is_held(folder) is True else "interrupted"
        if status == "interrupted":
            why = interrupted_set_up_reason(folder, prefix=False)
            stopped.append(f"interrupted during set-up[/]: {escape(f'{name}: {why}')}")
        return [escape(name), "simulated", status, *["-"] * 4, modified]
    if isinstance(history, str):
        damaged.append(history)
        return [escape(name), "-", "unreadable", *["-"] * 4, modified]
    backend = history.config.get("backend", "-")
    # As ``covey runs show`` counts: a round the run failed in (its record kept) did not finish.
    done = last_finished(history)
    last = "-" if done is None else done
    planned = history.config.get("rounds", "?")
    clients = history.config.get("num_clients") or len(history.clients) or "-"
    status = run_status(folder, history)
    if status == "unreadable":  # its run.json or run.sqlite: say why below the table
        damaged.append(damaged_run_json(folder) or unreadable_store(folder / "run.sqlite"))
    how = continue_command(folder) if status == "stopped" else None
    if how is not None:  # a simulation, or a deployed run whose server is gone
        stopped.append(f"stopped[/]: {escape(f'{name}: continue it with {how}')}")
    return [
        escape(name),
        "deployed" if backend == "grpc" else f"simulated ({backend})",
        status,
        f"{last}/{planned}" + (f" {step_of(history)}s" if mixed else ""),
        str(clients),
        _last(history, "accuracy", earlier),
        _last(history, "loss", earlier),
        modified,
    ]


def _modified(folder: Path) -> str:
    """When the newest of ``folder``'s run files changed (``-`` if none can be read).

    Its history, a simulation's ``run.json``, the store and its write-ahead log, the
    lock: as the dashboard watches them. A resumed run writes all but ``history.json``
    before its first round (a long run's history takes a while to read).
    """
    names = ("history.json", "run.json", STORE, f"{STORE}-wal", *SET_UP_FILES)
    stamps = []
    for name in names:
        with contextlib.suppress(OSError):
            stamps.append((folder / name).stat().st_mtime)
    if not stamps:
        return "-"
    return _dt.datetime.fromtimestamp(max(stamps)).strftime("%Y-%m-%d %H:%M:%S")


def _shown_folder(folder: Path) -> str:
    r"""``folder`` as ``covey runs list`` and the dashboard name runs (:func:`run_id`).

    A byte of a folder's name that is not UTF-8 is written ``\xNN`` (not as the
    lone surrogate Python reads it as), a backslash in a name twice.
    """
    parts = (part if part == folder.anchor else run_id(part) for part in folder.parts)
    return str(Path(*parts))


def _shown_history(
    folder: Path, notices: list[str], last: int | None
) -> tuple[History, WholeRun | None]:
    """The history ``covey runs show`` shows, read as ``covey runs report`` reads it.

    A ``run.json`` that cannot be opened (a named pipe, a folder) refuses the run:
    its rounds, printed below one line, would read as a sound run's. A long run
    shown in part (``last``) with a store is read in part (:func:`tail_history`).
    """
    from covey.cli._runtail import tail_history

    unopenable = unopenable_run_json(folder)
    if unopenable is not None:
        fail(f"{unopenable}; the run's status and settings cannot be read")
    tail = None if last is None else tail_history(folder, last)
    if tail is not None:
        return tail
    try:
        return load_history(folder, notices, folder), None
    except (ValueError, OSError) as exc:
        fail(str(exc))


def _failures_table(history: History, failures: list[tuple[int, Any]]) -> Table:
    table = Table(title="Failures", box=box.SIMPLE_HEAD, header_style="bold")
    step = step_of(history)  # "update" in an asynchronous run
    for column in (step, "client", "stage", "error"):
        table.add_column(column, overflow="fold", no_wrap=column in (step, "stage"))
    for rnd, failure in failures:
        who = failure.name or history.name_of(failure.cid)
        table.add_row(str(rnd), escape(who), failure.stage, escape(failure.error))
    return table


def _shown_failures(
    history: History, last: int | None, whole: WholeRun | None = None
) -> list[tuple[int, Any]]:
    """The failures of the rounds shown (the last ``last``), and a line counting the rest.

    ``whole``: the rounds ``history`` leaves out, counted (:func:`tail_history`).
    """
    failures = history.failures()
    if last is None or not history.rounds:
        return failures
    first, step = shown_rounds(history, last).rounds[0].round, step_of(history)
    shown = [(rnd, failure) for rnd, failure in failures if rnd >= first]
    earlier = len(failures) - len(shown) if whole is None else whole.failures_before
    if earlier:
        console.print(
            f"{earlier} failure{'s' if earlier > 1 else ''} before {step} {first} not "
            f"shown (--all shows every {step} and failure)"
        )
    return shown


@runs_app.command("show", cls=HelpCommand)
def show_run(
    run: Annotated[str, typer.Argument(help="A run folder, or a run's name under --dir.")],
    runs_dir: RunsDir = Path("runs"),
    last: Annotated[
        int | None,
        typer.Option(
            "--last",
            min=1,
            metavar="N",
            help="Show only the last N rounds, and the failures of those rounds "
            f"(default: the last {SHOWN_ROUNDS}). Of a run with a run.sqlite only those "
            "rounds are read, from it, and history.json's rounds are only counted: a "
            "change inside one before them goes unnoticed (--all reads the whole file, "
            "and warns of damage).",
            show_default=False,
        ),
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Show every round and failure, however many.")
    ] = False,
) -> None:
    """Show one run: its settings, a table of its rounds, its clients and failures.

    An unreadable run (a damaged ``run.json`` or ``run.sqlite``) is shown, saying
    why, and ends with exit code 2, as ``covey runs report`` refuses it.
    """
    if every and last is not None:
        fail("give --last N or --all, not both")
    last = None if every else last or SHOWN_ROUNDS
    folder = find_run(run, runs_dir)
    notices: list[str] = []
    history, whole = _shown_history(folder, notices, last)
    config = history.config
    strategy = config.get("strategy")
    name = strategy.get("name") if isinstance(strategy, dict) else strategy
    status = run_status(folder, history)
    console.print(f"[bold]{escape(_shown_folder(folder))}[/]: {status}")
    why = why_stopped(folder, status, history)
    if why:  # an interrupt or a kill is no failure: said in yellow
        console.print(
            f"[{'red' if status in ('failed', 'unreadable') else 'yellow'}]{escape(why)}[/]"
        )
    facts = settings_facts(config, name)
    if facts:
        console.print(escape(", ".join(facts)))
    print_rounds(history, console, last=last, traffic=True, whole=whole)
    for line in endings(history, whole):
        console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)
    if history.clients:
        clients = Table(title="Clients", box=box.SIMPLE_HEAD, header_style="bold")
        clients.add_column("id", justify="right")
        clients.add_column("name", overflow="fold")
        for cid, who in sorted(history.clients.items()):
            clients.add_row(str(cid), escape(who))
        print_table(clients)
    failures = _shown_failures(history, last, whole)
    if failures:
        print_table(_failures_table(history, failures))
    for record in shown_rounds(history, last).rounds:
        retried = record.aggregate_info.get("retried")  # serve(round_retries=...)
        for said in retried if isinstance(retried, list) else ():
            console.print(escape(f"round {record.round} was run again: {said}"), soft_wrap=True)
    print_notices(notices)
    if status == "unreadable":  # a damaged file, as `covey runs report` refuses it: exit 2
        raise typer.Exit(USAGE_EXIT)

"""A simulated ``covey run``: the project's apps simulated, or a stopped run resumed."""

from __future__ import annotations

import functools
import json
import os
import shlex
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from covey.cli._model import (
    MODEL_FILE,
    RoundModels,
    finished_unmarked,
    keep_model,
    not_saved,
    restore_model,
    save_model,
)
from covey.cli._project_stop import forget_unstarted, interrupted_note
from covey.core._files import MAX_SETTINGS_BYTES, atomic_write, read_json_object, read_regular
from covey.core._interrupt import exit_code, interrupts_as_such, stopping_on_sigterm
from covey.deploy._cli_errors import fail
from covey.deploy._cli_tables import output_console
from covey.deploy._cli_trackers import open_trackers

__all__ = [
    "SETTINGS_FILE",
    "check_resume_folder",
    "kept_settings",
    "same_settings",
    "simulate_project",
]

SETTINGS_FILE = "project.json"
"""What a simulated project run's app was given (``[tool.covey.config]`` and the run's
``clients`` and ``seed``, ``--set`` applied), kept so that a resume gives it the same,
and the rounds it runs to; written before the run starts, so a run killed before its
``run.json`` can be resumed too."""

RUN_FILES = (SETTINGS_FILE, "run.lock", "run.json", "run.sqlite", "history.json")
"""The files a simulated ``covey run`` writes in its folder as it starts, in that order."""


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (TOML dates as text)."""
    return json.loads(json.dumps(value, default=str))


def check_resume_folder(resume: Path, project: Path) -> None:
    """Refuse ``--resume`` of a folder that holds no simulated run, saying what is missing.

    A folder holding any of :data:`RUN_FILES` goes on to the simulation: it resumes
    the run, starts it again at round 1 if the run stopped before its first
    checkpoint, or says why it cannot.
    """
    here = project.resolve() == Path.cwd().resolve()
    again = f"`covey run{'' if here else ' ' + shlex.quote(str(project))}`"
    pick = "give a run folder of this project, e.g. one listed by `covey runs list`"
    if not resume.is_dir():
        fail(
            f"--resume {resume}: no such folder, so no simulated run to resume; {pick}, or "
            f"start a new run with {again}"
        )
    if not any((resume / name).exists() for name in RUN_FILES):
        fail(
            f"--resume {resume}: no simulated run there: it holds none of the files a "
            f"`covey run` writes as it starts ({', '.join(RUN_FILES)}); {pick}, or start a "
            f"new run with {again}"
        )
    if (resume / "run.sqlite").is_file() and not (resume / "run.json").exists():
        from covey.server._served import how_to_continue, project_command

        # A simulation writes run.json before run.sqlite; a served run never does.
        command = project_command(resume)
        fail(
            f"--resume {resume} holds a served run: continue it with `{command}`"
            if command is not None
            else f"--resume {resume} holds a served run: continue it with `covey run "
            f"--federation NAME --resume {shlex.quote(str(resume))}` (NAME: the federation "
            f"it was served for), or with {how_to_continue(resume)}"
        )


def kept_settings(run_dir: Path) -> dict[str, Any] | None:
    """The app settings ``run_dir``'s run was started with (its :data:`SETTINGS_FILE`).

    None when the folder keeps none, or the file is damaged (:func:`same_settings`
    then refuses the resume, naming it).
    """
    return read_json_object(run_dir / SETTINGS_FILE, MAX_SETTINGS_BYTES)


def same_settings(run_dir: Path, config: dict[str, Any], resume: bool, rounds: int) -> None:
    """Keep a new run's app settings in its folder; refuse a resume that changes one.

    ``rounds`` is kept too, but may change (a stopped run may be resumed for more
    rounds). A run folder without the file (a run of ``simulate()``) is not checked;
    one whose file is damaged is refused, naming it.
    """
    given = _plain({k: v for k, v in config.items() if k != "rounds"})
    path = run_dir / SETTINGS_FILE
    if not resume:
        atomic_write(path, json.dumps({**given, "rounds": rounds}, indent=2))
        return
    if not path.exists() and not path.is_symlink():  # a run of simulate() keeps none
        return
    try:  # a named pipe would wait for a writer for ever
        kept = json.loads(read_regular(path, MAX_SETTINGS_BYTES)) if path.is_file() else path
    except (OSError, ValueError, RecursionError) as exc:  # nested too deeply: damaged too
        kept = exc
    if not isinstance(kept, dict):
        why = kept if isinstance(kept, Exception) else "not a JSON object"
        why = "not a regular file" if kept is path else why
        fail(
            f"--resume {run_dir}: {path} is damaged ({why}), so the settings the run was "
            "started with cannot be checked; put back the run's own file, or start a new run"
        )
    kept.pop("rounds", None)
    changed = [
        f"{k} = {json.dumps(kept.get(k))} (now {json.dumps(given.get(k))})"
        for k in sorted(set(kept) | set(given))
        if kept.get(k) != given.get(k)
    ]
    if changed:
        fail(
            f"--resume {run_dir}: the run was started with other settings: "
            f"{', '.join(changed)}; a resumed run keeps the settings it was started with: "
            "leave out the --set that changes one (or take out a setting added to "
            "pyproject.toml since), or start a new run"
        )


console = output_console()


def _run_rounds(settings: Any, run_dir: Path, default: int) -> int:
    """The rounds the run in ``run_dir`` was asked for, else ``default``.

    Its ``run.json`` says them, or the ``project.json`` of a run killed before it
    wrote ``run.json``. A run started with ``--set rounds=N`` resumes to round N
    without it; an explicit ``--set rounds`` on the resume (``default``) trains
    it on to another round.
    """
    if "rounds" in settings.given:
        return default
    for name in ("run.json", SETTINGS_FILE):
        if not (run_dir / name).is_file():  # nor a named pipe, which would wait for ever
            continue
        try:
            kept = json.loads(read_regular(run_dir / name, MAX_SETTINGS_BYTES))
        except (OSError, ValueError, RecursionError):
            continue
        rounds = kept.get("rounds") if isinstance(kept, dict) else None
        if isinstance(rounds, int) and not isinstance(rounds, bool) and rounds >= 0:
            return rounds
    return default


def _run_config(run_dir: Path) -> dict[str, Any]:
    """The settings ``run_dir``'s ``run.sqlite`` keeps; none for a missing or damaged one."""
    import sqlite3

    from covey.server._rundb import DB_NAME, open_read_only

    if not (run_dir / DB_NAME).is_file():
        return {}
    try:
        conn = open_read_only(run_dir / DB_NAME)
        try:
            row = conn.execute("SELECT config FROM run WHERE id = 1").fetchone()
        finally:
            conn.close()
        config = json.loads(row[0])
    except (sqlite3.Error, ValueError, TypeError, RecursionError):  # damaged: simulate() says
        return {}
    return config if isinstance(config, dict) else {}


def _run_backend(settings: Any, run_dir: Path) -> None:
    """Resume on the backend the run last ran on, unless ``--set backend`` is given on the resume.

    A run started with ``--set backend="ray"`` (and a ``covey run --resume`` as
    printed, with no ``--set``) would otherwise go on in this process on the
    project's default backend. A run that last ran on Ray goes on with the
    ``client-resources`` and ``ray-address`` it ran with (on the cluster it
    joined, or a local Ray of its own), each unless given on the resume.
    """
    config = _run_config(run_dir)
    kept = config.get("backend")
    if "backend" not in settings.given and kept in ("inline", "process", "ray"):
        settings.run["backend"] = kept
    if kept != "ray" or settings.run.get("backend") != "ray":
        return
    resources = config.get("client_resources")
    if "client_resources" in config and "client_resources" not in settings.given:
        if isinstance(resources, dict) and not any(isinstance(v, dict) for v in resources.values()):
            settings.run["client_resources"] = resources
        elif resources is None:  # the default, whatever [tool.covey] says now
            settings.run.pop("client_resources", None)
    address = config.get("ray_address")
    if "ray_address" in config and "ray_address" not in settings.given:
        if isinstance(address, str):
            settings.run["ray_address"] = address
        elif address is None:  # a local Ray of its own
            settings.run.pop("ray_address", None)


def _run_keep_last(settings: Any, run_dir: Path, keep_last: int | None) -> int | None:
    """The ``keep-last`` a resumed run prunes with: the run's own, unless given on the resume.

    As a run started with ``--set rounds=N`` resumes to round N without it, one
    started with ``--set keep-last=all`` keeps every round's weights file when
    resumed without it; a ``--set keep-last`` on the resume (``keep_last``) wins.
    """
    if "keep_last" in settings.given:
        return keep_last
    config = _run_config(run_dir)
    kept = config.get("keep_last", keep_last)
    whole = isinstance(kept, int) and not isinstance(kept, bool) and kept >= 2
    return kept if kept is None or whole else keep_last


def _client(make_client: Any, spec: str, config: dict[str, Any], cid: int) -> Any:
    """``make_client(cid, config=config)``, refused (as that client's failure) if not a client."""
    client = make_client(cid, config=config)
    if not callable(getattr(client, "fit", None)):
        raise TypeError(
            f"client-app {spec}(cid, config) returned {type(client).__name__}, not a covey.Client"
        )
    return client


def _refused_resume(exc: Exception, resume: Path | None, models: RoundModels) -> None:
    """Fail as a refusal of ``--resume`` if ``exc`` is the resume refusing its folder.

    That is a ValueError raised before any round was evaluated, and not by the
    app's own functions (those carry a note saying so): a finished run, another
    kind of run, settings that differ, a damaged store; or the folder refused as
    one that cannot be written (a read-only ``run.sqlite``).
    """
    from covey.server._runlock import RunRefusedError

    if (
        resume is not None
        and isinstance(exc, ValueError | RunRefusedError)
        and not models.models
        and not getattr(exc, "__notes__", None)
    ):
        fail(f"--resume {resume}: {exc}")


def _ray_options(settings: Any) -> dict[str, Any]:
    """``simulate()``'s Ray options from ``[tool.covey]``, checked before anything starts.

    A local Ray started for the run starts its actors with this process's
    environment: the project folder goes first on their ``PYTHONPATH``, so that
    they import the project's apps by name as this process does. Actors of a
    cluster (``ray-address``) import them as that cluster's nodes can.
    """
    import importlib.util
    from collections.abc import Mapping

    from covey.cli._project_files import toml_key
    from covey.sim._options import _check_ray_options
    from covey.sim._rayplan import ray_need

    run = settings.run
    if run.get("backend", "inline") != "ray":
        for key in ("client_resources", "ray_address", "ray_start_timeout"):
            if key in run:
                fail(f'{toml_key(key)} ([tool.covey] or --set) applies to backend = "ray" only')
        return {}
    try:
        found = importlib.util.find_spec("ray") is not None
    except ValueError:  # sys.modules["ray"] is None: importing Ray is blocked
        found = False
    if not found:
        fail(
            'backend = "ray" ([tool.covey] or --set) needs the ray extra (ray is not '
            "installed): pip install 'covey[ray]'"
        )
    resources, address = run.get("client_resources"), run.get("ray_address")
    try:
        _check_ray_options(None, None, address)
    except TypeError as exc:
        fail(f"ray-address = {address!r} ([tool.covey] or --set): {exc}")
    start_timeout = run.get("ray_start_timeout")
    try:
        _check_ray_options(None, None, None, start_timeout)
    except ValueError as exc:
        fail(f"ray-start-timeout = {start_timeout!r} ([tool.covey] or --set): {exc}")
    try:
        _check_ray_options(resources, None, None)
        if isinstance(resources, Mapping):
            if any(isinstance(v, Mapping) for v in resources.values()):
                raise ValueError("give one table for every client, e.g. {num_cpus = 1}")
            ray_need(resources)
    except (TypeError, ValueError) as exc:
        fail(f"client-resources = {resources!r} ([tool.covey] or --set): {exc}")
    if address in (None, "local"):  # a local Ray started for the run
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            dict.fromkeys(p for p in [str(settings.project), *paths] if p)
        )
    return {
        "client_resources": resources,
        "ray_address": address,
        "ray_start_timeout": start_timeout,
    }


def _start_method(start_method: Any, backend: str) -> Any:
    """The ``start-method`` setting, checked: one this platform has, for the process backend."""
    from covey.sim._start import start_method_refusal

    why = start_method_refusal(start_method, backend, 'backend = "process"')
    if why is not None:
        fail(f"start-method = {start_method!r} ([tool.covey] or --set): {why}")
    return start_method


def simulate_project(settings: Any, server_app: Any, make_client: Any, resume: Path | None) -> None:
    """Simulate the project with its ``[tool.covey]`` settings (``resume``: continue that run)."""
    import covey
    from covey.deploy._cli_errors import fresh_run_dir
    from covey.sim._options import _check_keep_last, _checked

    run = settings.run
    if resume is not None:
        _run_backend(settings, resume)
    clients, rounds = int(run.get("clients", 10)), int(run.get("rounds", server_app.rounds))
    backend = str(run.get("backend", "inline"))
    if backend not in ("inline", "process", "ray"):
        fail(f"backend = {backend!r} ([tool.covey] or --set): choose inline, process or ray")
    ray_options = _ray_options(settings)
    start_method = _start_method(run.get("start_method"), backend)
    try:
        _checked(server_app.strategy, clients, rounds)
    except ValueError as exc:
        fail(f"clients = {clients} ([tool.covey] or --set): {exc}")
    keep_last = None if run.get("keep_last") == "all" else run.get("keep_last", 2)
    try:
        _check_keep_last(keep_last, "a run folder")  # every simulated `covey run` has one
    except ValueError:
        fail(
            f"keep-last = {run.get('keep_last')!r} ([tool.covey] or --set): give how many "
            "rounds keep their weights file, 2 or more (the newest to resume from and the one "
            'before), or "all" to keep every round\'s'
        )
    if resume is None:
        runs = settings.path(run.get("runs_dir", "runs")) or Path("runs")
        run_dir = fresh_run_dir(runs, "sim", f"runs-dir = {str(runs)!r} ([tool.covey] or --set)")
    else:
        run_dir = resume
        rounds = _run_rounds(settings, run_dir, rounds)
        keep_last = _run_keep_last(settings, run_dir, keep_last)
        if _nothing_left(settings.project.name, run_dir, rounds):
            return
    _same_run(settings, run_dir, resume is not None, rounds)
    trackers = open_trackers(  # refused before the simulation starts
        {**settings.trackers, "run": run_dir, "resuming": resume is not None},
        None if resume is not None else functools.partial(forget_unstarted, run_dir),
    )
    console.print(
        f"[bold]covey run[/]: {clients} simulated clients, {rounds} rounds ({backend} backend)"
        + ("" if resume is None else escape(f", resuming {run_dir}")),
        soft_wrap=True,
    )
    models = RoundModels(server_app.evaluate_fn)  # keeps the model after the last round done
    try:
        # SIGTERM (a batch scheduler's or `docker stop`'s stop) as Ctrl-C; and an error
        # Ctrl-C caused (an ImportError, say) as Ctrl-C
        with stopping_on_sigterm(), interrupts_as_such(), trackers:
            trackers.started()  # its folder holds its settings: a kill keeps the flags
            result = covey.simulate(
                functools.partial(
                    _client, make_client, settings.run["client_app"], settings.app_config()
                ),
                clients,
                rounds,
                server_app.strategy,
                # called by simulate(): the step-0 model is freed after round 1
                server_app.weights,
                models.evaluate,
                backend=backend,  # type: ignore[arg-type]
                start_method=start_method,
                seed=int(run.get("seed", server_app.seed)),
                progress=True,
                on_round=[models.finished, trackers],
                run_dir=run_dir,
                resume=resume is not None,
                compression=server_app.compression,
                keep_last=keep_last,
                **ray_options,
            )
    except covey.FederationError as exc:
        console.print(f"[red]run stopped:[/] {escape(str(exc))}")
        # the model after the last round that finished, as a finished run keeps its own
        kept = keep_model(run_dir, models, console, exc.history, exc.weights)
        if kept is not None:
            show = f"`covey runs show {shlex.quote(str(run_dir))}`"
            console.print(escape(f"{kept}; {show}"), soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as exc:
        kept = keep_model(run_dir, models, console)
        console.print(
            escape(interrupted_note(run_dir, kept, exc, settings.tracker_flags)), soft_wrap=True
        )
        raise typer.Exit(exit_code(exc)) from None
    except Exception as exc:
        _refused_resume(exc, resume, models)
        # The app's own function raised: the error is reported as any other (covey.cli.main).
        _stopped_by_error(run_dir, models, new=resume is None)
        raise
    _finished(settings.project.name, run_dir, result)


def _stopped_by_error(run_dir: Path, models: RoundModels, *, new: bool) -> None:
    """Keep the model of the last round done, or forget a ``new`` run that did none."""
    kept = keep_model(run_dir, models, console)
    if kept is not None:
        console.print(escape(f"run stopped: {kept}"), soft_wrap=True)
    elif new:
        forget_unstarted(run_dir)


def _nothing_left(name: str, run_dir: Path, rounds: int) -> bool:
    """End a resumed run that had done all its rounds; whether it had."""
    restored = restore_model(run_dir, rounds, console)
    if restored is not None:  # all that was left of a finished run
        console.print(escape(restored), soft_wrap=True)
        return True
    return _end_finished(name, run_dir, rounds)


def _same_run(settings: Any, run_dir: Path, resume: bool, rounds: int) -> None:
    """:func:`same_settings`; and refuse a resume past ``rounds`` before the header says it."""
    from covey.sim._checkpoint import rounds_refusal

    same_settings(run_dir, settings.app_config(), resume, rounds)
    if resume and (refused := rounds_refusal(run_dir, rounds)) is not None:
        fail(f"--resume {run_dir}: {refused}")


def _end_finished(name: str, run_dir: Path, rounds: int) -> bool:
    """End a run stopped after its last round was kept as a finished run ends; whether it was."""
    from types import SimpleNamespace

    done = finished_unmarked(run_dir, rounds)
    if done is None:
        return False
    history, weights = done
    meta = read_json_object(run_dir / "run.json", MAX_SETTINGS_BYTES) or {}
    meta.pop("stopped_reason", None)
    atomic_write(run_dir / "run.json", json.dumps({**meta, "status": "finished"}, indent=2))
    console.print(
        escape(
            f"the run in {run_dir} had done its {history.rounds[-1].round} rounds when it "
            "was stopped: it is finished now"
        ),
        soft_wrap=True,
    )
    _finished(name, run_dir, SimpleNamespace(history=history, weights=weights))
    return True


def _finished(name: str, run_dir: Path, result: Any) -> None:
    """Report a finished run and keep its model; exit with status 1 if it cannot be kept."""
    from covey.cli._rounds import endings, print_rounds
    from covey.server._outputs import plot_history

    plot_history(result.history, run_dir / "plot.png", title=name)
    print_rounds(result.history, console, folder=run_dir)
    for line in endings(result.history):
        console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)
    files = "history.json, plot.png"
    last = result.history.rounds[-1].round if result.history.rounds else 0
    saved = save_model(run_dir, last, result.weights, console)
    if saved:
        files += f", {MODEL_FILE}"
    console.print(
        escape(f"run folder: {run_dir} ({files}); `covey runs show {shlex.quote(str(run_dir))}`"),
        soft_wrap=True,
    )
    if not saved:  # the one thing a finished run is for: not a success
        console.print(f"[red]error:[/] {escape(not_saved(run_dir, last))}", soft_wrap=True)
        raise typer.Exit(1)
    trained = [r for r in result.history.rounds if r.round > 0]
    if trained and not any(r.aggregated for r in trained):  # it trained nothing: no success
        console.print(
            "[red]error:[/] no round of the run aggregated (see above): its model is the one "
            "it started with",
            soft_wrap=True,
        )
        raise typer.Exit(1)

"""``covey run --federation NAME``: a project served for real clients, or a served run resumed.

The settings are those of ``[tool.covey.federations.NAME]`` with ``--set``
applied. The app's settings (``[tool.covey.config]``, ``clients``, ``rounds``,
``seed``) are kept in the run folder as a simulated run keeps them, so that
``covey run --federation NAME --resume DIR`` gives the app the settings the run
was started with, ``--set`` ones included.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from rich.markup import escape

from covey.cli._project_files import toml_key
from covey.deploy._cli_errors import fail
from covey.deploy._cli_tables import output_console
from covey.server._readcopy import is_simulation
from covey.server._served import record_federation, resume_command

__all__ = ["check_served_folder", "project_resume_hint", "serve_project"]

console = output_console()


def check_served_folder(resume: Path) -> None:
    """Refuse ``--federation NAME --resume`` of a folder that holds no served run."""
    if is_simulation(resume):  # run.json, or its run.sqlite's kind: a served run has neither
        fail(
            f"--resume {resume} holds a simulated run; continue it without --federation: "
            f"`covey run --resume {shlex.quote(str(resume))}`"
        )
    if not (resume / "run.sqlite").is_file():
        fail(
            f"--resume {resume}: no served run there (no run.sqlite); give the run folder a "
            "`covey run --federation NAME` printed, or start a new run without --resume"
        )


def project_resume_hint(settings: Any, name: str, run_dir: Path) -> str:
    """The ``covey run --federation NAME --resume DIR`` that continues ``run_dir``, quoted.

    It repeats this run's ``--set`` items: the app's settings are kept in the run
    folder, but the federation's (``round-timeout``, ``data-port``...) are not; and
    the tracker flags given (``--tensorboard``, ``--mlflow``), as they were given.
    """
    return resume_command(
        settings.project, name, run_dir, settings.overrides, settings.tracker_flags
    )


def serve_project(
    settings: Any, server_app: Any, name: str, verbose: bool, resume: Path | None
) -> None:
    """Serve the project's app for real clients (``resume``: continue that served run)."""
    from covey.cli._project_sim import same_settings
    from covey.deploy._cli import _serve
    from covey.deploy._cli import console as log_console
    from covey.deploy._cli_errors import compression_spec, number, output_file, port_number
    from covey.deploy._cli_logs import setup_logging
    from covey.deploy._cli_security import _security

    fed = settings.federation or {}
    where = f"([tool.covey.federations.{name}] or --set)"
    setup_logging(log_console, verbose, server=True)
    # Every setting is checked before any folder is made or port is bound.
    _check_paths(fed, where)
    scheme = compression_spec(fed.get("compression"), f"compression {where}")
    insecure = bool(_switch(fed, "insecure", where))
    plot = _switch(fed, "plot", where)
    times = {
        key: number(fed.get(key), f"{toml_key(key)} {where}", seconds=True)
        for key in ("round_timeout", "wait_timeout", "heartbeat")
    }
    keep_last = number(fed.get("keep_last"), f"keep-last {where}", integer=True)
    retries = number(fed.get("round_retries"), f"round-retries {where}", integer=True, zero=True)
    max_clients = number(fed.get("max_clients"), f"max-clients {where}", integer=True)
    data_port = port_number(fed.get("data_port"), f"data-port {where}")
    address = _address(fed.get("address", "127.0.0.1:9092"), where)
    if fed.get("certs") is not None and insecure:
        fail(
            f"certs = {fed['certs']!r} and insecure = true {where}: give one of them (with "
            "certs, set insecure = false or remove it; --set insecure=false for one run)"
        )
    if fed.get("certs") is None and not insecure:
        fail(
            f'no certs {where}: give certs = "DIR" (a folder made by `covey certs init '
            "--dir DIR`), or insecure = true for a local experiment without TLS"
        )
    certs, tls = _security(settings.path(fed.get("certs")), insecure)
    port_file = output_file(settings.path(fed.get("port_file")), f"port-file {where}")
    run_dir = _served_run_dir(settings, name, where, resume)
    hint = project_resume_hint(settings, name, run_dir)
    rounds = settings.run.get("rounds")
    run_dir.mkdir(parents=True, exist_ok=True)
    same_settings(run_dir, settings.app_config(), resume is not None, rounds or server_app.rounds)
    if resume is not None:  # refused before the header says it resumes
        _check_rounds_left(run_dir, server_app, rounds)
    from covey.deploy._cli_trackers import pasted_anywhere

    trackers = pasted_anywhere(settings.tracker_flags)  # for a command pasted in another folder
    record_federation(run_dir, settings.project, name, settings.overrides, trackers)
    host, _, port = address.rpartition(":")
    dial = f"{host}:PORT" if port == "0" else address  # port 0: the one printed once it listens
    app = settings.run["client_app"].rsplit(":", 1)[0]
    console.print(
        f"[bold]covey run --federation {escape(name)}[/]: "
        + ("serving" if resume is None else escape(f"resuming {run_dir}, serving"))
        + f" {escape(settings.project.name)} on {escape(address)}; "
        + escape(_waits_for(server_app.strategy))
        + "\n"
        + escape(
            f"  covey client --app {shlex.quote(app + ':client_fn')} "
            f"--cid K --name NAME --server {shlex.quote(dial)} "
            + ("--insecure" if insecure else f"--certs {shlex.quote(str(certs))}")
        ),
        soft_wrap=True,
    )
    flags = {
        "run": run_dir,
        "resuming": resume is not None,
        "made_run_dir": resume is None and fed.get("run_dir") is None,
        "port_file": port_file,
        "address": address,
        "address_flag": f"address {where}",
        "certs": certs,
        "tls": tls,
        "insecure": insecure,
        "rounds": rounds,
        "plot": plot,
        "compression": scheme,
        "keep_last": keep_last,
        "round_retries": retries,
        "max_clients": 1000 if max_clients is None else max_clients,
        "data_port": data_port,
        "resume_hint": hint,
        **times,
        **settings.trackers,
    }
    _serve(server_app, {}, flags)


def _waits_for(strategy: Any) -> str:
    """How many clients the served run waits for, and how to start them.

    A synchronous round waits for ``min_available_clients`` and ``min_fit_clients``
    connected; an asynchronous (FedBuff) run for ``min_available_clients``.
    """
    wanted = [int(getattr(strategy, "min_available_clients", 1) or 0)]
    if not getattr(strategy, "asynchronous", False):
        wanted.append(int(getattr(strategy, "min_fit_clients", 0) or 0))
    count = max(1, *wanted)
    if count == 1:
        return "it waits for 1 client: start it (and any more, each with its own --cid K) with"
    cids = "0, 1" if count == 2 else f"0, 1, ... {count - 1}"
    return (
        f"it waits for {count} clients: start each, with its own --cid K ({cids}) and --name, with"
    )


def _check_rounds_left(run_dir: Path, server_app: Any, rounds: Any) -> None:
    """Refuse to resume the served run in ``run_dir`` with fewer rounds than it ran.

    The rounds are those the server would resume with; a folder that cannot be
    read here is left to the server, which says why.
    """
    from covey.deploy._cli import _rounds
    from covey.deploy._servechecks import check_resumable
    from covey.server._store import RunStore

    wanted = _rounds(server_app, {"rounds": rounds, "run": run_dir, "resuming": True})
    try:
        opened = RunStore.open(run_dir)  # to read: nothing is written
    except (OSError, ValueError):
        return
    try:
        check_resumable(opened, wanted)
    except ValueError as exc:
        fail(str(exc))
    finally:
        opened.close()


_PATH_EXAMPLES = {"certs": "federation", "run_dir": "runs/study-1", "port_file": "server.port"}
"""A value of each path setting of a federation table, shown when one is given wrong."""


def _check_paths(fed: dict[str, Any], where: str) -> None:
    """Refuse a path setting that is no text (``run-dir = 3`` made a folder named ``3``)."""
    for key, example in _PATH_EXAMPLES.items():
        value = fed.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            fail(
                f"{toml_key(key)} = {value!r} {where}: give a path as text, e.g. "
                f'{toml_key(key)} = "{example}" (relative to the project folder)'
            )


def _served_run_dir(settings: Any, name: str, where: str, resume: Path | None) -> Path:
    """The run folder: the one resumed, ``run-dir``, or a new one under ``runs-dir``."""
    from covey.deploy._cli_errors import fresh_run_dir
    from covey.deploy._cli_resume import run_folder

    fed = settings.federation
    run_dir = settings.path(fed.get("run_dir"))
    if resume is not None:
        if run_dir is not None and run_dir.resolve() != resume.resolve():
            fail(
                f"--resume {resume} and run-dir = {fed['run_dir']!r} {where} are different "
                f"folders; resume {run_dir} (the federation's run-dir), or take run-dir out of "
                "the table to resume another folder"
            )
        return resume
    if run_dir is None:
        runs = settings.path(settings.run.get("runs_dir", "runs")) or Path("runs")
        return fresh_run_dir(runs, name, f"runs-dir = {str(runs)!r} {where}")
    if run_dir.exists() and not run_dir.is_dir():
        fail(f"run-dir {run_dir} {where} is a file; give a new or empty folder")
    if (run_dir / "run.json").is_file():  # a simulation's
        fail(
            f"run-dir {run_dir} {where} holds a simulated run; give another folder (a "
            f"simulated run goes on with `covey run --resume {shlex.quote(str(run_dir))}`)"
        )
    if (run_dir / "run.sqlite").exists():
        hint = project_resume_hint(settings, name, run_dir)
        fail(
            f"run-dir {run_dir} {where} already holds a run; give another folder, or "
            f"continue that run with `{hint}`"
        )
    return run_folder(run_dir, None)  # refuses other files a new run would write over


def _switch(fed: dict[str, Any], key: str, where: str) -> bool | None:
    """A true/false setting of a federation table (None when not given)."""
    value = fed.get(key)
    if value is not None and not isinstance(value, bool):
        fail(f"{toml_key(key)} = {value!r} {where}: must be true or false")
    return value


def _address(value: Any, where: str) -> str:
    """The ``address`` setting, checked as ``host:port`` to listen on."""
    from covey.transport.grpc._checks import check_address

    try:
        check_address(str(value), listen=True)
    except ValueError as exc:
        fail(f"address = {value!r} {where}: {exc}")
    return str(value)

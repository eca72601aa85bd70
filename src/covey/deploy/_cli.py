"""``covey server``: run the server of a deployed federation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from covey.core._interrupt import exit_code, interrupted_how, interrupts_as_such, stop_on_sigterm
from covey.core._runstep import last_finished_step
from covey.deploy._cli_apps import load_object
from covey.deploy._cli_errors import (
    Settings,
    address_flag,
    compression_spec,
    fail,
    file_flag,
    folder_flag,
    no_empty_folder,
    number,
    output_file,
    port_number,
    read_settings,
)
from covey.deploy._cli_logs import LOG_LEVEL_HELP, LogConsole, log_level, setup_logging
from covey.deploy._cli_options import PortFile, ServerCerts
from covey.deploy._cli_resume import (
    present_run,
    recorded_rounds,
    resume_hint,
    resuming_line,
    run_folder,
    saved_model,
)
from covey.deploy._cli_security import _security, tls_choice
from covey.deploy._cli_serverapp import server_app as _server_app
from covey.deploy._cli_trackers import (
    TRACKER_KEYS,
    MLflowExperimentFlag,
    MLflowFlag,
    TensorBoardFlag,
    tracker_flags,
)
from covey.deploy._shown import BriefHighlighter, escape, stamped
from covey.server._served import FEDERATION_FILE

# Every line whole: a server's or client's output is often a log file or a journal,
# where a line cut at 80 columns becomes two entries. A long line (a client's error)
# is not coloured: rich would take minutes over it.
console = LogConsole(stderr=True, soft_wrap=True, emoji=False, highlighter=BriefHighlighter())

__all__ = ["load_object", "server_command"]

SERVER_KEYS = {
    "app",
    "address",
    "rounds",
    "certs",
    "insecure",
    "run_dir",
    "resume",
    "resume_if_present",
    "round_timeout",
    "round_retries",
    "wait_timeout",
    "heartbeat",
    "port_file",
    "plot",
    "verbose",
    "log_level",
    "compression",
    "keep_last",
    "max_clients",
    "data_port",
    *TRACKER_KEYS,
}
"""The settings a ``--config`` file may give ``covey server`` (its flags)."""


def _pick(flag: Any, settings: dict[str, Any], key: str, default: Any) -> Any:
    return flag if flag is not None else settings.get(key, default)


def _serve(server_app: Any, s: dict[str, Any], flags: dict[str, Any]) -> None:
    """Serve the app with the console reporting, then say how the run ended."""
    import covey
    from covey.core._files import write_output
    from covey.deploy._cli_trackers import open_trackers
    from covey.deploy._console import ServerConsole
    from covey.deploy._server import serve
    from covey.transport.grpc._listen import ListenError
    from covey.transport.grpc._server import DataPortError

    names: dict[int, str] = {}
    needed = max(1, int(getattr(server_app.strategy, "min_available_clients", 1)))
    # An asynchronous (FedBuff) run counts global updates, not rounds.
    step = "round" if getattr(server_app.strategy, "buffer_size", None) is None else "update"
    shown = ServerConsole(console.print, needed, names, step, dated=not console.is_terminal)
    run, resuming, port_file = flags["run"], flags["resuming"], flags["port_file"]

    listened: list[int] = []  # the port, once the server listens
    rounds = _rounds(server_app, flags)

    def listening(port: int) -> None:
        listened.append(port)
        trackers.started()  # the run is open in its folder: a kill from here on keeps the flags
        if resuming:  # whether or not a round's callbacks are called again below
            shown.line(escape(resuming_line(run, rounds)))
        shown.line(f"covey server listening on port {port} (run folder {run})")
        shown.waiting()  # before the port file: clients that read it have not joined yet
        if port_file is not None:
            write_output(port_file, str(port))

    plot = bool(s.get("plot", True)) if flags["plot"] is None else bool(flags["plot"])
    trackers = open_trackers(flags, lambda: _forget(run, flags))  # refused before listening
    try:
        stop_on_sigterm()
        with interrupts_as_such(), trackers:  # an error Ctrl-C caused (ImportError): Ctrl-C
            result = serve(
                server_app.strategy,
                rounds,
                # serve calls it (resuming: to check its layout against the run's model,
                # or to start again a run killed before round 0 was saved), and so keeps
                # the only reference to the step-0 model
                server_app.weights,
                flags["address"],
                evaluate_fn=server_app.evaluate_fn,
                tls=flags.get("tls"),  # read from --certs once, when it was checked
                certs=None if flags.get("tls") is not None else flags["certs"],
                insecure=flags["insecure"],
                run_dir=run,
                resume=resuming,
                seed=server_app.seed,
                round_timeout=_pick(flags["round_timeout"], s, "round_timeout", None),
                round_retries=flags.get("round_retries") or 0,
                wait_timeout=_pick(flags["wait_timeout"], s, "wait_timeout", 300.0),
                heartbeat=_pick(flags["heartbeat"], s, "heartbeat", 5.0),
                on_round=[shown.on_round, trackers],
                on_listen=listening,
                on_event=shown.on_event,
                client_names=names,
                plot=plot,
                # resuming, the run's own unless the flag names one (the app's may differ)
                compression=flags["compression"] or (None if resuming else server_app.compression),
                keep_last=flags["keep_last"],
                max_clients=flags.get("max_clients", 1000),  # a project federation: the default
                data_port=flags.get("data_port"),
            )
    except FileExistsError:  # another server made the run there since the folder was checked
        _forget(run, flags)
        fail(  # 2, as when the run was there before: no restart mends it
            f"--run-dir {run} already holds a run (another server started it meanwhile); "
            f"continue it with `{flags.get('resume_hint') or resume_hint(run)}` or give "
            "another folder"
        )
    except ListenError as exc:  # a mistake in the address given, as the docs say: 2
        _forget(run, flags)
        flag = "--data-port" if isinstance(exc, DataPortError) else "--address"
        fail(f"{flags.get('address_flag', flag)}: {exc}")
    except (covey.FederationError, ValueError, OSError) as exc:
        _forget(run, flags)
        from covey.server._retry import RETRY_HINT  # not at import: `--help` stays light
        from covey.server._runlock import RunRefusedError

        # The notes say where it came from (the app's evaluate_fn, its initial_weights).
        notes = [n for n in getattr(exc, "__notes__", ()) if isinstance(n, str) and n.strip()]
        said = str(exc) + "".join(f" ({' '.join(n.split())})" for n in notes if n != RETRY_HINT)
        console.print(stamped(f"[red]error:[/] {escape(said)}", console), soft_wrap=True)
        if RETRY_HINT in getattr(exc, "__notes__", ()):
            console.print(stamped(escape(f"hint: {RETRY_HINT}"), console), soft_wrap=True)
        from covey.server._rundb import NewerFormatError
        from covey.server._state import StateError

        newer = isinstance(exc, NewerFormatError)  # this covey cannot go on with the run
        # Refused before listening: the run did not start, nor stop; but a saved state
        # that does not load (read before listening) leaves a model to name.
        if listened or newer or isinstance(exc, StateError):
            _show_model(run, flags, resumable=not newer)
        # A setting (the run folder too) refused before listening: no restart mends it, 2.
        mistake = newer or (isinstance(exc, ValueError | RunRefusedError) and not listened)
        raise typer.Exit(2 if mistake else 1) from None
    except KeyboardInterrupt as exc:
        _forget(run, flags)
        how = interrupted_how(exc)
        if (run / "run.sqlite").is_file():  # resumed from step 0 if no round was saved
            model = saved_model(run)
            said = (
                f"{how}: the run in {run} is kept{f' ({model})' if model else ''}; continue it "
                f"with `{flags.get('resume_hint') or resume_hint(run)}`"
            )
        else:
            said = f"{how} before the run started"
        console.print(stamped(escape(said), console), soft_wrap=True)
        raise typer.Exit(exit_code(exc)) from None
    except Exception:
        _show_model(run, flags)  # the app's own function raised: reported as any other error
        raise
    shown.line(
        f"[green]run finished[/] after {shown.step} {result.history.rounds[-1].round}; "
        f"history.json{' and plot.png' if plot else ''} in {escape(str(run))}"
    )
    _endings(result.history, shown)


def _endings(history: Any, shown: Any) -> None:
    """Say why the run stopped early, name the rounds that did not aggregate; exit 1 if none did.

    A run ended by its strategy before its last round (``max_trees``, a privacy
    budget) says why, as ``covey runs show`` does, rather than only that it finished.
    """
    from covey.server._outputs import not_aggregated

    if history.stopped_reason:
        last = last_finished_step([r.round for r in history.rounds], history.stopped_reason)
        step = shown.step
        early = (
            f"stopped early after {step} {last}" if last else f"stopped before any {step} finished"
        )
        shown.line(f"[yellow]{escape(f'{early}: {history.stopped_reason}')}[/]")
    said = not_aggregated(history)
    if said is not None:
        shown.line(f"[yellow]{escape(said)}[/]")
    trained = [r for r in history.rounds if r.round > 0]
    if trained and not any(r.aggregated for r in trained):  # it trained nothing: no success
        raise typer.Exit(1)


def _rounds(server_app: Any, flags: dict[str, Any]) -> int:
    """``--rounds`` (or the config's), else a resumed run's own count, else the app's."""
    if flags["rounds"] is not None:
        return int(flags["rounds"])
    recorded = recorded_rounds(flags["run"]) if flags["resuming"] else None
    return int(server_app.rounds if recorded is None else recorded)


def _show_model(run: Path, flags: dict[str, Any], *, resumable: bool = True) -> None:
    """Say where a failed run's last complete model is, and how to continue the run."""
    from covey.deploy._cli_resume import show_stopped

    hint = (flags.get("resume_hint") or resume_hint(run)) if resumable else ""
    show_stopped(run, hint, console)


def _forget(run: Path, flags: dict[str, Any]) -> None:
    """Remove the run folder made for this run if the run never started in it.

    A project's served run keeps its app's settings and its federation there
    before it starts: a folder holding only those is removed too.
    """
    if not flags.get("made_run_dir") or not run.is_dir():
        return
    kept = {"project.json", FEDERATION_FILE}
    if {p.name for p in run.iterdir()} <= kept:
        for name in kept:
            (run / name).unlink(missing_ok=True)
        run.rmdir()


def server_command(
    app: Annotated[
        str | None,
        typer.Option(
            help="The ServerApp to run, as MODULE:OBJECT; one with main= runs that loop of "
            "its own instead of rounds (the round and run-folder flags do not apply)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file with these settings.", parser=file_flag("--config"), metavar="PATH"
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="host:port to listen on (resume: the run's address; else 127.0.0.1:9092)."
        ),
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds to run (overrides the app).")] = None,
    certs: ServerCerts = None,
    insecure: Annotated[
        bool | None,
        typer.Option("--insecure/--no-insecure", help="Serve without TLS (local tests only)."),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the run state is kept.", parser=folder_flag("--run-dir"), metavar="PATH"
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Resume the run kept in this folder.",
            parser=folder_flag("--resume"),
            metavar="PATH",
        ),
    ] = None,
    resume_if_present: Annotated[
        bool,
        typer.Option(
            "--resume-if-present",
            help="With --run-dir: resume the run that folder holds, or start one there if it "
            "holds none (one command line for a service restarted on failure).",
        ),
    ] = False,
    round_timeout: Annotated[
        float | None, typer.Option(help="Seconds a round waits for replies (default: no limit).")
    ] = None,
    round_retries: Annotated[
        int | None,
        typer.Option(
            help="Run a round again, up to N times, when it fell short only because clients "
            "lost their connections (default 0: the run stops)."
        ),
    ] = None,
    wait_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds to wait for enough clients before each round (default 300)."),
    ] = None,
    heartbeat: Annotated[
        float | None,
        typer.Option(
            help="Seconds between heartbeats, 0.01 to 600; silent clients are dropped after six "
            "(default 5)."
        ),
    ] = None,
    port_file: PortFile = None,
    plot: Annotated[
        bool | None, typer.Option("--plot/--no-plot", help="Draw plot.png after each round.")
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Log fleet events, and show an error's traceback."),
    ] = False,
    log_level_name: Annotated[
        str | None, typer.Option("--log-level", help=LOG_LEVEL_HELP, metavar="LEVEL")
    ] = None,
    compression: Annotated[
        str | None,
        typer.Option(
            help="Clients compress their updates: none, float16, bfloat16, q8, q4, topk or "
            "topk:FRACTION (resume: the run's own)."
        ),
    ] = None,
    keep_last: Annotated[
        int | None,
        typer.Option(help="Keep the weights of the newest N rounds only (resume: the run's own)."),
    ] = None,
    max_clients: Annotated[int | None, typer.Option(help="Most clients at once (1000).")] = None,
    data_port: Annotated[
        int | None,
        typer.Option(
            help="Also listen on this port (0: a free one) for data connections: clients move "
            "the model's bytes there, beside the gRPC stream (faster for large models)."
        ),
    ] = None,
    tensorboard: TensorBoardFlag = None,
    mlflow: MLflowFlag = None,
    mlflow_experiment: MLflowExperimentFlag = None,
) -> None:
    """Run the server of a federation over gRPC (mutual TLS unless --insecure)."""
    s = read_settings(config, "server", SERVER_KEYS)
    level = log_level(
        _pick(log_level_name, s, "log_level", None),
        s.name(log_level_name, "log_level", "--log-level"),
    )
    setup_logging(console, verbose or bool(s.get("verbose", False)), server=True, level=level)
    scheme = compression_spec(
        _pick(compression, s, "compression", None),
        s.name(compression, "compression", "--compression"),
    )
    for key in ("resume", "run_dir"):  # the command line's are checked as they are parsed
        no_empty_folder(s.get(key), s.name(None, key, ""))
    resume_dir = _path(_pick(resume, s, "resume", None))
    given = _path(_pick(run_dir, s, "run_dir", None))
    if_present = bool(_pick(resume_if_present or None, s, "resume_if_present", False))
    if if_present:
        given, resume_dir = present_run(given, resume_dir)
    server_app = _server_app(_pick(app, s, "app", None), resume_dir, s.name(app, "app", "--app"))
    tls_given = certs is not None or insecure is not None  # on the command line
    certs_flag = s.name(certs, "certs", "--certs")
    certs, insecure = tls_choice(certs, insecure, s)  # the command line's wins over the file's
    certs_dir, tls = _security(_path(certs), insecure, certs_flag)
    listen_at = _listen_address(  # before a folder is made
        _pick(address, s, "address", None), s.name(address, "address", "--address")
    )
    flags = {
        "port_file": output_file(
            _path(_pick(port_file, s, "port_file", None)),
            s.name(port_file, "port_file", "--port-file"),
        ),
        "address": listen_at,
        "certs": certs_dir,
        "tls": tls,
        "insecure": insecure,
        "rounds": _number(rounds, s, "rounds", integer=True, zero=True),
        "round_timeout": _number(round_timeout, s, "round_timeout", seconds=True),
        "round_retries": _number(round_retries, s, "round_retries", integer=True, zero=True),
        "wait_timeout": _number(wait_timeout, s, "wait_timeout", seconds=True),
        "heartbeat": _heartbeat(heartbeat, s),
        "plot": plot,
        "compression": scheme,
        "keep_last": _number(keep_last, s, "keep_last", integer=True),
        "max_clients": _number(max_clients, s, "max_clients", 1000, integer=True),
        "data_port": port_number(
            _pick(data_port, s, "data_port", None), s.name(data_port, "data_port", "--data-port")
        ),
        **tracker_flags((tensorboard, mlflow, mlflow_experiment), s),
    }
    if server_app.main is not None:  # the app's own loop: no rounds, no run folder
        from covey.deploy._cli_own import refuse_round_flags, serve_own

        own: dict[str, Any] = {"rounds": rounds, "resume": resume, "run_dir": run_dir}
        own |= {"resume_if_present": resume_if_present or None}
        own |= {"plot": plot}
        own |= {"round_timeout": round_timeout, "round_retries": round_retries}
        own |= {"wait_timeout": wait_timeout, "compression": compression, "keep_last": keep_last}
        own |= dict(zip(TRACKER_KEYS, (tensorboard, mlflow, mlflow_experiment), strict=True))
        refuse_round_flags(_pick(app, s, "app", None), own, s)
        return serve_own(server_app, flags, console)
    # Every flag checked: a fresh run folder is made (the command line's flags repeated).
    typed = {"round_timeout": round_timeout, "round_retries": round_retries}
    typed |= {"wait_timeout": wait_timeout, "heartbeat": heartbeat}
    flags["run"] = run_folder(given, resume_dir)
    flags["made_run_dir"] = given is None and resume_dir is None
    flags["resuming"] = resume_dir is not None
    flags["resume_hint"] = resume_hint(
        flags["run"],
        app=app if config is not None else _pick(app, s, "app", None),
        config=config,
        certs=certs_dir,
        insecure=insecure,
        tls_given=tls_given,
        rounds=flags["rounds"],
        keep_last=flags["keep_last"],
        max_clients=None if flags["max_clients"] == 1000 else flags["max_clients"],
        data_port=flags["data_port"],
        plot=flags["plot"],
        trackers=dict(zip(TRACKER_KEYS, (tensorboard, mlflow, mlflow_experiment), strict=True)),
        timing={key: flags[key] for key, value in typed.items() if value is not None},
        if_present=if_present,
    )
    _serve(server_app, s, flags)


def _listen_address(value: Any, flag: str) -> str | None:
    """``--address`` (or where ``flag`` says it came from), checked; None: the run's own."""
    return None if value is None else address_flag(value, flag, listen=True)


def _number(given: Any, s: Settings, key: str, default: Any = None, **kind: bool) -> Any:
    """The number of ``key``, from the command line (``given``) or ``s``, checked.

    An error names the flag if the command line gave it, else the file's key, which
    the user may never have typed as a flag.
    """
    flag = "--" + key.replace("_", "-")
    return number(_pick(given, s, key, default), s.name(given, key, flag), **kind)


def _heartbeat(given: float | None, s: Settings) -> float | None:
    """``--heartbeat`` (or the file's key), checked against its range as serve() checks it."""
    from covey.transport.grpc._checks import check_heartbeat

    value: float | None = _number(given, s, "heartbeat", seconds=True)
    if value is not None:
        try:
            check_heartbeat(value)
        except ValueError as exc:  # said "heartbeat must be ...", naming no flag
            said = str(exc).removeprefix("heartbeat ")
            fail(f"{s.name(given, 'heartbeat', '--heartbeat')} {said}")
    return value


def _path(value: Any) -> Path | None:
    return None if value is None else Path(value)

"""``covey server`` and ``covey client``: run the two sides of a deployed federation."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)


def load_object(spec: str) -> Any:
    """Import ``pkg.module:attribute`` (the current folder is importable)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise typer.BadParameter(f"expected MODULE:OBJECT, got {spec!r}", param_hint="--app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(
            f"cannot import {module_name!r}: {exc}", param_hint="--app"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise typer.BadParameter(
                f"{module_name!r} has no attribute {attr!r}", param_hint="--app"
            )
        obj = getattr(obj, part)
    return obj


def _settings(config: Path | None, section: str) -> dict[str, Any]:
    if config is None:
        return {}
    try:
        data = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {config}: {exc}", param_hint="--config") from None
    table = data.get(section, data)
    if not isinstance(table, dict):
        raise typer.BadParameter(f"[{section}] in {config} must be a table", param_hint="--config")
    return {k.replace("-", "_"): v for k, v in table.items()}


def _pick(flag: Any, settings: dict[str, Any], key: str, default: Any) -> Any:
    return flag if flag is not None else settings.get(key, default)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    logging.getLogger("covey").setLevel(logging.INFO if verbose else logging.WARNING)


def _run_folder(resume_dir: Path | None, run_dir: Path | None) -> Path:
    """The run's folder: the one resumed, the one given, or a new one under ``runs/``."""
    if resume_dir is not None:
        return Path(resume_dir)
    if run_dir is not None:
        return Path(run_dir)
    import datetime as _dt

    return Path("runs") / f"server-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _server_app(app_spec: str) -> Any:
    """The ServerApp ``app_spec`` names (an app, or a function returning one)."""
    from covey.deploy._server import ServerApp

    obj = load_object(app_spec)
    server_app = obj if isinstance(obj, ServerApp) else obj() if callable(obj) else obj
    if not isinstance(server_app, ServerApp):
        raise typer.BadParameter(
            f"{app_spec} is {type(server_app).__name__}, expected a covey.deploy.ServerApp "
            "or a function returning one",
            param_hint="--app",
        )
    return server_app


def server_command(
    app: Annotated[str | None, typer.Option(help="The ServerApp to run, as MODULE:OBJECT.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file with these settings.")] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="host:port to listen on (resume: the run's address; else 127.0.0.1:9092)."
        ),
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds to run (overrides the app).")] = None,
    certs: Annotated[
        Path | None, typer.Option(help="Federation folder from `covey certs init`.")
    ] = None,
    insecure: Annotated[bool, typer.Option(help="Serve without TLS (local tests only).")] = False,
    run_dir: Annotated[Path | None, typer.Option(help="Where the run state is kept.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Resume the run kept in this folder.")] = None,
    round_timeout: Annotated[float | None, typer.Option(help="Seconds per round.")] = None,
    wait_timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for enough clients.")
    ] = None,
    heartbeat: Annotated[float | None, typer.Option(help="Seconds between heartbeats.")] = None,
    port_file: Annotated[
        Path | None, typer.Option(help="Write the bound port here (with port 0).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log fleet events.")] = False,
) -> None:
    """Run the server of a federation over gRPC (mutual TLS unless --insecure)."""
    import covey
    from covey.core._files import atomic_write
    from covey.deploy._server import serve

    _logging(verbose)
    s = _settings(config, "server")
    app_spec = _pick(app, s, "app", None)
    if app_spec is None:
        raise typer.BadParameter("give --app MODULE:OBJECT (or app = ... in --config)")
    server_app = _server_app(app_spec)
    resume_dir = _pick(resume, s, "resume", None)
    run = _run_folder(resume_dir, _pick(run_dir, s, "run_dir", None))
    certs_dir = _pick(certs, s, "certs", None)
    insecure = insecure or bool(s.get("insecure", False))
    if insecure:
        console.print(
            "[bold yellow]warning:[/] serving WITHOUT TLS; use only for local experiments"
        )
    n_rounds = int(_pick(rounds, s, "rounds", server_app.rounds))

    def listening(port: int) -> None:
        console.print(f"covey server listening on port {port} (run folder {run})")
        if port_file is not None:
            atomic_write(port_file, str(port))

    def on_round(record: covey.core.RoundRecord) -> None:
        acc = record.central_metrics.get("accuracy")
        parts = [f"round {record.round}"]
        if record.round:
            parts.append(f"{len(record.fit_participants)} clients")
        if record.failures:
            parts.append(f"{len(record.failures)} failed")
        if record.central_loss is not None:
            parts.append(f"loss {record.central_loss:.4f}")
        if isinstance(acc, float):
            parts.append(f"accuracy {acc:.4f}")
        console.print(", ".join(parts))

    try:
        result = serve(
            server_app.strategy,
            n_rounds,
            None if resume_dir is not None else server_app.weights(),
            _pick(address, s, "address", None),
            evaluate_fn=server_app.evaluate_fn,
            certs=certs_dir,
            insecure=insecure,
            run_dir=run,
            resume=resume_dir is not None,
            seed=server_app.seed,
            round_timeout=_pick(round_timeout, s, "round_timeout", None),
            wait_timeout=_pick(wait_timeout, s, "wait_timeout", 300.0),
            heartbeat=_pick(heartbeat, s, "heartbeat", 5.0),
            on_round=on_round,
            on_listen=listening,
        )
    except FileExistsError:
        console.print(
            f"[red]error:[/] a run already exists in {run}; resume it with "
            f"`covey server --app {app_spec} --resume {run}` or pick another --run-dir"
        )
        raise typer.Exit(1) from None
    except (covey.FederationError, ValueError, OSError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"[green]run finished[/] after round {result.history.rounds[-1].round}")


def client_command(
    app: Annotated[
        str | None, typer.Option(help="The client, or client_fn(cid), as MODULE:OBJECT.")
    ] = None,
    server: Annotated[str | None, typer.Option(help="The server's host:port.")] = None,
    cid: Annotated[int | None, typer.Option(help="Passed to client_fn(cid).")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file with these settings.")] = None,
    certs: Annotated[
        Path | None, typer.Option(help="Federation folder holding ca.pem and clients/NAME.*")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Client id (certificate name, or name if insecure).")
    ] = None,
    ca: Annotated[Path | None, typer.Option(help="CA certificate (PEM).")] = None,
    cert: Annotated[Path | None, typer.Option(help="Client certificate (PEM).")] = None,
    key: Annotated[Path | None, typer.Option(help="Client private key (PEM).")] = None,
    insecure: Annotated[bool, typer.Option(help="Connect without TLS.")] = False,
    max_attempts: Annotated[
        int | None, typer.Option(help="Give up after this many failed attempts.")
    ] = None,
    retry_for: Annotated[
        float | None,
        typer.Option(help="Seconds of failed attempts in a row before giving up (default 600)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
) -> None:
    """Run a client next to its data and join the federation at --server."""
    from covey.deploy._client import client_tls, connect, tls_from_certs
    from covey.transport.grpc._refusal import Refused

    _logging(verbose)
    s = _settings(config, "client")
    app_spec = _pick(app, s, "app", None)
    address = _pick(server, s, "server", None)
    if app_spec is None or address is None:
        raise typer.BadParameter("give --app MODULE:OBJECT and --server HOST:PORT")
    obj = load_object(app_spec)
    the_cid = _pick(cid, s, "cid", None)
    if hasattr(obj, "fit") and not isinstance(obj, type):
        client = obj
    elif callable(obj):
        client = obj(int(the_cid)) if the_cid is not None else obj()
    else:
        raise typer.BadParameter(f"{app_spec} is not a client or a client function")
    the_name = _pick(name, s, "name", None)
    insecure = insecure or bool(s.get("insecure", False))
    certs_dir = _pick(certs, s, "certs", None)
    tls = None
    try:
        if certs_dir is not None:
            if the_name is None:
                raise typer.BadParameter(
                    "--certs needs --name (the client id the cert was issued to)"
                )
            tls = tls_from_certs(certs_dir, the_name)
        elif _pick(ca, s, "ca", None) is not None:
            tls = client_tls(
                _pick(ca, s, "ca", None), _pick(cert, s, "cert", None), _pick(key, s, "key", None)
            )
        elif not insecure:
            raise typer.BadParameter(
                "give --certs DIR --name ID, or --ca/--cert/--key, or --insecure"
            )
        result = connect(
            client,
            address,
            tls=tls,
            insecure=insecure,
            name=the_name or (f"client-{the_cid}" if the_cid is not None else ""),
            max_attempts=_pick(max_attempts, s, "max_attempts", None),
            retry_for=_pick(retry_for, s, "retry_for", 600.0),
        )
    except Refused as exc:
        console.print(f"[red]refused:[/] {exc.cause}")
        raise typer.Exit(2) from None
    except (ConnectionError, OSError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(
        f"done: {result.tasks} task(s) in {result.sessions} session(s); "
        f"server said: {result.reason}"
    )

"""``covey dashboard``: serve the live dashboard of a runs folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _folder(value: str) -> Path:
    """RUNS_DIR as given, refusing empty text: ``Path("")`` would be the current folder."""
    if value == "":
        raise typer.BadParameter('empty (""); give a folder of runs, or leave RUNS_DIR out')
    return Path(value)


def dashboard_command(
    runs_dir: Annotated[
        Path,
        typer.Argument(
            help="A folder of runs (or one run folder).", parser=_folder, metavar="RUNS_DIR"
        ),
    ] = Path("runs"),
    host: Annotated[
        str, typer.Option(help="Address to listen on (default: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8765,
    certs: Annotated[
        Path | None,
        typer.Option(
            help="Federation folder (covey certs init): serve HTTPS and require a client "
            "certificate signed by its CA.",
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Serve a read-only web page of the runs in RUNS_DIR: live rounds, clients, comparisons."""
    try:
        from covey.dashboard import _server
    except ImportError as exc:
        typer.echo(
            f"the dashboard needs its extra: pip install 'covey[dashboard]' ({exc})", err=True
        )
        raise typer.Exit(1) from None
    if not runs_dir.is_dir():
        raise typer.BadParameter(f"{runs_dir} is not a folder", param_hint="RUNS_DIR")
    try:
        _server.check_host(host)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--host") from None
    host = host.strip("[]")  # [::1], as URLs write it, is the address ::1
    if not _server.is_loopback(host) and certs is None:
        typer.echo(
            f"warning: serving on {host} without --certs: anyone who can reach it sees the runs",
            err=True,
        )
    scheme = "https" if certs is not None else "http"
    if certs is not None:
        try:
            _server.tls_options(certs)
        except (OSError, ValueError) as exc:
            typer.echo(f"error: --certs {certs}: {exc}", err=True)
            raise typer.Exit(2) from None

    def listening(bound: int) -> None:
        where = f"[{host}]" if ":" in host else host
        typer.echo(f"covey dashboard of {runs_dir} on {scheme}://{where}:{bound}/ (Ctrl-C stops)")

    from covey.transport.grpc._listen import ListenError

    try:
        _server.serve_dashboard(runs_dir, host, port, certs=certs, on_listen=listening)
    except ListenError as exc:  # the port in use, an address of another machine: 2
        typer.echo(f"error: --host/--port: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None

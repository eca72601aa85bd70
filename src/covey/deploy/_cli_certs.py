"""``covey certs``: create and manage the certificates of a deployed federation."""

from __future__ import annotations

import enum
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from covey.deploy import certs as _certs
from covey.deploy._cli_errors import fail, folder_flag
from covey.deploy._cli_help import HelpCommand
from covey.deploy._cli_tables import output_console, print_table

__all__ = ["certs_app"]

certs_app = typer.Typer(
    name="certs",
    help="Create and manage the mTLS certificates of a deployed federation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

_T = TypeVar("_T")


class _KeyType(enum.StrEnum):
    ec = "ec"
    rsa = "rsa"
    ed25519 = "ed25519"


# Consoles are made per command, not at import, so that they follow the
# current stdout/stderr and terminal width (e.g. under a test runner).
def _out() -> Console:
    return output_console(highlight=False)


def _fail(message: str) -> NoReturn:
    """A mistake in what the command was pointed at: one line, exit code 2, as for every command."""
    fail(message)


def _call(function: Callable[[], _T]) -> _T:
    """Run an API call, turning its expected errors into one red line and exit code 2.

    Its warnings (a CA key other users can read) are logged as ``covey server``'s are.
    """
    from covey.deploy._cli_errors import console
    from covey.deploy._cli_logs import setup_logging

    setup_logging(console, False)
    try:
        return function()
    except (
        FileExistsError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        ValueError,
    ) as error:
        _fail(str(error))
    except PermissionError as error:  # pragma: no cover - depends on the machine
        _fail(f"permission denied: {error}")


def _client_id(value: str) -> str:
    try:
        return _certs.validate_client_id(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _federation_dir(directory: Path) -> Path:
    if not directory.exists():
        raise typer.BadParameter(f"{directory} does not exist", param_hint="'--dir'")
    if not directory.is_dir():
        raise typer.BadParameter(f"{directory} is not a directory", param_hint="'--dir'")
    if (directory / _certs.CA_CERT).is_dir():
        _fail(f"{directory / _certs.CA_CERT} is a folder, not the federation's CA certificate")
    if not (directory / _certs.CA_CERT).is_file():
        _fail(
            f"{directory} holds no federation CA ({_certs.CA_CERT} is missing); "
            f"create one with: covey certs init --dir {shlex.quote(str(directory))}"
        )
    return directory


_DirOption = Annotated[
    Path,
    typer.Option(
        "--dir",
        "-d",
        help="The federation directory.",
        show_default=False,
        parser=folder_flag("--dir"),
        metavar="PATH",
    ),
]


@certs_app.command("init", cls=HelpCommand)
def init(
    directory: _DirOption,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="DNS name or IP address of the server (repeatable). "
            "Default: localhost and 127.0.0.1.",
            show_default=False,
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Common name of the CA.")] = "covey federation",
    days: Annotated[int, typer.Option(min=1, help="CA validity, in days.")] = 3650,
    server_days: Annotated[
        int, typer.Option(min=1, help="Server certificate validity, in days.")
    ] = 825,
    key_type: Annotated[
        _KeyType,
        typer.Option(help="Key kind; gRPC supports ec and rsa only."),
    ] = _KeyType.ec,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing federation CA.")
    ] = False,
) -> None:
    """Create a federation: a CA, a server certificate and an empty revocation list."""
    hosts = tuple(host) if host else ("localhost", "127.0.0.1")
    try:
        _certs.parse_hosts(hosts)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="'--host'") from None
    try:
        paths = _certs.init_federation(
            directory,
            hosts=hosts,
            name=name,
            days=days,
            server_days=server_days,
            key_type=key_type.value,
            overwrite=overwrite,
        )
    except (FileExistsError, NotADirectoryError, ValueError) as error:
        _fail(str(error))

    out = _out()
    out.print(f"[bold green]Federation created[/] in {escape(str(paths.directory))}")
    for path, what in (
        (paths.ca_cert, "CA certificate: give it to the server and every client"),
        (paths.ca_key, "CA private key (0600)"),
        (paths.server_cert, "server certificate, for: " + ", ".join(map(str, hosts))),
        (paths.server_key, "server private key (0600)"),
        (paths.revoked, "revocation list (empty)"),
        (paths.clients_dir, "client certificates go here"),
    ):
        out.print(f"  wrote {escape(str(path))}  [dim]{escape(what)}[/]")
    out.print(
        f"[bold yellow]warning:[/] keep {escape(str(paths.ca_key))} secret, ideally offline: "
        "whoever has it can issue certificates that the server accepts."
    )
    if key_type is _KeyType.ed25519:
        out.print(
            "[bold yellow]warning:[/] gRPC's TLS cannot use ed25519 keys: `covey server` and "
            "`covey client` refuse these certificates; use --key-type ec or rsa for them."
        )
    # A command to paste: the folder quoted for the shell when it holds a space or the like.
    out.print(
        escape(f"Next: covey certs issue CLIENT_ID --dir {shlex.quote(str(paths.directory))}"),
        soft_wrap=True,
    )


@certs_app.command("renew-server", cls=HelpCommand)
def renew_server(
    directory: _DirOption,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="DNS name or IP address of the server (repeatable). "
            "Default: those of the current server certificate.",
            show_default=False,
        ),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Validity, in days.")] = 825,
) -> None:
    """Give the server a new certificate from the same CA (clients keep theirs)."""
    root = _federation_dir(directory)
    if host:
        try:
            _certs.parse_hosts(host)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="'--host'") from None
    cert = _call(lambda: _certs.renew_server(root, hosts=host or None, days=days))
    out = _out()
    out.print(f"[bold green]Renewed[/] the server certificate: wrote {escape(str(cert))}")
    out.print(f"  [dim]{escape(_renewed_for(cert))}[/]")
    out.print(f"  wrote {escape(str(root / _certs.SERVER_KEY))}  [dim]server private key (0600)[/]")
    out.print("Restart the server to use it (covey server --resume RUN_DIR ... continues a run).")


def _renewed_for(cert: Path) -> str:
    """The hosts a new server certificate names and its last day, as the operator checks them."""
    from cryptography import x509

    from covey.deploy.certs._ca import _current_hosts

    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    hosts = ", ".join(_current_hosts(cert.parent))
    return f"for: {hosts}; valid until {parsed.not_valid_after_utc:%Y-%m-%d}"


@certs_app.command("issue", cls=HelpCommand)
def issue(
    client_id: Annotated[
        str,
        typer.Argument(
            callback=_client_id,
            metavar="CLIENT_ID",
            help="The client id (1-64 characters of A-Z a-z 0-9 . _ -); "
            "it becomes the certificate's common name.",
            show_default=False,
        ),
    ],
    directory: _DirOption,
    days: Annotated[int, typer.Option(min=1, help="Validity, in days.")] = 825,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace (and revoke) an existing, non-revoked certificate."
        ),
    ] = False,
) -> None:
    """Issue a client certificate signed by the federation CA."""
    root = _federation_dir(directory)
    paths = _call(lambda: _certs.issue_client(root, client_id, days=days, overwrite=overwrite))
    out = _out()
    out.print(f"[bold green]Issued[/] a certificate for client {escape(client_id)!r}")
    out.print(f"  wrote {escape(str(paths.cert))}  [dim]client certificate[/]")
    out.print(f"  wrote {escape(str(paths.key))}  [dim]client private key (0600)[/]")
    if paths.revoked is not None:
        from covey.deploy.certs._revocation import serial_hex

        out.print(
            f"  revoked the certificate it replaced (serial {serial_hex(paths.revoked)}) in "
            f"{escape(str(root / _certs.REVOKED))}: a client still using it is refused from "
            "now on; copy the file to the server's folder if that is another one"
        )
    out.print(
        f"Give the client these two files and {escape(str(paths.ca))}, over a secure channel."
    )


@certs_app.command("revoke", cls=HelpCommand)
def revoke(
    directory: _DirOption,
    client_id: Annotated[
        str | None,
        typer.Argument(
            callback=lambda value: None if value is None else _client_id(value),
            metavar="CLIENT_ID",
            help="The client id to revoke (its certificate in clients/).",
            show_default=False,
        ),
    ] = None,
    serial: Annotated[
        str | None,
        typer.Option(
            "--serial",
            metavar="SERIAL",
            help="Revoke the certificate with this serial instead (one whose file is gone, "
            "replaced by a new one): hex as covey certs list prints it, with or without 0x, "
            "or decimal.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Revoke a client's certificate (adds its serial to revoked.json)."""
    from covey.deploy.certs._revocation import parse_serial, serial_hex

    if (client_id is None) == (serial is None):
        raise typer.BadParameter("give a CLIENT_ID or --serial, one of them")
    root = _federation_dir(directory)
    before = _call(lambda: _certs.load_revoked(root))
    if serial is not None:
        known = {c.serial for c in _call(lambda: _certs.list_clients(root)) if c.serial}
        number = _call(lambda: parse_serial(serial, known | before))
        revoked = _call(lambda: _certs.revoke(root, number))
        what = f"serial {serial_hex(revoked)}"
    else:
        revoked = _call(lambda: _certs.revoke(root, client_id or ""))
        what = f"client {escape(client_id or '')!r} (serial {serial_hex(revoked)})"
    if revoked in before:
        _out().print(
            f"{what[0].upper()}{what[1:]} was already revoked; "
            f"{escape(str(root / _certs.REVOKED))} is unchanged."
        )
        return
    _out().print(f"[bold green]Revoked[/] {what}; {escape(str(root / _certs.REVOKED))} updated.")


@certs_app.command("list", cls=HelpCommand)
def list_(directory: _DirOption) -> None:
    """List the issued client certificates."""
    from covey.deploy.certs._inspect import serial_hex

    root = _federation_dir(directory)
    clients = _call(lambda: _certs.list_clients(root))
    out = _out()
    if not clients:
        out.print(f"No client certificates in {escape(str(root / _certs.CLIENTS_DIRNAME))}.")
        return
    table = Table(title="Client certificates", box=box.SIMPLE_HEAD, header_style="bold")
    table.add_column("CN", overflow="fold", min_width=8)
    table.add_column("serial (hex)", overflow="fold", min_width=16)
    table.add_column("expires", no_wrap=True)
    table.add_column("revoked", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for client in clients:
        status_style = "green" if client.status == "valid" else "red"
        table.add_row(
            escape(client.common_name or client.client_id),
            serial_hex(client.serial) if client.serial is not None else "-",
            client.not_after.strftime("%Y-%m-%d") if client.not_after else "-",
            "[red]yes[/]" if client.revoked else "no",
            f"[{status_style}]{escape(client.status)}[/]",
        )
    print_table(table, out)  # piped: one line a certificate, its serial whole

"""``covey client``: run a client next to its data and join a deployed federation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from covey.deploy._cli import _number, _pick, console
from covey.deploy._cli_apps import load_object, required_params
from covey.deploy._cli_errors import (
    address_flag,
    fail,
    file_flag,
    number,
    read_settings,
)
from covey.deploy._cli_logs import LOG_LEVEL_HELP, log_level, setup_logging
from covey.deploy._cli_options import ClientCerts, ServerName
from covey.deploy._leave import Leaving, end_now, leaving
from covey.deploy._shown import escape, stamped

__all__ = ["client_command"]

CLIENT_KEYS = {
    "app",
    "server",
    "cid",
    "certs",
    "name",
    "ca",
    "cert",
    "key",
    "insecure",
    "server_name",
    "max_attempts",
    "retry_for",
    "max_task_mb",
    "verbose",
    "log_level",
}
"""The settings a ``--config`` file may give ``covey client`` (its flags)."""


def _make_client(spec: str, cid: Any, flag: str = "--app") -> Any:
    """The client ``--app`` names: a client object, or ``client_fn(cid)`` called with ``--cid``.

    ``flag``: where ``spec`` came from, named in errors (a ``--config`` file's key).
    """
    from covey.clients._build import build_client
    from covey.clients._mistakes import not_built

    obj = load_object(spec, flag, example="myfed:client_fn")
    if hasattr(obj, "fit") and not isinstance(obj, type):
        return obj
    if not callable(obj):
        fail(f"{flag} {spec} is of type {type(obj).__name__}, not a client or a client function")
    needs = required_params(obj)
    if needs > 0 and cid is None:
        fail(
            f"{flag} {spec} is a client function of a client id: give --cid N "
            "(which part of the data this client holds, e.g. --cid 0)"
        )
    try:
        client = build_client(obj, int(cid)) if needs != 0 and cid is not None else obj()
    except (ValueError, LookupError, TypeError, OSError) as exc:
        given = f" --cid {cid}" if cid is not None else ""
        fail(f"{flag} {spec}{given}: the client could not be made: {type(exc).__name__}: {exc}")
    if not hasattr(client, "fit"):
        kind = type(client).__name__
        fail(f"{flag} {spec} returned a {kind}, not a covey client (no fit){not_built(client)}")
    return client


def _client_tls(s: dict[str, Any], flags: dict[str, Any]) -> Any:
    """The client's TLS material from ``--certs`` + ``--name`` or ``--ca/--cert/--key``."""
    from covey.deploy._client import file_name_problem, tls_from_certs

    certs_dir = _pick(flags["certs"], s, "certs", None)
    ca = _pick(flags["ca"], s, "ca", None)
    if flags["insecure"] and (certs_dir is not None or ca is not None):
        given = "--certs DIR" if certs_dir is not None else "--ca/--cert/--key"
        fail(f"give {given} or --insecure, not both")
    files = [f"--{k}" for k in ("ca", "cert", "key") if _pick(flags[k], s, k, None) is not None]
    if ca is None and certs_dir is None and files:  # --cert/--key alone: no TLS to use them in
        fail(
            f"{' '.join(files)} without --ca: "
            + (
                "--insecure connects without TLS, so they would be passed over; "
                if flags["insecure"]
                else "a client certificate is used only under TLS, which needs the CA; "
            )
            + "give --ca CA.pem with them (mutual TLS), or --certs DIR --name NAME"
            + (", or leave them out with --insecure" if flags["insecure"] else "")
        )
    if certs_dir is not None and files:  # else those files would be passed over unread
        fail(
            f"give --certs DIR --name NAME or --ca/--cert/--key, not both: {' '.join(files)} "
            f"would be passed over for the files in {certs_dir}"
        )
    try:
        if certs_dir is not None:
            if flags["name"] is None:
                fail("--certs needs --name NAME (the client name its certificate was issued to)")
            why = file_name_problem(str(flags["name"]))
            if why is not None:  # it names clients/NAME.pem: no path, inside the folder
                fail(f"--name {str(flags['name'])[:60]!r}: {why}")
            return tls_from_certs(certs_dir, flags["name"], server_name=flags["server_name"])
        if ca is not None:
            cert, key = _pick(flags["cert"], s, "cert", None), _pick(flags["key"], s, "key", None)
            named = {"--ca": ca, "--cert": cert, "--key": key}
            return _named_tls(named, flags["server_name"])
    except (OSError, ValueError) as exc:
        fail(str(exc))
    if flags["server_name"] is not None:
        fail(
            f"--server-name needs TLS (--certs or --ca): it names the host of the server's "
            f"certificate, and --insecure has none ({flags['server_name']})"
        )
    if not flags["insecure"]:
        fail(
            "no --certs: give --certs DIR --name NAME (see `covey certs issue`), "
            "or --ca/--cert/--key, or --insecure for a local experiment"
        )
    return None


def _same_name(tls: Any, name: str | None) -> None:
    """Refuse a ``--name`` other than the name the client's certificate was issued to.

    The server knows a client by its certificate's common name alone, so another
    ``--name`` would be passed over: the client would join as someone else than
    its operator meant, and its logs would not say so.
    """
    from covey.deploy.certs._common import load_cert, subject_common_name

    if name is None or tls is None or tls.cert is None:
        return
    issued_to = subject_common_name(load_cert(tls.cert))
    if issued_to is not None and issued_to != name:
        fail(
            f"--name {name[:60]!r}, but this client's certificate was issued to "
            f"{issued_to[:60]!r}, the name the server knows it by: give --name "
            f"{issued_to[:60]!r}, or the certificate issued to {name[:60]!r}"
        )


def _named_tls(given: dict[str, Any], server_name: str | None) -> Any:
    """:func:`client_tls` of the ``--ca``, ``--cert`` and ``--key`` files.

    A file that cannot be read is refused naming its flag as well as its path.
    """
    from covey.deploy._client import client_tls

    try:
        return client_tls(given["--ca"], given["--cert"], given["--key"], server_name=server_name)
    except OSError as exc:
        said = str(exc)  # "cannot read the CA certificate PATH: why"
        flag = next((f for f, p in given.items() if p is not None and f" {p}: " in said), None)
        if flag is None:
            raise
        fail(f"{flag}: {exc}")


_TLS_KEYS = {"certs", "ca", "cert", "key", "server_name"}
"""The ``--config`` keys of a TLS connection, passed over when ``--insecure`` is given."""


def _file_tls(s: dict[str, Any], insecure: bool | None, *, chosen: bool) -> dict[str, Any]:
    """The file's settings less the TLS choice the command line overrides.

    ``--insecure`` overrides the file's ``certs``, ``ca``, ``cert``, ``key`` and
    ``server_name``; ``--certs`` or ``--ca`` (``chosen``) its ``insecure = true``, as
    ``--no-insecure`` does.
    """
    if insecure is True:
        return {k: v for k, v in s.items() if k not in _TLS_KEYS}
    if chosen:
        return {k: v for k, v in s.items() if k != "insecure"}
    return s


MOST_TASK_MB = 2**40
"""The largest ``--max-task-mb`` (MiB): an exbibyte, whose bytes still fit a 64-bit count."""


def _task_cap(mb: object, flag: str = "--max-task-mb") -> int:
    """``--max-task-mb`` (or the ``flag`` it came from), MiB, in bytes (the transport's default)."""
    from covey.transport.grpc._checks import MAX_TASK_BYTES

    if mb is None:
        return MAX_TASK_BYTES
    size: float = number(mb, flag)  # a finite number above 0 (not true, not "4096")
    if size > MOST_TASK_MB:
        fail(f"{flag} must be at most {MOST_TASK_MB:,} (an exbibyte), got {size!r}")
    return max(1, int(size * 1024 * 1024))


def client_command(
    app: Annotated[
        str | None, typer.Option(help="The client, or client_fn(cid), as MODULE:OBJECT.")
    ] = None,
    server: Annotated[str | None, typer.Option(help="The server's host:port.")] = None,
    cid: Annotated[int | None, typer.Option(help="Passed to client_fn(cid).")] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file with these settings.", parser=file_flag("--config"), metavar="PATH"
        ),
    ] = None,
    certs: ClientCerts = None,
    name: Annotated[
        str | None,
        typer.Option(help="This client's name in the federation (its certificate's name)."),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option(help="CA certificate (PEM).", parser=file_flag("--ca"), metavar="PATH"),
    ] = None,
    cert: Annotated[
        Path | None,
        typer.Option(help="Client certificate (PEM).", parser=file_flag("--cert"), metavar="PATH"),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(help="Client private key (PEM).", parser=file_flag("--key"), metavar="PATH"),
    ] = None,
    insecure: Annotated[
        bool | None, typer.Option("--insecure/--no-insecure", help="Connect without TLS.")
    ] = None,
    server_name: ServerName = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Give up after this many failed attempts.")
    ] = None,
    retry_for: Annotated[
        float | None,
        typer.Option(
            help="Seconds of failed attempts in a row before giving up (default 600), after "
            "a lost connection or a server interrupted before its run was over."
        ),
    ] = None,
    max_task_mb: Annotated[
        float | None,
        typer.Option(
            help="Refuse tasks announcing more than this many MiB (2**20 bytes) of arrays "
            "(default 4096 MiB, 4 GiB; set it near the model's size)."
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log progress, and show an error's traceback.")
    ] = False,
    log_level_name: Annotated[
        str | None, typer.Option("--log-level", help=LOG_LEVEL_HELP, metavar="LEVEL")
    ] = None,
) -> None:
    """Run a client next to its data and join the federation at --server."""
    from covey.deploy._client import connect, warn_without_tls
    from covey.deploy._goodbye import STOPPED
    from covey.transport.grpc._checks import name_problem
    from covey.transport.grpc._refusal import Refused

    s = read_settings(config, "client", CLIENT_KEYS)
    level = log_level(
        _pick(log_level_name, s, "log_level", None),
        s.name(log_level_name, "log_level", "--log-level"),
    )
    setup_logging(console, verbose or bool(s.get("verbose", False)), level=level)
    app_spec = _pick(app, s, "app", None)
    address = _pick(server, s, "server", None)
    if app_spec is None:
        fail("give --app MODULE:OBJECT naming the client or client_fn (or app = ... in --config)")
    if address is None:
        fail("give --server HOST:PORT, the address the server listens on")
    address = address_flag(address, s.name(server, "server", "--server"), listen=False)
    attempts = _number(max_attempts, s, "max_attempts", integer=True)
    retry = _number(retry_for, s, "retry_for", 600.0, zero=True, seconds=True)
    the_cid = _number(cid, s, "cid", integer=True, zero=True)
    task_cap = _task_cap(
        _pick(max_task_mb, s, "max_task_mb", None),
        s.name(max_task_mb, "max_task_mb", "--max-task-mb"),
    )
    the_name = _pick(name, s, "name", None)
    why = name_problem(str(the_name)) if the_name else None
    if why is not None:  # no restart mends it: 2, before anything is loaded or dialled
        fail(f"--name {str(the_name)[:60]!r}: {why}")
    client = _make_client(app_spec, the_cid, s.name(app, "app", "--app"))
    s_tls = _file_tls(s, insecure, chosen=certs is not None or ca is not None)
    insecure = bool(_pick(insecure, s_tls, "insecure", False))  # --no-insecure wins over the file
    flags = {"certs": certs, "ca": ca, "cert": cert, "key": key, "name": the_name}
    flags["server_name"] = _pick(server_name, s_tls, "server_name", None)
    leave = Leaving(
        lambda how: console.print(
            stamped(f"{how}: this client left the federation; start it again to rejoin", console)
        )
    )
    try:
        with leaving(leave):  # docker stop, systemctl stop: the client leaves as on Ctrl-C
            tls = _client_tls(s_tls, {**flags, "insecure": insecure})
            _same_name(tls, the_name)
            if tls is None:  # --insecure: said once, before the first attempt
                warn_without_tls(address)
            result = connect(
                client,
                address,
                tls=tls,
                insecure=insecure,
                name=the_name or (f"client-{the_cid}" if the_cid is not None else ""),
                max_attempts=attempts,
                retry_for=retry,
                max_task_bytes=task_cap,
                stop=leave.stop,
            )
    except Refused as exc:
        if leave.stop.is_set():
            leave.leave()
        console.print(
            stamped(f"[red]refused:[/] {escape(str(exc.cause))}", console), soft_wrap=True
        )
        raise typer.Exit(2) from None
    except (ConnectionError, OSError, ValueError) as exc:
        if leave.stop.is_set():  # what the stop broke off
            leave.leave()
        console.print(stamped(f"[red]error:[/] {escape(str(exc))}", console), soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as exc:
        leave.leave(exc)  # at once, without gRPC's finalizers (see Leaving)
    if leave.stop.is_set():  # the interrupt itself was lost on the way (in a finalizer)
        leave.leave()
    if result.reason.startswith(STOPPED):  # the run failed or was interrupted: not done
        console.print(
            stamped(
                f"[red]stopped:[/] {escape(result.reason[len(STOPPED) :])} "
                f"(after {result.tasks} task(s) in {result.sessions} session(s))",
                console,
            )
        )
        end_now(1)  # without Python's finalization, which waits on gRPC's (see end_now)
    console.print(
        stamped(
            f"done: {result.tasks} task(s) in {result.sessions} session(s); "
            f"server said: {escape(result.reason)}",
            console,
        )
    )
    end_now(0)

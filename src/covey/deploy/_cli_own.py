"""``covey server --app`` for a ServerApp with ``main=``: its own loop over the listening server."""

from __future__ import annotations

from typing import Any

import typer

from covey.core._files import write_output
from covey.core._interrupt import exit_code, interrupted_how, interrupts_as_such, stop_on_sigterm
from covey.deploy._cli_errors import fail
from covey.deploy._shown import escape, stamped

__all__ = ["ROUND_FLAGS", "serve_own"]

#: The flags (and ``--config`` keys) of covey's rounds and of their run folder: a loop of
#: the app's own has no rounds, keeps no run folder to resume, and is refused them.
ROUND_FLAGS = (
    "rounds",
    "resume",
    "resume_if_present",
    "run_dir",
    "round_timeout",
    "round_retries",
    "wait_timeout",
    "compression",
    "keep_last",
    "plot",
    "tensorboard",  # the trackers log rounds
    "mlflow",
    "mlflow_experiment",
)


def refuse_round_flags(spec: str, given: dict[str, Any], s: Any) -> None:
    """Fail naming the first round flag given (on the command line or in ``s``, its file).

    ``given``: the command line's value of each of :data:`ROUND_FLAGS` (None: not given).
    """
    for key in ROUND_FLAGS:
        if given[key] is not None or s.get(key) is not None:
            flag = s.name(given[key], key, "--" + key.replace("_", "-"))
            fail(
                f"{flag}: --app {spec} runs a server loop of its own (ServerApp main=), "
                "which has no rounds and keeps no run folder; leave it out"
            )


def serve_own(server_app: Any, flags: dict[str, Any], console: Any) -> None:
    """Listen, run ``server_app.main`` with the server's transport, then tell clients it is over."""
    from covey.deploy._console import ServerConsole
    from covey.deploy._goodbye import goodbye_of
    from covey.deploy._names import ClientNames
    from covey.deploy._tls import server_tls
    from covey.transport.grpc._checks import check_address
    from covey.transport.grpc._listen import ListenError
    from covey.transport.grpc._server import DataPortError, GrpcServerTransport

    address = flags["address"] or "127.0.0.1:9092"
    names: dict[int, str] = {}
    shown = ServerConsole(console.print, 0, names, dated=not console.is_terminal)
    clients = ClientNames(None, names, shown.on_event)
    try:
        check_address(address, listen=True)
        tls = server_tls(flags["tls"], None, flags["insecure"], address)
        transport = GrpcServerTransport(
            address,
            tls=tls,
            client_id=clients.client_id,
            on_event=clients.event,
            heartbeat=flags["heartbeat"] if flags["heartbeat"] is not None else 5.0,
            max_clients=flags["max_clients"],
            data_port=flags["data_port"],
        )
    except ListenError as exc:
        fail(f"{'--data-port' if isinstance(exc, DataPortError) else '--address'}: {exc}")
    except RuntimeError as exc:  # gRPC's way of saying the port cannot be bound
        fail(f"--address: cannot listen on {address}: {exc}")
    except ValueError as exc:
        fail(str(exc))
    goodbye = "the run is over"
    try:
        stop_on_sigterm()
        shown.line(f"covey server listening on port {transport.port} (the app's own loop)")
        if flags["port_file"] is not None:
            write_output(flags["port_file"], str(transport.port))
        with interrupts_as_such():
            server_app.main(transport)
    except KeyboardInterrupt as exc:
        goodbye = goodbye_of(exc)
        how = interrupted_how(exc)
        console.print(stamped(escape(f"{how}: the app's loop stopped"), console), soft_wrap=True)
        raise typer.Exit(exit_code(exc)) from None
    except BaseException as exc:  # the app's own error: its traceback, as for any app code
        goodbye = goodbye_of(exc)
        raise
    finally:
        transport.close(goodbye)
    shown.line("[green]run finished[/]: the app's loop returned")

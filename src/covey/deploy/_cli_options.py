"""Command-line options that several covey commands take with the same meaning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from covey.deploy._cli_errors import file_flag, folder_flag

__all__ = ["ClientCerts", "PortFile", "ServerCerts", "ServerName"]

ServerName = Annotated[
    str | None,
    typer.Option(
        help="Check the server's certificate against this host name instead of "
        "--server's host (an IP or a load balancer's name)."
    ),
]
"""``--server-name`` of the commands that dial a server (``covey client``, ``covey site``)."""

ClientCerts = Annotated[
    Path | None,
    typer.Option(
        help="Federation folder holding ca.pem and clients/NAME.*",
        parser=folder_flag("--certs"),
        metavar="PATH",
    ),
]
"""``--certs`` of the commands that join a server (``covey client``, ``covey site``)."""

ServerCerts = Annotated[
    Path | None,
    typer.Option(
        help="Federation folder from `covey certs init`.",
        parser=folder_flag("--certs"),
        metavar="PATH",
    ),
]
"""``--certs`` of the commands that listen (``covey server``, ``covey query``)."""

PortFile = Annotated[
    Path | None,
    typer.Option(
        help="Write the bound port here (with port 0).",
        parser=file_flag("--port-file"),
        metavar="PATH",
    ),
]
"""``--port-file`` of the commands that listen (``covey server``, ``covey query``)."""

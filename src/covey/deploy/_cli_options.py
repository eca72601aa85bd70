"""Command-line options that several covey commands take with the same meaning."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["ServerName"]

ServerName = Annotated[
    str | None,
    typer.Option(
        help="Check the server's certificate against this host name instead of "
        "--server's host (an IP or a load balancer's name)."
    ),
]
"""``--server-name`` of the commands that dial a server (``covey client``, ``covey site``)."""

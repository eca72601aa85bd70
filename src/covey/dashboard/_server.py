"""Serve the dashboard with uvicorn: in the foreground (the CLI) or on a thread (tests)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import uvicorn

from covey.dashboard._app import LOOPBACK_HOSTS, create_app
from covey.deploy._pem import check_ca, check_pair, read_pem, server_folder
from covey.deploy._revoked import RevocationList
from covey.transport.grpc._listen import ListenError

logger = logging.getLogger("covey")

DEFAULT_PORT = 8765


def tls_options(certs: str | Path) -> dict[str, Any]:
    """The uvicorn TLS settings from a federation folder made by ``covey certs init``.

    The page is served over HTTPS with the federation's server certificate, and
    only browsers presenting a client certificate signed by the federation CA
    get in.

    Args:
        certs: The folder holding ``ca.pem``, ``server.pem`` and ``server.key``.

    Raises:
        FileNotFoundError: A file is missing.
        ValueError: A file is damaged, or ``server.key`` is not the key of ``server.pem``,
            or ``revoked.json`` is damaged.
    """
    from covey.deploy.certs import load_revoked

    d = server_folder(certs)
    check_pair(
        read_pem(d / "server.pem", "the server certificate"),
        read_pem(d / "server.key", "the server private key"),
        str(d / "server.pem"),
        str(d / "server.key"),
    )
    check_ca(read_pem(d / "ca.pem", "the CA certificate"), str(d / "ca.pem"))
    load_revoked(d)  # a damaged list refuses the start, not every browser
    return {
        "ssl_certfile": str(d / "server.pem"),
        "ssl_keyfile": str(d / "server.key"),
        "ssl_ca_certs": str(d / "ca.pem"),
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }


class _Server(uvicorn.Server):
    """A uvicorn server that ends the page's event streams first when asked to stop."""

    def __init__(self, config: uvicorn.Config, closing: threading.Event) -> None:
        super().__init__(config)
        self.closing = closing

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.closing.set()
        super().handle_exit(sig, frame)


def _revoking(is_revoked: Callable[[bytes], bool]) -> type[asyncio.Protocol]:
    """The HTTP protocol of uvicorn, closing each connection whose client certificate is revoked.

    The TLS handshake has checked the chain when a connection is made; the
    revocation list is asked then (re-read whenever ``revoked.json`` changes).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Revoking(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            tls = transport.get_extra_info("ssl_object")
            der = tls.getpeercert(binary_form=True) if tls is not None else None
            try:
                refused = der is None or is_revoked(ssl.DER_cert_to_PEM_cert(der).encode())
            except (OSError, ValueError) as exc:  # no list to check against: refuse
                logger.warning("dashboard: cannot check revocation (%s); connection refused", exc)
                refused = True
            if refused:
                logger.warning("dashboard: refused %s: certificate revoked", self.client)
                transport.close()

    return Revoking


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address (or the name) of this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str) -> None:
    """Refuse an empty address, which would listen on every address of this machine.

    Raises:
        ValueError: ``host`` is empty (or ``[]``), naming what to give instead.
    """
    if not host.strip("[]").strip():
        raise ValueError(
            f"the dashboard's host is empty ({host!r}), which would listen on every address "
            "of this machine: give 127.0.0.1 (this machine only), or 0.0.0.0 with certs "
            "for every address"
        )


def _server(
    runs_dir: str | Path, host: str, port: int, certs: str | Path | None, poll: float
) -> _Server:
    check_host(host)
    closing = threading.Event()
    tls: dict[str, Any] = {}
    if certs is not None:
        tls = {**tls_options(certs), "http": _revoking(RevocationList(certs))}
    bare = host.strip("[]").lower()
    hosts = (*LOOPBACK_HOSTS, bare, f"[{bare}]") if is_loopback(host) else None
    config = uvicorn.Config(
        create_app(runs_dir, poll=poll, closing=closing, allowed_hosts=hosts),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        **tls,
    )
    return _Server(config, closing)


def serve_dashboard(
    runs_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    certs: str | Path | None = None,
    poll: float = 0.5,
    on_listen: Callable[[int], None] | None = None,
) -> None:
    """Serve the dashboard until interrupted (Ctrl-C).

    Args:
        runs_dir: A folder of runs, or one run folder.
        host: The address to listen on (only this machine by default).
        port: The port to listen on (0: a free one).
        certs: A federation folder: serve HTTPS and ask browsers for a client
            certificate signed by its CA.
        poll: Seconds between checks of a watched run's files.
        on_listen: Called with the bound port once the socket listens.

    Raises:
        ListenError: The address cannot be listened on (an OSError naming it).
        ValueError: ``host`` is empty (it would listen on every address).
    """
    host = host.strip("[]")  # [::1], as URLs write it, is the address ::1
    server = _server(runs_dir, host, port, certs, poll)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    with sock:
        if on_listen is not None:
            on_listen(int(sock.getsockname()[1]))
        server.run(sockets=[sock])


class DashboardServer:
    """The dashboard served on a background thread; use as a context manager.

    Example:
        >>> import tempfile
        >>> with DashboardServer(tempfile.mkdtemp(), port=0) as server:
        ...     server.url.startswith("http://127.0.0.1:")
        True
    """

    def __init__(
        self,
        runs_dir: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        certs: str | Path | None = None,
        poll: float = 0.5,
    ) -> None:
        """Prepare the server; :meth:`start` (or ``with``) starts it.

        Args:
            runs_dir: A folder of runs, or one run folder.
            host: The address to listen on.
            port: The port; 0 picks a free one (see :attr:`port`).
            certs: A federation folder for HTTPS with client certificates.
            poll: Seconds between checks of a watched run's files.

        Raises:
            ValueError: ``host`` is empty (it would listen on every address).
        """
        self._scheme = "https" if certs is not None else "http"
        host = host.strip("[]")  # [::1], as URLs write it, is the address ::1
        self._host = host
        self._server = _server(runs_dir, host, port, certs, poll)
        self._thread = threading.Thread(
            target=self._server.run, name="covey-dashboard", daemon=True
        )

    @property
    def port(self) -> int:
        """The port the server listens on."""
        servers = getattr(self._server, "servers", [])
        if not servers:
            raise RuntimeError("the dashboard is not listening yet")
        return int(servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8765/``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{self._scheme}://{host}:{self.port}/"

    def start(self, timeout: float = 30.0) -> Self:
        """Start serving and wait until the socket listens.

        Args:
            timeout: Seconds to wait for the socket to listen.

        Returns:
            This server, started (so ``DashboardServer(...).start()`` reads as one).

        Raises:
            RuntimeError: if the server did not start within ``timeout`` seconds,
                or its thread ended first (e.g. the port is in use); the server
                is stopped.
        """
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            self._thread.join(0.02)
        if not self._server.started:
            self.stop()
            raise RuntimeError("the dashboard did not start (is the port in use?)")
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        self._server.closing.set()
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""A live, read-only dashboard of federated runs, and static HTML reports.

Serve it with ``covey dashboard RUNS_DIR`` (needs the ``dashboard`` extra:
``pip install 'covey[dashboard]'``), or from Python::

    from covey.dashboard import DashboardServer
    with DashboardServer("runs", port=8765) as server:
        print(server.url)

``covey runs report RUN`` (or :func:`write_report`) writes one self-contained
HTML file with the plots embedded.

The names below are imported on first use, so ``import covey.dashboard`` works
without the extra installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covey.core._extras import import_feature
from covey.core._lazy import public_dir

if TYPE_CHECKING:
    from covey.dashboard._app import create_app
    from covey.dashboard._report import render_report, write_report
    from covey.dashboard._runjson import RunReadError
    from covey.dashboard._runs import Run, discover_runs, read_run
    from covey.dashboard._server import DashboardServer, serve_dashboard

_WHERE = {
    "create_app": "_app",
    "render_report": "_report",
    "write_report": "_report",
    "Run": "_runs",
    "RunReadError": "_runjson",
    "discover_runs": "_runs",
    "read_run": "_runs",
    "DashboardServer": "_server",
    "serve_dashboard": "_server",
}

__all__ = [
    "DashboardServer",
    "Run",
    "RunReadError",
    "create_app",
    "discover_runs",
    "read_run",
    "render_report",
    "serve_dashboard",
    "write_report",
]


def _load(name: str) -> Any:
    """Import the public names lazily (the web stack is an optional extra).

    Raises:
        MissingExtraError: naming the extra to install when its library is missing.
    """
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'covey.dashboard' has no attribute {name!r}")
    return getattr(import_feature(f"covey.dashboard.{module}", f"covey.dashboard.{name}"), name)


if not TYPE_CHECKING:  # type checkers see the imports above: a misspelt name is an error
    __getattr__ = _load


__dir__ = public_dir(__name__)

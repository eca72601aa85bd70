"""The dashboard web app: a read-only Starlette app over a runs folder.

Routes (all ``GET``; the app has no route that changes anything):

* ``/`` the page; ``/static/...`` its script and style; ``/vendor/plotly.min.js``
  the chart library, served from the installed ``plotly`` package;
* ``/api/runs`` the list of runs;
* ``/api/run?id=RUN`` one run: settings, rounds, clients; ``&view=first`` as the
  page opens it (:func:`~covey.dashboard._page.first_view`: its newest rounds whole,
  every round thinned to chart points);
* ``/api/rounds?id=RUN&start=I&stop=J`` the run's rounds from index ``I`` up to
  ``J``, at most :data:`~covey.dashboard._page.MAX_PAGE` of them (the table's older rows);
* ``/api/stream?id=RUN`` server-sent events: the run as the page opens it first
  (``run``, bounded as ``view=first``), then each change (``update``: new rounds,
  status, clients) as it lands on disk.

The runs are files written by other processes (a simulation, a server), so
changes are found by checking the files' sizes and modification times every
``poll`` seconds; a file is read again only when it changed.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from covey.core._extras import missing_extra
from covey.dashboard._historycache import HistoryCache
from covey.dashboard._page import first_view, page_clients, rounds_page
from covey.dashboard._runjson import tagged_float
from covey.dashboard._runs import (
    Run,
    RunReadError,
    Signature,
    clients_table,
    detail,
    discover_runs,
    is_run,
    read_run,
    signature,
    summary,
)
from covey.dashboard._tally import grown

KEEPALIVE: Final = 15.0
"""Seconds between keep-alive comments on an idle event stream."""


_NON_FINITE: Final = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
"""How the API writes a non-finite number (JSON has none): as these strings."""

_METRICS: Final = frozenset({"central_metrics", "evaluate_metrics", "fit_metrics"})
_SPELLED: Final = frozenset(_NON_FINITE.values())


def clean(value: Any) -> Any:
    """``value`` with every non-finite number as ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``.

    JSON has no such numbers, and browsers refuse the bare ``NaN`` Python writes.
    Run files hold them as floats or as the tag ``{"__float__": "nan"}`` that
    :func:`covey.History.save` writes; both become the same string, which
    JavaScript's ``Number()`` and Python's ``float()`` read back. A metric whose
    value is text spelled so (a client's ``{"status": "NaN"}``) is sent as
    ``{"__text__": "NaN"}``: it is no number, and the page shows it as ``covey runs
    show`` does, as no value.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE[str(value)]
    if isinstance(value, dict):
        tagged = tagged_float(value)
        if tagged is not None:
            return clean(tagged)
        return {
            str(k): _metrics(v) if k in _METRICS and isinstance(v, dict) else clean(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def _metrics(metrics: dict[Any, Any]) -> dict[str, Any]:
    """A round's metrics as :func:`clean` sends them: text spelled as a non-finite number tagged."""
    return {
        str(k): {"__text__": v} if isinstance(v, str) and v in _SPELLED else clean(v)
        for k, v in metrics.items()
    }


def _json(value: Any) -> str:
    try:  # a run without a non-finite number is the usual case: sent as it is
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = None
    if text is None or '"__float__"' in text or '"NaN"' in text or 'Infinity"' in text:
        text = json.dumps(clean(value), allow_nan=False, separators=(",", ":"))
    return text


def _too_deep(path: Path) -> str:
    """Why a run read in a thread cannot be sent: its JSON nests deeper than this stack goes."""
    return f"cannot show the run in {path}: its JSON nests too deeply"


LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "[::1]", "::1")
"""The names of this machine a page served on a loopback address answers to (and its own).

A page of another site whose name an attacker points at 127.0.0.1 (DNS
rebinding) sends its own name in ``Host`` and is refused.
"""


def plotly_js() -> Path:
    """The path of ``plotly.min.js`` inside the installed ``plotly`` package.

    Raises:
        ImportError: plotly (of the dashboard extra) is not installed; the error names the
            extra to install.
        FileNotFoundError: the installed plotly lacks the file.
    """
    try:
        package = resources.files("plotly")
    except ModuleNotFoundError as exc:
        raise missing_extra("the dashboard's charts", exc, "dashboard") from exc
    path = Path(str(package / "package_data" / "plotly.min.js"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall the 'plotly' package")
    return path


def _static_dir() -> Path:
    return Path(str(resources.files("covey.dashboard") / "static"))


class RunCache:
    """Runs read from disk, kept until their files change (so many open pages cost one read).

    A run's row in the list (:func:`~covey.dashboard._runs.summary`) is kept with
    it: the page asks for the list every few seconds, which then costs no walk
    through every round of every run. A run read again after new rounds grows
    the best value and clients' rounds of its previous read with them
    (:func:`~covey.dashboard._tally.grown`), not walking its older rounds again.
    """

    def __init__(self, root: Path | None = None) -> None:
        """An empty cache of runs in ``root``: their files that resolve outside it are refused."""
        self.root = root
        self._lock = threading.Lock()
        self._runs: dict[Path, tuple[Signature, Run]] = {}
        self._summaries: dict[Path, tuple[Run, dict[str, Any]]] = {}
        self._histories = HistoryCache()  # a live run's history.json, parsed once a change

    def read(self, run_id: str, path: Path) -> Run:
        """The run in ``path``, read again only if its files changed since the last read."""
        sig = signature(path)
        with self._lock:
            hit = self._runs.get(path)
        if hit is not None and hit[0] == sig and hit[1].id == run_id:
            return hit[1]
        run = read_run(run_id, path, root=self.root, histories=self._histories)
        old = None if hit is None else hit[1]  # a run that grew: its last tally grown
        run.tally = grown(
            None if old is None else old.tally, [] if old is None else old.rounds, run.rounds
        )
        with self._lock:
            self._runs[path] = (sig, run)
        return run

    def summary(self, run: Run) -> dict[str, Any]:
        """:func:`~covey.dashboard._runs.summary` of ``run``, made once for each run read.

        The row is shared between callers: they must not change it.
        """
        with self._lock:
            hit = self._summaries.get(run.path)
        if hit is not None and hit[0] is run:
            return hit[1]
        row = summary(run)
        with self._lock:
            if self._runs.get(run.path, (None, None))[1] is run:  # the run this cache holds
                self._summaries[run.path] = (run, row)
        return row


def _find(root: Path, request: Request) -> tuple[str, Path]:
    run_id = request.query_params.get("id", "")
    if not run_id:
        raise HTTPException(400, "name the run: ?id=RUN (the ids are in api/runs)")
    for found_id, path in discover_runs(root):
        if found_id == run_id:
            return found_id, path
    raise HTTPException(404, f"no run {run_id!r} in {root}")


async def _run_json(
    root: Path, cache: RunCache, request: Request, shown: Callable[[Run], Any]
) -> Response:
    """What ``shown`` makes of the run the request names, as JSON (422 saying why if unreadable)."""
    run_id, path = _find(root, request)
    try:
        run = await run_in_threadpool(cache.read, run_id, path)
        body = _json(shown(run))
    except RunReadError as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    except RecursionError:  # parsed in a thread, whose stack differs from this one's
        return JSONResponse({"error": _too_deep(path)}, status_code=422)
    return Response(body, media_type="application/json")


def _index(request: Request, name: str) -> int:
    """The whole number ``name`` the request's query gives (400 naming it if none)."""
    text = request.query_params.get(name, "")
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise HTTPException(400, f"give {name} as a whole number of at most 12 digits: ?{name}=N")
    return int(text)


_Shown = tuple[dict[str, str], list[dict[str, Any]]]
"""What a live page holds of a run's clients: their names by id, and their rows."""


def _clients_shown(view: dict[str, Any]) -> _Shown:
    return view["client_names"], view["clients"]


def _delta(
    old: Run, new: Run, row: dict[str, Any] | None = None, shown: _Shown | None = None
) -> dict[str, Any] | None:
    """What changed from ``old`` to ``new``, or None if the page must be redrawn whole.

    ``row``: :func:`~covey.dashboard._runs.summary` of ``new`` if made already.
    ``shown``: the clients the page holds (None: it gets them all).

    Rounds the page holds that changed (a round that a resumed run redid after
    a crash, with other numbers) redraw it whole, as do rounds that went away.
    Of the clients, only the rows that changed go (``client_rows``: their index
    and row), and their names only if they changed; the whole table goes
    (``clients``) if a client came or went or the page holds none.
    """
    known = old.rounds
    if new.rounds[: len(known)] != known:
        return None
    names = {str(k): v for k, v in new.clients.items()}
    rows = page_clients(clients_table(new)) if new.kind == "deployed" else []
    change: dict[str, Any] = {
        "summary": summary(new) if row is None else row,
        "meta": new.meta,
        "new_rounds": new.rounds[len(known) :],
    }
    if shown is None or names != shown[0]:
        change["client_names"] = names
    held = None if shown is None else shown[1]
    if held is not None and [r["name"] for r in held] == [r["name"] for r in rows]:
        change["client_rows"] = [
            [i, r] for i, (r, was) in enumerate(zip(rows, held, strict=True)) if r != was
        ]
    else:
        change["clients"] = rows
    return change


async def _events(
    run_id: str, path: Path, poll: float, closing: threading.Event, cache: RunCache
) -> AsyncIterator[str]:
    """Server-sent events of one run: ``run`` (as the page opens it), then ``update`` per change.

    ``error`` says the run cannot be read (damaged, deleted); ``ok`` that it reads
    again with nothing changed, so the page drops the error.
    """
    last_sig = None
    last: Run | None = None
    last_row: dict[str, Any] = {}
    shown: _Shown | None = None  # the clients the page holds
    failed = False
    idle = 0.0
    while not closing.is_set():
        sig = await run_in_threadpool(signature, path)
        if sig != last_sig:
            last_sig = sig
            try:
                if not await run_in_threadpool(is_run, path):
                    # Deleted or moved: say so (an empty run would wipe the page); if it
                    # comes back, the page gets the whole run again.
                    last = None
                    raise RunReadError(f"the run folder {path} is gone (deleted or moved)")
                run = await run_in_threadpool(cache.read, run_id, path)
                row = await run_in_threadpool(cache.summary, run)
                rows = None if last is None else (last_row, row)
                message, now = _message(last, run, rows, shown)
            except (RunReadError, RecursionError) as exc:
                failed = True
                said = _too_deep(path) if isinstance(exc, RecursionError) else str(exc)
                yield f"event: error\ndata: {_json({'error': said})}\n\n"
            else:
                if message:
                    yield message
                    shown = now
                elif failed:
                    yield "event: ok\ndata: {}\n\n"
                failed = False
                last, last_row = run, row
            idle = 0.0
        elif idle >= KEEPALIVE:
            yield ": keep-alive\n\n"
            idle = 0.0
        await asyncio.sleep(poll)
        idle += poll


def _message(
    old: Run | None,
    new: Run,
    rows: tuple[dict[str, Any], dict[str, Any]] | None = None,
    shown: _Shown | None = None,
) -> tuple[str, _Shown]:
    """The event telling the page how ``old`` became ``new`` ("" if nothing it shows changed).

    ``rows``: :func:`~covey.dashboard._runs.summary` of ``old`` and ``new`` if made already.
    ``shown``: the clients the page holds (None: it gets them all, as :func:`_delta` says).

    Returns:
        The event, and the clients the page holds once it got it.
    """
    old_row, new_row = (None, None) if rows is None else rows
    if old is None or (change := _delta(old, new, new_row, shown)) is None:
        view = first_view(new)
        return f"event: run\ndata: {_json(view)}\n\n", _clients_shown(view)
    old_row = summary(old) if old_row is None else old_row
    if change["new_rounds"] or change["summary"] != old_row or new.events != old.events:
        held = _merged(change, shown)
        return f"event: update\ndata: {_json(change)}\n\n", held
    return "", (shown or ({}, []))


def _merged(change: dict[str, Any], shown: _Shown | None) -> _Shown:
    """The clients a page holding ``shown`` holds once it merged ``change`` (as app.js does)."""
    names = change.get("client_names", {} if shown is None else shown[0])
    if "clients" in change:
        return names, change["clients"]
    rows = list([] if shown is None else shown[1])
    for i, row in change["client_rows"]:
        rows[i] = row
    return names, rows


def create_app(
    runs_dir: str | Path,
    *,
    poll: float = 0.5,
    closing: threading.Event | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The dashboard app over ``runs_dir``.

    Args:
        runs_dir: A folder of runs, or one run folder.
        poll: Seconds between checks of a watched run's files.
        closing: Set when the server shuts down; open event streams then end.
        allowed_hosts: The host names a request may name in its ``Host`` header
            (others get 400), e.g. :data:`LOOPBACK_HOSTS`; None: any.

    Returns:
        An ASGI app; serve it with :class:`covey.dashboard.DashboardServer` or uvicorn.

    Raises:
        ImportError: plotly (of the dashboard extra) is not installed; the error names the
            extra to install.
    """
    root = Path(runs_dir)
    static = _static_dir()
    vendor = plotly_js()  # the chart library is checked now, not on the page's first request
    closing = closing if closing is not None else threading.Event()
    cache = RunCache(root)

    async def index(request: Request) -> Response:
        return FileResponse(static / "index.html", media_type="text/html")

    async def vendor_plotly(request: Request) -> Response:
        return FileResponse(vendor, media_type="text/javascript")

    async def runs(request: Request) -> Response:
        def read_all() -> list[dict[str, Any]]:
            rows = []
            for run_id, path in discover_runs(root):
                try:
                    rows.append(cache.summary(cache.read(run_id, path)))
                except RunReadError as exc:
                    rows.append({"id": run_id, "status": "unreadable", "error": str(exc)})
            return rows

        rows = await run_in_threadpool(read_all)
        return Response(_json({"root": str(root), "runs": rows}), media_type="application/json")

    async def one_run(request: Request) -> Response:
        view = request.query_params.get("view", "all")
        if view not in ("all", "first"):
            raise HTTPException(400, f"view must be 'all' or 'first', not {view!r}")
        return await _run_json(root, cache, request, first_view if view == "first" else detail)

    async def some_rounds(request: Request) -> Response:
        start, stop = _index(request, "start"), _index(request, "stop")
        if stop < start:
            raise HTTPException(400, f"stop ({stop}) must not be below start ({start})")
        return await _run_json(root, cache, request, lambda run: rounds_page(run, start, stop))

    async def stream(request: Request) -> Response:
        run_id, path = _find(root, request)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            _events(run_id, path, poll, closing, cache),
            media_type="text/event-stream",
            headers=headers,
        )

    return Starlette(
        routes=[
            Route("/", index),
            Route("/vendor/plotly.min.js", vendor_plotly),
            Route("/api/runs", runs),
            Route("/api/run", one_run),
            Route("/api/rounds", some_rounds),
            Route("/api/stream", stream),
            Mount("/static", StaticFiles(directory=static), name="static"),
        ],
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts, www_redirect=False)
        ]
        if allowed_hosts is not None
        else [],
    )

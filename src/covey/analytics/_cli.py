"""``covey site`` and ``covey query``: federated analytics from the command line.

``covey query`` is the server side of one query: it listens, waits for the
sites to join, asks the query and prints the answer. ``covey site`` runs next
to the data, joins whichever query server is up, answers under its policy, and
joins again for the next query.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from covey.analytics._cli_sources import (
    CsvDecimal,
    CsvNa,
    CsvSkip,
    default_ledger,
    with_csv_options,
)
from covey.analytics._cli_sources import tables_flag as _tables
from covey.core._files import hold_lock, write_output
from covey.core._interrupt import exit_code, interrupted_how, interrupts_as_such, stop_on_sigterm
from covey.deploy._cli_errors import TomlFileError, file_flag, read_toml_file
from covey.deploy._cli_logs import setup_logging
from covey.deploy._cli_options import ClientCerts, PortFile, ServerCerts, ServerName
from covey.deploy._cli_tables import output_console
from covey.deploy._leave import LEAVE_GRACE, Leaving, leaving
from covey.deploy._shown import escape, stamped

console = output_console()
errors = output_console(stderr=True)


def load_policy(path: Path | None) -> Any:
    """A :class:`~covey.analytics.Policy` from the ``[policy]`` table of a TOML file (or None).

    Example file::

        [policy]
        columns = ["sex", "condition", "age"]
        min_group_size = 10
        epsilon = 5.0
        bounds = { age = [0, 120] }
        domains = { sex = ["F", "M"] }
    """
    from covey.analytics._policy import Policy

    if path is None:
        return None
    try:
        data = read_toml_file(path, "the TOML file of the site's [policy]")
    except TomlFileError as exc:  # a binary file or /dev/zero: named, not read whole
        raise typer.BadParameter(f"{path}: {exc}", param_hint="--policy") from None
    table = data.get("policy")
    if not isinstance(table, dict):
        # an empty or cut file read as Policy() would open every column
        found = "no [policy] table" if table is None else f"policy = {table!r:.40}, not a table"
        raise typer.BadParameter(
            f"{path} has {found}: a policy file holds its settings in a [policy] table "
            "(a site without a policy answers nothing: leave out --policy for that)",
            param_hint="--policy",
        )
    known = {
        "tables",
        "columns",
        "bounds",
        "domains",
        "min_group_size",
        "epsilon",
        "max_epsilon",
        "min_max",
        "distinct",
    }
    unknown = sorted(set(table) - known - {"delta"})
    if unknown:
        raise typer.BadParameter(f"unknown policy settings {unknown}", param_hint="--policy")
    try:
        bounds = table.get("bounds", {})
        if isinstance(bounds, dict):  # a TOML array [low, high] as the pair (low, high)
            bounds = {c: tuple(b) if isinstance(b, list) else b for c, b in bounds.items()}
        return Policy(**{**table, "bounds": bounds})
    except (TypeError, ValueError, IndexError) as exc:
        raise typer.BadParameter(f"{path}: {exc}", param_hint="--policy") from None


def hold_ledger(path: Path) -> int | None:
    """Hold ``PATH.lock`` for this process: no second site may keep its budget in ``path``.

    Two site processes sharing one ledger file would each rewrite it from their own
    ledger, so one's charges would be lost (an under-count of the budget spent). The
    lock is an advisory ``flock``, dropped by the kernel when the process exits, even
    by ``kill -9``.

    Returns:
        The lock file's descriptor, or None where there is no ``flock`` (Windows) or no
        folder to hold it in (the site names that folder when it keeps the ledger).

    Raises:
        OSError: Another process holds the ledger (its pid is named).
    """
    from covey.analytics._ledger_file import remove_stale_temporaries

    if not path.parent.is_dir():
        return None
    held = hold_lock(
        path.with_name(path.name + ".lock"),
        lambda pid: (
            f"the ledger file {path} is in use by another covey site (pid {pid}): "
            "two sites keeping one ledger would overwrite each other's charges; give this "
            "one its own --ledger (or --name)"
        ),
    )
    if held is not None:  # no other site writes this ledger: its temporaries are stale
        remove_stale_temporaries(path)
    return held


_REJOIN_PAUSE = 1.0  # seconds a site waits before joining the next query server


def site_command(
    table: Annotated[
        list[str],
        typer.Option(help="NAME=SOURCE: a .parquet/.csv path or sqlite:///path.db (repeatable)."),
    ],
    server: Annotated[str, typer.Option(help="The query server's host:port.")],
    policy: Annotated[
        Path | None,
        typer.Option(
            help="TOML file with the site's \\[policy]; none: answer nothing.",
            parser=file_flag("--policy"),
            metavar="PATH",
        ),
    ] = None,
    certs: ClientCerts = None,
    name: Annotated[str | None, typer.Option(help="The site's id (its certificate name).")] = None,
    insecure: Annotated[bool, typer.Option(help="Connect without TLS.")] = False,
    server_name: ServerName = None,
    once: Annotated[bool, typer.Option(help="Leave after the first query server ends.")] = False,
    ledger: Annotated[
        Path | None,
        typer.Option(
            help="JSON file keeping the site's DP budget across restarts "
            "(default: NAME.covey-budget.json next to the first table).",
            parser=file_flag("--ledger"),
            metavar="PATH",
        ),
    ] = None,
    csv_skip: CsvSkip = None,
    csv_na: CsvNa = None,
    csv_decimal: CsvDecimal = None,
) -> None:
    """Serve analytics queries over local tables, answering under the site's policy."""
    from covey.analytics._site import Site
    from covey.deploy import connect
    from covey.deploy._cli_errors import address_flag

    if certs is not None and insecure:  # refused as `covey client` refuses it, before a ledger
        raise typer.BadParameter("give --certs DIR or --insecure, not both")
    server = address_flag(server, "--server", listen=False)  # before a ledger is made
    the_policy = load_policy(policy)
    setup_logging(errors, False)  # its records (retries, warnings) dated as its own lines
    try:
        tables = _tables(table)
        sources = with_csv_options(tables, csv_skip, csv_na, csv_decimal)
        if the_policy is None:  # warned once the flags are known right
            errors.print(
                stamped(
                    "[yellow]warning:[/] no --policy given: this site refuses every query", errors
                )
            )
        kept = ledger if ledger is not None else default_ledger(tables, name or "site")
        held = hold_ledger(kept)  # noqa: F841 - held until this process exits
        site = Site(sources, the_policy, name=name or "site", ledger=kept)
        errors.print(stamped(f"privacy budget kept in {escape(str(kept))}", errors), soft_wrap=True)
        tls = _site_tls(certs, name, server_name, insecure, server)
    except (OSError, ValueError, TypeError) as exc:  # a table, ledger or certificate given
        errors.print(stamped(f"[red]error:[/] {escape(str(exc))}", errors), soft_wrap=True)
        raise typer.Exit(2) from None
    said = f"site {name or 'site'} left; its privacy budget is kept in {kept}"
    leave = Leaving(
        lambda how: errors.print(stamped(escape(f"{how}: {said}"), errors), soft_wrap=True),
        # a charge being written to the ledger is finished before the process ends
        before_exit=lambda: site._charging.acquire(timeout=LEAVE_GRACE),
    )
    try:
        # docker stop, systemctl stop: the site leaves as on Ctrl-C. Between queries no
        # query server listens, for as long as the analysts take: a site waits for the
        # next one however long that is (the retries are logged).
        with leaving(leave), interrupts_as_such():
            _serve_queries(
                lambda: connect(
                    site,
                    server,
                    tls=tls,
                    insecure=insecure,
                    name=name or "",
                    retry_for=None,
                    stop=leave.stop,
                ),
                once,
                leave.stop,
            )
    except (OSError, ValueError, TypeError) as exc:
        if leave.stop.is_set():  # what the stop broke off
            leave.leave()
        errors.print(stamped(f"[red]error:[/] {escape(str(exc))}", errors), soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as exc:
        leave.leave(exc)  # at once, as the normal end (see Leaving)
    if leave.stop.is_set():  # the interrupt itself was lost on the way (in a finalizer)
        leave.leave()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # leave without gRPC's finalizers (see `covey client`)


def _site_tls(
    certs: Path | None, name: str | None, server_name: str | None, insecure: bool, server: str
) -> Any:
    """The site's TLS settings from ``--certs``/``--name``; None with ``--insecure`` (warned)."""
    from covey.deploy import tls_from_certs
    from covey.deploy._client import file_name_problem, warn_without_tls

    if certs is not None:
        if name is None:
            raise typer.BadParameter("--certs needs --name (the site's certificate name)")
        why = file_name_problem(name)
        if why is not None:  # it names clients/NAME.pem: no path, inside the folder
            raise typer.BadParameter(f"--name {name[:60]!r}: {why}")
        return tls_from_certs(certs, name, server_name=server_name)
    if server_name is not None:
        raise typer.BadParameter("--server-name needs --certs (--insecure checks none)")
    if not insecure:
        raise typer.BadParameter("give --certs DIR --name ID, or --insecure")
    # said once, not at every query server the site joins
    warn_without_tls(server, "the queries and the site's answers")
    return None


def _serve_queries(
    join: Callable[[], Any], once: bool, stop: threading.Event | None = None
) -> None:
    """Join query servers one after another (only the first with ``once``), until ``stop``.

    A query server that is closing refuses a site that comes back at once (its
    run is over); without ``once`` that is the end of one query, not of the site,
    so the site waits a moment and joins the next query server.
    """
    stop = stop or threading.Event()
    from covey.transport.grpc import Refused
    from covey.transport.grpc._refusal import RUN_OVER

    while not stop.is_set():
        try:
            result = join()
        except Refused as exc:
            if stop.is_set():
                return
            if once or RUN_OVER not in exc.cause:
                raise
            errors.print(stamped("the query server is closing; waiting for the next one", errors))
            stop.wait(_REJOIN_PAUSE)
            continue
        if stop.is_set():  # left the query server for the stop, not answered by it
            return
        errors.print(
            stamped(
                f"answered {result.tasks} task(s); server said: {escape(result.reason)}", errors
            )
        )
        if once:
            return


def _cell(value: Any) -> str:
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:  # a histogram's bins
        value = value.tolist()
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value.is_integer() and abs(value) < 1e15:  # a count: every digit, never 6e+06
            return f"{value + 0.0:.0f}"  # + 0.0: -0.0 reads 0
        if 1e6 <= abs(value) < 1e15:  # a large sum: its whole part, not 9.91148e+06
            return f"{value:.2f}"
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        shown = ", ".join(_cell(v) for v in value[:8])
        return f"[{shown}{', ...' if len(value) > 8 else ''}]"
    return str(value)


def result_table(df: Any, title: str) -> Table:
    """A rich table of a query's answer, with its attributes as the caption.

    The SQL, column names and values are the data's own text, never markup: a
    group named ``[/x]`` is shown as it is.
    """
    table = Table(title=Text(title), box=box.SIMPLE_HEAD, header_style="bold")
    for col in df.columns:
        table.add_column(Text(str(col)), justify="right")
    for _, row in df.iterrows():
        table.add_row(*(Text(_cell(row[c])) for c in df.columns))
    attrs = df.attrs
    notes = [f"sites: {', '.join(attrs.get('sites', []))}"]
    if attrs.get("suppressed"):
        notes.append(f"suppressed (under {attrs['min_group_size']}): {attrs['suppressed']}")
    if attrs.get("refused"):
        notes.append(f"refused: {attrs['refused']}")
    for col, why in (attrs.get("unavailable") or {}).items():  # means over too few values
        notes.append(f"{col} not available for {why['groups']}: {why['reason']}")
    if attrs.get("privacy"):
        p = attrs["privacy"]
        notes.append(
            f"privacy: epsilon {p['epsilon']:.4g} (delta {p['delta']:g}, {p['mechanism']})"
        )
        for col, rows in (p.get("quantile_rank_error") or {}).items():
            notes.append(f"{col}: rank within {rows:.4g} rows (DP noise, 1 time in 40 past it)")
        if p.get("withholding"):
            notes.append(f"small groups withheld by: {', '.join(p['withholding'])}")
    table.caption = Text("; ".join(notes))
    return table


def answer_json(df: Any, sql: str) -> str:
    """The answer as ``covey query --json`` writes it: the table and what the caption says.

    The table as pandas' ``orient="split"`` gives it (``columns``, ``index`` and
    ``data``, a suppressed group's values null), with the ``sql`` asked and
    ``attrs``: the answering sites, the refusals, the suppressed groups, the
    privacy cost, as :func:`~covey.analytics.query` keeps them in ``df.attrs``.
    """
    answer = json.loads(df.to_json(orient="split", default_handler=str))
    answer["sql"] = sql
    # NaN and infinities, which JSON has not, as null (as pandas writes them in the table)
    attrs = json.dumps(df.attrs, default=_plain_json)
    answer["attrs"] = json.loads(attrs, parse_constant=lambda _: None)
    return json.dumps(answer)


def _plain_json(value: Any) -> Any:
    """A NumPy scalar or array as a plain value, anything else as its text (for ``json``)."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)


def _check_seconds(**options: float) -> None:
    """Refuse a ``--timeout`` or ``--wait-timeout`` that is not a positive number of seconds."""
    for name, seconds in options.items():
        if not (seconds > 0 and math.isfinite(seconds)):  # nan, inf, 0 or below
            option = "--" + name.replace("_", "-")
            raise ValueError(f"{option} must be a positive number of seconds, got {seconds}")


def _query_tls(certs: Path | None, server: str) -> Any:
    """The query server's TLS material from ``--certs``; None, warned of, with ``--insecure``."""
    from covey.deploy import tls_from_dir
    from covey.deploy._tls import warn_serving_without_tls

    if certs is not None:
        return tls_from_dir(certs)
    warn_serving_without_tls(server, "the query and the sites' answers")  # as `covey server` does
    return None


def _one_tls_choice(certs: Path | None, insecure: bool) -> None:
    """Refuse a query server given neither ``--certs`` nor ``--insecure``, or both."""
    if certs is None and not insecure:
        raise typer.BadParameter("give --certs DIR, or --insecure for a local experiment")
    if certs is not None and insecure:  # as `covey server` refuses it
        raise typer.BadParameter("give --certs DIR or --insecure, not both")


def query_command(
    sql: Annotated[str, typer.Argument(help="The SELECT to answer.")],
    server: Annotated[str, typer.Option(help="host:port this query server listens on.")],
    sites: Annotated[int, typer.Option(min=1, help="Sites to wait for (secure: 2 or more).")] = 1,
    certs: ServerCerts = None,
    insecure: Annotated[bool, typer.Option(help="Serve without TLS (local tests only).")] = False,
    secure: Annotated[bool, typer.Option(help="Sum answers by secure aggregation.")] = True,
    epsilon: Annotated[float | None, typer.Option(help="DP budget of this query.")] = None,
    mechanism: Annotated[
        str | None, typer.Option(help="laplace (the default) or gaussian, with --epsilon.")
    ] = None,
    wait_timeout: Annotated[float, typer.Option(help="Seconds to wait for the sites.")] = 300.0,
    timeout: Annotated[float, typer.Option(help="Seconds per stage.")] = 120.0,
    port_file: PortFile = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Also write it, with sites, privacy, as JSON.",
            parser=file_flag("--json"),
            metavar="PATH",
        ),
    ] = None,
) -> None:
    """Listen for sites, answer one SQL query over their tables, print the result."""
    from covey.analytics._query import check_query, query
    from covey.deploy._cli_errors import output_file
    from covey.deploy._cli_tables import print_table
    from covey.transport.grpc import GrpcServerTransport
    from covey.transport.grpc._checks import check_address
    from covey.transport.grpc._listen import ListenError

    _one_tls_choice(certs, insecure)
    output_file(port_file, "--port-file")
    output_file(json_out, "--json")
    setup_logging(errors, False)  # its records (warnings) dated as its own lines
    try:  # everything that can be checked is, before a site waits on this server
        check_query(sql, secure=secure, epsilon=epsilon, mechanism=mechanism)
        check_address(server, listen=True)
        _check_seconds(timeout=timeout, wait_timeout=wait_timeout)
        if secure and sites < 2:  # a lone site's answer cannot be hidden in a sum
            raise ValueError(
                f"--sites {sites}: secure aggregation needs at least two sites; "
                "give --sites 2 or more, or --no-secure"
            )
        tls = _query_tls(certs, server)  # last: a flag refused above warns of nothing
    except (OSError, ValueError) as exc:
        # The message may quote the SQL, whose ``"x[/y]"`` is no markup.
        errors.print(stamped(f"[red]error:[/] {escape(str(exc))}", errors), soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        transport = GrpcServerTransport(server, tls=tls)
    except ListenError as exc:  # in use, not this machine's: a mistake in --server
        errors.print(stamped(f"[red]error:[/] {escape(str(exc))}", errors), soft_wrap=True)
        raise typer.Exit(2) from None
    except (RuntimeError, OSError) as exc:  # RuntimeError: gRPC's, naming no cause
        said = escape(str(exc) if isinstance(exc, OSError) else f"cannot listen on {server}: {exc}")
        errors.print(stamped(f"[red]error:[/] {said}", errors), soft_wrap=True)
        raise typer.Exit(1) from None
    code, goodbye = 0, "the query is answered"
    try:
        stop_on_sigterm()  # as Ctrl-C: the sites are told the query failed
        if port_file is not None:
            write_output(port_file, str(transport.port))
        errors.print(stamped(f"waiting for {sites} site(s) on port {transport.port}", errors))
        if not transport.wait_for_clients(sites, wait_timeout):
            raise TimeoutError(
                f"only {len(transport.clients())} of {sites} sites joined within "
                f"{wait_timeout:g} s (--wait-timeout)"
                + (f"; {transport.refused_in_wait}" if transport.refused_in_wait else "")
            )
        df = query(
            transport,
            sql,
            secure=secure,
            epsilon=epsilon,
            mechanism=mechanism,
            timeout=timeout,
        )
        print_table(result_table(df, sql), console)
        if json_out is not None:
            write_output(json_out, answer_json(df, sql))
    except (ValueError, PermissionError, RuntimeError, TimeoutError) as exc:
        errors.print(stamped(f"[red]error:[/] {escape(str(exc))}", errors), soft_wrap=True)
        code = 1
        goodbye = f"the query failed: {(str(exc).splitlines() or [''])[0][:300]}"
    except KeyboardInterrupt as exc:
        how = interrupted_how(exc)
        errors.print(stamped(escape(f"{how}: the query was not answered"), errors))
        code, goodbye = exit_code(exc), f"the query failed: {how}"
    except BaseException as exc:  # a bug: the sites must not read that it was answered
        goodbye = f"the query failed: {type(exc).__name__}"
        raise
    finally:
        transport.close(goodbye)  # the sites print it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

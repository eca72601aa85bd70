"""``covey runs report RUN``: one self-contained HTML file of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report_command(
    run: Annotated[Path, typer.Argument(help="The run folder.", file_okay=False)],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="The HTML file to write, in a folder that exists (default: ./RUN-report.html).",
        ),
    ] = None,
) -> None:
    """Write one HTML file with the run's plots and every round, readable offline."""
    try:
        from covey.dashboard._report import report_with_warning
        from covey.dashboard._runs import RunReadError
    except ImportError as exc:
        typer.echo(
            f"reports need the dashboard extra: pip install 'covey[dashboard]' ({exc})", err=True
        )
        raise typer.Exit(1) from None
    if out is not None and not out.parent.exists():  # a typo is not made into a folder
        typer.echo(
            f"error: --out {out}: the folder {out.parent} does not exist; create it, or "
            "give a file in a folder that does",
            err=True,
        )
        raise typer.Exit(2)
    try:
        path, warning = report_with_warning(run, out)
    except (RunReadError, ValueError, OSError) as exc:  # a RUN or --out that will not do
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"report written to {path}")
    if warning is not None:  # as `covey runs show` says it, on standard error
        typer.echo(f"warning: {warning}", err=True)

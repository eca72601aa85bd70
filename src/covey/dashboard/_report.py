"""A run as one self-contained HTML file: facts, plots and every round, nothing fetched.

The chart library (``plotly.min.js`` from the installed ``plotly`` package) is
written into the file, so it opens offline, from a mail attachment or from a
paper's supplementary material.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from pathlib import Path
from typing import Any, Final

from covey.core._extras import import_feature
from covey.core._files import atomic_write
from covey.core._jsonvalues import as_float
from covey.core._metricnames import read_as
from covey.dashboard._app import plotly_js
from covey.dashboard._runjson import tagged_float
from covey.dashboard._runs import (
    Run,
    RunReadError,
    as_number,
    best_metric,
    is_run,
    metric_value,
    read_run,
    run_id,
    strategy_name,
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #1d2330; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.fail { color: #c62828; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.grid > div { width: 640px; }
"""

_SOURCES = (("central", "test"), ("evaluate", "federated"), ("fit", "train"))


def _series(rounds: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Every plottable ``(source, metric)`` of the rounds and its label, loss first."""
    found: dict[tuple[str, str], str] = {}
    for r in rounds:
        for source, label in _SOURCES:
            if source != "fit" and metric_value(r, source, "loss") is not None:
                found[(source, "loss")] = f"{label} loss"
            metrics = r.get(f"{source}_metrics")
            for stored in metrics if isinstance(metrics, dict) else {}:
                name = read_as(str(stored), source)  # a metric named loss is loss_metric
                if metric_value(r, source, name) is not None:
                    shown = name.removeprefix("train_") if source == "fit" else name
                    found[(source, name)] = f"{label} {shown}"
    return found


def _plain(text: str) -> str:
    """``text`` for a plotly name or title: plotly.js reads HTML tags (links too) and entities."""
    return html.escape(text, quote=False)


def _figures(run: Run) -> list[Any]:
    go = import_feature("plotly.graph_objects", "covey.dashboard's reports")

    rounds, step = run.rounds, run.step  # "update" in an asynchronous run
    layout: dict[str, Any] = {
        "height": 320,
        "template": "plotly_white",
        "margin": {"l": 55, "r": 15, "t": 40, "b": 75},
        "xaxis": {"title": {"text": step}},
        "legend": {"orientation": "h", "y": -0.32},
    }

    def lines(title: str, keys: list[tuple[tuple[str, str], str]]) -> Any:
        fig = go.Figure(layout={**layout, "title": {"text": title}})
        for (source, name), label in keys:
            pts = [  # a NaN or infinite value has no point: the table shows it
                (r["round"], v)
                for r in rounds
                if (v := metric_value(r, source, name)) is not None and math.isfinite(v)
            ]
            fig.add_trace(
                _trace(
                    go, len(pts), x=[p[0] for p in pts], y=[p[1] for p in pts], name=_plain(label)
                )
            )
        return fig

    series = list(_series(rounds).items())
    is_loss = [s for s in series if s[0][1] in ("loss", "train_loss")]
    figures = [lines("Loss", is_loss), lines("Metrics", [s for s in series if s not in is_loss])]
    fit = [r for r in rounds if r["round"] > 0]
    x = [r["round"] for r in fit]
    clients = go.Figure(
        layout={**layout, "title": {"text": f"Clients per {step}"}, "barmode": "group"}
    )
    for name, y in (
        ("fit", [len(r.get("fit_participants") or []) for r in fit]),
        ("evaluate", [len(r.get("evaluate_participants") or []) for r in fit]),
        (
            "failed",
            [len(r.get("fit_failures") or []) + len(r.get("evaluate_failures") or []) for r in fit],
        ),
    ):
        color = "#c62828" if name == "failed" else None
        clients.add_trace(_trace(go, len(x), bars=True, x=x, y=y, name=name, color=color))
    figures.append(clients)
    traffic = _bytes_figure(go, layout, fit, step)
    if traffic is not None:
        figures.append(traffic)
    budget = _privacy_figure(go, layout, rounds)
    if budget is not None:
        figures.append(budget)
    return figures


def _privacy_figure(go: Any, layout: dict[str, Any], rounds: list[dict[str, Any]]) -> Any:
    """The epsilons spent, as the page draws them; None if no round has a privacy record.

    A value that is no number (text such as an accountant's name, a list, none) or
    not finite has no point, and a key with no point has no trace: the table shows it.
    """
    private = [r for r in rounds if isinstance(r.get("privacy"), dict)]
    if not private:
        return None
    budget = go.Figure(layout={**layout, "title": {"text": "Privacy budget spent"}})
    keys = sorted({str(k) for r in private for k in r["privacy"] if "epsilon" in str(k)})
    for key in keys:
        pts = [
            (r["round"], v)
            for r in private
            if (v := as_number(r["privacy"].get(key))) is not None and math.isfinite(v)
        ]
        if pts:
            budget.add_trace(
                _trace(go, len(pts), x=[p[0] for p in pts], y=[p[1] for p in pts], name=_plain(key))
            )
    return budget


def _bytes_figure(go: Any, layout: dict[str, Any], fit: list[dict[str, Any]], step: str) -> Any:
    """The array bytes each round sent and received, in MB; None if no round counted them."""

    def megabytes(value: Any) -> float | None:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return as_float(value) / 1e6 if number else None  # an int past a float's range: inf

    keys = (("bytes_sent", "sent"), ("bytes_received", "received"))
    moved = [r for r in fit if any(megabytes(r.get(k)) is not None for k, _ in keys)]
    if not moved:
        return None
    title = {"text": f"Bytes per {step} (MB)"}
    figure = go.Figure(layout={**layout, "title": title, "barmode": "group"})
    for key, name in keys:
        figure.add_trace(
            _trace(
                go,
                len(moved),
                bars=True,
                x=[r["round"] for r in moved],
                y=[megabytes(r.get(key)) for r in moved],
                name=name,
            )
        )
    return figure


MARKED: Final = 500
"""Past this many rounds a series is drawn as a plain line, without a marker or bar per round.

A chart of tens of thousands of markers or bars takes a browser minutes to draw.
"""


def _trace(
    go: Any, points: int, *, bars: bool = False, color: str | None = None, **data: Any
) -> Any:
    """A series of ``points`` rounds: bars (or lines with markers), past :data:`MARKED` a line."""
    if points > MARKED:
        return go.Scatter(mode="lines", line_color=color, **data)
    if bars:
        return go.Bar(marker_color=color, **data)
    return go.Scatter(mode="lines+markers", line_color=color, **data)


def _cell(value: Any) -> str:
    """A table cell's HTML: a number (``nan``, ``inf`` too), ``–`` for none, else escaped text.

    Run files are data: text in them is escaped.
    """
    number = value if isinstance(value, float) else tagged_float(value)
    if number is not None:
        return f"{number:.4f}"  # NaN and infinities: nan, inf, -inf
    return "–" if value is None else html.escape(str(value))


def _text(value: Any) -> Any:
    """A privacy value as the table shows it: a non-finite number as ``nan``, not its tag."""
    number = tagged_float(value)
    return value if number is None else number


def _round_rows(run: Run) -> str:
    def name(cid: Any) -> str:
        return html.escape(
            run.clients.get(cid, f"client {cid}") if isinstance(cid, int) else str(cid)
        )

    rows = []
    for r in run.rounds:
        failures = [*(r.get("fit_failures") or []), *(r.get("evaluate_failures") or [])]
        why = "".join(
            f'<div class="fail">{name(f.get("cid"))} ({html.escape(str(f.get("stage")))}): '
            f"{html.escape(str(f.get('error')))}</div>"
            for f in failures
            if isinstance(f, dict)
        )
        durations = r.get("durations")
        durations = durations if isinstance(durations, dict) else {}
        privacy = r.get("privacy")
        privacy = privacy if isinstance(privacy, dict) else {}
        who = ", ".join(name(c) for c in r.get("fit_participants") or [])
        rows.append(
            f'<tr id="round-{r["round"]}"><td class="num">{r["round"]}</td>'
            f'<td class="num">{_cell(metric_value(r, "central", "loss"))}</td>'
            f'<td class="num">{_cell(metric_value(r, "central", "accuracy"))}</td>'
            f'<td class="num">{_cell(metric_value(r, "evaluate", "loss"))}</td>'
            f'<td class="num">{_cell(metric_value(r, "evaluate", "accuracy"))}</td>'
            f"<td>{len(r.get('fit_participants') or [])}: {who}</td><td>{why or '–'}</td>"
            f'<td class="num">{_cell(durations.get("total"))}</td>'
            f"<td>{html.escape(', '.join(f'{k}={_text(v)}' for k, v in privacy.items())) or '–'}"
            "</td></tr>"
        )
    return "\n".join(rows)


def render_report(run: Run) -> str:
    """The HTML text of a run's report (plots, facts, one table row per round).

    The page is self-contained: the chart library is written into it.

    Args:
        run: The run, as :func:`~covey.dashboard.read_run` reads it from its folder.

    Raises:
        ImportError: the dashboard's extra (``plotly``) is not installed, naming it.
    """
    figures = _figures(run)
    config = {"displaylogo": False, "responsive": True}
    html_parts = [
        f.to_html(full_html=False, include_plotlyjs=False, default_width="640px", config=config)
        for f in figures
    ]
    plots = "\n".join(f'<div id="figure-{i}">{part}</div>' for i, part in enumerate(html_parts))
    best = best_metric(run.rounds)
    step = run.step  # "update" in an asynchronous run
    best_text = f"{best['name']} {best['value']:.4f} ({step} {best['round']})" if best else "–"
    started = run.meta.get("started") or run.meta.get("created_at") or "–"
    facts = {
        "kind": run.kind,
        "status": run.status,
        "strategy": strategy_name(run.meta),
        f"{step}s": max((r["round"] for r in run.rounds), default="–"),
        "best": best_text,
        "started": started,
    }
    if run.meta.get("stopped_reason"):
        facts["stopped early"] = run.meta["stopped_reason"]
    facts_html = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in facts.items()
    )
    warning = (
        ""
        if run.warning is None
        else f'<p class="fail" id="warning">{html.escape(run.warning)}</p>'
    )
    made = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = html.escape(f"covey run {run.id}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{_STYLE}</style>
<script>{plotly_js().read_text(encoding="utf-8")}</script></head>
<body><h1>{title}</h1><p>Report written {made} by covey.</p>
{warning}<table id="facts">{facts_html}</table>
<div class="grid">{plots}</div>
<h2>{step.capitalize()}s</h2>
<table id="rounds"><thead><tr><th>{step}</th><th>test loss</th><th>test acc.</th><th>fed. loss</th>
<th>fed. acc.</th><th>fit clients</th><th>failures (reason)</th><th>seconds</th><th>privacy</th>
</tr></thead><tbody>
{_round_rows(run)}
</tbody></table></body></html>
"""


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the run in ``run_dir`` to ``out`` (default ``./RUN-report.html``).

    When the run's ``history.json`` is damaged and its rounds were read from
    ``run.sqlite`` instead, the report says so at its top
    (:func:`report_with_warning` also returns that warning).

    Args:
        run_dir: A run folder (``history.json`` and/or ``run.sqlite``).
        out: The HTML file to write; missing folders on its path are made.

    Returns:
        The path written.

    Raises:
        covey.dashboard.RunReadError: if the run's files cannot be read.
        ValueError: if ``out`` is a folder, or a file of the run itself (not ``.html``).
        OSError: if ``out`` cannot be written (the message names it).
    """
    return report_with_warning(run_dir, out)[0]


def report_with_warning(
    run_dir: str | Path, out: str | Path | None = None
) -> tuple[Path, str | None]:
    """:func:`write_report`; also the warning the report shows, if any (else None).

    The warning says why the run's rounds were read from ``run.sqlite``: its
    ``history.json`` is damaged. ``covey runs report`` prints it as well.
    """
    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise RunReadError(f"{run_dir} is not a run folder (no history.json or run.sqlite)")
    name = run_dir.resolve().name
    path = Path(out) if out is not None else Path(f"{name}-report.html")
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder; give the HTML file to write, e.g. {path / 'report.html'}"
        )
    if path.resolve().is_relative_to(run_dir.resolve()) and path.suffix.lower() not in (
        ".html",
        ".htm",
    ):
        raise ValueError(
            f"{path} is in the run folder and is not an .html file: the report would "
            "overwrite the run's own files; give another name"
        )
    # A name not in UTF-8 is written with \xNN; no file outside the run folder is read.
    run = read_run(run_id(name), run_dir, root=run_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # `-o paper/report.html` makes paper/
        atomic_write(path, render_report(run))
    except OSError as exc:
        raise OSError(f"cannot write the report to {path}: {exc.strerror or exc}") from exc
    return path, run.warning

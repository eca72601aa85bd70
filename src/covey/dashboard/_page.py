"""What the page gets of a run as it opens: its newest rounds, and the whole run thinned.

A run of 20,000 rounds sent whole came to about 12 MB on each opening of its
page, though the table shows its newest :data:`TABLE_ROUNDS`. The first view
holds those rounds whole, and a point per round for the charts (at most
:data:`CHART_POINTS`, evenly spread over the run, its first and last included),
each holding only what the charts draw; older rounds come a page at a time
(:func:`rounds_page`, at most :data:`MAX_PAGE` rounds).

Example:
    >>> [p["round"] for p in chart_points([{"round": k} for k in range(10)], limit=4)]
    [0, 3, 6, 9]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from covey.dashboard._runs import detail

if TYPE_CHECKING:
    from covey.dashboard._runs import Run

TABLE_ROUNDS: Final = 200
"""The newest rounds the first view holds whole (the rows the page's table shows first)."""
CHART_POINTS: Final = 2000
"""The most points per series the first view holds for the charts."""
MAX_PAGE: Final = 1000
"""The most rounds one request for older rounds gets."""
CLIENT_ROUNDS: Final = 50
"""The newest rounds of each client the page gets (with how many it took part in)."""

_NUMBERS: Final = ("central_loss", "evaluate_loss", "bytes_sent", "bytes_received")
_OBJECTS: Final = ("central_metrics", "evaluate_metrics", "fit_metrics", "durations")
_COUNTS: Final = (
    ("n_fit", ("fit_participants",)),
    ("n_evaluate", ("evaluate_participants",)),
    ("n_failed", ("fit_failures", "evaluate_failures")),
)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def chart_point(record: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one round the charts draw (a point has no NaN: it is left out)."""
    point: dict[str, Any] = {"round": record["round"]}
    for key in _NUMBERS:
        if _is_number(record.get(key)):
            point[key] = record[key]
    for key in _OBJECTS:
        value = record.get(key)
        if isinstance(value, dict):
            numbers = {k: v for k, v in value.items() if _is_number(v)}
            if numbers:
                point[key] = numbers
    for key, lists in _COUNTS:  # none: left out, as the lists of a whole round may be
        counted = sum(len(record.get(name) or ()) for name in lists)
        if counted:
            point[key] = counted
    privacy = record.get("privacy")
    if isinstance(privacy, dict):
        spent = {k: v for k, v in privacy.items() if "epsilon" in k and _is_number(v)}
        if spent:
            point["privacy"] = spent
    return point


def chart_points(rounds: list[dict[str, Any]], limit: int = CHART_POINTS) -> list[dict[str, Any]]:
    """At most ``limit`` chart points of ``rounds``, evenly spread, the first and last kept."""
    n = len(rounds)
    if n <= limit:
        return [chart_point(r) for r in rounds]
    picked = sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})
    return [chart_point(rounds[i]) for i in picked]


def page_clients(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A deployed run's clients as the page gets them: the newest rounds of each, and counts.

    Each client's lists of rounds grow with the run, and a live page gets the
    clients again at each new round: ``fit_count`` and ``evaluate_count`` say
    how many rounds it took part in, its lists hold the newest :data:`CLIENT_ROUNDS`.
    """
    return [
        {
            **row,
            "fit_count": len(row["fit_rounds"]),
            "evaluate_count": len(row["evaluate_rounds"]),
            "fit_rounds": row["fit_rounds"][-CLIENT_ROUNDS:],
            "evaluate_rounds": row["evaluate_rounds"][-CLIENT_ROUNDS:],
        }
        for row in rows
    ]


def first_view(run: Run) -> dict[str, Any]:
    """The run as the page opens it (JSON-ready): :func:`detail` with bounded rounds.

    ``rounds`` holds the newest :data:`TABLE_ROUNDS` rounds whole, the first at
    ``rounds_from`` of ``rounds_total``; ``chart`` the run's chart points.
    """
    view = detail(run)
    start = max(0, len(run.rounds) - TABLE_ROUNDS)
    view.update(
        rounds=run.rounds[start:],
        rounds_from=start,
        rounds_total=len(run.rounds),
        chart=chart_points(run.rounds),
        clients=page_clients(view["clients"]),
    )
    return view


def rounds_page(run: Run, start: int, stop: int) -> dict[str, Any]:
    """The run's rounds from index ``start`` up to ``stop`` (JSON-ready), at most :data:`MAX_PAGE`.

    Raises:
        ValueError: ``start`` is negative or ``stop`` below it, naming both.
    """
    if start < 0 or stop < start:
        raise ValueError(
            f"give 0 <= start <= stop (the rounds from index start up to stop), "
            f"not start={start}, stop={stop}"
        )
    total = len(run.rounds)
    stop = min(stop, start + MAX_PAGE, total)
    start = min(start, stop)
    return {
        "id": run.id,
        "start": start,
        "stop": stop,
        "total": total,
        "rounds": run.rounds[start:stop],
    }

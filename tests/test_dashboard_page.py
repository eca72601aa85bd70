"""What the dashboard sends a page opening a long run: bounded, its charts spanning the run."""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the dashboard extra is needed")

from _sse import next_event
from covey.dashboard import DashboardServer

ROUNDS = 5000
TABLE_ROUNDS = 200  # covey.dashboard._page's: the table's rows, the chart's points, a page
CHART_POINTS = 2000
MAX_PAGE = 1000


def _record(k: int) -> dict[str, Any]:
    return {
        "round": k,
        "central_loss": 1.0 / (k + 1),
        "central_metrics": {"accuracy": k / ROUNDS, "note": "text is not drawn"},
        "fit_participants": [0, 1, 2] if k else [],
        "evaluate_participants": [],
        "fit_failures": [{"cid": 3, "stage": "fit", "error": "e", "traceback": "t" * 200}]
        if k % 7 == 1
        else [],
        "durations": {"fit": 0.1, "total": 0.2} if k else {},
        "bytes_sent": 10 if k else 0,
        "privacy": {"epsilon": k / 100, "accountant": "rdp"} if k else None,
        "aggregate_info": {"big": "x" * 300},
    }


def _write_run(folder: Path) -> list[dict[str, Any]]:
    folder.mkdir(parents=True)
    records = [_record(k) for k in range(ROUNDS + 1)]
    text = json.dumps({"config": {"rounds": ROUNDS}, "rounds": records})
    (folder / "history.json").write_text(text)
    return records


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (our server)
        return json.loads(response.read())


def _status(url: str) -> int:
    try:
        urllib.request.urlopen(url, timeout=60).close()  # noqa: S310 (our server)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def _check_first_view(view: dict[str, Any], records: list[dict[str, Any]]) -> None:
    assert view["rounds"] == records[-TABLE_ROUNDS:]
    from covey.dashboard import _page

    assert (_page.TABLE_ROUNDS, _page.CHART_POINTS, _page.MAX_PAGE) == (200, 2000, 1000)
    assert view["rounds_from"] == ROUNDS + 1 - TABLE_ROUNDS
    assert view["rounds_total"] == ROUNDS + 1
    assert view["rounds_done"] == ROUNDS
    chart = view["chart"]
    assert len(chart) == CHART_POINTS
    rounds = [p["round"] for p in chart]
    assert rounds == sorted(set(rounds))
    assert rounds[0] == 0
    assert rounds[-1] == ROUNDS
    assert max(b - a for a, b in itertools.pairwise(rounds)) <= 3  # evenly spread
    assert chart == [_page.chart_point(records[k]) for k in rounds]


def test_a_long_run_s_page_opens_with_its_newest_rounds_and_the_whole_run_thinned(
    tmp_path: Path,
) -> None:
    # The page got every round of the run on opening: about 12 MB for 20,000 rounds.
    records = _write_run(tmp_path / "runs" / "long")
    whole = len(json.dumps(records))
    with (
        DashboardServer(tmp_path / "runs", poll=0.05) as server,
        urllib.request.urlopen(server.url + "api/stream?id=long", timeout=60) as stream,  # noqa: S310
    ):
        kind, first = next_event(stream)
        assert kind == "run"
        _check_first_view(first, records)
        assert len(json.dumps(first)) < whole / 5
        _check_first_view(_get(server.url + "api/run?id=long&view=first"), records)
        assert _get(server.url + "api/run?id=long")["rounds"] == records  # the whole run still

        history = tmp_path / "runs" / "long" / "history.json"
        data = json.loads(history.read_text())
        data["rounds"].append(_record(ROUNDS + 1))
        written = history.with_name("history.json.tmp")  # whole, or the page reads it cut short
        written.write_text(json.dumps(data))
        written.replace(history)
        kind, change = next_event(stream, within=60)
        assert kind == "update"  # live rounds come one by one, as before
        assert change["new_rounds"] == [_record(ROUNDS + 1)]


def test_a_chart_point_holds_the_numbers_the_charts_draw() -> None:
    from covey.dashboard._page import chart_point

    point = chart_point(_record(8))
    assert point == {
        "round": 8,
        "central_loss": 1 / 9,
        "central_metrics": {"accuracy": 8 / ROUNDS},
        "durations": {"fit": 0.1, "total": 0.2},
        "bytes_sent": 10,
        "privacy": {"epsilon": 0.08},
        "n_fit": 3,
        "n_failed": 1,
    }
    assert chart_point({"round": 0, "central_loss": True, "privacy": 3}) == {"round": 0}


def test_older_rounds_come_a_bounded_page_at_a_time(tmp_path: Path) -> None:
    records = _write_run(tmp_path / "runs" / "long")
    with DashboardServer(tmp_path / "runs") as server:
        url = server.url + "api/rounds?id=long"
        page = _get(url + "&start=4000&stop=4200")
        assert (page["start"], page["stop"], page["total"]) == (4000, 4200, ROUNDS + 1)
        assert page["rounds"] == records[4000:4200]
        capped = _get(url + "&start=0&stop=5001")
        assert (capped["start"], capped["stop"]) == (0, MAX_PAGE)
        assert capped["rounds"] == records[:MAX_PAGE]
        past = _get(url + "&start=9000&stop=9100")
        assert (past["start"], past["stop"], past["rounds"]) == (ROUNDS + 1, ROUNDS + 1, [])
        for query in ("", "&start=1", "&start=-1&stop=2", "&start=x&stop=2", "&start=5&stop=4"):
            assert _status(url + query) == 400, query
        assert _status(server.url + "api/rounds?id=nope&start=0&stop=1") == 404
        assert _status(server.url + "api/run?id=long&view=most") == 400


def test_a_deployed_run_s_clients_reach_the_page_with_their_newest_rounds(tmp_path: Path) -> None:
    # Each client's rounds (every one of a 20,000-round run) went to the page on opening,
    # and again with each new round.
    from covey.dashboard._app import _delta
    from covey.dashboard._page import first_view
    from covey.dashboard._runs import Run

    def run(rounds: int) -> Run:
        records = [
            {"round": k, "fit_participants": [0] if k else [], "evaluate_participants": [0, 1]}
            for k in range(rounds + 1)
        ]
        return Run("fed", tmp_path, "deployed", rounds=records, clients={0: "a", 1: "b"})

    (a, b) = first_view(run(120))["clients"]
    assert (a["fit_count"], a["fit_rounds"]) == (120, list(range(71, 121)))
    assert (a["evaluate_count"], a["evaluate_rounds"]) == (121, list(range(71, 121)))
    assert (b["fit_count"], b["fit_rounds"], b["evaluate_count"]) == (0, [], 121)
    change = _delta(run(120), run(121))
    assert change is not None
    assert [r["round"] for r in change["new_rounds"]] == [121]
    (a, _) = change["clients"]
    assert (a["fit_count"], a["fit_rounds"]) == (121, list(range(72, 122)))

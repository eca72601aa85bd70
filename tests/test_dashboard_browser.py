"""The dashboard and the HTML report in a real headless Chromium, driven by Selenium.

Screenshots are saved under the test's tmp folder; set ``COVEY_SCREENSHOTS=DIR``
to also copy them there (the docs' images come from such a run).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("selenium", reason="the dev extra installs selenium")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

import covey
from _browser import chromium as headless_chromium
from covey.cli._demo import DemoConfig, run_demo
from covey.core import RoundRecord
from covey.dashboard import DashboardServer, write_report

pytestmark = pytest.mark.slow


# The traces of one plotly chart as plain lists.
TRACES_JS = """
const el = document.getElementById(arguments[0])
  || document.querySelectorAll('.plotly-graph-div')[arguments[1]];
return (el && el.data ? el.data : [])
  .map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)}));
"""


def _screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    assert path.stat().st_size > 10_000
    copy_to = os.environ.get("COVEY_SCREENSHOTS")
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(copy_to) / name)
    return path


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, shared by this module's tests, then quit."""
    with headless_chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


@pytest.fixture
def browser(chromium: Any) -> Any:
    """The shared Chromium on a blank page at the screenshots' window size."""
    chromium.get("about:blank")
    chromium.set_window_size(1400, 1100)
    return chromium


def _wait(driver: Any) -> WebDriverWait[Any]:
    """Wait up to a minute; the page redraws parts of itself, so stale elements are retried."""
    return WebDriverWait(
        driver,
        60,
        poll_frequency=0.05,  # not Selenium's 0.5 s: each wait ends soon after the page is ready
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )


def _traces(driver: Any, chart: str, index: int = -1) -> dict[str, tuple[list[Any], list[Any]]]:
    return {t["name"]: (t["x"], t["y"]) for t in driver.execute_script(TRACES_JS, chart, index)}


def test_live_run_in_browser(browser: Any, tmp_path: Path) -> None:
    """A running simulation: new rounds appear without reload; plotted values match."""
    runs = tmp_path / "runs"
    rounds = 6
    reached = threading.Event()
    go_on = threading.Event()

    def gate(record: RoundRecord) -> None:
        if record.round == 3:  # history.json already holds round 3 here
            reached.set()
            go_on.wait(120)

    result: dict[str, Any] = {}

    def run() -> None:
        config = DemoConfig(clients=20, rounds=rounds, fraction=0.3, seed=3)
        result["live"] = run_demo(config, run_dir=runs / "live", progress=False, on_round=gate)

    # A finished run beside the live one, for the comparison view.
    run_demo(DemoConfig(clients=20, rounds=4, alpha=5.0), run_dir=runs / "calm", progress=False)
    sim = threading.Thread(target=run, daemon=True)
    sim.start()
    try:
        assert reached.wait(120), "the simulation did not reach round 3"
        with DashboardServer(runs, poll=0.1) as server:
            browser.get(server.url + "#/run/live")
            wait = _wait(browser)
            wait.until(lambda d: d.find_elements(By.ID, "round-3"))
            assert not browser.find_elements(By.ID, "round-4")
            assert browser.find_element(By.ID, "status").text == "running"
            browser.execute_script("window.__sameDocument = 'yes';")

            go_on.set()
            wait.until(lambda d: d.find_elements(By.ID, f"round-{rounds}"))
            sim.join(120)
            wait.until(lambda d: d.find_element(By.ID, "status").text == "finished")
            # Still the same document: the rounds came over the event stream, not a reload.
            assert browser.execute_script("return window.__sameDocument;") == "yes"

            history = result["live"].history
            # The charts are redrawn at most once a second: wait for the last rounds.
            points = len(history.metric("loss", "central"))
            wait.until(lambda d: len(_traces(d, "chart-loss")["test loss"][0]) == points)
            rows = browser.find_elements(By.CSS_SELECTOR, "#rounds tbody tr")
            assert [int(r.get_attribute("data-round")) for r in rows] == list(range(rounds + 1))
            expected = {
                ("chart-loss", "test loss"): history.metric("loss", "central"),
                ("chart-loss", "federated loss"): history.metric("loss", "evaluate"),
                ("chart-metrics", "test accuracy"): history.metric("accuracy", "central"),
                ("chart-metrics", "federated accuracy"): history.metric("accuracy", "evaluate"),
            }
            for (chart, name), points in expected.items():
                x, y = _traces(browser, chart)[name]
                assert x == [p[0] for p in points], name
                assert y == pytest.approx([p[1] for p in points], rel=1e-12), name
            clients = _traces(browser, "chart-clients")
            assert clients["fit"][1] == [len(r.fit_participants) for r in history.rounds[1:]]
            moved = _traces(browser, "chart-bytes")
            assert moved["sent"][0] == list(range(1, rounds + 1))
            for name, counted in (("sent", "bytes_sent"), ("received", "bytes_received")):
                mb = [getattr(r, counted) / 1e6 for r in history.rounds[1:]]
                assert moved[name][1] == pytest.approx(mb, rel=1e-12), name
            _screenshot(browser, tmp_path, "dashboard-run.png")

            browser.get(server.url + "#/")
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) == 2)
            browser.set_window_size(1100, 330)
            _screenshot(browser, tmp_path, "dashboard-runs.png")
            browser.set_window_size(1400, 700)
            for box in browser.find_elements(By.CSS_SELECTOR, "#runs input[type=checkbox]"):
                box.click()
            browser.find_element(By.ID, "compare").click()
            wait.until(lambda d: len(_traces(d, "chart-compare")) == 2)
            Select(browser.find_element(By.ID, "compare-metric")).select_by_visible_text(
                "test loss"
            )
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#chart-compare .gtitle"))
            overlaid = _traces(browser, "chart-compare")
            assert overlaid["live"][1] == pytest.approx([v for _, v in history.metric("loss")])
            assert len(overlaid["calm"][0]) == 5
            _screenshot(browser, tmp_path, "dashboard-compare.png")
    finally:
        go_on.set()
        sim.join(120)


def test_report_in_browser(browser: Any, tmp_path: Path) -> None:
    """The static report opens from disk, offline, with every round in its table and plots."""
    rounds = 7
    result = run_demo(
        DemoConfig(clients=10, rounds=rounds, fraction=0.5), run_dir=tmp_path / "r", progress=False
    )
    path = write_report(tmp_path / "r", tmp_path / "report.html")
    browser.get(path.as_uri())
    _wait(browser).until(
        lambda d: d.execute_script("return document.querySelectorAll('.main-svg').length > 0")
    )
    rows = browser.find_elements(By.CSS_SELECTOR, "#rounds tbody tr")
    assert [r.get_attribute("id") for r in rows] == [f"round-{i}" for i in range(rounds + 1)]
    loss = _traces(browser, "", 0)["test loss"]
    points = result.history.metric("loss", "central")
    assert loss[0] == [p[0] for p in points]
    assert loss[1] == pytest.approx([p[1] for p in points], rel=1e-12)
    moved = _traces(browser, "", 3)  # loss, metrics, clients, then the bytes
    sent = [r.bytes_sent / 1e6 for r in result.history.rounds[1:]]  # type: ignore[operator]
    assert moved["sent"][1] == pytest.approx(sent, rel=1e-12)
    _screenshot(browser, tmp_path, "report.png")


class Half(covey.Client):
    """Halves the weights; fails its fit in round 2 when told to."""

    def __init__(self, fail_in_round: int | None = None) -> None:
        self.fail_in_round = fail_in_round

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        if config.get("round") == self.fail_in_round:
            raise OSError("disk full on the site")
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        loss = float(np.abs(weights["w"]).sum())
        return covey.EvaluateResult(loss=loss, num_examples=1, metrics={"accuracy": 1 / (1 + loss)})


def test_deployed_run_in_browser(browser: Any, tmp_path: Path) -> None:
    """A real gRPC federation: its clients connected while it runs, failures with reasons."""
    from covey.deploy import connect, serve

    runs = tmp_path / "runs"
    listening, reached, go_on = threading.Event(), threading.Event(), threading.Event()
    port: list[int] = []

    def gate(record: RoundRecord) -> None:
        if record.round == 2:
            reached.set()
            go_on.wait(120)

    def on_listen(bound: int) -> None:
        port.append(bound)
        listening.set()

    def run_server() -> None:
        serve(
            covey.FedAvg(fraction_fit=1.0, min_fit_clients=2, min_available_clients=3),
            3,
            {"w": np.ones(3)},
            "127.0.0.1:0",
            insecure=True,
            run_dir=runs / "hospitals",
            on_listen=on_listen,
            on_round=gate,
            wait_timeout=60,
        )

    server = threading.Thread(target=run_server, daemon=True)
    server.start()
    clients = []
    try:
        assert listening.wait(60)
        for name, fail in (("st-mary", None), ("city-general", None), ("north-clinic", 2)):
            client = threading.Thread(
                target=connect,
                args=(Half(fail), f"127.0.0.1:{port[0]}"),
                kwargs={"insecure": True, "name": name, "max_attempts": 20},
                daemon=True,
            )
            client.start()
            clients.append(client)
        assert reached.wait(60), "the federation did not reach round 2"
        with DashboardServer(runs, poll=0.1) as dashboard:
            browser.get(dashboard.url + "#/run/hospitals")
            wait = _wait(browser)
            wait.until(lambda d: d.find_elements(By.ID, "round-2"))
            rows = browser.find_elements(By.CSS_SELECTOR, "#clients tbody tr")
            assert {
                r.get_attribute("data-client"): bool(r.find_elements(By.CSS_SELECTOR, ".dot.on"))
                for r in rows
            } == {
                "st-mary": True,
                "city-general": True,
                "north-clinic": True,
            }
            failures = browser.find_element(By.ID, "round-2").text
            assert "north-clinic (fit)" in failures
            assert "disk full on the site" in failures
            assert "st-mary" in browser.find_element(By.ID, "round-1").text
            browser.set_window_size(1400, 1500)  # down to the clients table
            _screenshot(browser, tmp_path, "dashboard-deployed.png")
            # An update draws again only the clients' rows that changed, in the same table.
            browser.execute_script("document.getElementById('clients').dataset.drawn = 'once'")
            go_on.set()
            server.join(120)
            wait.until(lambda d: d.find_element(By.ID, "status").text == "finished")
            wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#clients .dot.on"))
            assert browser.find_elements(By.ID, "round-3")
            table = browser.find_element(By.ID, "clients")
            assert table.get_attribute("data-drawn") == "once"  # not drawn whole again
            rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
            shown = {r.get_attribute("data-client"): r.text for r in rows}
            assert sorted(shown) == ["city-general", "north-clinic", "st-mary"]
            assert all("not connected" in text for text in shown.values())
            assert all(text.split()[-1] == "3" for text in shown.values()), shown  # fit rounds
    finally:
        go_on.set()
        server.join(120)
        for client in clients:
            client.join(60)


def test_privacy_budget_is_plotted(browser: Any, tmp_path: Path) -> None:
    """Rounds that carry a privacy record get a privacy chart with their epsilons."""
    run_demo(DemoConfig(clients=10, rounds=3), run_dir=tmp_path / "runs" / "dp", progress=False)
    path = tmp_path / "runs" / "dp" / "history.json"
    data = json.loads(path.read_text())
    for r in data["rounds"]:
        r["privacy"] = {"epsilon": 0.4 * r["round"], "delta": 1e-5, "noise_multiplier": 1.1}
    path.write_text(json.dumps(data))
    with DashboardServer(tmp_path / "runs") as dashboard:
        browser.get(dashboard.url + "#/run/dp")
        wait = _wait(browser)
        wait.until(lambda d: _traces(d, "chart-privacy"))
        x, y = _traces(browser, "chart-privacy")["epsilon"]
        assert x == [0, 1, 2, 3]
        assert y == pytest.approx([0.0, 0.4, 0.8, 1.2])
        assert "epsilon=0.8000" in browser.find_element(By.ID, "round-2").text
        browser.execute_script("document.getElementById('chart-privacy').scrollIntoView()")
        _screenshot(browser, tmp_path, "dashboard-privacy.png")


def test_a_privacy_value_that_is_no_number_is_left_off_the_charts(
    browser: Any, tmp_path: Path
) -> None:
    """Text, a list or a NaN under a privacy key: no point and no trace, in page and report.

    The report drew a trace for every key with ``epsilon`` in its name, whatever its
    values (an accountant's name among them), and showed a NaN as its file's tag.
    """
    run_demo(DemoConfig(clients=10, rounds=5), run_dir=tmp_path / "runs" / "dp", progress=False)
    path = tmp_path / "runs" / "dp" / "history.json"
    data = json.loads(path.read_text())
    spent = [0.0, {"__float__": "nan"}, 0.2, "n/a", [1, 2], None]
    for r, value in zip(data["rounds"], spent, strict=True):
        r["privacy"] = {"epsilon": value, "epsilon_accountant": "rdp", "delta": 1e-5}
    path.write_text(json.dumps(data))
    with DashboardServer(tmp_path / "runs") as dashboard:
        browser.get(dashboard.url + "#/run/dp")
        _wait(browser).until(lambda d: _traces(d, "chart-privacy"))
        assert _traces(browser, "chart-privacy") == {"epsilon": ([0, 2], [0.0, 0.2])}
    report = write_report(tmp_path / "runs" / "dp", tmp_path / "report.html")
    browser.get(report.as_uri())
    _wait(browser).until(
        lambda d: d.execute_script("return document.querySelectorAll('.main-svg').length > 0")
    )
    charts = browser.execute_script("return document.querySelectorAll('.plotly-graph-div').length")
    assert _traces(browser, "", charts - 1) == {"epsilon": ([0, 2], [0.0, 0.2])}  # the last
    row = browser.find_element(By.ID, "round-1").text
    assert "epsilon=nan, epsilon_accountant=rdp" in row


def test_a_round_run_again_shows_why_its_attempt_was_given_up(browser: Any, tmp_path: Path) -> None:
    """``serve(round_retries=...)`` keeps the attempts given up: the round's row lists them."""
    run_demo(DemoConfig(clients=10, rounds=3), run_dir=tmp_path / "runs" / "re", progress=False)
    path = tmp_path / "runs" / "re" / "history.json"
    data = json.loads(path.read_text())
    said = "round 2: 0 of 2 sampled clients replied; failures: a <b>: client disconnected"
    data["rounds"][2]["aggregate_info"] = {"retried": [said]}
    data["rounds"][3]["aggregate_info"] = {"retried": 7}  # not a list: shown as nothing
    path.write_text(json.dumps(data))
    with DashboardServer(tmp_path / "runs") as dashboard:
        browser.get(dashboard.url + "#/run/re")
        row = _wait(browser).until(lambda d: d.find_element(By.ID, "round-2"))
        (note,) = row.find_elements(By.CSS_SELECTOR, ".fail")
        assert note.text == f"run again: {said}"  # as text: the markup in it is not read
        assert not browser.find_element(By.ID, "round-3").find_elements(By.CSS_SELECTOR, ".fail")


def test_non_finite_values_are_shown_not_plotted(browser: Any, tmp_path: Path) -> None:
    """A NaN or infinite loss or accuracy is shown in its round's row, and left off the chart.

    An accuracy of the text ``"NaN"`` is no number: shown as none (``–``), as ``covey
    runs show`` shows it, not as ``nan``.
    """

    class Same(covey.Client):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            return covey.FitResult(weights=weights, num_examples=1)

    def central(rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
        losses = {1: float("nan"), 2: float("inf")}
        accuracy = {2: float("-inf"), 3: "NaN"}
        return losses.get(rnd, 1.0), {"accuracy": accuracy.get(rnd, 0.5)}

    covey.simulate(
        lambda cid: Same(),
        num_clients=2,
        rounds=3,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights={"w": np.ones(3)},
        evaluate_fn=central,
        run_dir=tmp_path / "runs" / "nan",
    )
    with DashboardServer(tmp_path / "runs") as dashboard:
        browser.get(dashboard.url + "#/run/nan")
        wait = _wait(browser)
        wait.until(lambda d: d.find_elements(By.ID, "round-3"))
        shown = [
            [td.text for td in browser.find_elements(By.CSS_SELECTOR, f"#round-{n} td")[1:3]]
            for n in range(4)
        ]
        assert shown == [
            ["1.0000", "0.5000"],
            ["nan", "0.5000"],
            ["inf", "-inf"],
            ["1.0000", "–"],
        ]
        wait.until(lambda d: _traces(d, "chart-loss"))
        assert _traces(browser, "chart-loss")["test loss"] == ([0, 3], [1.0, 1.0])


MODES_JS = """
return ['chart-loss', 'chart-clients', 'chart-durations', 'chart-bytes'].map(id => {
  const el = document.getElementById(id);
  const data = el && el.data ? el.data : [];
  return data.map(t => [id, t.type || 'scatter', t.mode || '', t.x.length]);
}).flat();
"""


def _write_run(folder: Path, rounds: int) -> None:
    folder.mkdir(parents=True)
    records = [
        {
            "round": k,
            "central_loss": 1.0 / (k + 1),
            "central_metrics": {"accuracy": k / rounds},
            "fit_participants": [0, 1] if k else [],
            "evaluate_participants": [],
            "durations": {"fit": 0.1, "total": 0.2} if k else {},
            "bytes_sent": 10 if k else 0,
            "bytes_received": 5 if k else 0,
        }
        for k in range(rounds + 1)
    ]
    text = json.dumps({"config": {"rounds": rounds}, "rounds": records})
    (folder / "history.json").write_text(text)


def test_a_long_run_is_drawn_as_lines_every_round_kept(browser: Any, tmp_path: Path) -> None:
    """A run of thousands of rounds drew a marker (or a bar) per round on every chart.

    On each new round the page redraws its charts: a 20,000-round run kept the
    browser busy for a minute, past Chromium's renderer timeout. Past 500
    rounds the series are plain lines; each round is still a point, and a
    short run keeps its markers and bars.
    """
    _write_run(tmp_path / "runs" / "long", 600)
    _write_run(tmp_path / "runs" / "short", 3)
    with DashboardServer(tmp_path / "runs") as dashboard:
        modes = {}
        for name in ("long", "short"):
            browser.get(dashboard.url + "#/run/" + name)
            browser.refresh()
            _wait(browser).until(lambda d: len(d.execute_script(MODES_JS)) >= 6)
            modes[name] = browser.execute_script(MODES_JS)
    long_drawn = {(chart, kind, mode) for chart, kind, mode, _ in modes["long"]}
    assert long_drawn == {
        ("chart-loss", "scatter", "lines"),
        ("chart-clients", "scatter", "lines"),
        ("chart-durations", "scatter", "lines"),
        ("chart-bytes", "scatter", "lines"),
    }
    assert {n for chart, _, _, n in modes["long"] if chart == "chart-loss"} == {601}
    assert {n for chart, _, _, n in modes["long"] if chart != "chart-loss"} == {600}
    short_drawn = {(chart, kind, mode) for chart, kind, mode, _ in modes["short"]}
    assert short_drawn == {
        ("chart-loss", "scatter", "lines+markers"),
        ("chart-clients", "bar", ""),
        ("chart-durations", "scatter", "lines+markers"),
        ("chart-bytes", "bar", ""),
    }


def _table_rounds(driver: Any) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#rounds tbody tr")
    return [r.get_attribute("data-round") for r in rows]


def test_a_long_run_s_table_shows_its_newest_rounds_and_earlier_ones_on_demand(
    browser: Any, tmp_path: Path
) -> None:
    """The rounds table drew a row per round: a 20,000-round run took most of a minute to open.

    It shows the newest 200 rounds; a button adds 200 earlier ones at a time,
    and a live run's new rounds push the oldest rows out.
    """
    _write_run(tmp_path / "runs" / "long", 450)
    with DashboardServer(tmp_path / "runs", poll=0.05) as dashboard:
        browser.get(dashboard.url + "#/run/long")
        browser.refresh()
        wait = _wait(browser)
        wait.until(lambda d: d.find_elements(By.ID, "round-450"))
        assert _table_rounds(browser) == [str(k) for k in range(251, 451)]
        assert "251 earlier rounds not shown" in browser.find_element(By.ID, "not-shown").text
        # Every round is still on the charts.
        assert len(_traces(browser, "chart-loss")["test loss"][0]) == 451
        browser.find_element(By.ID, "earlier").click()
        wait.until(lambda d: d.find_elements(By.ID, "round-51"))
        assert _table_rounds(browser) == [str(k) for k in range(51, 451)]
        assert browser.find_element(By.ID, "earlier").text == "Show 51 earlier rounds"
        browser.find_element(By.ID, "earlier").click()
        wait.until(lambda d: d.find_elements(By.ID, "round-0"))
        assert _table_rounds(browser) == [str(k) for k in range(451)]
        assert not browser.find_elements(By.ID, "earlier")

        browser.refresh()
        wait.until(lambda d: d.find_elements(By.ID, "round-450"))
        history = tmp_path / "runs" / "long" / "history.json"
        data = json.loads(history.read_text())
        for k in range(451, 454):
            data["rounds"].append({**data["rounds"][-1], "round": k})
        history.write_text(json.dumps(data))
        wait.until(lambda d: d.find_elements(By.ID, "round-453"))
        assert _table_rounds(browser) == [str(k) for k in range(254, 454)]
        assert "254 earlier rounds" in browser.find_element(By.ID, "not-shown").text


def test_a_run_past_the_chart_points_opens_thinned_and_fetches_its_older_rows(
    browser: Any, tmp_path: Path
) -> None:
    """The page opened with every round of the run: 12 MB for a run of 20,000 rounds.

    It gets the newest rounds whole and the whole run thinned for the charts,
    from its first round to its last; older rows are fetched a page at a time.
    """
    _write_run(tmp_path / "runs" / "long", 2600)
    with DashboardServer(tmp_path / "runs", poll=0.05) as dashboard:
        browser.get(dashboard.url + "#/run/long")
        browser.refresh()
        wait = _wait(browser)
        wait.until(lambda d: d.find_elements(By.ID, "round-2600"))
        assert _table_rounds(browser) == [str(k) for k in range(2401, 2601)]
        x, y = _traces(browser, "chart-loss")["test loss"]
        assert len(x) == 2000
        assert (x[0], x[-1], y[-1]) == (0, 2600, 1 / 2601)
        x, y = _traces(browser, "chart-clients")["fit"]
        assert (x[-1], set(y)) == (2600, {2})
        browser.find_element(By.ID, "earlier").click()
        wait.until(lambda d: d.find_elements(By.ID, "round-2201"))
        assert _table_rounds(browser) == [str(k) for k in range(2201, 2601)]
        assert "2201 earlier rounds not shown" in browser.find_element(By.ID, "not-shown").text

        history = tmp_path / "runs" / "long" / "history.json"
        data = json.loads(history.read_text())
        data["rounds"].append({**data["rounds"][-1], "round": 2601})
        history.write_text(json.dumps(data))
        wait.until(lambda d: d.find_elements(By.ID, "round-2601"))
        wait.until(lambda d: _traces(d, "chart-loss")["test loss"][0][-1] == 2601)
        assert len(_traces(browser, "chart-loss")["test loss"][0]) == 2001


COUNT_JS = """
window.__updates = 0;
window.__draws = 0;
stream.addEventListener("update", () => { window.__updates += 1; });
const react = Plotly.react;
Plotly.react = (element, ...rest) => {
  if (element.id === "chart-loss") window.__draws += 1;
  return react(element, ...rest);
};
"""


def test_a_fast_live_run_s_charts_are_redrawn_less_often_than_rounds_come(
    browser: Any, tmp_path: Path
) -> None:
    """Each new round redrew every chart: a fast run of thousands of rounds froze the page.

    The charts are redrawn at most once a second; the last redraw holds every round.
    """
    _write_run(tmp_path / "runs" / "live", 1000)
    history = tmp_path / "runs" / "live" / "history.json"
    data = json.loads(history.read_text())
    with DashboardServer(tmp_path / "runs", poll=0.01) as dashboard:
        browser.get(dashboard.url + "#/run/live")
        browser.refresh()
        wait = _wait(browser)
        wait.until(lambda d: d.find_elements(By.ID, "round-1000"))
        browser.execute_script(COUNT_JS)
        for k in range(1001, 1041):
            data["rounds"].append({**data["rounds"][-1], "round": k})
            history.write_text(json.dumps(data))
            last = f"round-{k}"
            wait.until(lambda d: d.find_elements(By.ID, last))  # noqa: B023 (waited for here)
        wait.until(lambda d: len(_traces(d, "chart-loss")["test loss"][0]) == 1041)
        updates, draws = browser.execute_script("return [window.__updates, window.__draws];")
    assert updates >= 20
    assert draws * 2 <= updates


# The titles of a chart's axis and of the chart itself.
TITLES_JS = """
const el = document.getElementById(arguments[0]);
return el && el.layout ? [el.layout.xaxis.title.text, el.layout.title.text] : null;
"""


def test_an_asynchronous_run_is_shown_in_updates(browser: Any, tmp_path: Path) -> None:
    """A FedBuff run's page, and the list beside a synchronous run, count updates, not rounds."""

    def central(update: int, weights: Any) -> tuple[float, dict[str, float]]:
        return float(np.abs(weights["w"]).sum()), {}

    runs = tmp_path / "runs"
    strategy = covey.FedBuff(buffer_size=2)
    covey.simulate(
        lambda cid: Half(), 4, 3, strategy, {"w": np.ones(2)}, central, run_dir=runs / "fedbuff"
    )
    with DashboardServer(runs) as dashboard:
        browser.get(dashboard.url + "#/run/fedbuff")
        wait = _wait(browser)
        wait.until(lambda d: d.find_elements(By.ID, "round-3"))
        wait.until(lambda d: d.execute_script(TITLES_JS, "chart-clients"))
        assert browser.execute_script(TITLES_JS, "chart-clients") == [
            "update",
            "Clients per update",
        ]
        assert browser.execute_script(TITLES_JS, "chart-loss")[0] == "update"
        assert browser.execute_script(TITLES_JS, "chart-durations")[1] == "Update duration (s)"
        header = browser.find_element(By.CSS_SELECTOR, "#rounds thead th").text
        assert header == "update"
        facts = browser.find_element(By.ID, "facts").text
        assert "updates" in facts
        assert "rounds" not in facts
        assert "Rounds" not in browser.find_element(By.ID, "main").text
        run_demo(DemoConfig(clients=4, rounds=2), run_dir=runs / "fedavg", progress=False)
        browser.get(dashboard.url + "#/")
        table = wait.until(lambda d: d.find_element(By.ID, "runs"))
        headers = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
        assert "updates / rounds" in headers
        row = browser.find_element(By.CSS_SELECTOR, 'tr[data-run-id="fedbuff"]')
        assert "3 / 3 updates" in row.text
        row = browser.find_element(By.CSS_SELECTOR, 'tr[data-run-id="fedavg"]')
        assert "2 / 2 rounds" in row.text
        # A synchronous run's page is as it was.
        browser.get(dashboard.url + "#/run/fedavg")
        wait.until(lambda d: d.find_elements(By.ID, "round-2"))
        wait.until(lambda d: d.execute_script(TITLES_JS, "chart-clients"))
        assert browser.execute_script(TITLES_JS, "chart-clients") == ["round", "Clients per round"]
        assert browser.find_element(By.CSS_SELECTOR, "#rounds thead th").text == "round"

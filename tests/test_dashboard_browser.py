"""The dashboard and the HTML report in a real headless Chromium, driven by Selenium.

Screenshots are saved under the test's tmp folder; set ``COVEY_SCREENSHOTS=DIR``
to also copy them there (the docs' images come from such a run).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("selenium", reason="the dev extra installs selenium")
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from covey.cli._demo import DemoConfig, run_demo
from covey.core import RoundRecord
from covey.dashboard import DashboardServer, write_report

pytestmark = pytest.mark.slow

CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1100",
)

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


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, quit (with its driver) at the end."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if chromium is None or driver_bin is None:
        pytest.fail("Chromium and chromedriver are needed: `make test` installs them (apt)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_bin))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


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
            wait = WebDriverWait(browser, 60)
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
            _screenshot(browser, tmp_path, "dashboard-run.png")

            browser.get(server.url + "#/")
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) == 2)
            _screenshot(browser, tmp_path, "dashboard-runs.png")
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
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return document.querySelectorAll('.main-svg').length > 0")
    )
    rows = browser.find_elements(By.CSS_SELECTOR, "#rounds tbody tr")
    assert [r.get_attribute("id") for r in rows] == [f"round-{i}" for i in range(rounds + 1)]
    loss = _traces(browser, "", 0)["test loss"]
    points = result.history.metric("loss", "central")
    assert loss[0] == [p[0] for p in points]
    assert loss[1] == pytest.approx([p[1] for p in points], rel=1e-12)
    _screenshot(browser, tmp_path, "report.png")

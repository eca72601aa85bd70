"""Hostile names in a real headless Chromium: chart labels and the runs list stay plain text.

Run, client and metric names come from folder names and from clients; the page
and the report must show them as written, never as markup (plotly.js reads a
subset of HTML in trace names and titles, links included).
"""

from __future__ import annotations

import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("selenium", reason="the dev extra installs selenium")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import covey
from _browser import chromium as headless_chromium
from covey.dashboard import DashboardServer, write_report

pytestmark = pytest.mark.slow

LINK = '<a href="https://example.invalid/">click me</a>'
BOLD = "<b>bold</b> & x<5"

LEGEND_JS = "return [...document.querySelectorAll('.legendtext')].map(t => t.textContent)"
LINKS_JS = "return document.querySelectorAll('svg a').length"


class Hostile(covey.Client):
    """Reports metrics whose names are markup."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        loss = float(np.abs(weights["w"]).sum())
        return covey.EvaluateResult(loss=loss, num_examples=1, metrics={LINK: 0.2, BOLD: 0.3})


def _simulate(run_dir: Path) -> None:
    covey.simulate(
        lambda cid: Hostile(),
        num_clients=2,
        rounds=2,
        strategy=covey.FedAvg(),
        initial_weights={"w": np.ones(3)},
        run_dir=run_dir,
    )


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, then quit."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    with headless_chromium(profile, window="1200,900") as driver:
        yield driver


def _wait(driver: Any) -> WebDriverWait[Any]:
    return WebDriverWait(
        driver,
        60,
        poll_frequency=0.05,  # not Selenium's 0.5 s: each wait ends soon after the page is ready
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )


def test_markup_in_names_is_shown_as_text(browser: Any, tmp_path: Path) -> None:
    """Metric and run names reach the charts as text: no bold, no link in the legend."""
    runs = tmp_path / "runs"
    _simulate(runs / "it's <b>bold</b> & x<5")
    _simulate(runs / "plain")
    with DashboardServer(runs, poll=0.1) as server:
        run_id = "it's <b>bold</b> & x<5"
        browser.get(server.url + "#/run/" + urllib.parse.quote(run_id, safe=""))
        wait = _wait(browser)
        wait.until(lambda d: f"federated {LINK}" in d.execute_script(LEGEND_JS))
        assert f"federated {BOLD}" in browser.execute_script(LEGEND_JS)
        assert browser.execute_script(LINKS_JS) == 0
        assert not browser.find_elements(By.CSS_SELECTOR, "svg b, svg [style*='bold']")
        ids = ",".join(urllib.parse.quote(i, safe="") for i in (run_id, "plain"))
        browser.get(server.url + "#/compare/" + ids)
        wait.until(lambda d: run_id in d.execute_script(LEGEND_JS))
        assert browser.execute_script(LINKS_JS) == 0
    report = write_report(runs / "it's <b>bold</b> & x<5", tmp_path / "report.html")
    browser.get(report.as_uri())
    wait.until(lambda d: f"federated {LINK}" in d.execute_script(LEGEND_JS))
    assert f"federated {BOLD}" in browser.execute_script(LEGEND_JS)
    assert browser.execute_script(LINKS_JS) == 0


def test_a_long_run_name_leaves_the_columns_in_view(browser: Any, tmp_path: Path) -> None:
    """A run named with 250 characters wraps; its status stays inside the window."""
    runs = tmp_path / "runs"
    _simulate(runs / ("L" * 250))
    with DashboardServer(runs, poll=0.1) as server:
        browser.get(server.url)
        wait = _wait(browser)
        cell = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#runs td.status-finished"))
        right = browser.execute_script("return arguments[0].getBoundingClientRect().right", cell)
        assert right <= browser.execute_script("return document.documentElement.clientWidth")


def test_a_damaged_run_says_so_until_it_is_repaired(browser: Any, tmp_path: Path) -> None:
    """The page names a damaged history.json once, and drops the message when it reads again."""
    runs = tmp_path / "runs"
    _simulate(runs / "kept")
    (runs / "watched").mkdir()  # its history.json alone, no run.sqlite to read instead
    shutil.copy(runs / "kept" / "history.json", runs / "watched" / "history.json")
    history = runs / "watched" / "history.json"
    good = history.read_text()
    with DashboardServer(runs, poll=0.1) as server:
        browser.get(server.url + "#/run/watched")
        wait = _wait(browser)
        wait.until(lambda d: d.find_elements(By.ID, "round-2"))
        errors = "#main > p.fail"
        for damaged, says in (("{not json", "property name"), ("[1, 2", "delimiter")):
            history.write_text(damaged)

            def shown(d: Any, text: str = says) -> bool:
                return text in d.find_element(By.CSS_SELECTOR, errors).text

            wait.until(shown)
        assert len(browser.find_elements(By.CSS_SELECTOR, errors)) == 1
        history.write_text(good)  # repaired: the same rounds as before
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, errors))
        assert browser.find_elements(By.ID, "round-2")


def test_a_damaged_history_beside_a_run_database_is_shown_from_it(
    browser: Any, tmp_path: Path
) -> None:
    """A history.json cut short by a kill: the rounds come from run.sqlite, and the page says so.

    The run was listed as unreadable, and its page showed only the error,
    though its run.sqlite kept every round.
    """
    runs = tmp_path / "runs"
    _simulate(runs / "kept")
    history = runs / "kept" / "history.json"
    good = history.read_text()
    with DashboardServer(runs, poll=0.1) as server:
        browser.get(server.url + "#/run/kept")
        wait = _wait(browser)
        wait.until(lambda d: d.find_elements(By.ID, "round-2"))
        history.write_text(good[: len(good) // 2])

        def warned(d: Any) -> bool:
            found = d.find_elements(By.ID, "warning")
            return bool(found) and f"cannot read {history}" in found[0].text

        wait.until(warned)
        said = browser.find_element(By.ID, "warning").text
        assert f"its rounds were read from {runs / 'kept' / 'run.sqlite'} instead" in said
        assert browser.find_elements(By.ID, "round-2")
        assert not browser.find_elements(By.CSS_SELECTOR, "#main > p.fail")
        browser.get(server.url + "#/")
        row = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '#runs tr[data-run-id="kept"]'))
        assert "finished" in row.text
        assert "history.json damaged: read from run.sqlite" in row.text
        browser.get(server.url + "#/run/kept")
        wait.until(lambda d: d.find_elements(By.ID, "warning"))
        history.write_text(good)  # repaired: the note goes
        wait.until(lambda d: not d.find_elements(By.ID, "warning"))
        assert browser.find_elements(By.ID, "round-2")

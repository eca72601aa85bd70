"""The dashboard over many runs: the list's JSON, cold and cached, and the page in Chromium.

Makes ``--runs`` small simulated runs (seeded; 1 to 5 rounds of 4 clients each)
in a temporary folder, serves them on 127.0.0.1 and measures:

1. ``GET /api/runs`` the first time (every run read from disk) and then
   (runs cached until their files change): median of ``--repeat`` requests;
2. with Chromium and chromedriver installed, the time from opening the page to
   every run's row shown (plotly.js, 4.8 MB, is part of every page load).

Usage:
    python benchmarks/dashboard_many_runs.py [--runs 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

import covey
from covey.dashboard import DashboardServer


class Shrink(covey.Client):
    """Scales the weights down; its loss shrinks with them."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] * 0.9}, num_examples=1)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        loss = float(np.abs(weights["w"]).sum())
        return covey.EvaluateResult(loss=loss, num_examples=1, metrics={"accuracy": 1 / (1 + loss)})


def make_runs(root: Path, count: int) -> None:
    """``count`` finished simulated runs under ``root``."""
    for i in range(count):
        covey.simulate(
            lambda cid: Shrink(),
            4,
            1 + i % 5,
            covey.FedAvg(),
            {"w": np.ones(3)},
            run_dir=root / f"sim-{i:03d}",
            seed=i,
        )


def fetch(url: str) -> tuple[float, int]:
    """Seconds to fetch ``url`` and the bytes received."""
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 (our server)
        size = len(response.read())
    return time.perf_counter() - start, size


def page_load(url: str, rows: int) -> float | None:
    """Seconds from opening the page to ``rows`` rows in its list (None without Chromium)."""
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_bin is None:
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_bin))
        try:
            start = time.perf_counter()
            driver.get(url)
            WebDriverWait(driver, 120).until(
                lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) >= rows
            )
            return time.perf_counter() - start
        finally:
            driver.quit()


def main() -> None:
    """Make the runs, serve them, print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        make_runs(root, args.runs)
        with DashboardServer(root, port=0) as server:
            cold, size = fetch(server.url + "api/runs")
            warm = statistics.median(fetch(server.url + "api/runs")[0] for _ in range(args.repeat))
            page = page_load(server.url, args.runs)
    print(f"runs: {args.runs}; /api/runs: {size / 1000:.1f} kB")
    print(f"/api/runs first request: {cold * 1000:.0f} ms; cached: {warm * 1000:.1f} ms")
    print("page load to every row: " + ("no Chromium" if page is None else f"{page:.2f} s"))


if __name__ == "__main__":
    main()

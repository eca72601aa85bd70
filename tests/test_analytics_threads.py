"""Queries answered at once by the same sites (threads in one process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from covey.analytics import Policy, Site, query


def test_queries_in_threads_over_the_same_sites_give_each_its_own_answer() -> None:
    # the sites' one DuckDB connection was shared by the threads: queries failed with
    # "ResourceInUse error in DuckDB", and some read another query's rows
    rng = np.random.default_rng(0)
    frames = [
        pd.DataFrame({"g": rng.choice(["a", "b"], 2000), "x": rng.uniform(0, 100, 2000)})
        for _ in range(2)
    ]
    policy = Policy(bounds={"x": (0, 100)}, domains={"g": ["a", "b"]}, min_group_size=1)
    sites = [Site({"t": f}, policy, name=f"s{i}") for i, f in enumerate(frames)]
    pooled = pd.concat(frames)

    def ask(threshold: int) -> tuple[int, pd.DataFrame]:
        sql = f"SELECT g, COUNT(*), AVG(x), MEDIAN(x) FROM t WHERE x > {threshold} GROUP BY g"  # noqa: S608
        return threshold, query(sites, sql, secure=False).set_index("g")

    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(ask, range(0, 90, 3)))
    for threshold, got in answers:
        want = pooled[pooled.x > threshold].groupby("g").x
        np.testing.assert_allclose(got["COUNT(*)"], want.count())
        np.testing.assert_allclose(got["AVG(x)"], want.mean())
        np.testing.assert_allclose(got["MEDIAN(x)"], want.median(), atol=1e-3)


@pytest.mark.parametrize("epsilon", [None, 1.0])
def test_secure_queries_in_threads_over_the_same_sites_are_all_answered(
    epsilon: float | None,
) -> None:
    # Each site kept the state of one secure-aggregation run: the second analyst's run
    # replaced the first's, and 8 of 10 queries failed ("a newer run replaced it").
    rng = np.random.default_rng(1)
    frames = [pd.DataFrame({"x": rng.uniform(0, 100, 300)}) for _ in range(3)]
    budget = None if epsilon is None else 100.0
    policy = Policy(bounds={"x": (0, 100)}, min_group_size=1, epsilon=budget)
    sites = [Site({"t": f}, policy, name=f"s{i}") for i, f in enumerate(frames)]
    pooled = pd.concat(frames)

    def ask(threshold: int) -> tuple[int, float]:
        sql = f"SELECT COUNT(*) FROM t WHERE x > {threshold}"  # noqa: S608
        return threshold, float(query(sites, sql, epsilon=epsilon).iloc[0, 0])

    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(ask, range(0, 90, 10)))
    for threshold, got in answers:
        want = int((pooled.x > threshold).sum())
        if epsilon is None:
            assert got == want
        else:  # noise of scale 1 / epsilon, split among the sites
            assert abs(got - want) < 30
    if epsilon is not None:
        assert len({round(s.epsilon_spent, 9) for s in sites}) == 1


def test_the_first_dp_accounting_in_threads_at_once_sees_the_whole_library() -> None:
    # The library was loaded by importlib's LazyLoader, which lets a second thread read
    # the module while the first still runs it (before Python 3.13): two concurrent DP
    # queries failed with "module 'dp_accounting' has no attribute 'LaplaceDpEvent'".
    script = textwrap.dedent(
        """
        import threading
        from covey.analytics import _dp
        start, errors = threading.Barrier(6), []
        def cost():
            start.wait()
            try:
                _dp.cost("laplace", 1.0, 1, 1e-6)
            except Exception as exc:
                errors.append(repr(exc))
        threads = [threading.Thread(target=cost) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(errors)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"

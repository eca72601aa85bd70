"""Queries answered at once by the same sites (threads in one process)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

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

"""Quantiles under DP: the bisection's bins are few, so their noise does not swamp the rank."""

from __future__ import annotations

import numpy as np
import pandas as pd

from covey.analytics import Policy, Site, query


def test_a_dp_median_lands_near_the_pooled_median() -> None:
    # with 1024 bins a stage, the noise of the ~500 bins below the median added up
    # past the 900 records: at epsilon 0.5 the median of ages near 55 came back
    # as 0.8 or 119.9, at the ends of the bounds
    rng = np.random.default_rng(9)
    frames = [pd.DataFrame({"age": rng.normal(55, 15, 300).clip(0, 120)}) for _ in range(3)]
    policy = Policy(bounds={"age": (0, 120)}, min_group_size=5, max_epsilon=100.0)
    sites = [Site({"t": f}, policy, name=f"s{i}") for i, f in enumerate(frames)]
    true = float(pd.concat(frames)["age"].median())
    errors = []
    for i in range(8):  # other queries: the sites' caches would give the same answer
        sql = f"SELECT MEDIAN(age) FROM t WHERE age > -{i + 1}"  # noqa: S608
        df = query(sites, sql, epsilon=0.5)
        errors.append(abs(float(df.iloc[0, 0]) - true))
    assert float(np.mean(errors)) < 6.0, errors  # the ages' spread is 15

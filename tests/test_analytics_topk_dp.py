"""APPROX_TOP_K under DP: noise never grows a value that no record holds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covey.analytics import Policy, Site, _stats, query

VALUES = ["diabetes"] * 40 + ["asthma"] * 30 + ["copd"] * 20 + ["flu"] * 10


def _sites() -> list[Site]:
    rng = np.random.default_rng(3)
    policy = Policy(min_group_size=10, epsilon=1000.0, domains={"sex": ["F", "M"]})
    frames = [
        pd.DataFrame({"cond": rng.choice(VALUES, 300), "sex": rng.choice(["F", "M"], 300)})
        for _ in range(3)
    ]
    return [Site({"t": f}, policy, name=f"s{i}") for i, f in enumerate(frames)]


@pytest.mark.parametrize("secure", [True, False])
def test_strong_noise_gives_fewer_values_not_made_up_ones(
    secure: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # at epsilon 1 the noise of one of each prefix's 257 extensions passed the
    # minimum group size: the answer was byte strings no site holds ('\x19\x0c\x048g')
    monkeypatch.setattr(_stats, "TOPK_FALSE_CHANCE", 1e-6, raising=False)  # never, in a test
    sql = "SELECT sex, APPROX_TOP_K(cond, 3) FROM t GROUP BY sex"
    df = query(_sites(), sql, epsilon=1.0, secure=secure)
    for values in df["APPROX_TOP_K(cond, 3)"]:
        assert set(values) <= set(VALUES), values


def test_weak_noise_still_finds_the_most_frequent_values() -> None:
    sql = "SELECT sex, APPROX_TOP_K(cond, 3) FROM t GROUP BY sex"
    df = query(_sites(), sql, epsilon=100.0, mechanism="gaussian")
    assert df["APPROX_TOP_K(cond, 3)"].tolist() == [["diabetes", "asthma", "copd"]] * 2

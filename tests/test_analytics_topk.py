"""APPROX_TOP_K without noise: the k most frequent values, or a refusal naming the limit."""

from __future__ import annotations

import pandas as pd
import pytest

from covey.analytics import Policy, QueryError, Site, _stats, query


def _site(values: list[str], min_group_size: int = 5) -> list[Site]:
    return [Site({"t": pd.DataFrame({"s": values})}, Policy(min_group_size=min_group_size))]


def test_the_most_frequent_value_is_found_under_many_heavier_prefixes() -> None:
    # 70 first bytes carry 50 records each, over values of 5; '~top' (40) is alone
    # under '~': the trie kept the 64 heaviest prefixes and pruned it at the first byte
    values = [chr(0x30 + i) + str(j) for i in range(70) for j in range(10) for _ in range(5)]
    values += ["~top"] * 40
    df = query(_site(values), "SELECT APPROX_TOP_K(s, 3) FROM t", secure=False)
    assert df.iloc[0, 0] == ["~top", "00", "01"]
    assert df.attrs["precision"]["APPROX_TOP_K(s, 3)"] == {"counts": [[40, 5, 5]]}


@pytest.mark.parametrize("k", [80, 100])
def test_k_past_64_values_gives_k_values(k: int) -> None:
    # the trie grew at most 64 prefixes a stage: k of 80 or 100 gave 64 values
    names = [f"p{i:03d}" for i in range(90)]
    values = [name for i, name in enumerate(names) for _ in range(20 + i)]
    df = query(_site(values), f"SELECT APPROX_TOP_K(s, {k}) FROM t", secure=False)  # noqa: S608
    assert df.iloc[0, 0] == names[::-1][:k]


def test_a_limit_that_could_hide_a_top_value_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_stats, "MAX_PREFIXES", 4)
    values = [chr(0x61 + i) + str(j) for i in range(10) for j in range(10) for _ in range(2)]
    with pytest.raises(QueryError, match=r"APPROX_TOP_K\(s, 1\): more than 4 prefixes of 's'"):
        query(_site([*values, *["zz"] * 15], 1), "SELECT APPROX_TOP_K(s, 1) FROM t", secure=False)
    # left out at the limit but lighter than the answer: the answer stands
    values = [chr(0x61 + i) for i in range(10) for _ in range(10 + i)]
    df = query(_site(values, 1), "SELECT APPROX_TOP_K(s, 3) FROM t", secure=False)
    assert df.iloc[0, 0] == ["j", "i", "h"]

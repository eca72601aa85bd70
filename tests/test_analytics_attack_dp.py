"""A server asking for noise too weak to stand in for the minimum group size."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest

from covey.analytics import TASK_KIND, Policy, PolicyError, Site, query
from covey.clients import run_task
from covey.core import Task

SQL = "SELECT sex, COUNT(*), SUM(salary) FROM t GROUP BY sex"


def _frame() -> pd.DataFrame:
    # one record is the whole of group "X": its salary is what a server wants
    sex = ["F"] * 30 + ["M"] * 30 + ["X"]
    salary = [50_000.0] * 60 + [123_456.0]
    return pd.DataFrame({"sex": sex, "salary": salary})


def _policy(**dp: Any) -> Policy:
    return Policy(
        bounds={"salary": (0, 2e5)}, domains={"sex": ["F", "M", "X"]}, min_group_size=10, **dp
    )


def _dishonest(site: Site, multiplier: float, **dp: Any) -> dict[str, Any]:
    """A request no honest query makes: a noise multiplier that is next to no noise."""
    request = {
        "op": "answer",
        "sql": SQL,
        "secure": False,
        "domains": {"sex": ["F", "M", "X"]},
        "stats": [
            {"op": "count", "sensitivity": 1.0},
            {"op": "count_col", "col": "salary", "sensitivity": 1.0},
            {"op": "sum", "col": "salary", "sensitivity": 2e5},
        ],
        "dp": {"mechanism": "laplace", "multiplier": multiplier, "shares": 1, **dp},
    }
    reply = run_task(site, 0, Task(TASK_KIND, 1, payload=request))
    assert reply.error is None, reply.error
    assert isinstance(reply.result, dict)
    return reply.result


@pytest.mark.parametrize(
    "dp",
    [
        {},  # a policy without DP settings withholds whatever the request says
        {"max_epsilon": 1.0},
        # a budget large enough to pay for it: charged, and withheld all the same
        {"epsilon": 1e10, "max_epsilon": 1.0},
        {"epsilon": 1.0, "max_epsilon": 1e10},  # the budget refuses it first
    ],
)
def test_a_tiny_noise_multiplier_does_not_unlock_a_group_of_one(dp: dict[str, Any]) -> None:
    site = Site({"t": _frame()}, _policy(**dp))
    result = _dishonest(site, 1e-9, releases=1)  # and it claims a query of one release
    if dp.get("epsilon") == 1.0:
        assert "privacy budget cannot pay for this answer" in result["refused"]
        return
    counts, _, sums = (np.asarray(v, dtype=float) for v in result["vectors"])
    # F and M (30 each) are answered; the one record of X is withheld, not read
    assert counts[:2] == pytest.approx([30, 30], abs=1e-3)
    assert abs(counts[2]) < 1e-3
    assert abs(sums[2]) < 1.0


def test_noise_as_strong_as_the_policy_asks_skips_withholding() -> None:
    site = Site({"t": _frame()}, _policy(max_epsilon=1.0))
    # one release at multiplier 100: epsilon 0.01, within the site's level
    result = _dishonest(site, 100.0)
    counts = np.asarray(result["vectors"][0], dtype=float)
    assert counts[2] != 0.0  # noise on the group of one, not a withheld zero


@pytest.mark.parametrize("secure", [False, True])
def test_an_honest_dp_query_within_the_level_is_answered_without_withholding(
    secure: bool,
) -> None:
    policy = _policy(epsilon=10.0, max_epsilon=1.0)
    sites = [Site({"t": _frame()}, policy, name=f"s{i}") for i in range(2)]
    df = query(sites, SQL, secure=secure, epsilon=1.0)
    assert df.attrs["privacy"]["withholding"] == []
    weak = query(sites, SQL + " ", secure=secure, epsilon=2.0)
    assert weak.attrs["privacy"]["withholding"] == ["s0", "s1"]


@pytest.mark.parametrize("secure", [False, True])
def test_a_where_that_overflows_on_one_record_refuses_nothing(secure: bool) -> None:
    # A site refused whenever DuckDB's WHERE failed on a row: a query whose WHERE
    # overflowed on one record's salary (and on no other) was refused, at no cost
    # and without noise, so that bisecting on K read the salary in ~13 queries at
    # epsilon 0.01 each. The row is now left out, as one its WHERE is false on.
    frame = _frame().assign(salary=lambda f: f["salary"].astype("int64"))
    policy = Policy(bounds={"salary": (0, 2e5)}, min_group_size=1)
    sites = [Site({"t": frame}, policy, name=f"s{i}") for i in range(2)]
    sql = "SELECT COUNT(*) FROM t WHERE salary * salary * {k} > 5 AND sex = 'X'"
    fits = (2**63 - 1) // 123_456**2
    df = query(sites, sql.format(k=fits), secure=secure)  # 123,456 * 123,456 * k fits
    assert df.attrs["refused"] == {}
    assert float(df.iloc[0, 0]) == 2.0
    df = query(sites, sql.format(k=fits + 1), secure=secure)  # and overflows: as if false
    none = query(sites, "SELECT COUNT(*) FROM t WHERE salary < 0 AND sex = 'X'", secure=secure)
    assert df.attrs["refused"] == none.attrs["refused"] == {}
    assert df.equals(none)


@pytest.mark.parametrize("codes", [["7", "8", "9"], ["7", "8", "x"]])
def test_a_where_that_casts_a_text_column_is_refused_whatever_its_rows_hold(
    codes: list[str],
) -> None:
    # "code = 7" casts each code to a number: refused before only when some row
    # held a code that is not one, which told the analyst so
    frame = pd.DataFrame({"code": codes * 5, "salary": [1.0, 2.0, 3.0] * 5})
    site = Site({"t": frame}, Policy(bounds={"salary": (0, 10)}, min_group_size=1))
    with pytest.raises(Exception, match=r"Conversion error.*literals in WHERE") as info:
        query([site], "SELECT COUNT(*) FROM t WHERE code = 7", secure=False)
    assert "'x'" not in str(info.value)
    df = query([site], "SELECT COUNT(*) FROM t WHERE code = '7'", secure=False)
    assert float(df.iloc[0, 0]) == 5.0


def test_a_dp_query_that_duckdb_fails_on_is_charged_like_an_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import duckdb

    from covey.analytics import _site

    site = Site({"t": _frame()}, _policy(epsilon=10.0, max_epsilon=1.0))
    honest = query([site], SQL, secure=False, epsilon=1.0)
    assert honest.attrs["refused"] == {}
    spent = site.epsilon_spent

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise duckdb.OutOfRangeException("Overflow in multiplication of INT64 (123456 * 2)")

    monkeypatch.setattr(_site, "compute", failing)
    refused = _dishonest(site, 100.0)
    assert "could not run the query (OutOfRange error in DuckDB)" in refused["refused"]
    assert "123456" not in refused["refused"]
    assert site.epsilon_spent > spent  # a refusal that read the rows is paid for


@pytest.mark.parametrize(
    ("stats", "reason"),
    [
        ([], "it releases no statistic"),
        ([{"op": "count", "sensitivity": [1.0]}], "sensitivity [1.0] for count"),
        ([{"op": "count", "sensitivity": {"x": 1}}], "sensitivity {'x': 1} for count"),
        ([{"op": "count", "sensitivity": True}], "sensitivity True for count"),
        ([{"op": "count", "sensitivity": "lots"}], "sensitivity 'lots' for count"),
    ],
)
def test_a_malformed_noise_request_is_refused_before_any_row_is_read(
    stats: list[dict[str, Any]], reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site({"t": _frame()}, _policy(epsilon=1.0))

    def no_rows(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the rows were read")

    monkeypatch.setattr(site, "_compute", no_rows)
    request = {
        "op": "answer",
        "sql": "SELECT COUNT(*) FROM t",
        "secure": False,
        "domains": {},
        "stats": stats,
        "dp": {"mechanism": "laplace", "multiplier": 100.0, "shares": 1},
    }
    reply = run_task(site, 0, Task(TASK_KIND, 1, payload=request))
    assert reply.error is None, reply.error  # a refusal, not a crash with a traceback
    assert isinstance(reply.result, dict)
    assert reply.result["refused"] == f"bad noise request: {reason}"
    assert site.epsilon_spent == 0.0


@pytest.mark.parametrize(
    ("mechanism", "multiplier"),
    [
        ("gaussian", 1e-200),  # the accountant's epsilon overflows to inf
        ("laplace", 5e-324),  # the accountant fails
        ("gaussian", 1e200),  # the accountant overflows
    ],
)
def test_a_multiplier_the_accountant_cannot_count_is_refused(
    mechanism: str, multiplier: float, tmp_path: Any
) -> None:
    ledger = tmp_path / "site.json"
    # no budget to refuse it: before, the ledger recorded spent inf, refused at restart
    site = Site({"t": _frame()}, _policy(max_epsilon=1.0), ledger=ledger)
    result = _dishonest(site, multiplier, releases=1)
    assert result["refused"] == (
        f"bad noise request: multiplier {multiplier:g}, outside the 1e-100 to 1e+100 "
        "a site accounts for"
    )
    assert site.epsilon_spent == 0.0
    again = Site({"t": _frame()}, _policy(max_epsilon=1.0), ledger=ledger)  # a restart
    assert again.epsilon_spent == 0.0


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("dp", [1], "bad noise request: [1]"),
        ("domains", None, "a request's domains must be a mapping {column: [values]}"),
        ("domains", ["F"], "a request's domains must be a mapping {column: [values]}"),
    ],
)
def test_a_request_of_the_wrong_shape_is_refused_not_crashed(
    field: str, value: Any, reason: str
) -> None:
    site = Site({"t": _frame()}, _policy(epsilon=1.0))
    request = {
        "op": "answer",
        "sql": SQL,
        "secure": False,
        "domains": {"sex": ["F", "M", "X"]},
        "stats": [{"op": "count", "sensitivity": 1.0}],
        "dp": {"mechanism": "laplace", "multiplier": 100.0, "shares": 1},
        field: value,
    }
    reply = run_task(site, 0, Task(TASK_KIND, 1, payload=request))
    assert reply.error is None, reply.error
    assert isinstance(reply.result, dict)
    assert reply.result["refused"] == reason
    assert site.epsilon_spent == 0.0


def test_a_site_with_max_epsilon_and_no_budget_warns_that_repeats_are_unbounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = pd.DataFrame({"g": ["X"], "v": [1.0]})
    with caplog.at_level("WARNING", logger="covey.analytics"):
        Site({"t": table}, Policy(bounds={"v": (0, 2)}, max_epsilon=1.0), name="ward")
        Site({"t": table}, Policy(bounds={"v": (0, 2)}, max_epsilon=1.0, epsilon=3.0))
        Site({"t": table}, Policy(bounds={"v": (0, 2)}))
    assert len(caplog.messages) == 1, caplog.messages
    assert "site 'ward': its policy sets max_epsilon=1 but no epsilon budget" in caplog.text
    assert "set epsilon, a total budget, too" in caplog.text


@pytest.mark.parametrize(
    ("dp", "reason"),
    [
        ({"multiplier": 100.0, "shares": 1.9}, "shares '1.9', not a whole number"),
        ({"multiplier": 100.0, "shares": True}, "shares 'True', not a whole number"),
        ({"multiplier": 100.0, "shares": "3"}, "shares '3', not a whole number"),
        ({"multiplier": True, "shares": 2}, "multiplier 'True', not a number"),
        ({"multiplier": "100", "shares": 2}, "multiplier '100', not a number"),
        ({"multiplier": 100.0, "shares": 0}, "multiplier 100.0, 0 shares"),
        ({"multiplier": 100.0, "shares": 10**9}, "multiplier 100.0, 1000000000 shares"),
        ({"multiplier": 100.0}, "{'mechanism': 'laplace', 'multiplier': 100.0}"),
    ],
)
@pytest.mark.parametrize("masked", [True, False])
def test_a_noise_request_of_the_wrong_types_is_refused_naming_the_field(
    dp: dict[str, Any], reason: str, masked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an answer in the clear took a share count of 1.9 or 0 as 1, which the secure path refused
    site = Site({"t": _frame()}, _policy(epsilon=1.0))

    def nothing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the request was acted on")

    monkeypatch.setattr(site, "_compute", nothing)
    monkeypatch.setattr(site, "_add_noise", nothing)
    request = {
        "op": "answer",
        "sql": "SELECT COUNT(*) FROM t",
        "secure": masked,
        "bound": 1 << 40,
        "domains": {},
        "stats": [{"op": "count", "sensitivity": 1.0}],
        "dp": {"mechanism": "laplace", **dp},
    }
    with pytest.raises(PolicyError, match=f"^bad noise request: {re.escape(reason)}$"):
        site.answer(request, masked=masked)
    describe = {**request, "op": "describe", "first": request, "releases": 1}
    reply = run_task(site, 0, Task(TASK_KIND, 1, payload=describe))
    assert reply.error is None, reply.error
    assert isinstance(reply.result, dict)
    assert reply.result["refused"] == f"bad noise request: {reason}"
    assert site.epsilon_spent == 0.0


@pytest.mark.parametrize("bins", [1.9, True, float("inf"), "3"])
def test_a_bin_count_that_is_no_whole_number_is_refused_before_any_row_is_read(
    bins: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site({"t": _frame()}, _policy())
    monkeypatch.setattr(np, "zeros", lambda *a, **k: pytest.fail("an array was allocated"))
    request = {
        "sql": "SELECT QUANTILE_CONT(salary, 0.5) FROM t",
        "secure": False,
        "domains": {},
        "dp": None,
        "stats": [{"op": "bins", "col": "salary", "low": [0.0], "width": [1.0], "bins": bins}],
    }
    with pytest.raises(ValueError, match=r"^the bins statistic's 'bins' must be a whole number"):
        site.answer(request)

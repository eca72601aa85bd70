"""An analyst or a server probing one record through what the minimum group size lets pass."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest

from covey.analytics import TASK_KIND, Policy, PolicyError, Site, query
from covey.clients import run_task
from covey.core import Task

N = 40


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "id": np.arange(N),
            "sex": rng.choice(["F", "M"], N).astype(object),
            "age": rng.integers(20, 90, N).astype(float),
            "salary": rng.uniform(1e4, 1e5, N).round(0),
            "bonus": np.nan,
        }
    )
    frame.loc[5, "bonus"] = 777.0  # the only bonus: a value of one record
    frame.loc[7, "sex"] = None  # the only record outside the GROUP BY domain
    frame.loc[9, "salary"] = 250_000.0  # the only value past the bounds
    frame.loc[11, "salary"] = 30_000.0
    return frame


POLICY = Policy(
    columns=["id", "sex", "age", "salary", "bonus"],
    bounds={"age": (0, 120), "salary": (0, 2e5), "id": (0, 1000), "bonus": (0, 1000)},
    domains={"sex": ["F", "M"]},
    min_group_size=10,
)


def _sites(secure: bool) -> list[Site]:
    return [Site({"t": _frame()}, POLICY, name=f"s{i}") for i in range(2 if secure else 1)]


def _attrs(sql: str, secure: bool) -> dict[str, Any]:
    df = query(_sites(secure), sql, secure=secure)
    return {k: df.attrs[k] for k in ("clipped", "outside_domain", "withheld_groups")}


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize(
    ("yes", "no"),
    [
        # is record 11's salary under 50,000? (one record: the group is suppressed)
        (
            "SELECT COUNT(*) FROM t WHERE id = 11 AND salary < 50000",
            "SELECT COUNT(*) FROM t WHERE id = 11 AND salary > 50000",
        ),
        # is the record whose salary is past the bounds older than 50?
        (
            "SELECT SUM(salary) FROM t WHERE age > 0 AND (id <> 9 OR age > 50)",
            "SELECT SUM(salary) FROM t WHERE age > 0 AND (id <> 9 OR age <= 50)",
        ),
        # is the record outside the GROUP BY domain older than 50?
        (
            "SELECT sex, COUNT(*) FROM t WHERE id <> 7 OR age > 50 GROUP BY sex",
            "SELECT sex, COUNT(*) FROM t WHERE id <> 7 OR age <= 50 GROUP BY sex",
        ),
    ],
)
def test_counts_beside_the_answer_do_not_tell_one_record_apart(
    yes: str, no: str, secure: bool
) -> None:
    assert _attrs(yes, secure) == _attrs(no, secure)


def _clipped_beside_a_hidden_value(hidden: float, group: bool, secure: bool) -> Any:
    """The clipped count beside an answer where one value past the bound or not is hidden."""
    # 20 staff salaries past the bound; the hidden one is a group of one (the ceo)
    # or the only bonus of a group of 20 (the per-column rule)
    policy = Policy(bounds={"pay": (0, 100)}, domains={"dept": ["ceo", "staff"]}, min_group_size=10)
    if group:
        frame = pd.DataFrame({"dept": ["staff"] * 20 + ["ceo"], "pay": [150.0] * 20 + [hidden]})
    else:
        frame = pd.DataFrame(
            {"dept": ["staff"] * 20 + ["ceo"] * 20, "pay": [150.0] * 20 + [hidden] + [np.nan] * 19}
        )
    parts = [frame.iloc[::2], frame.iloc[1::2]] if secure else [frame]
    sites = [Site({"t": part}, policy, name=f"s{i}") for i, part in enumerate(parts)]
    sql = "SELECT dept, COUNT(*), AVG(pay) FROM t GROUP BY dept"
    df = query(sites, sql, secure=secure)
    assert np.isnan(df.set_index("dept").loc["ceo", "AVG(pay)"])  # the value is hidden
    return df.attrs["clipped"]


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize("group", [True, False])
def test_the_clipped_count_leaves_out_what_a_site_withholds(group: bool, secure: bool) -> None:
    above = _clipped_beside_a_hidden_value(500.0, group, secure)
    below = _clipped_beside_a_hidden_value(50.0, group, secure)
    assert above == below == {"pay": 20}


def _clipped_beside_an_unread_value(hidden: float, secure: bool) -> Any:
    """The clipped count of a survival curve beside a record whose time is NULL."""
    # 40 records with times and events (20 events coded 2, past the bound) and one
    # with no time: the curve leaves it out, so its event is in no answer
    policy = Policy(bounds={"time": (0, 100), "event": (0, 1)}, min_group_size=10)
    frame = pd.DataFrame(
        {"time": [*np.arange(1.0, 41.0), np.nan], "event": [0.0] * 20 + [2.0] * 20 + [hidden]}
    )
    parts = [frame.iloc[::2], frame.iloc[1::2]] if secure else [frame]
    sites = [Site({"t": part}, policy, name=f"s{i}") for i, part in enumerate(parts)]
    df = query(sites, "SELECT COUNT(*), KAPLAN_MEIER(time, event, 50) AS km FROM t", secure=secure)
    assert df["COUNT(*)"].tolist() == [41]
    return df.attrs["clipped"]


@pytest.mark.parametrize("secure", [False, True])
def test_the_clipped_count_leaves_out_a_value_no_statistic_reads(secure: bool) -> None:
    above = _clipped_beside_an_unread_value(5.0, secure)
    below = _clipped_beside_an_unread_value(1.0, secure)
    assert above == below == {"event": 20, "time": 0}


@pytest.mark.parametrize("secure", [False, True])
def test_a_column_with_fewer_values_than_the_minimum_is_suppressed(secure: bool) -> None:
    sql = "SELECT SUM(bonus), AVG(bonus), COUNT(bonus), VAR_POP(bonus), COUNT(*) FROM t"
    df = query(_sites(secure), sql, secure=secure)
    row = df.iloc[0]
    assert row["COUNT(*)"] == N * len(_sites(secure))
    for name in ("SUM(bonus)", "AVG(bonus)", "COUNT(bonus)", "VAR_POP(bonus)"):
        assert np.isnan(row[name]), f"{name} = {row[name]} reveals the one bonus"


def test_a_site_seen_on_its_own_withholds_a_column_with_too_few_values() -> None:
    site = _sites(False)[0]
    request = {
        "sql": "SELECT SUM(bonus), AVG(salary) FROM t",
        "secure": False,
        "domains": {},
        "stats": [
            {"op": "count"},
            {"op": "count_col", "col": "bonus"},
            {"op": "sum", "col": "bonus"},
            {"op": "sum", "col": "salary"},
        ],
        "dp": None,
    }
    vectors = site.answer(request)["vectors"]
    assert vectors[0].tolist() == [N]
    assert vectors[1].tolist() == [0]
    assert vectors[2].tolist() == [0]
    assert vectors[3].tolist()[0] > 0  # a column with enough values is answered


def _forged(site: Site, sql: str, stat: dict[str, Any]) -> dict[str, Any]:
    request = {"op": "answer", "sql": sql, "secure": False, "domains": {}, "dp": None}
    request["stats"] = [{"op": "count"}, stat]
    reply = run_task(site, 0, Task(TASK_KIND, 1, payload=request))
    assert reply.error is None, reply.error
    assert isinstance(reply.result, dict)
    return reply.result


@pytest.mark.parametrize(
    ("sql", "stat"),
    [
        # MAX of a column the policy does not open to MIN/MAX (and unclipped)
        ("SELECT SUM(salary) FROM t", {"op": "max", "col": "salary"}),
        # a sum where the SQL asks for a count
        ("SELECT COUNT(salary) FROM t", {"op": "sum", "col": "salary"}),
        # bins one unit wide where the SQL asks for a sum
        (
            "SELECT SUM(salary) FROM t",
            {"op": "bins", "col": "salary", "low": [90_000.0], "width": [1.0], "bins": 1000},
        ),
        # bins other than the histogram's
        (
            "SELECT HISTOGRAM(salary, 0, 200000, 2) FROM t",
            {"op": "bins", "col": "salary", "low": [30_000.0], "width": [0.5], "bins": 2},
        ),
        # a hashed set of values where the SQL asks for a mean
        ("SELECT AVG(salary) FROM t", {"op": "distinct", "col": "salary", "m": 65536}),
        ("SELECT AVG(salary) FROM t", {"op": "prefix", "col": "salary", "prefixes": [[""]]}),
        ("SELECT AVG(salary) FROM t", {"op": "sq", "col": "salary", "center": [0.0]}),
    ],
)
def test_a_forged_request_gets_only_the_statistics_its_sql_names(
    sql: str, stat: dict[str, Any]
) -> None:
    reply = _forged(_sites(False)[0], sql, stat)
    assert "vectors" not in reply
    assert "does not ask for" in reply["refused"], reply["refused"]


def test_the_statistics_an_honest_server_asks_for_are_answered() -> None:
    site = _sites(False)[0]
    sql = "SELECT VAR_POP(salary), HISTOGRAM(age, 0, 100, 4), MEDIAN(age) FROM t"
    assert "vectors" in _forged(site, sql, {"op": "sq", "col": "salary", "center": [5.0]})
    hist = {"op": "bins", "col": "age", "low": [0.0], "width": [25.0], "bins": 4}
    assert "vectors" in _forged(site, sql, hist)
    narrow = {"op": "bins", "col": "age", "low": [40.0], "width": [0.01], "bins": 1024}
    assert "vectors" in _forged(site, sql, narrow)  # the bisection of the median
    df = query([site], sql, secure=False)
    assert df["VAR_POP(salary)"].iloc[0] > 0


def test_a_forged_request_naming_a_column_twice_over_is_refused_cleanly() -> None:
    site = _sites(False)[0]
    with pytest.raises(PolicyError, match="does not ask for"):
        site.answer(
            {
                "sql": "SELECT SUM(age) FROM t",
                "secure": False,
                "domains": {},
                "stats": [{"op": "count"}, {"op": "min", "col": "age"}],
                "dp": None,
            }
        )


@pytest.mark.parametrize(
    ("multiplier", "sensitivity"), [(float("nan"), 1.0), (float("inf"), 1.0), (1.0, float("inf"))]
)
def test_a_noise_request_that_is_not_a_number_is_refused(
    multiplier: float, sensitivity: float
) -> None:
    site = Site({"t": _frame()}, Policy(min_group_size=5, epsilon=10.0))
    request = {
        "sql": "SELECT COUNT(*) FROM t",
        "secure": False,
        "domains": {},
        "stats": [{"op": "count", "sensitivity": sensitivity}],
        "dp": {"mechanism": "laplace", "multiplier": multiplier, "shares": 1},
    }
    with pytest.raises(PolicyError, match="bad noise request"):
        site.answer(request)
    assert site.epsilon_spent == 0.0


def test_a_site_that_withholds_a_group_does_not_make_its_min_zero() -> None:
    policy = Policy(bounds={"x": (0, 100)}, min_group_size=10, min_max=["x"])
    few = Site({"t": pd.DataFrame({"x": [70.0] * 3})}, policy, name="few")
    many = Site({"t": pd.DataFrame({"x": [50.0] * 20})}, policy, name="many")
    df = query([few, many], "SELECT MIN(x), MAX(x) FROM t", secure=False)
    # the 3 rows are withheld; no value is 0
    assert df.iloc[0].tolist() == [50.0, 50.0]


def test_approx_count_distinct_only_on_columns_the_policy_lists() -> None:
    # 10 records selected: the buckets set are the hashes of their 10 salaries
    sql = "SELECT APPROX_COUNT_DISTINCT(salary) FROM t WHERE id < 10"
    with pytest.raises(PolicyError, match="does not count the distinct values of 'salary'"):
        query(_sites(False), sql, secure=False)
    listed = Policy(bounds={"salary": (0, 2e5)}, min_group_size=10, distinct=["salary"])
    df = query([Site({"t": _frame()}, listed)], sql, secure=False)
    assert df.iloc[0, 0] == pytest.approx(10, abs=0.5)


def test_a_closed_column_and_a_missing_one_are_refused_alike() -> None:
    site = Site({"t": _frame()}, Policy(columns=["sex", "age"], bounds={"age": (0, 120)}))
    reasons = []
    for col in ("salary", "no_such_column"):  # salary exists at the site, but is not open
        with pytest.raises(PolicyError) as info:
            query([site], f"SELECT COUNT(*) FROM t WHERE {col} > 3", secure=False)  # noqa: S608
        reasons.append(str(info.value).replace(col, "COL"))
    assert reasons[0] == reasons[1]
    assert "is not open" in reasons[0]


@pytest.mark.parametrize("low", [float("-inf"), float("nan"), "inf"])
def test_a_survival_start_that_is_not_a_number_cannot_name_a_closed_column(low: Any) -> None:
    # "-inf" written into the SQL would read the column named inf, which the policy closes
    frame = pd.DataFrame({"time": [1.0] * 20, "event": [1] * 20, "inf": [5.0] * 10 + [-5.0] * 10})
    policy = Policy(
        columns=["time", "event"], bounds={"time": (0, 10), "event": (0, 1)}, min_group_size=1
    )
    stat = {"op": "km", "col": "time", "event": "event", "low": low, "step": 1.0, "points": 10}
    reply = _forged(Site({"t": frame}, policy), "SELECT KAPLAN_MEIER(time, event, 1) FROM t", stat)
    assert "vectors" not in reply
    assert "does not ask for" in reply["refused"]


# -- a site that answers a query with a malformed answer ------------------------------------


def _answer_with(field: str, value: Any) -> Any:
    def forge(result: dict[str, Any]) -> dict[str, Any]:
        if field == "vectors":
            return {**result, "vectors": [value(np.shape(v)) for v in result["vectors"]]}
        return {**result, field: value}

    return forge


@pytest.mark.parametrize(
    ("forge", "refusal"),
    [
        (_answer_with("clipped", [1, 2]), "s1 answered a malformed clipped count"),
        (
            _answer_with("clipped", {"salary": "x"}),
            "s1 answered a malformed clipped count of 'salary': 'x'",
        ),
        (
            _answer_with("clipped", {"salary": 10**20}),
            "s1 answered a malformed clipped count of 'salary': 100000000000000000000",
        ),
        (
            _answer_with("clipped", {"age": 1}),
            "s1 answered a clipped count for 'age', which no statistic of the query clips",
        ),
        (_answer_with("outside_domain", float("nan")), "s1 answered a malformed outside_domain"),
        (_answer_with("outside_domain", 1e300), "s1 answered a malformed outside_domain: 1e+300"),
        (_answer_with("withheld_groups", {}), "s1 answered a malformed withheld_groups: {}"),
        (_answer_with("withheld_groups", 10**20), "s1 answered a malformed withheld_groups"),
        (_answer_with("withheld_groups", -1), "s1 answered a malformed withheld_groups: -1"),
        (_answer_with("withheld_groups", 0.5), "s1 answered a malformed withheld_groups: 0.5"),
        (_answer_with("spent", "x"), "s1 answered a malformed budget spent: 'x'"),
        (_answer_with("spent", -1.0), "s1 answered a malformed budget spent: -1.0"),
        (_answer_with("vectors", lambda s: np.full(s, np.nan)), "s1 answered non-finite values"),
        (_answer_with("vectors", lambda s: np.full(s, np.inf)), "s1 answered non-finite values"),
        (_answer_with("vectors", lambda s: [[1, 2], [3]]), "s1 answered a vector that is no array"),
        # counts without noise are whole numbers from 0 up
        (_answer_with("vectors", lambda s: np.full(s, 0.5)), "s1 answered count values that are"),
        (_answer_with("vectors", lambda s: np.full(s, -3.0)), "s1 answered count values that are"),
        (_answer_with("vectors", lambda s: np.full(s, 1e300)), "s1 answered count values that"),
    ],
    ids=[
        *("clipped-list", "clipped-str", "clipped-huge", "clipped-unknown", "outside-nan"),
        *("outside-1e300", "withheld", "withheld-huge", "withheld-negative", "withheld-half"),
        *("spent", "spent-negative", "nan", "inf", "ragged", "count-half", "count-negative"),
        "count-1e300",
    ],
)
def test_a_site_answering_malformed_counts_or_non_finite_sums_is_named(
    forge: Any, refusal: str
) -> None:
    # They stopped the query with a bare TypeError, ValueError or OverflowError naming no
    # site, or (NaN, inf) were summed into the published answer.
    from covey.analytics import FederationQueryError
    from covey.core import Reply
    from covey.transport import MemoryTransport

    sites = [Site({"t": _frame()}, POLICY, name=f"s{i}") for i in range(3)]

    def handler(cid: int, task: Task) -> Reply:
        reply = run_task(sites[cid], cid, task)
        answer = reply.result
        if cid == 1 and isinstance(answer, dict) and "vectors" in answer:
            return Reply(cid, reply.kind, result=forge(answer))
        return reply

    transport = MemoryTransport([0, 1, 2], handler)
    sql = "SELECT sex, COUNT(*), AVG(salary) FROM t GROUP BY sex"
    with pytest.raises(FederationQueryError, match=re.escape(refusal)):
        query(transport, sql, secure=False)

"""Edges of the analytics API.

Options are checked up front, epsilons are those the accountant can certify,
quantiles are shown as one of a crowd at each end, and a failed query says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

import covey
import covey.secagg
from covey.analytics import Analyst, FederationQueryError, Policy, QueryError, Site, query
from covey.sim import inline_transport


def sites(values: list[np.ndarray], policy: Policy) -> list[Site]:
    return [Site({"p": pd.DataFrame({"x": v})}, policy, name=f"s{i}") for i, v in enumerate(values)]


POLICY = Policy(bounds={"x": (0, 200)}, min_group_size=10, epsilon=100.0)


def counts() -> list[Site]:
    rng = np.random.default_rng(0)
    return sites([rng.integers(20, 90, 300).astype(float) for _ in range(3)], POLICY)


@pytest.mark.parametrize("secure", [None, "false", 0, 1])
def test_secure_must_be_a_bool(secure: Any) -> None:
    with pytest.raises(ValueError, match="secure must be True or False"):
        query(counts(), "SELECT COUNT(*) FROM p", secure=secure)


def test_an_epsilon_below_the_accountant_s_floor_is_refused_before_any_site_answers() -> None:
    group = counts()
    with pytest.raises(ValueError, match=r"below the smallest the accountant certifies .*0\.0057"):
        query(group, "SELECT COUNT(*) FROM p", epsilon=0.005)
    assert all(site.epsilon_spent == 0 for site in group)
    df = query(group, "SELECT COUNT(*) FROM p", epsilon=0.01)  # above it: charged its epsilon
    assert 0.0099 <= df.attrs["privacy"]["epsilon"] <= 0.01
    assert group[0].epsilon_spent == pytest.approx(df.attrs["privacy"]["epsilon"])


@pytest.mark.parametrize(("mechanism", "epsilon"), [("gaussian", 30.0), ("laplace", 90.0)])
def test_a_large_epsilon_is_answered(mechanism: str, epsilon: float) -> None:
    df = query(counts(), "SELECT COUNT(*) FROM p", epsilon=epsilon, mechanism=mechanism)
    assert abs(df["COUNT(*)"][0] - 900) < 50
    assert df.attrs["privacy"]["epsilon"] <= epsilon


def test_a_quantile_is_shown_only_as_one_of_a_crowd_at_each_end() -> None:
    values = np.arange(1.0, 101.0)  # 100 records over two sites; k = 10
    group = sites([values[::2], values[1::2]], Policy(bounds={"x": (0, 200)}, min_group_size=10))
    shown = {}
    for q in (0.08, 0.09, 0.1, 0.9, 0.91, 0.92):
        sql = f"SELECT QUANTILE_DISC(x, {q}) FROM p"  # noqa: S608 - a number, no input
        df = query(group, sql, secure=False)
        shown[q] = float(df.iloc[0, 0])
    # 0-based rank r has r records below it and 99 - r above: shown for 9 <= r <= 90,
    # where it is one of 10 at the low end and one of 10 at the high end.
    assert np.isnan(shown[0.08])  # rank 7
    assert np.isnan(shown[0.09])  # rank 8: 8 others below
    assert shown[0.1] == pytest.approx(10.0, abs=1e-3)  # rank 9
    assert shown[0.9] == pytest.approx(90.0, abs=1e-3)  # rank 89
    assert shown[0.91] == pytest.approx(91.0, abs=1e-3)  # rank 90: 9 others above
    assert np.isnan(shown[0.92])  # rank 91


def test_the_same_site_twice_is_refused() -> None:
    one = counts()[0]
    with pytest.raises(ValueError, match="the same Site twice"):
        query([one, one], "SELECT COUNT(*) FROM p", secure=False)


def test_wrong_types_are_named() -> None:
    with pytest.raises(ValueError, match="privacy budget must be a positive number, got '3'"):
        Analyst(epsilon="3")  # type: ignore[arg-type]

    class Quiet(covey.Client):
        def __init__(self, cid: int) -> None:
            pass

    transport = inline_transport(Quiet, 3)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"bound": 1.5}, "bound must be a whole number"),
        ({"bound": 1, "timeout": -1.0}, "timeout must be None or a positive number"),
    ]
    for options, match in cases:
        with pytest.raises(ValueError, match=match):
            covey.secagg.secure_sum(
                transport, [0, 1, 2], round=1, input_kind="ones", length=4, **options
            )


def test_a_query_failing_unexpectedly_tells_the_sites_it_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    import covey.analytics._query as query_module
    import covey.transport.grpc as grpc_module
    from covey.cli import app

    said: list[str] = []

    class Server:
        port = 1

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def wait_for_clients(self, count: int, timeout: float) -> bool:
            return True

        def close(self, goodbye: str = "") -> None:
            said.append(goodbye)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(grpc_module, "GrpcServerTransport", Server)
    monkeypatch.setattr(query_module, "query", broken)
    result = CliRunner().invoke(
        app,
        ["query", "SELECT COUNT(*) FROM p", "--server", "127.0.0.1:0", "--insecure", "--no-secure"],
    )
    assert isinstance(result.exception, KeyError)
    assert said == ["the query failed: KeyError"]


class _Exiting(Site):
    """A site whose own code calls ``sys.exit(3)`` in the given step of a query."""

    def __init__(self, *args: Any, step: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step = step

    def describe(self, request: Any) -> dict[str, Any]:
        if self.step == "describe":
            raise SystemExit(3)
        return super().describe(request)

    def answer(self, request: Any, *, masked: bool = False) -> dict[str, Any]:
        if self.step == "answer":
            raise SystemExit(3)
        return super().answer(request, masked=masked)


def _with_exiting(step: str) -> list[Site]:
    frame = pd.DataFrame({"x": np.arange(40.0)})
    policy = Policy(bounds={"x": (0, 200)}, min_group_size=10)
    return [
        Site({"p": frame}, policy, name="a"),
        _Exiting({"p": frame}, policy, name="b", step=step),
        Site({"p": frame}, policy, name="c"),
    ]


def test_a_site_calling_sys_exit_before_answering_is_refused_by_name() -> None:
    # SystemExit from a site in this process ended the analyst's query() itself
    df = query(_with_exiting("describe"), "SELECT COUNT(*) FROM p", secure=False)
    assert df.iloc[0, 0] == 80
    assert "sys.exit(3)" in df.attrs["refused"]["b"]


@pytest.mark.parametrize("secure", [False, True])
def test_a_site_calling_sys_exit_mid_query_fails_the_query_naming_it(secure: bool) -> None:
    with pytest.raises(FederationQueryError, match=r"\bb\b.*sys\.exit\(3\) \(SystemExit\)"):
        query(_with_exiting("answer"), "SELECT SUM(x) FROM p", secure=secure)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT HISTOGRAM(x, 0, 1e400, 4) FROM p",
        "SELECT HISTOGRAM(x, -1e308, 1e308, 4) FROM p",
        "SELECT KAPLAN_MEIER(x, x, 1e400) FROM p",
    ],
)
def test_an_overflowing_literal_is_refused_before_any_site_is_asked(sql: str) -> None:
    # 1e400 reads as inf: the histogram came back all NaN, with RuntimeWarnings
    from covey.analytics import plan

    with pytest.raises(QueryError, match="finite"):
        plan(sql)


def test_approx_count_distinct_past_every_bucket_set_is_nan_not_infinite(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import covey.analytics._query as query_module

    monkeypatch.setattr(query_module, "DISTINCT_BUCKETS", 16)
    policy = Policy(min_group_size=1, distinct=["x"])
    many = sites([np.arange(2000.0)], policy)
    df = query(many, "SELECT APPROX_COUNT_DISTINCT(x) FROM p", secure=False)
    assert np.isnan(df.iloc[0, 0])
    assert np.isnan(df.attrs["precision"]["APPROX_COUNT_DISTINCT(x)"][0])
    few = sites([np.arange(4.0)], policy)
    df = query(few, "SELECT APPROX_COUNT_DISTINCT(x) FROM p", secure=False)
    assert np.isfinite(df.iloc[0, 0])


def test_bounds_whose_range_passes_float64_refuse_quantiles_and_survival_by_name() -> None:
    # high - low is inf: MEDIAN failed with "cannot convert float NaN to integer"
    big = float(np.finfo(np.float64).max)
    policy = Policy(bounds={"x": (-big, big), "e": (0, 1)}, min_group_size=1)
    wide = [Site({"p": pd.DataFrame({"x": np.arange(20.0), "e": 1})}, policy)]
    with pytest.raises(QueryError, match="bounds of 'x' are too wide for quantiles"):
        query(wide, "SELECT MEDIAN(x) FROM p", secure=False)
    with pytest.raises(QueryError, match="bounds of 'x' are too wide for a survival curve"):
        query(wide, "SELECT KAPLAN_MEIER(x, e, 1e307) FROM p", secure=False)
    assert query(wide, "SELECT SUM(x) FROM p", secure=False).iloc[0, 0] == 190.0


@pytest.mark.parametrize("epsilon", [None, 1.0])
def test_bounds_whose_range_passes_float64_refuse_a_secure_variance_by_name(
    epsilon: float | None,
) -> None:
    # the squared deviations' scale was computed from an infinite range first:
    # "OverflowError: cannot convert float infinity to integer"
    policy = Policy(bounds={"x": (-1e308, 1e308)}, min_group_size=1)
    wide = sites([np.linspace(-1.0, 1.0, 20)] * 2, policy)
    with pytest.raises(QueryError, match="bounds of 'x' are too wide for secure aggregation"):
        query(wide, "SELECT VAR_SAMP(x) FROM p", secure=True, epsilon=epsilon)


def test_a_subnormal_quantile_precision_is_answered_not_an_overflow_error() -> None:
    policy = Policy(bounds={"x": (0, 1)}, min_group_size=1)
    one = sites([np.linspace(0, 1, 11)], policy)
    df = query(one, "SELECT MEDIAN(x) FROM p", secure=False, precision=1e-310)
    assert df.iloc[0, 0] == pytest.approx(0.5)


@pytest.mark.parametrize("secure", [False, True])
def test_bounds_too_narrow_for_the_default_precision_are_named_as_the_cause(secure: bool) -> None:
    # a millionth of (0, 5e-324) is 0: "the quantile precision must be positive, got
    # 0.0", though no precision was given
    policy = Policy(bounds={"x": (0, 5e-324)}, min_group_size=1)
    narrow = sites([np.linspace(-1, 1, 20)] * 2, policy)
    said = r"the bounds of 'x' \(0 to 4\.94066e-324\) are too narrow for quantiles"
    with pytest.raises(QueryError, match=said) as info:
        query(narrow, "SELECT MEDIAN(x) FROM p", secure=secure)
    assert "precision=" in str(info.value)
    df = query(narrow, "SELECT MEDIAN(x) FROM p", secure=secure, precision=5e-324)
    assert 0 <= df.iloc[0, 0] <= 5e-324


class _Infinite(Site):
    """A faulty site: its squared deviations are inf, though it has no such rows."""

    def answer(self, request: Any, *, masked: bool = False) -> dict[str, Any]:
        got = super().answer(request, masked=masked)
        ops = [s["op"] for s in request["stats"]]
        vectors = [
            np.full_like(v, np.inf) if op == "sq" else v
            for v, op in zip(got["vectors"], ops, strict=True)
        ]
        return {**got, "vectors": vectors}


def test_squares_past_float64_name_the_bounds_not_only_a_faulty_site() -> None:
    # an honest site's squared deviations overflowed on its own rows, and the query
    # said only that it "answered non-finite values (NaN or inf)"; the site now
    # refuses itself, naming the aggregate (sums of the values, 0, do not overflow)
    policy = Policy(bounds={"x": (-1e200, 1e200)}, min_group_size=1)
    huge = sites([np.array([1e200, -1e200, 0.0]), np.array([1.0, 2.0, 3.0])], policy)
    said = (
        r"s0 stopped answering mid-query: VAR_POP\(x\) cannot be answered: the sum of the "
        r"squared deviations from the mean of 'x' over this site's rows overflows float64"
    )
    with pytest.raises(FederationQueryError, match=said):
        query(huge, "SELECT VAR_POP(x) FROM p", secure=False)
    # a site that answers inf where its rows give no such sum may be faulty: the server says so
    policy = Policy(bounds={"x": (-1.5e308, 1.5e308)}, min_group_size=1)
    faulty = [_Infinite({"p": pd.DataFrame({"x": [1.0, 2.0]})}, policy, name="s0")]
    said = (
        r"s0 answered non-finite values \(NaN or inf\) for its sq statistic of 'x': either "
        r"the squared deviations over its rows add up past the largest float64 \(the bounds "
        r"of 'x' let them; declare bounds nearer the values\) or the site is faulty"
    )
    with pytest.raises(FederationQueryError, match=said):
        query(faulty, "SELECT VAR_POP(x) FROM p", secure=False)


def test_a_mechanism_without_epsilon_is_refused_not_ignored() -> None:
    # Before: `--mechanism gaussian` without `--epsilon` answered without noise, silently.
    from typer.testing import CliRunner

    from covey.cli import app

    result = CliRunner().invoke(
        app,
        [
            *("query", "SELECT COUNT(*) FROM p", "--server", "127.0.0.1:0", "--insecure"),
            *("--no-secure", "--mechanism", "gaussian", "--wait-timeout", "1"),
        ],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 2
    assert "mechanism 'gaussian' applies to a DP query only: give an epsilon too" in result.output


def test_a_mechanism_without_epsilon_is_refused_in_python_too() -> None:
    # query(..., mechanism="gaussian") without epsilon answered the exact count.
    policy = Policy(min_group_size=1)
    two = sites([np.arange(20.0), np.arange(5.0)], policy)
    for secure in (False, True):
        with pytest.raises(ValueError, match="mechanism 'gaussian' applies to a DP query only"):
            query(two, "SELECT COUNT(*) FROM p", secure=secure, mechanism="gaussian")
    assert query(two, "SELECT COUNT(*) FROM p", secure=False).iloc[0, 0] == 25.0
    noisy = query(two, "SELECT COUNT(*) FROM p", secure=False, epsilon=1.0)
    assert noisy.attrs["privacy"]["mechanism"] == "laplace"


@pytest.mark.parametrize("step", ["1e-320", "5e-324", "1e-300", "0.001"])
def test_a_survival_step_giving_too_many_points_is_refused_by_name(step: str) -> None:
    # a subnormal step made the number of points infinite: a bare OverflowError
    frame = pd.DataFrame({"t": np.arange(20.0), "e": [1, 0] * 10})
    policy = Policy(bounds={"t": (0, 100), "e": (0, 1)}, min_group_size=1)
    sql = f"SELECT KAPLAN_MEIER(t, e, {step}) FROM p"  # noqa: S608
    with pytest.raises(QueryError, match=r"points over the bounds of 't' .* at most 10000") as info:
        query([Site({"p": frame}, policy)], sql, secure=False)
    assert len(str(info.value)) < 300  # not the digits of a huge integer

"""Federated analytics checked from outside: pandas and NumPy on the pooled rows as reference.

Seeded random tables (ints, floats with NULLs, unsigned ints, dates, strings,
bools) split across sites of different sizes, one of them empty; every
supported aggregate is compared with the same statistic of the pooled data,
and the suppression, refusals and DP costs with what docs/analytics.md says.
"""

from __future__ import annotations

import math
from typing import Any

import dp_accounting as dpa
import numpy as np
import pandas as pd
import pytest
from dp_accounting import rdp

from covey.analytics import Analyst, Policy, PolicyError, QueryError, Site, query

BOUNDS = {"age": (0.0, 120.0), "score": (-10.0, 10.0), "visits": (0.0, 255.0)}
DOMAINS = {"ward": ["north", "south", "east"], "smoker": [False, True], "stage": [1, 2, 3]}


def _site_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    score = rng.normal(0.0, 3.0, n)
    score[rng.random(n) < 0.15] = np.nan  # NULLs
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 95, n).astype(np.int32),
            "score": score,
            "visits": rng.integers(0, 200, n).astype(np.uint8),
            "admitted": pd.Timestamp("2024-01-01")
            + pd.to_timedelta(rng.integers(0, 366, n), unit="D"),
            "ward": rng.choice(["north", "south", "east"], n),
            "smoker": rng.random(n) < 0.3,
            "stage": rng.integers(1, 4, n),
        }
    )
    return frame


@pytest.fixture(scope="module")
def frames() -> list[pd.DataFrame]:
    rng = np.random.default_rng(20240601)
    return [_site_frame(rng, n) for n in (60, 0, 35, 90)]


@pytest.fixture(scope="module")
def pooled(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True)


def _sites(frames: list[pd.DataFrame], **policy: Any) -> list[Site]:
    settings: dict[str, Any] = {
        "bounds": BOUNDS,
        "domains": DOMAINS,
        "min_group_size": 1,
        "min_max": ["age", "score", "visits"],
        **policy,
    }
    return [Site({"t": f}, Policy(**settings), name=f"site-{k}") for k, f in enumerate(frames)]


def _pandas(pooled: pd.DataFrame) -> dict[str, float]:
    score, age, visits = pooled["score"], pooled["age"], pooled["visits"].astype(float)
    return {
        "COUNT(*)": len(pooled),
        "COUNT(score)": score.count(),
        "SUM(age)": age.sum(),
        "SUM(visits)": visits.sum(),
        "AVG(score)": score.mean(),
        "VAR_SAMP(score)": score.var(ddof=1),
        "VAR_POP(age)": age.var(ddof=0),
        "STDDEV_SAMP(visits)": visits.std(ddof=1),
        "STDDEV_POP(score)": score.std(ddof=0),
        "MIN(score)": score.min(),
        "MAX(visits)": visits.max(),
        "MEDIAN(age)": age.median(),
        "QUANTILE_CONT(score, 0.25)": score.quantile(0.25, interpolation="linear"),
        "QUANTILE_DISC(age, 0.75)": float(np.quantile(age, 0.75, method="inverted_cdf")),
    }


@pytest.mark.parametrize("secure", [False, True])
def test_every_aggregate_equals_pandas_on_the_pooled_rows(
    frames: list[pd.DataFrame], pooled: pd.DataFrame, secure: bool
) -> None:
    reference = _pandas(pooled)
    plain = [k for k in reference if not k.startswith(("MIN", "MAX"))]
    columns = list(reference) if not secure else plain  # MIN/MAX are refused under secagg
    sql = f"SELECT {', '.join(columns)} FROM t"  # noqa: S608
    df = query(_sites(frames), sql, secure=secure, precision=1e-7)
    assert df.attrs["refused"] == {}
    for name in columns:
        got, want = float(df[name].iloc[0]), float(reference[name])
        tol = 1e-6 if "QUANTILE" not in name and "MEDIAN" not in name else 1e-6 * 120
        # Secure sums are fixed point: 1e-6 relative, as documented.
        assert got == pytest.approx(want, rel=1e-6 if secure else 1e-9, abs=tol), name


def test_min_and_max_are_refused_under_secure_aggregation(frames: list[pd.DataFrame]) -> None:
    with pytest.raises(QueryError, match="MIN and MAX"):
        query(_sites(frames), "SELECT MIN(age) FROM t", secure=True)


@pytest.mark.parametrize(
    ("where", "mask"),
    [
        ("admitted >= '2024-07-01'", lambda p: p["admitted"] >= pd.Timestamp("2024-07-01")),
        ("ward LIKE 'no%' OR smoker", lambda p: p["ward"].str.startswith("no") | p["smoker"]),
        ("score IS NULL", lambda p: p["score"].isna()),
        ("stage IN (1, 3) AND NOT smoker", lambda p: p["stage"].isin([1, 3]) & ~p["smoker"]),
        ("age * 2 - visits > 50", lambda p: p["age"] * 2 - p["visits"].astype(int) > 50),
    ],
)
def test_group_by_with_a_where_equals_pandas(
    frames: list[pd.DataFrame], pooled: pd.DataFrame, where: str, mask: Any
) -> None:
    aggregates = "COUNT(*), SUM(age), AVG(score)"
    sql = f"SELECT ward, smoker, {aggregates} FROM t WHERE {where} GROUP BY ward, smoker"  # noqa: S608
    df = query(_sites(frames), sql, secure=False).set_index(["ward", "smoker"])
    rows = pooled[mask(pooled)]
    want = rows.groupby(["ward", "smoker"]).agg(
        n=("age", "size"), s=("age", "sum"), a=("score", "mean")
    )
    # Every group of the domains is answered; one no row falls in is under the
    # minimum group size (1) and suppressed.
    assert len(df) == 3 * 2  # wards times smoker or not
    for key, row in df.iterrows():
        expected = want.loc[key] if key in want.index else None
        if expected is None:
            assert math.isnan(row["COUNT(*)"])
            assert key in list(df.attrs["suppressed"])
        else:
            assert row["COUNT(*)"] == expected["n"]
            assert row["SUM(age)"] == pytest.approx(expected["s"])
            if not math.isnan(expected["a"]):
                assert row["AVG(score)"] == pytest.approx(expected["a"], rel=1e-9)


def test_histogram_equals_numpy_and_ignores_values_outside_it(
    frames: list[pd.DataFrame], pooled: pd.DataFrame
) -> None:
    df = query(_sites(frames), "SELECT HISTOGRAM(score, -5, 5, 8) FROM t", secure=True)
    want, _ = np.histogram(pooled["score"].dropna(), bins=8, range=(-5, 5))
    np.testing.assert_array_equal(np.asarray(df.iloc[0, 0], dtype=float), want)


def test_null_and_out_of_domain_group_keys_are_counted_apart(pooled: pd.DataFrame) -> None:
    frame = pooled.head(40).copy()
    frame.loc[frame.index[:3], "ward"] = None
    frame.loc[frame.index[3:5], "ward"] = "west"  # not in the declared domain
    df = query(_sites([frame]), "SELECT ward, COUNT(*) FROM t GROUP BY ward", secure=False)
    want = frame["ward"].value_counts()
    for _, row in df.iterrows():
        assert row["COUNT(*)"] == want.get(row["ward"], 0)
    assert df.attrs["outside_domain"] == 5


def test_a_site_without_the_column_is_refused_and_the_others_answer(
    frames: list[pd.DataFrame],
) -> None:
    frames = [frames[0], frames[2].drop(columns=["score"]), frames[3]]
    df = query(_sites(frames), "SELECT COUNT(score), AVG(score) FROM t", secure=True)
    assert "no column 'score'" in df.attrs["refused"]["site-1"]
    answered = pd.concat([frames[0], frames[2]])["score"]
    assert df["COUNT(score)"].iloc[0] == answered.count()
    # Secure sums are fixed point: agreement to 1e-6 relative, as documented.
    assert df["AVG(score)"].iloc[0] == pytest.approx(answered.mean(), rel=1e-6)


def test_small_groups_are_withheld_by_each_site_then_suppressed_in_the_total() -> None:
    a = pd.DataFrame({"ward": ["north"] * 3 + ["south"] * 12, "age": [50.0] * 15})
    b = pd.DataFrame({"ward": ["north"] * 6 + ["east"] * 4, "age": [70.0] * 10})
    df = query(
        _sites([a, b], min_group_size=5),
        "SELECT ward, COUNT(*), AVG(age) FROM t GROUP BY ward",
        secure=True,
    ).set_index("ward")
    # north: site a's 3 rows are withheld, site b's 6 answered; east: 4 < 5 everywhere.
    assert df.loc["north", "COUNT(*)"] == 6
    assert df.loc["north", "AVG(age)"] == pytest.approx(70.0)
    assert df.loc["south", "COUNT(*)"] == 12
    assert math.isnan(df.loc["east", "COUNT(*)"])
    assert df.attrs["suppressed"] == [("east",)]


def test_a_site_without_a_policy_refuses_and_unknown_columns_are_refused(
    frames: list[pd.DataFrame],
) -> None:
    bare = Site({"t": frames[0]}, None, name="bare")
    with pytest.raises(PolicyError, match="no policy"):
        query([bare], "SELECT COUNT(*) FROM t", secure=False)
    narrow = _sites(frames[:1], columns=["age"])
    with pytest.raises(PolicyError, match="score"):
        query(narrow, "SELECT AVG(score) FROM t", secure=False)


def test_a_dp_querys_epsilon_equals_dp_accounting(frames: list[pd.DataFrame]) -> None:
    analyst = Analyst(epsilon=5.0, delta=1e-6)
    sql = "SELECT ward, COUNT(*), AVG(age) FROM t GROUP BY ward"
    df = query(_sites(frames), sql, secure=False, epsilon=1.0, analyst=analyst)
    p = df.attrs["privacy"]
    acc = rdp.RdpAccountant()
    acc.compose(dpa.SelfComposedDpEvent(dpa.LaplaceDpEvent(p["noise_multiplier"]), p["releases"]))
    reference = acc.get_epsilon(1e-6)
    assert reference <= 1.0
    assert p["epsilon"] == pytest.approx(reference, rel=1e-9)
    assert analyst.spent == pytest.approx(reference, rel=1e-9)
    for spent in p["site_spent"].values():
        assert spent == pytest.approx(reference, rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_the_noise_on_a_count_has_the_calibrated_scale(
    frames: list[pd.DataFrame], mechanism: str
) -> None:
    sites = _sites(frames)
    for k, site in enumerate(sites):  # seeded, so this statistical check cannot flake
        site._rng = np.random.default_rng(77 + k)
    truth = sum(len(f) for f in frames)
    draws, multiplier = [], 0.0
    for k in range(120):  # a new WHERE each time: a repeated query is answered from cache
        df = query(
            sites,
            f"SELECT COUNT(*) FROM t WHERE age > {-1 - k}",  # noqa: S608
            secure=False,
            epsilon=1.0,
            mechanism=mechanism,
        )
        draws.append(float(df.iloc[0, 0]) - truth)
        multiplier = df.attrs["privacy"]["noise_multiplier"]
    # A count has sensitivity 1: Laplace(b) has std b*sqrt(2), the Gaussian std sigma.
    # Unmasked, each of the sites adds all of it (its answer is seen on its own).
    std = multiplier * (math.sqrt(2.0) if mechanism == "laplace" else 1.0)
    std *= math.sqrt(len(sites))
    sample = np.asarray(draws)
    assert np.std(sample) == pytest.approx(std, rel=0.25)
    assert abs(np.mean(sample)) < 4 * std / math.sqrt(len(sample))


@pytest.mark.parametrize("high", [1e6, 1e8, 1e15])
def test_secure_sums_keep_their_precision_whatever_the_bounds(high: float) -> None:
    rng = np.random.default_rng(11)
    small = [pd.DataFrame({"x": rng.uniform(0.0, 1.0, 40)}) for _ in range(3)]
    wide = [pd.DataFrame({"x": rng.uniform(0.4, 0.6, 40) * high}) for _ in range(3)]
    policy = {"bounds": {"x": (0.0, high)}, "domains": {}, "min_max": ()}
    sql = "SELECT SUM(x), AVG(x), VAR_SAMP(x), STDDEV_POP(x) FROM t"
    for frames in (small, wide):
        pooled = pd.concat(frames)["x"]
        df = query(_sites(frames, **policy), sql, secure=True).iloc[0]
        # Documented: within 1e-6 relative of the unsecured answer, whatever the bounds.
        assert df["SUM(x)"] == pytest.approx(pooled.sum(), rel=1e-9)
        assert df["AVG(x)"] == pytest.approx(pooled.mean(), rel=1e-9)
        if high <= 1e8:  # squares of a range past ~1e11 outgrow two limbs (docs: Limits)
            assert df["VAR_SAMP(x)"] == pytest.approx(pooled.var(ddof=1), rel=1e-6)
            assert df["STDDEV_POP(x)"] == pytest.approx(pooled.std(ddof=0), rel=1e-6)


def test_under_dp_one_record_moves_a_sites_count_by_one_not_by_the_minimum() -> None:
    # A site holding 4 or 5 records of a group, minimum 5: withholding the 4 would
    # make one record move the count by 5, past the sensitivity 1 the noise is for.
    # (The site accepts the near-zero noise of this check in place of withholding.)
    answers = []
    for n in (4, 5):
        frame = pd.DataFrame({"ward": ["north"] * n, "age": [60.0] * n})
        site = _sites([frame], min_group_size=5, max_epsilon=1e18)[0]
        stats = [{"op": "count", "sensitivity": 1.0}]
        request = {
            "sql": "SELECT ward, COUNT(*) FROM t GROUP BY ward",
            "secure": False,
            "domains": {"ward": DOMAINS["ward"]},
            "stats": stats,
            "dp": {"mechanism": "gaussian", "multiplier": 1e-9, "shares": 1},
        }
        answers.append(np.asarray(site.answer(request)["vectors"][0], dtype=float))
    assert np.abs(answers[1] - answers[0]).sum() == pytest.approx(1.0, abs=1e-6)


def test_under_dp_no_exact_count_of_clipped_or_outside_rows_is_released() -> None:
    a = pd.DataFrame({"ward": ["north", "west"] * 10, "age": [50.0] * 8 + [500.0, 50.0] * 6})
    sites = _sites([a, a.copy()], min_group_size=5)
    sql = "SELECT ward, COUNT(*), SUM(age) FROM t GROUP BY ward"
    df = query(sites, sql, secure=True, epsilon=1.0)
    # These counts change by one with one record: released exactly, they would spend
    # an unbounded epsilon; under DP they are not released at all.
    assert df.attrs["clipped"] is None
    assert df.attrs["outside_domain"] is None
    assert df.attrs["withheld_groups"] is None
    plain = query(sites, sql, secure=True)
    assert plain.attrs["clipped"] == {"age": 12}
    assert plain.attrs["outside_domain"] == 20


def test_without_secure_aggregation_each_sites_answer_carries_the_full_noise() -> None:
    # The server sees each site's answer on its own: a share of the noise (1/n of
    # its variance) would protect the site far less than the epsilon it is charged.
    frame = pd.DataFrame({"ward": ["north"] * 20, "age": [60.0] * 20})
    site = _sites([frame])[0]
    site._rng = np.random.default_rng(5)  # seeded: the check cannot flake
    request = {
        "sql": "SELECT COUNT(*) FROM t",
        "secure": False,
        "domains": {},
        "stats": [{"op": "count", "sensitivity": 1.0}],
        "dp": {"mechanism": "gaussian", "multiplier": 3.0, "shares": 100},
    }
    draws = []
    for k in range(300):  # a new request each time: a repeat is answered from the cache
        asked = {**request, "sql": f"SELECT COUNT(*) FROM t WHERE age > {-k}"}  # noqa: S608
        draws.append(float(site.answer(asked)["vectors"][0][0]) - 20.0)
    assert np.std(draws) == pytest.approx(3.0, rel=0.2)  # not 3 / sqrt(100)


def test_the_same_sql_with_other_noise_settings_is_charged_to_the_analyst_again(
    frames: list[pd.DataFrame],
) -> None:
    # Each delta (or precision) gives a new noisy answer: were it free, averaging the
    # answers would get past the analyst's budget.
    sites = _sites(frames)
    analyst = Analyst(epsilon=50.0, delta=1e-6)
    sql = "SELECT COUNT(*) FROM t"
    spent = []
    for delta in (1e-6, 1e-7):
        query(sites, sql, secure=False, epsilon=1.0, delta=delta, analyst=analyst)
        spent.append(analyst.spent)
    query(sites, sql, secure=False, epsilon=1.0, delta=1e-7, analyst=analyst)  # a repeat
    assert spent[1] > spent[0] > 0
    assert analyst.spent == spent[1]

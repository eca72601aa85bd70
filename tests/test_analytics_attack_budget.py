"""An analyst's budget against repeats that are not repeats, and a site's budget across restarts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import covey.analytics._site as site_module
from covey.analytics import (
    Analyst,
    FederationQueryError,
    Policy,
    PolicyError,
    QueryError,
    Site,
    query,
)
from covey.transport.grpc import GrpcServerTransport

POLICY = Policy(bounds={"x": (0, 10)}, min_group_size=5)
SQL = "SELECT SUM(x) FROM t"


def _site(i: int) -> Site:
    rng = np.random.default_rng(i)
    return Site({"t": pd.DataFrame({"x": rng.uniform(0, 10, 50)})}, POLICY, name=f"s{i}")


@pytest.mark.parametrize("secure", [False, True])
def test_the_same_sql_over_other_sites_is_charged_again(secure: bool) -> None:
    a, b, c = _site(0), _site(1), _site(2)
    analyst = Analyst(epsilon=10.0)
    query([a, b], SQL, secure=secure, epsilon=1.0, analyst=analyst)
    once = analyst.spent
    query([a, b, c], SQL, secure=secure, epsilon=1.0, analyst=analyst)
    # a third site's fresh noisy answer: the difference of the two totals is its sum
    assert analyst.spent > once * 1.5
    query([a, b, c], SQL, secure=secure, epsilon=1.0, analyst=analyst)
    assert analyst.spent == pytest.approx(2 * once, rel=0.05)  # a true repeat stays free


@pytest.mark.parametrize("secure", [False, True])
def test_a_repeat_a_site_answers_afresh_is_charged(
    secure: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(site_module, "MAX_CACHE", 1)
    sites = [_site(0), _site(1)]
    analyst = Analyst(epsilon=10.0)
    first = query(sites, SQL, secure=secure, epsilon=1.0, analyst=analyst)
    query(sites, "SELECT COUNT(*) FROM t", secure=secure, epsilon=1.0, analyst=analyst)
    spent = analyst.spent
    again = query(sites, SQL, secure=secure, epsilon=1.0, analyst=analyst)
    # the sites' caches let the first answer go: new noise, a new release
    assert again.iloc[0, 0] != first.iloc[0, 0]
    assert analyst.spent > spent * 1.2
    assert again.attrs["privacy"]["analyst_spent"] == analyst.spent


POLICY_TOML = """
[policy]
min_group_size = 5
epsilon = 1.0
bounds = { x = [0, 10] }
"""


def _site_once(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    log = open(tmp / "site.log", "ab")  # noqa: SIM115 - closed with the process
    try:
        return subprocess.Popen(
            [
                sys.executable, "-m", "covey", "site",
                "--table", f"t={tmp / 'data' / 't.parquet'}",
                "--policy", str(tmp / "policy.toml"),
                "--server", f"127.0.0.1:{port}",
                "--insecure", "--once", "--name", "s0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )  # fmt: skip
    finally:
        log.close()


def _ask(tmp: Path, sql: str) -> pd.DataFrame | str:
    """Start a query server, let one `covey site --once` process answer, let it exit."""
    transport = GrpcServerTransport("127.0.0.1:0")
    proc = _site_once(tmp, transport.port)
    try:
        assert transport.wait_for_clients(1, 60), (tmp / "site.log").read_text()
        try:
            return query(transport, sql, secure=False, epsilon=0.6, timeout=60)
        except (PolicyError, FederationQueryError) as exc:
            return str(exc)
    finally:
        transport.close("the query is answered")
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


@pytest.mark.slow
def test_a_restarted_site_process_goes_on_from_the_budget_it_spent(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    frame = pd.DataFrame({"x": np.random.default_rng(0).uniform(0, 10, 50)})
    frame.to_parquet(tmp_path / "data" / "t.parquet")
    (tmp_path / "policy.toml").write_text(POLICY_TOML)
    first = _ask(tmp_path, "SELECT SUM(x) FROM t")
    assert isinstance(first, pd.DataFrame), first
    kept = tmp_path / "data" / "s0.covey-budget.json"  # next to the site's data
    spent = json.loads(kept.read_text())["spent"]
    assert spent == pytest.approx(0.6, rel=0.01)
    # a new process: 0.6 more would take the site past its budget of 1.0
    second = _ask(tmp_path, "SELECT COUNT(*) FROM t")
    assert isinstance(second, str)
    assert "privacy budget cannot pay for this query" in second
    assert json.loads(kept.read_text())["spent"] == spent


def test_a_ledger_file_at_another_delta_or_not_a_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    site = Site({"t": pd.DataFrame({"x": [1.0] * 10})}, POLICY, ledger=path)
    query([site], SQL, secure=False, epsilon=0.5)
    again = Site({"t": pd.DataFrame({"x": [1.0] * 10})}, POLICY, ledger=path)
    assert again.epsilon_spent == pytest.approx(site.epsilon_spent)
    other = Policy(bounds={"x": (0, 10)}, min_group_size=5, delta=1e-7)
    with pytest.raises(ValueError, match="delta"):
        Site({"t": pd.DataFrame({"x": [1.0]})}, other, ledger=path)
    path.write_text('{"epsilon": null, "delta": 1e-06, "ledger": {"entries": [["x", 1]]}}')
    with pytest.raises(ValueError, match="not a site's budget"):
        Site({"t": pd.DataFrame({"x": [1.0]})}, POLICY, ledger=path)


def test_a_query_too_large_for_the_sites_is_refused_before_the_analyst_pays() -> None:
    values = list(range(300))
    policy = Policy(
        bounds={"x": (0, 10)}, domains={"a": values, "b": values}, min_group_size=5, epsilon=10
    )
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {"a": rng.integers(0, 300, 40), "b": rng.integers(0, 300, 40), "x": rng.uniform(0, 10, 40)}
    )
    sites = [Site({"t": table}, policy, name=f"s{i}") for i in range(2)]
    analyst = Analyst(epsilon=3.0)
    sql = "SELECT a, b, HISTOGRAM(x, 0, 10, 300) AS h FROM t GROUP BY a, b"
    limit = "would need 27,180,000 numbers .* the sites compute at most 20,000,000"
    with pytest.raises(QueryError, match=f"h over 90,000 group.*{limit}"):
        query(sites, sql, secure=False, epsilon=1.0, analyst=analyst)
    assert analyst.spent == 0.0
    assert [s.epsilon_spent for s in sites] == [0.0, 0.0]
    # without DP, a median's 1024 bins a stage over as many groups: named as the SQL says
    with pytest.raises(QueryError, match="MEDIAN\\(x\\) over 90,000 group"):
        query(
            [
                Site(
                    {"t": table},
                    Policy(bounds={"x": (0, 10)}, domains={"a": values, "b": values}),
                    name=f"p{i}",
                )
                for i in range(2)
            ],
            "SELECT a, b, MEDIAN(x) FROM t GROUP BY a, b",
            secure=False,
        )

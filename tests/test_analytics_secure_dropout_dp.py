"""A site that drops out of a secure DP stage: the others' sum is never unmasked.

Each site adds its share of the noise, so the sum of fewer sites than asked holds
less noise than the query was calibrated and charged for. Before, the server
unmasked that sum anyway (then refused to answer), so it saw a release whose
privacy cost no budget recorded.
"""

from __future__ import annotations

import pandas as pd
import pytest

from covey.analytics import Analyst, FederationQueryError, Policy, Site, query
from covey.analytics._exchange import run_site_task
from covey.core import Reply, Task
from covey.secagg._handlers import KINDS
from covey.transport import MemoryTransport

SQL = "SELECT SUM(x) FROM t"
POLICY = Policy(bounds={"x": (0, 10)}, min_group_size=1, epsilon=10.0)


def _sites(policy: Policy = POLICY) -> list[Site]:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    return [Site({"t": frame}, policy, name=f"s{i}") for i in range(3)]


def test_a_site_lost_after_answering_stops_the_stage_before_any_unmasking() -> None:
    sites = _sites()
    asked: list[tuple[int, str]] = []

    def handler(cid: int, task: Task) -> Reply:
        asked.append((cid, task.kind))
        reply = run_site_task(sites[cid], cid, task)
        if cid == 2 and task.kind == KINDS[2]:  # s2 answered (and charged), its reply is lost
            return Reply(cid, task.kind, error="ConnectionError: the connection was lost")
        return reply

    analyst = Analyst()
    with pytest.raises(FederationQueryError) as caught:
        query(MemoryTransport([0, 1, 2], handler), SQL, epsilon=1.0, analyst=analyst)
    said = str(caught.value)
    assert "2 of 3 clients sent masked inputs" in said
    assert "nothing was unmasked" in said
    assert "s2: ConnectionError: the connection was lost" in said
    assert "charged it to their DP budgets" in said
    assert [kind for _, kind in asked if kind == KINDS[3]] == []  # no sum was revealed
    # what was spent is accounted: every site that answered, and the analyst
    spent = [site.budget.spent for site in sites]
    assert all(s == pytest.approx(1.0, rel=1e-3) for s in spent)
    assert analyst.spent == pytest.approx(1.0, rel=1e-3)

    # asked again of the same sites: their cached answers, at no further cost
    transport = MemoryTransport([0, 1, 2], lambda cid, task: run_site_task(sites[cid], cid, task))
    df = query(transport, SQL, epsilon=1.0, analyst=analyst)
    assert df.attrs["privacy"]["site_spent"] == dict(zip(["s0", "s1", "s2"], spent, strict=True))
    assert [site.budget.spent for site in sites] == spent
    assert analyst.spent == pytest.approx(1.0, rel=1e-3)


def test_a_stage_without_noise_is_not_unmasked_either_and_says_nothing_of_budgets() -> None:
    sites = _sites(Policy(bounds={"x": (0, 10)}, min_group_size=1))
    asked: list[str] = []

    def handler(cid: int, task: Task) -> Reply:
        asked.append(task.kind)
        if cid == 0 and task.kind == KINDS[2]:
            return Reply(cid, task.kind, error="ConnectionError: the connection was lost")
        return run_site_task(sites[cid], cid, task)

    with pytest.raises(FederationQueryError, match="nothing was unmasked") as caught:
        query(MemoryTransport([0, 1, 2], handler), SQL)
    assert "budget" not in str(caught.value)
    assert KINDS[3] not in asked

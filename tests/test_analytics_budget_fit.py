"""The largest epsilon that fits, as refusing sites tell the server in a field of its own."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from covey.analytics import Policy, PolicyError, Site, query
from covey.analytics._budget_fit import what_fits
from covey.clients import run_task
from covey.core import Reply, Task
from covey.transport import MemoryTransport

SQL = "SELECT COUNT(*), SUM(age) FROM p WHERE age > 30"
_HINT = re.compile(r"every site pays for epsilon ([0-9.e-]+) or less")


def _sites() -> list[Site]:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"age": rng.uniform(0, 99, 200)})
    return [
        Site(
            {"p": frame},
            Policy(bounds={"age": (0, 100)}, min_group_size=1, epsilon=budget, delta=1e-6),
            name=f"h{i}",
        )
        for i, budget in enumerate((1.5, 1.3))
    ]


def _rewritten(sites: list[Site], change: Callable[[dict[str, Any]], None]) -> MemoryTransport:
    """The sites, each refusal changed by ``change`` on its way to the server."""

    def answer(cid: int, task: Task) -> Reply:
        reply = run_task(sites[cid], cid, task)
        if isinstance(reply.result, dict) and "refused" in reply.result:
            change(reply.result)
        return reply

    return MemoryTransport(list(range(len(sites))), answer)


def _refused(transport: MemoryTransport) -> str:
    with pytest.raises(PolicyError, match="cannot pay for this query") as info:
        query(transport, SQL, secure=False, epsilon=1.0, delta=1e-5)
    return str(info.value)


def _reworded(result: dict[str, Any]) -> None:
    result["refused"] = re.sub(r"; ask with epsilon .*", "", result["refused"])


def _older(result: dict[str, Any]) -> None:
    del result["fits"]  # a site of a version before the field: its text alone says it


@pytest.mark.parametrize("change", [_reworded, _older])
def test_the_server_reads_what_fits_from_the_refusal_not_its_wording(
    change: Callable[[dict[str, Any]], None],
) -> None:
    # the hint was read out of the sites' refusal text: a site that words its refusal
    # otherwise gave none; a site of an older version, which sends the text alone, still does
    sites = _sites()
    query(sites, "SELECT COUNT(*) FROM p", secure=False, epsilon=0.8)
    said = _refused(_rewritten(sites, change))
    found = _HINT.search(said)
    assert found is not None, said
    most = float(found.group(1))
    query(sites, SQL, secure=False, epsilon=most, delta=1e-5)  # answered: it fits
    assert sites[1].epsilon_spent <= 1.3 * (1 + 1e-9)


def test_a_site_sends_what_fits_its_budget_in_its_refusal() -> None:
    sites = _sites()
    query(sites, "SELECT COUNT(*) FROM p", secure=False, epsilon=0.8)
    seen: list[dict[str, Any]] = []
    _refused(_rewritten(sites, seen.append))
    assert len(seen) == 2
    for got in seen:
        fits = got["fits"]
        assert set(fits) == {"epsilon", "delta"}
        assert fits["delta"] == 1e-6
        assert f"ask with epsilon {fits['epsilon']:.3g} or less" in got["refused"]


def test_a_refusal_that_only_quotes_the_hint_is_no_budgets() -> None:
    # a site that sends the field and says nothing fits is not read from its text
    text = "no such column 'ask with epsilon 5 or less (at delta 1e-06)'"
    assert what_fits("laplace", 2, 1e-6, [{"refused": text, "fits": None}]) == ""
    assert what_fits("laplace", 2, 1e-6, [{"refused": text}]) != ""  # an older site's text
    told = {"refused": "over budget", "fits": {"epsilon": 0.5, "delta": 1e-6}}
    assert what_fits("laplace", 2, 1e-6, [told]).startswith("; every site pays for epsilon 0.")
    for bad in ({"epsilon": True, "delta": 1e-6}, {"epsilon": 0.5, "delta": 2.0}, [0.5]):
        assert what_fits("laplace", 2, 1e-6, [{"refused": "x", "fits": bad}]) == ""
    assert what_fits("laplace", 2, 1e-6, [told, {"refused": "late"}]) == ""

"""`covey site` stays for the next query when the last query server refuses it while closing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from _ports import unused_port
from covey.analytics import _cli
from covey.transport.grpc import Refused
from covey.transport.grpc._refusal import RUN_OVER


class _Done(Exception):
    """Ends the site's loop in the test."""


def _joins(*outcomes: Any) -> tuple[list[int], Any]:
    calls: list[int] = []

    def join() -> Any:
        calls.append(1)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return calls, join


def test_a_site_refused_by_a_closing_query_server_joins_the_next_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_cli, "_REJOIN_PAUSE", 0.0)
    answered = SimpleNamespace(tasks=3, reason="the query is answered")
    closing = Refused(f"the server cannot take this client: {RUN_OVER}")
    calls, join = _joins(answered, closing, answered, _Done())
    with pytest.raises(_Done):
        _cli._serve_queries(join, once=False)
    assert len(calls) == 4  # the refusal did not end the site


def test_other_refusals_and_once_still_end_the_site(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cli, "_REJOIN_PAUSE", 0.0)
    revoked = Refused("the server refused this client: certificate revoked")
    calls, join = _joins(revoked)
    with pytest.raises(Refused, match="revoked"):
        _cli._serve_queries(join, once=False)
    closing = Refused(f"the server cannot take this client: {RUN_OVER}")
    calls, join = _joins(closing)
    with pytest.raises(Refused, match="closing"):
        _cli._serve_queries(join, once=True)
    calls, join = _joins(SimpleNamespace(tasks=1, reason="done"))
    _cli._serve_queries(join, once=True)
    assert len(calls) == 1


def test_a_site_waits_for_the_next_query_server_however_long_it_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import covey.deploy
    from covey.transport.grpc import _refusal

    pd.DataFrame({"age": [30, 40]}).to_csv(tmp_path / "patients.csv", index=False)
    port = unused_port()  # nothing listens there: no query server is up
    real = covey.deploy.connect

    def quick(*args: Any, **kwargs: Any) -> Any:  # no real seconds between attempts
        return real(*args, **{**kwargs, "backoff": 0.001, "max_backoff": 0.001})

    monkeypatch.setattr(covey.deploy, "connect", quick)
    seen = [0]

    def an_hour_per_attempt() -> float:  # what the retry budget reads as the time
        seen[0] += 1
        if seen[0] > 24:
            raise _Done  # a day without a query server went by, and the site still waits
        return 3600.0 * seen[0]

    monkeypatch.setattr(_refusal, "time", SimpleNamespace(monotonic=an_hour_per_attempt))
    with pytest.raises(_Done):
        _cli.site_command(
            table=[f"patients={tmp_path / 'patients.csv'}"],
            server=f"127.0.0.1:{port}",
            name="site-a",
            insecure=True,
            ledger=tmp_path / "site-a.json",
        )

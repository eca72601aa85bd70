"""A site that joined a query server and left before the query is named in ``refused``.

Before, it was only absent from ``df.attrs["sites"]``: the answer left out its
rows and nothing said which expected site was missing, or why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pandas as pd
import pytest

from _live import Joined
from covey.analytics import Policy, Site, query
from covey.transport.grpc import GrpcServerTransport

pytestmark = pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")

POLICY = Policy(bounds={"x": (0, 10)}, min_group_size=1)


def _site(name: str) -> Site:
    return Site({"t": pd.DataFrame({"x": [1.0, 2.0, 3.0]})}, POLICY, name=name)


def _until(check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the server did not see the site leave"
        time.sleep(0.02)


def test_a_site_that_left_before_the_query_is_named_in_refused() -> None:
    transport = GrpcServerTransport("127.0.0.1:0")
    stops = {name: threading.Event() for name in ("s0", "s1", "s2")}
    joined = [
        Joined(transport.port, _site(name), name=name, stop=stop) for name, stop in stops.items()
    ]
    try:
        assert transport.wait_for_clients(3, 30)
        stops["s1"].set()  # s1 leaves between the wait and the query
        _until(lambda: len(transport.clients()) == 2)
        df = query(transport, "SELECT SUM(x) FROM t", secure=False, timeout=30)
        assert df.iloc[0, 0] == 12.0
        assert sorted(df.attrs["sites"]) == ["s0", "s2"]
        assert list(df.attrs["refused"]) == ["s1"]
        assert df.attrs["refused"]["s1"].startswith("the site left before the query (")
    finally:
        for stop in stops.values():
            stop.set()
        transport.close("the query is answered")
        for j in joined:
            j.join(30)

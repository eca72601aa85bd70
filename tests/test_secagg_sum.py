"""The secure sum over a transport: exact sums, dropouts recovered, clean aborts."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covey.clients._client import run_task
from covey.core._messages import Reply, Task
from covey.secagg import (
    SecAggAbort,
    ThreatModel,
    register_input,
    secure_sum,
)
from covey.secagg._server_stages import LEFT_MASKED
from covey.transport._memory import MemoryTransport
from covey.transport.grpc._registry import lost_connection


class Site:
    def __init__(self, cid: int, length: int) -> None:
        rng = np.random.default_rng(cid)
        self.vector = rng.integers(-1000, 1001, size=length).astype(np.int64)


register_input("test.vector", lambda client, payload: client.vector)


class Dropping:
    """A memory transport whose clients vanish at chosen stages (no reply at all)."""

    def __init__(self, clients: Mapping[int, Site], drop: Mapping[str, set[int]]) -> None:
        self.clients_ = clients
        self.drop = drop
        self.inner = MemoryTransport(sorted(clients), self._handle)
        self.received: list[Task] = []

    def _handle(self, cid: int, task: Task) -> Reply:
        return run_task(self.clients_[cid], cid, task)

    def clients(self) -> list[int]:
        return sorted(self.clients_)

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        for reply in self.inner.exchange(tasks, timeout=timeout):
            if reply.cid in self.drop.get(reply.kind, set()):
                continue
            yield reply

    def close(self) -> None:
        pass


def _sites(n: int, length: int = 50) -> dict[int, Site]:
    return {cid: Site(cid, length) for cid in range(n)}


def _plain(sites: Mapping[int, Site], cids: list[int]) -> np.ndarray:
    return np.sum([sites[c].vector for c in cids], axis=0)


@pytest.mark.parametrize("complete", [False, True])
def test_twenty_clients_sum_exactly(complete: bool) -> None:
    sites = _sites(20)
    transport = Dropping(sites, {})
    result = secure_sum(
        transport,
        list(sites),
        round=1,
        input_kind="test.vector",
        length=50,
        bound=1000,
        complete=complete,
    )
    assert result.total.dtype == np.int64
    np.testing.assert_array_equal(result.total, _plain(sites, list(sites)))
    assert result.survivors == list(range(20))
    assert result.plan.complete is complete
    assert not result.dropped
    assert not result.excluded


def _summed(sites: Any, drops: Any, threat: ThreatModel | None, **options: Any) -> Any:
    """``secure_sum`` of the sites' test vectors, ``drops`` dropping.

    Round 1, 50 entries bounded by 1,000 and the complete graph, unless ``options`` say
    otherwise (``complete=None``: secure_sum's own choice).
    """
    given = {"round": 1, "input_kind": "test.vector", "length": 50, "bound": 1000}
    return secure_sum(
        Dropping(sites, drops), list(sites), threat=threat, **{**given, "complete": True, **options}
    )


def test_dropouts_after_key_sharing_and_after_masking_are_recovered() -> None:
    sites = _sites(30)
    threat = ThreatModel(corrupt_rate=0.05, dropout_rate=0.2)
    # 2 vanish before the masked input (after sharing keys), 2 after sending it.
    drop = {"secagg.mask": {3, 17}, "secagg.unmask": {5, 22}}
    result = _summed(sites, drop, threat, round=2, seed=1, complete=None)
    survivors = [c for c in sites if c not in (3, 17)]
    assert result.survivors == survivors
    # Said as a client silent in any other stage is (the round's failure for it).
    assert result.dropped == {3: "no reply in time", 17: "no reply in time"}
    assert result.silent == {
        c: "left after its masked input was taken (it is in the sum): no reply in time"
        for c in (5, 22)
    }
    # 5 and 22 left in the unmasking: in the sum, and named (they were not)
    assert sorted(result.silent) == [5, 22]
    np.testing.assert_array_equal(result.total, _plain(sites, survivors))


def test_dropouts_before_key_sharing_are_excluded() -> None:
    sites = _sites(12)
    result = _summed(sites, {"secagg.advertise": {4}, "secagg.share": {7}}, None)
    assert set(result.excluded) == {4, 7}
    np.testing.assert_array_equal(result.total, _plain(sites, result.survivors))


def test_too_many_dropouts_abort_cleanly() -> None:
    sites = _sites(10)
    threat = ThreatModel(corrupt_rate=0.3, dropout_rate=0.3)
    # Complete graph, threshold 4 (> 3 corrupt): dropping 7 of 10 leaves 3 < 4.
    drop = {"secagg.mask": set(range(7))}
    with pytest.raises(SecAggAbort) as info:
        _summed(sites, drop, threat)
    assert info.value.stage == "mask"
    assert "threshold" in info.value.reason
    assert set(info.value.dropped) >= set(range(7))


def test_an_abort_in_the_unmasking_says_who_left_there_with_its_input_in_the_masked_sum() -> None:
    # They were named "no reply in time" alone, as a client that never sent its input
    # is, though their updates were in the masked sum (which was not unmasked).
    sites = _sites(10)
    threat = ThreatModel(corrupt_rate=0.3, dropout_rate=0.3)
    # threshold 4: 7 of the 10 survivors leave before revealing, 3 < 4 remain
    with pytest.raises(SecAggAbort) as info:
        _summed(sites, {"secagg.unmask": set(range(7))}, threat)
    assert info.value.stage == "unmask"
    assert sorted(info.value.dropped) == list(range(7))
    for why in info.value.dropped.values():
        assert why == (
            "no reply in time (in stage unmask, after its masked input was taken: its "
            "update was in the masked sum, which was not unmasked)"
        )
    # a lost connection still reads as one (a round cut short so may be run again)
    said = LEFT_MASKED.format("unmask", "client disconnected")
    assert said.startswith("client disconnected (in stage unmask, ")
    assert lost_connection(said)
    # one that left before sending its input is said so, as before
    with pytest.raises(SecAggAbort) as info:
        _summed(sites, {"secagg.mask": set(range(7))}, threat)
    assert info.value.dropped[0] == "no reply in time"


def test_tolerance_edge_survives_and_one_more_drop_aborts() -> None:
    sites = _sites(10)
    threat = ThreatModel(corrupt_rate=0.3, dropout_rate=0.3)
    # threshold 4: 6 dropped after sharing keys leave exactly 4 survivors -> fine.
    ok = _summed(sites, {"secagg.mask": set(range(6))}, threat)
    assert ok.plan.threshold == 4
    np.testing.assert_array_equal(ok.total, _plain(sites, list(range(6, 10))))
    with pytest.raises(SecAggAbort):
        _summed(sites, {"secagg.mask": set(range(7))}, threat)


def test_out_of_range_input_is_refused_by_the_client() -> None:
    sites = _sites(6)
    sites[2].vector[0] = 5000
    result = _summed(sites, {}, ThreatModel(0.0, 0.3))
    assert 2 in result.dropped
    assert "outside" in result.dropped[2]
    assert "5000" not in result.dropped[2]  # the value itself never reaches the server
    np.testing.assert_array_equal(result.total, _plain(sites, result.survivors))


def test_unknown_input_kind_fails_every_client_and_aborts() -> None:
    sites = _sites(5)
    with pytest.raises(SecAggAbort):
        secure_sum(
            Dropping(sites, {}), list(sites), round=1, input_kind="no.such", length=3, bound=1
        )


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(3, 45),
    data=st.data(),
)
def test_any_dropout_pattern_gives_the_exact_sum_or_a_clean_abort(
    n: int, data: st.DataObject
) -> None:
    sites = _sites(n, length=8)
    stages = ["secagg.advertise", "secagg.share", "secagg.mask", "secagg.unmask"]
    drop: dict[str, set[int]] = {s: set() for s in stages}
    for cid in data.draw(st.lists(st.sampled_from(range(n)), max_size=n, unique=True)):
        drop[data.draw(st.sampled_from(stages))].add(cid)
    try:
        result = _summed(
            sites,
            drop,
            ThreatModel(0.05, 0.3),
            length=8,
            complete=data.draw(st.sampled_from([None, True])),
        )
    except SecAggAbort:
        return
    gone_early = drop["secagg.advertise"] | drop["secagg.share"]
    assert set(result.survivors) == set(range(n)) - gone_early - drop["secagg.mask"]
    np.testing.assert_array_equal(result.total, _plain(sites, result.survivors))


def test_too_few_clients_for_the_threat_model_abort_before_anything_is_sent() -> None:
    sites = _sites(2)
    transport = Dropping(sites, {})
    with pytest.raises(SecAggAbort) as info:
        secure_sum(
            transport,
            list(sites),
            round=1,
            input_kind="test.vector",
            length=50,
            bound=1000,
            threat=ThreatModel(0.05, 0.15),
        )
    assert info.value.stage == "setup"
    with pytest.raises(SecAggAbort, match="62"):
        secure_sum(
            transport,
            list(sites),
            round=1,
            input_kind="test.vector",
            length=50,
            bound=2**61,
            threat=ThreatModel(0.0, 0.0),
        )


def test_the_default_threat_model_survives_fifteen_percent_dropping() -> None:
    from covey.secagg._secure import DEFAULT_THREAT

    for n, seed in ((20, 0), (60, 1), (100, 2)):
        sites = _sites(n, length=8)
        gone = set(np.random.default_rng(seed).choice(n, size=int(0.15 * n), replace=False))
        result = _summed(
            sites,
            {"secagg.mask": {int(c) for c in gone}},
            DEFAULT_THREAT,
            length=8,
            seed=seed,
            complete=None,
        )
        assert result.plan.complete is (n <= 30)
        assert set(result.dropped) == gone
        np.testing.assert_array_equal(result.total, _plain(sites, result.survivors))


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"threat": "curious"}, "threat must be a covey.secagg.ThreatModel or None, got 'curious'"),
        ({"round": True}, "round must be a whole number >= 0, got True"),
        ({"round": -1}, "round must be a whole number >= 0, got -1"),
        ({"round": 1.5}, "round must be a whole number >= 0, got 1.5"),
        ({"noise": "gaussian"}, "noise must be a covey.secagg.Noise or None, got 'gaussian'"),
        ({"noise_entries": -1}, "noise_entries must be a whole number >= 0 and <= 50"),
        ({"noise_entries": 51}, "noise_entries must be a whole number >= 0 and <= 50"),
        ({"min_survivors": -1}, "min_survivors must be a whole number >= 0, got -1"),
        ({"min_survivors": 2.5}, "min_survivors must be a whole number >= 0, got 2.5"),
        ({"seed": "x"}, "seed must be a whole number >= 0 or None, got 'x'"),
        ({"complete": "yes"}, "complete must be True, False or None, got 'yes'"),
        ({"signed": "no"}, "signed must be True or False, got 'no'"),
        ({"directory": {"a": bytes(32)}}, "a directory needs signed=True"),
    ],
)
def test_options_of_the_wrong_kind_are_refused_before_anything_is_sent(
    options: dict[str, object], said: str
) -> None:
    # As secure() refuses them: not an AttributeError, nor every client failing the round.
    sites = _sites(5)
    handled: list[int] = []

    class Counting(Dropping):
        def _handle(self, cid: int, task: Task) -> Reply:
            handled.append(cid)
            return super()._handle(cid, task)

    transport = Counting(sites, {})
    with pytest.raises(ValueError, match=re.escape(said)):
        secure_sum(
            transport,
            list(sites),
            input_kind="test.vector",
            length=50,
            bound=1000,
            **{"round": 1, **options},  # type: ignore[arg-type]
        )
    assert handled == []

"""A client whose reply secure aggregation refused is told why, as a plain round tells it.

The server refuses a client's malformed keys, shares or masked input, and goes
on without it; a deployed site was told nothing, as its update never reached
the round loop's own checks. Only what the server refused of that client's own
reply is told (never a word of another client's), and a client's own failure
is not (its own log has it).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pytest

import covey
from _live import served_to
from _mistaken import Sends
from covey.clients._client import run_task
from covey.core._messages import Reply, Task
from covey.secagg import SecAggAbort, ThreatModel, _client_stages, _handlers, secure, secure_sum
from covey.secagg._handlers import KINDS
from covey.secagg._secure import FIT_INPUT
from covey.server._sync import RoundLoop
from covey.transport._memory import MemoryTransport

LENGTH, BOUND = 6, 100
TOLD = "round 1: the server refused this site's update: "


def _strategy() -> covey.Strategy:
    strategy = covey.FedAvg(min_fit_clients=1, min_available_clients=3, fraction_evaluate=0.0)
    with pytest.warns(UserWarning, match="honest-but-curious"):
        return secure(strategy, clip_range=1.0, threat=ThreatModel(0.0, 0.0))


class Malformed(Sends):
    """Trains as the others do; its masked input loses a byte on the way."""


_MASKING = threading.local()  # the client whose masked input is being made, on its task thread


def test_a_deployed_site_whose_masked_input_was_refused_reads_why_in_its_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fit_input, mask = _handlers._INPUTS[FIT_INPUT], _client_stages.mask

    def noted(client: Any, task: Task, spec: Any) -> Any:
        _MASKING.client = client
        return fit_input(client, task, spec)

    def cut(state: Any, sealed: Any, values: Any) -> Any:
        state, packed = mask(state, sealed, values)
        return state, packed[:-1] if isinstance(_MASKING.client, Malformed) else packed

    monkeypatch.setitem(_handlers._INPUTS, FIT_INPUT, noted)
    monkeypatch.setattr(_client_stages, "mask", cut)
    sites = [("site-0", Sends(False, 0.5)), ("site-1", Malformed(False, 0.5))]
    sites.append(("site-2", Sends(False, 0.5)))
    with caplog.at_level(logging.WARNING, logger="covey"):
        result = served_to(sites, _strategy(), {"w": np.zeros(6)})
    (failure,) = result.history.rounds[-1].fit_failures
    assert failure.name == "site-1"
    assert failure.error.startswith("a malformed masked input: a packed vector has ")
    np.testing.assert_allclose(result.weights["w"], np.full(6, 0.5), atol=1e-3)  # the others'
    told = [r.getMessage() for r in caplog.records if "refused this site's" in r.getMessage()]
    assert told == [
        f"{TOLD}secure aggregation left this site out in stage mask: {failure.error}"
    ], told


# -- which refusals secure_sum hands on to be told ----------------------------------------


class Site:
    def __init__(self, cid: int) -> None:
        self.vector = np.full(LENGTH, cid, dtype=np.int64)


_handlers.register_input("test.refusal", lambda client, payload: client.vector)
Attack = Callable[[Reply], Reply | None]


class Rewriting:
    """A memory transport where a client's reply of a stage is rewritten (None: lost)."""

    def __init__(self, n: int, attacks: Mapping[tuple[str, int], Attack]) -> None:
        self.sites = {c: Site(c) for c in range(n)}
        self.inner = MemoryTransport(sorted(self.sites), self._handle)
        self.attacks = attacks

    def _handle(self, cid: int, task: Task) -> Reply:
        return run_task(self.sites[cid], cid, task)

    def clients(self) -> list[int]:
        return sorted(self.sites)

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        for reply in self.inner.exchange(tasks, timeout=timeout):
            attack = self.attacks.get((reply.kind, reply.cid))
            out = reply if attack is None else attack(reply)
            if out is not None:
                yield out

    def close(self) -> None:
        pass


def _with(key: str, value: Any) -> Attack:
    return lambda reply: Reply(reply.cid, reply.kind, result={**reply.result, key: value})


def _failed(reply: Reply) -> Reply:
    return Reply(reply.cid, reply.kind, error="RuntimeError: its own")


def _sum(transport: Rewriting, **kw: Any) -> Any:
    cids = list(transport.sites)
    return secure_sum(
        transport, cids, round=1, input_kind="test.refusal", length=LENGTH, bound=BOUND, **kw
    )


def test_a_secure_sum_names_the_clients_whose_own_reply_it_refused() -> None:
    advertise, share, mask = KINDS[0], KINDS[1], KINDS[2]
    attacks = {
        (advertise, 1): _with("c_pk", b"short"),
        (share, 2): _with("shares", {"0": b"x"}),
        (mask, 3): _with("masked", "not bytes"),
        (mask, 4): lambda reply: None,  # too late
        (mask, 5): _failed,  # its own failure: it knows
    }
    result = _sum(Rewriting(9, attacks), threat=ThreatModel(0.0, 0.4), seed=1)
    assert result.survivors == [0, 6, 7, 8]
    said = "secure aggregation left this site out in stage"
    assert result.refused == {
        1: f"{said} advertise: malformed key advertisement",
        2: f"{said} share: malformed key shares",
        3: f"{said} mask: a masked input that is not bytes",
        4: f"{said} mask: no reply in time",
    }
    for u, told in result.refused.items():
        assert not re.search(r"client \d", told), told  # no other client's, nor its own id
        assert u in result.dropped or u in result.excluded


def test_a_secure_sum_that_aborts_still_names_the_clients_it_refused() -> None:
    attacks = {(KINDS[2], c): _with("masked", b"junk") for c in (1, 2)}
    with pytest.raises(SecAggAbort) as aborted:
        _sum(Rewriting(4, attacks), threat=ThreatModel(0.0, 0.0), min_survivors=3)
    assert aborted.value.refused == {
        c: "secure aggregation left this site out in stage mask: a malformed masked input: "
        f"{aborted.value.dropped[c].split(': ', 1)[1]}"
        for c in (1, 2)
    }


class Telling(Rewriting):
    def __init__(self, n: int, attacks: Mapping[tuple[str, int], Attack]) -> None:
        super().__init__(n, attacks)
        self.told: list[tuple[int, int, str, str, str]] = []
        self.trainers = {c: Sends(False, 0.5) for c in range(n)}  # kept: they hold the keys

    def _handle(self, cid: int, task: Task) -> Reply:
        return run_task(self.trainers[cid], cid, task)

    def refused(
        self, cid: int, rnd: int, reason: str, *, stage: str = "fit", unit: str = ""
    ) -> None:
        self.told.append((cid, rnd, reason, stage, unit))


def test_a_secure_round_tells_the_client_whose_masked_input_it_refused() -> None:
    transport = Telling(4, {(KINDS[2], 2): _with("masked", b"junk"), (KINDS[2], 3): _failed})
    loop = RoundLoop(_strategy(), transport, {"w": np.zeros(6)})
    history = loop.run(2)
    for rnd in (1, 2):
        errors = {f.cid: f.error for f in history.rounds[rnd].fit_failures}
        assert set(errors) == {2, 3}
        assert errors[3] == "RuntimeError: its own"  # recorded, not told
    said = "secure aggregation left this site out in stage mask: a malformed masked input: "
    assert [(cid, rnd, stage, unit) for cid, rnd, _, stage, unit in transport.told] == [
        (2, 1, "fit", ""),
        (2, 2, "fit", ""),
    ]
    assert all(reason.startswith(said) for _, _, reason, _, _ in transport.told)

"""What the server sees: uniform masked vectors, no plaintext, checked lists, signed keys."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from covey.clients._client import run_task
from covey.core._messages import Reply, Task
from covey.secagg import ProtocolAbort, SecAggAbort, _ring, identities, register_input, secure_sum
from covey.secagg import _client_stages as cs
from covey.transport._memory import MemoryTransport
from covey.transport.grpc._wire import result_to_wire

LENGTH, BOUND = 4096, 1000


class Site:
    def __init__(self, cid: int) -> None:
        rng = np.random.default_rng(100 + cid)
        self.vector = rng.integers(-BOUND, BOUND + 1, size=LENGTH).astype(np.int64)
        self.secagg_identity: Any = None


register_input("test.security", lambda client, payload: client.vector)


class Spy:
    """A memory transport that records every byte the server receives, per client and kind."""

    def __init__(self, sites: Mapping[int, Site]) -> None:
        self.sites = sites
        self.inner = MemoryTransport(sorted(sites), lambda c, t: run_task(self.sites[c], c, t))
        self.seen: list[tuple[int, str, bytes]] = []
        self.tamper: Any = None

    def clients(self) -> list[int]:
        return sorted(self.sites)

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        if self.tamper is not None:
            tasks = self.tamper(dict(tasks))
        for reply in self.inner.exchange(tasks, timeout=timeout):
            head, arrays = result_to_wire(reply.result)
            blob = head + b"".join(a.tobytes() for a in (arrays or {}).values())
            self.seen.append((reply.cid, reply.kind, blob + (reply.error or "").encode()))
            yield reply

    def close(self) -> None:
        pass

    def masked(self, cid: int) -> bytes:
        return next(b for c, k, b in self.seen if c == cid and k == "secagg.mask")


def _run(spy: Spy, **kw: Any) -> Any:
    return secure_sum(
        spy,
        list(spy.sites),
        round=1,
        input_kind="test.security",
        length=LENGTH,
        bound=BOUND,
        **kw,
    )


def _masked_vector(spy: Spy, cid: int, bits: int) -> np.ndarray:
    blob = spy.masked(cid)
    packed = blob[-_ring.packed_size(LENGTH, bits) :]
    return _ring.unpack(packed, bits, LENGTH)


def test_masked_vectors_look_uniform_and_reveal_no_plaintext() -> None:
    sites = {c: Site(c) for c in range(8)}
    spy = Spy(sites)
    result = _run(spy, complete=True)
    np.testing.assert_array_equal(result.total, sum(s.vector for s in sites.values()))
    everything = b"".join(b for _, _, b in spy.seen)
    for cid, site in sites.items():
        y = _masked_vector(spy, cid, result.bits).astype(np.float64)
        # Chi-square on 16 equal bins of the ring: df = 15, critical value 60 at p ~ 1e-7.
        bins = np.floor(y / 2.0**result.bits * 16).astype(int)
        counts = np.bincount(bins, minlength=16)
        expected = LENGTH / 16
        assert ((counts - expected) ** 2 / expected).sum() < 60
        # No linear trace of the input, and its encodings appear nowhere in the traffic.
        assert abs(np.corrcoef(y, site.vector)[0, 1]) < 0.1
        plain = _ring.to_ring(site.vector, result.bits, BOUND)
        assert _ring.pack(plain, result.bits)[:64] not in everything
        assert site.vector.astype("<i8").tobytes()[:64] not in everything
        assert site.vector.astype("<i4").tobytes()[:64] not in everything


def test_one_unit_change_changes_the_masked_vector_completely() -> None:
    sites = {c: Site(c) for c in range(6)}
    first = Spy(sites)
    r1 = _run(first, complete=True)
    sites[0].vector = sites[0].vector.copy()
    sites[0].vector[0] += 1
    second = Spy(sites)
    r2 = _run(second, complete=True)
    a, b = _masked_vector(first, 0, r1.bits), _masked_vector(second, 0, r2.bits)
    assert np.mean(a == b) < 0.01
    assert r2.total[0] == r1.total[0] + 1


def test_client_refuses_lists_that_would_reveal_both_secrets() -> None:
    state = _masked_state()
    peer = next(iter(state.held))
    with pytest.raises(ProtocolAbort, match="both alive and dropped"):
        cs.unmask(state, [state.setup.cid, peer], [peer])
    with pytest.raises(ProtocolAbort, match="lists this client as dropped"):
        cs.unmask(state, [peer], [state.setup.cid])
    others = sorted(state.held)
    with pytest.raises(ProtocolAbort, match="disagree"):
        cs.unmask(state, [state.setup.cid, *others[1:]], [])  # one neighbour left out
    done, reply = cs.unmask(state, [state.setup.cid, *others], [])
    assert set(reply["b"]) == {str(c) for c in [state.setup.cid, *others]}
    assert not reply["s"]
    with pytest.raises(ProtocolAbort, match="stage done"):
        cs.unmask(done, [state.setup.cid, *others], [])


def _masked_state() -> cs.ClientState:
    """Run four clients' first three stages by hand; return client 0's state."""
    session = bytes(range(32))
    cids = [0, 1, 2, 3]
    setups = {
        u: cs.Setup(session, u, u + 1, {v: v + 1 for v in cids if v != u}, 3, 4, 16, 10)
        for u in cids
    }
    states, adverts = {}, {}
    for u in cids:
        states[u], adverts[u] = cs.advertise(setups[u], None)
    sealed: dict[int, dict[int, bytes]] = {u: {} for u in cids}
    for u in cids:
        keys = {v: adverts[v] for v in cids if v != u}
        states[u], out = cs.share(states[u], keys, None)
        for v, blob in out["shares"].items():
            sealed[int(v)][u] = blob
    state, _ = cs.mask(states[0], sealed[0], np.arange(4))
    return state


def test_tampered_share_is_refused() -> None:
    sites = {c: Site(c) for c in range(5)}
    spy = Spy(sites)

    def flip(tasks: dict[int, Task]) -> dict[int, Task]:
        task = tasks.get(0)
        if task is None or task.kind != "secagg.mask":
            return tasks
        shares = dict(task.payload["shares"])
        key = next(iter(shares))
        shares[key] = shares[key][:-1] + bytes([shares[key][-1] ^ 1])
        tasks[0] = Task(
            task.kind, task.round, task.config, task.weights, {**task.payload, "shares": shares}
        )
        return tasks

    spy.tamper = flip
    result = _run(spy, complete=True)
    assert 0 in result.dropped
    assert "authentication" in result.dropped[0]


def test_signed_keys_work_and_a_forged_key_is_refused() -> None:
    sites = {c: Site(c) for c in range(5)}
    ids = identities([f"site-{c}" for c in sites])
    for c, site in sites.items():
        site.secagg_identity = ids[f"site-{c}"]
    result = _run(Spy(sites), complete=True, signed=True)
    np.testing.assert_array_equal(result.total, sum(s.vector for s in sites.values()))

    spy = Spy(sites)

    def forge(tasks: dict[int, Task]) -> dict[int, Task]:
        # The server swaps in a mask key of its own for client 1 when telling client 0.
        task = tasks.get(0)
        if task is None or task.kind != "secagg.share":
            return tasks
        keys = {k: dict(v) for k, v in task.payload["keys"].items()}
        keys["1"]["s_pk"] = bytes(32 * [7])
        tasks[0] = Task(
            task.kind, task.round, task.config, task.weights, {**task.payload, "keys": keys}
        )
        return tasks

    spy.tamper = forge
    result = _run(spy, complete=True, signed=True)
    assert 0 in result.excluded
    assert "not signed by 'site-1'" in result.excluded[0]


def test_unsigned_client_is_refused_when_signatures_are_required() -> None:
    sites = {c: Site(c) for c in range(4)}
    with pytest.raises(SecAggAbort, match="threshold"):
        _run(Spy(sites), complete=True, signed=True)

"""The consistency check of signed runs: a server that lies about the survivors learns nothing."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from covey.clients._client import run_task
from covey.compress._runtime import CompressedTransport
from covey.core._messages import Reply, Task
from covey.secagg import (
    ProtocolAbort,
    SecAggAbort,
    ThreatModel,
    identities,
    register_input,
    secure_sum,
)
from covey.secagg import _client_stages as cs
from covey.secagg._handlers import MAX_CLIENTS
from covey.transport._memory import MemoryTransport

LENGTH, BOUND = 64, 1000
# Thresholds of the complete graph: 4 of 5 clients, 5 of 6, 6 of 8.
SEMI_MALICIOUS = ThreatModel(corrupt_rate=0.05, dropout_rate=0.05, adversary="semi-malicious")
Rewrite = Callable[[int, Task], Task]


class Site:
    def __init__(self, cid: int) -> None:
        rng = np.random.default_rng(300 + cid)
        self.vector = rng.integers(-BOUND, BOUND + 1, size=LENGTH).astype(np.int64)
        self.secagg_identity: Any = None


register_input("test.consistency", lambda client, payload: client.vector)


class Server:
    """A memory transport through which the server may rewrite tasks and lose replies.

    ``rewrite[kind]`` changes each task of that kind before it is sent; clients
    in ``drop[kind]`` never answer that kind. Every task sent and every reply
    received is kept, to show what was revealed.
    """

    def __init__(self, sites: Mapping[int, Site]) -> None:
        self.sites = sites
        self.inner = MemoryTransport(sorted(sites), lambda c, t: run_task(self.sites[c], c, t))
        self.rewrite: dict[str, Rewrite] = {}
        self.drop: dict[str, set[int]] = {}
        self.sent: list[tuple[int, Task]] = []
        self.replies: list[Reply] = []

    def clients(self) -> list[int]:
        return sorted(self.sites)

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        tasks = {c: self.rewrite.get(t.kind, lambda _c, t: t)(c, t) for c, t in tasks.items()}
        self.sent.extend(tasks.items())
        for reply in self.inner.exchange(tasks, timeout=timeout):
            self.replies.append(reply)
            if reply.cid not in self.drop.get(reply.kind, set()):
                yield reply

    def close(self) -> None:
        pass

    def revealed(self) -> dict[int, Any]:
        """Each client's successful unmasking reply: the shares it revealed."""
        return {r.cid: r.result for r in self.replies if r.kind == "secagg.unmask" and r.ok}

    def errors(self, kind: str) -> dict[int, str]:
        return {r.cid: r.error or "" for r in self.replies if r.kind == kind and not r.ok}


def _sites(n: int, signed: bool = True) -> dict[int, Site]:
    sites = {c: Site(c) for c in range(n)}
    if signed:
        ids = identities([f"site-{c}" for c in sites])
        for c, site in sites.items():
            site.secagg_identity = ids[f"site-{c}"]
    return sites


def _run(server: Server, via: Any = None, **kw: Any) -> Any:
    """The secure sum of ``server``'s sites, through ``via`` (a transport wrapping it) if given."""
    kw.setdefault("complete", True)
    kw.setdefault("threat", SEMI_MALICIOUS)
    kw.setdefault("signed", any(s.secagg_identity is not None for s in server.sites.values()))
    return secure_sum(
        server if via is None else via,
        list(server.sites),
        round=1,
        input_kind="test.consistency",
        length=LENGTH,
        bound=BOUND,
        **kw,
    )


def _payload(task: Task, **changes: Any) -> Task:
    return Task(task.kind, task.round, task.config, task.weights, {**task.payload, **changes})


def _exact(sites: Mapping[int, Site]) -> np.ndarray:
    return np.sum([s.vector for s in sites.values()], axis=0)


@pytest.mark.parametrize("complete", [True, False], ids=["secagg", "secagg+"])
def test_honest_signed_runs_check_the_survivors_and_give_the_exact_sum(complete: bool) -> None:
    n = 6 if complete else 40
    sites = _sites(n)
    server = Server(sites)
    result = _run(server, complete=complete, seed=1)
    np.testing.assert_array_equal(result.total, _exact(sites))
    assert "consistency" in result.seconds
    kinds = [t.kind for _, t in server.sent]
    assert kinds.count("secagg.consistency") == n
    for cid, task in server.sent:
        if task.kind == "secagg.unmask":  # each client gets its neighbours' signatures only
            assert len(task.payload["signatures"]) == result.plan.degree
            assert str(cid) not in task.payload["signatures"]


def test_unsigned_runs_are_unchanged() -> None:
    sites = _sites(6, signed=False)
    server = Server(sites)
    result = _run(server)
    np.testing.assert_array_equal(result.total, _exact(sites))
    assert "consistency" not in result.seconds
    assert [t.kind for _, t in server.sent if t.kind == "secagg.consistency"] == []
    for _, task in server.sent:
        if task.kind == "secagg.unmask":
            assert set(task.payload) == {"session", "alive", "dropped"}


def test_clients_with_identities_take_the_check_even_if_the_server_does_not_ask() -> None:
    # A server cannot skip the check by not requiring signatures: clients that sign
    # their keys sign the lists too, and the honest server runs the stage for them.
    sites = _sites(5)
    server = Server(sites)
    result = _run(server, signed=False)
    np.testing.assert_array_equal(result.total, _exact(sites))
    assert "consistency" in result.seconds


def _lie_to_client_0(server: Server, victim: int) -> None:
    """Show client 0 (and only it) lists where ``victim`` dropped: it would reveal its mask key."""

    def lie(cid: int, task: Task) -> Task:
        if cid != 0:
            return task
        alive = [c for c in task.payload["alive"] if c != victim]
        return _payload(task, alive=alive, dropped=sorted([*task.payload["dropped"], victim]))

    server.rewrite = {"secagg.consistency": lie, "secagg.unmask": lie}


def test_a_server_showing_two_clients_different_survivors_is_refused() -> None:
    sites = _sites(6)
    server = Server(sites)
    _lie_to_client_0(server, victim=3)
    with pytest.raises(SecAggAbort) as info:
        _run(server)
    assert info.value.stage == "unmask"
    assert server.revealed() == {}  # nobody revealed a share
    errors = server.errors("secagg.unmask")
    assert "not 'site-1''s over the lists this client signed" in errors[0]
    # The others see client 0's signature over other lists and refuse as well.
    assert "neighbour 0's survivor-list signature is not 'site-0''s" in errors[1]


@pytest.mark.parametrize("kind", ["secagg.consistency", "secagg.unmask"])
def test_a_client_listed_both_alive_and_dropped_is_refused(kind: str) -> None:
    sites = _sites(5)
    server = Server(sites)

    def both(cid: int, task: Task) -> Task:
        return _payload(task, dropped=[2]) if cid == 0 else task

    server.rewrite = {kind: both}  # in the lists to sign, or after honest lists were signed
    result = _run(server)
    assert "as both alive and dropped" in server.errors(kind)[0]
    assert 0 not in server.revealed()
    # The four others are the threshold: the sum is still complete and exact.
    np.testing.assert_array_equal(result.total, _exact(sites))


def _signatures(rewrite: Callable[[dict[str, bytes]], dict[str, bytes]]) -> Rewrite:
    def change(cid: int, task: Task) -> Task:
        if cid != 0:
            return task
        return _payload(task, signatures=rewrite(dict(task.payload["signatures"])))

    return change


def _without(table: dict[str, bytes], key: str) -> dict[str, bytes]:
    return {k: v for k, v in table.items() if k != key}


def _directory(sites: Mapping[int, Site]) -> dict[str, Any]:
    """Each site's signing key under its name, as a directory of the federation gives it."""
    return {
        site.secagg_identity.name: site.secagg_identity.peers[site.secagg_identity.name]
        for site in sites.values()
    }


def _rewrite_reply(
    server: Server, kind: str, cid: int, rewrite: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """Make the reply of kind ``kind`` from client ``cid`` carry ``rewrite(result)``."""
    real = server.inner.exchange

    def rewritten(tasks: Mapping[int, Task], *, timeout: float | None = None) -> Iterator[Reply]:
        for reply in real(tasks, timeout=timeout):
            if reply.kind == kind and reply.cid == cid:
                reply = Reply(reply.cid, reply.kind, rewrite(reply.result))
            yield reply

    server.inner.exchange = rewritten  # type: ignore[method-assign]


def _flip(sig: bytes) -> bytes:
    return sig[:-1] + bytes([sig[-1] ^ 1])


@pytest.mark.parametrize(
    ("rewrite", "refusal"),
    [
        (lambda s: dict(list(s.items())[:2]), "only 3 of this client's share holders"),
        (lambda s: {}, "only 1 of this client's share holders"),
        (lambda s: {k: _flip(v) for k, v in s.items()}, "signature is not 'site-"),
        (lambda s: {**s, "1": s["2"]}, "neighbour 1's survivor-list signature is not 'site-1'"),
        (lambda s: {**s, "1": b"x" * 10}, "neighbour 1's survivor-list signature is malformed"),
        (lambda s: {**_without(s, "1"), "9": s["2"]}, "signature of client 9, which is not"),
        (lambda s: {**_without(s, "1"), "0": s["2"]}, "signature of client 0, which is not"),
        (lambda s: {**s, "6": s["2"]}, "forwards 6 survivor-list signatures, more than"),
    ],
    ids=["too-few", "none", "forged", "moved", "malformed", "stranger", "own-id", "too-many"],
)
def test_too_few_or_forged_signatures_are_refused(rewrite: Any, refusal: str) -> None:
    sites = _sites(6)
    server = Server(sites)
    server.rewrite = {"secagg.unmask": _signatures(rewrite)}
    result_or_abort: Any
    try:
        result_or_abort = _run(server)
    except SecAggAbort as exc:
        result_or_abort = exc
    assert refusal in server.errors("secagg.unmask")[0]
    assert 0 not in server.revealed()
    if not isinstance(result_or_abort, SecAggAbort):  # the others sufficed: still exact
        np.testing.assert_array_equal(result_or_abort.total, _exact(sites))


def test_signatures_replayed_from_an_earlier_run_are_refused() -> None:
    sites = _sites(5)
    first = Server(sites)
    _run(first)
    old = next(t for c, t in first.sent if c == 0 and t.kind == "secagg.unmask")
    server = Server(sites)
    server.rewrite = {"secagg.unmask": _signatures(lambda s: dict(old.payload["signatures"]))}
    _run(server)  # the other four suffice
    assert "forged or replayed" in server.errors("secagg.unmask")[0]
    assert 0 not in server.revealed()


def test_a_server_skipping_the_consistency_check_is_refused() -> None:
    state = _signed_masked_state()
    with pytest.raises(ProtocolAbort, match="without the consistency check"):
        cs.unmask(state, [0, 1, 2, 3], [], {})


def _signed_masked_state() -> cs.ClientState:
    """Run four signed clients' first three stages by hand; return client 0's state."""
    return _signed_run(bytes(range(32)), identities([f"c{u}" for u in range(4)]))[0]


def test_a_client_without_identity_is_not_asked_to_sign_and_cannot() -> None:
    state = _signed_masked_state()
    with pytest.raises(ProtocolAbort, match="has no identity"):
        cs.consistency(state, [0, 1, 2, 3], [], None)
    signed, reply = cs.consistency(state, [0, 1, 2, 3], [], identities(["c0"])["c0"])
    assert signed.stage == "signed"
    assert len(reply["sig"]) == 64
    with pytest.raises(ProtocolAbort, match="consistency-check request in stage signed"):
        cs.consistency(signed, [0, 1, 2, 3], [], identities(["c0"])["c0"])


def test_consistency_requests_out_of_bounds_are_refused_by_the_handler() -> None:
    sites = _sites(5)
    server = Server(sites)

    def hostile(cid: int, task: Task) -> Task:
        bad: dict[int, list[Any]] = {
            0: [0, 1, True],
            1: [0, 1, 2, "3"],
            2: list(range(MAX_CLIENTS + 1)),
        }
        return _payload(task, alive=bad[cid]) if cid in bad else task

    server.rewrite = {"secagg.consistency": hostile}
    with pytest.raises(SecAggAbort) as info:
        _run(server)
    assert info.value.stage == "consistency"
    errors = server.errors("secagg.consistency")
    assert "lists True, which is not a client id" in errors[0]
    assert "lists '3', which is not a client id" in errors[1]
    assert f"more than {MAX_CLIENTS}" in errors[2]
    assert not any(t.kind == "secagg.unmask" for _, t in server.sent)


def test_too_many_signatures_are_refused_before_any_is_checked() -> None:
    state = _signed_masked_state()
    identity = identities(["c0"])["c0"]
    signed, _ = cs.consistency(state, [0, 1, 2, 3], [], identity)
    with pytest.raises(ProtocolAbort, match="forwards 4 survivor-list signatures, more than"):
        cs.unmask(signed, [0, 1, 2, 3], [], {v: bytes(64) for v in range(1, 5)})


def test_clients_that_drop_in_the_consistency_check_stay_in_the_sum() -> None:
    sites = _sites(8)  # threshold 6
    server = Server(sites)
    server.drop = {"secagg.consistency": {2}, "secagg.mask": {7}}
    result = _run(server)
    # 2 sent its masked input: its vector is in the sum, unmasked by the others.
    assert result.survivors == [0, 1, 2, 3, 4, 5, 6]
    assert sorted(result.dropped) == [7]
    # and it is named: it left the round, though its update counts
    assert list(result.silent) == [2]
    assert "left after its masked input was taken (it is in the sum)" in result.silent[2]
    np.testing.assert_array_equal(result.total, _exact({c: sites[c] for c in range(7)}))
    asked = {c for c, t in server.sent if t.kind == "secagg.unmask"}
    assert asked == {0, 1, 3, 4, 5, 6}
    for cid, task in server.sent:
        if task.kind == "secagg.unmask":  # the same lists for everyone, 2 alive
            assert task.payload["alive"] == result.survivors
            assert set(task.payload["signatures"]) == {str(c) for c in asked - {cid}}


def test_too_many_dropouts_in_the_consistency_check_stop_before_anything_is_revealed() -> None:
    sites = _sites(6)  # threshold 5
    server = Server(sites)
    server.drop = {"secagg.consistency": {1, 2}}
    with pytest.raises(SecAggAbort) as info:
        _run(server)
    assert info.value.stage == "consistency"
    assert "signing share holders, fewer than the threshold 5" in info.value.reason
    assert not any(t.kind == "secagg.unmask" for _, t in server.sent)


def test_with_the_directory_the_server_leaves_out_a_bad_signature() -> None:
    sites = _sites(6)
    server = Server(sites)
    _rewrite_reply(server, "secagg.consistency", 4, lambda r: {"sig": _flip(r["sig"])})
    result = _run(server, directory=_directory(sites))
    np.testing.assert_array_equal(result.total, _exact(sites))
    assert not any(c == 4 and t.kind == "secagg.unmask" for c, t in server.sent)
    assert server.errors("secagg.unmask") == {}
    # named, as a survivor revealing a false share is: it was recorded nowhere
    assert result.suspects == {4: "sent a survivor-list signature not by 'site-4'"}


def test_with_the_directory_a_site_whose_keys_do_not_verify_is_told_why() -> None:
    # Left out at the advertisement, it was named in the server's log only: now the
    # result hands on why, in words of its own keys, for the round loop to tell it.
    sites = _sites(6)
    server = Server(sites)
    _rewrite_reply(server, "secagg.advertise", 3, lambda r: {**r, "sig": _flip(r["sig"])})
    result = _run(server, directory=_directory(sites))
    assert 3 in result.excluded
    assert result.refused == {
        3: "secure aggregation left this site out in stage advertise: keys not signed by "
        "'site-3' (its key in the directory)"
    }


def test_a_malformed_signature_makes_its_sender_a_suspect_and_a_dropout_does_not() -> None:
    sites = _sites(8)  # threshold 6
    server = Server(sites)
    server.drop = {"secagg.consistency": {2}}
    real = server.inner.exchange

    def short(tasks: Mapping[int, Task], *, timeout: float | None = None) -> Iterator[Reply]:
        for reply in real(tasks, timeout=timeout):
            if reply.kind == "secagg.consistency" and reply.cid == 5:
                reply = Reply(reply.cid, reply.kind, {"sig": b"x" * 10})
            yield reply

    server.inner.exchange = short  # type: ignore[method-assign]
    result = _run(server)
    np.testing.assert_array_equal(result.total, _exact(sites))
    assert result.suspects == {5: "sent a malformed survivor-list signature"}


class NamedServer(Server):
    """A transport that names its clients, as a deployed server does by their certificates."""

    def client_name(self, cid: int) -> str | None:
        return f"site-{cid}" if cid in self.sites else None


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_refusal_naming_another_client_gives_that_clients_name(wrapped: bool) -> None:
    # "the shares from client 1 fail authentication": 1 is an id of the round, which a
    # deployed federation's operator never sees (and client-1 may be another site).
    # A served round's transport counts bytes around the server's (wrapped).
    sites = _sites(6, signed=False)
    server = NamedServer(sites)

    def tamper(cid: int, task: Task) -> Task:
        if cid != 0:
            return task
        shares = dict(task.payload["shares"])
        shares["1"] = bytes(len(shares["1"]))
        return _payload(task, shares=shares)

    server.rewrite = {"secagg.mask": tamper}
    result = _run(server, CompressedTransport(server, None) if wrapped else None)
    said = "covey.secagg.ProtocolAbort: the shares from client 1 ('site-1') fail authentication"
    assert result.dropped == {0: said}
    np.testing.assert_array_equal(result.total, _exact({c: sites[c] for c in range(1, 6)}))


class LeavingServer(NamedServer):
    """Names only the clients still connected, as a deployed server does: one that drops left."""

    def __init__(self, sites: Mapping[int, Site]) -> None:
        super().__init__(sites)
        self.gone: set[int] = set()

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        yield from super().exchange(tasks, timeout=timeout)
        for cid, task in tasks.items():
            if cid in self.drop.get(task.kind, set()):
                self.gone.add(cid)

    def client_name(self, cid: int) -> str | None:
        return None if cid in self.gone else super().client_name(cid)


def test_an_abort_names_the_clients_it_speaks_of_though_they_have_left() -> None:
    # "client 0's self mask has 4 signing share holders": client 0 dropped out, so a
    # deployed server no longer names it; its name from the start of the run is given.
    sites = _sites(6)  # threshold 5
    server = LeavingServer(sites)
    server.drop = {"secagg.consistency": {0, 1}}
    with pytest.raises(SecAggAbort) as info:
        _run(server)
    assert server.gone == {0, 1}
    assert "client 0 ('site-0')'s self mask" in str(info.value)
    named = re.findall(r"client (\d+) \('site-(\d+)'\)", str(info.value))
    assert named
    assert all(cid == name for cid, name in named)
    assert not re.search(r"client \d+(?! \()", str(info.value))


def _signed_run(session: bytes, ids: Mapping[str, Any]) -> dict[int, cs.ClientState]:
    """Four signed clients' first three stages under ``session``; each client's state."""
    cids = [0, 1, 2, 3]
    setups = {
        u: cs.Setup(session, u, u + 1, {v: v + 1 for v in cids if v != u}, 3, 4, 16, 10)
        for u in cids
    }
    states, adverts = {}, {}
    for u in cids:
        states[u], adverts[u] = cs.advertise(setups[u], ids[f"c{u}"])
    sealed: dict[int, dict[int, bytes]] = {u: {} for u in cids}
    for u in cids:
        keys = {v: adverts[v] for v in cids if v != u}
        states[u], out = cs.share(states[u], keys, ids[f"c{u}"])
        for v, blob in out["shares"].items():
            sealed[int(v)][u] = blob
    return {u: cs.mask(states[u], sealed[u], np.arange(4))[0] for u in cids}


def test_signatures_of_an_earlier_run_under_the_same_session_are_refused() -> None:
    # The server picks the session id: one that reuses it must not be able to replay
    # the lists' signatures of an earlier run into a later one whose clients never signed.
    session = bytes(range(32))
    ids = identities([f"c{u}" for u in range(4)])
    lists: tuple[list[int], list[int]] = ([0, 1, 2, 3], [])
    first = _signed_run(session, ids)
    old = {v: cs.consistency(first[v], *lists, ids[f"c{v}"])[1]["sig"] for v in (1, 2, 3)}
    second = _signed_run(session, ids)
    victim, _ = cs.consistency(second[0], *lists, ids["c0"])
    with pytest.raises(ProtocolAbort, match="forged or replayed"):
        cs.unmask(victim, *lists, old)

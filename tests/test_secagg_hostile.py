"""A hostile client against the secure sum's server: refused by name, no crash, no wrong sum."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pytest

import covey
from covey.clients._client import run_task
from covey.core._messages import Reply, Task
from covey.secagg import SecAggAbort, _shamir, register_input, secure, secure_sum
from covey.server import open_loop
from covey.transport._memory import MemoryTransport

LENGTH, BOUND = 20, 1000
Attack = Callable[[Reply], Reply]


class Site:
    def __init__(self, cid: int) -> None:
        rng = np.random.default_rng(cid)
        self.vector = rng.integers(-BOUND, BOUND + 1, size=LENGTH).astype(np.int64)


register_input("test.hostile", lambda client, payload: client.vector)


class Hostile:
    """A memory transport where client ``cid``'s reply of stage ``kind`` is rewritten."""

    def __init__(self, n: int, kind: str, cid: int, attack: Attack) -> None:
        self.sites = {c: Site(c) for c in range(n)}
        self.inner = MemoryTransport(sorted(self.sites), self._handle)
        self.kind, self.cid, self.attack = kind, cid, attack
        self.trainers: dict[int, Trainer] = {}

    def _handle(self, cid: int, task: Task) -> Reply:
        return run_task(self.sites[cid], cid, task)

    def _handle_fit(self, cid: int, task: Task) -> Reply:
        return run_task(self.trainers.setdefault(cid, Trainer(cid)), cid, task)

    def clients(self) -> list[int]:
        return sorted(self.sites)

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        for reply in self.inner.exchange(tasks, timeout=timeout):
            hit = reply.kind == self.kind and reply.cid == self.cid and reply.ok
            yield self.attack(reply) if hit else reply

    def close(self) -> None:
        pass


class Trainer(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        delta = {"w": np.full(3, 0.01 * self.cid, dtype=np.float32)}
        return covey.FitResult(delta=delta, num_examples=10 + self.cid)


def _sum(transport: Hostile, **kw: Any) -> Any:
    return secure_sum(
        transport,
        list(transport.sites),
        round=1,
        input_kind="test.hostile",
        length=LENGTH,
        bound=BOUND,
        **kw,
    )


def _plain(transport: Hostile, cids: list[int]) -> np.ndarray:
    return np.sum([transport.sites[c].vector for c in cids], axis=0)


def _shares(rewrite: Callable[[bytes], bytes]) -> Attack:
    """Rewrite every share of a self mask the client reveals."""

    def attack(reply: Reply) -> Reply:
        got = reply.result
        b = {k: rewrite(v) for k, v in got["b"].items()}
        return Reply(reply.cid, reply.kind, {"b": b, "s": got["s"]})

    return attack


def _shifted(share: bytes) -> bytes:
    """A false share that still looks like one: limb 0 moved by one, inside the field."""
    limbs = np.frombuffer(share, dtype="<u4").astype(np.int64)
    limbs[0] = (limbs[0] + 1) % _shamir.PRIME
    return limbs.astype("<u4").tobytes()


@pytest.mark.parametrize(
    "rewrite",
    [lambda s: b"\x01" * len(s), lambda s: b"\xff" * len(s), _shifted],
    ids=["garbage", "outside-the-field", "shifted"],
)
@pytest.mark.parametrize("complete", [True, False])
def test_false_unmasking_shares_never_crash_the_server_nor_change_the_sum(
    rewrite: Callable[[bytes], bytes], complete: bool
) -> None:
    # Client 0 (the lowest evaluation point: its share is among the first a
    # reconstruction would take) reveals false shares of every survivor's self mask.
    n = 8 if complete else 40
    transport = Hostile(n, "secagg.unmask", 0, _shares(rewrite))
    res = _sum(transport, complete=complete, seed=3)
    assert res.survivors == list(range(n))
    np.testing.assert_array_equal(res.total, _plain(transport, res.survivors))
    assert sorted(res.suspects) == [0]
    assert "share" in res.suspects[0]


@pytest.mark.parametrize(
    "reply", [{"b": {}, "s": {}}, {}, {"b": "junk"}, "junk"], ids=["empty", "none", "junk", "str"]
)
@pytest.mark.parametrize("complete", [True, False])
def test_a_survivor_that_answers_the_unmasking_but_withholds_its_shares_is_named(
    reply: Any, complete: bool
) -> None:
    # It was counted as having revealed: neither silent nor a suspect, and an abort for
    # want of its shares named no client.
    def withhold(got: Reply) -> Reply:
        return Reply(got.cid, got.kind, reply)

    n = 8 if complete else 40
    transport = Hostile(n, "secagg.unmask", 0, withhold)
    res = _sum(transport, complete=complete, seed=3)
    np.testing.assert_array_equal(res.total, _plain(transport, res.survivors))
    assert sorted(res.suspects) == [0]
    assert res.suspects[0].startswith("withheld shares it holds (of clients 0, ")


def test_false_shares_that_cannot_be_outvoted_abort_the_round_cleanly() -> None:
    # Three holders, threshold 2: one false share among three cannot be told from
    # the true ones with certainty, so the round stops, unrevealed, rather than
    # hand over a sum that may be wrong.
    transport = Hostile(3, "secagg.unmask", 0, _shares(_shifted))
    with pytest.raises(SecAggAbort) as info:
        _sum(transport, complete=True)
    assert info.value.stage == "unmask"
    assert "share" in info.value.reason


def test_shares_for_clients_that_are_not_survivors_are_ignored() -> None:
    def attack(reply: Reply) -> Reply:
        got = reply.result
        extra = {"999": b"\0" * _shamir_size(), "-1": b"\0" * _shamir_size()}
        return Reply(reply.cid, reply.kind, {"b": {**got["b"], **extra}, "s": extra})

    transport = Hostile(8, "secagg.unmask", 2, attack)
    res = _sum(transport)
    np.testing.assert_array_equal(res.total, _plain(transport, res.survivors))


def _shamir_size() -> int:
    from covey.secagg._client_stages import SHARE_BYTES

    return SHARE_BYTES


@pytest.mark.parametrize("key", ["c_pk", "s_pk"])
def test_a_low_order_public_key_is_refused_by_the_server_not_by_every_neighbour(
    key: str,
) -> None:
    # The all-zero X25519 point makes every key agreement with it fail: forwarded,
    # it would make each neighbour of client 0 abort, and the round with them.
    transport = Hostile(
        8, "secagg.advertise", 0, lambda r: Reply(r.cid, r.kind, {**r.result, key: bytes(32)})
    )
    res = _sum(transport)
    assert res.survivors == list(range(1, 8))
    assert "X25519" in res.excluded[0]
    np.testing.assert_array_equal(res.total, _plain(transport, res.survivors))


def test_secure_fedavg_names_the_client_whose_false_shares_were_outvoted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = Hostile(6, "secagg.unmask", 2, _shares(_shifted))
    transport.inner = MemoryTransport(list(range(6)), transport._handle_fit)
    with pytest.warns(UserWarning, match="honest-but-curious"):
        strategy = secure(covey.FedAvg(fraction_evaluate=0.0), clip_range=1.0)
    loop = open_loop(strategy, transport, {"w": np.zeros(3, np.float32)})
    loop.client_names = {c: f"site-{c}" for c in range(6)}
    with caplog.at_level(logging.WARNING, logger="covey"):
        history = loop.run(1)
    record = history.rounds[-1]
    assert sorted(record.fit_participants) == list(range(6))
    assert record.aggregate_info["secagg_suspects"] == [2]
    assert "round 1: site-2 in secure aggregation: revealed a false share" in caplog.text


def test_shares_no_neighbour_can_open_stop_the_round_unrevealed_naming_the_sender() -> None:
    # As the threat model says: not something the server can tell apart, so the
    # neighbours abort and the round stops before anything is unmasked.
    def attack(reply: Reply) -> Reply:
        sealed = {k: bytes(len(v)) for k, v in reply.result["shares"].items()}
        return Reply(reply.cid, reply.kind, {"shares": sealed})

    transport = Hostile(5, "secagg.share", 4, attack)
    with pytest.raises(SecAggAbort) as info:
        _sum(transport)
    assert info.value.stage == "mask"
    assert "the shares from client 4 fail authentication" in info.value.dropped[0]


@pytest.mark.parametrize("error", ["ProtocolAbort: the server lists this client as dropped", None])
def test_an_abort_in_the_unmasking_says_which_clients_did_not_reveal_and_why(
    error: str | None,
) -> None:
    # Two of three clients refuse (or never answer) the unmasking: the abort
    # names them, with their own reason, rather than only the missing shares.
    class Refusing(Hostile):
        def exchange(
            self, tasks: Mapping[int, Task], *, timeout: float | None = None
        ) -> Iterator[Reply]:
            for reply in self.inner.exchange(tasks, timeout=timeout):
                if reply.kind != "secagg.unmask" or reply.cid == 0:
                    yield reply
                elif error is not None:
                    yield Reply(reply.cid, reply.kind, error=f"Traceback ...\n{error}")

    transport = Refusing(3, "", -1, lambda r: r)
    with pytest.raises(SecAggAbort) as info:
        _sum(transport)
    assert info.value.stage == "unmask"
    assert sorted(info.value.dropped) == [1, 2]
    # each had sent its masked input: said so after its own reason
    assert info.value.dropped[1] == (
        f"{error or 'no reply in time'} (in stage unmask, after its masked input was "
        "taken: its update was in the masked sum, which was not unmasked)"
    )

"""The server's side of SecAgg+, as pure functions of its state and the clients' replies.

The server never learns a client's input: it routes sealed shares, adds up
masked vectors, and, once the survivors are known, reconstructs the self-mask
seeds of the survivors and the mask keys of the clients that dropped after
sharing keys, so it can strip every mask from the sum. A stage's state is
consumed by the next call (the running sum is updated in place for speed).

References:
    Bonawitz et al., CCS 2017; Bell et al., CCS 2020.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from covey.core._text import clients
from covey.secagg import _crypto, _ring, _shamir
from covey.secagg._client_stages import (
    SECRET_BYTES,
    SHARE_BYTES,
    ProtocolAbort,
    Setup,
    key_message,
    survivors_message,
)
from covey.secagg._params import GraphPlan

MAX_SEALED = 12 + 2 * SHARE_BYTES + 16  # nonce + two shares + tag


@dataclass
class ServerState:
    """The server's view of one run of the protocol."""

    session: bytes
    plan: GraphPlan
    cids: list[int]
    neighbors: dict[int, list[int]]
    xs: dict[int, int]
    length: int
    bits: int
    bound: int
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # u -> (c_pk, s_pk)
    names: dict[int, str] = field(default_factory=dict)  # u -> name, if u signed its keys
    routed: dict[int, set[int]] = field(default_factory=dict)  # u -> v that got u's shares
    masked: list[int] = field(default_factory=list)
    total: np.ndarray | None = None
    dropped: dict[int, str] = field(default_factory=dict)  # cid -> why, after key sharing
    left: dict[int, str] = field(default_factory=dict)  # cid -> why, before key sharing
    suspects: dict[int, str] = field(default_factory=dict)  # survivor -> a share refused, why
    stage: str = "setup"


def harary_neighbors(
    cids: list[int], degree: int, rng: np.random.Generator
) -> dict[int, list[int]]:
    """A (degree, n)-Harary graph on a random permutation of ``cids``.

    Clients sit on a ring in random order, each linked to the ``degree / 2``
    clients before and after it; ``degree >= n - 1`` gives the complete graph.
    """
    n = len(cids)
    if degree >= n - 1:
        return {u: [v for v in cids if v != u] for u in cids}
    order = [cids[i] for i in rng.permutation(n)]
    half = degree // 2
    out: dict[int, list[int]] = {}
    for i, u in enumerate(order):
        out[u] = sorted(order[(i + d) % n] for d in range(-half, half + 1) if d != 0)
    return out


def setup(
    cids: list[int], plan: GraphPlan, length: int, bound: int, bits: int, seed: int | None = None
) -> tuple[ServerState, dict[int, Setup]]:
    """Stage 0: choose the session, the graph and each client's evaluation point."""
    if len(set(cids)) != len(cids):
        raise ValueError("a client appears twice in the round")
    if plan.n != len(cids):
        raise ValueError(f"the plan is for {plan.n} clients, the round has {len(cids)}")
    cids = sorted(cids)
    # The permutation must be unpredictable to clients; a seed is for reproducible tests.
    entropy = seed if seed is not None else int.from_bytes(os.urandom(16), "little")
    rng = np.random.default_rng(entropy)
    neighbors = harary_neighbors(cids, plan.degree, rng)
    xs = {u: i + 1 for i, u in enumerate(cids)}
    session = os.urandom(32)
    state = ServerState(session, plan, cids, neighbors, xs, length, bits, bound)
    setups = {
        u: Setup(
            session, u, xs[u], {v: xs[v] for v in neighbors[u]}, plan.threshold, length, bits, bound
        )
        for u in cids
    }
    return state, setups


def collect_keys(
    state: ServerState, replies: Mapping[int, Mapping[str, Any]]
) -> tuple[ServerState, dict[int, dict[int, dict[str, Any]]]]:
    """Stage 1: keep the well-formed key advertisements; send each client its neighbours' keys."""
    for u in state.cids:
        msg = replies.get(u)
        if msg is None:
            state.left.setdefault(u, "no key advertisement")
            continue
        c_pk, s_pk = msg.get("c_pk"), msg.get("s_pk")
        sig, name = msg.get("sig"), msg.get("name")
        if not (isinstance(c_pk, bytes) and isinstance(s_pk, bytes)) or (
            len(c_pk) != 32
            or len(s_pk) != 32
            or (sig is not None and not (isinstance(sig, bytes) and len(sig) == 64))
            or (name is not None and not (isinstance(name, str) and len(name) <= 256))
        ):
            state.left[u] = "malformed key advertisement"
            continue
        try:
            _crypto.check_public(c_pk)
            _crypto.check_public(s_pk)
        except _crypto.CryptoError as exc:
            # Forwarded, such a key would make every neighbour's key agreement fail.
            state.left[u] = f"a key advertisement with an unusable X25519 public key: {exc}"
            continue
        state.keys[u] = (c_pk, s_pk)
    _need(state, len(state.keys), "advertised keys")
    out: dict[int, dict[int, dict[str, Any]]] = {}
    for u in state.keys:
        entry: dict[int, dict[str, Any]] = {}
        for v in state.neighbors[u]:
            if v in state.keys:
                msg = replies[v]
                entry[v] = {"c_pk": state.keys[v][0], "s_pk": state.keys[v][1]}
                if isinstance(msg.get("sig"), bytes):
                    entry[v]["sig"] = msg["sig"]
                    entry[v]["name"] = msg["name"]
        out[u] = entry
    for u in state.keys:
        msg = replies[u]
        if isinstance(msg.get("sig"), bytes) and isinstance(msg.get("name"), str):
            state.names[u] = msg["name"]
    return replace(state, stage="keys"), out


def unverified(
    session: bytes, replies: Mapping[int, Any], directory: Mapping[str, bytes]
) -> dict[int, str]:
    """Stage 1, with the clients' directory: the advertisements whose signature fails, and why.

    The clients check each neighbour's signature and abort on a bad one (a server
    could substitute keys); a server that holds the directory leaves such a client
    out instead of forwarding keys that would make all its neighbours abort.
    """
    refused: dict[int, str] = {}
    seen: set[str] = set()
    for u, msg in sorted(replies.items()):
        name = msg.get("name") if isinstance(msg, Mapping) else None
        sig = msg.get("sig") if isinstance(msg, Mapping) else None
        c_pk = msg.get("c_pk") if isinstance(msg, Mapping) else None
        s_pk = msg.get("s_pk") if isinstance(msg, Mapping) else None
        if not isinstance(name, str) or name not in directory:
            refused[u] = f"keys signed under an identity not in the directory: {name!r}"
        elif name in seen:
            refused[u] = f"identity {name!r} signed the keys of two clients"
        elif not (isinstance(sig, bytes) and isinstance(c_pk, bytes) and isinstance(s_pk, bytes)):
            refused[u] = "malformed key advertisement"
        else:
            try:
                _crypto.verify(directory[name], sig, key_message(session, u, name, c_pk, s_pk))
            except _crypto.CryptoError:
                refused[u] = f"keys not signed by {name!r} (its key in the directory)"
            else:  # only a valid signature claims a name: a forger cannot push out its owner
                seen.add(name)
    return refused


LEFT_MASKED = (
    "{1} (in stage {0}, after its masked input was taken: its update was in the masked "
    "sum, which was not unmasked)"
)
"""Why a survivor that left before the sum was unmasked is out of an aborted round.

The failure comes first, as the transport said it (``client disconnected``: a lost
connection, which a round may be run again for), then the stage.
"""


def refusals(
    state: ServerState, took: Mapping[str, set[int]], failures: Mapping[int, str]
) -> dict[int, str]:
    """Why the server left out each client whose own reply it refused, as that client is told.

    ``took`` holds the clients each stage took a reply from (``"advertise"``,
    ``"share"``, ``"mask"``) and those whose masked input did not come in time
    (``"late"``); ``failures`` the reasons the server gave before the stage's
    own checks (keys not signed). A client refused in a stage is left out of it:
    its keys (``advertise``), its shares (``share``) or its masked input
    (``mask``) are not in the sum. The reason speaks of that client's reply
    alone, never of another client's; a client's own failure is not told (it
    knows it), nor is a survivor (its input is in the sum).
    """
    out: dict[int, str] = {}
    left = {**state.left, **failures}
    stages = (
        ("advertise", took.get("advertise", set()) - set(state.keys), left),
        ("share", took.get("share", set()) - set(state.routed), state.left),
        ("mask", (took.get("mask", set()) | took.get("late", set())) - set(state.masked), None),
    )
    for stage, refused, why in stages:
        for u in sorted(refused):
            said = state.dropped.get(u) if why is None else why.get(u)
            if said is not None:
                out[u] = f"secure aggregation left this site out in stage {stage}: {said}"
    return out


BELOW_THRESHOLD = "fewer than the threshold"
"""What an abort for too few clients left to reach the protocol's threshold says."""


def _need(state: ServerState, count: int, what: str) -> None:
    if count < state.plan.threshold:
        raise ProtocolAbort(
            f"only {clients(count)} {what}, {BELOW_THRESHOLD} {state.plan.threshold}"
        )


def route_shares(
    state: ServerState, replies: Mapping[int, Mapping[str, Any]]
) -> tuple[ServerState, dict[int, dict[int, bytes]]]:
    """Stage 2: forward each sealed share to its addressee; the senders are the key-sharers."""
    inbox: dict[int, dict[int, bytes]] = {}
    for u in state.keys:
        msg = replies.get(u)
        sealed = None if msg is None else msg.get("shares")
        if not isinstance(sealed, Mapping):
            state.left.setdefault(u, "no key shares")
            continue
        allowed = {v for v in state.neighbors[u] if v in state.keys}
        try:
            parsed = {int(v): blob for v, blob in sealed.items()}
        except (TypeError, ValueError):
            parsed = {}
        if set(parsed) != allowed or not all(
            isinstance(b, bytes) and len(b) == MAX_SEALED for b in parsed.values()
        ):
            state.left[u] = "malformed key shares"
            continue
        state.routed[u] = set(parsed)
        for v, blob in parsed.items():
            inbox.setdefault(v, {})[u] = blob
    sharers = set(state.routed)
    _need(state, len(sharers), "shared keys")
    out = {v: {u: b for u, b in inbox.get(v, {}).items()} for v in sorted(sharers)}
    return replace(state, stage="shares"), out


def add_masked(state: ServerState, cid: int, packed: Any) -> ServerState:
    """Stage 3, one reply: fold a client's masked vector into the running sum."""
    if cid not in state.routed or cid in state.masked:
        state.dropped[cid] = "an unexpected masked input"
        return state
    if not isinstance(packed, bytes | bytearray | memoryview | np.ndarray):
        state.dropped[cid] = "a masked input that is not bytes"
        return state
    try:
        y = _ring.unpack(bytes(packed), state.bits, state.length)
    except _ring.RangeError as exc:
        state.dropped[cid] = f"a malformed masked input: {exc}"
        return state
    if state.total is None:
        state.total = y
    else:
        state.total += y
    state.masked.append(cid)
    return state


def request_unmask(state: ServerState) -> tuple[ServerState, list[int], list[int]]:
    """Stage 3, end: the survivors and the dropouts, after checking each can be unmasked."""
    alive = sorted(state.masked)
    dropped = sorted(set(state.routed) - set(alive))
    for u in dropped:
        state.dropped.setdefault(u, "no masked input")
    _need(state, len(alive), "sent masked inputs")
    check_revealers(state, alive, dropped, alive, "surviving")
    return replace(state, stage="unmask"), alive, dropped


def check_revealers(
    state: ServerState, alive: list[int], dropped: list[int], revealers: list[int], who: str
) -> None:
    """Refuse to unmask unless each secret asked for has ``threshold`` holders in ``revealers``."""
    asked = set(revealers)
    t = state.plan.threshold
    for u in alive:
        holders = (_holders(state, u) | {u}) & asked
        if len(holders) < t:
            raise ProtocolAbort(
                f"client {u}'s self mask has {len(holders)} {who} share holders, fewer "
                f"than the threshold {t}"
            )
    for u in dropped:
        holders = _holders(state, u) & asked
        if len(holders) < t:
            raise ProtocolAbort(
                f"dropped client {u}'s mask key has {len(holders)} {who} share holders, "
                f"fewer than the threshold {t}"
            )


def collect_signatures(
    state: ServerState,
    alive: list[int],
    dropped: list[int],
    replies: Mapping[int, Mapping[str, Any]],
    directory: Mapping[str, bytes] | None,
    failures: dict[int, str],
) -> dict[int, bytes]:
    """The consistency check, end: each signer's signature of the lists, checked as far as possible.

    The server keeps a signature of the right size (with the directory, one that
    verifies under the signer's name); a survivor without one stays in the sum
    (its masked input arrived) but is not asked to unmask, as in Bonawitz et al.
    One that sent a malformed signature, or one the directory refutes, is also
    a suspect (``state.suspects``), with why.
    """
    kept: dict[int, bytes] = {}
    for u in alive:
        if u not in state.names:
            continue
        if u not in replies:
            failures.setdefault(u, "no survivor-list signature")
            continue
        sig: Any = replies[u].get("sig")
        why = None
        if not (isinstance(sig, bytes) and len(sig) == 64):
            why = "sent a malformed survivor-list signature"
        elif directory is not None:
            name = state.names[u]
            message = survivors_message(state.session, u, name, state.keys[u], alive, dropped)
            try:
                _crypto.verify(directory.get(name, b""), sig, message)
            except _crypto.CryptoError:
                why = f"sent a survivor-list signature not by {name!r}"
        if why is not None:  # hostile or broken, not a dropout: named, as a false share is
            failures.setdefault(u, why)
            state.suspects.setdefault(u, why)
        else:
            kept[u] = sig
    return kept


def forwarded(state: ServerState, u: int, signatures: Mapping[int, bytes]) -> dict[str, bytes]:
    """The signatures client ``u`` checks before it reveals: those of its neighbours."""
    return {str(v): signatures[v] for v in state.neighbors[u] if v in signatures}


def _holders(state: ServerState, u: int) -> set[int]:
    """Clients holding shares of ``u``'s secrets: those ``u`` sent shares to and that sent back."""
    return {v for v in state.routed.get(u, set()) if u in state.routed.get(v, set())}


def _collect(
    state: ServerState,
    alive: list[int],
    dropped: list[int],
    replies: Mapping[int, Mapping[str, Any]],
) -> tuple[dict[int, dict[int, bytes]], dict[int, dict[int, bytes]]]:
    """The revealed shares by owner: of the survivors' seeds ``b`` and the dropouts' mask keys.

    Only a share its sender can hold is taken (the owner's own share of ``b``, or
    one from a neighbour the owner shared keys with), of the right size; anything
    else makes its sender a suspect. A value outside the field is caught, like
    any false share, when the secret is reconstructed.
    """
    b_shares: dict[int, dict[int, bytes]] = {u: {} for u in alive}
    s_shares: dict[int, dict[int, bytes]] = {u: {} for u in dropped}
    holders = {u: _holders(state, u) for u in (*alive, *dropped)}
    for v, msg in replies.items():
        if v not in alive:
            continue
        if isinstance(msg, Mapping):
            for kind, table in (("b", b_shares), ("s", s_shares)):
                got = msg.get(kind)
                if isinstance(got, Mapping):
                    _take(state, table, holders, got, v, own=kind == "b")
        # It answered: a share it holds and left out is withheld, and named as such.
        x = state.xs[v]
        kept = [
            u
            for table in (b_shares, s_shares)
            for u in table
            if (v in holders[u] or (u == v and table is b_shares)) and x not in table[u]
        ]
        if kept:
            more = ", ..." if len(kept) > 5 else ""
            state.suspects.setdefault(
                v, f"withheld shares it holds (of clients {', '.join(map(str, kept[:5]))}{more})"
            )
    return b_shares, s_shares


def _take(
    state: ServerState,
    table: dict[int, dict[int, bytes]],
    holders: Mapping[int, set[int]],
    got: Mapping[Any, Any],
    v: int,
    own: bool,
) -> None:
    x = state.xs[v]
    for key, share in got.items():
        try:
            u = int(key)
        except (TypeError, ValueError):
            state.suspects.setdefault(v, "revealed a share under a key that is not a client id")
            continue
        if u not in table:
            continue  # an owner whose secret is not asked for: ignored
        if not (v in holders[u] or (own and u == v)):
            state.suspects.setdefault(v, "revealed a share of a secret it does not hold")
        elif not (isinstance(share, bytes) and len(share) == SHARE_BYTES):
            state.suspects.setdefault(v, "revealed a malformed share")
        else:
            table[u][x] = share


def _reconstruct(state: ServerState, u: int, shares: dict[int, bytes], what: str) -> bytes:
    """Client ``u``'s secret from the revealed shares; the senders of false ones become suspects."""
    try:
        secret, false = _shamir.decode(shares, state.plan.threshold, SECRET_BYTES)
    except _shamir.ShamirError as exc:
        senders = sorted(v for v, x in state.xs.items() if x in shares)
        raise ProtocolAbort(
            f"the shares of client {u}'s {what} revealed by clients {senders} do not "
            f"reconstruct it ({exc}): at least one of them sent a false share"
        ) from None
    by_point = {x: v for v, x in state.xs.items()}
    for x in false:
        state.suspects.setdefault(
            by_point[x], f"revealed a false share of a {what}, outvoted by the other holders"
        )
    return secret


def _strip_dropped(
    state: ServerState, total: np.ndarray, u: int, s_sk: bytes, alive: set[int]
) -> None:
    """Remove dropped client ``u``'s pairwise masks from the survivors' sum."""
    if _crypto.public_of(s_sk) != state.keys[u][1]:
        raise ProtocolAbort(f"client {u}'s reconstructed mask key does not match its public key")
    for v in sorted(_holders(state, u) & alive):
        seed = _crypto.agree(s_sk, state.keys[v][1], state.session, b"mask")
        # v added +PRG(s_uv) if v < u, else -PRG(s_uv): remove the same.
        _crypto.add_stream(total, seed, -1 if v < u else +1)


def finish(
    state: ServerState,
    alive: list[int],
    dropped: list[int],
    replies: Mapping[int, Mapping[str, Any]],
) -> np.ndarray:
    """Stage 4: reconstruct the secrets, strip every mask, return the exact signed sum."""
    t = state.plan.threshold
    if state.total is None:
        raise ProtocolAbort("no masked input to unmask")
    b_shares, s_shares = _collect(state, alive, dropped, replies)
    total = state.total
    for u in alive:
        if len(b_shares[u]) < t:
            raise ProtocolAbort(
                f"only {len(b_shares[u])} shares of client {u}'s self mask came back"
            )
        b = _reconstruct(state, u, b_shares[u], "self mask")
        _crypto.add_stream(total, _crypto.agree_seed(b, state.session), -1)
    for u in dropped:
        if len(s_shares[u]) < t:
            raise ProtocolAbort(
                f"only {len(s_shares[u])} shares of client {u}'s mask key came back"
            )
        s_sk = _reconstruct(state, u, s_shares[u], "mask key")
        _strip_dropped(state, total, u, s_sk, set(alive))
    return _ring.from_ring(total, state.bits)

"""The client's side of SecAgg+, as pure functions ``(state, message) -> (state, reply)``.

Four stages, each answering one message of the server:

1. ``advertise``: make two X25519 key pairs (one for the channel to each
   neighbour, one for the pairwise masks); sign them if the client has an identity.
2. ``share``: check the neighbours' keys (and signatures), draw the self-mask
   seed ``b``, Shamir-share ``b`` and the mask private key among itself and its
   neighbours, and seal each neighbour's shares with AES-GCM.
3. ``mask``: open the shares sent to it, then send ``y = x + PRG(b) +
   sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)`` (mod ``2^w``) over the
   neighbours that shared keys, bit-packed.
4. ``consistency`` (only for a client with an identity): check the server's
   survivor and dropout lists as ``unmask`` does, and sign them (the consistency
   check of the protocols' malicious-server variants).
5. ``unmask``: check the server's lists (disjoint, consistent with what it saw,
   never both secrets of one peer; with an identity, exactly the lists it signed,
   signed by at least the threshold of its share holders) and reveal, for each
   neighbour, the share of ``b`` if the server says it survived or of its mask
   key if it dropped.

Nothing here does I/O; the state is an immutable record the caller keeps.

References:
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
    Learning", CCS 2017; Bell et al., "Secure Single-Server Aggregation with
    (Poly)Logarithmic Overhead", CCS 2020.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from covey.secagg import _crypto, _ring, _shamir

SECRET_BYTES = 32
SHARE_BYTES = 4 * -(-SECRET_BYTES * 8 // _shamir.LIMB_BITS)


class ProtocolAbort(RuntimeError):
    """A party refuses to go on: the reason says which check failed."""


ProtocolAbort.__module__ = "covey.secagg"  # its public home, as failures show it


@dataclass(frozen=True)
class Identity:
    """A client's long-term Ed25519 identity and the identities it trusts.

    With an identity, a client signs its round keys under its name and refuses a
    neighbour's keys unless they carry a valid signature by the key ``peers``
    lists for the name the neighbour claims, so a server can neither pose as a
    client nor fill a neighbourhood with clients of its own making (the
    malicious-server key advertisement). The directory of ``peers`` is
    distributed with the federation's enrollment, like the CA certificate.

    Args:
        name: This client's name (e.g. its certificate's common name).
        signing_key: Its raw 32-byte Ed25519 private key.
        peers: Each client name's raw 32-byte Ed25519 public key.
    """

    name: str
    signing_key: bytes = field(repr=False)  # a secret: never in a log line or a traceback
    peers: Mapping[str, bytes] = field(default_factory=dict)


def identities(names: list[str]) -> dict[str, Identity]:
    """Fresh identities for ``names``, each trusting all of them (for tests and local runs).

    Args:
        names: The clients' names; each gets a new signing key.

    Example:
        >>> ids = identities(["site-a", "site-b"])
        >>> sorted(ids["site-a"].peers)
        ['site-a', 'site-b']
    """
    keys = {name: _crypto.new_signing_key() for name in names}
    directory = {name: pk for name, (_, pk) in keys.items()}
    return {name: Identity(name, sk, directory) for name, (sk, _) in keys.items()}


@dataclass(frozen=True)
class Setup:
    """What the server announces to one client for a round.

    Args:
        session: 32 random bytes naming the round's run of the protocol.
        cid: The receiving client.
        x: The receiving client's Shamir evaluation point.
        neighbors: Each neighbour's id and evaluation point.
        threshold: Shares that reconstruct a secret.
        length: Entries of the input vector.
        bits: Width of the ring ``Z_{2^bits}``.
        bound: Entries must lie in ``[-bound, bound]``.
    """

    session: bytes
    cid: int
    x: int
    neighbors: Mapping[int, int]
    threshold: int
    length: int
    bits: int
    bound: int


@dataclass(frozen=True)
class ClientState:
    """One client's secrets and view during one run of the protocol."""

    setup: Setup
    stage: str
    c_sk: bytes
    s_sk: bytes
    b: bytes = b""
    keys: Mapping[int, tuple[bytes, bytes]] = field(default_factory=dict)  # v -> (c_pk, s_pk)
    held: Mapping[int, tuple[bytes, bytes]] = field(default_factory=dict)  # u -> (s, b) shares
    own: tuple[bytes, bytes] = (b"", b"")
    signs: bool = False  # this client has an identity: it reveals only after the consistency check
    names: Mapping[int, tuple[str, bytes]] = field(default_factory=dict)  # v -> (name, trusted pk)
    view: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # the lists this client signed


def _pair(u: int, v: int) -> bytes:
    return struct.pack("<qq", u, v)


def key_message(session: bytes, cid: int, name: str, c_pk: bytes, s_pk: bytes) -> bytes:
    """The bytes a client signs to bind its round keys to its name, its id and the session."""
    label = name.encode()
    return (
        b"covey-secagg/keys" + session + struct.pack("<qI", cid, len(label)) + label + c_pk + s_pk
    )


def survivors_message(
    session: bytes,
    cid: int,
    name: str,
    keys: tuple[bytes, bytes],
    alive: Sequence[int],
    dropped: Sequence[int],
) -> bytes:
    """The bytes a client signs in the consistency check: session, keys and both lists, sorted.

    ``keys`` are the signer's round public keys ``(c_pk, s_pk)``: fresh in each run,
    they tie the signature to this run even if a server reuses a session id.
    """
    label = name.encode()
    a, d = sorted(alive), sorted(dropped)
    return (
        b"covey-secagg/consistency"
        + session
        + struct.pack("<qI", cid, len(label))
        + label
        + keys[0]
        + keys[1]
        + struct.pack(f"<II{len(a)}q{len(d)}q", len(a), len(d), *a, *d)
    )


def check_setup(setup: Setup) -> None:
    """Refuse a setup no honest server would send."""
    if len(setup.session) != 32:
        raise ProtocolAbort("the session id must be 32 bytes")
    points = [setup.x, *setup.neighbors.values()]
    if len(set(points)) != len(points) or not all(0 < p < _shamir.PRIME for p in points):
        raise ProtocolAbort("the Shamir evaluation points are not distinct and non-zero")
    if setup.cid in setup.neighbors:
        raise ProtocolAbort("a client cannot be its own neighbour")
    if not 2 <= setup.threshold <= len(setup.neighbors) + 1:
        raise ProtocolAbort(
            f"threshold {setup.threshold} is not in [2, {len(setup.neighbors) + 1}]"
        )
    if not 2 <= setup.bits <= _ring.MAX_BITS or setup.length < 0 or setup.bound < 0:
        raise ProtocolAbort("bad vector parameters (bits, length or bound)")


def advertise(setup: Setup, identity: Identity | None) -> tuple[ClientState, dict[str, Any]]:
    """Stage 1: fresh key pairs, signed when the client has an identity."""
    check_setup(setup)
    c_sk, c_pk = _crypto.new_keypair()
    s_sk, s_pk = _crypto.new_keypair()
    reply: dict[str, Any] = {"c_pk": c_pk, "s_pk": s_pk}
    if identity is not None:
        message = key_message(setup.session, setup.cid, identity.name, c_pk, s_pk)
        reply["name"] = identity.name
        reply["sig"] = _crypto.sign(identity.signing_key, message)
    return ClientState(setup, "advertised", c_sk, s_sk, signs=identity is not None), reply


def share(
    state: ClientState, keys: Mapping[int, Mapping[str, bytes]], identity: Identity | None
) -> tuple[ClientState, dict[str, Any]]:
    """Stage 2: check the neighbours' keys, share ``b`` and the mask key, seal the shares."""
    if state.stage != "advertised":
        raise ProtocolAbort(f"share-keys request in stage {state.stage}")
    setup = state.setup
    unknown = set(keys) - set(setup.neighbors)
    if unknown:
        raise ProtocolAbort(f"the server sent keys of clients that are not neighbours: {unknown}")
    if len(keys) + 1 < setup.threshold:
        raise ProtocolAbort(
            f"only {len(keys)} neighbours advertised keys; {setup.threshold - 1} are needed"
        )
    parsed: dict[int, tuple[bytes, bytes]] = {}
    seen: set[bytes] = set()
    names: set[str] = set() if identity is None else {identity.name}
    signers: dict[int, tuple[str, bytes]] = {}
    for v, entry in keys.items():
        c_pk, s_pk = entry.get("c_pk"), entry.get("s_pk")
        if not (isinstance(c_pk, bytes) and isinstance(s_pk, bytes)):
            raise ProtocolAbort(f"neighbour {v}'s keys are missing")
        if len(c_pk) != 32 or len(s_pk) != 32 or c_pk in seen or s_pk in seen:
            raise ProtocolAbort(f"neighbour {v}'s keys are malformed or repeated")
        seen.update((c_pk, s_pk))
        if identity is not None:
            name = _check_signed(identity, setup.session, v, entry, names)
            signers[v] = (name, identity.peers[name])
        parsed[v] = (c_pk, s_pk)
    b = os.urandom(SECRET_BYTES)
    holders = [setup.x, *(setup.neighbors[v] for v in sorted(parsed))]
    s_shares = _shamir.split(state.s_sk, setup.threshold, holders)
    b_shares = _shamir.split(b, setup.threshold, holders)
    sealed: dict[str, bytes] = {}
    for v in sorted(parsed):
        key = _crypto.agree(state.c_sk, parsed[v][0], setup.session, b"channel")
        xv = setup.neighbors[v]
        plaintext = s_shares[xv] + b_shares[xv]
        sealed[str(v)] = _crypto.seal(key, plaintext, setup.session + _pair(setup.cid, v))
    new = replace(
        state,
        stage="shared",
        b=b,
        keys=parsed,
        own=(s_shares[setup.x], b_shares[setup.x]),
        names=signers,
    )
    return new, {"shares": sealed}


def _check_signed(
    identity: Identity, session: bytes, v: int, entry: Mapping[str, Any], names: set[str]
) -> str:
    """Refuse neighbour ``v``'s keys unless a trusted, not yet seen name signed them; its name."""
    name, sig = entry.get("name"), entry.get("sig")
    if not isinstance(name, str) or not isinstance(sig, bytes):
        raise ProtocolAbort(f"neighbour {v}'s keys are not signed")
    trusted = identity.peers.get(name)
    if trusted is None:
        raise ProtocolAbort(f"neighbour {v} claims the unknown identity {name!r}")
    if name in names:
        raise ProtocolAbort(f"identity {name!r} appears twice among the neighbours")
    names.add(name)
    try:
        _crypto.verify(trusted, sig, key_message(session, v, name, entry["c_pk"], entry["s_pk"]))
    except _crypto.CryptoError:
        raise ProtocolAbort(f"neighbour {v}'s keys are not signed by {name!r}") from None
    return name


def mask(
    state: ClientState, sealed: Mapping[int, bytes], values: np.ndarray
) -> tuple[ClientState, bytes]:
    """Stage 3: open the shares sent to this client and return its masked, packed input."""
    if state.stage != "shared":
        raise ProtocolAbort(f"masked-input request in stage {state.stage}")
    setup = state.setup
    held: dict[int, tuple[bytes, bytes]] = {}
    for u, blob in sealed.items():
        if u not in state.keys:
            raise ProtocolAbort(f"shares from client {u}, whose keys this client never received")
        key = _crypto.agree(state.c_sk, state.keys[u][0], setup.session, b"channel")
        try:
            plain = _crypto.unseal(key, blob, setup.session + _pair(u, setup.cid))
        except _crypto.CryptoError:
            raise ProtocolAbort(f"the shares from client {u} fail authentication") from None
        if len(plain) != 2 * SHARE_BYTES:
            raise ProtocolAbort(f"the shares from client {u} have the wrong size")
        held[u] = (plain[:SHARE_BYTES], plain[SHARE_BYTES:])
    if len(held) + 1 < setup.threshold:
        raise ProtocolAbort(
            f"only {len(held)} neighbours sent shares; {setup.threshold - 1} are needed"
        )
    values = np.asarray(values)
    if values.shape != (setup.length,):
        raise ProtocolAbort(f"the input has shape {values.shape}, expected ({setup.length},)")
    try:
        y = _ring.to_ring(values, setup.bits, setup.bound)
    except _ring.RangeError as exc:
        raise ProtocolAbort(f"input out of range: {exc}") from None
    _crypto.add_stream(y, _crypto.agree_seed(state.b, setup.session), +1)
    for v in sorted(held):
        seed = _crypto.agree(state.s_sk, state.keys[v][1], setup.session, b"mask")
        _crypto.add_stream(y, seed, +1 if setup.cid < v else -1)
    return replace(state, stage="masked", held=held), _ring.pack(y, setup.bits)


def _check_lists(state: ClientState, alive: list[int], dropped: list[int]) -> None:
    """Refuse lists that repeat, overlap or disagree with this client's view of the round."""
    setup = state.setup
    alive_set, dropped_set = set(alive), set(dropped)
    if len(alive_set) != len(alive) or len(dropped_set) != len(dropped):
        raise ProtocolAbort("the server's survivor or dropout list repeats a client")
    if alive_set & dropped_set:
        raise ProtocolAbort(
            f"the server lists clients {sorted(alive_set & dropped_set)} as both alive and dropped"
        )
    if setup.cid not in alive_set:
        raise ProtocolAbort("the server lists this client as dropped")
    if len(alive_set) < setup.threshold:
        raise ProtocolAbort(
            f"only {len(alive_set)} survivors, fewer than the threshold {setup.threshold}"
        )
    listed = (alive_set | dropped_set) & set(setup.neighbors)
    if listed != set(state.held):
        raise ProtocolAbort(
            "the server's lists disagree with the neighbours that shared keys with this client"
        )


def consistency(
    state: ClientState, alive: list[int], dropped: list[int], identity: Identity | None
) -> tuple[ClientState, dict[str, bytes]]:
    """Stage 4 of a client with an identity: check the server's lists, then sign them.

    The signature binds the session, this client's id and name, and both lists
    (sorted). Its neighbours reveal shares only against lists that at least the
    threshold of their share holders signed, so a server cannot show two clients
    different lists (Bonawitz et al.'s ConsistencyCheck round).
    """
    if state.stage != "masked":
        raise ProtocolAbort(f"consistency-check request in stage {state.stage}")
    if identity is None or not state.signs:
        raise ProtocolAbort(
            "the server asks this client to sign the survivor list, but it has no identity "
            "(it did not sign its keys)"
        )
    _check_lists(state, alive, dropped)
    view = (tuple(sorted(alive)), tuple(sorted(dropped)))
    own = (_crypto.public_of(state.c_sk), _crypto.public_of(state.s_sk))
    message = survivors_message(state.setup.session, state.setup.cid, identity.name, own, *view)
    signature = _crypto.sign(identity.signing_key, message)
    return replace(state, stage="signed", view=view), {"sig": signature}


def _check_signatures(state: ClientState, signatures: Mapping[int, Any]) -> None:
    """Refuse to reveal unless the threshold of share holders signed exactly this client's view."""
    setup, view = state.setup, state.view
    if view is None:  # the caller checked: an invariant, not an input check
        raise ProtocolAbort("internal error: no signed view")
    if len(signatures) > len(setup.neighbors):
        raise ProtocolAbort(
            f"the server forwards {len(signatures)} survivor-list signatures, more than this "
            f"client's {len(setup.neighbors)} neighbours"
        )
    alive = set(view[0])
    for v, sig in sorted(signatures.items()):
        if v not in state.names or v not in alive:
            raise ProtocolAbort(
                f"the server forwards a survivor-list signature of client {v}, which is not a "
                "surviving neighbour that shared keys with this client"
            )
        name, public = state.names[v]
        if not isinstance(sig, bytes) or len(sig) != 64:
            raise ProtocolAbort(f"neighbour {v}'s survivor-list signature is malformed")
        try:
            message = survivors_message(setup.session, v, name, state.keys[v], *view)
            _crypto.verify(public, sig, message)
        except _crypto.CryptoError:
            raise ProtocolAbort(
                f"neighbour {v}'s survivor-list signature is not {name!r}'s over the lists "
                "this client signed: the server shows different lists to different clients, "
                "or forged or replayed the signature"
            ) from None
    if len(signatures) + 1 < setup.threshold:
        raise ProtocolAbort(
            f"only {len(signatures) + 1} of this client's share holders (itself included) "
            f"signed the survivor list; the threshold is {setup.threshold}"
        )


def unmask(
    state: ClientState,
    alive: list[int],
    dropped: list[int],
    signatures: Mapping[int, Any] | None = None,
) -> tuple[ClientState, dict[str, dict[str, bytes]]]:
    """Stage 5: check the server's lists (and signatures), then reveal one share per neighbour.

    A client with an identity reveals only after the consistency check, against
    exactly the lists it signed, with ``signatures`` (each neighbour's signature
    of them, by neighbour) from at least ``threshold - 1`` of its neighbours.
    """
    if state.stage not in ("masked", "signed"):
        raise ProtocolAbort(f"unmasking request in stage {state.stage}")
    setup = state.setup
    _check_lists(state, alive, dropped)
    if state.signs:
        if state.view is None:
            raise ProtocolAbort(
                "unmasking request without the consistency check: this client signs its keys "
                "and reveals only against a survivor list its neighbours signed"
            )
        if (tuple(sorted(alive)), tuple(sorted(dropped))) != state.view:
            raise ProtocolAbort(
                "the unmasking request's survivor or dropout list differs from the one this "
                "client signed"
            )
        _check_signatures(state, signatures or {})
    mine = set(state.held)
    alive_set, dropped_set = set(alive), set(dropped)
    reveal_b = {str(setup.cid): state.own[1]}
    reveal_b.update({str(u): state.held[u][1] for u in sorted(mine & alive_set)})
    reveal_s = {str(u): state.held[u][0] for u in sorted(mine & dropped_set)}
    done = replace(
        state, stage="done", c_sk=b"", s_sk=b"", b=b"", held={}, own=(b"", b""), view=None
    )
    return done, {"b": reveal_b, "s": reveal_s}

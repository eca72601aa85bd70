"""Running SecAgg+ from the server over any transport: :func:`secure_sum`.

The protocol stages (:mod:`._client_stages`, :mod:`._server_stages`) are pure;
this module carries their messages as the task kinds the client handlers
(:mod:`._handlers`) answer (four, five with signed keys), through
:meth:`Transport.exchange`, and turns failures into dropouts or a :class:`SecAggAbort`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covey.core._messages import Reply, Task, real
from covey.core._weights import Weights
from covey.secagg import _client_stages as cs
from covey.secagg import _server_stages as ss
from covey.secagg._dp import Noise
from covey.secagg._handlers import KINDS
from covey.secagg._options import check_sum_options
from covey.secagg._params import GraphPlan, ThreatModel, plan
from covey.secagg._ring import ring_bits
from covey.transport._base import Transport

logger = logging.getLogger("covey")


class SecAggAbort(RuntimeError):
    """A run of secure aggregation stopped before revealing a sum.

    Attributes:
        reason: Why, e.g. too few survivors to unmask a dropped client.
        stage: The stage that stopped: ``setup`` (nothing was sent: too few clients
            for the threat model, or a sum too wide for the ring), ``advertise``,
            ``share``, ``mask``, ``consistency`` (with signed keys: too few
            clients signed the survivor list; nothing was revealed) or ``unmask``.
        dropped: Clients that dropped out or were excluded, with why.
        refused: Those of them whose reply the server refused, or whose masked
            input came too late, with why in words that client may be told (see
            :class:`SecureSumResult`).
    """

    def __init__(
        self,
        reason: str,
        stage: str,
        dropped: Mapping[int, str],
        refused: Mapping[int, str] | None = None,
    ) -> None:
        super().__init__(f"secure aggregation aborted in stage {stage}: {reason}")
        self.reason = reason
        self.stage = stage
        self.dropped = dict(dropped)
        self.refused = dict(refused or {})


@dataclass(frozen=True)
class SecureSumResult:
    """The outcome of :func:`secure_sum`.

    Attributes:
        total: The exact integer sum (int64) of the survivors' vectors.
        survivors: Clients whose vectors are in ``total``, sorted.
        dropped: Clients that left after sharing keys (recovered), with why.
        excluded: Clients that left before sharing keys (not in the sum), with why.
        plan: The graph's degree and threshold.
        bits: The ring's width.
        seconds: Wall time of each stage.
        silent: Survivors that answered neither the consistency check nor the
            unmasking (the others' shares sufficed), with why; their vector is
            in ``total``.
        suspects: Survivors whose unmasking reply held a share the server
            refused (malformed, not theirs to hold, or false and outvoted by the
            other holders), with why; their own vector is still in ``total``,
            which the refused shares did not change.
        refused: The clients left out (in ``dropped`` or ``excluded``) because the
            server refused a reply of theirs (malformed keys, shares or masked
            input, keys not signed) or their masked input came too late, with
            why as that client may be told: of its own reply only, nothing of
            another client's. A client's own failure is not here: it knows it.
    """

    total: np.ndarray
    survivors: list[int]
    dropped: dict[int, str]
    excluded: dict[int, str]
    plan: GraphPlan
    bits: int
    seconds: dict[str, float] = field(default_factory=dict)
    suspects: dict[int, str] = field(default_factory=dict)
    silent: dict[int, str] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)


# -- the server side ---------------------------------------------------------------------


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


_CLIENT_ID = re.compile(r"\b(client|neighbour) (\d{1,7})\b")


def _named(text: str, transport: Transport) -> str:
    """``text`` with each client id it gives followed by that client's name, where it has one.

    The protocol's messages (a client's refusal, the server's own) name clients
    by their ids in the round, which a deployed federation's operator never
    sees: "the shares from client 2 fail authentication" becomes "... from
    client 2 ('site-a') ...". Unchanged where the transport names no clients.
    """
    name = getattr(transport, "client_name", None)
    if not callable(name):
        return text

    def with_name(match: re.Match[str]) -> str:
        said = name(int(match.group(2)))
        return f"{match.group(0)} ({said!r})" if isinstance(said, str) else match.group(0)

    return _CLIENT_ID.sub(with_name, text)


class _KeepsNames:
    """``transport`` whose ``client_name`` still names a client that has left since the start.

    A deployed server names only the clients connected now, yet the clients a
    protocol message speaks of are often those that left ("client 3's self mask
    has 4 signing share holders"): their names are taken when the run starts.
    """

    def __init__(self, transport: Transport, cids: Sequence[int]) -> None:
        self.inner = transport
        name = getattr(transport, "client_name", None)
        self._live = name if callable(name) else None
        self._names = {c: self._name_now(c) for c in cids}

    def _name_now(self, cid: int) -> str | None:
        said = self._live(cid) if self._live is not None else None
        return said if isinstance(said, str) else None

    def clients(self) -> Sequence[int]:
        return self.inner.clients()

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        return self.inner.exchange(tasks, timeout=timeout)

    def close(self) -> None:
        self.inner.close()

    def client_name(self, cid: int) -> str | None:
        return self._name_now(cid) or self._names.get(cid)


def _exchange(
    transport: Transport,
    tasks: Mapping[int, Task],
    timeout: float | None,
    out: dict[int, str],
) -> dict[int, Any]:
    """Send the tasks; return the successful results, recording each failure in ``out``."""
    results: dict[int, Any] = {}
    for reply in transport.exchange(tasks, timeout=timeout):
        if reply.cid not in tasks or reply.cid in results:
            continue
        if reply.ok:
            results[reply.cid] = reply.result
        else:
            out.setdefault(reply.cid, _named(_first_line(reply.error or "failed"), transport))
    for cid in tasks:
        if cid not in results:
            out.setdefault(cid, "no reply in time")
    return results


def _setup_payload(s: cs.Setup) -> dict[str, Any]:
    return {
        "session": s.session,
        "cid": s.cid,
        "x": s.x,
        "neighbors": {str(v): x for v, x in s.neighbors.items()},
        "threshold": s.threshold,
        "length": s.length,
        "bits": s.bits,
        "bound": s.bound,
    }


def _checked_sizes(round: Any, length: Any, bound: Any, timeout: Any) -> tuple[int, int, int]:
    """``round``, ``length`` and ``bound`` as ints; a ValueError naming any that is not valid.

    ``round=True`` (a bool is an int to Python) went out as round 1, and ``round=-1``
    as a round no loop runs.
    """
    for name, value in (("round", round), ("length", length), ("bound", bound)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    if timeout is not None and not (real(timeout) and 0 < timeout < math.inf):
        raise ValueError(f"timeout must be None or a positive number of seconds, got {timeout!r}")
    return int(round), int(length), int(bound)


def secure_sum(
    transport: Transport,
    cids: Sequence[int],
    *,
    round: int,
    input_kind: str,
    payload: Any = None,
    length: int,
    bound: int,
    threat: ThreatModel | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    weights: Weights | None = None,
    config: Mapping[str, Any] | None = None,
    configs: Mapping[int, Mapping[str, Any]] | None = None,
    noise: Noise | None = None,
    noise_entries: int | None = None,
    complete: bool | None = None,
    signed: bool = False,
    directory: Mapping[str, bytes] | None = None,
    min_survivors: int = 0,
    shortfall: str = "",
) -> SecureSumResult:
    """Add up a vector computed on each client so the server learns only the sum.

    Runs SecAgg+ (SecAgg when the graph must be complete) over ``transport``:
    four exchanges with the clients (five when they sign their keys: the
    consistency check, where each survivor signs the survivor and dropout lists
    and reveals only against lists the threshold of its share holders signed),
    which tolerate clients dropping out after they shared keys, up to what the
    threat model allows.

    Args:
        transport: Any :class:`~covey.transport.Transport`.
        cids: The clients taking part (at least 2).
        round: The round number the tasks carry.
        input_kind: The name an input function was registered under
            (:func:`register_input`), on every client.
        payload: What the input function receives (JSON data, bytes, small arrays).
        length: Entries of each client's vector.
        bound: Each entry lies in ``[-bound, bound]``; the ring is chosen so the
            sum of ``len(cids)`` such vectors (plus noise) never wraps.
        threat: The threat model that fixes the graph's degree and threshold
            (default: 5% corrupt clients, 5% dropout, curious server).
        timeout: Seconds each exchange (four, five with signed keys) may take.
        seed: Seeds the graph's permutation (tests only: it must be unpredictable).
        weights: Model weights sent with the masked-input task (for federated learning).
        config: Config sent with the masked-input task.
        configs: Each client's own config for the masked-input task, in place of
            ``config`` for the clients it names (per-client configs of a strategy).
        noise: Distributed DP noise each client adds before masking.
        noise_entries: Add the noise to the first this many entries only (default: all).
        complete: Force the complete graph (True, SecAgg) or a sparse one (False).
        signed: Require clients to sign their keys (they need a ``secagg_identity``),
            and so the survivor list before they reveal shares. Clients that sign
            their keys (those with an identity) always take the consistency check.
        directory: Each client name's Ed25519 public key: with ``signed``, the
            server checks every signature itself and leaves out a client whose
            keys do not verify (else its neighbours abort the round).
        min_survivors: Stop before the unmasking (nothing revealed) when fewer
            clients than this sent their masked input, e.g. fewer than the round
            loop would accept.
        shortfall: What such a stop says after the count of survivors (default:
            "fewer than MIN_SURVIVORS").

    Returns:
        A :class:`SecureSumResult`; ``total`` is exact (no wrap-around).

    Raises:
        SecAggAbort: When too few clients remain to finish without revealing anything.
    """
    cid_list = sorted(int(c) for c in cids)
    round, length, bound = _checked_sizes(round, length, bound, timeout)
    sizes = (length, noise_entries, min_survivors, seed)
    check_sum_options(sizes, threat, noise, complete, signed, directory)
    total_bound = bound + (noise.tail_bound if noise is not None else 0)
    try:
        graph = plan(len(cid_list), threat, complete=complete)
        bits = ring_bits(len(cid_list), total_bound)
    except ValueError as exc:  # too few clients for the threat model, or too wide a sum
        raise SecAggAbort(str(exc), "setup", {}) from None
    state, setups = ss.setup(cid_list, graph, length, total_bound, bits, seed)
    transport = _KeepsNames(transport, cid_list)
    failures: dict[int, str] = {}
    seconds: dict[str, float] = {}
    took: dict[str, set[int]] = {}  # the clients each stage took a reply from, and the late
    session = state.session
    stage = "advertise"
    alive: list[int] = []
    try:
        t0 = time.perf_counter()
        tasks = {
            u: Task(KINDS[0], round, {}, None, {**_setup_payload(s), "signed": signed})
            for u, s in setups.items()
        }
        replies = _exchange(transport, tasks, timeout, failures)
        took["advertise"] = set(replies)
        if signed:
            for u, r in replies.items():
                if not (isinstance(r, Mapping) and "sig" in r and "name" in r):
                    failures.setdefault(u, "keys not signed")
            if directory is not None:
                for u, reason in ss.unverified(session, replies, directory).items():
                    failures.setdefault(u, reason)
            replies = {u: r for u, r in replies.items() if u not in failures}
        state, keys = ss.collect_keys(state, _mappings(replies))
        seconds["advertise"] = time.perf_counter() - t0

        stage, t0 = "share", time.perf_counter()
        tasks = {
            u: Task(
                KINDS[1],
                round,
                {},
                None,
                {"session": session, "keys": {str(v): k for v, k in keys[u].items()}},
            )
            for u in keys
        }
        replies = _exchange(transport, tasks, timeout, failures)
        took["share"] = set(replies)
        state, inbox = ss.route_shares(state, _mappings(replies))
        seconds["share"] = time.perf_counter() - t0

        stage, t0 = "mask", time.perf_counter()
        common = {
            "session": session,
            "input_kind": input_kind,
            "input": payload,
            "input_bound": bound,
            "noise": None
            if noise is None
            else {
                "mechanism": noise.mechanism,
                "sigma": noise.sigma,
                "entries": length if noise_entries is None else noise_entries,
            },
        }
        tasks = {
            v: Task(
                KINDS[2],
                round,
                dict(configs[v] if configs is not None and v in configs else config or {}),
                weights,
                {**common, **_name_of(transport, v), "shares": _sealed(inbox[v])},
            )
            for v in inbox
        }
        state = _collect_masked(transport, tasks, timeout, state, took)
        state, alive, dropped = ss.request_unmask(state)
        seconds["mask"] = time.perf_counter() - t0
        if len(alive) < min_survivors:  # a sum the caller would refuse is never revealed
            raise cs.ProtocolAbort(
                f"{len(alive)} of {len(cid_list)} clients sent masked inputs, "
                + (shortfall or f"fewer than {min_survivors}")
            )

        request = {"session": session, "alive": alive, "dropped": dropped}
        stage = "consistency"  # with signed keys: the survivors sign the lists first
        revealers, signatures = _consistency(
            transport, state, round, request, timeout, (directory, failures, seconds)
        )

        stage, t0 = "unmask", time.perf_counter()
        tasks = {
            v: Task(KINDS[3], round, {}, None, _unmask_request(state, v, request, signatures))
            for v in revealers
        }
        # A survivor that does not reveal is named if the unmasking then falls short.
        replies = _exchange(transport, tasks, timeout, failures)
        # A reply that is no mapping reveals nothing: its sender withheld its shares.
        revealed = {u: r if isinstance(r, Mapping) else {} for u, r in replies.items()}
        total = ss.finish(state, alive, dropped, revealed)
        seconds["unmask"] = time.perf_counter() - t0
    except cs.ProtocolAbort as exc:
        # A client's own error says more than the stage's summary ("no key shares").
        # a survivor that left since: it is said so, as its update is in the masked sum
        left = {u: ss.LEFT_MASKED.format(stage, failures[u]) for u in alive if u in failures}
        why = {**state.left, **state.dropped, **failures, **left, **state.suspects}
        refused = ss.refusals(state, took, failures)
        raise SecAggAbort(_named(str(exc), transport), stage, why, refused) from None
    excluded = {u: failures.get(u, why) for u, why in state.left.items()}
    for u in cid_list:
        if u not in state.routed and u not in excluded:
            excluded[u] = failures.get(u, "left before sharing keys")
    dropped_why = {u: state.dropped.get(u, "no masked input") for u in dropped}
    suspects = dict(state.suspects)
    silent = {
        u: f"left after its masked input was taken (it is in the sum): {failures.get(u, why)}"
        for u, why in ((u, "not asked to unmask") for u in alive)
        if u in failures or u not in revealers
    }
    refused = ss.refusals(state, took, failures)
    return SecureSumResult(
        total, alive, dropped_why, excluded, graph, bits, seconds, suspects, silent, refused
    )


def _consistency(
    transport: Transport,
    state: ss.ServerState,
    round: int,
    request: Mapping[str, Any],
    timeout: float | None,
    out: tuple[Mapping[str, bytes] | None, dict[int, str], dict[str, float]],
) -> tuple[list[int], dict[int, bytes]]:
    """The consistency check: the clients to ask to unmask, and the lists' signatures.

    Runs when survivors signed their keys (no exchange otherwise). Each such
    survivor signs the lists; one that does not (it dropped, or refused the
    lists) stays in the sum but is not asked to unmask. ``out`` is the
    directory (or None), and the failures and stage times to record into.
    Raises ProtocolAbort when the others cannot unmask every secret asked for.
    """
    directory, failures, seconds = out
    alive, dropped = request["alive"], request["dropped"]
    if not any(u in state.names for u in alive):
        return list(alive), {}
    t0 = time.perf_counter()
    tasks = {u: Task(KINDS[4], round, {}, None, dict(request)) for u in alive if u in state.names}
    replies = _exchange(transport, tasks, timeout, failures)
    signatures = ss.collect_signatures(
        state, alive, dropped, _mappings(replies), directory, failures
    )
    revealers = [u for u in alive if u not in state.names or u in signatures]
    ss.check_revealers(state, alive, dropped, revealers, "signing")
    seconds["consistency"] = time.perf_counter() - t0
    return revealers, signatures


def _unmask_request(
    state: ss.ServerState, v: int, request: Mapping[str, Any], signatures: Mapping[int, bytes]
) -> dict[str, Any]:
    """Client ``v``'s unmasking request: with its neighbours' signatures if it signs."""
    if v not in state.names:
        return dict(request)
    return {**request, "signatures": ss.forwarded(state, v, signatures)}


def _collect_masked(
    transport: Transport,
    tasks: Mapping[int, Task],
    timeout: float | None,
    state: ss.ServerState,
    took: dict[str, set[int]],
) -> ss.ServerState:
    """Send the masked-input tasks and add each masked vector to the server's state.

    Notes in ``took`` the clients whose reply came (``"mask"``) and those whose
    did not in time (``"late"``).
    """
    answered: set[int] = set()
    took["mask"] = set()
    for reply in transport.exchange(tasks, timeout=timeout):
        if reply.cid not in tasks:
            continue
        answered.add(reply.cid)
        if not reply.ok:
            said = _named(_first_line(reply.error or "failed"), transport)
            state.dropped.setdefault(reply.cid, said)
            continue
        took["mask"].add(reply.cid)
        res = reply.result
        masked = res.get("masked") if isinstance(res, Mapping) else None
        state = ss.add_masked(state, reply.cid, masked)
    took["late"] = set(tasks) - answered
    for cid in took["late"]:  # said as in the other stages, not "no masked input"
        state.dropped.setdefault(cid, "no reply in time")
    return state


def _name_of(transport: _KeepsNames, v: int) -> dict[str, str]:
    """``{"name": name}`` for a client the transport names (a deployed client's, in its errors)."""
    name = transport.client_name(v)
    return {} if name is None else {"name": name}


def _sealed(inbox: Mapping[int, bytes]) -> dict[str, bytes]:
    return {str(u): b for u, b in inbox.items()}


def _mappings(replies: Mapping[int, Any]) -> dict[int, Mapping[str, Any]]:
    return {u: r for u, r in replies.items() if isinstance(r, Mapping)}


__all__ = ["SecAggAbort", "SecureSumResult", "secure_sum"]

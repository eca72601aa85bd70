"""Simulated heterogeneity: which clients are online and how long their training takes.

One model, :class:`ClientClock`, drives both kinds of simulated time in covey:

* synchronous rounds (:class:`ClockedTransport`): each sampled client is online
  or not this round; an online client's fit takes a simulated duration; with a
  round deadline, clients slower than it are stragglers and their updates are
  not used. The round's virtual time is that of its slowest on-time client.
* the asynchronous FedBuff simulation (:class:`covey.SimulatedAsyncTransport`),
  which schedules every fit task's completion on its virtual clock with the same
  ``duration`` draw and the same ``online`` test.

Nothing sleeps: time is virtual, so a run with stragglers is as fast as one
without, and the same seed gives the same dropouts and stragglers on every backend.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from covey.compress._task import KIND as COMPRESSED_FIT
from covey.core._messages import Reply, Task, real
from covey.strategies._checks import name_of
from covey.transport._async import Durations, simulated_seconds
from covey.transport._base import Transport

Availability = float | Callable[[int, int], bool] | np.ndarray
"""Who is online: a probability per round, ``(cid, round) -> bool``, or a trace
``trace[cid, t]`` of booleans (round ``r`` reads column ``(r - 1) % T``)."""

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: Any) -> Any:
    """SplitMix64's finalizer, vectorized: a well-spread 64-bit hash of each entry."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (x ^ (x >> np.uint64(31))) & _MASK64


def uniform(seed: int, rnd: int, cids: np.ndarray) -> np.ndarray:
    """One uniform draw in [0, 1) per client id, a pure function of ``(seed, rnd, cid)``.

    A client's draw does not depend on which other clients are asked, nor in which
    order, so the same client is online or not whatever the backend or sample.
    """
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + np.uint64(0x9E3779B97F4A7C15))
        key = _mix(key ^ np.uint64(rnd & 0xFFFFFFFFFFFFFFFF))
        h = _mix(np.asarray(cids, dtype=np.uint64) ^ key)
    out: np.ndarray = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return out


class ClientClock:
    """Per-client availability and simulated training time, on a virtual clock.

    Args:
        durations: Simulated seconds a fit task takes, ``(cid, rng) -> seconds``
            (e.g. ``lambda cid, rng: rng.lognormal(0, 1)``) or one value per client;
            None: every fit takes 1.0 s.
        availability: A client is online with this probability each round (drawn
            independently per client and round), or ``(cid, round) -> bool``, or a
            boolean trace ``trace[cid, t]`` replayed cyclically; None: always online.
        seed: Seeds the availability draws (durations use the ``rng`` they are given).

    Example:
        >>> import numpy as np
        >>> clock = ClientClock(durations=[1.0, 5.0], availability=0.5, seed=1)
        >>> clock.duration(1, np.random.default_rng(0))
        5.0
        >>> clock.online(np.array([0, 1]), 3).dtype
        dtype('bool')
    """

    def __init__(
        self,
        durations: Durations | None = None,
        availability: Availability | None = None,
        *,
        seed: int = 0,
    ) -> None:
        given: Any = availability
        if isinstance(given, np.integer | np.floating):  # np.float32(0.8): a number
            availability = given.item()
        if isinstance(availability, float | int) and not isinstance(availability, bool):
            if not 0.0 <= float(availability) <= 1.0:
                raise ValueError(f"availability must be a probability, got {availability}")
        elif isinstance(availability, np.ndarray):
            if availability.ndim != 2 or availability.shape[1] == 0:
                raise ValueError(
                    "an availability trace must be a 2-d array trace[cid, t], got shape "
                    f"{availability.shape}"
                )
            availability = _trace(availability)
        elif availability is not None and not callable(availability):
            raise TypeError(
                "availability must be a probability, a (cid, round) -> bool callable or a "
                f"trace array, got {type(availability).__name__}"
            )
        self.durations = durations
        self.availability = availability
        self.seed = int(seed)

    def duration(self, cid: int, rng: np.random.Generator) -> float:
        """Simulated seconds client ``cid``'s next fit takes.

        Args:
            cid: The client's id.
            rng: The generator a ``client_durations`` function draws from (1 second
                when no durations are given).
        """
        if self.durations is None:
            return 1.0
        if not callable(self.durations):
            return simulated_seconds(self.durations[cid], cid)
        try:
            given = self.durations(cid, rng)
        except Exception as exc:  # the user's error, told where it came from
            exc.add_note(f"raised by client_durations {name_of(self.durations)} for client {cid}")
            raise
        return simulated_seconds(given, cid)

    def online(self, cids: np.ndarray, rnd: int) -> np.ndarray:
        """Which of ``cids`` are online in round ``rnd``, as a boolean array.

        Args:
            cids: Client ids (an availability trace must cover each).
            rnd: The round number, from 1 (a trace repeats past its last column).
        """
        cids = np.asarray(cids, dtype=np.int64)
        avail = self.availability
        if avail is None:
            return np.ones(len(cids), dtype=bool)
        if isinstance(avail, np.ndarray):
            if len(cids) and (cids.min() < 0 or cids.max() >= avail.shape[0]):
                raise ValueError(
                    f"the availability trace covers clients 0..{avail.shape[0] - 1}, "
                    f"not client {int(cids.max())}"
                )
            return np.asarray(avail[cids, (rnd - 1) % avail.shape[1]], dtype=bool)
        if callable(avail):
            return np.fromiter((_asked(avail, int(c), rnd) for c in cids), bool, len(cids))
        return uniform(self.seed, rnd, cids) < float(avail)

    def is_online(self, cid: int, rnd: int) -> bool:
        """Whether client ``cid`` is online in round ``rnd``.

        Args:
            cid: The client's id.
            rnd: The round number, from 1.
        """
        return bool(self.online(np.array([cid]), rnd)[0])


def _trace(trace: np.ndarray) -> np.ndarray:
    """A boolean availability trace; one of other values (probabilities, say) refused."""
    if trace.dtype == bool:
        return trace
    if trace.dtype.kind in "iuf" and np.isin(trace, (0, 1)).all():
        return trace.astype(bool)
    other = trace[~np.isin(trace, (0, 1))].flat[0].item()
    raise ValueError(
        f"an availability trace holds whether each client is online (True/False, or 0/1), "
        f"got {trace.dtype} values such as {other!r}: for a probability of being online "
        "give availability=p, or draw the trace yourself"
    )


def _asked(availability: Callable[[int, int], Any], cid: int, rnd: int) -> bool:
    """Whether an availability function says ``cid`` is online in ``rnd``; its error noted."""
    try:
        online = availability(cid, rnd)
    except Exception as exc:  # the user's error, told where it came from
        exc.add_note(
            f"raised by availability {name_of(availability)} for client {cid} in round {rnd}"
        )
        raise
    return _said(online, cid, rnd)


def _said(online: Any, cid: Any, rnd: int) -> bool:
    """What an availability function said of ``cid`` in ``rnd``: a bool (or 0/1), else an error."""
    if isinstance(online, bool | np.bool_):
        return bool(online)
    if isinstance(online, int | np.integer) and online in (0, 1):
        return bool(online)
    raise TypeError(
        f"availability({int(cid)}, {rnd}) returned {online!r} ({type(online).__name__}), not "
        "True or False: for a probability of being online give availability=p"
    )


def clients_setup(
    durations: Durations | None, availability: Availability | None, deadline: float | None
) -> dict[str, Any]:
    """How a simulation's clients come and go, as its run records it (a resume must match).

    Numbers as they are; a function by its qualified name; a list or trace by its
    shape and a digest of its values.
    """

    def said(value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float):
            return value
        if callable(value):
            return f"function {getattr(value, '__qualname__', type(value).__name__)}"
        try:
            values = np.asarray(value)
            digest = hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:16]
        except (TypeError, ValueError):
            return type(value).__name__
        return f"{values.dtype}{list(values.shape)} sha256:{digest}"

    return {
        "availability": said(availability),
        "client_durations": said(durations),
        "round_deadline": deadline if deadline is None else float(deadline),
    }


_FITS = ("fit", COMPRESSED_FIT)


def trains(task: Task) -> bool:
    """Whether ``task`` runs the client's training (and so takes simulated time).

    A fit does, and so does a compressed fit (``"fit_compressed"``) and secure
    aggregation's masked input for a secure fit: the exchanges that carry the weights
    and call the client's ``fit``.
    """
    # "secagg.mask" by name: importing covey.secagg here would load its cryptography.
    return task.kind in _FITS or (task.kind == "secagg.mask" and task.weights is not None)


def offline_error(rnd: int) -> str:
    """The error of a client that the availability model has offline in ``rnd``."""
    return f"offline in round {rnd} (simulated availability)"


class ClockedTransport:
    """Runs synchronous rounds through ``transport`` under a :class:`ClientClock`.

    Per exchange: clients offline this round fail at once (dropouts); each online
    client's fit draws a simulated duration; with ``deadline`` set, clients slower
    than it fail as stragglers without being run. The others run on the wrapped
    transport, their replies streaming through unchanged. Tasks other than fit
    (and secure aggregation's masked input of a secure fit, where the client
    trains) take no simulated time but still need their client online.

    Args:
        transport: Where the clients run.
        clock: The availability and speed model.
        deadline: Simulated seconds a round's fit may take (None: no stragglers).

    Attributes:
        now: Virtual seconds elapsed: each fit exchange adds its slowest on-time client.
        rounds: ``(round, online, stragglers, seconds)`` per fit exchange.
    """

    def __init__(
        self, transport: Transport, clock: ClientClock, *, deadline: float | None = None
    ) -> None:
        if deadline is not None and not (real(deadline) and deadline > 0):
            raise ValueError(
                f"the round deadline (round_deadline) must be a positive number of simulated "
                f"seconds, got {deadline!r}"
            )
        self._transport = transport
        self.clock = clock
        self.deadline = deadline
        self.now = 0.0
        self.rounds: list[tuple[int, int, int, float]] = []
        self._offline: frozenset[int] = frozenset()

    @property
    def num_workers(self) -> int:
        """The wrapped transport's workers (0 if it has none)."""
        return int(getattr(self._transport, "num_workers", 0))

    def clients(self) -> Sequence[int]:
        """The clients of the wrapped transport."""
        return self._transport.clients()

    def reached(self, cid: int) -> bool:
        """Whether the last exchange's task reached ``cid`` (not if it was offline).

        A straggler did receive its task: it fails for training too slowly.

        Args:
            cid: A client of the last exchange.
        """
        return cid not in self._offline

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        """Fail offline clients and stragglers, run the rest; yield every reply.

        Who is online, and how long each fit takes, is drawn from the clock for
        the tasks' round; an exchange of training tasks (see :func:`trains`)
        moves the simulated time on by its slowest client that met the deadline
        (by the deadline, if a client missed it).
        The failures are yielded first, then the wrapped transport's replies.

        Args:
            tasks: The task of each client, by client id.
            timeout: Seconds of real time, handed on to the wrapped transport.
        """
        cids = np.array(sorted(tasks), dtype=np.int64)
        rounds = {task.round for task in tasks.values()}
        rnd = rounds.pop() if len(rounds) == 1 else max(t.round for t in tasks.values())
        up = self.clock.online(cids, rnd)
        run: dict[int, Task] = {}
        failed: list[Reply] = []
        slowest = 0.0
        late = 0
        rng = np.random.default_rng([self.clock.seed, 3, rnd])
        offline: set[int] = set()
        for cid, on in zip(cids.tolist(), up.tolist(), strict=True):
            task = tasks[cid]
            if not on:
                offline.add(cid)
                failed.append(Reply(cid, task.kind, error=offline_error(rnd)))
                continue
            if trains(task):
                seconds = self.clock.duration(cid, rng)
                if self.deadline is not None and seconds > self.deadline:
                    late += 1
                    failed.append(
                        Reply(
                            cid,
                            task.kind,
                            error=f"straggler: its fit takes {seconds:.4g} s of simulated time, "
                            f"past the round deadline of {self.deadline:.4g} s",
                        )
                    )
                    continue
                slowest = max(slowest, seconds)
            run[cid] = task
        if any(trains(t) for t in tasks.values()):
            elapsed = self.deadline if late and self.deadline is not None else slowest
            self.now += elapsed
            self.rounds.append((rnd, int(up.sum()), late, elapsed))
        self._offline = frozenset(offline)
        yield from failed
        if run:
            yield from self._transport.exchange(run, timeout=timeout)

    def close(self) -> None:
        """Close the wrapped transport."""
        self._transport.close()

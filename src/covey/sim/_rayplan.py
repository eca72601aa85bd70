"""What a Ray run asks of its cluster: Ray's resource names, actors per group, checks.

Pure functions of the resource specs and the cluster's totals, and a probe of the
address to join, kept apart from the transport in ``_ray.py`` (they neither
import nor start Ray).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from covey.transport._base import LONGEST_WAIT

Resources = Mapping[str, float]
_RESOURCE_KEYS = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


#: Ray counts resources in steps of this much: a smaller amount is refused by Ray itself.
_RESOURCE_STEP = 1e-4
#: The most Ray counts of a resource: amounts are int64 counts of _RESOURCE_STEP, and
#: a larger one wraps around (an actor asking for 1e16 bytes of memory held none).
_RESOURCE_MOST = (2**63 - 1) * _RESOURCE_STEP


def ray_need(resources: Resources) -> dict[str, float]:
    """Ray's resource names for a covey resource spec (``num_cpus`` -> ``CPU``).

    Raises:
        ValueError: for an amount or a name Ray would refuse only once it has started,
            naming the resource and what to ask for instead.
    """
    need: dict[str, float] = {}
    for key, value in resources.items():
        if not isinstance(key, str) or not key:
            raise ValueError(  # Ray would wait for a resource no node has, then time out
                f"client resource names must be non-empty strings such as 'num_cpus', got {key!r}"
            )
        if (
            isinstance(value, bool | np.bool_)
            or not isinstance(value, int | float | np.integer | np.floating)
            or not (value >= 0 and (isinstance(value, int) or math.isfinite(value)))
        ):  # NaN and inf failed inside Ray
            raise ValueError(f"client resource {key!r} must be a finite number >= 0, got {value!r}")
        if value > _RESOURCE_MOST:
            raise ValueError(  # Ray's count overflowed: a memory of 1e16 was granted as none
                f"client resource {key!r} is {value!r}, more than Ray can count "
                f"(at most {int(_RESOURCE_MOST)}{' bytes' if key == 'memory' else ''})"
            )
        if _RESOURCE_KEYS.get(key, key) == "memory" and value != int(value):
            raise ValueError(  # Ray counts it in bytes: 0.5 asked for half a byte
                f"client resource {key!r} is {value!r}: Ray's memory is in bytes, a whole "
                f"number of bytes of RAM per client such as {2 * 1024**3} (2 GiB)"
            )
        if 0 < value < _RESOURCE_STEP:
            raise ValueError(
                f"client resource {key!r} is {value!r}, less than the smallest amount Ray "
                f"counts ({_RESOURCE_STEP:g}): ask for 0 or at least {_RESOURCE_STEP:g}"
            )
        if key == "object_store_memory":
            raise ValueError(
                "client resource 'object_store_memory' is not one a Ray actor can hold: "
                "ask for 'memory' (bytes of RAM per client), or leave it out"
            )
        name = _RESOURCE_KEYS.get(key, key)
        if name in need:
            first = next(k for k in resources if _RESOURCE_KEYS.get(k, k) == name)
            raise ValueError(
                f"client resources {first!r} and {key!r} both name Ray's {name!r}: "
                f"give one of them ({', '.join(_RESOURCE_KEYS)} are covey's names)"
            )
        need[name] = float(value)
    return need


def actors_for(
    need: Mapping[str, float], total: Mapping[str, float], users: Mapping[str, int]
) -> int:
    """How many actors needing ``need`` fit in this group's share of the cluster.

    Each resource is shared equally among the ``users[key]`` groups that need it.
    """
    counts = [
        math.floor(total.get(key, 0.0) / users.get(key, 1) / value + 1e-9)
        for key, value in need.items()
        if value > 0
    ]
    if not counts:  # needs nothing: one actor per CPU
        counts = [math.floor(total.get("CPU", 1.0))]
    return max(1, min(counts))


#: More actors than this many per CPU of the cluster (and more than MANY_ACTORS) are
#: warned of: each is a process of its own, and a CPU runs one client at a time.
ACTORS_PER_CPU = 4
MANY_ACTORS = 8


def crowded(counts: Mapping[str, int], cpus: float) -> str | None:
    """Why ``counts`` actors per group are too many for a cluster of ``cpus`` CPUs, or None.

    Each actor is a Python process with its own imports (100-200 MB or more): a
    small fraction of a CPU per client (``{"num_cpus": 0.01}``) started hundreds,
    enough to exhaust a machine's memory, while running clients no faster.
    """
    total = sum(counts.values())
    if total <= max(MANY_ACTORS, ACTORS_PER_CPU * cpus):
        return None
    return (
        f"starting {total} Ray actors for a cluster of {cpus:g} CPUs: each is a Python "
        "process of its own (often 100-200 MB or more), and a CPU runs one client at a "
        "time, so so many cost memory and start-up time without running clients faster. "
        "Give each client a larger share of a CPU in client_resources, or cap the actors "
        "per group with num_workers"
    )


def check_fits(groups: Mapping[str, Mapping[str, float]], total: Mapping[str, float]) -> None:
    """Refuse a group whose client needs more than a local Ray has (no node would ever join).

    Raises:
        ValueError: naming the group, what one of its clients needs and what Ray has.
    """
    for name, need in groups.items():
        short = {k: v for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
        if short:
            has = {k: total.get(k, 0.0) for k in short}
            custom = sorted(set(short) - set(_RESOURCE_KEYS.values()))
            raise ValueError(
                f"client_resources{f'[{name!r}]' if name else ''} asks for {short} per "
                f"client, but the local Ray started for this run has {has}: no client "
                "could ever run. Ask for less, or join a cluster that has it with "
                "ray_address="
                + (
                    f" ({', '.join(map(repr, custom))}: a custom Ray resource; covey's "
                    f"own names are {', '.join(_RESOURCE_KEYS)})"
                    if custom
                    else ""
                )
            )


def unpicklable(client_fn: object, exc: Exception) -> str:
    """The error for a ``client_fn`` that Ray cannot ship to its actors, naming what fails."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() or [type(exc).__name__]
    marker = "FAIL serialization:"
    why = next((ln.split(marker, 1)[1].strip() for ln in lines if marker in ln), lines[0])
    # The variable whose check failed: the one followed by a failure (others pass)
    culprit = next(
        (
            ln.strip()
            for ln, after in zip(lines, [*lines[1:], ""], strict=True)
            if ln.strip().startswith("Serializing ") and marker in after
        ),
        "",
    )
    name = getattr(client_fn, "__qualname__", type(client_fn).__name__)
    return (
        f"backend='ray' sends client_fn ({name}) to every Ray actor by pickling it, and it "
        f"does not pickle: {why}"
        + (f" ({culprit.rstrip('.')})" if culprit else "")
        + ". Build what it closes over inside client_fn (clients are built in the actors, "
        "they need not pickle), or use backend='process', whose forked workers pickle nothing"
    )


def start_failed(client_fn: object, exc: Exception) -> str:
    """The error for an actor that died while starting (``client_fn`` did not unpickle there)."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()]
    causes = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", ln)]
    cause = causes[-1] if causes else (lines[0] if lines else type(exc).__name__)
    name = getattr(client_fn, "__qualname__", type(client_fn).__name__)
    hint = (
        ". A module that only this process can import (its folder added to sys.path "
        "here) must be importable in the actors too: put its folder in PYTHONPATH before "
        "Ray starts, or send it by value with ray.cloudpickle.register_pickle_by_value(module)"
        if "No module named" in cause
        else ""
    )
    return f"a Ray actor died while starting, unpickling client_fn ({name}): {cause}{hint}"


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse a ``host:port`` cluster address at which nothing accepts a connection.

    ``ray.init`` retries such an address for more than ten minutes before it fails;
    one TCP connection to the head's port says at once whether anything listens
    there. A Ray Client address (``ray://host[:port]``, port 10001 by default) is
    checked the same way: Ray would wait 30 s for it and then not name it. A
    server there that is no gRPC server (Ray's dashboard, another service) is
    refused too: Ray would retry it as long (unless ``RAY_USE_TLS`` is set, when
    the head answers only TLS). ``"auto"``, ``"local"`` and other schemes are left to Ray.

    Raises:
        ConnectionError: naming the address and why no Ray head answered there.
        ValueError: for an empty address, or a port that is not a number.
    """
    if not address.strip():
        raise ValueError(
            "ray_address is empty: give the head node's host:port, or leave it out to "
            "start a local Ray for this run"
        )
    target, client = address, address.startswith("ray://")
    if client:
        target = address[len("ray://") :].split("/", 1)[0]
        if target and (target.endswith("]") or ":" not in target):
            target += ":10001"  # Ray Client's default port
    if address in ("auto", "local") or "://" in target:
        return
    host, sep, port = target.rpartition(":")
    if not sep or target.endswith("]"):
        return  # a bare host: Ray says what is wrong with it
    if not port.isdigit():
        raise ValueError(
            f"ray_address={address!r} has the port {port!r}, not a number: give host:port, "
            "such as '127.0.0.1:6379'"
        )
    host = host.strip("[]") or "127.0.0.1"
    head = (
        "the port of the head node's Ray Client server (10001 by default)"
        if client
        else "the address and port of the head node (the --port of `ray start --head`, "
        "6379 by default; not the dashboard's port)"
    )
    timeout = min(timeout, LONGEST_WAIT)  # the OS refuses a socket timeout of years
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            other = None if _tls() else not_grpc(sock, timeout)
    except OSError as exc:
        if isinstance(exc, TimeoutError):
            why = f"no answer within {timeout:g} s; a slow network: raise ray_start_timeout"
        else:
            why = exc.strerror or str(exc) or type(exc).__name__
        raise ConnectionError(
            f"no Ray cluster answers at ray_address={address!r} ({why}): give {head}, "
            "check that it is running and reachable from here, or leave ray_address out to "
            "start a local Ray for this run"
        ) from exc
    if other is not None:  # Ray would retry it for more than ten minutes, then fail
        raise ConnectionError(
            f"something listens at ray_address={address!r}, but no Ray head node (which "
            f"speaks gRPC): {other}. Give {head}, or leave ray_address out to start a "
            "local Ray for this run"
        )
    if not _tls():
        _check_service(address, host, int(port), client, timeout)


#: A method only a head node's GCS serves, and one only a Ray Client server serves:
#: each answers its own (any status but UNIMPLEMENTED, an empty request, token or no
#: token) and UNIMPLEMENTED to the other's.
_GCS_METHOD = "/ray.rpc.NodeInfoGcsService/CheckAlive"
_CLIENT_METHOD = "/ray.rpc.RayletDriver/ClusterInfo"


def ray_service(host: str, port: int, timeout: float) -> str | None:
    """Which Ray server answers gRPC at ``host:port``: ``"gcs"``, ``"client"`` or None.

    None when neither (or both) of the two methods is served, or the server did not
    answer in time: the address is then left to Ray.
    """
    import grpc

    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        served = tuple(_serves(grpc, channel, m, timeout) for m in (_GCS_METHOD, _CLIENT_METHOD))
    if served == (True, False):
        return "gcs"
    return "client" if served == (False, True) else None


def _serves(grpc: Any, channel: Any, method: str, timeout: float) -> bool | None:
    """Whether ``method`` is served (False: UNIMPLEMENTED; None: no answer in time)."""
    try:
        channel.unary_unary(method)(b"", timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return False
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            return None
    return True


def _check_service(address: str, host: str, port: int, client: bool, timeout: float) -> None:
    """Refuse a head's GCS port given as a Ray Client address, and the other way round.

    Ray would wait 30 s on the one and fail naming neither, and fail the other
    after 20 s with a note that does not say the scheme or port is wrong.
    """
    kind = ray_service(host, port, min(timeout, 5.0))
    if client and kind == "gcs":
        raise ConnectionError(
            f"ray_address={address!r} names a Ray head node's port (the --port of "
            "`ray start --head`), which Ray Client (ray://) does not speak: give it "
            f"without ray:// ('{address[len('ray://') :]}') to join the cluster directly, or "
            "ray:// with the head's Ray Client server port (10001 by default)"
        )
    if not client and kind == "client":
        raise ConnectionError(
            f"ray_address={address!r} names a Ray Client server port, not a head node's "
            f"port: give it as 'ray://{address}' to run through Ray Client, or give the "
            "head's address and port (the --port of `ray start --head`, 6379 by default) "
            "to join the cluster directly"
        )


#: An HTTP/2 client's connection preface and an empty SETTINGS frame: a gRPC
#: server answers with a SETTINGS frame of its own.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _tls() -> bool:
    """Whether Ray talks TLS (``RAY_USE_TLS``): its head then answers no plain HTTP/2."""
    return os.environ.get("RAY_USE_TLS", "0").strip().lower() not in ("", "0", "false")


def not_grpc(sock: socket.socket, timeout: float) -> str | None:
    """Why the server at the other end of ``sock`` is no gRPC server, or None if it is one.

    The HTTP/2 connection preface is sent; a gRPC server answers with a SETTINGS
    frame (9 bytes of frame header, type 4), anything else (an HTTP/1 server such
    as Ray's dashboard, a server that says nothing) is told apart.
    """
    sock.settimeout(timeout)
    got = b""
    try:
        sock.sendall(_HTTP2_PREFACE)
        while len(got) < 9:
            more = sock.recv(9 - len(got))
            if not more:
                break
            got += more
    except TimeoutError:
        if not got:
            return (
                f"it accepted a connection but sent nothing within {timeout:g} s (a slow "
                "head: raise ray_start_timeout)"
            )
    except OSError as exc:
        return f"it dropped the connection ({exc.strerror or exc})"
    if len(got) == 9 and got[3] == 4:
        return None
    if not got:
        return "it closed the connection without answering"
    with contextlib.suppress(OSError):  # a little more of its answer, to show what it is
        sock.settimeout(0.5)
        got += sock.recv(40)
    first = (got.splitlines() or [got])[0][:60]
    return f"it answered {first.decode('ascii', 'backslashreplace')!r}, not as a gRPC server"


def check_joined(address: str, joined: str) -> None:
    """Refuse a cluster ``address`` other than the Ray this process joined already (``joined``).

    An initialized Ray is used as it is; a run asked to join another cluster would
    otherwise run there silently, with other resources. Addresses are compared by
    port (Ray names a node by the machine's address where the caller may write
    ``127.0.0.1``); ``"auto"`` and ``ray://`` addresses are not compared.

    Raises:
        ValueError: naming both addresses and the two ways out.
    """
    if address in ("auto", "local") or "://" in address:
        return
    port = address.rpartition(":")[2]
    if port.isdigit() and int(port) != int(joined.rpartition(":")[2] or 0):
        raise ValueError(
            f"ray_address={address!r} names another Ray than the one this process has "
            f"already joined ({joined}, with ray.init()), which a run uses as it is: call "
            "ray.shutdown() first to join the cluster, or leave ray_address out to run "
            "on the Ray already joined"
        )


def unanswered(actor: str, cids: Sequence[int], timeout: float | None) -> str:
    """The failure of clients whose actor call was still unanswered at the deadline."""
    return (
        f"no reply in time: Ray actor {actor} had not answered clients "
        f"{', '.join(map(str, cids))} of a call after the timeout of {timeout:g} s (it sends "
        "the replies of clients that finish in quick succession together; it is stopped "
        "and replaced)"
    )


def actor_gone(ray: Any) -> tuple[type[Exception], ...]:
    """Ray's errors of an actor call that say the actor is gone (``ray`` the module).

    It died, or was killed for memory or with its node. An actor killed for memory
    fails that call and every later one with Ray's out-of-memory error (not an
    actor error): left in place, its clients failed in every later round.
    """
    errors = ray.exceptions
    return errors.RayActorError, errors.OutOfMemoryError, errors.NodeDiedError


def wait_all(ray: Any, refs: list[Any], timeout: float) -> tuple[list[Any], list[Any]]:
    """``ray.wait`` for all of ``refs`` for ``timeout`` seconds: those ready, those not.

    Waited in turns of at most :data:`LONGEST_WAIT`: Ray refuses a wait of years
    (a ``ray_start_timeout`` of ``1e300``) with an ``OverflowError``.
    """
    ready: list[Any] = []
    deadline = time.monotonic() + timeout
    while refs and (left := deadline - time.monotonic()) > 0:
        done, refs = ray.wait(refs, num_returns=len(refs), timeout=min(left, LONGEST_WAIT))
        ready += done
    return ready, refs


def death_cause(exc: BaseException) -> str:
    """What Ray says of an actor's death: its first line and why the actor is dead.

    Ray's error names the worker's exit type and detail (``SYSTEM_ERROR``, a lost
    connection), not its exit code or signal, which it does not report.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    because = re.search(
        r"The actor is dead because (.*?)(?:\s+(?:Some common causes|There are some potential)|$)",
        text,
        re.S,
    )
    if because is None:
        return first
    why = " ".join(because.group(1).split())
    return f"{first.rstrip('.')}: {why[:400]}" + ("..." if len(why) > 400 else "")


def died(
    actor: str, cid: int, unanswered: Sequence[int], first: bool, held: Sequence[int], cause: str
) -> str:
    """The failure of client ``cid`` of an actor's call that ended with the actor's death.

    ``unanswered`` are the clients of that call whose replies never came. ``first``
    is the call the actor was running: it runs a call's clients one after another
    and sends the replies of those that finish in quick succession together, so it
    was running one of them; its later calls never started.
    """
    shown = ", ".join(map(str, unanswered[:10])) + (" ..." if len(unanswered) > 10 else "")
    if not first:
        what = f"before running client {cid}, queued behind the call it died in"
    elif len(unanswered) == 1:
        what = f"running client {cid}"
    else:
        what = (
            f"running one of clients {shown}, those of its call it had not answered: it "
            "runs them one after another and sends the replies of those that finish in "
            "quick succession together, so the ones before the client it was running "
            "finished but their replies are lost, and the ones after it never started"
        )
    return f"{actor} died {what}; it held {len(held)} clients this round: {cause}"

"""Hostile input and failure handling, without a network: wire limits, state, addresses, retries."""

from __future__ import annotations

import json
import pickle
import struct
import zlib
from typing import Any

import grpc
import numpy as np
import pytest

import covey
from covey.aggregate import AggregationError, Begin, End, Event, Step
from covey.clients import run_task
from covey.core import _codec
from covey.core._weights import WeightsSpec
from covey.server import RoundLoop
from covey.server._base import FederationError
from covey.server._state import StateError, dump_state, load_state
from covey.transport._memory import MemoryTransport
from covey.transport.grpc import _wire
from covey.transport.grpc._checks import AddressError, TaskLimits, check_address
from covey.transport.grpc._refusal import (
    RetryBudget,
    compatible,
    permanent_cause,
    version_refusal,
)
from covey.transport.grpc.proto import covey_pb2 as pb

# -- 1. hostile arrays in JSON messages ----------------------------------------------------


def test_the_103_byte_string_array_is_refused_before_allocating() -> None:
    hostile = b'{"type":"value","value":{"__array__":[0,0],"dtype":"U40000000"}}'
    with pytest.raises(_wire.WireError, match="not allowed"):
        _wire.result_from_wire(hostile, None)


@pytest.mark.parametrize(
    "dtype", ["U4", "S8", "O", "V16", "M8[s]", "[('a','<i4')]", "<U1", ",", "i4,"]
)
def test_only_bool_integer_and_float_arrays_travel(dtype: str) -> None:
    msg = json.dumps({"__array__": [1], "dtype": dtype}).encode()
    with pytest.raises(_wire.WireError):
        _wire.loads(msg)


def test_numeric_arrays_still_travel() -> None:
    value = {"hist": np.arange(5, dtype=np.int32), "mask": np.array([True, False])}
    back = _wire.loads(_wire.dumps(value))
    assert back["hist"].dtype == np.int32
    assert back["hist"].tolist() == [0, 1, 2, 3, 4]
    assert back["mask"].dtype == np.bool_


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        (np.float64("nan"), "nan"),
        (np.float64("-inf"), "-inf"),
        (np.float32("inf"), "inf"),
        (np.float16("-inf"), "-inf"),
    ],
)
def test_a_non_finite_numpy_float_travels_as_its_tag(value: Any, tag: str) -> None:
    # np.float64 is a float, and its repr is np.float64(nan): no tag a peer reads.
    data = _wire.dumps({"loss": value, "seen": [value]})
    assert json.loads(data) == {"loss": {"__float__": tag}, "seen": [{"__float__": tag}]}
    back = _wire.loads(data)
    assert repr(back["loss"]) == repr(back["seen"][0]) == tag
    head, _ = _wire.result_to_wire({"reply": value}, _wire.WireLimits())
    assert repr(_wire.result_from_wire(head, None)["reply"]) == tag


def test_sizes_a_peer_declares_are_capped() -> None:
    limits = _wire.WireLimits(max_bytes=10_000, max_depth=8, max_string=100, max_elements=50)
    with pytest.raises(_wire.WireError, match="nested deeper"):
        _wire.loads(b"[" * 20 + b"]" * 20, limits)
    with pytest.raises(_wire.WireError, match="nested deeper"):
        _wire.loads(b"[" * 100_000 + b"]" * 100_000)  # past Python's recursion limit
    with pytest.raises(_wire.WireError, match="characters"):
        _wire.loads(json.dumps({"k": "x" * 101}).encode(), limits)
    with pytest.raises(_wire.WireError, match="characters"):
        _wire.loads(json.dumps({"k" * 101: 1}).encode(), limits)
    with pytest.raises(_wire.WireError, match="elements"):
        _wire.loads(json.dumps({"__array__": list(range(51)), "dtype": "<i8"}).encode(), limits)
    with pytest.raises(_wire.WireError, match="bytes exceeds"):
        _wire.loads(b" " * 10_001, limits)
    with pytest.raises(_wire.WireError, match="not a number"):
        _wire.loads(json.dumps({"__array__": ["a"], "dtype": "<i8"}).encode())
    with pytest.raises(_wire.WireError):
        _wire.loads(json.dumps({"__array__": [2**70], "dtype": "<i8"}).encode())


def test_a_reply_of_too_many_metrics_is_refused() -> None:
    # 200,000 names (3 MB of JSON) were taken, and grew every round's record
    metrics = {f"m{i}": 0.5 for i in range(1001)}
    head = {"type": "evaluate", "loss": 0.5, "num_examples": 1, "metrics": metrics}
    with pytest.raises(_wire.WireError, match="1001 metrics, over the limit of 1000"):
        _wire.result_from_wire(json.dumps(head).encode(), None)
    del metrics["m1000"]
    assert len(_wire.result_from_wire(json.dumps(head).encode(), None).metrics) == 1000


def test_limits_follow_the_model_spec() -> None:
    spec = WeightsSpec.of({"w": np.zeros((100, 100)), "b": np.zeros(100)})
    assert _wire.WireLimits.for_spec(spec).max_elements == 10_100
    assert _wire.WireLimits.for_spec(WeightsSpec.of({"b": np.zeros(3)})).max_elements == 4096


def test_a_deeply_nested_codec_header_is_a_codec_error() -> None:
    header = b"[" * 100_000 + b"]" * 100_000
    header += b" " * ((-len(header) - 32) % 64)
    prefix = struct.pack(
        "<8sIIQII", _codec.MAGIC, len(header), zlib.crc32(header), 0, zlib.crc32(b""), 0
    )
    with pytest.raises(_codec.CodecError):
        _codec.decode(prefix + header)


def _encoding(header: bytes) -> bytes:
    """An encoding whose JSON header is ``header`` and whose payload is empty."""
    header += b" " * ((-len(header) - 32) % 64)
    prefix = struct.pack(
        "<8sIIQII", _codec.MAGIC, len(header), zlib.crc32(header), 0, zlib.crc32(b""), 0
    )
    return prefix + header


@pytest.mark.parametrize(
    "entries",
    [
        [["w" * 500_000, "x" * 500_000, [1], 0, 8]],  # a dtype that is no dtype
        [["w" * 500_000, "f8", [1], 0, 8]],  # outside the payload
        [["w", "<U1", [1] * 60, 0, 4]],  # a dtype not allowed
        [["w", "f8", [1], 0, 8], ["w", "f8", [1], 0, 8], "x" * 500_000],  # repeated
        [["w", "f8", [1], 0, 8, "x" * 500_000]],  # six fields
    ],
    ids=["dtype", "outside", "kind", "repeated", "fields"],
)
def test_a_codec_error_quotes_at_most_a_few_hundred_characters_of_the_header(
    entries: list[Any],
) -> None:
    # The error quoted whole what the peer wrote: up to a reply's size (megabytes), into
    # the round's failures, the run's events and the log, at every refusal.
    with pytest.raises(_codec.CodecError) as refused:
        _codec.decode(_encoding(json.dumps(entries).encode()))
    assert "corrupt header" in str(refused.value)
    assert len(str(refused.value)) < 1000, len(str(refused.value))


# -- 2. the client checks announced sizes against its spec -----------------------------------


def test_a_client_refuses_a_task_larger_than_its_model() -> None:
    spec = WeightsSpec.of({"w": np.zeros(1000)})
    limits = TaskLimits.of(spec, 1 << 40)
    model = _codec.encoded_size({"w": np.zeros(1000)})
    assert limits.check(pb.TaskHeader(kind="fit", weights_size=model)) == model
    with pytest.raises(ConnectionError, match="more than this client accepts"):
        limits.check(pb.TaskHeader(kind="fit", weights_size=10 * 1024**3))
    assert TaskLimits.of(None, 4096).max_bytes == 4096


# -- 4. aggregation state without pickle -----------------------------------------------------


@pytest.mark.parametrize(
    "strategy",
    [
        covey.FedAvg(),
        covey.FedAdam(),
        covey.FedMedian(),
        covey.Scaffold(num_clients=3),
    ],
    ids=lambda s: s.name,
)
def test_aggregation_state_round_trips_through_safetensors(strategy: covey.Strategy) -> None:
    weights = {"w": np.arange(6.0).reshape(2, 3), "b": np.ones(3, np.float32)}
    state = strategy.aggregator.init(weights)
    state, _ = strategy.aggregator.update(state, Begin(1, weights))
    state, _ = strategy.aggregator.update(state, End(1))
    blob = dump_state(state)
    assert not blob.startswith(b"\x80")  # not a pickle
    back = load_state(blob, strategy.aggregator.init(weights))
    assert _same(back, state)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b)) and np.asarray(a).dtype == np.asarray(b).dtype
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b, strict=True))
        )
    return bool(a == b) or (a != a and b != b)


def test_sets_scalars_and_non_finite_floats_round_trip() -> None:
    state = ({"seen": frozenset({3, 1}), "open": {2}}, np.float32(1.5), float("inf"), [None])
    back = load_state(dump_state(state), ())
    assert back[0] == {"seen": frozenset({1, 3}), "open": {2}}
    assert isinstance(back[0]["seen"], frozenset)
    assert back[1] == np.float32(1.5)
    assert back[2] == float("inf")
    assert back[3] == [None]


def test_a_pickled_state_is_refused_not_executed() -> None:
    class Boom:
        def __reduce__(self) -> Any:
            return (exec, ("raise SystemExit('executed')",))

    with pytest.raises(StateError, match="not a stored aggregation state"):
        load_state(pickle.dumps(Boom()), covey.FedAvg().aggregator.init({"w": np.zeros(2)}))


def test_a_named_tuple_the_strategy_does_not_use_is_refused() -> None:
    from collections import namedtuple

    Foreign = namedtuple("Foreign", "a")
    blob = dump_state(Foreign(np.zeros(2)))
    with pytest.raises(StateError, match="does not use"):
        load_state(blob, ())
    with pytest.raises(StateError, match="cannot store"):
        dump_state({"f": object()})


# -- 6. errors at the end of a round -------------------------------------------------------


def _raising_step(exc: Exception) -> Step:
    def update(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
        if isinstance(event, End) and event.round == 2:
            raise exc
        return state, (event,)

    return Step(lambda params: None, update)


class _Fit(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def _loop(step: Step) -> RoundLoop:
    strategy = covey.Strategy(aggregator=covey.aggregate.chain(step, covey.aggregate.mean()))
    transport = MemoryTransport([0, 1], lambda cid, task: run_task(_Fit(), cid, task))
    return RoundLoop(strategy, transport, {"w": np.zeros(2)})


def test_an_unexpected_error_at_the_end_of_a_round_stops_the_run() -> None:
    loop = _loop(_raising_step(KeyError("bug in a step")))
    with pytest.raises(FederationError, match="KeyError") as info:
        loop.run(3)
    history = info.value.history
    assert history.stopped_reason is not None
    assert "Traceback" in history.stopped_reason
    assert "bug in a step" in history.rounds[-1].aggregate_info["traceback"]
    assert len(history.rounds) == 3  # rounds 0, 1 and the failed 2; round 3 never ran


def test_an_aggregation_error_is_recorded_and_the_run_goes_on() -> None:
    history = _loop(_raising_step(AggregationError("refused"))).run(3)
    assert not history[2].aggregated
    assert "refused" in history[2].aggregate_info["error"]
    assert history[3].aggregated
    assert history.stopped_reason is None


# -- 10, 11. addresses, versions, retries --------------------------------------------------


@pytest.mark.parametrize(
    ("address", "listen", "message"),
    [
        ("localhost", False, "no port"),
        (":99999", True, "not a host"),
        ("127.0.0.1:99999", True, "between 0 and 65535"),
        ("127.0.0.1:0", False, "between 1 and 65535"),
        ("127.0.0.1:http", True, "not a number"),
        ("[::1]9092", True, "IPv6"),
        ("::1:9092", False, r"in brackets, e\.g\. \[::1\]:9092"),
        ("fe80::1:0", True, r"\[fe80::1\]:0"),
        # A URL read as an IPv6 address ("e.g. [https://127.0.0.1]:9092"), a port alone
        # given the port as its host ("e.g. 9092:9092").
        (
            "https://127.0.0.1:9092",
            False,
            r"is a URL: give HOST:PORT without 'https://', e\.g\. 127\.0\.0\.1:9092$",
        ),
        ("grpc://fl.example.org:9092/", False, r"without 'grpc://', e\.g\. fl\.example\.org:9092$"),
        ("9092", True, r"has no port; give HOST:PORT \(e\.g\. 127\.0\.0\.1:9092\)$"),
    ],
)
def test_bad_addresses_are_refused(address: str, listen: bool, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        check_address(address, listen=listen)


class _Plain(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights=dict(weights), num_examples=1)


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (_Plain, r"got the class _Plain: make one, _Plain\(\.\.\.\)"),
        (lambda cid: _Plain(), r"got the function .*<lambda>: call it, connect\(client_fn\(cid\)"),
        (None, r"needs a client object \(a covey.Client\), got None"),
    ],
)
def test_connect_refuses_what_is_no_client_before_dialling(given: Any, said: str) -> None:
    # Before, a class failed with "Client.properties() missing 1 required positional
    # argument: 'self'" and a client_fn dialled and retried as if it were a client.
    from covey.deploy import connect

    with pytest.raises(TypeError, match=said):
        connect(given, "127.0.0.1:1", insecure=True, max_attempts=1)


def test_good_addresses_pass() -> None:
    assert check_address("0.0.0.0:0", listen=True) == ("0.0.0.0", 0)  # noqa: S104
    assert check_address("[::1]:9092", listen=False) == ("::1", 9092)
    assert check_address("fl.example.org:443", listen=False) == ("fl.example.org", 443)


def test_versions_of_the_same_minor_release_are_compatible() -> None:
    assert compatible("0.1.0", "0.1.7")
    assert not compatible("0.2.0", "0.1.0")
    assert not compatible("", "0.1.0")
    message = version_refusal("0.2.0", "0.1.0")
    assert "0.2.0" in message
    assert "0.1.0" in message


def test_retries_stop_after_the_budget() -> None:
    budget = RetryBudget(backoff=0.01, max_backoff=0.02, retry_for=None, max_attempts=3)
    assert budget.next_delay() is not None
    assert budget.next_delay() is not None
    assert budget.next_delay() is None
    budget = RetryBudget(backoff=0.01, retry_for=0.0)
    assert budget.next_delay() is None
    budget = RetryBudget(backoff=1.0, max_backoff=4.0, retry_for=None)
    assert all(0.0 < (budget.next_delay() or 0) <= 4.0 for _ in range(40))


class _NoProperties(covey.Client):
    def properties(self) -> dict[str, Any]:  # pragma: no cover - must not be asked
        raise AssertionError("connect() asked the client before checking its settings")


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"backoff": -1.0}, "backoff must be a number of seconds above 0"),
        ({"backoff": float("nan")}, "backoff must be"),
        ({"max_backoff": 0}, "max_backoff must be"),
        ({"retry_for": float("nan")}, "retry_for must be a number of seconds 0 or more"),
        ({"max_attempts": 0}, "max_attempts must be None or an int >= 1"),
        ({"heartbeat": 0}, "heartbeat must be a number of seconds above 0"),
        ({"max_task_bytes": 0}, "max_task_bytes must be an int >= 1"),
    ],
)
def test_connect_refuses_settings_that_would_retry_in_a_tight_loop_or_never_stop(
    setting: dict[str, Any], named: str
) -> None:
    # A negative backoff gave negative delays (reconnecting at full speed for ten
    # minutes); a NaN retry_for never gave up. Refused before anything is dialled.
    with pytest.raises(ValueError, match=named):
        covey.connect(_NoProperties(), "127.0.0.1:1", insecure=True, **setting)


class _Status(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "details", "cause"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, "certificate revoked", "certificate revoked"),
        (grpc.StatusCode.FAILED_PRECONDITION, "the run is over (server closing)", "run is over"),
        (grpc.StatusCode.UNAVAILABLE, "Tls handshake failed: CERTIFICATE_VERIFY_FAILED", "trusted"),
        (grpc.StatusCode.UNAVAILABLE, "failed to connect: Connection refused", None),
        (grpc.StatusCode.CANCELLED, "Cancelled", None),
    ],
)
def test_permanent_refusals_are_told_from_outages(
    code: grpc.StatusCode, details: str, cause: str | None
) -> None:
    found = permanent_cause(_Status(code, details))
    if cause is None:
        assert found is None
    else:
        assert found is not None
        assert cause in found


def test_connect_counts_the_sessions_the_server_welcomed_not_failed_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two refused connection attempts, then a session that ends with the goodbye:
    # ConnectResult.sessions said 3 ("how many times it connected"); it connected once.
    from covey.transport.grpc import _client

    outcomes = iter([(False, "connection refused"), (False, "connection refused"), (True, None)])

    def fake_session(session: Any, channel: Any, result: Any, stop: Any) -> str | None:
        welcomed, error = next(outcomes)
        session.welcomed = welcomed
        return error

    monkeypatch.setattr(_client, "open_channel", lambda *args: None)
    monkeypatch.setattr(_client, "_session", fake_session)
    result = covey.connect(
        covey.Client(), "127.0.0.1:1", insecure=True, backoff=0.001, max_backoff=0.001
    )
    assert result.sessions == 1

"""Compressed updates in deployment: plain data on the wire, checked on receipt, bytes counted.

The unit tests build tasks and replies by hand; the deployed ones run a server
and clients over real gRPC on 127.0.0.1 (threads in this process, without TLS),
and one runs `covey server` and `covey client` processes with mTLS and resumes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.clients._client import run_task
from covey.compress import (
    Cast,
    CompressedTransport,
    Quantize,
    TopK,
    encoded_from_plain,
    encoded_to_plain,
    run_scheme,
    scheme_named,
    scheme_spec,
)
from covey.compress._runtime import _fit_compressed
from covey.compress._task import KIND
from covey.core import WeightsSpec
from covey.core._history import History, RoundRecord
from covey.core._messages import Reply, Task
from covey.deploy import ServerApp, ServeResult
from covey.transport.grpc import _wire

APPS = Path(__file__).parent / "apps"
SPECS = ["none", "float16", "bfloat16", "q8", "q4", "topk", "topk:0.1"]
MODEL = {"W": np.zeros((64, 10)), "b": np.zeros(10)}
SPEC = WeightsSpec.of(MODEL)


# -- specs and plain data ----------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_a_scheme_and_its_spec_round_trip(spec: str) -> None:
    scheme = scheme_named(spec)
    again = scheme_named(scheme_spec(scheme) or "")
    assert again == scheme
    assert scheme_named(scheme.name) == scheme  # its own name reads back too


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("fp16", "float16"),
        ("half", "float16"),
        ("BF16", "bfloat16"),
        ("Q8", "q8"),
        ("int8", "q8"),
        ("int4", "q4"),
        ("TopK:0.25", "topk:0.25"),
    ],
)
def test_common_names_of_a_scheme_name_it_in_any_case(name: str, spec: str) -> None:
    scheme = scheme_named(name)
    assert scheme == scheme_named(spec)
    assert scheme_spec(scheme) == spec  # a run keeps the scheme's own spec
    assert run_scheme(name, {"compression": spec}) == scheme  # so resuming under either works


@pytest.mark.parametrize("fraction", [np.float64(0.5), np.float32(0.5), 1])
def test_a_top_k_fraction_given_as_a_numpy_number_travels_as_its_spec(fraction: Any) -> None:
    # Before: TopK(np.float64(0.5)) travelled as "topk:np.float64(0.5)", which no client
    # read back: every client failed every round, told it ran an older covey.
    scheme = TopK(fraction)
    assert scheme_named(scheme_spec(scheme) or "") == scheme == TopK(float(fraction))
    result = covey.simulate(
        lambda cid: _Step(), 2, 1, covey.FedAvg(fraction_evaluate=0.0), MODEL, compression=scheme
    )
    assert not result.history.rounds[1].fit_failures


@pytest.mark.parametrize("fraction", [np.float32(0.1), np.float16(0.1), np.float32(0.07)])
def test_a_top_k_fraction_of_a_narrower_float_is_the_decimal_it_is_written_as(
    fraction: Any,
) -> None:
    # Before: TopK(np.float32(0.1)) took 0.10000000149011612, and sent 11 of 100 values.
    scheme = TopK(fraction)
    assert scheme == TopK(float(str(fraction)))
    assert scheme.k(100) == round(float(str(fraction)) * 100)
    assert scheme_spec(scheme) == "topk:" + str(fraction)


@pytest.mark.parametrize(
    "make",
    [lambda: TopK(True), lambda: TopK("0.1"), lambda: Quantize(True)],  # type: ignore[arg-type]
)
def test_a_scheme_refuses_a_parameter_that_is_no_number(make: Any) -> None:
    with pytest.raises(ValueError, match="must be"):
        make()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bogus", "unknown compression 'bogus'; choose one of none, float16"),
        ("topk:2", "fraction must be in (0, 1]"),
        ("topk:nan", "fraction must be in (0, 1]"),
        ("topk:x", "unknown compression"),
        ("fp8", "unknown compression 'fp8'"),
    ],
)
def test_an_unknown_spec_is_refused_naming_the_known_ones(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scheme_named(spec)


@pytest.mark.parametrize(
    ("spec", "meant"),
    [
        ("flaot16", "float16"),
        ("bfloat", "bfloat16"),
        ("Q8 ", "q8"),
        ("float32", "none"),
        ("top-k:0.1", "topk:0.1"),
        ("topk0.05", "topk:0.05"),
        ("topk:10%", "topk:0.1"),
        ("top_k", "topk"),
    ],
)
def test_a_mistyped_spec_is_refused_naming_the_one_meant(spec: str, meant: str) -> None:
    # Before: only the list of known specs, for a spec one letter off or a top-k
    # fraction written as a percentage.
    with pytest.raises(ValueError, match=f"did you mean {meant}\\?\\); choose one of") as info:
        scheme_named(spec)
    scheme_named(meant)  # the spec suggested is one
    assert str(info.value).startswith(f"unknown compression {spec!r}")


def test_a_top_k_fraction_given_as_a_percentage_is_refused_naming_the_fraction() -> None:
    with pytest.raises(ValueError, match=r"in \(0, 1\] \(for 5% write topk:0.05\)"):
        scheme_named("topk:5")


@pytest.mark.parametrize(("dtype", "meant"), [("fp16", "float16"), ("BF16", "bfloat16")])
def test_a_cast_to_another_name_of_its_dtype_is_refused_naming_it(dtype: str, meant: str) -> None:
    with pytest.raises(ValueError, match=f"got {dtype!r} \\(did you mean {meant!r}\\?\\)"):
        Cast(dtype)


def test_a_resumed_run_keeps_its_scheme_and_refuses_another() -> None:
    assert run_scheme(None, {"compression": "topk:0.1"}) == TopK(0.1)
    assert run_scheme("topk:0.1", {"compression": "topk:0.1"}) == TopK(0.1)
    assert run_scheme(None, {}) is None
    with pytest.raises(ValueError, match=r"started with compression 'topk:0\.1'") as refused:
        run_scheme("q8", {"compression": "topk:0.1"})
    unset = "`serve(compression=)`, `covey server --compression` and the app's unset"
    assert f"resume it with 'topk:0.1', or with no scheme given ({unset})" in str(refused.value)
    with pytest.raises(ValueError, match="started without compression") as refused:
        run_scheme("q8", {})
    assert f"'q8' is asked for now; resume it without compression ({unset})" in str(refused.value)

    class Mine(Quantize):
        pass

    with pytest.raises(ValueError, match="built-in compression scheme"):
        run_scheme(Mine(8), None)


@pytest.mark.filterwarnings("ignore:secure aggregation without signed keys")
def test_serve_refuses_compression_for_secure_aggregation() -> None:
    strategy = covey.secagg.secure(covey.FedAvg(), clip_range=1.0)
    with pytest.raises(ValueError, match="compression does not apply to"):
        covey.serve(strategy, 1, MODEL, "127.0.0.1:0", insecure=True, compression="q8")


def _delta(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W": rng.standard_normal((64, 10)), "b": rng.standard_normal(10)}


class _Step(covey.Client):
    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        assert "covey.compression" not in config  # the client's fit sees its own config only
        return covey.FitResult(delta=_delta(int(config["round"])), num_examples=7)


@pytest.mark.parametrize("spec", SPECS)
def test_task_and_reply_are_plain_data_that_survive_the_wire(spec: str) -> None:
    scheme = scheme_named(spec)
    inner = _WireLoopback(_Step())
    transport = CompressedTransport(inner, scheme, seed=3)
    fit = Task("fit", 2, {"lr": 0.1}, MODEL)
    (reply,) = transport.exchange({5: fit})
    assert reply.ok, reply.error
    assert reply.result.num_examples == 7
    delta = reply.result.delta
    assert WeightsSpec.of(delta) == SPEC
    # The same update decoded in memory, without the wire, gives the same bits.
    direct = run_task(_Step(), 5, inner.sent[5])
    expected = scheme.decode(encoded_from_plain(direct.result, scheme, SPEC).parts, SPEC)
    for name in SPEC.names:
        np.testing.assert_array_equal(delta[name], expected[name])
    sent, received = transport.take_counts()
    assert sent == (640 + 10) * 8
    assert received == sum(a.nbytes for a in direct.result.values() if isinstance(a, np.ndarray))


class _WireLoopback:
    """A transport that takes each task and reply through the wire's encodings, in memory."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.sent: dict[int, Task] = {}

    def clients(self) -> list[int]:
        return [5]

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        for cid, task in tasks.items():
            config = _wire.loads(_wire.dumps(dict(task.config)))
            arrived = Task(task.kind, task.round, config, task.weights, task.payload)
            self.sent[cid] = arrived
            reply = run_task(self.client, cid, arrived)
            assert reply.ok, reply.error
            head, arrays = _wire.result_to_wire(reply.result)
            arrays = {k: np.frombuffer(a.tobytes(), a.dtype) for k, a in (arrays or {}).items()}
            yield Reply(cid, reply.kind, result=_wire.result_from_wire(head, arrays or None))

    def close(self) -> None:
        pass


def _plain(scheme: Any) -> dict[str, Any]:
    task = Task(
        KIND, 1, {"covey.compression": {"scheme": scheme_spec(scheme), "seed": 0, "cid": 0}}, MODEL
    )
    out: dict[str, Any] = _fit_compressed(_Step(), task)
    return out


def _key(*parts: str) -> str:
    return json.dumps(list(parts))


def _tamper_nan_scale(p: dict[str, Any]) -> None:
    p[_key("part", "W", "step")] = np.array([math.nan])


def _tamper_2d(p: dict[str, Any]) -> None:
    p[_key("part", "W", "codes")] = p[_key("part", "W", "codes")].reshape(64, 10)


def _tamper_extra_part(p: dict[str, Any]) -> None:
    p[_key("part", "W", "raw")] = np.zeros(640)


def _tamper_missing_name(p: dict[str, Any]) -> None:
    for key in [k for k in p if k.startswith(_key("part", "b")[:-1])]:
        del p[key]


def _tamper_unknown_field(p: dict[str, Any]) -> None:
    p["pickle"] = b"\x80"


def _tamper_twice(p: dict[str, Any]) -> None:
    # The same part's name as other JSON text: the last of the two silently won.
    p[json.dumps(["part", "W", "step"], separators=(",", ":"))] = np.array([2.0])


def _tamper_extra_twice(p: dict[str, Any]) -> None:
    p[_key("extra", "c", "W")] = np.zeros((64, 10))
    p[r'["extra", "c", "\u0057"]'] = np.ones((64, 10))  # "W" escaped


def _tamper_examples(p: dict[str, Any]) -> None:
    p["num_examples"] = True


def _tamper_scheme(p: dict[str, Any]) -> None:
    p["scheme"] = "q4"


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_tamper_nan_scale, "non-finite or negative scale"),
        (_tamper_2d, "in one dimension, got shape (64, 10)"),
        (_tamper_extra_part, "'W' carries ['codes', 'lo', 'raw', 'step']"),
        (_tamper_missing_name, "names do not match the model (missing ['b']"),
        (_tamper_unknown_field, "unexpected field 'pickle'"),
        (_tamper_twice, "encoded update: part 'step' of 'W' is sent twice ('[\"part\",\"W\""),
        (_tamper_extra_twice, "encoded update: array 'W' of extra 'c' is sent twice"),
        (_tamper_examples, "num_examples must be an integer"),
        (_tamper_scheme, "encoded with 'q4', not 'q8'"),
    ],
)
def test_a_malformed_update_is_a_failed_reply_naming_the_fault(
    tamper: Callable[[dict[str, Any]], None], message: str
) -> None:
    plain = _plain(Quantize(8))
    tamper(plain)
    transport = CompressedTransport(_Fixed({0: plain, 1: _plain(Quantize(8))}), Quantize(8))
    replies = {
        r.cid: r for r in transport.exchange(dict.fromkeys([0, 1], Task("fit", 1, {}, MODEL)))
    }
    assert replies[1].ok  # the other client's update is untouched
    assert not replies[0].ok
    assert message in (replies[0].error or "")
    assert replies[0].error.startswith("refused the encoded update")  # type: ignore[union-attr]


def test_a_reply_that_is_not_a_mapping_is_refused() -> None:
    transport = CompressedTransport(_Fixed({0: [1, 2]}), Quantize(8))
    (reply,) = transport.exchange({0: Task("fit", 1, {}, MODEL)})
    assert "reply is list, expected an encoded update" in (reply.error or "")


class _Fixed:
    """Replies to each fit_compressed task with a given result."""

    def __init__(self, results: Mapping[int, Any]) -> None:
        self.results = results

    def clients(self) -> list[int]:
        return list(self.results)

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        for cid, task in tasks.items():
            assert task.kind == KIND
            yield Reply(cid, KIND, result=self.results[cid])

    def close(self) -> None:
        pass


def test_encoded_round_trips_through_plain_data() -> None:
    scheme = TopK(0.1)
    parts = scheme.encode(_delta(), np.random.default_rng(0))
    extras = {"c": {"W": np.ones((64, 10))}}
    enc = covey.compress.Encoded(scheme.name, parts, 3, {"loss": 0.5}, extras)
    back = encoded_from_plain(encoded_to_plain(enc), scheme, SPEC)
    assert back.num_examples == 3
    assert back.metrics == {"loss": 0.5}
    assert back.nbytes == enc.nbytes
    np.testing.assert_array_equal(back.extras["c"]["W"], 1.0)
    for name in SPEC.names:
        for key in ("index", "value"):
            np.testing.assert_array_equal(back.parts[name][key], parts[name][key])


# -- the CLI -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bogus", "error: --compression: unknown compression 'bogus'; choose one of none,"),
        ("topk:0", "error: --compression: compression 'topk:0': the top-k fraction must be"),
    ],
)
def test_covey_server_refuses_an_unknown_compression(
    spec: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(APPS))
    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(
        app, ["server", "--app", "digits_app:server_app", "--insecure", "--compression", spec]
    )
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "runs").exists()  # nothing was started


def compressed_app() -> ServerApp:
    """A ServerApp that asks for 4-bit updates (``--app test_compress_deploy:compressed_app``)."""
    return ServerApp(covey.FedAvg(), {"w": np.zeros(3)}, rounds=1, compression="q4")


def _asked_of_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What `covey server` passes to serve(), which is faked: filled in once it is called."""
    asked: dict[str, Any] = {}

    def fake_serve(*args: Any, **kwargs: Any) -> ServeResult:
        asked.update(kwargs)
        return ServeResult({}, History(rounds=[RoundRecord(0)]), tmp_path)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("covey.deploy._server.serve", fake_serve)
    return asked


@pytest.mark.parametrize(
    ("flag", "expected"), [([], "q4"), (["--compression", "topk:0.2"], "topk:0.2")]
)
def test_covey_server_takes_the_apps_compression_unless_the_flag_gives_one(
    flag: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = _asked_of_serve(tmp_path, monkeypatch)
    app_spec = f"{__name__}:compressed_app"
    result = CliRunner().invoke(app, ["server", "--app", app_spec, "--insecure", *flag])
    assert result.exit_code == 0, result.output
    assert asked["compression"] == expected


def test_covey_server_resuming_takes_the_runs_compression_not_the_apps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: a run started with --compression topk:0.2 over the app's q4 printed a
    # resume command without the flag, which the run then refused ("started with
    # compression 'topk:0.2', and 'q4' is asked for now").
    asked = _asked_of_serve(tmp_path, monkeypatch)
    from covey.server._store import RunStore

    with RunStore.create(tmp_path / "run", config={"compression": "topk:0.2"}):
        pass
    app_spec = f"{__name__}:compressed_app"
    result = CliRunner().invoke(
        app, ["server", "--app", app_spec, "--insecure", "--resume", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    assert asked["resume"] is True
    assert asked["compression"] is None  # serve() takes the run's own

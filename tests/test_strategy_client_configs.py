"""Per-client configs (``on_client_fit_config``, ``client_fit_config``) on every path tasks take.

Each client reports what it was sent in its metrics; the strategy's metrics
function gathers them, so a round's history says which client got which config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

import covey
from _live import Joined, Served
from _steps import Halving as _Halving
from covey.secagg import secure
from covey.strategies import ClientInfo

N = 6


class Echo(covey.Client):
    """Steps the model by its ``"epochs"`` and reports the config it was sent."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def properties(self) -> dict[str, Any]:
        return {"size": 10 * (self.cid + 1)}

    def _seen(self, config: Mapping[str, Any]) -> str:
        own = {k: v for k, v in config.items() if k not in ("round", "extras")}
        return json.dumps([self.cid, own], sort_keys=True)

    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        step = np.full(2, float(config.get("epochs", 0)))
        return covey.FitResult(
            delta={"w": step}, num_examples=1 + self.cid, metrics={"seen": self._seen(config)}
        )

    def evaluate(self, weights: Any, config: dict[str, Any]) -> covey.EvaluateResult:
        tag = config.get("tag", 0)
        loss = float(tag) if isinstance(tag, int) else 0.0
        return covey.EvaluateResult(loss=loss, num_examples=1, metrics={"seen": self._seen(config)})


def gather(results: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """The configs the clients of a round reported, as one JSON text, in client order."""
    seen = sorted((json.loads(str(m["seen"])) for _, m in results), key=lambda x: x[0])
    return {"seen": json.dumps(seen)}


def by_size(round: int, client: ClientInfo) -> dict[str, Any]:
    assert client.properties is not None
    return {"epochs": client.properties["size"] // 10 + round, "lr": 0.01 * (client.cid + 1)}


def tag(round: int, client: ClientInfo) -> dict[str, Any]:
    return {"tag": client.cid * 100 + round}


def strategy(**options: Any) -> covey.Strategy:
    options.setdefault("on_client_fit_config", by_size)
    options.setdefault("on_client_evaluate_config", tag)
    return covey.FedAvg(
        fraction_fit=0.5,
        fraction_evaluate=0.5,
        on_fit_config=lambda r: {"lr": 0.5, "batch": 32},
        fit_metrics=gather,
        evaluate_metrics=gather,
        **options,
    )


def init() -> dict[str, np.ndarray]:
    return {"w": np.zeros(2)}


def seen(record: Any, kind: str) -> dict[int, dict[str, Any]]:
    metrics = record.fit_metrics if kind == "fit" else record.evaluate_metrics
    return {cid: config for cid, config in json.loads(metrics["seen"])}


def check_rounds(history: covey.History, *, evaluate: bool = True) -> None:
    """Each sampled client got the round's config with its own entries on top."""
    for record in history.rounds[1:]:
        rnd = record.round
        fit = seen(record, "fit")
        assert sorted(fit) == sorted(record.fit_participants)
        for cid, config in fit.items():
            assert config == {"lr": 0.01 * (cid + 1), "batch": 32, "epochs": cid + 1 + rnd}
        if evaluate:
            got = seen(record, "evaluate")
            assert sorted(got) == sorted(record.evaluate_participants)
            assert got == {cid: {"tag": cid * 100 + rnd} for cid in got}


def identical(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_each_client_gets_its_own_config(backend: str) -> None:
    result = covey.simulate(Echo, N, 3, strategy(), init(), backend=backend, seed=3)  # type: ignore[arg-type]
    check_rounds(result.history)
    assert all(len(r.fit_participants) == N // 2 for r in result.history.rounds[1:])
    if backend == "process":  # the same run, bit for bit, as inline
        inline = covey.simulate(Echo, N, 3, strategy(), init(), seed=3)
        identical(result.weights, inline.weights)
        assert [r.fit_participants for r in result.history.rounds] == [
            r.fit_participants for r in inline.history.rounds
        ]


def test_same_seed_same_run_and_no_entries_change_nothing() -> None:
    once = covey.simulate(Echo, N, 3, strategy(), init(), seed=5)
    again = covey.simulate(Echo, N, 3, strategy(), init(), seed=5)
    identical(once.weights, again.weights)
    assert [r.fit_metrics for r in once.history.rounds] == [
        r.fit_metrics for r in again.history.rounds
    ]
    # A per-client function that adds nothing runs the same rounds as none at all.
    options: dict[str, Any] = {"on_fit_config": lambda r: {"epochs": r}}
    plain = covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.5, **options)
    empty = covey.FedAvg(
        fraction_fit=0.5,
        fraction_evaluate=0.5,
        on_client_fit_config=lambda r, c: {},
        on_client_evaluate_config=lambda r, c: {},
        **options,
    )
    a = covey.simulate(Echo, N, 3, plain, init(), seed=5)
    b = covey.simulate(Echo, N, 3, empty, init(), seed=5)
    identical(a.weights, b.weights)
    assert [r.fit_participants for r in a.history.rounds] == [
        r.fit_participants for r in b.history.rounds
    ]


class BySize(covey.Strategy):
    """Per-client entries from an override, not an option."""

    def fit_config(self, round: int) -> dict[str, Any]:
        return {"lr": 0.5, "batch": 32}

    def client_fit_config(self, round: int, client: ClientInfo) -> dict[str, Any]:
        return by_size(round, client)

    def client_evaluate_config(self, round: int, client: ClientInfo) -> dict[str, Any]:
        return tag(round, client)


def test_a_subclass_overrides_the_per_client_methods() -> None:
    mine = BySize(
        fraction_fit=0.5, fraction_evaluate=0.5, fit_metrics=gather, evaluate_metrics=gather
    )
    result = covey.simulate(Echo, N, 2, mine, init(), seed=3)
    check_rounds(result.history)
    identical(result.weights, covey.simulate(Echo, N, 2, strategy(), init(), seed=3).weights)
    options = mine.describe()["options"]
    assert options["client_fit_config"].endswith("BySize.client_fit_config")
    assert strategy().describe()["options"]["on_client_fit_config"] == "by_size"


def test_fedbuff_sends_each_client_its_own_config() -> None:
    buffered = covey.FedBuff(
        buffer_size=3,
        concurrency=3,
        on_fit_config=lambda r: {"lr": 0.5, "batch": 32},
        on_client_fit_config=by_size,
        fit_metrics=gather,
    )
    result = covey.simulate(Echo, N, 3, buffered, init(), seed=1)
    for record in result.history.rounds[1:]:
        got = seen(record, "fit")
        assert len(got) == 3
        for cid, config in got.items():
            # Sent in the update current when the client was given its task.
            assert config["lr"] == 0.01 * (cid + 1)
            assert config["batch"] == 32
            assert config["epochs"] - (cid + 1) in range(1, record.round + 1)


def test_fedbuff_asks_only_the_clients_it_picks_for_their_properties() -> None:
    # FedBuff asked every client of the federation for its properties before the
    # first fit, building each one, where a round asks only the sampled clients.
    built: list[int] = []

    def client_fn(cid: int) -> Echo:
        built.append(cid)
        return Echo(cid)

    buffered = covey.FedBuff(
        buffer_size=3,
        concurrency=3,
        on_client_fit_config=by_size,
        fit_metrics=gather,
    )
    result = covey.simulate(client_fn, 1_000, 3, buffered, init(), seed=1, client_cache=0)
    trained = {cid for record in result.history.rounds for cid in record.fit_participants}
    assert len(trained) >= 3
    assert len(set(built)) <= 3 * 3 + 3, sorted(set(built))  # the clients given a task
    for record in result.history.rounds[1:]:
        for cid, config in seen(record, "fit").items():
            assert config["epochs"] - (cid + 1) in range(1, record.round + 1)


def test_compressed_fit_tasks_carry_each_clients_config() -> None:
    result = covey.simulate(Echo, N, 2, strategy(), init(), seed=3, compression="float16")
    check_rounds(result.history)
    plain = covey.simulate(Echo, N, 2, strategy(), init(), seed=3)
    np.testing.assert_allclose(result.weights["w"], plain.weights["w"], rtol=1e-3)


def test_secure_aggregation_sends_each_client_its_own_config() -> None:
    def make() -> covey.Strategy:
        return covey.FedAvg(
            fraction_evaluate=0.0,
            min_fit_clients=4,
            on_fit_config=lambda r: {"batch": 32},
            on_client_fit_config=lambda r, c: {"epochs": 0.1 * (c.cid + 1) * r},
        )

    with pytest.warns(UserWarning, match="honest-but-curious"):
        secured = secure(make(), clip_range=1.0, bits=24)
    result = covey.simulate(Echo, 4, 2, secured, init(), seed=0)
    plain = covey.simulate(Echo, 4, 2, make(), init(), seed=0)
    # The masked sum holds each client's own step: the plain run's weighted mean.
    np.testing.assert_allclose(result.weights["w"], plain.weights["w"], atol=1e-5)
    assert plain.weights["w"][0] != pytest.approx(2 * 0.1 * 4, abs=1e-3)  # not one config


def test_client_clipping_keeps_dp_clip_beside_each_clients_config() -> None:
    class Seen(Echo):
        def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
            assert config["dp_clip"] == 1.0
            assert config["lr"] == 0.01 * (self.cid + 1)
            return super().fit(weights, config)

    private = covey.privacy.central(
        covey.FedAvg(
            fraction_fit=0.5,
            fraction_evaluate=0.0,
            on_client_fit_config=lambda r, c: {"lr": 0.01 * (c.cid + 1)},
            fit_metrics=gather,
        ),
        noise_multiplier=0.5,
        clip=1.0,
        delta=1e-5,
        clipping="client",
        noise_seed=0,
    )
    result = covey.simulate(lambda cid: covey.privacy.ClipUpdates(Seen(cid)), 8, 2, private, init())
    assert all(r.aggregated and not r.fit_failures for r in result.history.rounds[1:])
    for record in result.history.rounds[1:]:
        for cid, config in seen(record, "fit").items():
            assert config["lr"] == 0.01 * (cid + 1)
            assert config["dp_clip"] == 1.0
    # A per-client entry may not replace the clip covey sends.
    refused = covey.privacy.central(
        covey.FedAvg(fraction_evaluate=0.0, on_client_fit_config=lambda r, c: {"dp_clip": 9.0}),
        noise_multiplier=0.5,
        clip=1.0,
        delta=1e-5,
        clipping="client",
    )
    with pytest.raises(ValueError, match=r"on_client_fit_config .*<lambda> set 'dp_clip' for"):
        covey.simulate(lambda cid: covey.privacy.ClipUpdates(Echo(cid)), 4, 1, refused, init())


def bad_list(round: int, client: ClientInfo) -> Any:
    return [("epochs", 2)]


def bad_key(round: int, client: ClientInfo) -> Any:
    return {1: 2}


@pytest.mark.parametrize(
    ("kind", "fn", "error", "message"),
    [
        ("fit", bad_list, TypeError, "on_client_fit_config bad_list must return a dict, got list"),
        ("evaluate", bad_list, TypeError, "on_client_evaluate_config bad_list must return a dict"),
        ("fit", bad_key, TypeError, "on_client_fit_config bad_key must return a dict keyed by"),
        ("fit", lambda r, c: {"round": 7}, ValueError, "<lambda> set 'round' for client 0"),
        ("fit", lambda r, c: {"extras": {}}, ValueError, "set 'extras' for client 0 in round 1"),
        ("fit", lambda r, c: {"covey.compression": 1}, ValueError, "'covey.compression'"),
        ("evaluate", lambda r, c: {"round": 7}, ValueError, "evaluate config itself"),
    ],
)
def test_a_wrong_per_client_config_is_refused_naming_the_function(
    kind: str, fn: Any, error: type[Exception], message: str
) -> None:
    chosen = covey.FedAvg(**{f"on_client_{kind}_config": fn})
    with pytest.raises(error, match=message.replace("(", r"\(")):
        covey.simulate(Echo, 3, 1, chosen, init())


def test_evaluate_may_set_extras_and_overrides_name_the_method() -> None:
    allowed = covey.FedAvg(on_client_evaluate_config=lambda r, c: {"extras": c.cid})
    covey.simulate(Echo, 3, 1, allowed, init())

    class NoDict(covey.Strategy):
        def client_fit_config(self, round: int, client: ClientInfo) -> Any:
            return None

    with pytest.raises(TypeError, match=r"NoDict.client_fit_config\(\) must return a dict"):
        covey.simulate(Echo, 3, 1, NoDict(), init())


def needs_n(round: int, client: ClientInfo) -> dict[str, Any]:
    return {"n": (client.properties or {})["n"]}  # Echo reports "size", not "n"


def test_an_error_in_the_function_says_which_client_and_round() -> None:
    with pytest.raises(KeyError) as info:
        covey.simulate(Echo, 3, 1, covey.FedAvg(on_client_fit_config=needs_n), init())
    note = "raised by on_client_fit_config needs_n for client 0 in round 1"
    assert info.value.__notes__ == [note]


def test_options_that_are_not_functions_are_refused_when_made() -> None:
    with pytest.raises(TypeError, match=r"on_client_fit_config must be a .* function, got dict"):
        covey.FedAvg(on_client_fit_config={"lr": 0.1})  # type: ignore[arg-type]

    def own_round(transport: Any, cids: Any, task: Any, timeout: Any) -> Any:
        raise AssertionError("not called")

    with pytest.raises(TypeError, match=r"fit_round .*own_round takes no configs= argument"):
        covey.Strategy(fit_round=own_round, on_client_fit_config=by_size)
    covey.Strategy(fit_round=own_round)  # without per-client configs it is as before


def test_properties_a_client_cannot_report_are_none() -> None:
    class Mute(Echo):
        def properties(self) -> dict[str, Any]:
            raise RuntimeError("no properties here")

    got: list[ClientInfo] = []

    def record(round: int, client: ClientInfo) -> dict[str, Any]:
        got.append(client)
        return {}

    covey.simulate(Mute, 2, 1, covey.FedAvg(on_client_fit_config=record), init())
    assert got == [ClientInfo(0, None, None), ClientInfo(1, None, None)]


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
@pytest.mark.parametrize("compression", [None, "float16"])
def test_a_deployed_round_sends_each_client_its_own_config(compression: str | None) -> None:
    def by_name(round: int, client: ClientInfo) -> dict[str, Any]:
        assert client.properties is not None
        assert client.name is not None
        return {"site": client.name, "epochs": client.properties["epochs"] + round}

    served_strategy = covey.FedAvg(
        min_fit_clients=3,
        min_evaluate_clients=3,
        min_available_clients=3,
        on_fit_config=lambda r: {"batch": 32},
        on_client_fit_config=by_name,
        on_client_evaluate_config=lambda r, c: {"tag": f"{c.name}-{r}"},
        fit_metrics=gather,
        evaluate_metrics=gather,
    )
    served = Served(
        served_strategy, 2, round_timeout=60.0, initial_weights=init(), compression=compression
    )
    joined = [
        Joined(served.port, Echo(k), name=f"site-{k}", properties={"epochs": 10 * k})
        for k in range(3)
    ]
    history = served.join(120).history
    for j in joined:
        j.join(30)
    assert history.config.get("compression") == compression
    for record in history.rounds[1:]:
        fit = seen(record, "fit")
        assert len(fit) == 3
        evaluate = seen(record, "evaluate")
        for k in range(3):  # client k reported its own cid k in its metrics
            assert fit[k] == {"batch": 32, "site": f"site-{k}", "epochs": 10 * k + record.round}
            assert evaluate[k] == {"tag": f"site-{k}-{record.round}"}


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_deployed_secure_round_sends_each_client_its_own_config() -> None:
    def make() -> covey.Strategy:
        return covey.FedAvg(
            fraction_evaluate=0.0,
            min_fit_clients=4,
            min_available_clients=4,
            on_client_fit_config=lambda r, c: {"epochs": 0.1 * (c.properties or {})["size"] / 10},
        )

    with pytest.warns(UserWarning, match="honest-but-curious"):
        secured = secure(make(), clip_range=1.0, bits=24)
    served = Served(secured, 1, round_timeout=60.0, initial_weights=init())
    joined = [Joined(served.port, Echo(k), name=f"site-{k}") for k in range(4)]
    deployed = served.join(120)
    for j in joined:
        j.join(30)
    plain = covey.simulate(Echo, 4, 1, make(), init())
    # Client k steps by 0.1 * (k + 1), weighted by its 1 + k examples.
    np.testing.assert_allclose(deployed.weights["w"], plain.weights["w"], atol=1e-5)
    np.testing.assert_allclose(plain.weights["w"], [0.3, 0.3], atol=1e-12)


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_deployed_config_the_network_cannot_carry_is_that_clients_error() -> None:
    def own(round: int, client: ClientInfo) -> dict[str, Any]:
        return {"model": object()} if client.cid == 0 else {}

    served = Served(
        covey.FedAvg(
            min_fit_clients=1,
            min_available_clients=2,
            fraction_evaluate=0.0,
            on_client_fit_config=own,
            fit_metrics=gather,
        ),
        1,
        round_timeout=60.0,
        initial_weights=init(),
    )
    joined = [Joined(served.port, Echo(k), name=f"site-{k}") for k in range(2)]
    history = served.join(120).history
    for j in joined:
        j.join(30)
        assert j.error is None
    (failure,) = history.rounds[1].failures
    assert "cannot send the fit task" in failure.error
    assert "type object over the network (at 'model')" in failure.error
    assert len(seen(history.rounds[1], "fit")) == 1


@pytest.mark.parametrize(
    ("props", "error", "message"),
    [
        (RuntimeError("no sensor"), RuntimeError, r"no sensor"),
        ([1, 2], TypeError, r"Odd\.properties\(\) returned list, expected dict"),
        ({"size": object()}, TypeError, r"Odd\.properties\(\).* object .*'size'"),
    ],
)
def test_connect_names_properties_it_cannot_state(
    props: Any, error: type[Exception], message: str
) -> None:
    class Odd(Echo):
        def properties(self) -> Any:
            if isinstance(props, Exception):
                raise props
            return props

    # No server is needed: the client states its properties before it dials.
    with pytest.raises(error, match=message) as caught:
        covey.connect(Odd(0), "127.0.0.1:9", insecure=True, max_attempts=1)
    if isinstance(props, Exception):
        assert any("Odd.properties()" in note for note in caught.value.__notes__)


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_served_runs_reason_names_the_function_that_raised(tmp_path: Any) -> None:
    def own(round: int, client: ClientInfo) -> dict[str, Any]:
        raise KeyError("epochs")

    served = Served(
        covey.FedAvg(min_fit_clients=1, min_available_clients=1, on_client_fit_config=own),
        1,
        run_dir=tmp_path / "run",
        plot=False,
    )
    joined = Joined(served.port, Echo(0), name="site-0")
    with pytest.raises(KeyError):
        served.join(60)
    joined.join(30)
    reason = covey.History.load(tmp_path / "run").stopped_reason
    assert reason is not None
    assert reason.startswith("KeyError: 'epochs'")
    assert "(raised by on_client_fit_config " in reason
    assert ".own for client 0 in round 1)" in reason


def test_a_simulated_runs_reason_names_the_function_that_raised(tmp_path: Any) -> None:
    def own(round: int, client: ClientInfo) -> dict[str, Any]:
        raise KeyError("epochs")

    with pytest.raises(KeyError):
        covey.simulate(
            Echo, 2, 1, covey.FedAvg(on_client_fit_config=own), init(), run_dir=tmp_path / "run"
        )
    reason = covey.History.load(tmp_path / "run").stopped_reason
    assert reason is not None
    assert reason.startswith("KeyError: 'epochs' (raised by on_client_fit_config ")
    assert reason.endswith(".own for client 0 in round 1)")
    said = json.loads((tmp_path / "run" / "run.json").read_text())["stopped_reason"]
    assert said == reason


@pytest.mark.parametrize(
    "options",
    [
        {"on_fit_config": lambda r: {"sched": [0], "arr": np.zeros(1)}},
        {"on_client_fit_config": lambda r, c: {"sched": [0], "arr": np.zeros(1)}},
    ],
)
def test_a_client_changing_its_config_does_not_change_the_next_clients(
    options: dict[str, Any],
) -> None:
    # As on the process backend and deployed, where each client decodes its own copy.
    class Greedy(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
            config["sched"].append(self.cid)
            config["arr"] += 1.0
            seen: dict[str, Any] = {"len": len(config["sched"]), "arr": float(config["arr"][0])}
            return covey.FitResult(delta={"w": np.zeros(2)}, num_examples=1, metrics=seen)

    def both(results: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
        return {"seen": json.dumps(sorted((m["len"], m["arr"]) for _, m in results))}

    strategy = covey.FedAvg(fraction_evaluate=0.0, fit_metrics=both, **options)
    result = covey.simulate(Greedy, 3, 2, strategy, init())
    for record in result.history.rounds[1:]:
        assert json.loads(str(record.fit_metrics["seen"])) == [[2, 1.0]] * 3


MB = 1024 * 1024


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
@pytest.mark.parametrize(
    ("config", "entry", "size", "limit"),
    [
        ({"blob": b"x" * 5 * MB}, "'blob'", "5242880 bytes", "1048576"),
        ({"note": "y" * 2 * MB}, "'note'", "2097152 characters", "1048576"),
        ({f"part{i}": "z" * (MB - 100 * i) for i in range(5)}, "'part0'", "1048578", "4194304"),
        # Arrays past the elements every client accepts, in under 4 MB of JSON.
        ({"hist": np.zeros(MB + 1, np.int8)}, "'hist'", "1048577 elements", "1048576"),
        (
            {"parts": [np.zeros(MB // 2 + 1, np.int8)] * 2},
            "'parts'[1]",
            "1048578 elements",
            "1048576",
        ),
    ],
)
def test_a_deployed_config_over_the_message_limit_names_its_entry(
    config: dict[str, Any], entry: str, size: str, limit: str
) -> None:
    def own(round: int, client: ClientInfo) -> dict[str, Any]:
        return config if client.cid == 0 else {}

    def served(**options: Any) -> covey.History:
        run = Served(
            covey.FedAvg(
                min_fit_clients=1, min_available_clients=2, fraction_evaluate=0.0, **options
            ),
            1,
            round_timeout=60.0,
            initial_weights=init(),
        )
        joined = [Joined(run.port, Echo(k), name=f"site-{k}") for k in range(2)]
        try:
            return run.join(120).history
        finally:
            for j in joined:
                j.join(30)
                assert j.error is None  # each client's stream stays open

    def named(error: str) -> None:
        assert "cannot send the fit task to client site-" in error
        assert f"(at {entry})" in error
        assert size in error
        assert f"limit of {limit}" in error

    # One client's config too large: that client's failure for the round.
    (failure,) = served(on_client_fit_config=own, fit_metrics=gather).rounds[1].failures
    named(failure.error)
    # Every client's: the run stops before sending it, naming the function and the entry.
    with pytest.raises(covey.FederationError) as caught:
        served(on_fit_config=lambda rnd: config)
    said = str(caught.value)
    assert "on_fit_config returned a config for round 1 that clients cannot be sent" in said
    assert f"(at {entry})" in said
    assert size in said
    assert f"limit of {limit}" in said


@pytest.mark.parametrize(
    ("config", "entry", "size"),
    [
        ({"blob": b"x" * 2 * MB}, "'blob'", "2097152 bytes"),
        ({"lr": 0.1, "note": "y" * 2 * MB}, "'note'", "2097152 characters"),
        ({"deep": {"text": ["y" * 2 * MB]}}, "'deep'.'text'[0]", "2097152 characters"),
    ],
)
def test_a_process_backend_config_over_the_string_limit_names_its_entry(
    config: dict[str, Any], entry: str, size: str
) -> None:
    """As deployed: the client's failure names the entry, its size and the limit."""

    def own(round: int, client: ClientInfo) -> dict[str, Any]:
        return config if client.cid == 0 else {}

    strategy = covey.FedAvg(
        min_fit_clients=1, fraction_evaluate=0.0, on_client_fit_config=own, fit_metrics=gather
    )
    result = covey.simulate(Echo, 2, 1, strategy, init(), backend="process", num_workers=1)
    (failure,) = result.history.rounds[1].failures
    assert failure.cid == 0
    assert failure.error.startswith("cannot send the fit task to client 0: its config: ")
    assert f"{size} " in failure.error
    assert "exceeds the limit of 1048576 characters" in failure.error
    assert failure.error.endswith(f"(at {entry})")
    assert list(seen(result.history.rounds[1], "fit")) == [1]


FIVE_MB = {f"part{i}": "z" * (MB - 100 * i) for i in range(5)}
"""5 MB of JSON in strings of 1 MiB each: a deployed server refuses to send it."""


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_simulated_config_over_the_message_limit_fails_that_client_as_deployed(
    backend: Any,
) -> None:
    """Simulations sent it (the process backend's pipe up to 64 MiB); a deployed server does not."""

    def own(round: int, client: ClientInfo) -> dict[str, Any]:
        return FIVE_MB if client.cid == 0 else {}

    strategy = covey.FedAvg(
        min_fit_clients=1, fraction_evaluate=0.0, on_client_fit_config=own, fit_metrics=gather
    )
    workers = 1 if backend == "process" else None
    result = covey.simulate(Echo, 2, 1, strategy, init(), backend=backend, num_workers=workers)
    (failure,) = result.history.rounds[1].failures
    assert failure.cid == 0
    assert failure.error == (
        "cannot send the fit task to client 0: its config: 5241936 bytes of JSON exceed the "
        "limit of 4194304; the largest entry takes 1048578 bytes (at 'part0')"
    )
    assert list(seen(result.history.rounds[1], "fit")) == [1]


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ({"model": object()}, "cannot send a value of type object over the network (at 'model')"),
        ({"lr": 0.1, "note": "y" * 2 * MB}, "2097152 characters exceeds the limit of 1048576"),
        ({"hist": np.zeros(MB + 1, np.int8)}, "1048577 elements exceeds the limit of 1048576"),
    ],
)
def test_an_inline_config_a_deployed_server_cannot_send_fails_that_client_alone(
    config: dict[str, Any], said: str
) -> None:
    """Inline clients were handed it; deployed and process-backend clients fail."""

    def own(round: int, client: ClientInfo) -> dict[str, Any]:
        return config if client.cid == 0 else {}

    strategy = covey.FedAvg(
        min_fit_clients=1, fraction_evaluate=0.0, on_client_fit_config=own, fit_metrics=gather
    )
    result = covey.simulate(Echo, 2, 1, strategy, init())
    (failure,) = result.history.rounds[1].failures
    assert failure.cid == 0
    assert failure.error.startswith("cannot send the fit task to client 0: its config: ")
    assert said in failure.error
    assert list(seen(result.history.rounds[1], "fit")) == [1]


def test_an_inline_config_is_checked_beside_a_compression_scheme_of_ones_own() -> None:
    """The scheme object is the framework's to hand over: only the config's own entries count."""

    def own(round: int, client: ClientInfo) -> dict[str, Any]:
        return FIVE_MB if client.cid == 0 else {"epochs": 2}

    strategy = covey.FedAvg(
        min_fit_clients=1, fraction_evaluate=0.0, on_client_fit_config=own, fit_metrics=gather
    )
    result = covey.simulate(Echo, 2, 1, strategy, init(), compression=_Halving())
    (failure,) = result.history.rounds[1].failures
    assert failure.error.startswith(
        "cannot send the fit_compressed task to client 0: its config: 5242"
    )
    assert failure.error.endswith(
        "exceed the limit of 4194304; the largest entry takes 1048578 bytes (at 'part0')"
    )
    assert seen(result.history.rounds[1], "fit") == {1: {"epochs": 2}}
    np.testing.assert_allclose(result.weights["w"], [2.0, 2.0], atol=1e-2)


def _served_round(own: Any) -> covey.History:
    """One deployed round of two clients with per-client configs ``own``; each stream stays open."""
    strategy = covey.FedAvg(
        min_fit_clients=1, min_available_clients=2, fraction_evaluate=0.0, on_client_fit_config=own
    )
    run = Served(strategy, 1, round_timeout=60.0, initial_weights=init())
    joined = [Joined(run.port, Echo(k), name=f"site-{k}") for k in range(2)]
    try:
        history = run.join(120).history
    finally:
        for j in joined:
            j.join(30)
    for j in joined:
        assert j.error is None  # each client's stream stays open
    return history


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_deployed_config_array_of_a_dtype_no_client_reads_fails_that_client_only() -> None:
    """It used to end the client's stream ("client disconnected") with a TypeError."""

    def own(round: int, client: ClientInfo) -> dict[str, Any]:
        return {"z": np.zeros(3, complex)} if client.cid == 0 else {}

    (failure,) = _served_round(own).rounds[1].failures
    assert failure.error.startswith("cannot send the fit task to client site-")
    assert failure.error.endswith(
        "its config: an array of dtype complex128 cannot be sent (only bool, integer and "
        "float arrays) (at 'z')"
    )


@pytest.mark.parametrize(
    ("config", "said"),
    [
        (
            {"lr": 0.1, "hist": np.zeros(MB + 1, np.int8)},
            "an array of 1048577 elements exceeds the limit of 1048576 elements (at 'hist')",
        ),
        (
            {"z": np.zeros(3, complex)},
            "an array of dtype complex128 cannot be sent (only bool, integer and float arrays) "
            "(at 'z')",
        ),
    ],
)
def test_a_process_backend_config_array_no_worker_reads_names_its_entry(
    config: dict[str, Any], said: str
) -> None:
    def own(round: int, client: ClientInfo) -> dict[str, Any]:
        return config if client.cid == 0 else {}

    strategy = covey.FedAvg(min_fit_clients=1, fraction_evaluate=0.0, on_client_fit_config=own)
    result = covey.simulate(Echo, 2, 1, strategy, init(), backend="process", num_workers=1)
    (failure,) = result.history.rounds[1].failures
    assert failure.error == f"cannot send the fit task to client 0: its config: {said}"


def _nested(levels: int) -> Any:
    value: Any = 1.0
    for _ in range(levels):
        value = {"k": value}
    return value


DEEP_SAID = "its config: nested deeper than 32 levels, the limit (at 'tree')"


def test_a_process_backend_config_nested_too_deep_names_its_entry() -> None:
    """It used to be sent and refused by the worker ("message nested deeper ..."), naming no key."""

    def own(round: int, client: ClientInfo) -> dict[str, Any]:
        return {"lr": 0.1, "tree": _nested(40)} if client.cid == 0 else {"tree": _nested(31)}

    strategy = covey.FedAvg(min_fit_clients=1, fraction_evaluate=0.0, on_client_fit_config=own)
    result = covey.simulate(Echo, 2, 1, strategy, init(), backend="process", num_workers=1)
    (failure,) = result.history.rounds[1].failures
    assert failure.error == f"cannot send the fit task to client 0: {DEEP_SAID}"
    assert result.history.rounds[1].fit_participants == [1]  # 32 levels deep is fine


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_deployed_config_nested_too_deep_fails_that_client_only_naming_its_entry() -> None:
    def own(round: int, client: ClientInfo) -> dict[str, Any]:
        return {"tree": _nested(40)} if client.cid == 0 else {"tree": _nested(31)}

    history = _served_round(own)
    (failure,) = history.rounds[1].failures
    assert failure.error.startswith("cannot send the fit task to client site-")
    assert failure.error.endswith(DEEP_SAID)
    assert len(history.rounds[1].fit_participants) == 1


def lr_of(round: int) -> dict[str, Any]:
    return {"lr": {1: 0.1}[round]}  # no entry for round 2: a KeyError there


def scored(round: int, weights: Any) -> tuple[float, dict[str, Any]]:
    if round == 2:
        raise KeyError("accuracy")
    return 0.0, {}


@pytest.mark.parametrize(
    ("option", "asynchronous"),
    [("on_fit_config", False), ("on_evaluate_config", False), ("on_fit_config", True)],
)
def test_an_error_in_a_round_config_function_says_which_and_the_round(
    option: str, asynchronous: bool
) -> None:
    # Before: a bare KeyError: 2, naming neither the function nor the round.
    options: dict[str, Any] = {option: lr_of}
    options.update({"buffer_size": 2, "fraction_evaluate": 0.0} if asynchronous else {})
    with pytest.raises(KeyError) as info:
        covey.simulate(Echo, 3, 3, covey.Strategy(**options), init())
    at = "update" if asynchronous else "round"
    assert info.value.args == (2,)  # the function's own error, its type and words unchanged
    assert info.value.__notes__ == [f"raised by {option} lr_of in {at} 2"]


def test_an_error_in_an_override_of_fit_config_names_the_override_and_the_round() -> None:
    class Stepped(covey.Strategy):
        def fit_config(self, round: int) -> dict[str, Any]:
            return lr_of(round)

    with pytest.raises(KeyError) as info:
        covey.simulate(Echo, 3, 2, Stepped(), init())
    assert info.value.__notes__ == ["raised by Stepped.fit_config() in round 2"]
    # A config that is no dict is covey's own error, not the function's: no note.
    listed: Any = lambda r: [r]  # noqa: E731
    with pytest.raises(TypeError, match="on_fit_config must return a dict") as wrong:
        covey.Strategy(on_fit_config=listed).fit_config(1)
    assert not getattr(wrong.value, "__notes__", None)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_error_in_evaluate_fn_says_which_and_the_round(asynchronous: bool) -> None:
    # Before: a bare KeyError: 'accuracy', naming neither evaluate_fn nor the round.
    options: dict[str, Any] = {"buffer_size": 2, "fraction_evaluate": 0.0} if asynchronous else {}
    with pytest.raises(KeyError, match="accuracy") as info:
        covey.simulate(Echo, 3, 3, covey.Strategy(**options), init(), evaluate_fn=scored)
    at = "update" if asynchronous else "round"
    assert info.value.__notes__ == [f"raised by evaluate_fn scored in {at} 2"]


def typed(value: Any) -> Any:
    """``value`` with each key and leaf named by its type: what JSON alone would hide."""
    if isinstance(value, Mapping):
        return {f"{type(k).__name__} {k}": typed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [type(value).__name__, *(typed(v) for v in value)]
    return f"{type(value).__module__}.{type(value).__name__}"


class Typed(Echo):
    """Reports the types of the config it was sent (its keys' too), not only the values."""

    def _seen(self, config: Mapping[str, Any]) -> str:
        own = {k: v for k, v in config.items() if k not in ("round", "extras")}
        return json.dumps([self.cid, typed(own)], sort_keys=True)


def with_int_keys(round: int, client: ClientInfo) -> dict[str, Any]:
    """A client's own entries with a key that is no string, beside a tuple and a NumPy scalar."""
    return {"sizes": {0: 32, 1: 64}, "shape": (3, 4), "lr": np.float32(0.5)}


AS_DEPLOYED = {
    "str sizes": {"str 0": "builtins.int", "str 1": "builtins.int"},
    "str shape": ["list", "builtins.int", "builtins.int"],
    "str lr": "builtins.float",
}
"""What a client of any backend is given for :func:`with_int_keys`: its config as JSON."""


@pytest.mark.parametrize("backend", ["inline", "process"])
@pytest.mark.parametrize("kind", ["fit", "evaluate"])
def test_a_clients_own_config_with_int_keys_reaches_every_backend_as_deployed(
    backend: str, kind: str
) -> None:
    """Every backend gives the config's JSON, as deployed.

    Inline clients were handed the dict itself (an int key, a tuple, np.float32)
    and process clients its JSON: ``config["sizes"][0]`` worked inline only.
    """
    options: dict[str, Any] = {f"on_client_{kind}_config": with_int_keys}
    strategy = covey.FedAvg(
        min_fit_clients=2,
        min_evaluate_clients=2,
        fit_metrics=gather,
        evaluate_metrics=gather,
        **options,
    )
    workers = 1 if backend == "process" else None
    result = covey.simulate(Typed, 2, 1, strategy, init(), backend=backend, num_workers=workers)  # type: ignore[arg-type]
    record = result.history.rounds[1]
    assert not record.failures
    assert seen(record, kind) == {0: AS_DEPLOYED, 1: AS_DEPLOYED}


def test_an_asynchronous_clients_own_config_with_int_keys_reaches_it_as_deployed() -> None:
    buffered = covey.FedBuff(
        buffer_size=2, concurrency=2, on_client_fit_config=with_int_keys, fit_metrics=gather
    )
    result = covey.simulate(Typed, 2, 1, buffered, init(), seed=1)
    got = seen(result.history.rounds[1], "fit")
    assert len(got) == 2
    assert all(config == AS_DEPLOYED for config in got.values())


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_deployed_clients_own_config_with_int_keys_is_what_simulations_give() -> None:
    """The deployed client reads the config's JSON: simulations now give the same."""
    served = Served(
        covey.FedAvg(
            min_fit_clients=2,
            min_available_clients=2,
            fraction_evaluate=0.0,
            on_client_fit_config=with_int_keys,
            fit_metrics=gather,
        ),
        1,
        round_timeout=60.0,
        initial_weights=init(),
    )
    joined = [Joined(served.port, Typed(k), name=f"site-{k}") for k in range(2)]
    history = served.join(120).history
    for j in joined:
        j.join(30)
        assert j.error is None
    assert seen(history.rounds[1], "fit") == {0: AS_DEPLOYED, 1: AS_DEPLOYED}

"""Strategy pieces of one's own, written the documented ways, and the errors their mistakes get.

Custom aggregation steps (``Step(init, update)``), selectors and config
functions go through the same round loop as covey's own; these tests check
that a wrong implementation fails with an error that names it, and that a
deployed run with a custom step's state can be resumed (or is refused before
it could not be).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pytest

import covey
from _steps import Halving as _Halving
from _steps import Shift as _Shift
from _steps import reporting as _reporting
from covey.aggregate import Aggregate, Begin, Contribution, End, Step, chain, weighted_mean
from covey.deploy import connect, serve
from covey.server._state import StateError


def _init() -> dict[str, np.ndarray]:
    return {"w": np.zeros((2, 3)), "b": np.zeros(3)}


class _Velocity(NamedTuple):
    velocity: Any
    params: Any


def _lazy_momentum(beta: float = 0.5) -> Step:
    """Server momentum whose ``init`` returns None: its named tuple appears from round 1 on."""

    def init(params: Any) -> Any:
        return None

    def update(state: Any, event: Any) -> Any:
        if isinstance(event, Begin):
            v = (
                state.velocity
                if state is not None
                else {k: 0.0 * x for k, x in event.params.items()}
            )
            return _Velocity(v, event.params), (event,)
        if isinstance(event, Aggregate):
            d = event.as_delta(state.params)
            v = {k: beta * state.velocity[k] + d[k] for k in d}
            out = Aggregate(event.round, event.num_clients, event.num_examples, delta=v)
            return _Velocity(v, None), (out,)
        return state, (event,)

    return Step(init, update)


@dataclass
class _Counter:
    rounds: int = 0


def _counting() -> Step:
    """A step whose state is a dataclass, which a run folder cannot store."""

    def update(state: _Counter, event: Any) -> Any:
        if isinstance(event, Begin):
            return _Counter(state.rounds + 1), (event,)
        return state, (event,)

    return Step(lambda params: _Counter(), update)


def _serve(strategy: covey.Strategy, run_dir: Path, clients: int) -> covey.deploy.ServeResult:
    sites: list[threading.Thread] = []
    errors: list[BaseException] = []  # a site told that the run stopped

    def site(cid: int, port: int) -> None:
        try:
            connect(_Shift(cid), f"127.0.0.1:{port}", insecure=True, name=f"site-{cid}")
        except Exception as exc:  # noqa: BLE001 - kept, the test asserts on the server's error
            errors.append(exc)

    def start(port: int) -> None:
        for cid in range(clients):
            sites.append(threading.Thread(target=site, args=(cid, port), daemon=True))
            sites[-1].start()

    try:
        return serve(
            strategy,
            2,
            _init(),
            "127.0.0.1:0",
            insecure=True,
            run_dir=run_dir,
            on_listen=start,
            wait_timeout=5,
            round_timeout=30,
            plot=False,
        )
    finally:
        for thread in sites:
            thread.join(30)


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_named_tuple_state_missing_from_init_is_refused_at_its_first_save(
    tmp_path: Path,
) -> None:
    # Saved as is, the run could never be resumed ("holds a ..._Velocity this
    # strategy does not use"): it is refused when the state is first saved.
    strategy = covey.Strategy(
        aggregator=chain(weighted_mean(), _lazy_momentum()),
        fraction_evaluate=0.0,
        min_available_clients=2,
    )
    with pytest.raises(StateError, match=r"_Velocity.*have init\(\) return a _Velocity"):
        _serve(strategy, tmp_path / "run", clients=2)


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_state_a_run_folder_cannot_store_is_refused_before_the_first_round(
    tmp_path: Path,
) -> None:
    strategy = covey.Strategy(aggregator=chain(_counting(), weighted_mean()), fraction_evaluate=0.0)
    with pytest.raises(StateError, match=r"cannot store a _Counter.*named tuples included"):
        _serve(strategy, tmp_path / "run", clients=0)  # refused before it waits for clients


def _emitting(delta: dict[str, Any]) -> Step:
    """A reducer of one's own that emits ``delta`` whatever the round's updates."""

    def update(state: Any, event: Any) -> Any:
        if isinstance(event, End):
            return state, (Aggregate(event.round, 1, 1, delta=delta),)
        if isinstance(event, Contribution):
            return state, ()
        return state, (event,)

    return Step(lambda params: None, update)


@pytest.mark.parametrize(
    ("delta", "why"),
    [
        ({"w": np.ones(2), "b": np.ones(3)}, r"'w' has shape \(2,\), expected \(2, 3\)"),
        ({"w": np.ones((2, 3)), "b": np.ones(1)}, r"'b' has shape \(1,\), expected \(3,\)"),
        ({"w": np.ones((2, 3))}, r"its arrays are \['w'\], expected \['b', 'w'\]"),
        ({"w": np.ones((2, 3)), "b": np.ones(3, dtype=complex)}, "'b' has dtype complex128"),
    ],
)
@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_custom_step_emitting_a_misshapen_delta_has_its_aggregate_refused(
    delta: dict[str, Any], why: str, backend: Any
) -> None:
    # Before, the delta was broadcast into the model (shape (1,) into (3,)) or the
    # run stopped on NumPy's "operands could not be broadcast together".
    strategy = covey.Strategy(aggregator=_emitting(delta), fraction_evaluate=0.0)
    result = covey.simulate(_Shift, 3, 2, strategy, _init(), backend=backend, num_workers=1)
    for record in result.history.rounds[1:]:
        assert not record.aggregated
        assert re.search(
            f"round {record.round}'s aggregate delta: {why}", record.aggregate_info["error"]
        )
    assert all(not v.any() for v in result.weights.values())


def test_an_aggregate_needs_weights_or_a_delta() -> None:
    with pytest.raises(TypeError, match=r"exactly one of weights= or delta=, got neither"):
        Aggregate(1, 1, 1)
    with pytest.raises(TypeError, match="got both"):
        Aggregate(1, 1, 1, weights={"w": np.ones(1)}, delta={"w": np.ones(1)})


def _returning(result: Any) -> Step:
    """A step of one's own whose update returns ``result(state, event)``."""

    def update(state: Any, event: Any) -> Any:
        return result(state, event)

    return Step(lambda params: None, update)


@pytest.mark.parametrize(
    ("result", "got"),
    [
        (lambda state, event: state, "returned NoneType for Begin"),
        (lambda state, event: (state, event), r"returned \(state, Begin\) for Begin"),
        (lambda state, event: (state, (event,), {}), "returned a tuple of 3 for Begin"),
    ],
)
@pytest.mark.parametrize("chained", [False, True])
def test_an_update_returning_the_wrong_thing_is_named(result: Any, got: str, chained: bool) -> None:
    # Before: "cannot unpack non-iterable NoneType object" or "'Begin' object is not
    # iterable", from inside covey, naming nothing of the user's.
    step = _returning(result)
    strategy = covey.Strategy(
        aggregator=chain(step, weighted_mean()) if chained else step, fraction_evaluate=0.0
    )
    with pytest.raises(TypeError, match=f"_returning.<locals>.update .*{got}.*must return"):
        covey.simulate(_Shift, 3, 1, strategy, _init())
    with pytest.raises(TypeError, match=f"_returning.<locals>.update .*{got}"):
        strategy.aggregate(_init(), [covey.FitResult(delta=_init(), num_examples=1)])


def _pick_none(candidates: Any, round: int, rng: Any) -> Any:
    return None


@pytest.mark.parametrize(
    ("selector", "got"),
    [
        (_pick_none, "got 'None'"),
        (lambda candidates, round, rng: [0.5, 1.7], r"got '\[0.5, 1.7\]'"),  # were cut to 0, 1
        (lambda candidates, round, rng: [True, False], r"got '\[True, False\]'"),
        (lambda candidates, round, rng: np.array([[0, 1]]), "got"),
    ],
)
def test_a_selector_returning_anything_but_client_ids_is_named(selector: Any, got: str) -> None:
    strategy = covey.Strategy(selector=selector, fraction_evaluate=0.0)
    with pytest.raises(TypeError, match=f"selector .* must return client ids .*{got}"):
        covey.simulate(_Shift, 4, 1, strategy, _init())


def test_a_selector_may_return_a_generator_or_an_array_of_ids() -> None:
    picks: list[Any] = [
        lambda candidates, round, rng: (c for c in candidates if c % 2 == 0),
        lambda candidates, round, rng: np.array([0, 2], dtype=np.int64),
    ]
    for selector in picks:
        strategy = covey.Strategy(selector=selector, fraction_evaluate=0.0)
        result = covey.simulate(_Shift, 4, 1, strategy, _init())
        assert result.history.rounds[1].fit_participants == [0, 2]


class _Decaying(covey.Strategy):
    """A learning-rate schedule, the documented way: override ``fit_config``."""

    def fit_config(self, round: int) -> dict[str, Any]:
        return {"lr": 0.1 * 0.5 ** (round - 1)}


class _Seen(_Shift):
    """Records the configs it is sent."""

    configs: ClassVar[list[dict[str, Any]]] = []

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        _Seen.configs.append(dict(config))
        return super().fit(weights, config)


def test_an_overridden_fit_config_keeps_the_clip_central_dp_sends() -> None:
    # central(clipping="client") added dp_clip through on_fit_config, which an
    # override of fit_config never calls: every client failed, "the server sent
    # no valid dp_clip".
    _Seen.configs = []
    strategy = covey.privacy.central(
        _Decaying(fraction_evaluate=0.0),
        noise_multiplier=0.5,
        clip=1.0,
        delta=1e-5,
        clipping="client",
        noise_seed=0,
    )
    result = covey.simulate(
        lambda cid: covey.privacy.ClipUpdates(_Seen(cid)), 4, 2, strategy, _init()
    )
    assert all(record.aggregated for record in result.history.rounds[1:])
    assert {(c["round"], c["lr"], c["dp_clip"]) for c in _Seen.configs} == {
        (1, 0.1, 1.0),
        (2, 0.05, 1.0),
    }


class _ListConfig(covey.Strategy):
    def fit_config(self, round: int) -> Any:
        return [("lr", 0.1)]


class _NoEvaluateConfig(covey.Strategy):
    def evaluate_config(self, round: int) -> Any:
        return None


def test_an_overridden_config_that_is_not_a_dict_is_refused_naming_the_class() -> None:
    # Before, the override's result went to clients unchecked (a list of pairs
    # passed as a config).
    with pytest.raises(TypeError, match=r"_ListConfig.fit_config\(\) must return a dict, got list"):
        covey.simulate(_Shift, 3, 1, _ListConfig(fraction_evaluate=0.0), _init())
    with pytest.raises(
        TypeError, match=r"_NoEvaluateConfig.evaluate_config\(\) must return a dict"
    ):
        covey.simulate(_Shift, 3, 1, _NoEvaluateConfig(), _init())


class _Schedule(covey.Strategy):
    """A subclass with an ``__init__`` of its own, taking a parameter that is no field."""

    def __init__(self, base_lr: float, **options: Any) -> None:
        super().__init__(**options)
        object.__setattr__(self, "base_lr", base_lr)

    def fit_config(self, round: int) -> dict[str, Any]:
        return {"lr": getattr(self, "base_lr") / round}  # noqa: B009 - set by object.__setattr__


def test_a_subclass_with_an_init_of_its_own_takes_its_keywords() -> None:
    # Strategy.__new__ refused base_lr=: "got unexpected keyword arguments: ['base_lr']".
    strategy = _Schedule(base_lr=0.2, fraction_evaluate=0.0)
    assert strategy.fit_task_config(2) == {"lr": 0.1}
    private = covey.privacy.central(
        strategy, noise_multiplier=0.5, clip=1.0, delta=1e-5, clipping="client"
    )  # copied without calling _Schedule.__init__ again (it has no field base_lr)
    assert type(private) is _Schedule
    assert private.fit_task_config(2) == {"lr": 0.1, "dp_clip": 1.0}
    with pytest.raises(TypeError, match="on_fit_config_fn is covey's on_fit_config"):
        covey.Strategy(on_fit_config_fn=lambda r: {})  # type: ignore[call-arg]


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_subclass_with_an_init_of_its_own_is_served_into_a_run_folder(tmp_path: Path) -> None:
    # The server copied the strategy with dataclasses.replace, calling
    # _Schedule.__init__ without base_lr: every deployed run with a run folder failed.
    strategy = _Schedule(0.2, fraction_evaluate=0.0, min_available_clients=2)
    result = _serve(strategy, tmp_path / "run", clients=2)
    assert all(record.aggregated for record in result.history.rounds[1:])


def _mean_loss(results: Any) -> Any:
    return float(np.mean([n for n, _ in results]))


@pytest.mark.parametrize("kind", ["fit", "evaluate"])
def test_a_metrics_function_returning_no_dict_is_named(kind: str) -> None:
    # Before, the float was recorded as the round's metrics; a deployed run then
    # failed a round later, blaming "the aggregation step ... on client 0's update".
    class Evaluating(_Shift):
        def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
            return covey.EvaluateResult(loss=1.0, num_examples=2)

    options: dict[str, Any] = {f"{kind}_metrics": _mean_loss}
    strategy = covey.Strategy(**options)
    with pytest.raises(TypeError, match=f"{kind}_metrics _mean_loss must return a dict .* '2.0'"):
        covey.simulate(Evaluating, 3, 1, strategy, _init())


def test_a_scheme_of_ones_own_compresses_inline_and_is_refused_elsewhere() -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    result = covey.simulate(_Shift, 3, 1, strategy, _init(), compression=_Halving())
    assert result.history.rounds[1].bytes_received == 3 * 9 * 2  # float16 halves
    assert np.array_equal(result.weights["b"], np.full(3, (1 * 1 + 2 * 2 + 3 * 3) / 6))
    with pytest.raises(ValueError, match="Halving is a scheme of your own"):
        covey.simulate(_Shift, 3, 1, strategy, _init(), compression=_Halving(), backend="process")


class _Nameless(_Halving):
    name = None  # type: ignore[assignment]


class _Numbered(_Halving):
    @property
    def name(self) -> Any:  # type: ignore[override]
        return 3


@pytest.mark.parametrize(
    ("scheme", "got"), [(_Nameless(), "NoneType None"), (_Numbered(), "int 3")]
)
def test_a_scheme_of_ones_own_whose_name_is_no_str_is_refused_when_given(
    scheme: Any, got: str
) -> None:
    # Before: the run went on, its history recording {"compression": 3}.
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    said = f"compression {type(scheme).__name__}'s name is {got}: a scheme's name must be a str"
    with pytest.raises(TypeError, match=said):
        covey.simulate(_Shift, 3, 1, strategy, _init(), compression=scheme)


def test_the_extension_points_have_public_names() -> None:
    # Strategy(hooks=...) named covey.core._hooks.RunHook, Strategy(fit_round=...)
    # returns a FitOutcome only covey.strategies._strategy held, and serve() raised a
    # covey.server._state.StateError no public module exported.
    from covey.core import RunHook
    from covey.server import StateError as PublicStateError
    from covey.strategies import FitOutcome, FitRound

    assert PublicStateError is StateError
    assert RunHook.__module__ == "covey.core._hooks"
    assert FitOutcome().error is None
    assert FitRound is not None
    assert "covey.core.RunHook" in (covey.Strategy.__doc__ or "")


def _forgetful() -> Step:
    """A reducer of one's own that folds every contribution and forgets to emit an Aggregate."""

    def update(state: Any, event: Any) -> Any:
        if isinstance(event, Contribution | End):
            return state, ()
        return state, (event,)

    return Step(lambda params: None, update)


def test_a_step_that_emits_no_aggregate_has_the_round_say_so() -> None:
    # Before, the round kept the model with nothing in the record or the log.
    strategy = covey.Strategy(aggregator=_forgetful(), fraction_evaluate=0.0)
    result = covey.simulate(_Shift, 3, 1, strategy, _init())
    record = result.history.rounds[1]
    assert record.fit_participants == [0, 1, 2]
    assert not record.aggregated
    assert record.aggregate_info["error"] == (
        "the aggregation step emitted no Aggregate at the End of round 1"
    )


def _twice() -> Step:
    """A reducer of one's own that emits two Aggregates at the End of each round."""

    def update(state: Any, event: Any) -> Any:
        if isinstance(event, End):
            ones = {k: np.ones_like(v) for k, v in state.items()}
            first = Aggregate(event.round, 1, 1, delta=ones)
            second = Aggregate(event.round, 1, 1, delta={k: 5 * v for k, v in ones.items()})
            return state, (first, second)
        if isinstance(event, Begin):
            return dict(event.params), ()
        return state, ()

    return Step(lambda params: dict(params), update)


def test_a_step_that_emits_two_aggregates_stops_the_run_naming_them() -> None:
    # The round applied the first and dropped the second without a word, while
    # Strategy steps after it would fold both (a server optimizer's moments, twice).
    strategy = covey.Strategy(aggregator=_twice(), fraction_evaluate=0.0)
    said = "the aggregation step emitted 2 Aggregates at the End of round 1"
    with pytest.raises(covey.FederationError, match=said) as stopped:
        covey.simulate(_Shift, 3, 1, strategy, _init())
    assert isinstance(stopped.value.__cause__, TypeError)
    with pytest.raises(TypeError, match=said):
        strategy.aggregate(_init(), [covey.FitResult(delta=_init(), num_examples=1)])


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_failed_save_is_reported_as_one_not_as_an_aggregation_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Round 1 is saved while round 2 trains and awaited when round 2 folds its first
    # reply: the run stopped with "the aggregation step failed on client 0's update".
    from covey.server import RunStore

    real = RunStore.save_round

    def full_disk(self: RunStore, round: int, *args: Any, **kwargs: Any) -> Any:
        if round == 1:
            raise OSError(28, "No space left on device")
        return real(self, round, *args, **kwargs)

    monkeypatch.setattr(RunStore, "save_round", full_disk)
    strategy = covey.Strategy(fraction_evaluate=0.0, min_available_clients=2)
    with pytest.raises(covey.FederationError) as caught:
        _serve(strategy, tmp_path / "run", clients=2)
    message = str(caught.value)
    assert "round 2: saving round 1 to " in message
    assert "OSError: [Errno 28] No space left on device" in message
    assert "aggregation step" not in message


APP = """
import numpy as np
import covey
from covey.deploy import ServerApp


def server_app():
    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=1, min_available_clients=1)
    return ServerApp(strategy=strategy, initial_weights={"b": np.zeros(3)}, rounds=1)
"""


@pytest.mark.parametrize("plot", ["--plot", "--no-plot"])
def test_the_finished_line_names_plot_png_only_when_it_is_drawn(tmp_path: Path, plot: str) -> None:
    import os
    import subprocess
    import sys
    import time

    (tmp_path / "extapp.py").write_text(APP)
    port_file = tmp_path / "port"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    args = ["server", "--app", "extapp:server_app", "--insecure", "--address", "127.0.0.1:0"]
    args += ["--port-file", str(port_file), "--run-dir", str(tmp_path / "run"), plot]
    server = subprocess.Popen(
        [sys.executable, "-m", "covey", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(port_file.read_text())
        connect(_Shift(0), f"127.0.0.1:{port}", insecure=True, name="site-0")
        out, _ = server.communicate(timeout=60)
    finally:
        server.kill()
        server.wait(timeout=30)
    assert server.returncode == 0, out
    finished = next(line for line in out.splitlines() if "run finished" in line)
    assert ("plot.png" in finished) == (plot == "--plot"), finished
    assert (tmp_path / "run" / "plot.png").exists() == (plot == "--plot")


def _counter() -> Step:
    """A step whose named tuple is defined in its factory: one class per call."""

    class Count(NamedTuple):
        n: int

    def update(state: Any, event: Any) -> Any:
        return (Count(state.n + 1) if isinstance(event, Begin) else state), (event,)

    return Step(lambda params: Count(0), update)


def test_a_state_factory_used_twice_in_a_chain_is_stored_and_read_back() -> None:
    from covey.server._state import dump_state, load_state, state_types

    step = chain(_counter(), _counter(), weighted_mean())
    params = {"w": np.zeros(2)}
    template = step.init(params)
    state, _ = step.update(template, Begin(1, params))
    back = load_state(dump_state(state, state_types(template)), template)
    assert [count.n for count in back[:2]] == [1, 1]


def test_a_numpy_float64_in_a_state_is_read_back_as_one() -> None:
    """np.float64 is a float, but it scales a float32 array to float64 where a float does not."""
    from covey.server._state import dump_state, load_state, state_types

    template = _Velocity(np.float64(1.0), None)
    state = _Velocity(np.float64(0.9), {"lr": np.float64(np.nan), "f": 0.5, "n": np.float32(2)})
    back = load_state(dump_state(state, state_types(template)), template)
    assert type(back.velocity) is np.float64
    assert back.velocity == 0.9
    assert type(back.params["lr"]) is np.float64
    assert np.isnan(back.params["lr"])
    assert type(back.params["f"]) is float
    assert type(back.params["n"]) is np.float32


def test_a_counter_a_defaultdict_and_an_ordered_dict_in_a_state_are_read_back_as_such() -> None:
    """Read back as dicts, a resumed run's ``counts[cid] += 1`` would raise KeyError."""
    import collections

    from covey.server._state import dump_state, load_state, state_types

    template = _Velocity(None, None)
    counts: collections.defaultdict[int, int] = collections.defaultdict(int, {3: 2})
    seen: collections.defaultdict[str, list[int]] = collections.defaultdict(list, {"a": [1]})
    mixed = {
        "counts": counts,
        "seen": seen,
        "tally": collections.Counter({"x": 2}),
        "order": collections.OrderedDict([("b", 1), ("a", 2)]),
        "bare": collections.defaultdict(None, {1: 1}),
    }
    back = load_state(dump_state(_Velocity(mixed, {"plain": 1}), state_types(template)), template)
    assert back.velocity == mixed
    assert {k: type(v) for k, v in back.velocity.items()} == {k: type(v) for k, v in mixed.items()}
    back.velocity["counts"][7] += 1
    back.velocity["seen"]["b"].append(2)
    assert back.velocity["tally"]["y"] == 0
    assert back.velocity["bare"].default_factory is None
    assert list(back.velocity["order"]) == ["b", "a"]
    assert type(back.params) is dict
    odd = collections.defaultdict(lambda: 5, {1: 1})  # a factory of one's own: a dict, as before
    assert type(load_state(dump_state(_Velocity(odd, None)), template).velocity) is dict


def test_a_non_finite_numpy_float64_stored_by_its_repr_is_read_back() -> None:
    """How runs saved it before: ``np.float64(inf)``, which ``float()`` cannot read."""
    import json

    import safetensors.numpy

    from covey.server._state import _digest, load_state

    tree = {"__tuple__": None, "items": [{"__float__": "np.float64(-inf)"}, {"__float__": "nan"}]}
    meta = json.dumps({"format": 2, "tree": tree, "sha256": _digest(tree, {})})
    data = safetensors.numpy.save({}, metadata={"covey-state": meta})
    low, nan = load_state(data, ())
    assert type(low) is np.float64
    assert low == -np.inf
    assert type(nan) is float
    assert np.isnan(nan)


def test_a_state_stored_by_another_aggregation_step_is_refused_saying_so() -> None:
    from covey.server._state import dump_state, load_state

    params = {"w": np.zeros(2)}
    started = chain(weighted_mean(), _lazy_momentum())
    state, _ = started.update(started.init(params), Begin(1, params))
    other = chain(weighted_mean(), _counting())  # both are named "custom"
    with pytest.raises(StateError, match=r"_Velocity .*started with another aggregation step"):
        load_state(dump_state(state), other.init(params))


class _HalfFit(covey.Strategy):
    def num_fit(self, available: int) -> Any:
        return available / 2  # a float: numpy's "expected a sequence of integers" before


class _NoFit(covey.Strategy):
    def num_fit(self, available: int) -> int:
        return 0  # was blamed on "fraction_fit=1.0 ... and min_fit_clients=0"


class _NoneEvaluate(covey.Strategy):
    def num_evaluate(self, available: int) -> Any:
        return None  # "'>' not supported between instances of 'NoneType' and 'int'" before


@pytest.mark.parametrize(
    ("strategy", "error", "message"),
    [
        (_HalfFit(), TypeError, r"_HalfFit.num_fit\(\) must return a number of clients .* 3.0"),
        (_NoFit(), ValueError, r"_NoFit.num_fit\(\) returns 0 for num_clients=6"),
        (_NoneEvaluate(), TypeError, r"_NoneEvaluate.num_evaluate\(\) must return .* None"),
    ],
)
def test_an_overridden_client_count_that_is_wrong_is_named(
    strategy: covey.Strategy, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        covey.simulate(_Shift, 6, 1, strategy, _init())


@dataclass(frozen=True)
class _Cosine(covey.Strategy):
    """A schedule with parameters of its own, declared as fields."""

    total: int = 10
    base_lr: float = 0.1
    floor: float = float("nan")
    table: tuple[float, ...] = (1.0,)

    def fit_config(self, round: int) -> dict[str, Any]:
        return {"lr": self.base_lr * 0.5 * (1 + np.cos(np.pi * (round - 1) / self.total))}


def test_a_subclass_is_described_with_its_class_overrides_and_fields(tmp_path: Path) -> None:
    # history.json said only {"name": "custom"}: not that fit_config was overridden,
    # nor with which parameters, so a run could not be told from a plain Strategy.
    import json

    covey.simulate(
        _Shift, 3, 1, _Cosine(total=5, fraction_evaluate=0.0), _init(), run_dir=tmp_path / "run"
    )
    options = json.loads((tmp_path / "run" / "history.json").read_text())["config"]["strategy"][
        "options"
    ]
    assert options["class"] == f"{__name__}._Cosine"
    assert options["fit_config"] == "_Cosine.fit_config"
    assert (options["total"], options["base_lr"], options["floor"]) == (5, 0.1, "nan")
    assert options["table"] == [1.0]
    assert "class" not in covey.FedAvg().describe()["options"]


@pytest.mark.parametrize("kind", ["fit", "evaluate"])
def test_a_metrics_function_returning_what_the_history_cannot_keep_is_named(kind: str) -> None:
    # Before, the round took it; a run folder then failed to save the round, naming
    # neither the function nor the round.
    class Evaluating(_Shift):
        def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
            return covey.EvaluateResult(loss=1.0, num_examples=2)

    def _opaque(results: Any) -> Any:
        return {"matrix": object()}

    strategy = covey.Strategy(**{f"{kind}_metrics": _opaque})  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=f"{kind}_metrics .*_opaque in round 1 returned a value the history cannot"
    ):
        covey.simulate(Evaluating, 3, 1, strategy, _init())


class _NoFinish:
    """A run hook of one's own that forgot ``finish``."""

    def start(self, state: Any, seed: Any, history: Any) -> Any:
        return state

    def before_round(self, round: int, state: Any) -> str | None:
        return None

    def after_round(self, record: Any, state: Any) -> None:
        return None


class _Hook(_NoFinish):
    def finish(self, history: Any, state: Any) -> None:
        return None


@pytest.mark.parametrize(
    ("hooks", "said"),
    [
        ((_NoFinish(),), r"hooks\[0\] \(_NoFinish\) is not a run hook .* lacks finish\(history"),
        ((_Hook(), print), r"hooks\[1\] \(builtin_function_or_method\) is not a run hook"),
        (_Hook(), "hooks must be a tuple of run hooks .* got _Hook: write hooks=\\(hook,\\)"),
    ],
)
def test_a_run_hook_that_is_not_one_is_refused_when_the_strategy_is_made(
    hooks: Any, said: str
) -> None:
    # Before: a hook without finish() failed after the last round with an AttributeError
    # that lost the run's result; a hook not in a tuple with "'_Hook' object is not iterable".
    with pytest.raises(TypeError, match=said):
        covey.Strategy(hooks=hooks)
    hooked = covey.Strategy(hooks=(_Hook(),), fraction_evaluate=0.0)
    assert covey.simulate(_Shift, 3, 2, hooked, _init()).history.rounds[2].aggregated


@pytest.mark.parametrize(("info", "at"), [(None, Aggregate), (["clipped"], End)])
def test_an_info_that_is_no_dict_stops_the_run_naming_the_event(info: Any, at: type) -> None:
    # Before: an Aggregate's info=None escaped the round loop as a bare "'NoneType' object
    # is not iterable" and lost the run's history; an End's info=[...] stopped it with
    # "dictionary update sequence element #0 has length 7; 2 is required".
    steps = (_reporting(info, at), weighted_mean())
    strategy = covey.Strategy(aggregator=chain(*(steps if at is End else steps[::-1])))
    strategy = dataclasses.replace(strategy, fraction_evaluate=0.0)
    said = f"{at.__name__}\\(round=1\\).info must be a dict of names to values .* got "
    with pytest.raises(covey.FederationError, match=said) as stopped:
        covey.simulate(_Shift, 3, 1, strategy, _init())
    assert isinstance(stopped.value.__cause__, TypeError)
    assert "aggregate_info" in str(stopped.value)


class _Picky(_Halving):
    """A scheme of one's own whose decoder fails on the update of one client (client 1)."""

    def decode(self, parts: Any, spec: Any) -> dict[str, np.ndarray]:
        if float(parts["b"]["h"][0]) == 1.0:  # client 1 sends halves of 2
            raise KeyError("scale")
        return super().decode(parts, spec)


class _Forgetful(_Halving):
    """A scheme of one's own whose encoder returns nothing."""

    def encode(self, delta: Any, rng: Any) -> Any:
        return None


def test_a_scheme_of_ones_own_that_fails_on_an_update_fails_that_client_only() -> None:
    # Before: the KeyError of the decoder stopped the whole run, bare.
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    result = covey.simulate(_Shift, 3, 1, strategy, _init(), compression=_Picky())
    record = result.history.rounds[1]
    assert record.fit_participants == [0, 2]
    [failure] = record.fit_failures
    assert failure.cid == 1
    assert failure.error == (
        "refused the encoded update: _Picky.decode(parts, spec) raised KeyError: 'scale'"
    )
    assert np.array_equal(result.weights["b"], np.full(3, (1 * 1 + 3 * 3) / 4))


def test_a_scheme_of_ones_own_that_encodes_no_parts_is_named() -> None:
    # Before: each client failed with "'NoneType' object has no attribute 'items'".
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    said = r"_Forgetful.encode\(delta, rng\) must return \{name: \{part: array\}\} .* got NoneType"
    with pytest.raises(covey.FederationError, match=said):
        covey.simulate(_Shift, 3, 1, strategy, _init(), compression=_Forgetful())


@pytest.mark.parametrize(
    ("selector", "error", "said"),
    [
        (_pick_none, TypeError, "must return client ids .* got 'None'"),
        (lambda candidates, round, rng: [0.5, 1.7], TypeError, r"got '\[0.5, 1.7\]'"),
        (lambda candidates, round, rng: [True, False], TypeError, r"got '\[True, False\]'"),
        (lambda candidates, round, rng: [0, 0], ValueError, r"more than once: \[0, 0\]"),
    ],
)
def test_an_asynchronous_selector_returning_anything_but_client_ids_is_named(
    selector: Any, error: type, said: str
) -> None:
    # Before: FedBuff cut [0.5, 1.7] to clients 0 and 1 and trained them, took True
    # for client 1, failed on None with "'NoneType' object is not iterable", and on
    # [0, 0] with the transport's "client 0 already has a task in flight".
    strategy = covey.FedBuff(buffer_size=2, selector=selector, fraction_evaluate=0.0)
    with pytest.raises(error, match=f"selector .*{said}"):
        covey.simulate(_Shift, 4, 1, strategy, _init())


def test_a_subclass_with_an_init_of_its_own_records_its_parameters(tmp_path: Path) -> None:
    # Before: only fields were described, so base_lr was not in history.json and a run
    # resumed with another base_lr went on with it, mixing two schedules in one run.
    run = tmp_path / "run"
    covey.simulate(_Shift, 3, 1, _Schedule(0.2, fraction_evaluate=0.0), _init(), run_dir=run)
    assert _Schedule(0.2).describe()["options"]["base_lr"] == 0.2
    with pytest.raises(ValueError, match=r"strategy base_lr 0.2 \(the run's\) is 0.5 now"):
        covey.simulate(
            _Shift, 3, 2, _Schedule(0.5, fraction_evaluate=0.0), _init(), run_dir=run, resume=True
        )
    resumed = covey.simulate(
        _Shift, 3, 2, _Schedule(0.2, fraction_evaluate=0.0), _init(), run_dir=run, resume=True
    )
    assert resumed.history.rounds[-1].round == 2


@dataclass(frozen=True)
class _Prox(covey.Strategy):
    """A subclass with a field of its own, which may hold a NumPy number."""

    proximal_mu: Any = 0.0


@pytest.mark.parametrize(
    ("value", "same", "other", "said"),
    [
        (np.float64("nan"), float("nan"), np.float64("inf"), "'nan' (the run's) is 'inf' now"),
        (np.float64("-inf"), float("-inf"), np.float64(1.0), "'-inf' (the run's) is 1.0 now"),
        (np.float32(0.1), 0.1, np.float32(0.2), "0.1 (the run's) is 0.2 now"),
        (np.int64(3), 3, np.int64(4), "3 (the run's) is 4 now"),
    ],
)
def test_a_subclass_field_holding_a_numpy_number_is_recorded_by_value(
    tmp_path: Path, value: Any, same: Any, other: Any, said: str
) -> None:
    # Before: np.float64(nan) was recorded as 'np.float64(nan)', so a resume with
    # float("nan") was refused; np.float32 and np.int64 were recorded by type name
    # ('float32'), so a resume with another value went on with it unsaid.
    import json

    def prox(mu: Any) -> _Prox:
        return _Prox(proximal_mu=mu, fraction_evaluate=0.0)

    for k, again in enumerate((value, same, other)):
        run = tmp_path / f"run{k}"
        covey.simulate(_Shift, 3, 1, prox(value), _init(), run_dir=run)
        if k == 0:
            history = json.loads((run / "history.json").read_text())
            recorded = history["config"]["strategy"]["options"]["proximal_mu"]
            assert recorded == prox(same).describe()["options"]["proximal_mu"]
            assert recorded in ("nan", "-inf", 0.1, 3)
        if again is other:
            with pytest.raises(ValueError, match=re.escape(f"strategy proximal_mu {said}")):
                covey.simulate(_Shift, 3, 2, prox(again), _init(), run_dir=run, resume=True)
        else:
            resumed = covey.simulate(_Shift, 3, 2, prox(again), _init(), run_dir=run, resume=True)
            assert resumed.history.rounds[-1].round == 2


def test_a_preset_given_numpy_numbers_keeps_a_run_folder(tmp_path: Path) -> None:
    # Before: FedAdam(eta=np.float32(0.1)) could not start a run folder ("config must be
    # JSON-serializable: Object of type float32 is not JSON serializable").
    run = tmp_path / "run"

    def adam(eta: Any) -> covey.Strategy:
        return covey.FedAdam(eta=eta, tau=np.float64(1e-3), fraction_evaluate=0.0)

    covey.simulate(_Shift, 3, 1, adam(np.float32(0.1)), _init(), run_dir=run)
    assert adam(np.float32(0.1)).describe()["hyperparameters"]["eta"] == 0.1
    with pytest.raises(ValueError, match=re.escape("strategy eta 0.1 (the run's) is 0.2 now")):
        covey.simulate(_Shift, 3, 2, adam(np.float32(0.2)), _init(), run_dir=run, resume=True)
    resumed = covey.simulate(_Shift, 3, 2, adam(np.float32(0.1)), _init(), run_dir=run, resume=True)
    assert resumed.history.rounds[-1].round == 2


@pytest.mark.parametrize("wrapper", ["central", "secure"])
def test_a_wrappers_numpy_numbers_keep_a_run_folder(wrapper: str, tmp_path: Path) -> None:
    # Before: central(..., clip=np.float32(1.0)) and secure(..., noise=Noise(...,
    # clip=np.float32(1.0))) could not start a run folder: their nested settings kept
    # the NumPy numbers ("Object of type float32 is not JSON serializable").
    from covey.privacy import central
    from covey.secagg import Noise, secure

    run = tmp_path / "run"
    f32: Any = np.float32  # read from a float32 array or config, say

    def wrapped(clip: Any) -> covey.Strategy:
        plain = covey.FedAvg(fraction_evaluate=0.0)
        if wrapper == "central":
            return central(plain, noise_multiplier=f32(0.5), clip=clip, delta=np.float64(1e-5))
        noise = Noise("gaussian", sigma=f32(4.0), clip=clip, delta=np.float64(1e-5))
        with pytest.warns(UserWarning, match="honest-but-curious"):
            return secure(plain, clip_range=f32(4.0), noise=noise)

    covey.simulate(_Shift, 3, 1, wrapped(f32(1.0)), _init(), run_dir=run)
    settings = wrapped(f32(1.0)).describe()["hyperparameters"]
    assert "float32" not in repr(settings)
    with pytest.raises(ValueError, match=r"clip 1\.0 \(the run's\) is 2\.0 now"):
        covey.simulate(_Shift, 3, 2, wrapped(f32(2.0)), _init(), run_dir=run, resume=True)
    resumed = covey.simulate(_Shift, 3, 2, wrapped(f32(1.0)), _init(), run_dir=run, resume=True)
    assert resumed.history.rounds[-1].round == 2


def _pick_site(candidates: Any, round: int, rng: Any) -> Any:
    return [c for c in candidates if {"a": 1}["site"]]  # a lookup that fails


def _hospital(properties: Any) -> bool:
    return bool(1 / 0)


@pytest.mark.parametrize(
    ("options", "error", "note"),
    [
        ({"selector": _pick_site}, KeyError, "raised by selector _pick_site in round 1"),
        ({"where": _hospital}, ZeroDivisionError, "raised by where= _hospital for client 0"),
    ],
)
@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_error_of_a_selector_or_where_predicate_is_noted_with_its_name(
    options: dict[str, Any], error: type, note: str, asynchronous: bool
) -> None:
    # Before: the bare KeyError (or ZeroDivisionError) named neither the function nor
    # the round, as the errors of config and metrics functions do.
    make = covey.FedBuff if asynchronous else covey.FedAvg
    extra: dict[str, Any] = {"buffer_size": 2} if asynchronous else {}
    strategy = make(fraction_evaluate=0.0, **extra, **options)
    with pytest.raises(error) as raised:
        covey.simulate(_Shift, 4, 1, strategy, _init())
    if asynchronous:  # a FedBuff run counts updates
        note = note.replace("in round 1", "in update 1")
    assert note in raised.value.__notes__


class _StopsWithTrue(_Hook):
    """A run hook that means to stop before round 2 and says so with True, not a reason."""

    def before_round(self, round: int, state: Any) -> Any:
        return round == 2


def test_a_run_hook_giving_no_reason_to_stop_is_named() -> None:
    # Before: the run stopped before round 2 with history.stopped_reason True (a bool).
    strategy = covey.Strategy(hooks=(_StopsWithTrue(),), fraction_evaluate=0.0)
    said = r"_StopsWithTrue.before_round\(round, state\) must return a reason .* got True"
    with pytest.raises(TypeError, match=said):
        covey.simulate(_Shift, 3, 3, strategy, _init())


def test_a_compressing_transport_refuses_a_scheme_whose_name_is_no_str() -> None:
    from covey.compress import CompressedTransport
    from covey.compress._counted import CountedAsyncTransport

    for wrapper in (CompressedTransport, CountedAsyncTransport):
        with pytest.raises(TypeError, match="compression _Numbered's name is int 3"):
            wrapper(None, _Numbered())

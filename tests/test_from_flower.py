"""Habits a Flower user brings to covey: each works, or fails with an error naming covey's way."""

from __future__ import annotations

import ctypes
import faulthandler
import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey import EvaluateResult, FitResult


def init() -> dict[str, np.ndarray]:
    """A fresh model: the inline backend lends clients the caller's own arrays."""
    return {"w": np.zeros(4)}


class AddOne(covey.Client):
    """Trains by adding one to every weight; evaluates to the mean weight."""

    def __init__(self, cid: int = 0) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=10)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=float(weights["w"].mean()), num_examples=10)


def _fit_failures(exc: covey.FederationError) -> list[str]:
    return [f.error for r in exc.history.rounds for f in r.fit_failures]


def _run(client_fn: Any, **kwargs: Any) -> covey.sim.SimulationResult:
    strategy = kwargs.pop("strategy", covey.FedAvg(fraction_evaluate=0.0))
    return covey.simulate(client_fn, 3, kwargs.pop("rounds", 1), strategy, init(), **kwargs)


# -- what fit and evaluate return ---------------------------------------------------------


def test_numpy_integer_example_counts_are_taken_as_ints() -> None:
    """``len(mask.nonzero()[0])`` is an int, ``mask.sum()`` a np.int64: both count examples."""
    fit = FitResult(weights={"w": np.ones(2)}, num_examples=np.int64(7))
    ev = EvaluateResult(loss=np.float32(0.5), num_examples=np.int32(3))
    assert (fit.num_examples, ev.num_examples) == (7, 3)
    assert type(fit.num_examples) is int
    assert type(ev.num_examples) is int
    with pytest.raises(ValueError, match="non-negative int"):
        FitResult(weights={"w": np.ones(2)}, num_examples=np.int64(-1))
    with pytest.raises(ValueError, match="non-negative int"):
        FitResult(weights={"w": np.ones(2)}, num_examples=np.float64(3.0))  # type: ignore[arg-type]


class TupleFit(covey.Client):
    def fit(self, weights: Any, config: dict[str, Any]) -> Any:
        return [np.ones(4)], 10, {}

    def evaluate(self, weights: Any, config: dict[str, Any]) -> Any:
        return 0.5, 10, {"accuracy": 1.0}


def test_a_flower_style_tuple_from_fit_names_fit_result() -> None:
    with pytest.raises(covey.FederationError) as info:
        _run(lambda cid: TupleFit())
    errors = _fit_failures(info.value)
    assert len(errors) == 3
    assert all("covey.FitResult(weights=" in e and "num_examples=" in e for e in errors), errors


def test_a_flower_style_tuple_from_evaluate_names_evaluate_result() -> None:
    class Mixed(AddOne):
        evaluate = TupleFit.evaluate

    result = _run(lambda cid: Mixed(), strategy=covey.FedAvg(min_evaluate_clients=0))
    failures = result.history.rounds[1].evaluate_failures
    assert len(failures) == 3
    assert all("covey.EvaluateResult(loss=" in f.error for f in failures), failures


class AsyncFit(AddOne):
    async def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:  # type: ignore[override]
        return AddOne.fit(self, weights, config)

    async def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:  # type: ignore[override]
        return AddOne.evaluate(self, weights, config)


def test_an_async_fit_or_evaluate_is_told_to_be_a_plain_function() -> None:
    # Before: "returned coroutine, expected covey.FitResult" and, with it, a
    # RuntimeWarning that the coroutine was never awaited (an error under -W error).
    said = "() is a coroutine function (async def): covey calls {} as a plain function"
    with pytest.raises(covey.FederationError) as info:
        _run(lambda cid: AsyncFit())
    errors = _fit_failures(info.value)
    assert len(errors) == 3
    assert all("AsyncFit.fit" + said.format("fit") in e for e in errors), errors
    from covey.clients._mistakes import not_a_result

    client = AsyncFit()
    refused = not_a_result(client, "evaluate", client.evaluate(init(), {"round": 1}))
    assert str(refused).startswith("AsyncFit.evaluate" + said.format("evaluate")), refused


class NoConfig(covey.Client):
    def fit(self, weights: Any) -> FitResult:  # type: ignore[override]
        return FitResult(weights=dict(weights), num_examples=10)

    def evaluate(self, weights: Any) -> EvaluateResult:  # type: ignore[override]
        return EvaluateResult(loss=0.5, num_examples=10)


def test_a_fit_or_evaluate_without_config_is_told_how_covey_calls_it() -> None:
    # Python's own words, "takes 2 positional arguments but 3 were given", name no config.
    with pytest.raises(covey.FederationError) as info:
        _run(lambda cid: NoConfig())
    errors = _fit_failures(info.value)
    assert len(errors) == 3
    assert all("define it as def fit(self, weights, config)" in e for e in errors), errors

    class Fits(AddOne):
        evaluate = NoConfig.evaluate  # type: ignore[assignment]

    result = _run(lambda cid: Fits(), strategy=covey.FedAvg(min_evaluate_clients=0))
    failures = result.history.rounds[1].evaluate_failures
    assert [f.error.startswith("TypeError: Fits.evaluate(weights) cannot") for f in failures] == [
        True
    ] * 3, failures


def test_clients_failing_alike_are_named_together_in_the_error_that_stops_the_run() -> None:
    with pytest.raises(covey.FederationError) as info:
        _run(lambda cid: NoConfig())
    said = str(info.value)
    assert "failures: client 0, client 1, client 2: TypeError: NoConfig.fit(weights)" in said
    assert said.count("cannot be called") == 1, said


def test_a_client_object_given_as_client_fn_is_told_to_pass_a_function() -> None:
    # Before, every client failed with "'AddOne' object is not callable"; now the run
    # is refused before it starts.
    with pytest.raises(TypeError, match=r"client_fn is a client \(AddOne object\), not a"):
        _run(AddOne())


class NoId(covey.Client):
    """A client whose constructor takes no client id."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights=dict(weights), num_examples=1)


@pytest.mark.parametrize("client_fn", [lambda: NoId(), NoId], ids=["lambda", "class"])
def test_a_client_fn_taking_no_client_id_is_told_covey_passes_one(client_fn: Any) -> None:
    # Before, every client failed with "<lambda>() takes 0 positional arguments but 1 was given";
    # then every sampled client failed with covey's hint; now the run is refused before it starts.
    with pytest.raises(TypeError, match=r"cannot be called as client_fn\(cid\)") as info:
        _run(client_fn)
    assert "the client id, an int from 0 to num_clients - 1" in str(info.value)


def test_a_type_error_inside_client_fn_is_reported_as_it_is() -> None:
    def client_fn(cid: int) -> AddOne:
        return AddOne(len(cid))  # type: ignore[arg-type]

    with pytest.raises(covey.FederationError) as info:
        _run(client_fn)
    errors = _fit_failures(info.value)
    assert all("has no len()" in e for e in errors), errors
    assert not any("client_fn(cid)" in e for e in errors), errors


def test_a_type_error_inside_fit_is_reported_as_it_is() -> None:
    class Broken(AddOne):
        def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
            return FitResult(weights=dict(weights), num_examples=len(None))  # type: ignore[arg-type]

    with pytest.raises(covey.FederationError) as info:
        _run(lambda cid: Broken())
    assert all("has no len()" in e for e in _fit_failures(info.value))


# -- client_fn, evaluate_fn and strategy options -----------------------------------------


def _context_client_fn(context: Any) -> AddOne:
    return AddOne(int(context.node_config["partition-id"]))


@pytest.mark.parametrize("backend", ["inline", pytest.param("process", marks=pytest.mark.slow)])
def test_a_client_fn_that_reads_a_flower_context_is_told_it_gets_the_client_id(
    backend: str,
) -> None:
    with pytest.raises(covey.FederationError) as info:
        _run(_context_client_fn, backend=backend)
    errors = _fit_failures(info.value)
    assert len(errors) == 3
    assert all("client_fn(cid)" in e and "partition" in e for e in errors), errors


def test_a_client_fn_returning_flower_s_to_client_is_told_to_return_the_client() -> None:
    def client_fn(cid: int) -> Any:
        return AddOne(cid).to_client()  # type: ignore[attr-defined]

    with pytest.raises(covey.FederationError) as info:
        _run(client_fn)
    errors = _fit_failures(info.value)
    assert len(errors) == 3
    assert all("drop Flower's .to_client()" in e for e in errors), errors


def test_an_evaluate_fn_with_flower_s_three_arguments_is_refused_before_round_one() -> None:
    calls: list[int] = []

    def evaluate_fn(server_round: int, parameters: Any, config: dict[str, Any]) -> Any:
        calls.append(server_round)
        return 0.0, {}

    with pytest.raises(TypeError, match=r"evaluate_fn\(round, weights\).*config"):
        _run(lambda cid: AddOne(), evaluate_fn=evaluate_fn)
    assert calls == []
    # A third argument with a default is fine.
    ran = _run(lambda cid: AddOne(), evaluate_fn=lambda rnd, weights, config=None: (1.0, {}))
    assert [r.central_loss for r in ran.history.rounds] == [1.0, 1.0]


def test_serve_refuses_flower_s_evaluate_fn_before_it_listens(tmp_path: Path) -> None:
    from covey.deploy import serve

    listened: list[int] = []

    def evaluate_fn(server_round: int, parameters: Any, config: dict[str, Any]) -> Any:
        return 0.0, {}

    with pytest.raises(TypeError, match=r"evaluate_fn\(round, weights\).*config"):
        serve(
            covey.FedAvg(),
            1,
            init(),
            "127.0.0.1:0",
            insecure=True,
            evaluate_fn=evaluate_fn,  # type: ignore[arg-type]
            run_dir=tmp_path / "run",
            on_listen=listened.append,
            wait_timeout=1,
        )
    assert listened == []
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flower", "covey_name"),
    [
        ("on_fit_config_fn", "on_fit_config"),
        ("on_evaluate_config_fn", "on_evaluate_config"),
        ("fit_metrics_aggregation_fn", "fit_metrics"),
        ("evaluate_metrics_aggregation_fn", "evaluate_metrics"),
        ("initial_parameters", "initial_weights"),
        ("evaluate_fn", "simulate"),
        ("fraction_train", "fraction_fit"),
        ("min_available_nodes", "min_available_clients"),
    ],
)
def test_flower_option_names_point_to_covey_s(flower: str, covey_name: str) -> None:
    said = rf"Flower's {flower} is covey's .*\b{covey_name}\b"
    options: dict[str, Any] = {flower: None}
    with pytest.raises(TypeError, match=said):
        covey.FedAvg(**options)
    with pytest.raises(TypeError, match=said):
        covey.Strategy(**options)


@pytest.mark.parametrize(
    ("flower", "why"),
    [
        # These got no pointer at all, then "Flower's arrayrecord_key is covey's nothing: ...".
        ("arrayrecord_key", "the model is one dict of named arrays"),
        ("configrecord_key", "on_fit_config's dict is the config clients get"),
        ("inplace", "aggregation never writes into the clients' replies"),
        ("weighted_by_key", "means are weighted by each reply's num_examples"),
        ("eta_l", "the clients' learning rate is their own setting; send it with on_fit_config"),
    ],
)
def test_flower_options_covey_has_none_of_are_said_so(flower: str, why: str) -> None:
    said = f"Flower's {flower} has no counterpart in covey: {why}"
    options: dict[str, Any] = {flower: None}
    for make in (covey.FedAvg, covey.Strategy):
        with pytest.raises(TypeError) as raised:
            make(**options)
        assert said in str(raised.value)
        assert "covey's nothing" not in str(raised.value)


@pytest.mark.parametrize("preset", [covey.Krum, covey.MultiKrum, covey.Bulyan])
def test_flower_s_name_for_a_required_option_points_to_covey_s(preset: Any) -> None:
    # Flower's Krum(num_malicious_clients=1) in place of covey's required f.
    said = r"Flower's num_malicious_clients is covey's f\b"
    with pytest.raises(TypeError, match=said):
        preset(num_malicious_clients=1)
    with pytest.raises(TypeError, match=said):
        preset(num_malicious_clients=1, num_clients_to_keep=3)


@pytest.mark.parametrize(
    ("name", "given", "said"),
    [
        ("Krum", {"num_malicious": 1}, r"Krum\(\) got .*\[.num_malicious.\]; it needs f$"),
        ("FedProx", {"mu": 0.1}, r"FedProx\(\) got .*\['mu'\]; it needs proximal_mu$"),
        ("MultiKrum", {"ff": 1, "m": 2}, r"\['ff'\]; did you mean f\?; it needs f$"),
        ("Bulyan", {"F": 1, "fraction_fit": 0.5}, r"\['F'\]; it needs f$"),
    ],
)  # fmt: skip
def test_a_misspelt_required_option_is_named_with_the_one_missing(
    name: str, given: dict[str, Any], said: str
) -> None:
    preset = getattr(covey, name)
    # Before, "Krum() missing 1 required keyword-only argument: 'f'", which did not
    # name the keyword given in its place.
    with pytest.raises(TypeError, match=said):
        preset(**given)
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument"):
        preset(fraction_fit=0.5)  # only the required one missing: Python's own error


@pytest.mark.parametrize(
    ("preset", "flower", "covey_name"),
    [
        # Flower's message API strategies (flwr.serverapp.strategy), the ones 1.42 documents.
        (covey.FedAvg, "train_metrics_aggr_fn", "fit_metrics"),
        (covey.FedAvg, "evaluate_metrics_aggr_fn", "evaluate_metrics"),
        (covey.Krum, "num_malicious_nodes", "f"),
        (covey.Bulyan, "num_malicious_nodes", "f"),
        (covey.QFedAvg, "client_learning_rate", "client_lr"),
        (covey.QFedAvg, "train_loss_key", "loss_key"),
    ],
)
def test_flower_s_message_api_option_names_point_to_covey_s(
    preset: Any, flower: str, covey_name: str
) -> None:
    with pytest.raises(TypeError, match=rf"Flower's {flower} is covey's .*\b{covey_name}\b"):
        preset(**{flower: 1})


def test_flower_s_multikrum_selection_count_points_to_m() -> None:
    with pytest.raises(TypeError, match=r"Flower's num_nodes_to_select is covey's MultiKrum\(m="):
        covey.MultiKrum(f=1, num_nodes_to_select=3)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (
            lambda: covey.Krum(num_malicious_clients=1, fraction_fitt=0.5),  # type: ignore[call-arg]
            "['fraction_fitt', 'num_malicious_clients']; fraction_fitt: did you mean "
            "fraction_fit?; Flower's num_malicious_clients is covey's f",
        ),
        (
            lambda: covey.Bulyan(f=1, num_malicious_clients=1, colour=2),  # type: ignore[call-arg]
            "['colour', 'num_malicious_clients']; Flower's num_malicious_clients is covey's f",
        ),
    ],
)
def test_flower_s_name_beside_another_unknown_option_names_both(make: Any, said: str) -> None:
    # Before, the error listed Flower's name alone, and the other one failed only once
    # that was fixed.
    with pytest.raises(TypeError, match=re.escape(said)):
        make()


def test_an_unknown_option_is_still_named() -> None:
    with pytest.raises(TypeError, match="unexpected keyword arguments: \\['colour'\\]"):
        covey.FedAvg(colour=1)  # type: ignore[call-arg]


# -- custom strategies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (
            lambda: covey.FedAvg(fraction_fitt=0.5),  # type: ignore[call-arg]
            "; did you mean fraction_fit?",
        ),
        (
            lambda: covey.FedAdam(etaa=0.1),  # type: ignore[call-arg]
            "; did you mean eta?",
        ),
        (
            lambda: covey.Strategy(min_fit_client=2),  # type: ignore[call-arg]
            "; did you mean min_fit_clients?",
        ),
    ],
)
def test_a_misspelt_option_is_named_with_the_closest_one(make: Any, hint: str) -> None:
    with pytest.raises(TypeError) as refused:
        make()
    assert str(refused.value).endswith(hint), refused.value


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (
            lambda: covey.FedAvg(lr=0.1),  # type: ignore[call-arg]
            "['lr']; lr is the clients' setting: send it to them each round with "
            "on_fit_config=lambda round: {'lr': ...}, and read it from their config",
        ),
        (
            lambda: covey.FedAdam(learning_rate=0.1),  # type: ignore[call-arg]
            "read it from their config (the server's own step size is eta)",
        ),
        (
            lambda: covey.FedAvgM(lr=0.1),  # type: ignore[call-arg]
            "(the server's own step size is server_lr)",
        ),
        (
            lambda: covey.FedAvg(epochs=2, batch_size=8),  # type: ignore[call-arg]
            "; batch_size is the clients' setting: send it to them each round with "
            "on_fit_config=lambda round: {'batch_size': ...}, and read it from their config; "
            "epochs is the clients' setting",
        ),
        (
            lambda: covey.FedProx(proximal_mu=0.1, local_epochs=2),  # type: ignore[call-arg]
            "local_epochs is the clients' setting",
        ),
        (
            lambda: covey.FedAvg(num_rounds=3),  # type: ignore[call-arg]
            "; num_rounds is no strategy option: give the number of rounds to the run, "
            "simulate(rounds=...) or serve(strategy, rounds, ...)",
        ),
    ],
)
def test_a_client_setting_or_round_count_given_to_a_strategy_says_where_it_goes(
    make: Any, hint: str
) -> None:
    with pytest.raises(TypeError) as refused:
        make()
    assert hint in str(refused.value), refused.value


@pytest.mark.parametrize(
    ("strategy", "said"),
    [
        ("fedavg", "not the string 'fedavg': pass covey.FedAvg()"),
        ("krum", "not the string 'krum': pass covey.Krum()"),
        (covey.FedAvg, "not the function FedAvg itself: call it, covey.FedAvg()"),
    ],
)
def test_a_strategy_given_by_name_or_uncalled_is_told_what_to_pass(
    strategy: Any, said: str
) -> None:
    # Before, "'str' object has no attribute 'client_count'".
    with pytest.raises(TypeError, match=re.escape(said)):
        covey.simulate(lambda cid: AddOne(), 2, 1, strategy, init())
    from covey.deploy import serve

    with pytest.raises(TypeError, match=re.escape(said)):
        serve(strategy, 1, init(), "127.0.0.1:0", insecure=True)


@pytest.mark.parametrize(
    ("strategy", "said"),
    [
        ("fedavg", "not the string 'fedavg': pass covey.FedAvg()"),
        (covey.FedAvg, "not the function FedAvg itself: call it, covey.FedAvg()"),
        (None, "strategy must be a covey.Strategy (e.g. covey.FedAvg()), got NoneType"),
    ],
)
def test_a_wrapper_given_a_strategy_by_name_or_uncalled_is_told_what_to_pass(
    strategy: Any, said: str
) -> None:
    # Before, "'str' object has no attribute 'asynchronous'".
    from covey import privacy, secagg

    dp: dict[str, Any] = {"noise_multiplier": 1.0, "clip": 0.5, "delta": 1e-5}
    with pytest.raises(TypeError, match=re.escape(said)):
        privacy.central(strategy, **dp)
    with pytest.raises(TypeError, match=re.escape(said)):
        privacy.dp_ftrl(strategy, tree_rounds=4, **dp)
    with pytest.raises(TypeError, match=re.escape(said)):
        secagg.secure(strategy, clip_range=0.5)


@pytest.mark.parametrize(
    ("wrapper", "flower", "said"),
    [
        ("central", {"clipping_norm": 1.0}, "Flower's clipping_norm is covey's clip"),
        (
            "central",
            {"num_sampled_clients": 8},
            "Flower's num_sampled_clients is covey's expected_clients",
        ),
        (
            "central",
            {"clip_norm_lr": 0.2},
            "AdaptiveClipping(learning_rate=...), passed as adaptive=",
        ),
        ("central", {"clp": 1.0}, "['clp']; did you mean clip?"),
        ("dp_ftrl", {"clipping_norm": 1.0}, "Flower's clipping_norm is covey's clip"),
        ("secure", {"clipping_range": 8.0}, "Flower's clipping_range is covey's clip_range"),
        ("secure", {"max_weight": 1000}, "Flower's max_weight is covey's max_examples"),
        ("secure", {"reconstruction_threshold": 4}, "threat=ThreatModel(corrupt_rate=..."),
        ("secure", {"bitz": 8}, "['bitz']; did you mean bits?"),
    ],
)
def test_a_privacy_or_secagg_wrapper_given_flower_s_option_names_covey_s(
    wrapper: str, flower: dict[str, Any], said: str
) -> None:
    # Before, Python's "central() got an unexpected keyword argument 'clipping_norm'".
    from covey import privacy, secagg

    required: dict[str, dict[str, Any]] = {
        "central": {"noise_multiplier": 1.0, "delta": 1e-5},
        "dp_ftrl": {"noise_multiplier": 1.0, "delta": 1e-5, "tree_rounds": 4},
        "secure": {"clip_range": 8.0},
    }
    call: dict[str, Any] = {
        "central": privacy.central,
        "dp_ftrl": privacy.dp_ftrl,
        "secure": secagg.secure,
    }
    # The required option Flower names otherwise is left out: the hint comes first.
    given = {
        k: v
        for k, v in required[wrapper].items()
        if not (k == "clip_range" and flower.keys() & {"clipping_range"})
    }
    with pytest.raises(TypeError, match=re.escape(f"{wrapper}() got unexpected keyword")) as info:
        call[wrapper](covey.FedAvg(), **given, **flower)
    assert said in str(info.value)
    assert "noise_multiplier" in inspect.signature(privacy.central).parameters  # still shown


def test_subclassing_a_preset_says_presets_are_functions() -> None:
    with pytest.raises(TypeError, match=r"covey\.FedAvg is a function.*covey\.Strategy"):

        class SaveModel(covey.FedAvg):  # type: ignore[misc,valid-type]
            pass


@pytest.mark.parametrize("method", ["aggregate_fit", "configure_fit", "aggregate", "evaluate"])
def test_a_strategy_subclass_defining_a_method_the_loop_never_calls_is_refused(
    method: str,
) -> None:
    with pytest.raises(TypeError, match="aggregator"):
        type("Mine", (covey.Strategy,), {method: lambda self, *a: None})


def test_a_strategy_subclass_overriding_fit_config_configures_each_round() -> None:
    seen: list[dict[str, Any]] = []

    class Recording(AddOne):
        def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
            seen.append(dict(config))
            return super().fit(weights, config)

    class Decaying(covey.Strategy):
        def fit_config(self, round: int) -> dict[str, Any]:
            return {"lr": 0.1 / round}

    strategy = Decaying(fraction_evaluate=0.0, min_fit_clients=1, fraction_fit=1 / 3)
    _run(lambda cid: Recording(cid), strategy=strategy, rounds=2)
    assert seen == [{"lr": 0.1, "round": 1}, {"lr": 0.05, "round": 2}]


# -- client properties --------------------------------------------------------------------


def test_a_client_with_only_get_properties_is_told_covey_calls_properties() -> None:
    class FlowerProps(AddOne):
        def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
            return {"site": "a"}

    strategy = covey.FedAvg(fraction_evaluate=0.0, where={"site": "a"})
    with pytest.raises(covey.FederationError, match=r"get_properties.*properties\(\)"):
        _run(lambda cid: FlowerProps(cid), strategy=strategy)


# -- in-place writes into the read-only global weights ----------------------------------


def _write_behind_numpy_s_back(array: np.ndarray) -> None:
    """Write 1.0 into ``array[0]`` as torch.from_numpy would: ignoring the read-only flag."""
    one = ctypes.c_double(1.0)
    ctypes.memmove(array.ctypes.data, ctypes.addressof(one), ctypes.sizeof(one))


class Scribbler(AddOne):
    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid == 1:
            _write_behind_numpy_s_back(weights["w"])
        return super().fit(weights, config)


def test_inline_a_write_that_bypasses_the_read_only_flag_stops_the_run_clearly() -> None:
    """The global model changed under the clients: the run stops rather than go on corrupted."""
    with pytest.raises(RuntimeError, match=r"round 1.*changed in place.*torch\.tensor") as info:
        _run(lambda cid: Scribbler(cid))
    assert "clients 0, 1, 2" in str(info.value)


def test_inline_honest_clients_pass_the_in_place_check() -> None:
    result = _run(lambda cid: AddOne(cid), rounds=2, strategy=covey.FedAvg())
    assert result.weights["w"].tolist() == [2.0] * 4


class QuietScribbler(Scribbler):
    """A Scribbler whose worker dies without the interpreter's crash report on stderr."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid == 1:
            faulthandler.disable()  # in the forked worker only
        return super().fit(weights, config)


@pytest.mark.slow
def test_process_backend_a_write_into_the_mapped_model_names_the_likely_cause() -> None:
    """In a worker the model is a read-only mapping: the write is a SIGSEGV, named as such."""
    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=1)
    result = _run(QuietScribbler, strategy=strategy, backend="process", num_workers=2)
    failures = result.history.rounds[1].fit_failures
    assert [f.cid for f in failures] == [1]
    assert "segmentation fault" in failures[0].error
    assert "read-only" in failures[0].error
    assert "BatchNorm" not in failures[0].error  # its model has no running statistics


class NormScribbler(AddOne):
    """Writes into a BatchNorm's running mean as a layer in train mode does, behind NumPy."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid == 1:
            faulthandler.disable()  # in the forked worker only
            _write_behind_numpy_s_back(weights["1.running_mean"])
        return super().fit(weights, config)


@pytest.mark.slow
def test_process_backend_a_write_into_batch_norm_statistics_names_train_mode() -> None:
    # The inline and Ray backends named BatchNorm's running statistics as the likely cause,
    # a process worker's segmentation fault did not.
    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=1)
    model = {"0.weight": np.zeros(4), "1.running_mean": np.zeros(4), "1.running_var": np.ones(4)}
    result = covey.simulate(NormScribbler, 3, 1, strategy, model, backend="process", num_workers=2)
    failures = result.history.rounds[1].fit_failures
    assert [f.cid for f in failures] == [1]
    said = failures[0].error
    assert "segmentation fault" in said
    assert "BatchNorm running statistics ('1.running_mean', ...)" in said
    assert "a BatchNorm layer in train mode updates them in place" in said
    assert said.endswith("running this client")


def test_multikrum_preset_weighs_by_examples_when_asked_as_flower_s_does() -> None:
    """Flower's MultiKrum averages its choice weighted by examples: ``weighted=True`` here."""
    results = [
        FitResult(weights={"w": np.array([v])}, num_examples=n)
        for v, n in ((0.0, 1), (1.0, 3), (1.1, 1), (0.9, 1), (50.0, 1))
    ]
    start = {"w": np.zeros(1)}
    plain = covey.MultiKrum(f=1, m=3).aggregate(start, results)["w"][0]
    weighted = covey.MultiKrum(f=1, m=3, weighted=True).aggregate(start, results)["w"][0]
    assert plain == pytest.approx((1.0 + 1.1 + 0.9) / 3)
    assert weighted == pytest.approx((3 * 1.0 + 1.1 + 0.9) / 5)
    assert covey.MultiKrum(f=1, weighted=True).describe()["hyperparameters"]["weighted"] is True


@pytest.mark.parametrize(
    "array",
    [
        np.arange(13, dtype=np.float64),
        np.arange(13, dtype=np.float16),  # 26 bytes: three words and two trailing bytes
        np.array(2.5),
        np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2],  # not contiguous
        np.array([True, False, True]),
    ],
    ids=["float64", "float16", "0-d", "strided", "bool"],
)
def test_the_inline_fingerprint_sees_a_change_to_any_single_element(array: np.ndarray) -> None:
    from covey.core._weights import fingerprint

    before = fingerprint({"a": array})
    assert fingerprint({"a": array.copy()}) == before
    flat = array.reshape(-1).copy()
    for i in range(flat.size):
        changed = flat.copy()
        changed[i] = not changed[i] if changed.dtype == bool else changed[i] + 1
        assert fingerprint({"a": changed.reshape(array.shape)}) != before, i


def test_a_ray_actor_refuses_the_replies_of_a_chunk_whose_lent_weights_changed() -> None:
    """On Ray the server's model is safe, but later clients of the actor trained from the write."""
    from covey.core import _codec
    from covey.sim._ray import ClientHost

    host = ClientHost(lambda cid: Scribbler(cid), None)
    encoded = _codec.encode({"w": np.zeros(4)})  # a bytearray: writable behind the view
    items: list[Any] = [(cid, "fit", 1, {}, None) for cid in (0, 1, 2)]
    replies = [r for sent in host.run(7, encoded, items) for r in sent]
    assert [r.cid for r in replies] == [0, 1, 2]
    assert all(not r.ok for r in replies)
    assert all("changed in place" in (r.error or "") for r in replies)
    assert "clients 0, 1, 2" in (replies[0].error or "")
    # A chunk of honest clients is answered normally: the weights are decoded afresh.
    fresh = _codec.encode({"w": np.zeros(4)})
    honest = [
        r
        for sent in host.run(8, fresh, [(cid, "fit", 2, {}, None) for cid in (0, 2)])
        for r in sent
    ]
    assert all(r.ok for r in honest)
    assert [r.result.weights["w"].tolist() for r in honest] == [[1.0] * 4] * 2


def test_a_client_reading_server_round_is_told_covey_sends_round() -> None:
    class ReadsServerRound(AddOne):
        def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
            assert config["server_round"] >= 1
            return super().fit(weights, config)

    with pytest.raises(covey.FederationError) as info:
        _run(lambda cid: ReadsServerRound(cid))
    errors = _fit_failures(info.value)
    assert all("config['round']" in e for e in errors), errors
    # Sent by on_fit_config, as Flower's examples do, it is there as usual.
    sent = covey.FedAvg(fraction_evaluate=0.0, on_fit_config=lambda r: {"server_round": r})
    result = _run(lambda cid: ReadsServerRound(cid), strategy=sent)
    assert result.history.rounds[1].fit_failures == []


def test_a_flower_set_parameters_zipping_the_weights_is_told_they_are_a_dict() -> None:
    torch = pytest.importorskip("torch")
    from collections import OrderedDict

    class FlowerStyle(covey.Client):
        def __init__(self) -> None:
            self.net = torch.nn.Linear(2, 1)

        def set_parameters(self, parameters: Any) -> None:  # as Flower's quickstart has it
            params_dict = zip(self.net.state_dict().keys(), parameters)  # noqa: B905
            state_dict = OrderedDict({k: torch.tensor(v) for k, v in params_dict})
            self.net.load_state_dict(state_dict, strict=True)

        def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
            self.set_parameters(weights)
            return FitResult(weights=dict(weights), num_examples=1)

    initial = {"weight": np.zeros((1, 2), np.float32), "bias": np.zeros(1, np.float32)}
    with pytest.raises(covey.FederationError) as info:
        covey.simulate(lambda cid: FlowerStyle(), 2, 1, covey.FedAvg(), initial)
    errors = _fit_failures(info.value)
    # Before, torch's "new(): invalid data type 'str'" alone.
    assert all("invalid data type 'str'" in e for e in errors), errors
    assert all("covey.torch.load_weights(net, weights)" in e for e in errors), errors


def test_a_list_of_arrays_as_weights_is_told_to_name_them() -> None:
    with pytest.raises(TypeError, match=r"got list: name each array.*state_dict"):
        FitResult(weights=[np.ones(2)], num_examples=1)  # type: ignore[arg-type]
    with pytest.raises(covey.WeightsError, match=r"got list: name each array"):
        covey.simulate(lambda cid: AddOne(), 2, 1, None, [np.zeros(2)])  # type: ignore[arg-type]


# -- aggregate_fit as one function ----------------------------------------------------------


def _weighted_mean_of_weights(params: Any, contributions: Any) -> dict[str, np.ndarray]:
    """Flower's FedAvg aggregate_fit body, over covey's contributions."""
    total = sum(c.num_examples for c in contributions)
    out = {}
    for name, value in params.items():
        acc = sum(
            c.num_examples * c.as_weights(params)[name].astype(np.float64) for c in contributions
        )
        mean = acc / total
        out[name] = (np.rint(mean) if value.dtype.kind in "iu" else mean).astype(value.dtype)
    return out


def test_an_aggregate_fit_function_becomes_a_reducer_that_passes_the_step_checks() -> None:
    from covey.aggregate import reducer
    from covey.testing import check_aggregator

    check_aggregator(lambda: reducer(_weighted_mean_of_weights))


def test_a_reducer_from_a_function_trains_as_fedavg_does() -> None:
    from covey.aggregate import reducer

    class Scaled(AddOne):
        def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
            new = {k: v * 0.5 + self.cid for k, v in weights.items()}
            return FitResult(weights=new, num_examples=10 * (self.cid + 1))

    mine = covey.Strategy(aggregator=reducer(_weighted_mean_of_weights), fraction_evaluate=0.0)
    ours = _run(lambda cid: Scaled(cid), strategy=mine, rounds=3)
    fedavg = _run(lambda cid: Scaled(cid), strategy=covey.FedAvg(fraction_evaluate=0.0), rounds=3)
    np.testing.assert_allclose(ours.weights["w"], fedavg.weights["w"], rtol=1e-12)
    assert ours.history.rounds[1].fit_participants == [0, 1, 2]


def test_a_reducer_returning_numpy_scalars_for_0_d_weights_takes_them_as_arrays() -> None:
    # NumPy arithmetic on a 0-d array gives a scalar: the guide's own aggregate_fit was
    # refused every round ("'t' must be a NumPy array, got float64"), the model kept.
    from covey.aggregate import reducer

    def plain_mean(params: Any, contributions: Any) -> dict[str, Any]:
        total = sum(c.num_examples for c in contributions)
        return {
            name: sum(c.num_examples * c.as_weights(params)[name] for c in contributions) / total
            for name in params
        }

    step = covey.Strategy(aggregator=reducer(plain_mean))
    start = {"w": np.zeros(2), "t": np.array(1.0)}
    replies = [FitResult(weights={"w": np.ones(2), "t": np.array(3.0)}, num_examples=1)] * 2
    new = step.aggregate(start, replies)
    assert isinstance(new["t"], np.ndarray)
    assert (new["t"].shape, float(new["t"])) == ((), 3.0)


def test_a_reducer_whose_function_returns_the_wrong_layout_names_it() -> None:
    from covey.aggregate import reducer

    step = covey.Strategy(aggregator=reducer(lambda params, cs: {"v": np.zeros(4)}))
    with pytest.raises(covey.AggregationError, match=r"<lambda>.*'v'"):
        step.aggregate(init(), [FitResult(weights=init(), num_examples=1)])


def test_a_reducer_returning_the_wrong_dtype_keeps_the_model_and_says_why() -> None:
    from covey.aggregate import reducer

    def as_float32(params: Any, contributions: Any) -> dict[str, np.ndarray]:
        return {k: (v + 1).astype(np.float32) for k, v in params.items()}

    strategy = covey.Strategy(aggregator=reducer(as_float32), fraction_evaluate=0.0)
    result = _run(lambda cid: AddOne(cid), strategy=strategy)
    record = result.history.rounds[1]
    assert not record.aggregated
    assert "float32" in record.aggregate_info["error"]
    assert result.weights["w"].tolist() == [0.0] * 4


def test_flower_s_bulyan_to_keep_is_said_to_have_no_counterpart() -> None:
    # Flower's Bulyan passes to_keep on to its Krum and needs it (Bulyan(..., to_keep=0));
    # the refusal named no counterpart, where Flower's other Bulyan options get one.
    said = "Flower's to_keep has no counterpart in covey: Bulyan's Krum picks one update"
    options: dict[str, Any] = {"f": 1, "to_keep": 0}
    with pytest.raises(TypeError, match=said):
        covey.Bulyan(**options)

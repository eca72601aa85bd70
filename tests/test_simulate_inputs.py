"""covey.simulate on bad input from clients and from the caller: clear errors, the run goes on."""

from __future__ import annotations

import dataclasses
import decimal
import fractions
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from _steps import refuse_client
from covey import EvaluateResult, FitResult
from covey.aggregate import (
    chain,
    clip_norm,
    krum,
    weighted_mean,
)
from covey.core._metricvalues import MAX_CENTRAL_NAME, MAX_METRICS


class Counting(covey.Client):
    """Adds one to every weight; client 1 declares ``huge`` examples in fit and evaluate."""

    def __init__(self, cid: int, huge: int = 10**400) -> None:
        self.cid = cid
        self.huge = huge

    def examples(self) -> int:
        return self.huge if self.cid == 1 else 10

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(
            weights={k: v + 1 for k, v in weights.items()}, num_examples=self.examples()
        )

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=1.0, num_examples=self.examples())


@pytest.mark.parametrize("huge", [10**400, 2**53 + 1], ids=["10**400", "2**53+1"])
def test_a_client_declaring_absurdly_many_examples_is_one_failure(huge: int) -> None:
    """One client's num_examples past 2**53 is refused for that client; the others train."""
    result = covey.simulate(
        lambda cid: Counting(cid, huge),
        num_clients=3,
        rounds=2,
        strategy=covey.FedAvg(),
        initial_weights={"w": np.zeros(2)},
    )
    assert result.weights["w"].tolist() == [2.0, 2.0]
    for record in result.history.rounds[1:]:
        assert record.fit_participants == [0, 2]
        assert [f.cid for f in record.fit_failures] == [1]
        assert "num_examples must be at most 2**53" in record.fit_failures[0].error
        assert record.evaluate_participants == [0, 2]
        assert record.evaluate_loss == 1.0
        assert [f.cid for f in record.evaluate_failures] == [1]


class LongDoubleMetric(covey.Client):
    """Client 1 reports its metric as a NumPy long double (float128 on x86)."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        value: Any = np.longdouble(1.5) if self.cid == 1 else 0.5
        return FitResult(
            weights={k: v + 1 for k, v in weights.items()}, num_examples=1, metrics={"x": value}
        )


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_long_double_metric_is_a_number_on_every_backend(backend: str) -> None:
    # The process worker failed the client: its encoder recursed on the value forever.
    result = covey.simulate(
        LongDoubleMetric,
        3,
        1,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        backend=backend,  # type: ignore[arg-type]
        num_workers=2 if backend == "process" else None,
    )
    assert result.history[1].fit_failures == []
    assert result.history[1].fit_metrics == {"x": pytest.approx(2.5 / 3)}


def test_the_largest_allowed_count_still_aggregates() -> None:
    big = FitResult(weights={"w": np.ones(1)}, num_examples=2**53)
    small = FitResult(weights={"w": np.zeros(1)}, num_examples=1)
    assert covey.FedAvg().aggregate({"w": np.zeros(1)}, [big, small])["w"].tolist() == [1.0]


class PlusOne(covey.Client):
    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def _run_with_evaluate_fn(run_dir: Any, evaluate_fn: Any) -> None:
    covey.simulate(
        lambda cid: PlusOne(),
        num_clients=2,
        rounds=1,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights={"w": np.zeros(2)},
        evaluate_fn=evaluate_fn,
        run_dir=run_dir,
    )


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (0.5, "evaluate_fn must return (loss, metrics) or None, got float: return (loss, {})"),
        # Flower's message API: one record of metrics, the loss among them
        (
            {"loss": 0.5, "accuracy": 0.9},
            "got a dict: the loss goes apart from the metrics, as in return "
            "metrics.pop('loss'), metrics",
        ),
        ({"accuracy": 0.9}, "got a dict: the loss goes apart from the metrics"),
        # a client's (loss, num_examples, metrics)
        (
            (0.5, 10, {}),
            "got a tuple of 3 items: a client's evaluate returns (loss, num_examples, "
            "metrics), evaluate_fn returns (loss, metrics)",
        ),
        ([0.5], "evaluate_fn must return (loss, metrics) or None, got a list of 1 item"),
        (
            (0.5, 0.3),
            "evaluate_fn's metrics must be a dict of names to scalars, got float: name the "
            'value, return (loss, {"accuracy": value})',
        ),
        (("low", {}), "evaluate_fn's loss must be a number, got str"),
        # a client's bool loss is refused too; float(True) made it a loss of 1.0
        ((True, {}), "evaluate_fn's loss must be a number, got bool"),
        ((np.bool_(False), {}), "evaluate_fn's loss must be a number, got bool"),
        # "must be a scalar named by a string, got ndarray" said nothing of what to do
        (
            (0.5, {"confusion": np.eye(2)}),
            "evaluate_fn's metric 'confusion' is ndarray, expected a number, bool, str or "
            "bytes: report one number (x.mean().item(), say), or several metrics of one number "
            "each",
        ),
        ((0.5, {"note": None}), "evaluate_fn's metric 'note' is NoneType, expected a number"),
        # a name that is no str was told "metric 3 must be a scalar ..., got int": its value's type
        (
            (0.5, {3: 0.9}),
            "evaluate_fn's metrics must be named by strings, got int 3 as a name "
            "(write {'3': ...})",
        ),
    ],
)
def test_a_bad_evaluate_fn_result_names_what_is_wrong(
    tmp_path: Any, returned: Any, message: str
) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        _run_with_evaluate_fn(tmp_path, lambda rnd, weights: returned)


def test_an_evaluate_fn_loss_too_large_for_a_float_is_named(tmp_path: Any) -> None:
    # float(10**400) raised a bare OverflowError, naming neither evaluate_fn nor the loss
    with pytest.raises(
        ValueError,
        match=re.escape(
            "evaluate_fn's loss is an int of 1329 bits, too large for a float "
            "(at most about 1.8e+308)"
        ),
    ):
        _run_with_evaluate_fn(tmp_path, lambda rnd, weights: (10**400, {}))


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        # a client's result was capped at MAX_METRICS; evaluate_fn's took 5000 names
        (
            {f"k{i}": 1.0 for i in range(MAX_METRICS + 1)},
            f"evaluate_fn's metrics hold {MAX_METRICS + 1} names, over the limit of {MAX_METRICS}",
        ),
        # a name of 100,000 characters made `covey runs show` print a table of 160 KB
        (
            {"k" * 100_000: 1.0},
            f"evaluate_fn's metric {'k' * 40!r}... has a name of 100000 characters, over the "
            f"limit of {MAX_CENTRAL_NAME}: choose a shorter name",
        ),
    ],
)
def test_evaluate_fn_metrics_past_the_caps_are_refused(
    tmp_path: Any, metrics: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _run_with_evaluate_fn(tmp_path, lambda rnd, weights: (0.1, metrics))


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        (
            {"a\ud800": 1.0},
            "evaluate_fn's metric 'a\\ud800' has a name holding a lone surrogate, which is "
            "not valid Unicode text",
        ),
        (
            {"a": "v\udcff"},
            "evaluate_fn's metric 'a' is a str holding a lone surrogate ('v\\udcff')",
        ),
    ],
)
def test_evaluate_fn_metrics_holding_a_lone_surrogate_are_refused(
    tmp_path: Any, metrics: Any, message: str
) -> None:
    # They were taken (a client's metric holding one is refused, on every backend)
    with pytest.raises(ValueError, match=re.escape(message)):
        _run_with_evaluate_fn(tmp_path, lambda rnd, weights: (0.1, metrics))


def test_evaluate_fn_metrics_at_the_caps_are_taken(tmp_path: Any) -> None:
    metrics = {f"k{i}": 1.0 for i in range(MAX_METRICS - 1)} | {"k" * MAX_CENTRAL_NAME: 2.0}
    _run_with_evaluate_fn(tmp_path, lambda rnd, weights: (0.1, metrics))


def numpy_evaluate(rnd: int, weights: Any) -> Any:
    """A central evaluation that reports NumPy scalars, as NumPy code does."""
    return np.float32(0.25), {
        "accuracy": np.float32(0.5),
        "n": np.int64(3),
        "zero_d": np.array(1.5),
    }


def test_numpy_scalars_from_evaluate_fn_become_python_scalars() -> None:
    result = covey.simulate(
        lambda cid: PlusOne(),
        num_clients=2,
        rounds=1,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights={"w": np.zeros(2)},
        evaluate_fn=numpy_evaluate,
    )
    record = result.history.rounds[1]
    assert record.central_loss == 0.25
    assert record.central_metrics == {"accuracy": 0.5, "n": 3, "zero_d": 1.5}
    assert all(type(v) in (float, int) for v in record.central_metrics.values())
    assert "zero_d" in result.history.to_json()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seed": -1}, "seed must be a non-negative int, got -1"),
        ({"seed": 1.5}, "seed must be a non-negative int, got 1.5"),
        ({"round_timeout": -1}, "round_timeout must be None or a positive number, got -1"),
        ({"round_timeout": 0}, "round_timeout must be None or a positive number, got 0"),
        # the process backend's deadline overflowed in round 1 (OverflowError)
        (
            {"round_timeout": 10**400},
            "round_timeout must be None or a positive number, got an int of 1329 bits, too large "
            "for a float; None sets no limit",
        ),
        ({"client_cache": -1}, "client_cache must be None or a non-negative int, got -1"),
        (
            {"strategy": covey.FedBuff(buffer_size=2), "round_deadline": 1.0},
            "round_deadline applies to synchronous rounds; FedBuff is asynchronous",
        ),
        (
            {"client_cache": 0, "backend": "process"},
            "client_cache applies to backend='inline' and 'ray' only",
        ),
        (
            {"client_durations": [1.0, 2.0], "round_deadline": 1.5},
            "client_durations has 2 values but num_clients=4",
        ),
        (
            {"strategy": covey.FedAvg(fraction_fit=0.1, min_fit_clients=0)},
            "the strategy samples no client per round: fraction_fit=0.1 of num_clients=4",
        ),
        # A trace short of clients used to fail the round that first sampled one
        # past it, any number of rounds into the run.
        (
            {"availability": np.ones((3, 5), dtype=bool)},
            "the availability trace has 3 rows (trace[cid, t]) but num_clients=4",
        ),
        (
            {
                "availability": np.ones((3, 5), dtype=bool),
                "strategy": covey.FedBuff(buffer_size=2),
            },
            "the availability trace has 3 rows (trace[cid, t]) but num_clients=4",
        ),
    ],
)
def test_bad_simulate_options_are_refused_before_any_round(
    options: dict[str, Any], message: str
) -> None:
    built: list[int] = []

    def client_fn(cid: int) -> covey.Client:
        built.append(cid)
        return PlusOne()

    kwargs: dict[str, Any] = {"strategy": covey.FedAvg(fraction_evaluate=0.0), **options}
    with pytest.raises(ValueError, match=re.escape(message)):
        covey.simulate(client_fn, 4, 1, initial_weights={"w": np.zeros(2)}, **kwargs)
    assert built == []


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_dir_that_is_no_path_is_named(resume: bool) -> None:
    # Before, "expected str, bytes or os.PathLike object, not int", naming no option.
    from covey.deploy import serve

    said = "run_dir must be a folder's path (a str or a pathlib.Path), got int"
    with pytest.raises(TypeError, match=re.escape(said)):
        covey.simulate(lambda cid: PlusOne(), 2, 1, covey.FedAvg(), {"w": np.zeros(2)},
                       run_dir=123, resume=resume)  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(TypeError, match=re.escape(said)):
        serve(covey.FedAvg(), 1, {"w": np.zeros(2)}, "127.0.0.1:0", insecure=True,
              run_dir=123, resume=resume)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        (covey.Krum(f=1), "Krum with f=1 needs at least 2f+3 = 5 clients per round"),
        (covey.MultiKrum(f=1), "Multi-Krum with f=1 needs at least 2f+3 = 5 clients per round"),
        (covey.Bulyan(f=0), "Bulyan with f=0 needs at least 4f+3 = 3 clients per round"),
        (
            covey.Strategy(aggregator=chain(clip_norm(1.0), krum(1))),
            "Krum with f=1 needs at least 2f+3 = 5 clients per round",
        ),
    ],
)
def test_a_robust_rule_whose_need_no_round_meets_is_refused_before_any_round(
    strategy: covey.Strategy, message: str
) -> None:
    # It used to run every round as a logged no-op and return the initial model.
    built: list[int] = []

    def client_fn(cid: int) -> covey.Client:
        built.append(cid)
        return PlusOne()

    strategy = dataclasses.replace(strategy, fraction_evaluate=0.0, min_fit_clients=2)
    num_clients = 2 if strategy.name == "Bulyan" else 3
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        covey.simulate(client_fn, num_clients, 2, strategy, {"w": np.zeros(2)})
    assert f"this run samples {num_clients}" in str(caught.value)
    assert strategy.name in str(caught.value)
    assert built == []
    # Enough clients: the rule runs and moves the model.
    result = covey.simulate(lambda cid: PlusOne(), 7, 1, strategy, {"w": np.zeros(2)})
    assert result.weights["w"].tolist() != [0.0, 0.0]


@pytest.mark.parametrize("buffer_size", [3, 4])
def test_an_asynchronous_robust_rule_whose_buffer_is_short_of_its_need_is_refused(
    buffer_size: int,
) -> None:
    # Each asynchronous update aggregates buffer_size replies: with fewer than Krum needs,
    # every update used to be a logged no-op and the run returned the initial model.
    built: list[int] = []

    def client_fn(cid: int) -> covey.Client:
        built.append(cid)
        return PlusOne()

    strategy = covey.Strategy(
        aggregator=chain(clip_norm(10.0), krum(1)),
        buffer_size=buffer_size,
        fraction_evaluate=0.0,
        name="AsyncKrum",
    )
    with pytest.raises(ValueError, match=re.escape("Krum with f=1 needs at least 2f+3 = 5")) as e:
        covey.simulate(client_fn, 10, 2, strategy, {"w": np.zeros(2)})
    assert f"buffer_size={buffer_size}" in str(e.value)
    assert "AsyncKrum" in str(e.value)
    assert built == []
    # A buffer that holds enough replies: the rule runs and moves the model.
    enough = dataclasses.replace(strategy, buffer_size=5, min_fit_clients=5)
    result = covey.simulate(lambda cid: PlusOne(), 10, 1, enough, {"w": np.zeros(2)})
    assert result.weights["w"].tolist() != [0.0, 0.0]


@pytest.mark.parametrize(
    "strategy", [covey.FedAvg(fraction_evaluate=0.0), covey.FedBuff(buffer_size=2)]
)
def test_client_durations_that_are_one_number_are_refused_naming_the_option(
    strategy: covey.Strategy,
) -> None:
    with pytest.raises(TypeError, match=r"client_durations must be a .* got float"):
        covey.simulate(
            lambda cid: PlusOne(),
            4,
            1,
            strategy,
            {"w": np.zeros(2)},
            client_durations=2.0,  # type: ignore[arg-type]
            round_deadline=1.5,
        )


def test_numpy_seeds_and_a_selector_that_picks_from_a_zero_fraction_are_fine() -> None:
    strategy = covey.FedAvg(
        fraction_fit=0.1,
        min_fit_clients=0,
        fraction_evaluate=0.0,
        selector=lambda candidates, rnd, rng: [0, 1],
    )
    result = covey.simulate(
        lambda cid: PlusOne(),
        4,
        1,
        strategy,
        {"w": np.zeros(2)},
        seed=np.int64(3),
    )
    assert result.history.rounds[1].fit_participants == [0, 1]


class Sleepy(covey.Client):
    """Client 1 is slower than the round's timeout; the others are quick."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid == 1:
            time.sleep(1.5)
        return FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def test_inline_round_timeout_drops_the_slow_client_not_the_ones_after_it() -> None:
    result = covey.simulate(
        Sleepy,
        num_clients=3,
        rounds=1,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights={"w": np.zeros(2)},
        round_timeout=0.5,
    )
    record = result.history.rounds[1]
    assert record.fit_participants == [0, 2]
    assert [f.cid for f in record.fit_failures] == [1]
    assert record.fit_failures[0].error.startswith("no reply in time: its fit task took")
    assert result.weights["w"].tolist() == [1.0, 1.0]


BOOL_PRESETS = {
    "FedAvg": covey.FedAvg,
    "FedAvgM": covey.FedAvgM,
    "FedAdam": covey.FedAdam,
    "FedYogi": covey.FedYogi,
    "FedAdagrad": covey.FedAdagrad,
    "FedMedian": covey.FedMedian,
    "FedTrimmedAvg": covey.FedTrimmedAvg,
    "Krum": lambda: covey.Krum(f=1),
    "MultiKrum": lambda: covey.MultiKrum(f=1),
    "Bulyan": lambda: covey.Bulyan(f=0),
    "FedRFA": covey.FedRFA,
}


@pytest.mark.parametrize("form", ["weights", "delta"])
@pytest.mark.parametrize("name", sorted(BOOL_PRESETS))
def test_every_preset_aggregates_a_model_with_a_bool_array(name: str, form: str) -> None:
    """Bool arrays are allowed in a model; their delta is the mask of flipped entries."""
    now = np.array([True, False, True, False])
    sent = np.array([False, True, True, False])  # what all five clients agree on
    kwargs: dict[str, Any] = (
        {"weights": {"mask": sent, "w": np.ones(1)}}
        if form == "weights"
        else {"delta": {"mask": sent ^ now, "w": np.ones(1)}}
    )
    results = [FitResult(num_examples=1, **kwargs) for _ in range(5)]
    new = BOOL_PRESETS[name]().aggregate({"mask": now, "w": np.zeros(1)}, results)
    assert new["mask"].dtype == bool
    assert new["mask"].tolist() == sent.tolist()


def test_fedbuff_folds_stale_updates_of_a_model_with_a_bool_array() -> None:
    class Flip(covey.Client):
        def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
            new = {"mask": ~weights["mask"], "w": weights["w"] + 1}
            return FitResult(weights=new, num_examples=1)

    result = covey.simulate(
        lambda cid: Flip(),
        num_clients=4,
        rounds=3,
        strategy=covey.FedBuff(buffer_size=2, fraction_evaluate=0.0),
        initial_weights={"mask": np.zeros(3, bool), "w": np.zeros(1)},
    )
    assert [r.aggregated for r in result.history.rounds[1:]] == [True, True, True]
    assert all(not r.fit_failures for r in result.history.rounds)


class LossReporter(covey.Client):
    """Client 1 reports a NaN loss, which q-FedAvg cannot use."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        loss = float("nan") if self.cid == 1 else 1.0 + self.cid
        new = {k: v + 1 for k, v in weights.items()}
        return FitResult(weights=new, num_examples=1, metrics={"loss": loss})


def test_a_contribution_the_step_refuses_fails_that_client_only() -> None:
    result = covey.simulate(
        LossReporter, 4, 2, covey.QFedAvg(fraction_evaluate=0.0), {"w": np.zeros(2)}
    )
    for record in result.history.rounds[1:]:
        assert record.aggregated
        assert record.fit_participants == [0, 2, 3]
        assert [f.cid for f in record.fit_failures] == [1]
        assert "refused by the aggregation step: qfedavg: client 1 reported loss=nan" in (
            record.fit_failures[0].error
        )
    assert result.weights["w"][0] > 0


def test_a_refused_contribution_stops_a_run_that_accepts_no_failures() -> None:
    strategy = covey.QFedAvg(fraction_evaluate=0.0, accept_failures=False)
    with pytest.raises(covey.FederationError, match="client 1: refused by the aggregation"):
        covey.simulate(LossReporter, 4, 1, strategy, {"w": np.zeros(2)})


def test_fedbuff_goes_on_without_a_contribution_the_step_refuses() -> None:
    strategy = covey.Strategy(
        aggregator=chain(refuse_client(1), weighted_mean()),
        fraction_evaluate=0.0,
        buffer_size=2,
    )
    result = covey.simulate(lambda cid: PlusOne(), 4, 3, strategy, {"w": np.zeros(2)})
    records = result.history.rounds[1:]
    assert [r.aggregated for r in records] == [True, True, True]
    assert all(1 not in r.fit_participants for r in records)
    assert any(f.cid == 1 and "not welcome" in f.error for r in records for f in r.fit_failures)


def per_class(results: Any) -> dict[str, Any]:
    """Custom fit metrics: a per-class array, as a user might report it."""
    return {"per_class": np.mean([m["per_class"] for _, m in results], axis=0)}


class PerClass(covey.Client):
    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        new = {k: v + 1 for k, v in weights.items()}
        metrics: dict[str, Any] = {"per_class": np.arange(3.0)}  # not a scalar: custom metrics
        return FitResult(weights=new, num_examples=1, metrics=metrics)


def test_array_metrics_from_a_custom_fit_metrics_are_written_to_history_json(
    tmp_path: Any,
) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0, fit_metrics=per_class)
    result = covey.simulate(
        lambda cid: PerClass(), 2, 2, strategy, {"w": np.zeros(2)}, run_dir=tmp_path
    )
    saved = covey.History.from_json((tmp_path / "history.json").read_text())
    assert saved.rounds[2].fit_metrics == {"per_class": [0.0, 1.0, 2.0]}
    assert result.history.rounds[2].aggregated


def test_a_metric_history_json_cannot_hold_is_named() -> None:
    # Refused in the round that made it, naming the function: a run folder failed to
    # save that round, and a history kept in memory failed only when written.
    strategy = covey.FedAvg(fraction_evaluate=0.0, fit_metrics=lambda results: {"x": object()})
    with pytest.raises(
        TypeError, match=r"fit_metrics .* in round 1 .* cannot write a value of type object"
    ):
        covey.simulate(lambda cid: PerClass(), 2, 1, strategy, {"w": np.zeros(2)})


@pytest.mark.parametrize("value", [float("nan"), 1.5, -0.1])
def test_a_fraction_that_is_no_number_in_0_1_is_refused_by_name(value: Any) -> None:
    with pytest.raises(ValueError, match=r"fraction_fit must be in \[0, 1\], got"):
        covey.FedAvg(fraction_fit=value)
    with pytest.raises(ValueError, match=r"fraction_evaluate must be in \[0, 1\]"):
        covey.FedMedian(fraction_evaluate=value)


@pytest.mark.parametrize(("value", "kind"), [("0.5", "str"), (None, "NoneType"), (True, "bool")])
def test_a_fraction_that_is_no_number_is_a_type_error_naming_the_type(
    value: Any, kind: str
) -> None:
    with pytest.raises(TypeError, match=rf"fraction_fit must be a number in \[0, 1\], got {kind}"):
        covey.FedAvg(fraction_fit=value)
    with pytest.raises(TypeError, match=rf"fraction_evaluate must be a number .*got {kind}"):
        covey.FedMedian(fraction_evaluate=value)


def test_numpy_fractions_are_numbers() -> None:
    assert covey.FedAvg(fraction_fit=np.float32(0.5)).num_fit(10) == 5


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_client_fn_returning_none_is_named(backend: str) -> None:
    def client_fn(cid: int) -> covey.Client | None:
        return None if cid == 1 else PlusOne()

    result = covey.simulate(
        client_fn,  # type: ignore[arg-type]
        3,
        1,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        backend=backend,  # type: ignore[arg-type]
        num_workers=1,
    )
    failures = result.history.rounds[1].fit_failures
    assert [(f.cid, f.error) for f in failures] == [
        (1, "client_fn(1) returned None, expected a covey.Client")
    ]


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_client_fn_returning_the_client_class_is_named(backend: str) -> None:
    # `lambda cid: PlusOne` (the call forgotten) was told to define fit(self, weights,
    # config), which its class does: "type.fit(self, weights, config) cannot be called".
    def client_fn(cid: int) -> Any:
        return PlusOne if cid == 1 else PlusOne()

    result = covey.simulate(
        client_fn,
        3,
        2,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        backend=backend,  # type: ignore[arg-type]
        num_workers=1,
    )
    said = "client_fn(1) returned the class PlusOne, not a client: return an instance of it"
    for rnd in (1, 2):
        record = result.history.rounds[rnd]
        assert [(f.cid, f.error) for f in record.fit_failures] == [(1, f"{said} (PlusOne(...))")]


@pytest.mark.parametrize("kind", ["generator", "coroutine"])
@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_client_fn_yielding_its_client_or_async_is_told_to_return_it(
    backend: str, kind: str
) -> None:
    # It was told "returned generator, not a client: it has no fit() method"; an
    # async one "returned coroutine", and its coroutine then warned it was never awaited.
    if kind == "generator":

        def make_client(cid: int) -> Any:
            yield PlusOne()

        hint = (
            "make_client yields the client, which makes it a generator function; return the "
            "client instead (return MyClient(...), not yield)"
        )
    else:

        async def make_client(cid: int) -> Any:  # type: ignore[misc]
            return PlusOne()

        hint = (
            "make_client is a coroutine function (async def), which returns a coroutine; "
            "define it with def and return the client"
        )
    said = f"client_fn(0) returned a {kind}, not a client: {hint}"
    with pytest.raises(covey.FederationError, match=re.escape(said)):
        covey.simulate(
            make_client,
            2,
            1,
            covey.FedAvg(fraction_evaluate=0.0),
            {"w": np.zeros(2)},
            backend=backend,  # type: ignore[arg-type]
            num_workers=1,
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_fit_config": {"lr": 0.1}}, "on_fit_config must be a function, got dict"),
        ({"on_evaluate_config": {"k": 1}}, "on_evaluate_config must be a function, got dict"),
        ({"fit_metrics": "mean"}, "fit_metrics must be a function, got str"),
        ({"evaluate_metrics": None}, "evaluate_metrics must be a function, got NoneType"),
        ({"selector": [0, 1]}, "selector must be a (candidates, round, rng) -> cids function"),
        ({"accept_failures": "no"}, "accept_failures must be True or False, got 'no'"),
    ],
)
def test_strategy_options_that_must_be_functions_are_checked_by_name(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        covey.FedAvg(**options)


def test_fedbuff_concurrency_must_be_a_positive_int() -> None:
    with pytest.raises(ValueError, match="concurrency must be None or an int >= 1, got 0"):
        covey.FedBuff(concurrency=0)


def test_a_history_iterates_over_its_rounds() -> None:
    """``for record in history`` ends after the last round (it raised KeyError there)."""
    result = covey.simulate(
        lambda cid: PlusOne(), 2, 2, covey.FedAvg(fraction_evaluate=0.0), {"w": np.zeros(2)}
    )
    assert [record.round for record in result.history] == [0, 1, 2]
    assert list(result.history) == result.history.rounds
    resumed = covey.History(rounds=result.history.rounds[2:])  # no round 0
    assert [record.round for record in resumed] == [2]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"availability": 2.0}, "availability must be a probability"),
        ({"compression": "zzz"}, "unknown compression"),
        ({"round_deadline": -1.0}, "the round deadline \\(round_deadline\\) must be a positive"),
    ],
)
def test_options_refused_with_the_process_backend_leave_no_worker_running(
    options: dict[str, Any], message: str
) -> None:
    import multiprocessing

    before = {p.pid for p in multiprocessing.active_children()}
    with pytest.raises(ValueError, match=message) as refused:
        covey.simulate(
            lambda cid: PlusOne(),
            4,
            1,
            covey.FedAvg(fraction_evaluate=0.0),
            {"w": np.zeros(2)},
            backend="process",
            num_workers=2,
            **options,
        )
    # The error's traceback is kept, as a notebook keeps the last one: the workers
    # must be stopped by simulate() itself, not by the collector.
    assert refused.value.__traceback__ is not None
    assert {p.pid for p in multiprocessing.active_children()} == before


def test_counts_computed_with_numpy_are_taken_like_python_ints() -> None:
    # Settings typed int refused np.int64(3) ("must be a non-negative int, got
    # np.int64(3)") where the partitioners, Krum's f and FitResult took it.
    n: Any = np.int64  # typed as the ints and floats the settings are
    f: Any = np.float32
    strategy = covey.FedAvg(
        min_fit_clients=n(3), min_evaluate_clients=n(0), fraction_evaluate=f(0.0)
    )
    assert type(strategy.min_fit_clients) is int
    assert type(strategy.fraction_evaluate) is float
    buffered = covey.FedBuff(buffer_size=n(2), concurrency=n(3), max_staleness=n(4))
    assert (buffered.buffer_size, buffered.min_fit_clients, buffered.max_staleness) == (2, 3, 4)
    result = covey.simulate(
        lambda cid: Counting(cid, huge=10),
        n(4),
        n(2),
        strategy,
        {"w": np.zeros(2)},
        seed=n(1),
        client_cache=n(2),
    )
    assert [r.round for r in result.history] == [0, 1, 2]
    assert result.history.config["num_clients"] == 4
    assert covey.privacy.epsilon(1.0, 0.1, n(10), 1e-5) == covey.privacy.epsilon(1.0, 0.1, 10, 1e-5)
    covey.privacy.dp_ftrl(
        covey.FedAvg(), noise_multiplier=1.0, clip=1.0, delta=1e-5, tree_rounds=n(4)
    )
    covey.secagg.ThreatModel(f(0.05), f(0.05))
    with pytest.warns(UserWarning, match="honest-but-curious"):
        covey.secagg.secure(covey.FedAvg(), clip_range=f(1.0), max_examples=n(100))


class ArrayLoss(covey.Client):
    """Reports its loss as a 0-d array, as ``loss.detach().numpy()`` gives it."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        new = {k: v + 1 for k, v in weights.items()}
        metrics: dict[str, Any] = {"train_loss": np.array(self.cid + 1.0, dtype=np.float32)}
        return FitResult(weights=new, num_examples=self.cid + 1, metrics=metrics)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> covey.EvaluateResult:
        metrics: dict[str, Any] = {"accuracy": np.array(0.5 * self.cid)}
        return covey.EvaluateResult(loss=1.0, num_examples=1, metrics=metrics)


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_0d_array_metrics_are_averaged_like_numbers(backend: str) -> None:
    strategy = covey.FedAvg(fraction_evaluate=1.0)
    result = covey.simulate(
        ArrayLoss,
        2,
        1,
        strategy,
        {"w": np.zeros(2)},
        backend=backend,  # type: ignore[arg-type]
        num_workers=1,
    )
    record = result.history.rounds[1]
    assert record.fit_metrics == {"train_loss": pytest.approx(5.0 / 3.0)}
    assert record.evaluate_metrics == {"accuracy": 0.25}
    flag: dict[str, Any] = {"flag": np.array(True)}
    assert covey.strategies.weighted_metrics([(1, flag)]) == {}


@pytest.mark.parametrize("client_fn", [None, 3, "MyClient"])
def test_a_client_fn_that_cannot_be_called_is_refused_before_any_round(client_fn: Any) -> None:
    # Every client failed in round 1 with "'NoneType' object is not callable",
    # naming no client_fn.
    with pytest.raises(TypeError, match="client_fn must be a function cid -> client"):
        covey.simulate(client_fn, 2, 1, covey.FedAvg(), {"w": np.zeros(1)})


@pytest.mark.parametrize("option", ["progress", "resume"])
def test_an_on_off_option_given_as_text_is_refused(option: str) -> None:
    # progress="no" drew a bar, resume="yes" resumed: any text is true.
    options: dict[str, Any] = {option: "no"}
    simulate: Any = covey.simulate
    with pytest.raises(TypeError, match=f"{option} must be True or False, got 'no'"):
        simulate(lambda cid: covey.Client(), 2, 1, covey.FedAvg(), {"w": np.zeros(1)}, **options)


@pytest.mark.parametrize(
    ("make", "kwargs", "said"),
    [
        (covey.FedBuff, {"buffer_size": 2, "weighted": "no"}, "FedBuff weighted"),
        (covey.MultiKrum, {"f": 1, "weighted": "no"}, "multi_krum weighted"),
        (covey.aggregate.geometric_median, {"weighted": 1}, "geometric_median weighted"),
    ],
)
def test_weighted_given_as_text_is_refused(make: Any, kwargs: dict[str, Any], said: str) -> None:
    # FedBuff(weighted="no") weighed by examples, as weighted=True does.
    with pytest.raises(TypeError, match=f"{said} must be True or False"):
        make(**kwargs)


def test_a_nan_privacy_budget_makes_the_largest_nan_whichever_client_reported_it() -> None:
    # max() kept the NaN only when it came first: with the liar's id last, the round
    # read the honest clients' 2.0 as its largest local-DP epsilon.
    honest: list[tuple[int, dict[str, Any]]] = [(10, {"dp_epsilon": 2.0}) for _ in range(4)]
    liar: tuple[int, dict[str, Any]] = (10, {"dp_epsilon": float("nan")})
    for results in ([liar, *honest], [*honest, liar], [honest[0], liar, *honest[1:]]):
        combined = covey.strategies.weighted_metrics(results)
        assert np.isnan(combined["dp_epsilon"])
    assert covey.strategies.weighted_metrics(honest) == {"dp_epsilon": 2.0}


def test_a_metric_whose_weighted_sum_overflows_is_averaged_as_the_loss_is() -> None:
    # n_k * m_k overflowed to inf: a diverging model's perplexity of 1e306 on 500
    # examples averaged to inf, while the round's loss of the same value was finite.
    results: list[tuple[int, dict[str, Any]]] = [(500, {"ppl": 1e306}), (300, {"ppl": 3e306})]
    combined = covey.strategies.weighted_metrics(results)
    assert combined["ppl"] == pytest.approx(1.75e306)
    assert covey.strategies.weighted_metrics([(2, {"x": 1.7e308})] * 3) == {
        "x": pytest.approx(1.7e308)
    }
    # an infinite value still gives an infinite mean, opposite ones NaN
    assert covey.strategies.weighted_metrics([(1, {"x": np.inf}), (1, {"x": 1.0})]) == {"x": np.inf}
    both = covey.strategies.weighted_metrics([(1, {"x": np.inf}), (1, {"x": -np.inf})])
    assert np.isnan(both["x"])


def offline_lookup(cid: int, rnd: int) -> bool:
    """An availability function whose table lacks client 1."""
    return {0: True, 2: True}[cid]


def slow_lookup(cid: int, rng: Any) -> float:
    """A duration function whose table lacks client 1."""
    return {0: 1.0, 2: 2.0}[cid]


@pytest.mark.parametrize(
    ("options", "note"),
    [
        (
            {"availability": offline_lookup},
            "raised by availability offline_lookup for client 1 in round 1",
        ),
        (
            {"client_durations": slow_lookup, "round_deadline": 1.5},
            "raised by client_durations slow_lookup for client 1",
        ),
        (
            {"client_durations": slow_lookup, "strategy": covey.FedBuff(buffer_size=2)},
            "raised by client_durations slow_lookup for client 1",
        ),
    ],
)
def test_an_error_of_an_availability_or_durations_function_is_noted_with_it(
    options: dict[str, Any], note: str
) -> None:
    # a bare KeyError: 1 said neither which function raised nor for which client
    kwargs: dict[str, Any] = {"strategy": covey.FedAvg(fraction_evaluate=0.0), **options}
    with pytest.raises(KeyError) as caught:
        covey.simulate(
            lambda cid: PlusOne(),
            num_clients=3,
            rounds=1,
            initial_weights={"w": np.zeros(2)},
            **kwargs,
        )
    assert caught.value.__notes__ == [note]


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        # each was refused as "is NoneType, expected a number, bool, str or bytes" alone
        (None, "(leave the metric out of this result, or report float('nan'))"),
        ({"a": 1.0}, "(report each of its values as a metric of its own name)"),
        ([1.0, 2.0], "(report an array of numbers as np.asarray(x))"),
        (decimal.Decimal("0.1"), "(report it as float(x))"),
        (fractions.Fraction(1, 3), "(report it as float(x))"),
        (1 + 2j, "(report its parts as metrics of their own: x.real and x.imag)"),
    ],
)
def test_a_client_metric_of_another_type_is_told_what_to_report(value: Any, hint: str) -> None:
    class Reports(covey.Client):
        def fit(self, weights: Any, config: Any) -> FitResult:
            return FitResult(weights=dict(weights), num_examples=1, metrics={"m": value})

    kind = type(value).__name__
    with pytest.raises(covey.FederationError) as caught:
        covey.simulate(
            lambda cid: Reports(), 2, 1, covey.FedAvg(fraction_evaluate=0.0), {"w": np.zeros(2)}
        )
    assert (
        f"TypeError: FitResult.metrics['m'] is {kind}, expected a number, bool, str or bytes {hint}"
    ) in str(caught.value)
    assert "client 0, client 1" in str(caught.value)


class HalfStep(covey.Client):
    """Trains by a float step, as any gradient step does."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(
            weights={k: v - np.full(v.shape, 0.5) for k, v in weights.items()}, num_examples=1
        )


def test_integer_initial_weights_that_clients_train_as_floats_are_named_as_the_cause() -> None:
    with pytest.raises(covey.FederationError) as caught:
        covey.simulate(
            client_fn=lambda cid: HalfStep(),
            num_clients=2,
            rounds=1,
            strategy=covey.FedAvg(),
            initial_weights={"w": np.array([0, 1])},  # int64: np.array of ints
        )
    message = str(caught.value)
    assert "'w' has dtype float64, expected int64 (the model holds 'w' as int64" in message
    assert "start weights that train as floats, e.g. np.zeros(shape)" in message
    with pytest.raises(covey.FederationError) as caught:  # a float of another width: no hint
        covey.simulate(
            client_fn=lambda cid: HalfStep(),
            num_clients=2,
            rounds=1,
            strategy=covey.FedAvg(),
            initial_weights={"w": np.array([0.0, 1.0], dtype=np.float32)},
        )
    assert str(caught.value).endswith("'w' has dtype float64, expected float32")


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (
            "def client_fn(cid):\n    yield covey.Client()\n",
            "returned a generator, not a covey client (no fit): client_fn yields the client, "
            "which makes it a generator function; return the client instead "
            "(return MyClient(...), not yield)",
        ),
        (
            "async def client_fn(cid):\n    return covey.Client()\n",
            "returned a coroutine, not a covey client (no fit): client_fn is a coroutine "
            "function (async def), which returns a coroutine; define it with def",
        ),
    ],
)
def test_covey_client_app_yielding_its_client_or_async_is_told_to_return_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    body: str,
    said: str,
) -> None:
    import typer

    from covey.deploy._cli_client import _make_client

    (tmp_path / "yielding_app.py").write_text(f"import covey\n\n\n{body}")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    try:
        with pytest.raises(typer.Exit):
            _make_client("yielding_app:client_fn", 0)
    finally:
        sys.modules.pop("yielding_app", None)
    assert said in " ".join(capsys.readouterr().err.split())

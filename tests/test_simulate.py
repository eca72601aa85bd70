"""covey.simulate end to end (inline backend): FedAvg math, sampling, configs, failures, history."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

import covey
from covey import EvaluateResult, FederationError, FitResult, History

Arrays = dict[str, np.ndarray]


def initial() -> Arrays:
    return {
        "W": np.zeros((3, 2), dtype=np.float64),
        "b": np.zeros(2, dtype=np.float32),
        "t": np.array(0.5),  # a 0-d parameter
    }


def draw(cid: int, rnd: int, like: Arrays) -> tuple[Arrays, int]:
    """What client ``cid`` sends in round ``rnd``: random arrays and a random example count."""
    rng = np.random.default_rng([cid, rnd, 12345])
    n = int(rng.integers(1, 200))
    arrays = {k: np.asarray(rng.normal(size=v.shape) * 3, dtype=v.dtype) for k, v in like.items()}
    return arrays, n


class RandomClient(covey.Client):
    """Sends random weights (or a random delta) with a random number of examples."""

    def __init__(self, cid: int, form: str = "weights") -> None:
        self.cid = cid
        self.form = form

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        arrays, n = draw(self.cid, config["round"], weights)
        form = self.form if self.form != "mixed" else ("delta" if self.cid % 2 else "weights")
        metrics: covey.core.Metrics = {"loss": float(self.cid), "tag": "x"}
        if form == "delta":
            return FitResult(delta=arrays, num_examples=n, metrics=metrics)
        return FitResult(weights=arrays, num_examples=n, metrics=metrics)


class Recorder:
    """An evaluate_fn that keeps a copy of the global weights after every round."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, Arrays]] = []

    def __call__(self, rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
        assert all(not a.flags.writeable for a in weights.values())
        self.calls.append((rnd, {k: v.copy() for k, v in weights.items()}))
        return float(rnd) * 10.0, {"r": rnd, "acc": 1.0 / (rnd + 1)}


def hand_round(previous: Arrays, participants: list[int], rnd: int, form: str) -> Arrays:
    """sum_k n_k w_k / sum_k n_k over the participants, in float64."""
    total = 0
    acc = {k: np.zeros(v.shape) for k, v in previous.items()}
    for cid in participants:
        arrays, n = draw(cid, rnd, previous)
        kind = form if form != "mixed" else ("delta" if cid % 2 else "weights")
        for k in acc:
            w = arrays[k].astype(np.float64)
            if kind == "delta":
                w = previous[k].astype(np.float64) + w
            acc[k] += n * w
        total += n
    return {k: (v / total).astype(previous[k].dtype) for k, v in acc.items()}


def assert_close(actual: Arrays, expected: Arrays) -> None:
    assert list(actual) == list(expected)
    for k in expected:
        assert actual[k].dtype == expected[k].dtype
        assert actual[k].shape == expected[k].shape
        tol = 1e-5 if expected[k].dtype == np.float32 else 1e-12
        np.testing.assert_allclose(actual[k], expected[k], rtol=tol, atol=tol)


def assert_identical(a: Arrays, b: Arrays) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype
        assert a[k].tobytes() == b[k].tobytes(), k


def fedavg(**kwargs: Any) -> covey.Strategy:
    kwargs.setdefault("fraction_evaluate", 0.0)
    return covey.FedAvg(**kwargs)


# -- FedAvg -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["weights", "delta", "mixed"])
def test_fedavg_equals_hand_computed_weighted_average(form: str) -> None:
    recorder = Recorder()
    start = initial()
    start_copy = {k: v.copy() for k, v in start.items()}
    result = covey.simulate(
        lambda cid: RandomClient(cid, form),
        num_clients=12,
        rounds=4,
        strategy=fedavg(fraction_fit=0.5),
        initial_weights=start,
        evaluate_fn=recorder,
        seed=3,
    )
    assert [r for r, _ in recorder.calls] == [0, 1, 2, 3, 4]
    assert_identical(recorder.calls[0][1], start_copy)
    expected = start_copy
    for rnd in range(1, 5):
        record = result.history[rnd]
        assert len(record.fit_participants) == 6
        assert record.aggregated
        assert record.fit_failures == []
        expected = hand_round(expected, record.fit_participants, rnd, form)
        assert_close(recorder.calls[rnd][1], expected)
        # Train metrics are example-weighted means of the numeric metrics.
        ns = [draw(c, rnd, start)[1] for c in record.fit_participants]
        assert record.fit_examples == sum(ns)
        assert record.fit_metrics["loss"] == pytest.approx(
            sum(n * c for n, c in zip(ns, record.fit_participants, strict=True)) / sum(ns)
        )
        assert "tag" not in record.fit_metrics
    assert_identical(result.weights, recorder.calls[-1][1])
    assert_identical(start, start_copy)  # the caller's arrays were not touched
    for k, v in result.weights.items():
        assert v.flags.writeable
        assert not np.shares_memory(v, start[k])


def test_simulate_is_reproducible_bit_for_bit() -> None:
    runs = [
        covey.simulate(
            lambda cid: RandomClient(cid, "mixed"),
            10,
            3,
            fedavg(fraction_fit=0.3),
            initial(),
            seed=11,
        )
        for _ in range(2)
    ]
    assert_identical(runs[0].weights, runs[1].weights)
    assert runs[0].history.to_dict()["rounds"][1]["fit_participants"] == (
        runs[1].history[1].fit_participants
    )


def test_docstring_example() -> None:
    class Client(covey.Client):
        def fit(self, weights: Any, config: Any) -> FitResult:
            return FitResult(delta={"w": np.ones(2)}, num_examples=5)

    result = covey.simulate(
        lambda cid: Client(),
        num_clients=10,
        rounds=3,
        strategy=covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0),
        initial_weights={"w": np.zeros(2)},
    )
    assert result.weights["w"].tolist() == [3.0, 3.0]


# -- sampling -------------------------------------------------------------------------------


def participants(seed: int, num_clients: int = 20, rounds: int = 5, **kw: Any) -> list[list[int]]:
    result = covey.simulate(
        lambda cid: RandomClient(cid), num_clients, rounds, fedavg(**kw), initial(), seed=seed
    )
    return [result.history[r].fit_participants for r in range(1, rounds + 1)]


def test_same_seed_same_participants_different_seed_different() -> None:
    a = participants(seed=1, fraction_fit=0.3)
    assert a == participants(seed=1, fraction_fit=0.3)
    assert a != participants(seed=2, fraction_fit=0.3)
    assert len({tuple(p) for p in a}) > 1  # a new sample every round
    for p in a:
        assert p == sorted(set(p))
        assert set(p) <= set(range(20))


@pytest.mark.parametrize(
    ("fraction", "minimum", "expected"),
    [(0.3, 2, 6), (0.25, 2, 5), (0.01, 3, 3), (1.0, 2, 20), (0.0, 4, 4), (0.5, 12, 12)],
)
def test_fraction_and_minimum_are_respected(fraction: float, minimum: int, expected: int) -> None:
    for p in participants(seed=0, fraction_fit=fraction, min_fit_clients=minimum, rounds=3):
        assert len(p) == expected


def test_strategy_needing_more_clients_than_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="min_fit_clients=5"):
        covey.simulate(lambda cid: RandomClient(cid), 4, 1, fedavg(min_fit_clients=5), initial())
    with pytest.raises(ValueError, match="min_available_clients=9"):
        covey.simulate(
            lambda cid: RandomClient(cid), 4, 1, fedavg(min_available_clients=9), initial()
        )


def test_strategy_validates_its_settings() -> None:
    with pytest.raises(ValueError, match="fraction_fit must be in"):
        covey.FedAvg(fraction_fit=1.5)
    with pytest.raises(ValueError, match="min_fit_clients must be a non-negative int"):
        covey.FedAvg(min_fit_clients=-1)
    with pytest.raises(ValueError, match="would train no client"):
        covey.FedAvg(fraction_fit=0.0, min_fit_clients=0)
    with pytest.raises(TypeError, match="aggregator"):
        covey.Strategy(aggregator=lambda: None)  # type: ignore[arg-type]


def test_custom_selector_chooses_the_clients() -> None:
    strategy = covey.Strategy(
        selector=lambda available, rnd, rng: [rnd, rnd + 5],
        fraction_evaluate=0.0,
    )
    result = covey.simulate(lambda cid: RandomClient(cid), 10, 3, strategy, initial())
    assert [result.history[r].fit_participants for r in (1, 2, 3)] == [[1, 6], [2, 7], [3, 8]]


def test_simulate_argument_validation() -> None:
    with pytest.raises(TypeError, match="initial_weights"):
        covey.simulate(lambda cid: RandomClient(cid), 3, 1, None)  # type: ignore[call-arg]
    with pytest.raises(covey.WeightsError, match="initial_weights"):
        covey.simulate(lambda cid: RandomClient(cid), 3, 1, None, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_clients must be a positive int"):
        covey.simulate(lambda cid: RandomClient(cid), 0, 1, None, initial())
    with pytest.raises(ValueError, match="rounds must be an int from 0 to 1,000,000,000"):
        covey.simulate(lambda cid: RandomClient(cid), 3, -1, None, initial())
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        covey.simulate(lambda cid: RandomClient(cid), 3, 1, None, initial(), backend="gpu")  # type: ignore[arg-type]
    bad = initial()
    bad["W"] = np.full((3, 2), np.nan)
    with pytest.raises(covey.WeightsError, match="initial weights: 'W' has 6 non-finite"):
        covey.simulate(lambda cid: RandomClient(cid), 3, 1, None, bad)


def test_zero_rounds_evaluates_the_initial_model_only() -> None:
    recorder = Recorder()
    result = covey.simulate(
        lambda cid: RandomClient(cid), 3, 0, fedavg(), initial(), evaluate_fn=recorder
    )
    assert [r.round for r in result.history.rounds] == [0]
    assert [r for r, _ in recorder.calls] == [0]
    assert_identical(result.weights, initial())


# -- configs ----------------------------------------------------------------------------------


class ConfigClient(covey.Client):
    def __init__(self, cid: int, log: list[tuple[str, int, dict[str, Any]]]) -> None:
        self.cid, self.log = cid, log

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        self.log.append(("fit", self.cid, dict(config)))
        return FitResult(weights=dict(weights), num_examples=1)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        self.log.append(("evaluate", self.cid, dict(config)))
        return EvaluateResult(loss=0.0, num_examples=1)


def test_configs_reach_clients_with_the_1_based_round() -> None:
    log: list[tuple[str, int, dict[str, Any]]] = []
    strategy = covey.FedAvg(
        fraction_fit=0.5,
        fraction_evaluate=0.25,
        on_fit_config=lambda rnd: {"lr": 0.1 * rnd, "round": rnd},  # the same value passes
        on_evaluate_config=lambda rnd: {"split": f"val{rnd}"},
    )
    result = covey.simulate(lambda cid: ConfigClient(cid, log), 8, 3, strategy, initial())
    for rnd in (1, 2, 3):
        fits = [(cid, cfg) for kind, cid, cfg in log if kind == "fit" and cfg["round"] == rnd]
        evals = [(c, cfg) for kind, c, cfg in log if kind == "evaluate" and cfg["round"] == rnd]
        assert [cid for cid, _ in fits] == result.history[rnd].fit_participants
        assert [cid for cid, _ in evals] == result.history[rnd].evaluate_participants
        assert len(fits) == 4
        assert len(evals) == 2
        assert all(cfg == {"lr": pytest.approx(0.1 * rnd), "round": rnd} for _, cfg in fits)
        assert all(cfg == {"split": f"val{rnd}", "round": rnd} for _, cfg in evals)
    assert {cfg["round"] for _, _, cfg in log} == {1, 2, 3}


@pytest.mark.parametrize(
    ("fit", "evaluate", "said"),
    [
        ({"round": -1}, {}, "on_fit_config set 'round' to -1 in round 1: covey sets"),
        ({"extras": {}}, {}, "on_fit_config set 'extras' in round 1"),
        ({"covey.scheme": "q8"}, {}, "on_fit_config set 'covey.scheme' in round 1"),
        ({}, {"round": 0}, "on_evaluate_config set 'round' to 0 in round 1"),
        ({"round": True}, {}, "on_fit_config set 'round' to True"),
    ],
)
def test_config_entries_covey_sets_are_refused(
    fit: dict[str, Any], evaluate: dict[str, Any], said: str
) -> None:
    """They were replaced silently (a client config setting them was refused already)."""
    strategy = covey.FedAvg(on_fit_config=lambda rnd: fit, on_evaluate_config=lambda rnd: evaluate)
    log: list[tuple[str, int, dict[str, Any]]] = []
    with pytest.raises(ValueError, match=re.escape(said)):
        covey.simulate(lambda cid: ConfigClient(cid, log), 4, 1, strategy, initial())


def test_dp_clip_from_on_fit_config_is_refused_under_central_dp() -> None:
    strategy = covey.privacy.central(
        covey.FedAvg(on_fit_config=lambda rnd: {"dp_clip": 100.0}),
        noise_multiplier=0.5,
        clip=1.0,
        delta=1e-5,
        clipping="client",
    )
    with pytest.raises(ValueError, match="on_fit_config set 'dp_clip' in round 3"):
        strategy.fit_task_config(3)


def test_config_function_must_return_a_dict() -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0, on_fit_config=lambda rnd: [rnd])  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="on_fit_config must return a dict, got list"):
        covey.simulate(lambda cid: ConfigClient(cid, []), 3, 1, strategy, initial())


# -- failures ---------------------------------------------------------------------------------


class FlakyClient(RandomClient):
    """Raises in the given rounds, otherwise behaves as RandomClient."""

    def __init__(self, cid: int, fail_rounds: set[int]) -> None:
        super().__init__(cid)
        self.fail_rounds = fail_rounds

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if config["round"] in self.fail_rounds:
            raise ValueError(f"boom from client {self.cid} in round {config['round']}")
        return super().fit(weights, config)


def test_a_raising_client_is_survived_recorded_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()

    def client_fn(cid: int) -> covey.Client:
        return FlakyClient(cid, {2} if cid == 2 else set())

    with caplog.at_level(logging.WARNING, logger="covey"):
        result = covey.simulate(client_fn, 5, 3, fedavg(), initial(), evaluate_fn=recorder)
    record = result.history[2]
    assert record.fit_participants == [0, 1, 3, 4]
    assert len(record.fit_failures) == 1
    failure = record.fit_failures[0]
    assert failure.cid == 2
    assert failure.stage == "fit"
    assert failure.error == "ValueError: boom from client 2 in round 2"
    assert "Traceback (most recent call last)" in failure.traceback
    assert "boom from client 2 in round 2" in failure.traceback
    assert result.history.failures() == [(2, failure)]
    assert record.failures == [failure]
    warnings = [
        r
        for r in caplog.records
        if r.name == "covey" and r.levelno == logging.WARNING and "client 2" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "boom from client 2 in round 2" in warnings[0].getMessage()
    # The round's model is the mean of the others; later rounds include client 2 again.
    expected = hand_round(recorder.calls[1][1], [0, 1, 3, 4], 2, "weights")
    assert_close(recorder.calls[2][1], expected)
    assert result.history[3].fit_participants == [0, 1, 2, 3, 4]
    assert result.history[3].aggregated


def test_a_failing_client_fn_is_recorded() -> None:
    def client_fn(cid: int) -> covey.Client:
        if cid == 1:
            raise OSError("no data for client 1")
        return RandomClient(cid)

    result = covey.simulate(client_fn, 3, 2, fedavg(), initial())
    for rnd in (1, 2):
        assert [f.cid for f in result.history[rnd].fit_failures] == [1]
        assert "no data for client 1" in result.history[rnd].fit_failures[0].error


class ExitingClient(RandomClient):
    """Calls ``sys.exit`` in fit (round 1) or evaluate, as a script's helper or argparse would."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid == 1 and config["round"] == 1:
            sys.exit(3)
        if self.cid == 4 and config["round"] == 1:
            raise asyncio.CancelledError  # a BaseException too, leaked by an event loop
        return super().fit(weights, config)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        if self.cid == 2:
            sys.exit("no validation data")
        return EvaluateResult(loss=1.0, num_examples=1)


def _exiting_client_fn(cid: int) -> covey.Client:
    if cid == 3:
        raise SystemExit(0)  # in client_fn too
    return ExitingClient(cid)


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_client_calling_sys_exit_or_raising_a_base_exception_fails_alone(backend: str) -> None:
    # Inline, the same call used to end the whole simulating process, with no error and
    # no history; a process worker died of it, failing the clients queued behind it.
    result = covey.simulate(
        _exiting_client_fn,
        5,
        2,
        covey.FedAvg(),
        initial(),
        backend=backend,  # type: ignore[arg-type]
        num_workers=2 if backend == "process" else None,
    )
    fit1 = {f.cid: f for f in result.history[1].fit_failures}
    assert sorted(fit1) == [1, 3, 4]
    assert fit1[1].error == (
        "covey: the client called sys.exit(3) (SystemExit) in its fit task: it fails alone, "
        "and the run goes on without it"
    )
    assert "SystemExit: 3" in fit1[1].traceback
    assert "sys.exit(0)" in fit1[3].error
    assert fit1[4].error == (
        "covey: the client raised CancelledError, which is no Exception, in its fit task: "
        "it fails alone, and the run goes on without it"
    )
    assert result.history[1].fit_participants == [0, 2]
    assert result.history[2].fit_participants == [0, 1, 2, 4]
    evaluate = {f.cid: f.error for f in result.history[2].evaluate_failures}
    assert sorted(evaluate) == [2, 3]
    assert "sys.exit('no validation data')" in evaluate[2]
    assert "in its evaluate task" in evaluate[2]


class LaterExitingClient(RandomClient):
    """Client 1 calls ``sys.exit`` in its fit of round 2, once it was built and ran in round 1."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid == 1 and config["round"] == 2:
            sys.exit(5)
        return super().fit(weights, config)


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_built_client_calling_sys_exit_in_a_later_round_fails_alone(backend: str) -> None:
    result = covey.simulate(
        LaterExitingClient,
        3,
        3,
        covey.FedAvg(fraction_evaluate=0.0),
        initial(),
        backend=backend,  # type: ignore[arg-type]
        num_workers=2 if backend == "process" else None,
    )
    assert [f.cid for f in result.history[2].fit_failures] == [1]
    assert "called sys.exit(5) (SystemExit) in its fit task: it fails alone" in (
        result.history[2].fit_failures[0].error
    )
    assert result.history[2].fit_participants == [0, 2]
    assert result.history[3].fit_participants == [0, 1, 2]


def test_too_many_failures_raise_federation_error_with_history() -> None:
    def client_fn(cid: int) -> covey.Client:
        return FlakyClient(cid, {2} if cid != 0 else set())

    with pytest.raises(FederationError) as info:
        covey.simulate(client_fn, 4, 3, fedavg(min_fit_clients=2), initial())
    err = info.value
    message = str(err)
    assert "round 2: 1 of 4 sampled clients replied, fewer than min_fit_clients=2" in message
    assert "client 1: ValueError: boom from client 1 in round 2" in message
    assert isinstance(err.history, History)
    assert [r.round for r in err.history.rounds] == [0, 1, 2]
    assert [f.cid for f in err.history[2].fit_failures] == [1, 2, 3]
    assert err.history[2].fit_participants == [0]
    assert not err.history[2].aggregated
    # The weights are those after round 1, the last completed round.
    expected = hand_round(initial(), [0, 1, 2, 3], 1, "weights")
    assert_close(dict(err.weights), expected)


def test_failure_message_lists_at_most_five_failures() -> None:
    def client_fn(cid: int) -> covey.Client:
        return FlakyClient(cid, {1})

    with pytest.raises(FederationError, match=r"0 of 8 sampled clients replied.* \.\.\.$"):
        covey.simulate(client_fn, 8, 1, fedavg(), initial())


def test_accept_failures_false_stops_at_the_first_failure() -> None:
    def client_fn(cid: int) -> covey.Client:
        return FlakyClient(cid, {1} if cid == 3 else set())

    with pytest.raises(
        FederationError, match="4 of 5 sampled clients replied, and accept_failures=False"
    ) as info:
        covey.simulate(client_fn, 5, 2, fedavg(accept_failures=False), initial())
    assert "client 3: ValueError: boom from client 3 in round 1" in str(info.value)
    assert [f.cid for f in info.value.history[1].fit_failures] == [3]
    assert_identical(dict(info.value.weights), initial())


class Raw:
    """Marks a value that BadClient.fit returns as is."""

    def __init__(self, value: object) -> None:
        self.value = value


class BadClient(RandomClient):
    """Sends a broken reply in round 2 (and a good one otherwise)."""

    def __init__(self, cid: int, mutate: Callable[[Arrays], Any]) -> None:
        super().__init__(cid)
        self.mutate = mutate

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        good = super().fit(weights, config)
        if config["round"] != 2:
            return good
        assert good.weights is not None
        broken = self.mutate(dict(good.weights))
        if isinstance(broken, Raw):
            return broken.value  # type: ignore[return-value]
        if isinstance(broken, FitResult):
            return broken
        return FitResult(weights=broken, num_examples=good.num_examples)


def _with(arrays: Arrays, **changes: Any) -> Arrays:
    out = dict(arrays)
    for k, v in changes.items():
        if v is None:
            del out[k]
        else:
            out[k] = v
    return out


BROKEN_REPLIES: dict[str, tuple[Callable[[Arrays], Any], str]] = {
    "shape": (
        lambda w: _with(w, W=np.zeros((2, 3))),
        "client 2's weights: 'W' has shape (2, 3), expected (3, 2)",
    ),
    "dtype": (
        lambda w: _with(w, b=w["b"].astype(np.float64)),
        "client 2's weights: 'b' has dtype float64, expected float32",
    ),
    "nan": (
        lambda w: _with(w, W=np.where(np.eye(3, 2) > 0, np.nan, w["W"])),
        "client 2's weights: 'W' has 2 non-finite value(s)",
    ),
    "inf": (
        lambda w: _with(w, t=np.array(-np.inf)),
        "client 2's weights: 't' has 1 non-finite value(s)",
    ),
    "missing": (
        lambda w: _with(w, b=None),
        "client 2's weights do not match the model: missing ['b']",
    ),
    "extra": (
        lambda w: _with(w, extra=np.zeros(1)),
        "client 2's weights do not match the model: unexpected ['extra']",
    ),
    "not an array": (
        lambda w: _with(w, b=[0.0, 0.0]),
        "TypeError: FitResult.weights['b'] is list, expected a NumPy array",
    ),
    "bad delta": (
        lambda w: FitResult(delta=_with(w, W=np.zeros(6)), num_examples=3),
        "client 2's delta: 'W' has shape (6,), expected (3, 2)",
    ),
    "delta missing a name": (
        lambda w: FitResult(delta=_with(w, b=None), num_examples=3),
        "client 2's delta does not match the model: missing ['b']",
    ),
    "not a FitResult": (
        lambda w: Raw({"weights": w}),
        "TypeError: BadClient.fit() returned dict, expected covey.FitResult",
    ),
    "no result at all": (
        lambda w: Raw(None),
        "TypeError: BadClient.fit() returned NoneType, expected covey.FitResult",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_REPLIES))
def test_an_invalid_reply_is_refused_and_the_run_continues(case: str) -> None:
    mutate, message = BROKEN_REPLIES[case]

    def bad(cid: int) -> covey.Client:
        return BadClient(cid, mutate) if cid == 2 else RandomClient(cid)

    def excluded(cid: int) -> covey.Client:
        return FlakyClient(cid, {2}) if cid == 2 else RandomClient(cid)

    strategy = fedavg(fraction_fit=0.5)
    # A seed whose round-2 sample includes client 2 (the loop samples with purpose 0).
    seed = next(s for s in range(100) if 2 in strategy.sample(range(6), 3, 2, s, purpose=0))
    result = covey.simulate(bad, 6, 3, strategy, initial(), seed=seed)
    reference = covey.simulate(excluded, 6, 3, strategy, initial(), seed=seed)
    record = result.history[2]
    assert [f.cid for f in record.fit_failures] == [2]
    assert record.fit_failures[0].error.startswith(message)
    assert 2 not in record.fit_participants
    assert record.aggregated
    assert result.history[3].aggregated
    # Client 2's reply had no effect: identical to a run in which client 2 simply failed.
    assert_identical(result.weights, reference.weights)
    assert record.fit_participants == reference.history[2].fit_participants


# -- evaluation -------------------------------------------------------------------------------


class EvalClient(RandomClient):
    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        rng = np.random.default_rng([self.cid, config["round"], 99])
        n = int(rng.integers(1, 50))
        if self.cid == 4:
            raise RuntimeError("evaluation broke")
        if self.cid == 5:
            return EvaluateResult(loss=float("nan"), num_examples=n)
        return EvaluateResult(
            loss=float(rng.uniform(0, 3)),
            num_examples=n,
            metrics={"accuracy": float(rng.uniform()), "name": "local"},
        )


def test_federated_evaluation_is_weighted_by_examples() -> None:
    strategy = covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.75)
    result = covey.simulate(lambda cid: EvalClient(cid), 8, 3, strategy, initial(), seed=4)
    for rnd in (1, 2, 3):
        record = result.history[rnd]
        sampled = sorted(record.evaluate_participants + [f.cid for f in record.evaluate_failures])
        assert len(sampled) == 6
        ok = [c for c in sampled if c not in (4, 5)]
        assert record.evaluate_participants == ok
        assert sorted(f.cid for f in record.evaluate_failures) == [
            c for c in (4, 5) if c in sampled
        ]
        for f in record.evaluate_failures:
            assert f.stage == "evaluate"
            if f.cid == 4:
                assert f.error == "RuntimeError: evaluation broke"
            else:
                assert "not a finite number" in f.error
        rows = []
        for cid in ok:
            rng = np.random.default_rng([cid, rnd, 99])
            n = int(rng.integers(1, 50))
            rows.append((n, float(rng.uniform(0, 3)), float(rng.uniform())))
        total = sum(n for n, _, _ in rows)
        assert record.evaluate_examples == total
        assert record.evaluate_loss == pytest.approx(sum(n * loss for n, loss, _ in rows) / total)
        assert record.evaluate_metrics == {
            "accuracy": pytest.approx(sum(n * a for n, _, a in rows) / total)
        }
    losses = result.history.metric("loss", source="evaluate")
    assert [r for r, _ in losses] == [1, 2, 3]


def test_evaluation_errors_do_not_stop_the_run() -> None:
    # Clients without evaluate(): every evaluation fails, training goes on.
    result = covey.simulate(lambda cid: RandomClient(cid), 3, 2, covey.FedAvg(), initial())
    for rnd in (1, 2):
        assert result.history[rnd].aggregated
        assert result.history[rnd].evaluate_loss is None
        assert len(result.history[rnd].evaluate_failures) == 3
        assert "does not implement evaluate()" in result.history[rnd].evaluate_failures[0].error


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_clients_without_evaluate_are_said_once_and_recorded_in_one_line(
    backend: Literal["inline", "process"], caplog: pytest.LogCaptureFixture
) -> None:
    # Each failure kept covey's own traceback (about 1 KB per client and round: 10 MB of
    # history for 100 clients and 100 rounds), and each round warned of too few evaluators.
    with caplog.at_level(logging.WARNING, logger="covey"):
        result = covey.simulate(
            lambda cid: RandomClient(cid), 3, 3, covey.FedAvg(), initial(), backend=backend
        )
    for record in result.history.rounds[1:]:
        for failure in record.evaluate_failures:
            said = "NotImplementedError: RandomClient does not implement evaluate()"
            assert (failure.error, failure.traceback) == (said, said)
    warned = [r.getMessage() for r in caplog.records if "evaluate" in r.getMessage()]
    assert warned == [
        "clients do not implement evaluate(); set fraction_evaluate=0 to turn off federated "
        "evaluation"
    ]


def test_a_round_whose_evaluators_fail_otherwise_still_warns_of_too_few(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Once clients without evaluate() had been said, a later round in which every
    # evaluator failed for another reason (past the first ten, not logged one by one) was
    # no longer warned of: the run's only sign that its evaluation had stopped.
    class Later(RandomClient):
        def evaluate(self, weights: Any, config: Any) -> Any:
            if config["round"] == 1:
                return super().evaluate(weights, config)
            raise RuntimeError("the evaluation data is gone")

    with caplog.at_level(logging.WARNING, logger="covey"):
        covey.simulate(lambda cid: Later(cid), 2, 2, covey.FedAvg(), initial())
    warned = [r.getMessage() for r in caplog.records]
    assert "clients do not implement evaluate(); set fraction_evaluate=0" in " ".join(warned)
    assert "round 1: only 0 client(s) evaluated" not in " ".join(warned)
    assert any(m.startswith("round 2: only 0 client(s) evaluated") for m in warned), warned


def test_an_evaluate_that_raises_not_implemented_itself_keeps_its_traceback() -> None:
    class Own(RandomClient):
        def evaluate(self, weights: Any, config: Any) -> Any:
            raise NotImplementedError("not yet")

    result = covey.simulate(lambda cid: Own(cid), 2, 1, covey.FedAvg(), initial())
    failure = result.history[1].evaluate_failures[0]
    assert failure.error == "NotImplementedError: not yet"
    assert "Traceback (most recent call last)" in failure.traceback
    assert 'raise NotImplementedError("not yet")' in failure.traceback


def test_central_evaluation_runs_at_round_0_and_after_every_round() -> None:
    recorder = Recorder()
    result = covey.simulate(
        lambda cid: RandomClient(cid), 4, 3, fedavg(), initial(), evaluate_fn=recorder
    )
    assert [r for r, _ in recorder.calls] == [0, 1, 2, 3]
    assert result.history.metric("loss") == [(0, 0.0), (1, 10.0), (2, 20.0), (3, 30.0)]
    assert result.history.metric("acc") == [(r, 1.0 / (r + 1)) for r in range(4)]
    assert result.history[2].central_metrics == {"r": 2, "acc": 1.0 / 3}
    for (rnd, weights), (rnd2, _) in zip(recorder.calls[1:], recorder.calls[:-1], strict=True):
        assert rnd == rnd2 + 1
        assert not np.array_equal(weights["W"], recorder.calls[rnd2][1]["W"])


def test_central_evaluation_may_return_none() -> None:
    result = covey.simulate(
        lambda cid: RandomClient(cid), 3, 2, fedavg(), initial(), evaluate_fn=lambda r, w: None
    )
    assert all(r.central_loss is None for r in result.history.rounds)
    with pytest.raises(ValueError, match=r"no round records 'loss' from source='central'"):
        result.history.metric("loss")


# -- history ----------------------------------------------------------------------------------


def run_with_everything(tmp_path: Any | None = None) -> covey.sim.SimulationResult:
    def client_fn(cid: int) -> covey.Client:
        return FlakyClient(cid, {2}) if cid == 1 else EvalClient(cid)

    seen: list[int] = []
    result = covey.simulate(
        client_fn,
        8,
        3,
        covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.5),
        initial(),
        evaluate_fn=Recorder(),
        seed=7,
        run_dir=tmp_path,
        on_round=lambda record: seen.append(record.round),
    )
    assert seen == [0, 1, 2, 3]
    return result


def test_history_json_round_trip() -> None:
    history = run_with_everything().history
    assert len(history) == 4
    text = history.to_json()
    back = History.from_json(text)
    assert back == history
    assert back.to_json() == text
    assert json.loads(text)["rounds"][0]["round"] == 0
    assert History.from_dict(history.to_dict()) == history


def test_history_lookup_and_json_of_unusual_values() -> None:
    history = History([covey.core.RoundRecord(round=0, central_loss=float("inf"))])
    history.rounds[0].central_metrics = {
        "blob": b"\x01\xff",
        "n": np.int64(3),  # type: ignore[dict-item]  # clients may report NumPy scalars
        "x": np.float32(0.5),  # type: ignore[dict-item]
    }
    history.rounds[0].fit_metrics = {"nan": float("nan"), "minus": float("-inf")}
    text = history.to_json()
    data = json.loads(text)  # strict JSON: no bare NaN or Infinity
    assert data["rounds"][0]["central_loss"] == {"__float__": "inf"}
    assert data["rounds"][0]["central_metrics"] == {"blob": {"__bytes__": "01ff"}, "n": 3, "x": 0.5}
    back = History.from_json(text)
    assert back.rounds[0].central_loss == float("inf")
    assert back.rounds[0].central_metrics == {"blob": b"\x01\xff", "n": 3, "x": 0.5}
    assert math.isnan(float(back.rounds[0].fit_metrics["nan"]))
    assert back.rounds[0].fit_metrics["minus"] == float("-inf")
    assert back.to_json() == text
    with pytest.raises(KeyError, match="no round 5"):
        history[5]
    with pytest.raises(
        ValueError, match=r"unknown metric source 'server'.*'central', 'evaluate', 'fit'"
    ):
        history.metric("loss", "server")  # type: ignore[arg-type]


def test_history_json_records_how_to_reproduce_the_run(tmp_path: Any) -> None:
    strategy = covey.FedAdam(eta=0.05, fraction_fit=0.5, fraction_evaluate=0.0)
    result = covey.simulate(
        lambda cid: RandomClient(cid), 6, 2, strategy, initial(), seed=7, run_dir=tmp_path
    )
    config = json.loads((tmp_path / "history.json").read_text())["config"]
    assert config["strategy"]["name"] == "FedAdam"
    assert config["strategy"]["hyperparameters"] == {
        "eta": 0.05,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 0.001,
    }
    assert config["strategy"]["options"]["fraction_fit"] == 0.5
    assert config["seed"] == 7
    assert config["num_clients"] == 6
    assert config["rounds"] == 2
    assert config["backend"] == "inline"
    assert config["covey_version"] == covey.__version__
    again = History.from_json((tmp_path / "history.json").read_text())
    assert again == result.history
    assert again.stopped_reason is None


def test_run_dir_gets_history_json(tmp_path: Any) -> None:
    run_dir = tmp_path / "runs" / "a"
    result = run_with_everything(run_dir)
    saved = History.from_json((run_dir / "history.json").read_text())
    assert saved == result.history
    assert not list(run_dir.glob("*.tmp"))


def test_progress_bar_runs() -> None:
    result = covey.simulate(lambda cid: RandomClient(cid), 3, 2, fedavg(), initial(), progress=True)
    assert len(result.history) == 3


def test_the_progress_bar_of_an_asynchronous_run_counts_updates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It said "round 2/2" while everything else of a FedBuff run says "update".
    strategy = covey.FedBuff(buffer_size=2)
    covey.simulate(lambda cid: RandomClient(cid), 3, 2, strategy, initial(), progress=True)
    drawn = capsys.readouterr().out
    assert "update 2/2" in drawn
    assert "round" not in drawn
    covey.simulate(lambda cid: RandomClient(cid), 3, 2, fedavg(), initial(), progress=True)
    assert "round 2/2" in capsys.readouterr().out


class InterruptingClient(RandomClient):
    """Client 3 raises KeyboardInterrupt in its fit of round 2."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid == 3 and config["round"] == 2:
            raise KeyboardInterrupt
        return super().fit(weights, config)


def test_a_client_raising_keyboard_interrupt_in_a_worker_fails_alone() -> None:
    # The worker died of it ("worker process died (exit code 1)"), failing the clients
    # queued behind it and naming no KeyboardInterrupt. Workers ignore Ctrl-C: only the
    # client could have raised it.
    result = covey.simulate(
        InterruptingClient, 8, 2, covey.FedAvg(), initial(), backend="process", num_workers=2
    )
    failures = result.history[2].fit_failures
    assert [f.cid for f in failures] == [3]
    assert failures[0].error == (
        "covey: the client raised KeyboardInterrupt, which is no Exception, in its fit task: "
        "it fails alone, and the run goes on without it"
    )
    assert result.history[2].fit_participants == [0, 1, 2, 4, 5, 6, 7]


def test_ctrl_c_of_a_run_kept_in_a_folder_says_how_to_continue_it(tmp_path: Path) -> None:
    # The KeyboardInterrupt's traceback said nothing of the run folder or of resuming.
    with pytest.raises(KeyboardInterrupt) as info:
        covey.simulate(
            InterruptingClient, 8, 3, covey.FedAvg(), initial(), run_dir=tmp_path / "run"
        )
    (note,) = info.value.__notes__
    assert note == (
        f"covey: the run in {tmp_path / 'run'} keeps its complete rounds; continue it with "
        f"`covey.simulate(..., run_dir={str(tmp_path / 'run')!r}, resume=True)` and the "
        "client_fn and settings it was started with (a `covey demo` is run again instead)"
    )
    resumed = covey.simulate(
        RandomClient, 8, 3, covey.FedAvg(), initial(), run_dir=tmp_path / "run", resume=True
    )
    assert [r.round for r in resumed.history.rounds] == [0, 1, 2, 3]

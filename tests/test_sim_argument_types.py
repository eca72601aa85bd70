"""simulate()'s clock and compression arguments: wrong types named, probabilities not bools."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
import covey.deploy
from _live import served_to
from _ports import unused_port


class Step(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        return covey.FitResult(weights={"w": weights["w"] + 1.0}, num_examples=1)


def run(clients: int = 10, **options: Any) -> Any:
    options.setdefault("strategy", covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=1))
    return covey.simulate(Step, clients, 2, initial_weights={"w": np.zeros(2)}, **options)


@pytest.mark.parametrize(
    ("availability", "error", "match"),
    [
        (np.full((10, 3), 0.05), ValueError, r"trace holds whether .* such as 0\.05"),
        (lambda cid, rnd: 0.05, TypeError, r"availability\(0, 1\) returned 0\.05 \(float\)"),
    ],
    ids=["trace-of-probabilities", "function-of-probabilities"],
)
def test_availability_given_as_probabilities_is_refused(
    availability: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        run(availability=availability)


def test_availability_takes_numpy_numbers_and_0_1_traces() -> None:
    online = [len(r.fit_participants) for r in run(availability=np.float32(0.5)).history.rounds[1:]]
    assert online == [len(r.fit_participants) for r in run(availability=0.5).history.rounds[1:]]
    trace = np.zeros((10, 2), dtype=np.int8)
    trace[:4, 0] = trace[:7, 1] = 1
    rounds = run(availability=trace).history.rounds[1:]
    assert [len(r.fit_participants) for r in rounds] == [4, 7]
    rounds = run(availability=lambda cid, rnd: int(cid < 3)).history.rounds[1:]
    assert [len(r.fit_participants) for r in rounds] == [3, 3]


@pytest.mark.parametrize("deadline", ["3", True])
def test_a_round_deadline_that_is_no_number_is_named(deadline: Any) -> None:
    with pytest.raises(ValueError, match="round deadline \\(round_deadline\\) must be a positive"):
        run(round_deadline=deadline)


@pytest.mark.parametrize("said", [True, "5", None])
def test_a_simulated_duration_that_is_no_number_is_named(said: Any) -> None:
    with pytest.raises(ValueError, match=r"simulated duration is .* expected a number of seconds"):
        run(client_durations=lambda cid, rng: said, round_deadline=10.0)


@pytest.mark.parametrize("said", [math.inf, math.nan, -1.0])
def test_a_simulated_duration_out_of_range_says_what_is_expected(said: float) -> None:
    # "inf, expected >= 0" named a condition infinity meets
    with pytest.raises(ValueError, match=r"is (inf|nan|-1.0), expected a finite number >= 0"):
        run(client_durations=lambda cid, rng: said, round_deadline=10.0)


def test_compression_and_fedbuff_options_of_the_wrong_kind_are_refused_up_front() -> None:
    with pytest.raises(TypeError, match=r"compression must be a spec .* got int"):
        run(compression=123)
    with pytest.raises(TypeError, match=r"FedBuff\(staleness=...\) takes a function"):
        covey.FedBuff(staleness=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffer_size=11 exceeds num_clients=10"):
        run(strategy=covey.FedBuff(buffer_size=11))


@pytest.mark.parametrize("timeout", [np.float32(30.0), np.int64(30)], ids=["float32", "int64"])
def test_a_round_timeout_computed_with_numpy_is_taken_as_its_number(timeout: Any) -> None:
    assert run(round_timeout=timeout).history.rounds[-1].aggregated
    with pytest.raises(ValueError, match=r"round_timeout must be .* positive number, got -1\.0$"):
        run(round_timeout=np.float32(-1.0))


def test_keep_last_and_round_deadline_computed_with_numpy_are_taken(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run(
        keep_last=np.int64(2),
        run_dir=run_dir,
        round_deadline=np.float32(5.0),
        client_durations=lambda cid, rnd: 1.0,
    )
    assert result.history.rounds[-1].aggregated
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == [
        "round-00001.safetensors",
        "round-00002.safetensors",
    ]
    with pytest.raises(ValueError, match=r"keep_last must be None or .* got 0$"):
        run(keep_last=np.int64(0), run_dir=tmp_path / "other")


def test_serve_keeps_its_rounds_and_data_port_given_as_numpy_numbers(tmp_path: Path) -> None:
    result = served_to(
        [("a", Step(0))],
        covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=1, min_available_clients=1),
        {"w": np.zeros(2)},
        run_dir=tmp_path / "run",
        keep_last=np.int64(1),
        data_port=np.int64(0),
    )
    assert result.history.rounds[-1].aggregated
    assert [p.name for p in (tmp_path / "run" / "weights").iterdir()] == ["round-00001.safetensors"]
    with pytest.raises(ValueError, match=r"keep_last must be None or .* got 0$"):
        covey.serve(covey.FedAvg(), 1, None, "127.0.0.1:0", insecure=True, keep_last=np.int64(0))


def test_serve_takes_its_seconds_as_numpy_numbers() -> None:
    # Past the checks of the seconds to the next one, before the server listens.
    with pytest.raises(ValueError, match="the server takes at most max_clients=1"):
        covey.serve(
            covey.FedAvg(),
            1,
            {"w": np.zeros(2)},
            "127.0.0.1:0",
            insecure=True,
            round_timeout=np.float32(30.0),
            wait_timeout=np.int64(60),
            heartbeat=np.float32(5.0),
            max_clients=1,
        )
    with pytest.raises(ValueError, match=r"heartbeat must be a number of seconds .* got 0\.0"):
        covey.serve(covey.FedAvg(), 1, None, "127.0.0.1:0", insecure=True, heartbeat=np.float32(0))


def test_connect_takes_its_seconds_and_counts_as_numpy_numbers() -> None:
    # Past the checks to the connection attempts: nothing listens there.
    port = unused_port()
    with pytest.raises(ConnectionError):
        covey.deploy.connect(
            Nothing(),
            f"127.0.0.1:{port}",
            insecure=True,
            max_attempts=np.int64(1),
            retry_for=np.float32(5.0),
            backoff=np.float32(0.01),
            max_backoff=np.float64(0.02),
            heartbeat=np.float32(5.0),
            max_task_bytes=np.int64(2**20),
        )
    with pytest.raises(ValueError, match=r"heartbeat must be a number of seconds .* got 0\.0"):
        covey.deploy.connect(Nothing(), "127.0.0.1:1", insecure=True, heartbeat=np.float32(0))


class Nothing(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights=weights, num_examples=1)

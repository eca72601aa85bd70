"""Federated evaluation as recorded in the history: metric types, round trips, resumes."""

from __future__ import annotations

import enum
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from _live import Joined, Served
from covey import EvaluateResult, FitResult
from covey.cli import app
from covey.core._history import RoundRecord


class Plain(covey.Client):
    """Trains by adding one; evaluates to a fixed loss."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=10)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=0.5, num_examples=10, metrics={"accuracy": 1.0})


def numpy_metrics(results: Any) -> dict[str, Any]:
    """Custom evaluation metrics as NumPy computes them."""
    return {"f32": np.float32(0.25), "i32": np.int32(2), "zero_d": np.array(0.5)}


def test_numpy_scalars_from_custom_metrics_read_the_same_before_and_after_json(
    tmp_path: Path,
) -> None:
    strategy = covey.FedAvg(evaluate_metrics=numpy_metrics, fit_metrics=numpy_metrics)
    result = covey.simulate(
        lambda cid: Plain(), 2, 2, strategy, {"w": np.zeros(2)}, run_dir=tmp_path
    )
    saved = covey.History.load(tmp_path)
    for source in ("evaluate", "fit"):
        for name in ("f32", "i32", "zero_d"):
            assert result.history.metric(name, source) == saved.metric(name, source)
            assert len(saved.metric(name, source)) == 2
    assert result.history[1].evaluate_metrics == {"f32": 0.25, "i32": 2, "zero_d": 0.5}
    assert type(result.history[1].evaluate_metrics["i32"]) is int


def per_client_metrics(results: Any) -> dict[str, Any]:
    """Each client's values kept whole, as code that tabulates them for a paper writes them."""
    accuracy = [m.get("accuracy", 1.0) for _, m in results]  # fit reports none
    return {
        "by_client": dict(enumerate(accuracy)),  # keyed by ints
        "pair": (min(accuracy), max(accuracy)),
        "all": np.array(accuracy, dtype=np.float32),
        "nested": {"mean": np.float32(0.5), "counts": [np.int64(n) for n, _ in results]},
    }


def test_per_client_metrics_read_the_same_live_loaded_and_resumed(tmp_path: Path) -> None:
    # The live record kept int keys, tuples, arrays and NumPy scalars nested in the metrics,
    # which history.json gives back as str keys, lists and numbers: by_client[0] read live
    # was by_client["0"] once loaded, and a resumed run's history mixed the two.
    def strategy() -> covey.Strategy:
        return covey.FedAvg(
            fraction_fit=1.0, evaluate_metrics=per_client_metrics, fit_metrics=per_client_metrics
        )

    def stop_after_1(record: RoundRecord) -> None:
        if record.round == 1:
            raise RuntimeError("stopped")

    result = covey.simulate(lambda cid: Plain(), 3, 2, strategy(), {"w": np.zeros(2)})
    live: dict[str, Any] = result.history[1].evaluate_metrics
    assert live == {
        "by_client": {"0": 1.0, "1": 1.0, "2": 1.0},
        "pair": [1.0, 1.0],
        "all": [1.0, 1.0, 1.0],
        "nested": {"mean": 0.5, "counts": [10, 10, 10]},
    }
    assert type(live["nested"]["mean"]) is float
    assert type(live["nested"]["counts"][0]) is int
    with pytest.raises(RuntimeError, match="stopped"):
        covey.simulate(
            lambda cid: Plain(),
            3,
            2,
            strategy(),
            {"w": np.zeros(2)},
            run_dir=tmp_path,
            on_round=stop_after_1,
        )
    resumed = covey.simulate(
        lambda cid: Plain(),
        3,
        2,
        strategy(),
        {"w": np.zeros(2)},
        run_dir=tmp_path,
        resume=True,
    )
    saved = covey.History.load(tmp_path)
    for history in (resumed.history, saved):
        for rnd in (1, 2):
            assert history[rnd].evaluate_metrics == live
            assert history[rnd].fit_metrics == result.history[rnd].fit_metrics


class Level(enum.IntEnum):
    """A metric of an enum of ints, as code that reports a stage or a class writes it."""

    HIGH = 3


class Kind(str, enum.Enum):  # noqa: UP042 (str() of it is 'Kind.CNN', not a StrEnum's)
    """A metric of a str enum: its value is the text JSON writes, not ``Kind.CNN``."""

    CNN = "cnn"


class Subclassed(covey.Client):
    """Reports metrics of subclasses of Python's scalars."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        metrics: dict[str, Any] = {"level": Level.HIGH, "kind": Kind.CNN, "f64": np.float64(0.5)}
        return FitResult(weights=dict(weights), num_examples=10, metrics=metrics)


def test_subclassed_scalar_metrics_read_the_same_live_and_loaded(tmp_path: Path) -> None:
    # np.float64, np.str_ and enums of ints or strs are float, str and int subclasses:
    # evaluate_fn's metrics and each client's kept them live, so the live history held
    # np.float64(0.5) and <Level.HIGH: 3> where history.json (and a deployed run) held 0.5, 3
    def central(round: int, weights: Any) -> tuple[float, dict[str, Any]]:
        return 0.5, {"f64": np.float64(0.25), "text": np.str_("ok"), "level": Level.HIGH}

    given: list[type] = []

    def per_client(results: Any) -> dict[str, Any]:
        given.extend(type(value) for _, m in results for value in m.values())
        return {"clients": [dict(m) for _, m in results]}

    strategy = covey.FedAvg(fraction_evaluate=0.0, fit_metrics=per_client)
    result = covey.simulate(
        lambda cid: Subclassed(), 2, 1, strategy, {"w": np.zeros(2)}, central, run_dir=tmp_path
    )
    live = result.history[1]
    saved = covey.History.load(tmp_path)[1]
    assert live.central_metrics == saved.central_metrics == {"f64": 0.25, "text": "ok", "level": 3}
    client = {"level": 3, "kind": "cnn", "f64": 0.5}
    assert live.fit_metrics == saved.fit_metrics == {"clients": [client, client]}
    for record in (live, saved):
        for value in [*record.central_metrics.values(), *record.fit_metrics["clients"][0].values()]:
            assert type(value) in (int, float, str)
    assert set(given) == {int, str, float}  # as a deployed client's metrics reach fit_metrics


class LongDouble(covey.Client):
    """Reports arrays of long doubles (float128 on x86), as np.longdouble sums give."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        metrics: dict[str, Any] = {
            "sums": np.array([1.5, 2.5], dtype=np.longdouble),
            "total": np.array(4.0, dtype=np.longdouble),
        }
        return FitResult(weights=dict(weights), num_examples=10, metrics=metrics)


def test_long_double_metrics_are_float64_everywhere(tmp_path: Path) -> None:
    # A client's long double array was kept as it was: inline a metrics function passing it
    # on stopped the run with "maximum recursion depth exceeded" (a long double's item() is
    # a long double), and a deployed client could not send it ("Object of type longdouble
    # is not JSON serializable").
    from covey.transport.grpc._wire import result_from_wire, result_to_wire

    given: list[Any] = []

    def per_client(results: Any) -> dict[str, Any]:
        given.extend(m["sums"] for _, m in results)
        return {
            "sums": results[0][1]["sums"],
            "total": results[0][1]["total"],
            "one": np.longdouble(1),
        }

    strategy = covey.FedAvg(fraction_evaluate=0.0, fit_metrics=per_client)
    result = covey.simulate(
        lambda cid: LongDouble(), 2, 1, strategy, {"w": np.zeros(2)}, run_dir=tmp_path
    )
    assert {str(array.dtype) for array in given} == {"float64"}
    expected = {"sums": [1.5, 2.5], "total": 4.0, "one": 1.0}
    assert result.history[1].fit_metrics == covey.History.load(tmp_path)[1].fit_metrics == expected
    reply = LongDouble().fit({"w": np.zeros(2)}, {})
    data, weights = result_to_wire(reply)
    sent = result_from_wire(data, weights).metrics
    assert sent["sums"].dtype == np.float64
    assert sent["sums"].tolist() == [1.5, 2.5]
    assert float(sent["total"]) == 4.0


class Raises(covey.Client):
    """Fails both tasks with a message of several lines, raised while handling another error."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise ValueError("shapes do not match:\n  got (3,)\n  want (2,)") from exc

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        raise RuntimeError("evaluation failed\nsee the log")


def test_a_client_error_of_several_lines_is_named_by_its_type_and_first_line() -> None:
    def client_fn(cid: int) -> covey.Client:
        return Raises() if cid == 1 else Plain()

    strategy = covey.FedAvg(min_fit_clients=1, min_evaluate_clients=1)
    result = covey.simulate(client_fn, 2, 1, strategy, {"w": np.zeros(2)})
    record = result.history[1]
    assert [(f.cid, f.error) for f in record.fit_failures] == [
        (1, "ValueError: shapes do not match:")
    ]
    assert [(f.cid, f.error) for f in record.evaluate_failures] == [
        (1, "RuntimeError: evaluation failed")
    ]
    assert "see the log" in record.evaluate_failures[0].traceback


def test_a_federated_evaluation_that_rounds_down_to_no_client_is_refused_by_name() -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.1, min_evaluate_clients=0)
    with pytest.raises(ValueError, match=r"fraction_evaluate=0.1 of num_clients=3 rounds down"):
        covey.simulate(lambda cid: Plain(), 3, 1, strategy, {"w": np.zeros(2)})
    off = covey.FedAvg(fraction_evaluate=0.0, min_evaluate_clients=0)  # turned off: fine
    result = covey.simulate(lambda cid: Plain(), 3, 1, off, {"w": np.zeros(2)})
    with pytest.raises(ValueError, match=r"from source='evaluate': it records nothing there"):
        result.history.metric("loss", "evaluate")


class FailsToEvaluate(Plain):
    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        raise RuntimeError("no test data here")


def test_a_metric_of_evaluations_that_all_failed_says_they_failed_not_that_none_ran() -> None:
    # The hint said a run with fraction_evaluate=0 records none, and the run had asked for them.
    result = covey.simulate(
        lambda cid: FailsToEvaluate(), 2, 2, covey.FedAvg(), {"w": np.zeros(2)}, progress=False
    )
    with pytest.raises(ValueError, match="every federated evaluate task failed") as caught:
        result.history.metric("loss", "evaluate")
    said = str(caught.value)
    assert "4 failure(s)" in said
    assert "history.rounds[i].evaluate_failures" in said
    assert "client 0: RuntimeError: no test data here" in said
    assert "fraction_evaluate=0" not in said
    # Fits that took part but gave no metric are not called failed.
    with pytest.raises(ValueError, match="the clients' training metrics"):
        result.history.metric("accuracy", "fit")


def test_a_deployed_run_says_when_fraction_evaluate_rounds_down_to_no_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    strategy = covey.FedAvg(
        min_fit_clients=1, min_available_clients=1, fraction_evaluate=0.5, min_evaluate_clients=0
    )
    served = Served(strategy, 1)
    joined = Joined(served.port, Plain(), name="only")
    with caplog.at_level(logging.WARNING, logger="covey"):
        history = served.join(60).history
    joined.join(30)
    assert history[1].aggregated
    assert history[1].evaluate_participants == []
    assert "fraction_evaluate=0.5 of 1 available clients rounds down to 0" in caplog.text


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("config", [], "'config' must be an object, got list"),
        ("stopped_reason", 5, "'stopped_reason' must be text or null, got 5"),
    ],
)
def test_a_history_with_a_damaged_header_is_unreadable_not_a_crash_of_runs_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, value: object, message: str
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    for name in ("good", "bad"):
        (tmp_path / name).mkdir()
        covey.History([RoundRecord(0, central_loss=1.0)]).save(tmp_path / name / "history.json")
    data = json.loads((tmp_path / "bad" / "history.json").read_text())
    data[field] = value
    (tmp_path / "bad" / "history.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        covey.History.load(tmp_path / "bad")
    result = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert message in " ".join(result.output.split())


class RaisesGroup(Plain):
    """Evaluates by raising an exception group, as code running tasks in a group does."""

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        raise ExceptionGroup("two checks failed", [ValueError("a"), KeyError("b")])


def test_a_client_exception_group_is_named_by_its_own_line() -> None:
    strategy = covey.FedAvg(min_evaluate_clients=1)
    result = covey.simulate(
        lambda cid: RaisesGroup() if cid else Plain(), 2, 1, strategy, {"w": np.zeros(2)}
    )
    [failure] = result.history[1].evaluate_failures
    assert failure.error == "ExceptionGroup: two checks failed (2 sub-exceptions)"


def test_a_simulation_stopped_by_an_error_says_why_in_history_json(tmp_path: Path) -> None:
    def broken(results: Any) -> dict[str, Any]:
        raise ZeroDivisionError("no examples to weigh")

    strategy = covey.FedAvg(evaluate_metrics=broken)
    with pytest.raises(ZeroDivisionError):
        covey.simulate(lambda cid: Plain(), 2, 3, strategy, {"w": np.zeros(2)}, run_dir=tmp_path)
    saved = covey.History.load(tmp_path)
    assert saved.stopped_reason == (
        "ZeroDivisionError: no examples to weigh (raised by evaluate_metrics "
        f"{broken.__qualname__} in round 1, given 2 clients' metrics)"
    )
    assert json.loads((tmp_path / "run.json").read_text())["stopped_reason"] == saved.stopped_reason


def test_a_served_run_stopped_by_an_error_says_why_in_history_json(tmp_path: Path) -> None:
    def stop_after_round_1(record: RoundRecord) -> None:
        if record.round == 1:
            raise RuntimeError("enough\nfor today")

    strategy = covey.FedAvg(min_fit_clients=1, min_available_clients=1, min_evaluate_clients=1)
    served = Served(strategy, 3, run_dir=tmp_path / "run", on_round=stop_after_round_1)
    joined = Joined(served.port, Plain(), name="only")
    with pytest.raises(RuntimeError, match="enough"):
        served.join(60)
    joined.join(30)
    saved = covey.History.load(tmp_path / "run")
    assert [r.round for r in saved] == [0, 1]
    assert saved.stopped_reason == (
        f"RuntimeError: enough (raised by on_round {stop_after_round_1.__qualname__} in round 1)"
    )


class Huge(covey.Client):
    """Client 0 reports an int no float holds, as a fit metric and as its evaluation loss."""

    def __init__(self, cid: int) -> None:
        self.huge = 10**400 if cid == 0 else 1

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights=weights, num_examples=1, metrics={"count": self.huge})

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=self.huge, num_examples=1)


def test_an_int_too_large_for_a_float_fails_that_client_not_the_run() -> None:
    # Averaged as a float, it raised OverflowError in the round loop and stopped the run.
    result = covey.simulate(Huge, 3, 1, covey.FedAvg(), {"w": np.zeros(1)})
    record = result.history.rounds[1]
    assert record.fit_participants == [1, 2]
    assert record.evaluate_participants == [1, 2]
    assert record.fit_metrics == {"count": 1.0}
    assert record.evaluate_loss == 1.0
    for failure in record.failures:
        assert failure.cid == 0
        assert "is an int of 1329 bits, too large for a float" in failure.error
    assert [f.stage for f in record.failures] == ["fit", "evaluate"]


class Unsized(covey.Client):
    """Evaluates without counting its examples (``num_examples=0``)."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights=weights, num_examples=1)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=0.5, num_examples=0, metrics={"auc": 0.75})


def test_evaluate_metrics_combine_replies_that_count_no_examples() -> None:
    # The custom function was not called when the replies held no examples in all,
    # and its metrics were dropped without a word (fit_metrics was called).
    def unweighted(results: Any) -> dict[str, Any]:
        return {"sites": len(results), "auc": sum(m["auc"] for _, m in results) / len(results)}

    strategy = covey.FedAvg(evaluate_metrics=unweighted)
    result = covey.simulate(lambda cid: Unsized(), 3, 1, strategy, {"w": np.zeros(1)})
    record = result.history.rounds[1]
    assert record.evaluate_participants == [0, 1, 2]
    assert record.evaluate_loss is None  # weighted by no example: none
    assert record.evaluate_metrics == {"sites": 3, "auc": 0.75}


def test_a_client_with_an_empty_test_set_evaluates_and_gives_no_loss() -> None:
    # Its NaN loss (the mean over no example) made it a failed evaluation: its
    # metrics were dropped and it counted against min_evaluate_clients.
    class Some(Plain):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
            if self.cid == 0:
                return EvaluateResult(loss=float("nan"), num_examples=0, metrics={"acc": np.nan})
            return EvaluateResult(loss=float(self.cid), num_examples=self.cid, metrics={"acc": 0.3})

    strategy = covey.FedAvg(min_evaluate_clients=3)
    result = covey.simulate(Some, 3, 1, strategy, {"w": np.zeros(1)})
    record = result.history.rounds[1]
    assert record.evaluate_participants == [0, 1, 2]
    assert record.evaluate_failures == []
    assert record.evaluate_loss == pytest.approx((1 * 1 + 2 * 2) / 3)
    assert record.evaluate_metrics == {"acc": pytest.approx(0.3)}


def test_a_metrics_function_that_raises_is_named_with_its_round(tmp_path: Path) -> None:
    # A metric some clients leave out makes a hand-written average raise KeyError:
    # the run stopped with "KeyError: 'accuracy'" alone, naming neither the
    # function nor the round.
    class Some(Plain):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
            metrics: dict[str, Any] = {"accuracy": 1.0} if self.cid else {}
            return EvaluateResult(loss=0.5, num_examples=10, metrics=metrics)

    def mean_accuracy(results: Any) -> dict[str, Any]:
        return {"accuracy": sum(m["accuracy"] for _, m in results) / len(results)}

    strategy = covey.FedAvg(evaluate_metrics=mean_accuracy)
    with pytest.raises(KeyError) as info:
        covey.simulate(Some, 3, 2, strategy, {"w": np.zeros(1)}, run_dir=tmp_path / "run")
    note = "raised by evaluate_metrics " + mean_accuracy.__qualname__ + " in round 1"
    assert any(n.startswith(note) for n in getattr(info.value, "__notes__", ()))
    reason = covey.History.load(tmp_path / "run").stopped_reason
    assert reason is not None
    assert note in reason


def test_history_load_refuses_a_file_over_its_cap_before_reading_it(tmp_path: Path) -> None:
    # Before, History.load read any file whole: a huge one took all the memory.
    from covey.core._history import MAX_HISTORY_BYTES

    covey.History([RoundRecord(0, central_loss=1.0)]).save(tmp_path / "history.json")
    size = (tmp_path / "history.json").stat().st_size
    with pytest.raises(ValueError, match=rf"history\.json is {size:,} bytes, more than History"):
        covey.History.load(tmp_path, max_bytes=size - 1)
    assert covey.History.load(tmp_path, max_bytes=size).rounds[0].central_loss == 1.0
    huge = tmp_path / "huge"
    huge.mkdir()
    with open(huge / "history.json", "wb") as f:
        f.truncate(MAX_HISTORY_BYTES + 1)  # sparse: no disk, no memory
    with pytest.raises(ValueError, match=r"more than History\.load reads \(268,435,456, max_byt"):
        covey.History.load(huge)


class TagNamed(covey.Client):
    """Client 1 names a metric as history.json tags bytes: its round could not be saved."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        metrics = {"__bytes__": 1.0} if self.cid == 1 else {"loss": 0.5}
        return FitResult(weights=dict(weights), num_examples=10, metrics=metrics)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        metrics = {"__float__": 2.0} if self.cid == 1 else {"accuracy": 1.0}
        return EvaluateResult(loss=0.5, num_examples=10, metrics=metrics)


def test_a_metric_named_as_a_history_tag_fails_that_client_not_the_run(tmp_path: Path) -> None:
    # One client's metric named "__bytes__" stopped the run: "saving a round failed: record
    # of round 1 is not a RoundRecord dict: fromhex() argument must be str, not float".
    strategy = covey.FedAvg(fraction_fit=1.0, min_fit_clients=2)
    result = covey.simulate(TagNamed, 3, 1, strategy, {"w": np.zeros(2)}, run_dir=tmp_path)
    record = covey.History.load(tmp_path)[1]
    assert record.fit_participants == [0, 2]
    assert record.evaluate_participants == [0, 2]
    for failure in record.failures:
        assert failure.cid == 1
        assert "names a metric '__" in failure.error
        assert "a name the history keeps for its own tags" in failure.error
    assert result.history[1].fit_metrics == {"loss": 0.5}


def test_evaluate_fn_and_metrics_functions_are_refused_a_value_read_back_as_a_tag() -> None:
    def central(rnd: int, weights: Any) -> Any:
        return 0.5, {"__float__": 1.0}

    with pytest.raises(ValueError, match="evaluate_fn's metric '__float__' has a name the hist"):
        covey.simulate(
            lambda cid: Plain(), 2, 1, covey.FedAvg(), {"w": np.zeros(2)}, evaluate_fn=central
        )

    def tagged(results: Any) -> dict[str, Any]:
        return {"meta": [{"__bytes__": "zz"}]}

    strategy = covey.FedAvg(evaluate_metrics=tagged)
    with pytest.raises(TypeError, match=r"its metrics\['meta'\]\[0\] is a dict of the one key"):
        covey.simulate(lambda cid: Plain(), 2, 1, strategy, {"w": np.zeros(2)})

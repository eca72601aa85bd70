"""Malformed events from aggregation steps of one's own are named where they are made."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from _steps import Shift as _Shift
from _steps import reporting as _reporting
from covey.aggregate import Aggregate, Begin, Contribution, Dropped, End, Step, chain, mean


def _init() -> dict[str, np.ndarray]:
    return {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}


def _dropping(cid: int | None) -> Step:
    """Leaves client 1's contribution out with a Dropped naming ``cid`` (None: client 1)."""

    def update(state: Any, event: Any) -> Any:
        if isinstance(event, Contribution) and event.cid == 1:
            return state, (Dropped(event.cid if cid is None else cid, "too large"),)
        return state, (event,)

    return Step(lambda params: None, update)


def test_a_dropped_naming_its_own_client_fails_that_fit() -> None:
    strategy = covey.Strategy(aggregator=chain(_dropping(None), mean()), fraction_evaluate=0.0)
    record = covey.simulate(_Shift, 3, 1, strategy, _init()).history.rounds[1]
    assert record.fit_participants == [0, 2]
    assert [(f.cid, f.error) for f in record.fit_failures] == [
        (1, "left out by the aggregation: too large")
    ]


@pytest.mark.parametrize("cid", [99, 0])
def test_a_dropped_naming_another_client_stops_the_run_naming_both(cid: int) -> None:
    # Before: client 1's update was left out of the mean while the round still
    # counted client 1 as a participant, and client ``cid`` was untouched.
    strategy = covey.Strategy(aggregator=chain(_dropping(cid), mean()), fraction_evaluate=0.0)
    said = f"emitted Dropped\\(cid={cid}\\) for client 1's contribution.*Dropped\\(1, why\\)"
    with pytest.raises(covey.FederationError, match=said) as stopped:
        covey.simulate(_Shift, 3, 1, strategy, _init())
    assert isinstance(stopped.value.__cause__, TypeError)


def test_strategy_aggregate_by_hand_refuses_a_dropped_naming_another_client() -> None:
    # Before: aggregate() left client 1's update out and returned the mean of the others.
    strategy = covey.Strategy(aggregator=chain(_dropping(0), mean()))
    results = [_Shift(cid).fit(_init(), {}) for cid in range(3)]
    said = r"emitted Dropped\(cid=0\) for client 1's contribution.*Dropped\(1, why\)"
    with pytest.raises(TypeError, match=said):
        strategy.aggregate(_init(), results)
    # Naming its own client, it leaves that update out, as a round does.
    kept = covey.Strategy(aggregator=chain(_dropping(None), mean()))
    np.testing.assert_array_equal(kept.aggregate(_init(), results)["b"], [2.0, 2.0])


def _dropping_at(kind: type) -> Any:
    def update(state: Any, event: Any) -> Any:
        if isinstance(event, kind):
            return state, (event, Dropped(2, "too late"))
        return state, (event,)

    return update


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("kind", [Begin, End])
def test_a_dropped_at_begin_or_end_stops_the_run_naming_it(kind: type, asynchronous: bool) -> None:
    # Before: the Dropped was ignored, and client 2 counted as a participant.
    step = chain(Step(lambda params: None, _dropping_at(kind)), mean())
    options: dict[str, Any] = {"buffer_size": 2} if asynchronous else {}
    strategy = covey.Strategy(aggregator=step, fraction_evaluate=0.0, **options)
    at, name = ("update" if asynchronous else "round"), kind.__name__
    said = (
        rf"{at} 1: aggregation raised TypeError: the aggregation step emitted "
        rf"Dropped\(cid=2\) at the {name} of {at} 1, where there is no contribution"
    )
    with pytest.raises(covey.FederationError, match=said) as stopped:
        covey.simulate(_Shift, 3, 1, strategy, _init())
    assert isinstance(stopped.value.__cause__, TypeError)
    by_hand = covey.Strategy(aggregator=step)
    with pytest.raises(TypeError, match=rf"Dropped\(cid=2\) at the {name} of round 3, where"):
        by_hand.aggregate(_init(), [_Shift(cid).fit(_init(), {}) for cid in range(3)], round=3)


@pytest.mark.parametrize(("why", "error"), [(None, TypeError), (3, TypeError), (" ", ValueError)])
def test_a_dropped_needs_a_reason_in_words(why: Any, error: type) -> None:
    # Before: Dropped(0, None) was recorded as "left out by the aggregation: None".
    with pytest.raises(error, match=r"Dropped\(cid=0\)\.why"):
        Dropped(0, why)


@pytest.mark.parametrize(
    ("info", "at", "got"),
    [
        ({"seen": object()}, Aggregate, "object"),
        ({"clipped": {1, 2}}, End, "set"),
        ({"nested": [{"a": {3}}]}, Aggregate, "set"),
    ],
)
def test_an_info_value_the_history_cannot_keep_stops_the_run_naming_the_event(
    info: Any, at: type, got: str
) -> None:
    # Before: the run went on, and history.to_json() (or saving the run) failed
    # afterwards without naming the step or the event.
    steps = (_reporting(info, at), mean())
    strategy = covey.Strategy(aggregator=chain(*(steps if at is End else steps[::-1])))
    strategy = covey.Strategy(aggregator=strategy.aggregator, fraction_evaluate=0.0)
    key = next(iter(info))
    said = f"{at.__name__}\\(round=1\\)\\.info\\['{key}'\\]: cannot write a value of type {got}"
    with pytest.raises(covey.FederationError, match=said) as stopped:
        covey.simulate(_Shift, 3, 1, strategy, _init())
    assert isinstance(stopped.value.__cause__, TypeError)


def test_an_info_of_json_values_is_kept() -> None:
    info = {"n": np.int64(3), "x": float("nan"), "ids": [1, 2], "arr": np.arange(2), "b": b"z"}
    assert Aggregate(1, 1, 1, delta=_init(), info=info).info is info
    assert End(1, info={"none": None, "s": "text", "d": {"k": True}}).info["s"] == "text"


@pytest.mark.parametrize(("count", "got"), [("x", "str 'x'"), (True, "bool True"), (2.0, "float")])
def test_an_aggregate_client_count_that_is_no_int_is_named(count: Any, got: str) -> None:
    # Before: Aggregate(num_clients="x") was accepted.
    with pytest.raises(
        TypeError, match=rf"Aggregate\(round=1\)\.num_clients must be an int.*{got}"
    ):
        Aggregate(1, count, 1, delta=_init())


@pytest.mark.parametrize(
    ("args", "field", "error"),
    [
        ((1, -1, 5), "num_clients", ValueError),
        ((1, 2, -3), "num_examples", ValueError),
        ((-1, 2, 3), "round", ValueError),
        ((1, 2, 2.5), "num_examples", TypeError),
        ((1, 2, "3"), "num_examples", TypeError),
        ((1.0, 2, 3), "round", TypeError),
    ],
)
def test_an_aggregate_count_that_makes_no_sense_is_refused_naming_it(
    args: tuple[Any, ...], field: str, error: type[Exception]
) -> None:
    # Before: Aggregate(num_clients=-1), a negative or fractional num_examples, a
    # negative round were accepted.
    with pytest.raises(error, match=rf"Aggregate\(round=.*\)\.{field} must be an int"):
        Aggregate(args[0], args[1], args[2], delta=_init())


@pytest.mark.parametrize("arrays", [{"delta": [1.0, 2.0]}, {"weights": 3}])
def test_an_aggregate_whose_arrays_are_no_dict_is_refused_naming_them(arrays: Any) -> None:
    # Before: accepted, failing only when the round applied it.
    which = next(iter(arrays))
    with pytest.raises(TypeError, match=rf"\.{which} must be a dict of names to arrays, got"):
        Aggregate(1, 1, 1, **arrays)


def test_a_step_emitting_a_negative_client_count_stops_the_run_naming_it() -> None:
    def update(state: Any, event: Any) -> Any:
        if isinstance(event, Aggregate):
            return state, (Aggregate(event.round, -1, 1, delta=event.as_delta(state)),)
        if isinstance(event, Begin):
            return dict(event.params), (event,)
        return state, (event,)

    strategy = covey.Strategy(
        aggregator=chain(mean(), Step(lambda p: dict(p), update)), fraction_evaluate=0.0
    )
    said = r"round 1: aggregation raised ValueError: Aggregate\(round=1\)\.num_clients must be"
    with pytest.raises(covey.FederationError, match=said):
        covey.simulate(_Shift, 3, 1, strategy, _init())


def test_an_aggregate_client_count_may_be_a_numpy_integer() -> None:
    assert Aggregate(1, np.int64(2), 1, delta=_init()).num_clients == 2  # type: ignore[arg-type]


def _gpus(properties: Any) -> Any:
    return np.array([properties.get("gpu", 0), 1]) > 0  # two truths, not one


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_where_predicate_returning_no_bool_is_named(asynchronous: bool) -> None:
    # Before: the array's truth raised ValueError, read as "not eligible": every
    # client was left out and the run ended with "only 0 are available".
    make = covey.FedBuff if asynchronous else covey.FedAvg
    extra: dict[str, Any] = {"buffer_size": 2} if asynchronous else {}
    strategy = make(fraction_evaluate=0.0, where=_gpus, **extra)
    said = "where= _gpus returned ndarray for client 0, which has no truth value"
    with pytest.raises(TypeError, match=said):
        covey.simulate(_Shift, 4, 1, strategy, _init())


@pytest.mark.parametrize("passed", [True, np.bool_(True), 1, "yes", np.array([True])])
def test_a_where_predicate_may_return_a_numpy_bool(passed: Any) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0, where=lambda props: passed)
    history = covey.simulate(_Shift, 2, 1, strategy, _init()).history
    assert history.rounds[1].fit_participants == [0, 1]


def test_a_where_predicate_returning_none_leaves_the_client_out() -> None:
    # A natural predicate such as ``props.get("gpu")`` gives None where it is missing.
    def gpu(props: Any) -> Any:
        return props.get("gpu")

    strategy = covey.FedAvg(fraction_evaluate=0.0, min_available_clients=1, where=gpu)
    with pytest.raises(Exception, match="only 0 clients pass where="):
        covey.simulate(_Shift, 2, 1, strategy, _init())

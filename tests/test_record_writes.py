"""What run hooks, round callbacks and aggregation steps write into a round's record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from _steps import Shift
from covey.aggregate import Aggregate, Begin, Step, chain, mean
from covey.core import RoundRecord

#: Values as code of one's own writes them: NumPy numbers, a tuple, an int key.
WRITTEN: dict[Any, Any] = {"pair": (np.float64(0.5), np.int64(2)), 3: np.float32(0.25)}

#: WRITTEN as history.json gives it back.
READ_BACK = {"pair": [0.5, 2], "3": 0.25}


def _init() -> dict[str, np.ndarray]:
    return {"w": np.zeros((2, 2), np.float32)}


def _strategy(**options: Any) -> covey.Strategy:
    return covey.Strategy(fraction_evaluate=0.0, **options)


class _Hook:
    """A run hook writing ``info`` into each round's ``aggregate_info`` and ``privacy``."""

    def __init__(self, info: Any) -> None:
        self.info = info

    def start(self, state: Any, seed: int | None, history: covey.History) -> Any:
        return state

    def before_round(self, round: int, state: Any) -> str | None:
        return None

    def after_round(self, record: RoundRecord, state: Any) -> None:
        record.aggregate_info["mine"] = self.info
        record.privacy = {"epsilon": np.float64(1.5), "delta": np.float32(0.5)}

    def finish(self, history: covey.History, state: Any) -> None:
        pass


def test_what_a_run_hook_writes_reads_the_same_live_and_loaded(tmp_path: Path) -> None:
    # Before: the live record kept the hook's tuple, NumPy numbers and int key, while
    # history.json and History.load gave back lists, Python numbers and a string key.
    strategy = _strategy(hooks=(_Hook(dict(WRITTEN)),))
    result = covey.simulate(Shift, 3, 2, strategy, _init(), run_dir=tmp_path)
    live = result.history[1]
    assert live.aggregate_info["mine"] == READ_BACK
    assert type(live.aggregate_info["mine"]["pair"]) is list
    assert live.privacy == {"epsilon": 1.5, "delta": 0.5}
    assert type((live.privacy or {})["epsilon"]) is float
    loaded = covey.History.load(tmp_path)
    assert [r.aggregate_info for r in loaded] == [r.aggregate_info for r in result.history]
    assert [r.privacy for r in loaded] == [r.privacy for r in result.history]


def test_a_run_hook_writing_what_the_history_cannot_keep_is_named(tmp_path: Path) -> None:
    # Before: accepted; the run failed when history.json was written, with "cannot write
    # a value of type set to the history (JSON)" naming neither the hook nor the round.
    strategy = _strategy(hooks=(_Hook({1, 2}),))
    said = (
        r"run hook _Hook\.after_round\(record, state\) wrote record\.aggregate_info\['mine'\], "
        r"which the history cannot keep: cannot write a value of type set"
    )
    with pytest.raises(TypeError, match=said):
        covey.simulate(Shift, 3, 2, strategy, _init(), run_dir=tmp_path)
    covey.History.load(tmp_path)  # the rounds before it were kept
    with pytest.raises(TypeError, match=r"wrote record\.aggregate_info\['mine'\]: .* '__float__'"):
        covey.simulate(Shift, 3, 1, _strategy(hooks=(_Hook({"__float__": "1"}),)), _init())


def test_what_a_round_callback_writes_reads_the_same_live_and_loaded(tmp_path: Path) -> None:
    def note(record: RoundRecord) -> None:
        record.aggregate_info.update(WRITTEN)
        record.central_metrics = {"score": np.float32(0.5)}  # type: ignore[dict-item]

    result = covey.simulate(Shift, 3, 2, _strategy(), _init(), run_dir=tmp_path, on_round=note)
    live = result.history[2]
    assert {k: live.aggregate_info[k] for k in READ_BACK} == READ_BACK
    assert live.central_metrics == {"score": 0.5}
    assert type(live.central_metrics["score"]) is float
    loaded = covey.History.load(tmp_path)
    assert loaded[2].aggregate_info == live.aggregate_info


def _log(record: RoundRecord) -> None:
    pass


def test_a_round_callback_writing_what_the_history_cannot_keep_is_named(tmp_path: Path) -> None:
    # Before: the run stopped with the history's bare "cannot write a value of type set".
    def bad(record: RoundRecord) -> None:
        if record.round == 1:
            record.aggregate_info["bad"] = {1, 2}

    said = (
        r"on_round\[1\] .*bad in round 1 wrote record\.aggregate_info\['bad'\], which the "
        "history cannot keep: cannot write a value of type set"
    )
    with pytest.raises(TypeError, match=said):
        covey.simulate(Shift, 3, 2, _strategy(), _init(), run_dir=tmp_path, on_round=[_log, bad])
    history = covey.History.load(tmp_path)  # written, the round as it was before the callback
    assert "bad" not in history[1].aggregate_info


def test_a_value_changed_in_place_after_it_was_recorded_is_named_when_written() -> None:
    # Before: the bare "cannot write a value of type set to the history (JSON)".
    history = covey.History(rounds=[RoundRecord(round=0), RoundRecord(round=1)])
    history.rounds[1].aggregate_info["kept"] = [1]
    history.to_json()
    history.rounds[1].aggregate_info["kept"].append({2})
    with pytest.raises(TypeError, match=r"round 1's aggregate_info cannot be written to the hist"):
        history.to_json()


def _changing(value: Any) -> Step:
    """A step that emits an ``Aggregate`` and then changes the dict it gave as its info."""

    def update(state: Any, event: Any) -> Any:
        if isinstance(event, Aggregate):
            info: dict[str, Any] = {"a": 1}
            out = Aggregate(event.round, 1, 1, delta=event.as_delta(state), info=info)
            info["a"] = value
            return state, (out,)
        if isinstance(event, Begin):
            return dict(event.params), (event,)
        return state, (event,)

    return Step(lambda params: dict(params), update)


@pytest.mark.parametrize("value", [{1}, {"__float__": "1"}], ids=["set", "tag"])
def test_an_info_changed_after_its_aggregate_was_made_is_named(value: Any) -> None:
    # Before: a set stopped the run with a bare TypeError out of the round loop; a dict
    # shaped as history.json's tags was recorded as the float 1.0.
    said = r"round 1: aggregation raised TypeError: an aggregation step changed Aggregate"
    strategy = _strategy(aggregator=chain(mean(), _changing(value)))
    with pytest.raises(covey.FederationError, match=said + r"\(round=1\)\.info\['a'\] after"):
        covey.simulate(Shift, 3, 1, strategy, _init())


def test_an_info_of_numbers_is_recorded_as_before(tmp_path: Path) -> None:
    strategy = _strategy(aggregator=chain(mean(), _changing((np.int64(2), 3))))
    result = covey.simulate(Shift, 3, 1, strategy, _init(), run_dir=tmp_path)
    assert result.history[1].aggregate_info == {"a": [2, 3]}
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["rounds"][1]["aggregate_info"] == {"a": [2, 3]}


def test_an_asynchronous_runs_clock_is_recorded_as_a_python_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: a transport whose clock counts in NumPy numbers left a np.float64 in the live
    # aggregate_info["clock"], a float once loaded.
    from covey.transport._async import SimulatedAsyncTransport

    clock = SimulatedAsyncTransport.now
    monkeypatch.setattr(SimulatedAsyncTransport, "now", lambda self: np.float64(clock(self)))
    strategy = covey.FedBuff(buffer_size=2, concurrency=2, fraction_evaluate=0.0)
    result = covey.simulate(Shift, 3, 2, strategy, _init(), run_dir=tmp_path)
    live = result.history[2].aggregate_info["clock"]
    assert type(live) is float
    assert covey.History.load(tmp_path)[2].aggregate_info["clock"] == live


def test_distributed_dp_records_its_budget_as_python_numbers(tmp_path: Path) -> None:
    # Before: Noise(delta=np.float64(1e-5)) left np.float64 in the live record.privacy,
    # written by the accounting hook past the round's conversion; a float once loaded.
    from covey.secagg import Noise, secure

    noise = Noise("gaussian", np.float64(2.0), clip=np.float64(1.0), delta=np.float64(1e-5))
    with pytest.warns(UserWarning, match="honest-but-curious"):
        strategy = secure(
            covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=2),
            clip_range=1.0,
            bits=16,
            noise=noise,
        )
    result = covey.simulate(Shift, 4, 1, strategy, _init(), seed=0, run_dir=tmp_path)
    live = result.history[1].privacy or {}
    assert live == {"epsilon": live["epsilon"], "delta": 1e-5}
    assert {type(v) for v in live.values()} == {float}
    assert covey.History.load(tmp_path)[1].privacy == live


class _Notes(_Hook):
    """A run hook starting each round's ``aggregate_info["notes"]`` list and a nested dict."""

    def __init__(self) -> None:
        super().__init__(None)

    def after_round(self, record: RoundRecord, state: Any) -> None:
        record.aggregate_info["notes"] = ["hook"]
        record.aggregate_info["nested"] = {"inner": {"n": 0}}


def _append(record: RoundRecord) -> None:
    """Writes into entries the record held already: what a round's callbacks change in place."""
    if record.round == 0:  # round 0 is no round the hooks saw
        return
    record.aggregate_info["notes"].append((np.int64(record.round), np.float32(0.5)))
    record.aggregate_info["nested"]["inner"][7] = np.float64(0.25)


#: What _append leaves in round r, as history.json gives it back.
def _appended(r: int) -> dict[str, Any]:
    return {"notes": ["hook", [r, 0.5]], "nested": {"inner": {"n": 0, "7": 0.25}}}


def test_what_a_round_callback_changes_in_place_reads_the_same_live_and_loaded(
    tmp_path: Path,
) -> None:
    # Before: entries changed in place were not looked into: the live record kept the
    # tuple, NumPy numbers and int key that history.json and History.load read otherwise.
    strategy = _strategy(hooks=(_Notes(),))
    result = covey.simulate(Shift, 3, 2, strategy, _init(), run_dir=tmp_path, on_round=_append)
    live = result.history[2]
    assert live.aggregate_info == _appended(2)
    assert type(live.aggregate_info["notes"][1]) is list
    assert type(live.aggregate_info["notes"][1][0]) is int
    loaded = covey.History.load(tmp_path)
    assert [r.aggregate_info for r in loaded] == [r.aggregate_info for r in result.history]


def test_a_round_callback_changing_an_entry_into_what_the_history_cannot_keep_is_named(
    tmp_path: Path,
) -> None:
    # Before: the run stopped as it wrote its history, with "round 1's aggregate_info cannot
    # be written to the history", naming neither the callback nor the entry.
    def bad(record: RoundRecord) -> None:
        if record.round == 1:
            record.aggregate_info["notes"].append({1, 2})

    said = (
        r"on_round .*bad in round 1 wrote record\.aggregate_info\['notes'\], which the "
        "history cannot keep: cannot write a value of type set"
    )
    strategy = _strategy(hooks=(_Notes(),))
    with pytest.raises(TypeError, match=said):
        covey.simulate(Shift, 3, 2, strategy, _init(), run_dir=tmp_path, on_round=bad)
    history = covey.History.load(tmp_path)  # written, the round as it was before the callback
    assert history[1].aggregate_info["notes"] == ["hook"]


def test_an_entry_changed_in_place_is_found_converted_and_put_back_on_a_refusal() -> None:
    from covey.core._recordvalues import changed, settle, written

    record = RoundRecord(1, aggregate_info={"hist": [1, 2]}, privacy={"spent": {"eps": 1.0}})
    before = written(record)
    assert not changed(record, before)
    hist = record.aggregate_info["hist"]
    hist.append(np.int64(3))
    assert changed(record, before)
    settle(record, before, "a test")
    assert record.aggregate_info["hist"] is hist  # converted where it is
    assert hist == [1, 2, 3]
    assert type(hist[2]) is int
    before = written(record)
    spent: dict[str, Any] = (record.privacy or {})["spent"]
    spent["eps"] = np.float32(2.0)
    assert changed(record, before)
    settle(record, before, "a test")
    assert record.privacy == {"spent": {"eps": 2.0}}
    assert type(spent["eps"]) is float
    before = written(record)
    hist.append({1})
    with pytest.raises(TypeError, match=r"a test wrote record\.aggregate_info\['hist'\], which"):
        settle(record, before, "a test")
    assert record.aggregate_info["hist"] == [1, 2, 3]  # put back as it was

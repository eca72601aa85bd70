"""A live run's best value and clients' rounds, grown with its new rounds, equal a walk of all."""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the dashboard extra is needed")

import covey
from covey.core import RoundRecord
from covey.dashboard import _runs as runs_module
from covey.dashboard import _tally as tally_module
from covey.dashboard import read_run
from covey.dashboard._app import RunCache
from covey.dashboard._runs import clients_table, detail, summary
from covey.server import RunStore
from covey.server._outputs import write_outputs

_CANDIDATES = (
    ("central", "accuracy", max),
    ("evaluate", "accuracy", max),
    ("central", "loss", min),
    ("evaluate", "loss", min),
)


def _value(record: dict[str, Any], source: str, name: str) -> float | None:
    """A metric of a round as the dashboard reads it (a tagged NaN included)."""
    if name == "loss":
        raw = record.get(f"{source}_loss")
    else:
        raw = record.get(f"{source}_metrics", {}).get(name)
    if isinstance(raw, dict):
        return float(raw["__float__"])
    return None if raw is None or isinstance(raw, bool) else float(raw)


def _best_walked(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best value as the dashboard found it by walking every round."""
    for source, name, better in _CANDIDATES:
        points = [
            (v, r["round"])
            for r in rounds
            if (v := _value(r, source, name)) is not None and math.isfinite(v)
        ]
        if points:
            value, at = better(points, key=lambda p: p[0])
            label = "test" if source == "central" else "federated"
            return {"name": f"{label} {name}", "value": value, "round": at}
    return None


def _clients_walked(rounds: list[dict[str, Any]], column: str, cid: int) -> list[int]:
    key = column.replace("_rounds", "_participants")
    return [r["round"] for r in rounds for c in r.get(key) or [] if c == cid]


def _same_as_walked(tally: tally_module.Tally, rounds: list[dict[str, Any]]) -> None:
    assert tally.best() == _best_walked(rounds)
    assert tally.done() == max((r["round"] for r in rounds), default=None)
    for cid in range(6):
        for column in ("fit_rounds", "evaluate_rounds"):
            assert tally.client_rounds(column, cid) == _clients_walked(rounds, column, cid)


def _random_round(rng: random.Random, k: int) -> dict[str, Any]:
    record: dict[str, Any] = {"round": k}
    for source in ("central", "evaluate"):
        if rng.random() < 0.7:  # ties (few values), NaN and infinities among them
            loss = rng.choice([0.5, 1.0, 2.0, math.nan, math.inf])
            record[f"{source}_loss"] = {"__float__": "nan"} if math.isnan(loss) else loss
        if rng.random() < 0.4:
            record[f"{source}_metrics"] = {"accuracy": rng.choice([0.1, 0.5, 0.9, -math.inf])}
    for key in ("fit_participants", "evaluate_participants"):
        record[key] = [rng.randrange(6) for _ in range(rng.randrange(4))]  # a repeat included
    return record


def test_a_tally_grown_round_by_round_equals_a_walk_of_every_round() -> None:
    rng = random.Random(7)
    rounds: list[dict[str, Any]] = []
    tally = tally_module.tally_of(rounds)
    kept: list[tuple[tally_module.Tally, list[dict[str, Any]]]] = []
    for step in range(300):
        old = rounds
        pick = rng.random()
        if pick < 0.7 or len(rounds) < 3:  # new rounds after the old ones
            first = rounds[-1]["round"] + 1 if rounds else 0
            rounds = rounds + [_random_round(rng, first + i) for i in range(rng.randrange(3))]
        elif pick < 0.8:  # a resumed run that redid a round, with other numbers
            at = rng.randrange(len(rounds))
            rounds = [*rounds[:at], _random_round(rng, rounds[at]["round"]), *rounds[at + 1 :]]
        elif pick < 0.9:  # a history cut short
            rounds = rounds[: rng.randrange(len(rounds))]
        else:  # another run in the folder, one with a round left out
            rounds = [dict(r) for r in rounds if r["round"] != rounds[1]["round"]]
        tally = tally_module.grown(tally, old, rounds)
        _same_as_walked(tally, rounds)
        if step % 25 == 0:
            kept.append((tally, rounds))
    for earlier, its_rounds in kept:  # grown since: each still answers for its own rounds
        _same_as_walked(earlier, its_rounds)


def test_a_tally_grown_twice_from_one_read_walks_the_second_run_whole() -> None:
    rounds = [{"round": 0, "central_loss": 1.0, "fit_participants": [1]}]
    first = tally_module.tally_of(rounds)
    a = [*rounds, {"round": 1, "central_loss": 0.5, "fit_participants": [1]}]
    b = [*rounds, {"round": 2, "central_loss": 2.0, "fit_participants": [1, 2]}]
    grown_a, grown_b = tally_module.grown(first, rounds, a), tally_module.grown(first, rounds, b)
    _same_as_walked(grown_a, a)
    _same_as_walked(grown_b, b)
    _same_as_walked(first, rounds)


def test_rounds_read_again_that_equal_the_old_only_as_python_compares_are_walked_again() -> None:
    # true == 1 and -0.0 == 0.0 in Python, but not to the best value.
    old = [{"round": 0, "central_metrics": {"accuracy": 1}, "central_loss": 0.0}]
    new = [{"round": 0, "central_metrics": {"accuracy": True}, "central_loss": -0.0}]
    tally = tally_module.grown(tally_module.tally_of(old), old, new)
    _same_as_walked(tally, new)
    assert tally.best() == {"name": "test loss", "value": -0.0, "round": 0}
    assert math.copysign(1.0, tally.best()["value"]) == -1.0  # type: ignore[index]


def test_rounds_out_of_order_are_tallied_whole() -> None:
    rounds = [{"round": 3, "fit_participants": [1]}, {"round": 1, "fit_participants": [1]}]
    tally = tally_module.tally_of(rounds)
    assert tally.client_rounds("fit_rounds", 1) == [3, 1]
    assert tally.done() == 3
    grown = tally_module.grown(tally, rounds, [*rounds, {"round": 4, "fit_participants": [1]}])
    assert grown.client_rounds("fit_rounds", 1) == [3, 1, 4]


def _record(k: int, accuracy: float, fit: list[int]) -> RoundRecord:
    return RoundRecord(
        round=k,
        fit_participants=fit,
        evaluate_participants=fit[:1],
        central_loss=1.0 / (k + 1),
        central_metrics={"accuracy": accuracy},
    )


class _Counted:
    """Counts the walks of every round of a run a cache makes for its best value and clients."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.walks = 0
        self.on = False
        for module, name in ((tally_module, "tally_of"), (runs_module, "best_metric")):
            monkeypatch.setattr(module, name, self._counted(getattr(module, name)))

    def _counted(self, whole: Callable[[list[dict[str, Any]]], Any]) -> Any:
        def counted(rounds: list[dict[str, Any]]) -> Any:
            self.walks += self.on
            return whole(rounds)

        return counted

    def shown(self, cache: RunCache, folder: Path) -> dict[str, Any]:
        """What ``cache`` shows of the run in ``folder``, checked against a walk of it all."""
        self.on = True
        run = cache.read("fed", folder)
        row, clients, shown = cache.summary(run), clients_table(run), detail(run)
        self.on = False
        fresh = read_run("fed", folder)
        assert row == summary(fresh)
        assert clients == clients_table(fresh)
        assert shown == detail(fresh)
        return row


def test_a_live_run_read_again_at_each_round_walks_only_its_new_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At each new round the dashboard walked every round of a run again for its best
    # value and its clients' rounds: at 20,000 rounds, most of a second a round.
    run = tmp_path / "fed"
    store = RunStore.create(run, config={"rounds": 20, "strategy": "FedAvg"})
    counted = _Counted(monkeypatch)
    cache = RunCache(tmp_path)
    history = covey.History(config={"rounds": 20, "strategy": "FedAvg"})
    try:
        ids = [store.client_id(f"site-{i}") for i in range(3)]
        accuracies = [0.2, 0.5, 0.5, 0.4, 0.7, math.nan, 0.7, 0.1]
        for k, accuracy in enumerate(accuracies):
            record = _record(k, accuracy, ids[k % 3 :])
            store.save_round(k, {"w": np.ones(2)}, record)
            history.rounds.append(record)
            if k in (2, 5):  # history.json rewritten now and then, with the rounds so far
                write_outputs(run, history, plot=False)
            row = counted.shown(cache, run)
            assert row["rounds_done"] == k
        assert row["best"] == {"name": "test accuracy", "value": 0.7, "round": 4}
        assert counted.walks == 1  # the first read only

        # A resumed run redid rounds 6 and 7, with other numbers: its first six rounds, those
        # the tally held, are not walked again (they were, at 20,000 rounds for a second).
        store.discard_after(5)
        history.rounds[6:] = [_record(6, 0.9, ids[:1]), _record(7, 0.3, ids)]
        for record in history.rounds[6:]:
            store.save_round(record.round, {"w": np.ones(2)}, record)
        write_outputs(run, history, plot=False)
        row = counted.shown(cache, run)
        assert row["best"] == {"name": "test accuracy", "value": 0.9, "round": 6}
        assert counted.walks == 1
        store.save_round(8, {"w": np.ones(2)}, _record(8, 0.95, ids[1:]))
        assert counted.shown(cache, run)["best"]["round"] == 8
        assert counted.walks == 1
    finally:
        store.close()


def test_a_history_cut_short_is_not_walked_and_another_run_in_its_folder_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, other = tmp_path / "fed", tmp_path / "other"
    history = covey.History(config={"rounds": 9, "strategy": "FedAvg"})
    history.rounds = [_record(k, 0.1 * k, [k % 2]) for k in range(6)]
    run.mkdir()
    write_outputs(run, history, plot=False)
    counted = _Counted(monkeypatch)
    cache = RunCache(tmp_path)
    assert counted.shown(cache, run)["best"]["round"] == 5
    cut = covey.History(config=history.config, rounds=history.rounds[:3])
    write_outputs(run, cut, plot=False)  # rewritten with fewer rounds: the tally cut
    assert counted.shown(cache, run)["best"]["round"] == 2
    assert counted.walks == 1
    cut.rounds.append(_record(3, 0.05, [1]))
    write_outputs(run, cut, plot=False)
    assert counted.shown(cache, run)["best"]["round"] == 2
    assert counted.walks == 1  # an appended round: grown

    swapped = covey.History(config=history.config, rounds=[_record(k, 0.3, [1]) for k in range(5)])
    other.mkdir()
    write_outputs(other, swapped, plot=False)
    shutil.rmtree(run)
    other.rename(run)  # another run in the same folder
    assert counted.shown(cache, run)["best"] == {
        "name": "test accuracy",
        "value": 0.3,
        "round": 0,
    }
    assert counted.walks == 2

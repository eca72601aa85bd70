"""A round's durations tell the wait for clients from the work: history, and ``covey runs show``."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

import covey
from covey.cli._runs import round_table
from covey.core._history import RoundRecord
from covey.trackers import round_scalars

sys.path.insert(0, str(Path(__file__).parent))
from _live import Fit, Joined, Served


def _table(history: covey.History) -> str:
    out = Console(file=io.StringIO(), width=200)
    out.print(round_table(history))
    return out.file.getvalue()  # type: ignore[attr-defined]


def _one_client() -> covey.Strategy:
    return covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)


def test_a_deployed_round_records_its_wait_and_its_aggregation_apart(tmp_path: Path) -> None:
    served = Served(_one_client(), 1, run_dir=tmp_path / "run")
    time.sleep(0.5)  # the server waits for its one client this long, at least
    client = Joined(served.port, Fit())
    history = served.join(60).history
    client.join(30)
    durations = history.rounds[1].durations
    # no federated evaluation (fraction_evaluate=0) nor evaluate_fn: neither is timed
    assert set(durations) == {"wait", "fit", "aggregate", "total"}
    assert 0 <= durations["aggregate"] <= durations["fit"]  # the server's share of the fit
    assert durations["wait"] + durations["fit"] <= durations["total"] + 1e-9

    # covey runs show (and the table at a run's end) shows the wait apart from the total.
    saved = covey.History.load(tmp_path / "run")
    assert saved.rounds[1].durations == durations
    lines = _table(saved).splitlines()
    assert any("waiting" in line for line in lines)
    row = next(line for line in lines if line.split()[:1] == ["1"])
    assert f"{durations['wait']:.2f}" in row.split()
    assert f"{durations['total']:.2f}" in row.split()


def test_a_simulated_round_records_its_aggregation_and_has_no_wait() -> None:
    history = covey.simulate(
        client_fn=lambda cid: Fit(),
        num_clients=2,
        rounds=2,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights={"w": np.zeros(4)},
    ).history
    for record in history.rounds[1:]:
        assert "wait" not in record.durations
        assert 0 <= record.durations["aggregate"] <= record.durations["fit"]
    assert "waiting" not in _table(history)


class Scored(Fit):
    def evaluate(self, weights: object, config: object) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=1.0, num_examples=1)


def _central(rnd: int, weights: object) -> tuple[float, dict[str, float]]:
    return 0.5, {}


def test_only_the_evaluations_that_ran_are_timed(tmp_path: Path) -> None:
    # Before, every round recorded "evaluate" and "central", a few microseconds each,
    # for evaluations that never ran: no evaluate_fn, fraction_evaluate=0, a round not due.
    def stages(run: str, strategy: covey.Strategy | None = None, **kwargs: Any) -> list[set[str]]:
        history = covey.simulate(
            lambda cid: Scored(),
            2,
            4,
            strategy or covey.FedAvg(fraction_evaluate=0.0),
            {"w": np.zeros(4)},
            run_dir=tmp_path / run,
            **kwargs,
        ).history
        saved = covey.History.load(tmp_path / run)  # history.json, as covey runs show reads it
        assert [r.durations for r in saved.rounds] == [r.durations for r in history.rounds]
        for record in history.rounds[1:]:  # what TensorBoard and MLflow are given
            timed = {k for k in round_scalars(record) if k.startswith("time/")}
            assert timed == {f"time/{stage}" for stage in record.durations}
        return [set(r.durations) - {"fit", "aggregate", "total"} for r in history.rounds[1:]]

    assert stages("none") == [set()] * 4
    assert stages("central", evaluate_fn=_central) == [{"central"}] * 4
    assert stages("both", evaluate_fn=_central, strategy=covey.FedAvg()) == (
        [{"evaluate", "central"}] * 4
    )
    every = covey.FedAvg(evaluate_every=2)  # rounds 2 and 4 (the last) evaluate, 1 and 3 do not
    assert stages("every", evaluate_fn=_central, strategy=every) == (
        [set(), {"evaluate", "central"}] * 2
    )
    fedbuff = covey.FedBuff(buffer_size=2, fraction_evaluate=0.0)
    assert stages("async", strategy=fedbuff) == [set()] * 4
    assert stages("async_central", strategy=fedbuff, evaluate_fn=_central) == [{"central"}] * 4


def test_an_asynchronous_round_records_its_aggregation() -> None:
    history = covey.simulate(
        client_fn=lambda cid: Fit(),
        num_clients=2,
        rounds=2,
        strategy=covey.FedBuff(buffer_size=2, fraction_evaluate=0.0),
        initial_weights={"w": np.zeros(4)},
    ).history
    for record in history.rounds[1:]:
        assert 0 <= record.durations["aggregate"] <= record.durations["fit"]


def test_the_servers_round_line_gives_the_stages_in_their_order() -> None:
    from covey.deploy._console import ServerConsole

    lines: list[str] = []
    record = RoundRecord(1, fit_participants=[0])
    # as a deployed round records them: each stage when it ends, "aggregate" inside "fit"
    for stage, seconds in [("wait", 4.0), ("aggregate", 0.25), ("fit", 1.5), ("total", 5.75)]:
        record.durations[stage] = seconds
    ServerConsole(lines.append, 1, {}).on_round(record)
    assert (
        "took fit 1.50 s, aggregate 0.25 s, total 5.75 s (after waiting 4.00 s for clients)"
        in "\n".join(lines)
    )


def test_the_servers_round_line_leaves_out_the_evaluations_that_did_not_run() -> None:
    # Before: a round without federated evaluation nor evaluate_fn still said
    # "evaluate 0.00 s, central 0.00 s", the microseconds of stages that did not run.
    from covey.deploy._console import ServerConsole

    def took(record: RoundRecord) -> str:
        lines: list[str] = []
        timed = {"aggregate": 0.25, "fit": 1.5, "evaluate": 2e-6, "central": 1e-6, "total": 1.75}
        record.durations.update(timed)
        ServerConsole(lines.append, 1, {}).on_round(record)
        return next(line for line in lines if "took" in line).split("took ", 1)[1]

    assert took(RoundRecord(1, fit_participants=[0])) == (
        "fit 1.50 s, aggregate 0.25 s, total 1.75 s"
    )
    evaluated = RoundRecord(1, fit_participants=[0], evaluate_participants=[0], central_loss=0.5)
    assert took(evaluated) == (
        "fit 1.50 s, aggregate 0.25 s, evaluate 0.00 s, central 0.00 s, total 1.75 s"
    )

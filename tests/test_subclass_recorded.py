"""A strategy subclass's own attributes are recorded by value, and a resume with others refused.

``describe()`` records a subclass's class, overrides and attributes of its own
(``docs/strategies.md``, "Strategies of your own"), and a run resumed with other
values of them is refused, simulated or deployed.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from _steps import Shift
from covey.deploy import connect, serve
from covey.server._resume import strategy_changes


def _init() -> dict[str, np.ndarray]:
    return {"w": np.zeros(3)}


@dataclass(frozen=True)
class _Stepped(covey.Strategy):
    """A learning-rate schedule given as a table of its own."""

    schedule: Any = (0.1, 0.01)

    def fit_config(self, round: int) -> dict[str, Any]:
        table = self.schedule.values() if isinstance(self.schedule, dict) else self.schedule
        return {"lr": sorted(table, reverse=True)[min(round, len(table)) - 1]}


def _stepped(schedule: Any) -> _Stepped:
    return _Stepped(schedule=schedule, fraction_evaluate=0.0)


@pytest.mark.parametrize(
    ("value", "same", "other", "said"),
    [
        ((0.1, 0.01), [0.1, 0.01], (0.1, 0.001), " [0.1, 0.01] (the run's) is [0.1, 0.001] now"),
        (np.array([0.1, 0.01]), (0.1, 0.01), np.array([0.2, 0.01]), " [0.1, 0.01] (the run's)"),
        (
            {"1": 0.1, "2": 0.01},
            {"1": 0.1, "2": 0.01},
            {"1": 0.1, "2": 0.5},
            ".2 0.01 (the run's) is 0.5 now",
        ),
        (frozenset({0.1, 0.01}), {0.01, 0.1}, frozenset({0.1}), " [0.01, 0.1] (the run's)"),
    ],
)
def test_a_subclass_attribute_holding_a_container_is_recorded_by_value(
    tmp_path: Path, value: Any, same: Any, other: Any, said: str
) -> None:
    # Before: a tuple, array, dict or set was recorded by its type's name ("tuple"),
    # so a run resumed with another schedule went on with it, unsaid.
    run = tmp_path / "run"
    covey.simulate(Shift, 3, 1, _stepped(value), _init(), run_dir=run)
    with pytest.raises(ValueError, match=re.escape(f"strategy schedule{said}")):
        covey.simulate(Shift, 3, 2, _stepped(other), _init(), run_dir=run, resume=True)
    resumed = covey.simulate(Shift, 3, 2, _stepped(same), _init(), run_dir=run, resume=True)
    assert resumed.history.rounds[-1].round == 2


@dataclass(frozen=True)
class _Tabled(covey.Strategy):
    """Attributes no value of which is recorded one by one."""

    table: Any = field(default_factory=lambda: np.zeros(5000))
    lr_fn: Any = np.cos


def test_a_large_attribute_is_recorded_by_digest_and_a_function_by_name() -> None:
    options = _Tabled().describe()["options"]
    assert re.fullmatch(r"ndarray sha256:[0-9a-f]{32}", options["table"])
    assert options["lr_fn"] == "cos"
    other = np.zeros(5000)
    other[-1] = 1.0
    assert _Tabled(table=other).describe()["options"]["table"] != options["table"]
    assert _Tabled(table=np.zeros(5000)).describe()["options"]["table"] == options["table"]


def test_a_run_that_recorded_an_attribute_by_its_type_name_resumes() -> None:
    # A run of an older covey recorded the schedule as "tuple": its value is unknown,
    # and one of that type resumes it, as that covey did.
    stored = _stepped((0.1, 0.01)).describe()
    stored["options"]["schedule"] = "tuple"
    assert strategy_changes(stored, _stepped((0.3, 0.01)), ("options",)) == []
    changed = strategy_changes(stored, _stepped([0.3, 0.01]), ("options",))
    assert changed == ["schedule 'tuple' (the run's) is [0.3, 0.01] now"]


@dataclass(frozen=True)
class _Decay(covey.Strategy):
    """A subclass with a hyperparameter of its own."""

    base_lr: float = 0.5

    def fit_config(self, round: int) -> dict[str, Any]:
        return {"lr": self.base_lr / round}


def _serve(strategy: covey.Strategy, run_dir: Path, rounds: int, resume: bool) -> Any:
    sites: list[threading.Thread] = []

    def start(port: int) -> None:
        for cid in range(2):
            address = f"127.0.0.1:{port}"
            kwargs = {"insecure": True, "name": f"site-{cid}"}
            sites.append(
                threading.Thread(target=connect, args=(Shift(cid), address), kwargs=kwargs)
            )
            sites[-1].start()

    try:
        return serve(
            strategy,
            rounds,
            _init(),
            "127.0.0.1:0",
            insecure=True,
            run_dir=run_dir,
            resume=resume,
            on_listen=start,
            wait_timeout=5,
            round_timeout=30,
            plot=False,
        )
    finally:
        for thread in sites:
            thread.join(30)


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_deployed_run_resumed_with_another_subclass_attribute_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the deployed server logged "resuming ... with another option: base_lr 0.5
    # (the run's) is 0.1 now" and went on, mixing two schedules in one run.
    run = tmp_path / "run"
    _serve(_Decay(base_lr=0.5, fraction_evaluate=0.0), run, 1, resume=False)

    def resume_with(strategy: covey.Strategy) -> None:
        kept: dict[str, Any] = {"run_dir": run, "resume": True, "plot": False, "wait_timeout": 5}
        serve(strategy, 2, _init(), "127.0.0.1:0", insecure=True, **kept)

    with pytest.raises(ValueError, match=re.escape("base_lr 0.5 (the run's) is 0.1 now")):
        resume_with(_Decay(base_lr=0.1, fraction_evaluate=0.0))
    with pytest.raises(ValueError, match=re.escape("class 'test_subclass_recorded._Decay' (the")):
        resume_with(covey.Strategy(fraction_evaluate=0.0))
    # Other options still only warn.
    changed = _Decay(base_lr=0.5, fraction_evaluate=0.0, fraction_fit=0.5)
    result = _serve(changed, run, 2, resume=True)
    assert result.history.rounds[-1].round == 2
    assert "with another option: fraction_fit 1.0 (the run's) is 0.5 now" in caplog.text

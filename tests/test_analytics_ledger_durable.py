"""A site's ledger file is durable: the rename of the new ledger is flushed with its folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from covey.analytics._dp import Budget
from covey.analytics._ledger_file import load_budget, save_budget


def test_saving_a_ledger_flushes_the_file_and_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "site.covey-budget.json"
    budget = Budget(5.0, 1e-6, owner="the site")
    save_budget(budget, path)
    assert str(tmp_path.resolve()) in synced  # the rename itself is on disk
    assert any(s.startswith(str(tmp_path.resolve()) + os.sep) for s in synced)  # the content
    assert load_budget(path, 5.0, 1e-6).spent == budget.spent
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_a_ledger_file_that_lost_events_is_refused_not_under_counted(tmp_path: Path) -> None:
    from covey.analytics._dp import event

    path = tmp_path / "site.covey-budget.json"
    budget = Budget(5.0, 1e-6, owner="the site")
    budget.charge(event("laplace", 2.0, 1))
    budget.charge(event("gaussian", 3.0, 2))
    save_budget(budget, path)
    assert load_budget(path, 5.0, 1e-6).spent == pytest.approx(budget.spent)
    data = json.loads(path.read_text())
    data["ledger"]["entries"] = data["ledger"]["entries"][:1]  # an event is lost
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="events are missing"):
        load_budget(path, 5.0, 1e-6)


def test_a_ledger_in_a_missing_folder_is_refused_naming_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "site.covey-budget.json"
    with pytest.raises(OSError, match=r"folder .*nowhere does not exist") as info:
        save_budget(Budget(5.0, 1e-6, owner="the site"), path)
    assert ".tmp" not in str(info.value)


def test_a_ledger_file_with_a_count_past_int64_is_refused_naming_the_file(
    tmp_path: Path,
) -> None:
    from covey.analytics._dp import event

    path = tmp_path / "site.covey-budget.json"
    budget = Budget(5.0, 1e-6, owner="the site")
    budget.charge(event("laplace", 2.0, 1))
    save_budget(budget, path)
    data = json.loads(path.read_text())
    data["ledger"]["entries"][0][1] = 10**400  # damage: no float holds its epsilon
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"site\.covey-budget\.json.*up to 2\*\*63 - 1"):
        load_budget(path, 5.0, 1e-6)


@pytest.mark.parametrize("spent", ["NaN", "Infinity", "-Infinity", "-0.5", "1e999"])
def test_a_ledger_file_whose_spent_is_not_a_finite_epsilon_is_refused_by_name(
    tmp_path: Path, spent: str
) -> None:
    # NaN compared as "not above the events": the file loaded, the damage unseen
    from covey.analytics._dp import event

    path = tmp_path / "site.covey-budget.json"
    budget = Budget(5.0, 1e-6, owner="the site")
    budget.charge(event("laplace", 2.0, 1))
    save_budget(budget, path)
    text = path.read_text()
    damaged = text.replace(f'"spent": {budget.spent!r}', f'"spent": {spent}')
    assert damaged != text
    path.write_text(damaged)
    with pytest.raises(ValueError, match=r"records spent .*not a finite epsilon >= 0") as info:
        load_budget(path, 5.0, 1e-6)
    assert str(path) in str(info.value)
    assert path.read_text() == damaged  # refused, not repaired


@pytest.mark.parametrize("spent", [float("nan"), float("inf"), -1.0])
def test_an_analyst_budget_whose_spent_is_not_a_finite_epsilon_is_refused(spent: float) -> None:
    from covey.analytics import Analyst
    from covey.analytics._dp import event

    analyst = Analyst(epsilon=5.0)
    analyst.charge_query("q1", event("laplace", 2.0, 1))
    data = {**analyst.to_json(), "spent": spent}
    with pytest.raises(ValueError, match=r"the analyst's budget records spent .*not a finite"):
        Analyst.from_json(data)

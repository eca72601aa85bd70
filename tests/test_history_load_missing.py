"""History.load names the folder it was given when that folder is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

from covey import History


def test_a_missing_run_folder_is_named_not_its_parent(tmp_path: Path) -> None:
    # It said "no history.json in <tmp_path>": the parent, which holds no run either.
    missing = tmp_path / "study-2"
    with pytest.raises(FileNotFoundError, match="study-2") as caught:
        History.load(missing)
    assert str(caught.value) == f"no run folder {missing}: there is no such file or folder"


def test_a_folder_without_history_json_still_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no history\.json in .*empty: is it a covey"):
        History.load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"no history\.json in .*empty: is it a covey"):
        History.load(tmp_path / "empty" / "history.json")

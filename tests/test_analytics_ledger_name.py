"""`covey site`'s default ledger file, NAME.covey-budget.json next to its first table."""

from __future__ import annotations

from pathlib import Path

import pytest

from covey.analytics._cli import default_ledger


@pytest.mark.parametrize("name", ["../outside", "a/b", "/etc/site"])
def test_a_site_name_holding_a_separator_names_no_ledger_outside_the_tables_folder(
    tmp_path: Path, name: str
) -> None:
    # --name ../outside kept the site's budget in the folder above its table's.
    tables = {"t": str(tmp_path / "data" / "t.csv")}
    with pytest.raises(ValueError, match=r"folder separator.*give the file with --ledger FILE"):
        default_ledger(tables, name)


def test_a_site_name_too_long_for_a_file_name_asks_for_ledger(tmp_path: Path) -> None:
    # It failed with "[Errno 36] File name too long" on the lock file beside the ledger.
    tables = {"t": str(tmp_path / "t.csv")}
    with pytest.raises(ValueError, match=r"250 characters is too long.*--ledger FILE"):
        default_ledger(tables, "n" * 250)


def test_a_site_name_in_any_script_names_its_ledger_next_to_the_table(tmp_path: Path) -> None:
    tables = {"t": f"sqlite:///{tmp_path / 'é 中文' / 'db.db'}"}
    ledger = default_ledger(tables, "café 🚀 -x")
    assert ledger == tmp_path / "é 中文" / "café 🚀 -x.covey-budget.json"

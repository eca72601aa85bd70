"""The revocation list a server folder needs: a missing or damaged one is named, with the fix.

A server folder holding the three files the deployment guide listed, without
revoked.json, was refused with nothing said of how to mend it, and a
revocation list with an entry that is not an object was refused with
Python's own words (`'int' object is not subscriptable`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from covey.deploy._tls import tls_from_dir
from covey.deploy.certs import init_federation, load_revoked


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    return init_federation(tmp_path / "fed").directory


def test_a_server_folder_without_its_revocation_list_says_how_to_mend_it(fed: Path) -> None:
    (fed / "revoked.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"revoked\.json is missing: copy revoked\.json"):
        tls_from_dir(fed)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[1]", 'entry 0 is not an object with a "serial": 1'),
        ('[{"serial": "0x1f"}, "abc"]', "entry 1 is not an object with a \"serial\": 'abc'"),
        ('[{"common_name": "site"}]', 'entry 0 is not an object with a "serial"'),
    ],
)
def test_a_revocation_list_entry_without_a_serial_is_named(fed: Path, text: str, said: str) -> None:
    (fed / "revoked.json").write_text(text)
    with pytest.raises(ValueError, match="malformed revocation list") as refused:
        load_revoked(fed)
    assert said in str(refused.value)

"""Every command taking ``--certs`` and ``--insecure`` refuses the two together, by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from _clirun import (
    covey,
    in_tmp,  # noqa: F401 - the fixture, used by pytestmark
)

pytestmark = pytest.mark.usefixtures("in_tmp")


@pytest.mark.parametrize(
    "command",
    [
        ["server", "--app", "digits_app:server_app"],
        ["client", "--app", "digits_app:client_fn", "--cid", "0", "--server", "127.0.0.1:1"],
        ["site", "--table", "t=t.csv", "--server", "127.0.0.1:1", "--name", "a", "--once"],
        ["query", "SELECT COUNT(*) FROM t", "--server", "127.0.0.1:0", "--no-secure"],
    ],
    ids=lambda command: command[0],
)
def test_certificates_and_insecure_together_are_refused(tmp_path: Path, command: list[str]) -> None:
    # `covey query` served with TLS, passing --insecure over without a word; `covey site`
    # made its budget ledger, then said "give tls= or insecure=True" (the Python API's
    # words) and exited 1, the status that asks a service manager to start it again.
    (tmp_path / "t.csv").write_text("a\n1\n")
    code, out = covey(*command, "--certs", str(tmp_path / "fed"), "--insecure")
    assert code == 2, out
    assert "give --certs DIR or --insecure, not both" in " ".join(out.split())
    assert not list(tmp_path.glob("*.covey-budget.json"))  # refused before anything is made

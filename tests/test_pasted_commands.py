"""The commands covey prints to paste name their paths as one shell word each."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from _clirun import covey, in_tmp
from covey.deploy._client import tls_from_certs
from covey.deploy._servechecks import check_new_run_dir
from covey.server._served import how_to_continue
from covey.server._store import RunStore
from covey.sim._checkpoint import _open

__all__ = ["in_tmp"]

ODD = "my run $HOME 'x'"
"""A folder name a shell would split, expand and unquote if pasted as it is."""


def _command(text: str, starts: str) -> list[str]:
    """The words of the first command in backticks (or parentheses) of ``text`` from ``starts``."""
    found = re.search(r"[`(](" + re.escape(starts) + r"[^`]*?)[`)](?: |,|;|$)", text)
    assert found is not None, text
    return shlex.split(found.group(1))


def _served_run(folder: Path) -> Path:
    RunStore.create(folder, config={"rounds": 2, "strategy": "FedAvg"}).close()
    return folder


@pytest.mark.parametrize("name", [ODD, "runs/plain"])
def test_how_to_continue_quotes_the_run_folder(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    words = _command(how_to_continue(folder), "covey server")
    assert words == ["covey", "server", "--resume", str(folder)]
    if name == "runs/plain":  # an ordinary path is printed as before
        assert f"`covey server --resume {folder}`" in how_to_continue(folder)


def test_check_new_run_dir_quotes_the_resume(tmp_path: Path) -> None:
    folder = _served_run(tmp_path / ODD)
    with pytest.raises(FileExistsError) as caught:
        check_new_run_dir(folder)
    assert _command(str(caught.value), "covey server") == [
        "covey",
        "server",
        "--resume",
        str(folder),
    ]


def test_simulation_resume_of_a_served_run_quotes_it(tmp_path: Path) -> None:
    folder = _served_run(tmp_path / ODD)
    with pytest.raises(ValueError, match="deployed run") as caught:
        _open(folder, 3)
    assert _command(str(caught.value), "covey server")[-1] == str(folder)


@pytest.mark.parametrize("client_id", ["site-1", "-site"])
def test_missing_client_cert_names_a_command_to_paste(tmp_path: Path, client_id: str) -> None:
    federation = tmp_path / "fed $x"
    federation.mkdir()
    (federation / "ca.pem").write_text("not read")
    with pytest.raises(FileNotFoundError) as caught:
        tls_from_certs(federation, client_id)
    words = _command(str(caught.value), "covey certs")
    assert words[:3] == ["covey", "certs", "issue"]
    at = words.index("--dir")
    assert words[at + 1] == str(federation)
    rest = words[3:at] + words[at + 2 :]
    # A name starting with a dash comes after --, never read as an option.
    assert rest == (["--", client_id] if client_id.startswith("-") else [client_id])


@pytest.mark.usefixtures("in_tmp")
def test_runs_show_of_no_run_quotes_the_runs_folder(tmp_path: Path) -> None:
    runs = tmp_path / ODD
    runs.mkdir()
    code, output = covey("runs", "show", "nothing", "--dir", str(runs))
    assert code != 0
    flat = " ".join(output.split())  # a long line may wrap
    assert _command(flat, "covey runs list") == ["covey", "runs", "list", "--dir", str(runs)]


@pytest.mark.usefixtures("in_tmp")
def test_server_run_dir_holding_a_run_quotes_the_resume(tmp_path: Path) -> None:
    folder = _served_run(tmp_path / ODD)
    code, output = covey(
        "server",
        "--insecure",
        "--address",
        "127.0.0.1:0",
        "--run-dir",
        str(folder),
        "--app",
        "tiny_app:server_app",
    )
    assert code != 0
    flat = " ".join(output.split())
    found = re.search(r"continue it with (--resume .*?) or give", flat)
    assert found is not None, output
    assert shlex.split(found.group(1)) == ["--resume", str(folder)]

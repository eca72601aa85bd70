"""Files a user names on the command line (port files, ``--json``): devices are written into.

A rename over ``/dev/null`` (what an atomic write does) made it a regular file for
every program on the machine when the command ran as root.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from covey.core._files import write_output


def test_a_regular_file_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "port"
    target.write_text("old and longer")
    write_output(target, "9092")
    assert target.read_text() == "9092"
    write_output(tmp_path / "new", b"\x00\x01")
    assert (tmp_path / "new").read_bytes() == b"\x00\x01"


def test_a_link_to_a_device_stays_a_link_to_that_device(tmp_path: Path) -> None:
    link = tmp_path / "discard"
    link.symlink_to(os.devnull)
    write_output(link, "9092")
    assert link.is_symlink()
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_a_named_pipe_is_written_into_and_stays_a_pipe(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    reader.start()
    for _ in range(200):  # the reader opens the pipe; a writer before it finds no reader
        try:
            write_output(pipe, "9092")
            break
        except OSError:
            time.sleep(0.05)
    reader.join(10)
    assert got == [b"9092"]
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)


def test_a_pipe_nobody_reads_is_refused_at_once(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(OSError, match="a named pipe that no process reads") as info:
        write_output(pipe, "9092")
    assert info.value.filename == str(pipe)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)


def test_a_query_port_file_linked_to_a_device_stays_a_link(tmp_path: Path) -> None:
    link = tmp_path / "port"
    link.symlink_to(os.devnull)
    run = subprocess.run(
        [
            *(sys.executable, "-m", "covey", "query", "--insecure", "--sites", "1", "--no-secure"),
            *("--server", "127.0.0.1:0", "--port-file", str(link), "--wait-timeout", "0.5"),
            "SELECT COUNT(*) FROM patients",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert run.returncode == 1, run.stderr
    assert "only 0 of 1 sites joined" in run.stderr
    assert link.is_symlink()

"""A ``covey`` command whose output cannot be written fails, saying so on standard error.

``covey runs list > /dev/full`` ended in a generic ``error: OSError: [Errno 28]``
line, and ``covey runs list >&-`` (standard output closed) printed nothing and
exited 0, as if it had listed the runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import covey

pytestmark = pytest.mark.timeout(120)

COMMANDS = [["runs", "list", "--dir", "."], ["--version"], ["server", "--help"]]


def _covey(args: list[str], cwd: Path, shell: str) -> subprocess.CompletedProcess[str]:
    """``covey ARGS`` run by ``sh -c SHELL`` (which redirects its standard output)."""
    command = [sys.executable, "-m", "covey", *args]
    src = str(Path(covey.__file__).parent.parent)  # this covey, run from another folder
    return subprocess.run(
        ["sh", "-c", shell, "sh", *command],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": src},
        stderr=subprocess.PIPE,
        text=True,
        timeout=100,
        check=False,
    )


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: " ".join(args))
@pytest.mark.parametrize(
    ("shell", "why"),
    [
        pytest.param(
            'exec "$@" > /dev/full',
            "No space left on device",
            marks=pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full"),
            id="full",
        ),
        pytest.param('exec "$@" >&-', "Bad file descriptor", id="closed"),
    ],
)
def test_output_that_cannot_be_written_is_an_error(
    tmp_path: Path, args: list[str], shell: str, why: str
) -> None:
    done = _covey(args, tmp_path, shell)
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"error: cannot write to standard output: {why}\n"


def test_output_that_can_be_written_is_no_error(tmp_path: Path) -> None:
    done = _covey(["runs", "list", "--dir", "."], tmp_path, 'exec "$@" > out.txt')
    assert (done.returncode, done.stderr) == (0, "")
    assert (tmp_path / "out.txt").read_text().startswith("no runs in .")

"""``python -m covey ...`` processes started by a test, each logging to a file of its folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class CoveyProcesses:
    """Starts covey commands in ``tmp`` with ``env``; :meth:`close` kills what still runs."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.tmp / log, "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "covey", *args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
        )
        out.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        """The output of one of the processes."""
        path = self.tmp / name
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        """Kill whatever is still running of what was started."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

"""The processes tests start import covey from this checkout, whatever their working folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _childenv import SRC, child_pythonpath

_WHERE = "import covey; print(covey.__file__)"


def _covey_of(cwd: Path, env: dict[str, str] | None = None) -> Path:
    """The ``covey/__init__.py`` a Python started in ``cwd`` with ``env`` imports."""
    child = subprocess.run(
        [sys.executable, "-c", _WHERE],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    return Path(child.stdout.strip()).resolve()


def test_a_child_started_in_another_folder_imports_this_checkouts_covey(tmp_path: Path) -> None:
    mine = SRC / "covey" / "__init__.py"
    assert _covey_of(tmp_path) == mine  # inheriting this process's environment
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(SRC)
    # A relative PYTHONPATH is made absolute, after this checkout's src.
    apps = Path(__file__).resolve().parent / "apps"
    path = child_pythonpath(apps, base=os.pathsep.join(["benchmarks", "", str(apps)]))
    assert path.split(os.pathsep) == [str(apps), str(SRC), os.path.abspath("benchmarks")]
    assert _covey_of(tmp_path, {**os.environ, "PYTHONPATH": path}) == mine

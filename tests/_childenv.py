"""The ``PYTHONPATH`` of the Python and ``covey`` processes tests start: this checkout's covey.

A relative entry (``PYTHONPATH=src``) is read from the child's working folder:
a child started in a test's temporary folder would import covey from elsewhere
(an installed copy, another checkout's). ``conftest.py`` makes this process's
``PYTHONPATH`` the one :func:`child_pythonpath` builds, so every child that
inherits it imports the covey under test, whatever its working folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
"""This checkout's source folder, the covey the tests run."""


def child_pythonpath(*first: str | Path, base: str | None = None) -> str:
    """A ``PYTHONPATH`` with :data:`SRC` first, after ``first`` (a test's own modules).

    ``base``: the entries kept after it (default: this process's ``PYTHONPATH``),
    each made absolute; empty entries and repeats are left out.
    """
    kept = os.environ.get("PYTHONPATH", "") if base is None else base
    entries = [*map(str, first), str(SRC), *kept.split(os.pathsep)]
    absolute = [os.path.abspath(entry) for entry in entries if entry]
    return os.pathsep.join(dict.fromkeys(absolute))


APPS = Path(__file__).resolve().parent / "apps"
"""The tests' own apps (``tiny_app`` and others) that ``covey server --app`` names."""


def apps_env(**more: str) -> dict[str, str]:
    """A ``covey`` process's environment: :data:`APPS` importable, wide lines, and ``more``."""
    path = child_pythonpath(APPS, base=os.pathsep.join(sys.path))
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "250", **more}

"""Shared test configuration for the covey test suite."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from _childenv import child_pythonpath

# Children (``covey`` commands, scripts) import covey from this checkout, whatever
# their working folder and however relative this process's PYTHONPATH was.
os.environ["PYTHONPATH"] = child_pythonpath()

# No timing assertions anywhere: hypothesis must not fail a slow example either.
settings.register_profile(
    "covey",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("covey")

# Files whose tests must not run beside each other's: both start Ray on this
# machine, and a local Ray and a test cluster up at once refuse each other's
# connections. They share one group, run in one worker, in file order.
_SHARED_GROUPS = {
    "test_ray.py": "ray",
    "test_ray_actors.py": "ray",
    "test_ray_local.py": "ray",
    "test_ray_nodes.py": "ray",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group each test by its file for ``pytest -n 2 --dist loadgroup`` (``make test``).

    A file's tests then run in one worker, in order, with its module fixtures
    set up once; the Ray files run in the same worker as each other.
    """
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group(_SHARED_GROUPS.get(name, name)))


@pytest.fixture
def shm_files(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record every weights file the process backend creates; fail if any file is left behind.

    The list holds the broadcast files this test's pools made. At the end, no
    file of any pool owned by this process (broadcasts and the workers' reply
    files, all named ``covey-<pid>-...``) may remain in the shared-memory
    directory; files of other covey processes running in parallel are ignored.
    """
    import covey.sim._shm as shm_module

    created: list[str] = []
    real_mkstemp = tempfile.mkstemp
    mine = f"covey-{os.getpid()}-"

    def recording_mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, path = real_mkstemp(*args, **kwargs)
        name = os.path.basename(path)
        if name.startswith(mine) and "-w-" in name:
            created.append(path)
        return fd, path

    monkeypatch.setattr(shm_module.tempfile, "mkstemp", recording_mkstemp)
    yield created
    leaked = [p for p in created if os.path.exists(p)]
    leaked += [
        os.path.join(shm_module.shm_dir(), name)
        for name in os.listdir(shm_module.shm_dir())
        if name.startswith(mine)
    ]
    assert not leaked, f"shared-memory files left behind: {sorted(set(leaked))}"


@pytest.fixture
def served_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The flags ``covey server`` serves with (its run not started), in ``tmp_path``.

    ``tests/apps`` is importable (``--app tiny_app:server_app``); clear the dict
    between commands.
    """
    from covey.deploy import _cli

    flags: dict[str, Any] = {}
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    monkeypatch.setattr(_cli, "_serve", lambda app, s, given: flags.update(given))
    return flags

"""Shared test configuration for the covey test suite."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# No timing assertions anywhere: hypothesis must not fail a slow example either.
settings.register_profile(
    "covey",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("covey")


@pytest.fixture
def shm_files(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record every weights file the process backend creates; fail if any is left behind.

    Only files made by this test are tracked, so runs in parallel with other
    covey processes cannot confuse the check.
    """
    import covey.sim._process as process_module

    created: list[str] = []
    real_mkstemp = tempfile.mkstemp

    def recording_mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, path = real_mkstemp(*args, **kwargs)
        if os.path.basename(path).startswith("covey-weights-"):
            created.append(path)
        return fd, path

    monkeypatch.setattr(process_module.tempfile, "mkstemp", recording_mkstemp)
    yield created
    leaked = [p for p in created if os.path.exists(p)]
    assert not leaked, f"shared-memory weight files left behind: {leaked}"

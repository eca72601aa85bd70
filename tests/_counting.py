"""Count the calls of a function a test patches, to show work not done (never timed)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest


def count_calls(
    monkeypatch: pytest.MonkeyPatch, name: str, module: ModuleType, *more: ModuleType
) -> list[int]:
    """Replace ``module.name`` (and the same name in ``more``) by a counting wrapper.

    The wrapper calls ``module``'s function; the returned list's one item counts the
    calls. A module of ``more`` without the name is left alone.
    """
    calls = [0]
    original = getattr(module, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    for each in (module, *more):
        monkeypatch.setattr(each, name, counting, raising=each is module)
    return calls

"""A local Ray that timed out starting is started again while ray_start_timeout lasts."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from covey.sim import _raystart

RAYLET = "The current node timed out during startup. This could happen because ..."


class FakeRay:
    """Ray's init failing with the given errors, one a call, then starting."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.inits = 0
        self.shutdowns = 0

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: Any) -> None:
        self.inits += 1
        if self.errors:
            raise self.errors.pop(0)

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_start_timed_out_by_rays_own_wait_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Ray gives its raylet a fixed 30 s: a busy machine's run failed there although
    # ray_start_timeout (120 s) had time left.
    monkeypatch.delenv(_raystart.WAIT_VARIABLE, raising=False)
    ray = FakeRay(Exception(RAYLET))
    with caplog.at_level(logging.WARNING, logger="covey"):
        assert _raystart.start_or_join(ray, None, None, 120.0) is True
    assert ray.inits == 2
    assert ray.shutdowns == 1  # what the failed start left, stopped before the next
    assert "the local Ray did not start in time (The current node timed out" in caplog.text


def test_starts_are_tried_three_times_at_most_then_the_error_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(_raystart.WAIT_VARIABLE, raising=False)
    ray = FakeRay(*(Exception(RAYLET) for _ in range(5)))
    with pytest.raises(Exception, match="timed out during startup") as failed:
        _raystart.start_or_join(ray, None, None, 1e9)
    assert ray.inits == _raystart.START_ATTEMPTS == 3
    assert "raise ray_start_timeout" in failed.value.__notes__[0]


@pytest.mark.parametrize(
    ("error", "timeout", "env"),
    [
        (ValueError("num_cpus must be positive"), 120.0, None),  # no timeout: said at once
        (Exception(RAYLET), 0.0, None),  # no time left
        (Exception(RAYLET), 120.0, "5"),  # the user's own wait
    ],
)
def test_other_failures_and_a_wait_of_the_users_are_not_tried_again(
    monkeypatch: pytest.MonkeyPatch, error: Exception, timeout: float, env: str | None
) -> None:
    monkeypatch.delenv(_raystart.WAIT_VARIABLE, raising=False)
    if env is not None:
        monkeypatch.setenv(_raystart.WAIT_VARIABLE, env)
    ray = FakeRay(error)
    with pytest.raises(type(error)):
        _raystart.start_or_join(ray, None, None, timeout)
    assert ray.inits == 1


def test_joining_a_cluster_is_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_raystart, "check_reachable", lambda address, timeout: None)
    ray = FakeRay(ConnectionError("timed out"))
    with pytest.raises(ConnectionError) as failed:
        _raystart.start_or_join(ray, "127.0.0.1:6379", None, 120.0)
    assert ray.inits == 1
    assert "127.0.0.1:6379" in failed.value.__notes__[0]

"""``covey server``/``client`` logging follows ``sys.stderr``: run in-process, it survives the run.

The handler used to keep the standard error of the command that set it up. Run
in-process (a notebook, a test's CLI runner), that stream is closed when the
command returns, and every record logged later printed a "Logging error" traceback.
"""

from __future__ import annotations

import io
import logging
import sys

import pytest
from rich.console import Console

from covey.deploy._cli_logs import setup_logging


def test_records_go_to_the_standard_error_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("covey").level)
    try:
        first = io.StringIO()
        monkeypatch.setattr(sys, "stderr", first)
        setup_logging(Console(file=io.StringIO(), force_terminal=False), verbose=False)
        logging.getLogger("covey").warning("during the command")
        first.close()  # the command returned: its stream is gone
        later = io.StringIO()
        monkeypatch.setattr(sys, "stderr", later)
        logging.getLogger("covey").warning("after it")
        assert "after it" in later.getvalue()
        assert "Logging error" not in later.getvalue()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("covey").setLevel(saved[2])


def _logged_failure(verbose: bool, monkeypatch: pytest.MonkeyPatch) -> str:
    """What standard error shows for an error logged with its exception."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("covey").level)
    try:
        stderr = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stderr)
        setup_logging(Console(file=io.StringIO(), force_terminal=False), verbose=verbose)
        try:
            raise OSError("cannot write run/run.sqlite: disk I/O error")
        except OSError:
            logging.getLogger("covey").exception("recording fleet event %s failed", "join")
        return stderr.getvalue()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("covey").setLevel(saved[2])


def test_a_logged_exception_is_one_line_without_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    said = _logged_failure(False, monkeypatch)
    assert said.count("\n") == 1, said
    assert said.rstrip().endswith(
        "ERROR recording fleet event join failed: OSError: cannot write run/run.sqlite: "
        "disk I/O error"
    )
    assert "Traceback" not in said


def test_verbose_shows_a_logged_exceptions_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    said = _logged_failure(True, monkeypatch)
    assert "ERROR recording fleet event join failed\nTraceback (most recent call last):" in said
    assert said.rstrip().endswith("OSError: cannot write run/run.sqlite: disk I/O error")

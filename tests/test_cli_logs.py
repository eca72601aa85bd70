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

"""A server whose own disk refuses a reply it spills: the run stops naming it, not the clients."""

from __future__ import annotations

import errno
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.deploy._goodbye import STOPPED
from covey.transport._base import ServerDiskError
from covey.transport.grpc import _service, _stream

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served

pytestmark = pytest.mark.timeout(120)


class _Full:
    """A spill file on a disk that takes no byte more (a file-size limit, say)."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def write(self, data: Any) -> int:
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def _refused_spills(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Make every spill file refuse writes; the list gets the folder of each one made."""
    folders: list[Any] = []
    real = tempfile.TemporaryFile

    def made(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("prefix") != "covey-upload-":
            return real(*args, **kwargs)
        folders.append(kwargs.get("dir"))
        return _Full(real(*args, **kwargs))

    monkeypatch.setattr(_service, "SPILL_BYTES", 0)  # every reply is spilled
    monkeypatch.setattr(tempfile, "TemporaryFile", made)
    return folders


@pytest.mark.parametrize("data_port", [None, 0], ids=["frames", "data-connection"])
def test_a_reply_the_servers_disk_refuses_stops_the_run_blaming_no_client(
    data_port: int | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folders = _refused_spills(monkeypatch)
    run_dir = tmp_path / "run"
    strategy = covey.FedAvg(min_available_clients=2, min_fit_clients=2, fraction_evaluate=0.0)
    served = Served(strategy, 3, run_dir=run_dir, plot=False, round_retries=2, data_port=data_port)
    clients = [Joined(served.port, name=f"site-{k}") for k in range(2)]
    with (
        caplog.at_level(logging.INFO, logger="covey"),
        pytest.raises(covey.FederationError) as caught,
    ):
        served.join()
    for joined in clients:
        joined.join()
    said = str(caught.value)
    assert said.startswith(
        f"round 1: the server could not write a reply to its spill folder {run_dir}: "
        "[Errno 27] File too large"
    ), said
    assert "client" not in said
    assert "site-" not in said
    # Spilled into the run folder, whose disk the operator provisions.
    assert folders
    assert {Path(f) for f in folders} == {run_dir}
    history = caught.value.history
    assert history.stopped_reason == said
    assert [r.round for r in history.rounds] == [0]  # no round blames the clients
    # Not taken for lost connections: the round is not run again.
    assert not [m for m in caplog.messages if "running round 1 again" in m]
    for joined in clients:
        assert joined.result is not None
        assert joined.result.reason.startswith(STOPPED), joined.result.reason
        assert "spill folder" in joined.result.reason


def test_without_a_run_folder_spills_go_to_tmpdir_and_a_refusal_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _refused_spills(monkeypatch)
    files = _stream.SpillFiles()
    upload = _stream.Upload(64, 0, spill=files)
    with pytest.raises(ServerDiskError) as caught:
        upload.write(np.zeros(8).tobytes())
    assert str(caught.value).startswith(
        f"the server could not write a reply to its spill folder {tempfile.gettempdir()}: "
        "[Errno 27] File too large"
    )
    assert isinstance(caught.value.__cause__, OSError)
    upload.discard()
    files.close()

"""A server whose own disk refuses a reply it spills: the run stops naming it, not the clients."""

from __future__ import annotations

import errno
import logging
import os
import sys
import tempfile
import threading
import time
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


class _Slow:
    """A spill file on a slow disk: each write takes a while (another client's reply)."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def write(self, data: Any) -> int:
        time.sleep(0.2)
        return int(self.file.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


class _Trained(covey.Client):
    """Adds one to every weight."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def test_another_clients_reply_cut_off_as_the_server_stops_on_its_disk_is_not_blamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The first reply's spill file refuses its bytes once the second reply is coming in,
    # which is then cut off as the server stops on its disk's failure.
    second = threading.Event()
    real = tempfile.TemporaryFile
    made: list[Any] = []

    def refuse(data: Any) -> int:
        second.wait(30)
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    def spill(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("prefix") != "covey-upload-":
            return real(*args, **kwargs)
        made.append(None)
        if len(made) == 1:
            first = _Full(real(*args, **kwargs))
            first.write = refuse  # type: ignore[method-assign]
            return first
        second.set()
        return _Slow(real(*args, **kwargs))

    monkeypatch.setattr(_service, "SPILL_BYTES", 0)
    monkeypatch.setattr(tempfile, "TemporaryFile", spill)
    strategy = covey.FedAvg(min_available_clients=2, min_fit_clients=2, fraction_evaluate=0.0)
    model = {"w": np.zeros(4_000_000)}  # replies of 32 MB: 16 chunk frames each
    served = Served(strategy, 3, run_dir=tmp_path / "run", plot=False, initial_weights=model)
    clients = [Joined(served.port, _Trained(), name=f"site-{k}") for k in range(2)]
    with (
        caplog.at_level(logging.INFO, logger="covey"),
        pytest.raises(covey.FederationError, match="could not write a reply to its spill folder"),
    ):
        served.join()
    for joined in clients:
        joined.join()
    (refused,) = [r.getMessage() for r in caplog.records if "cannot be kept" in r.getMessage()]
    other = "site-1" if refused.startswith("client site-0") else "site-0"
    blamed = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and f"client {other}" in r.getMessage()
    ]
    assert blamed == []
    stopped = [m for m in caplog.messages if "closed as the server stops on its own failure" in m]
    assert all(m.startswith(f"client {other} ") for m in stopped)

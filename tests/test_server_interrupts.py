"""A server interrupted at any moment once its run exists ends it marked, and lets go of it."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

import covey
from covey.deploy._server import serve
from covey.server._store import RunStore


def test_ctrl_c_as_the_server_starts_listening_marks_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ports: list[int] = []

    def interrupted(port: int) -> None:  # Ctrl-C as the console says it listens
        ports.append(port)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        serve(
            covey.FedAvg(fraction_evaluate=0.0),
            2,
            {"w": np.zeros(2)},
            "127.0.0.1:0",
            insecure=True,
            run_dir=run_dir,
            on_listen=interrupted,
        )
    with RunStore.open(run_dir, exclusive=True) as store:  # let go of: it resumes
        assert store.status == "failed"
        assert store.events()[-1][2:] == ("stopped", "interrupted (SIGINT)")
    with socket.create_server(("127.0.0.1", ports[0])):  # no longer listening there
        pass

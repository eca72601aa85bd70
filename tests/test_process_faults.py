"""The process backend under failure: stuck clients and a parent killed outright."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import covey
from covey import FitResult


class Stuck(covey.Client):
    """Client 3 never returns from its fit in round ``stuck_in`` (every round if None)."""

    stuck_in: int | None = 2

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> FitResult:
        if self.cid == 3 and self.stuck_in in (None, config["round"]):
            time.sleep(3600)
        return FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


@pytest.mark.slow
def test_a_worker_stuck_past_the_deadline_is_replaced(shm_files: list[str]) -> None:
    result = covey.simulate(
        Stuck,
        6,
        3,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        backend="process",
        num_workers=2,
        round_timeout=2.0,
    )
    # Worker 1 holds clients 1, 3, 5: 1 replied, 3 is stuck, 5 waits behind it.
    record = result.history[2]
    assert record.fit_participants == [0, 1, 2, 4]
    assert [f.cid for f in record.fit_failures] == [3, 5]
    for failure in record.fit_failures:
        assert "no reply in time" in failure.error
        assert "timeout of 2 s" in failure.error
    # The stuck worker was stopped and replaced: the next round has every client.
    assert result.history[3].fit_participants == list(range(6))


class StuckFirst(Stuck):
    stuck_in = 1


def test_a_worker_stopped_at_the_deadline_is_not_reported_as_dead(
    caplog: pytest.LogCaptureFixture, shm_files: list[str]
) -> None:
    # It was: the next round warned "worker 1 had died (exit code -9)", as of a worker
    # the system killed (out of memory, say), though covey had stopped it on purpose.
    with caplog.at_level(logging.WARNING, logger="covey"):
        result = covey.simulate(
            StuckFirst,
            4,
            2,
            covey.FedAvg(fraction_evaluate=0.0),
            {"w": np.zeros(2)},
            backend="process",
            num_workers=2,
            round_timeout=5.0,  # the others reply, and round 2's new worker starts, in time
        )
    assert [f.cid for f in result.history[1].fit_failures] == [3]
    assert result.history[2].fit_participants == [0, 1, 2, 3]
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "had died" in m], said
    assert any(
        m.startswith(
            "worker 1 missed the deadline with 1 client unanswered (3); stopping it, "
            "a new one takes its clients (rebuilt with client_fn)"
        )
        for m in said
    ), said


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


_KILLED_PARENT = """
import os, sys, time
import numpy as np
import covey

folder = sys.argv[1]

class C(covey.Client):
    def fit(self, weights, config):
        with open(os.path.join(folder, f"{os.getpid()}.pid"), "w") as f:
            f.write("busy")
        time.sleep(3600)

covey.simulate(lambda cid: C(), 2, 1, covey.FedAvg(fraction_evaluate=0.0),
               {"w": np.zeros(2)}, backend="process", num_workers=2)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to see processes exit")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_exit_when_the_parent_is_killed(tmp_path: Path, sig: signal.Signals) -> None:
    """They exit, and take the pool's shared-memory files with them.

    Before, the broadcast's file stayed in /dev/shm until a later pool swept it.
    """
    from covey.sim._shm import shm_dir

    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_KILLED_PARENT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env)
    try:
        end = time.monotonic() + 60
        while len(list(tmp_path.glob("*.pid"))) < 2:
            assert parent.poll() is None, "the simulation exited before its clients ran"
            assert time.monotonic() < end, "the clients never started"
            time.sleep(0.05)
        workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
        assert list(Path(shm_dir()).glob(f"covey-{parent.pid}-*"))  # the round's broadcast
    finally:
        parent.send_signal(sig)  # a library's caller keeps SIGTERM's default: it dies
        parent.wait(30)
    # Both workers are inside a fit that never returns; with the parent gone they exit.
    end = time.monotonic() + 30
    while not all(_gone(pid) for pid in workers) and time.monotonic() < end:
        time.sleep(0.05)
    alive = [pid for pid in workers if not _gone(pid)]
    for pid in alive:  # started by this test: do not leave them behind
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"worker processes {alive} outlived their killed parent"
    assert not list(Path(shm_dir()).glob(f"covey-{parent.pid}-*"))


class _StuckProcess:
    """A worker process inside a client's fit: join returns only once it is killed."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.killed = False
        self.exitcode: int | None = None

    def join(self, timeout: float | None = None) -> None:
        if not self.killed:
            self.clock[0] += timeout or 0.0  # the simulated time spent waiting

    def is_alive(self) -> bool:
        return not self.killed

    def kill(self) -> None:
        self.killed = True


class _Pipe:
    def send_bytes(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def test_closing_gives_all_busy_workers_one_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C with every worker stuck in fit waits one grace period, not one per worker."""
    from covey.sim import _pool

    clock = [0.0]
    monkeypatch.setattr(_pool, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    workers = []
    for _ in range(4):
        worker = object.__new__(_pool.Worker)
        worker.process = _StuckProcess(clock)
        worker.conn = _Pipe()  # type: ignore[assignment]
        worker.prefix = "covey-0-00000000-r0-"
        workers.append(worker)
    _pool.cleanup(workers, [], "covey-0-00000000-")
    assert all(w.process.killed for w in workers)
    assert clock[0] <= 5.0  # simulated seconds: the 5 s grace is shared by all four


class Plus(covey.Client):
    def fit(self, weights: Any, config: Any) -> FitResult:
        return FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate here")
@pytest.mark.parametrize("full_in", ["server", "worker"])
def test_a_full_shared_memory_folder_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, shm_files: list[str], full_in: str
) -> None:
    """No room for the broadcast (server) or for a reply (worker): a clear error, no crash.

    A full tmpfs kills whoever writes through the mapping with SIGBUS; the file's
    pages are reserved first, so here the reservation fails as on a full ``/dev/shm``.
    """
    server = os.getpid()

    def fallocate(fd: int, offset: int, size: int) -> None:
        if (os.getpid() == server) == (full_in == "server"):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    with pytest.raises((OSError, covey.FederationError), match=r"no room for .* shared memory"):
        covey.simulate(
            lambda cid: Plus(),
            2,
            1,
            covey.FedAvg(fraction_evaluate=0.0),
            {"w": np.zeros(1 << 17, np.float32)},  # replies past INLINE_BYTES: in files
            backend="process",
            num_workers=2,
        )


class Secure(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> FitResult:
        return FitResult(weights={k: v + self.cid for k, v in weights.items()}, num_examples=1)


@pytest.mark.filterwarnings("ignore:secure aggregation without signed keys")
def test_a_worker_dying_mid_secagg_drops_its_clients_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, shm_files: list[str]
) -> None:
    import covey.secagg
    from covey.clients import _client

    share = _client._handler("secagg.share")  # loads covey.secagg's handlers
    assert share is not None

    def dying_share(client: Any, task: Any) -> Any:
        if client.cid == 3:
            os._exit(3)  # its worker dies after client 1 shared its keys
        return share(client, task)

    monkeypatch.setitem(_client._HANDLERS, "secagg.share", dying_share)
    strategy = covey.secagg.secure(
        covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=2), clip_range=8.0, bits=16
    )
    result = covey.simulate(
        Secure, 6, 1, strategy, {"w": np.zeros(2)}, backend="process", num_workers=2
    )
    record = result.history[1]
    # Worker 1 holds clients 1, 3, 5: 3 killed it; 1 is rebuilt without its keys.
    assert record.fit_participants == [0, 2, 4]
    errors = {f.cid: f.error for f in record.fit_failures}
    assert sorted(errors) == [1, 3, 5]
    assert "holds no keys of the round (it was rebuilt or restarted" in errors[1]
    assert errors[3] == "worker process died (exit code 3) running this client"
    np.testing.assert_allclose(result.weights["w"], [2.0, 2.0], atol=1e-3)


class StuckAlways(Stuck):
    """Client 3 never returns from fit."""

    stuck_in = None


@pytest.mark.slow
def test_an_asynchronous_run_is_not_held_up_by_a_stuck_client(shm_files: list[str]) -> None:
    result = covey.simulate(
        StuckAlways,
        6,
        3,
        covey.FedBuff(buffer_size=2, concurrency=3, fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        backend="process",
        num_workers=2,
        round_timeout=2.0,
    )
    assert [r.round for r in result.history.rounds] == [0, 1, 2, 3]
    failures = [f for r in result.history.rounds for f in r.fit_failures]
    assert failures
    assert {f.cid for f in failures} == {3}
    assert all("no reply in time" in f.error for f in failures)


class _StuckInRoundTwo(covey.Client):
    """Client 1 hangs in its second fit (for 30 s), once it has said so in ``flag``."""

    def __init__(self, cid: int, flag: Path) -> None:
        self.cid, self.flag, self.calls = cid, flag, 0

    def fit(self, weights: Any, config: Any) -> FitResult:
        self.calls += 1
        if self.cid == 1 and self.calls == 2:
            self.flag.touch()
            time.sleep(30)
        return FitResult(weights=dict(weights), num_examples=1)


def test_a_second_ctrl_c_while_workers_stop_kills_them_and_removes_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shm_files: list[str]
) -> None:
    """Ctrl-C with a client stuck in fit, then Ctrl-C again during the 5 s grace period."""
    import multiprocessing
    import threading

    from covey.sim import _process

    flag = tmp_path / "stuck"

    def interrupt_once_stuck() -> None:
        deadline = time.monotonic() + 60
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: the run stops, workers are told

    def second_ctrl_c(self: Any, deadline: float) -> None:
        raise KeyboardInterrupt  # while the workers are given their grace period

    monkeypatch.setattr(_process._Worker, "stop", second_ctrl_c)
    watcher = threading.Thread(target=interrupt_once_stuck)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            covey.simulate(
                lambda cid: _StuckInRoundTwo(cid, flag),
                num_clients=2,
                rounds=3,
                strategy=covey.FedAvg(fraction_evaluate=0.0),
                initial_weights={"w": np.zeros(2)},
                backend="process",
                num_workers=2,
            )
    finally:
        watcher.join(70)
    workers = [p for p in multiprocessing.active_children() if p.name.startswith("covey-worker")]
    for worker in workers:
        worker.join(10)
    assert not [w for w in workers if w.is_alive()], "a worker stuck in fit was left running"


class _Prints(covey.Client):
    def fit(self, weights: Any, config: Any) -> FitResult:
        print("printed by the client", flush=True)
        return FitResult(weights=dict(weights), num_examples=1)


def test_a_worker_started_while_the_progress_bar_is_drawn_prints_past_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shm_files: list[str]
) -> None:
    """A worker forked while rich redirects stdout (one replacing a dead worker) prints as usual."""
    import io

    from rich.console import Console
    from rich.file_proxy import FileProxy

    from covey.core import Task
    from covey.sim import ProcessTransport

    with open(tmp_path / "out.txt", "w") as terminal:
        # What a live progress bar in a terminal does to sys.stdout while it is drawn.
        monkeypatch.setattr("sys.stdout", FileProxy(Console(file=io.StringIO()), terminal))
        with ProcessTransport(lambda cid: _Prints(), 1, num_workers=1) as transport:
            task = Task("fit", 1, {}, {"w": np.zeros(2)})
            [reply] = list(transport.exchange({0: task}, timeout=60))
    assert reply.error is None
    assert (tmp_path / "out.txt").read_text() == "printed by the client\n"


_UNGUARDED = """
import numpy as np
import covey
from covey.core._messages import Task
from covey.sim._process import ProcessTransport


class C(covey.Client):
    def fit(self, weights, config):
        return weights, 1, {}


def make(cid):
    return C()


try:
    transport = ProcessTransport(make, 2, num_workers=1, start_method="spawn")
except ValueError as exc:
    print("REPLY:", str(exc).replace("\\n", " "))
else:
    replies = list(transport.exchange({0: Task("fit", 1, {}, {"w": np.zeros(2)})}, timeout=60))
    print("REPLY:", replies[0].error)
    transport.close()
"""


def test_a_script_without_a_main_guard_is_refused_spawned_workers(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("REPLY:")]
    # It used to say only "worker process died (exit code 1) running this client"; each
    # worker imported the script again. It is refused before any worker starts.
    assert "starts the simulation at its top level" in line
    assert 'if __name__ == "__main__":' in line
    assert "start_method='spawn'" in line
    assert "running this client" not in line

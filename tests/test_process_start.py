"""The process backend's start methods, and its workers' log records reaching this process."""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing.reduction
import pickle
import queue
import sys
import threading
import types
from logging.handlers import QueueHandler
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey import FitResult
from covey.core._gcstart import AT_IMPORT
from covey.sim import ProcessTransport, SimulationResult, _logs, _start
from covey.transport.grpc import WireError

LOGGER = "tests.process_start"


class Chatty(covey.Client):
    """Logs once per fit (with an extra field), then moves its weights by a seeded step."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> FitResult:
        logging.getLogger(LOGGER).info(
            "client %d fits in round %d", self.cid, config["round"], extra={"site": "s"}
        )
        logging.getLogger(LOGGER).debug("not wanted: the parent's logger is at INFO")
        rng = np.random.default_rng([self.cid, config["round"]])
        step = rng.standard_normal(5)
        return FitResult(weights={"w": weights["w"] + step}, num_examples=1 + self.cid)


def _with_data(data: Any, cid: int) -> Chatty:
    return Chatty(cid)


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _run(backend: str, start_method: str | None = None) -> SimulationResult:
    return covey.simulate(
        Chatty,
        4,
        2,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.linspace(-1.0, 1.0, 5)},
        backend=backend,  # type: ignore[arg-type]
        num_workers=1 if start_method == "spawn" else 2,  # spawn's workers start slowly
        start_method=start_method,  # type: ignore[arg-type]
    )


@pytest.fixture
def app_logger() -> Any:
    """A logger with a handler of its own and a QueueHandler, at INFO, as an application has."""
    log = logging.getLogger(LOGGER)
    keep, waiting = Keep(), queue.Queue()  # type: ignore[var-annotated]
    via_queue = QueueHandler(waiting)
    log.addHandler(keep)
    log.addHandler(via_queue)
    log.setLevel(logging.INFO)
    yield keep, waiting
    log.removeHandler(keep)
    log.removeHandler(via_queue)
    log.setLevel(logging.NOTSET)


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_every_start_method_gives_inline_bits_and_the_clients_logs(
    method: str, app_logger: Any, shm_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keep, waiting = app_logger
    inline = _run("inline")
    keep.records.clear()
    while not waiting.empty():
        waiting.get_nowait()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("this process unpickled something")

    # Starting workers by any method, and reading what they send, unpickles nothing here.
    for owner, name in [
        (pickle, "loads"),
        (pickle, "load"),
        (multiprocessing.reduction.ForkingPickler, "loads"),
        (Connection, "recv"),
    ]:
        monkeypatch.setattr(owner, name, refuse)
    process = _run("process", method)
    monkeypatch.undo()

    assert process.weights["w"].tobytes() == inline.weights["w"].tobytes()
    # Each fit's record reached this process's handlers (it used to stay in the worker).
    seen = sorted((r.cid, r.round, r.getMessage()) for r in keep.records)
    assert seen == [
        (cid, rnd, f"client {cid} fits in round {rnd}") for cid in range(4) for rnd in (1, 2)
    ]
    record = keep.records[0]
    assert record.name == LOGGER
    assert record.levelno == logging.INFO
    assert record.processName.startswith("covey-worker-")
    assert record.site == "s"
    assert record.funcName == "fit"
    assert waiting.qsize() == 8  # an application's QueueHandler sees them too


HELD = threading.Lock()


class TakesALock(Chatty):
    """Takes a lock of this module in fit: one a forked worker may have copied held."""

    def fit(self, weights: Any, config: Any) -> FitResult:
        with HELD:
            return super().fit(weights, config)


def test_a_lock_another_thread_holds_does_not_hang_the_workers() -> None:
    # A logging QueueListener, a gRPC server or a notebook kernel runs such threads.
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with HELD:
            taken.set()
            done.wait(120)

    holder = threading.Thread(target=hold, name="holds-a-lock", daemon=True)
    holder.start()
    taken.wait(10)
    try:
        # A forked worker copied HELD held: its clients waited for the timeout, then failed.
        result = covey.simulate(
            TakesALock,
            2,
            1,
            covey.FedAvg(fraction_evaluate=0.0),
            {"w": np.zeros(5)},
            backend="process",
            num_workers=1,
            round_timeout=30,
            start_method="forkserver",
        )
    finally:
        done.set()
        holder.join(10)
    assert result.history[1].fit_participants == [0, 1]


def test_a_client_fn_that_cannot_reach_the_workers_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    init = {"w": np.zeros(5)}
    with pytest.raises(ValueError, match=r"client_fn .*<lambda> cannot be sent") as info:
        covey.simulate(
            lambda cid: Chatty(cid), 2, 1, None, init, backend="process", start_method="spawn"
        )
    assert "start_method='fork'" in str(info.value)

    def make(cid: int) -> Chatty:
        return Chatty(cid)

    with pytest.raises(ValueError, match=r"<locals>\.make cannot be sent"):
        ProcessTransport(make, 2, num_workers=1, start_method="forkserver")

    # A partial of an importable function over a large array travels (pickled out of band).
    big = functools.partial(_with_data, np.zeros(1 << 20))
    assert _start.unsendable(big, "spawn") is None
    with pytest.raises(ValueError, match=r"functools.partial\(.*<locals>.make, \.\.\.\)"):
        ProcessTransport(functools.partial(make), 2, start_method="spawn")

    # A class defined in a notebook: pickled by name from a __main__ that has no file.
    notebook = types.ModuleType("__main__")

    class Mine(Chatty):
        pass

    Mine.__module__, Mine.__qualname__ = "__main__", "Mine"
    notebook.Mine = Mine  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "__main__", notebook)
    with pytest.raises(ValueError, match="needs Mine, defined in __main__ of a notebook"):
        ProcessTransport(Mine, 2, num_workers=1, start_method="spawn")


def test_start_method_is_checked_before_anything_starts() -> None:
    init = {"w": np.zeros(5)}
    with pytest.raises(ValueError, match=r"start_method must be None .* got 'thread'"):
        covey.simulate(Chatty, 2, 1, None, init, backend="process", start_method="thread")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start_method applies to backend='process' only"):
        covey.simulate(Chatty, 2, 1, None, init, start_method="spawn")
    with pytest.raises(ValueError, match="start_method must be"):
        ProcessTransport(Chatty, 2, start_method="fork ")


def test_the_default_forks_and_warns_once_of_other_threads(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # What workers see must not depend on which threads happen to run: the default
    # forks every time, and says once how to avoid inheriting other threads' locks.
    monkeypatch.setattr(_start, "_warned_threads", False)
    monkeypatch.setattr(_start, "python_threads", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="covey"):
        assert _start.choose(None, lambda cid: None) == "fork"
        assert not caplog.records
        monkeypatch.setattr(_start, "python_threads", lambda: 3)
        assert _start.choose(None, Chatty) == "fork"
        assert _start.choose(None, lambda cid: None) == "fork"  # warned once only
        assert _start.choose("spawn", Chatty) == "spawn"
    (warning,) = caplog.records
    assert "forks its workers while this process runs" in warning.getMessage()
    assert "start_method='forkserver'" in warning.getMessage()


_SCRIPT = """
import covey.sim._start as start

try:
    start.choose("forkserver", CLIENT)
except ValueError as exc:
    UNGUARDED = str(exc)
if __name__ == "__main__":
    GUARDED = start.choose("forkserver", CLIENT)
"""


def _run_as_main(script: Path) -> types.ModuleType:
    """Write ``_SCRIPT`` to ``script`` and run it as Python runs a main script."""
    script.write_text(_SCRIPT)
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    main.CLIENT = Chatty  # type: ignore[attr-defined]
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = main
    try:
        exec(compile(_SCRIPT, str(script), "exec"), vars(main))
    finally:
        sys.modules["__main__"] = saved
    return main


def test_a_script_starting_workers_afresh_at_its_top_level_is_refused(tmp_path: Any) -> None:
    # Started afresh, each worker would import the script and start the simulation again.
    script = tmp_path / "experiment.py"
    main = _run_as_main(script)
    assert main.GUARDED == "forkserver"
    assert f"the script {script} starts the simulation at its top level" in main.UNGUARDED
    assert "start_method='fork'" in main.UNGUARDED


class _Pipe:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_bytes(self, buf: bytes, /) -> None:
        self.sent.append(buf)


def test_a_client_logging_in_a_loop_is_bounded_and_its_drops_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipe = _Pipe()
    logs = _logs.WorkerLogs(pipe)
    log = logging.getLogger("tests.process_start.loop")
    log.propagate = False
    log.addHandler(logs)
    try:
        logs.context = (7, 3)
        for i in range(_logs.MAX_RECORDS + 500):
            log.warning("line %d %s", i, "x" * 100_000 if i == 0 else "")
        logs.send_bytes(b"reply")
    finally:
        log.removeHandler(logs)
        log.propagate = True
    batch, reply = pipe.sent
    assert reply == b"reply"  # the records logged before a reply arrive before it
    message = json.loads(batch)
    assert len(message["logs"]) == _logs.MAX_RECORDS
    assert message["dropped"] == 500
    assert len(message["logs"][0]["msg"]) < 20_000  # a huge message is cut
    assert message["logs"][1] | {"created": 0} == {
        "name": "tests.process_start.loop",
        "level": logging.WARNING,
        "msg": "line 1 ",
        "created": 0,
        "path": __file__,
        "line": message["logs"][1]["line"],
        "func": "test_a_client_logging_in_a_loop_is_bounded_and_its_drops_are_counted",
        "thread": "MainThread",
        "cid": 7,
        "round": 3,
    }
    with caplog.at_level(logging.WARNING):
        _logs.dispatch(batch, "covey-worker-0", 123)
    drops = [r for r in caplog.records if r.name == "covey"]
    assert "covey-worker-0 dropped 500 log records" in drops[0].getMessage()
    got = [r for r in caplog.records if r.name == "tests.process_start.loop"]
    assert len(got) == _logs.MAX_RECORDS
    assert vars(got[1])["cid"] == 7
    assert got[1].process == 123
    # Long records: the bytes waiting are bounded too, far below what the pipe carries.
    pipe.sent.clear()
    log.addHandler(logs)
    try:
        for _ in range(_logs.MAX_RECORDS):
            log.warning("%s", "y" * 15_000)
        logs.push()
    finally:
        log.removeHandler(logs)
    (batch,) = pipe.sent
    assert len(batch) < _logs.MAX_BYTES + 1000
    message = json.loads(batch)
    assert message["dropped"] > 0
    assert len(message["logs"]) + message["dropped"] == _logs.MAX_RECORDS
    with pytest.raises(WireError, match="log record lacks"):
        _logs.dispatch(b'{"logs":[{"name":"x"}]}', "covey-worker-0", 123)


_SETUP: dict[str, int] = {}


def _needs_setup(cid: int) -> Chatty:
    return Chatty(cid + _SETUP["offset"])  # set by the test, at run time


def test_a_worker_started_afresh_says_what_it_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_SETUP, "offset", 1)
    task = covey.core.Task("fit", 1, {"round": 1}, {"w": np.zeros(5)})
    with ProcessTransport(_needs_setup, 1, num_workers=1, start_method="forkserver") as pool:
        assert pool.start_method == "forkserver"
        (reply,) = pool.exchange({0: task}, timeout=120)
    assert "KeyError: 'offset'" in str(reply.error)
    assert "started with start_method='forkserver'" in str(reply.error)
    assert "globals set under" in str(reply.error)


def test_a_packages_main_module_is_not_taken_for_an_unguarded_script(tmp_path: Any) -> None:
    # `python -m package` runs package/__main__.py, which multiprocessing never imports again.
    main = _run_as_main(tmp_path / "__main__.py")
    assert not hasattr(main, "UNGUARDED")
    assert main.GUARDED == "forkserver"


class FreezeCount(covey.Client):
    """Reports, as a metric, how many objects its process's collector leaves frozen."""

    def fit(self, weights: Any, config: Any) -> FitResult:
        import gc

        frozen = float(gc.get_freeze_count())
        return FitResult(weights=weights, num_examples=1, metrics={"frozen": frozen})


def _frozen_in_workers(start_method: str) -> list[float]:
    result = covey.simulate(
        client_fn=lambda cid: FreezeCount(),
        num_clients=2,
        rounds=1,
        strategy=covey.FedAvg(
            fraction_evaluate=0.0,
            fit_metrics=lambda ms: {"low": min(float(m["frozen"]) for _, m in ms)},
        ),
        initial_weights={"w": np.zeros(3)},
        backend="process",
        num_workers=2,
        start_method=start_method,  # type: ignore[arg-type]
    )
    return [float(r.fit_metrics["low"]) for r in result.history.rounds[1:]]


def test_forked_workers_keep_the_parents_objects_frozen() -> None:
    """A collection in a worker would write into (and so copy) every page of the parent's heap."""
    import gc

    assert gc.get_freeze_count() <= AT_IMPORT  # at most the interpreter's own (CPython 3.12)
    (low,) = _frozen_in_workers("fork")
    assert low > 1000  # the parent's modules, functions, dicts: all frozen in the workers
    assert gc.get_freeze_count() == 0  # and thawed here, collected as before


# Objects frozen before covey is imported stand for the interpreter's own: CPython 3.12
# starts with a few hundred in the permanent generation, and they turned the freeze off.
_FROZEN_AT_START = """
import gc, sys
gc.freeze()
import numpy as np, covey
start = gc.get_freeze_count()
class Count(covey.Client):
    def fit(self, weights, config):
        frozen = float(gc.get_freeze_count())
        return covey.FitResult(weights=weights, num_examples=1, metrics={"frozen": frozen})
low = lambda ms: {"low": min(float(m["frozen"]) for _, m in ms)}
result = covey.simulate(
    lambda cid: Count(), num_clients=2, rounds=1, backend="process", start_method="fork",
    strategy=covey.FedAvg(fraction_evaluate=0.0, fit_metrics=low),
    initial_weights={"w": np.zeros(3)},
)
print(start, result.history.rounds[1].fit_metrics["low"], gc.get_freeze_count())
"""


def test_objects_frozen_before_covey_is_imported_do_not_turn_the_freeze_off() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _FROZEN_AT_START], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    start, low, after = (float(n) for n in done.stdout.split())
    assert low > start + 1000  # the parent's modules, functions, dicts: frozen in the workers
    assert after == 0  # and thawed after the run


def test_a_parent_that_froze_objects_itself_is_left_as_it_was() -> None:
    import gc

    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        (low,) = _frozen_in_workers("fork")
        assert low > 1000
        # Still frozen here (a frozen object freed meanwhile leaves the count).
        assert gc.get_freeze_count() > frozen // 2
    finally:
        gc.unfreeze()

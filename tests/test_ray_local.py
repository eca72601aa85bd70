"""The Ray backend on a local Ray it starts itself: impossible resources, interrupts, leaks.

Every test here starts (and must stop) a local Ray of 2 CPUs at most; none may
leave a Ray process of its own behind (checked after each test by the PIDs of
the processes this test process started).
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import psutil
import pytest

if importlib.util.find_spec("ray") is None:
    pytest.skip("the Ray backend needs ray (covey[ray])", allow_module_level=True)

import _raykit
import covey
from _ports import unused_port
from _raykit import Plus, ray_children
from covey.core._messages import Task
from covey.sim._ray import RayTransport
from covey.sim._rayplan import check_fits, check_reachable, crowded, not_grpc, ray_service
from covey.sim._rayreplies import take

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def no_ray_left() -> Iterator[None]:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    ray.cloudpickle.register_pickle_by_value(_raykit)
    assert not ray.is_initialized()
    yield
    assert not ray.is_initialized()
    left = ray_children()
    if left:
        _gone, alive = psutil.wait_procs([psutil.Process(p) for p in left], timeout=15)
        assert not alive, f"Ray processes outlived the run: {[p.pid for p in alive]}"


@pytest.mark.parametrize("address", [None, "local"])
def test_resources_a_local_ray_lacks_are_refused_at_once(address: str | None) -> None:
    # ray_address="local" (a new local Ray, as None) waited for the actors to start
    # until start_timeout, then failed without naming what the Ray lacks.
    with pytest.raises(ValueError, match="the local Ray started for this run has") as info:
        RayTransport(
            Plus,
            4,
            client_resources={"num_cpus": 64},
            address=address,
            start_timeout=20.0,
            init_args={"num_cpus": 2},
        )
    assert "{'CPU': 64.0}" in str(info.value)
    assert "ray_address" in str(info.value)


def test_what_a_local_ray_lacks_is_named() -> None:
    total = {"CPU": 2.0, "memory": 1e9}
    check_fits({"a": {"CPU": 1.0}, "b": {"CPU": 0.5, "memory": 1e9}}, total)
    with pytest.raises(ValueError, match=r"client_resources\['b'\] asks for \{'accel': 0.5\}"):
        check_fits({"a": {"CPU": 1.0}, "b": {"accel": 0.5}}, total)
    with pytest.raises(ValueError, match="'num_cpu': a custom Ray resource; covey's own names"):
        check_fits({"": {"num_cpu": 1.0}}, total)
    check_fits({"": {"CPU": 2.0}}, total)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"client_resources": [1]}, r"client_resources must be a mapping .* got list"),
        ({"client_resources": "num_cpus"}, r"client_resources must be a mapping .* got str"),
        ({"client_group": "gpu"}, r"client_group must be a function cid -> group name, got str"),
        ({"ray_address": 6379}, r"ray_address must be an address string .* got int"),
        ({"num_workers": 0}, r"num_workers must be None or a positive int, got 0"),
        ({"ray_start_timeout": 0}, r"ray_start_timeout must be None .* got 0"),
        ({"ray_start_timeout": -5.0}, r"ray_start_timeout must be None .* got -5.0"),
        ({"ray_start_timeout": float("nan")}, r"ray_start_timeout must be None .* got nan"),
        ({"ray_start_timeout": float("inf")}, r"ray_start_timeout must be None .* got inf"),
        ({"ray_start_timeout": "60"}, r"ray_start_timeout must be None .* got '60'"),
        ({"ray_start_timeout": True}, r"ray_start_timeout must be None .* got True"),
        ({"num_workers": 1.5}, r"num_workers must be None or a positive int, got 1.5"),
        (
            {"client_resources": {"num_cpus": 1e-5}},
            r"client resource 'num_cpus' is 1e-05, less than the smallest amount Ray counts",
        ),
        (
            {"client_resources": {"g": {"accel": 0.00005}}, "client_group": lambda cid: "g"},
            r"client resource 'accel' is 5e-05, .* at least 0.0001",
        ),
        (
            {"client_resources": {"memory": 0.5}},
            r"client resource 'memory' is 0.5: Ray's memory is in bytes, a whole number",
        ),
        (
            {"client_resources": {"g": {"memory": 1.5e9 + 0.25}}, "client_group": lambda c: "g"},
            r"client resource 'memory' is 1500000000.25: Ray's memory is in bytes",
        ),
        (
            {"client_resources": {"object_store_memory": 10**8}},
            r"'object_store_memory' is not one a Ray actor can hold: ask for 'memory'",
        ),
        (
            {"client_resources": {"num_cpus": 1, "CPU": 2}},
            r"client resources 'num_cpus' and 'CPU' both name Ray's 'CPU'",
        ),
    ],
)
def test_wrong_ray_options_are_refused_before_ray_starts(options: Any, error: str) -> None:
    import ray

    with pytest.raises((TypeError, ValueError), match=error):
        covey.simulate(Plus, 4, 1, covey.FedAvg(), {"w": np.zeros(2)}, backend="ray", **options)
    assert not ray.is_initialized()


def _slowly_unpickled() -> Any:
    time.sleep(5.0)  # in the actor, while it starts
    return Plus


class SlowToShip:
    """A client_fn that takes the actors seconds to unpickle: they start late."""

    def __call__(self, cid: int) -> covey.Client:
        return Plus(cid)

    def __reduce__(self) -> Any:
        return _slowly_unpickled, ()


def test_ray_start_timeout_bounds_the_actors_start() -> None:
    # It was no option: a slow cluster could not have more than 120 s.
    with pytest.raises(RuntimeError, match=r"did not start within 0\.5 s \(ray_start_timeout\)"):
        covey.simulate(
            SlowToShip(),
            2,
            1,
            covey.FedAvg(),
            {"w": np.zeros(2)},
            backend="ray",
            num_workers=1,
            client_resources={"num_cpus": 0.5},
            ray_start_timeout=np.float64(0.5),  # NumPy numbers too
        )
    _one_actor_given(np.int64(60))


def _one_actor_given(start_timeout: Any) -> None:
    """A one-round run on one Ray actor given ``start_timeout``; it averaged its two clients."""
    result = covey.simulate(
        Plus,
        2,
        1,
        covey.FedAvg(),
        {"w": np.zeros(2)},
        backend="ray",
        num_workers=1,
        client_resources={"num_cpus": 0.5},
        ray_start_timeout=start_timeout,
    )
    assert result.weights["w"].tolist() == [0.5, 0.5]


def test_ray_start_timeout_bounds_the_wait_for_a_cluster_to_answer() -> None:
    import ray

    with socket.socket() as silent:  # accepts connections, says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ConnectionError, match=r"sent nothing within 1\.5 s"):
            covey.simulate(
                Plus,
                2,
                1,
                covey.FedAvg(),
                {"w": np.zeros(2)},
                backend="ray",
                ray_address=address,
                ray_start_timeout=np.float32(1.5),
            )
    assert not ray.is_initialized()


def test_a_ray_start_timeout_of_years_waits_without_overflowing() -> None:
    import ray

    # Any positive, finite number is taken: 1e10 s made the socket's timeout, and
    # 1e300 s Ray's wait for the actors, raise a bare OverflowError.
    port = unused_port()  # nothing listens there
    with pytest.raises(ConnectionError, match="no Ray cluster answers"):
        check_reachable(f"127.0.0.1:{port}", 1e10)
    _one_actor_given(1e300)
    assert not ray.is_initialized()


def test_a_local_ray_that_fails_to_start_leaves_nothing_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc

    import ray

    # Ray gave its GCS 30 s to start, which a busy machine exceeded ("Timed out
    # waiting for file .../gcs_server_port"); the GCS server it had started ran on
    # (a ResourceWarning once collected), and the error said nothing of what to do.
    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "0")  # no time at all
    with pytest.raises(Exception, match="gcs_server_port") as failed:
        _one_actor_given(None)
    (note,) = failed.value.__notes__
    assert "RAY_gcs_server_port_wait_time_s=0 (set in the environment)" in note
    assert "raise ray_start_timeout" in note
    assert not ray.is_initialized()
    assert not ray_children()  # stopped and waited for, not left to the fixture
    del failed
    gc.collect()  # a Popen of Ray's not waited for warns here (filterwarnings=error)


def test_a_local_ray_is_given_ray_start_timeout_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from covey.sim import _raystart

    monkeypatch.delenv("RAY_gcs_server_port_wait_time_s", raising=False)
    seen = []
    real = _raystart.start_or_join

    def start_or_join(ray: Any, *args: Any) -> bool:
        with monkeypatch.context() as inner:
            inner.setattr(
                ray, "init", lambda **kw: seen.append(os.environ[_raystart.WAIT_VARIABLE])
            )
            inner.setattr(ray, "is_initialized", lambda: False)
            with contextlib.suppress(Exception):
                real(ray, *args)
        raise RuntimeError("stopped before Ray started")

    monkeypatch.setattr("covey.sim._ray.start_or_join", start_or_join)
    for timeout, wait in [(None, "120"), (300.5, "301"), (0.5, "1"), (1e300, "2000000")]:
        with pytest.raises(RuntimeError, match="stopped before Ray started"):
            _one_actor_given(timeout)
        assert seen.pop() == wait
    assert "RAY_gcs_server_port_wait_time_s" not in os.environ


def test_many_more_actors_than_cpus_are_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    # {"num_cpus": 0.01} started 200 actors on 2 CPUs, 100-200 MB each, without a word.
    with (
        caplog.at_level(logging.WARNING, logger="covey"),
        RayTransport(
            Plus, 9, client_resources={"num_cpus": 0.1}, init_args={"num_cpus": 1}
        ) as transport,
    ):
        assert transport.num_workers == 9
    said = [r.getMessage() for r in caplog.records if r.name == "covey"]
    assert any("starting 9 Ray actors for a cluster of 1 CPUs" in m for m in said), said
    assert any("cap the actors per group with num_workers" in m for m in said), said


def test_a_few_actors_per_cpu_are_not_warned_of() -> None:
    assert crowded({"": 8}, 1.0) is None  # a few, whatever the CPUs
    assert crowded({"a": 4, "b": 4}, 2.0) is None  # four per CPU
    assert crowded({"a": 5, "b": 4}, 2.0) is not None
    assert crowded({"": 9}, 0.0) is not None  # GPU clients on a cluster without CPUs named


def test_ray_start_timeout_applies_to_the_ray_backend_only() -> None:
    with pytest.raises(ValueError, match="ray_start_timeout apply to backend='ray' only"):
        covey.simulate(Plus, 2, 1, covey.FedAvg(), {"w": np.zeros(2)}, ray_start_timeout=30)


def _simulate_at(address: str) -> subprocess.CompletedProcess[str]:
    """A Ray simulation given ``ray_address=address`` in a process of its own (90 s at most).

    It prints ``refused:`` and the ConnectionError's text if simulate() raises one.
    """
    script = (
        "import numpy as np, covey\n"
        "class C(covey.Client):\n"
        "    def fit(self, weights, config):\n"
        "        return covey.FitResult(weights=dict(weights), num_examples=1)\n"
        "try:\n"
        f"    covey.simulate(lambda cid: C(), 2, 1, None, {{'w': np.zeros(2)}}, backend='ray',\n"
        f"                   ray_address='{address}')\n"
        "except ConnectionError as exc:\n"
        "    print('refused:', exc)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=90
    )


def test_a_cluster_address_where_nothing_listens_is_refused_at_once() -> None:
    # Ray itself retries such an address for more than ten minutes before failing.
    port = unused_port()  # nothing listens there
    try:
        out = _simulate_at(f"127.0.0.1:{port}")
    except subprocess.TimeoutExpired:
        pytest.fail(f"simulate() still waited for a Ray at 127.0.0.1:{port} after 90 s")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"refused: no Ray cluster answers at ray_address='127.0.0.1:{port}'" in out.stdout
    assert "Connection refused" in out.stdout
    assert "ray start --head" in out.stdout


def test_a_cluster_address_where_no_ray_head_answers_is_refused_at_once() -> None:
    # An HTTP server there (such as Ray's dashboard): Ray retried it for more than ten minutes.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        out = _simulate_at(address)
    except subprocess.TimeoutExpired:
        pytest.fail(f"simulate() still waited for a Ray at the HTTP server {address} after 90 s")
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 0, out.stderr[-2000:]
    assert (
        f"refused: something listens at ray_address='{address}', but no Ray head node" in out.stdout
    )
    assert "it answered '<!DOCTYPE HTML>', not as a gRPC server" in out.stdout
    assert "ray start --head" in out.stdout


class Quiet(http.server.BaseHTTPRequestHandler):
    """An HTTP/1 server's handler that logs nothing."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_grpc_servers_pass_the_probe_and_silent_ones_do_not() -> None:
    import grpc

    server = grpc.server(ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert not_grpc(sock, 10.0) is None
    finally:
        server.stop(0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with socket.create_connection(silent.getsockname(), timeout=10) as sock:
            said = not_grpc(sock, 0.5)
            assert said is not None
            assert said.startswith("it accepted a connection but sent nothing within 0.5 s")


@contextlib.contextmanager
def _grpc_serving(*methods: str) -> Iterator[int]:
    """A gRPC server on 127.0.0.1 answering ``/service/method`` names with empty bytes."""
    import grpc

    server = grpc.server(ThreadPoolExecutor(2))
    by_service: dict[str, dict[str, Any]] = {}
    for name in methods:
        service, method = name.strip("/").split("/")
        by_service.setdefault(service, {})[method] = grpc.unary_unary_rpc_method_handler(
            lambda request, context: b""
        )
    for service, handlers in by_service.items():
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


GCS = "/ray.rpc.NodeInfoGcsService/CheckAlive"
RAY_CLIENT = "/ray.rpc.RayletDriver/ClusterInfo"


def test_which_ray_server_answers_is_told_by_the_methods_it_serves() -> None:
    for methods, kind in [((GCS,), "gcs"), ((RAY_CLIENT,), "client"), ((), None)]:
        with _grpc_serving(*methods) as port:
            assert ray_service("127.0.0.1", port, 10.0) == kind, methods
    with _grpc_serving(GCS, RAY_CLIENT) as port:  # both: not told apart, left to Ray
        assert ray_service("127.0.0.1", port, 10.0) is None


def test_a_ray_client_port_without_ray_scheme_and_a_head_port_with_it_are_refused() -> None:
    # Ray failed the one after 20 s and waited 30 s on the other, naming neither mistake.
    with _grpc_serving(RAY_CLIENT) as port:
        with pytest.raises(ConnectionError, match="names a Ray Client server port") as got:
            check_reachable(f"127.0.0.1:{port}")
        assert f"give it as 'ray://127.0.0.1:{port}'" in str(got.value)
        check_reachable(f"ray://127.0.0.1:{port}")
    with _grpc_serving(GCS) as port:
        with pytest.raises(ConnectionError, match="names a Ray head node's port") as got:
            check_reachable(f"ray://127.0.0.1:{port}")
        assert f"give it without ray:// ('127.0.0.1:{port}')" in str(got.value)
        check_reachable(f"127.0.0.1:{port}")


def test_a_ray_client_address_where_nothing_listens_is_refused_at_once() -> None:
    # Ray waits 30 s for a Ray Client server, then fails without naming the address.
    import ray

    port = unused_port()  # nothing listens there
    address = f"ray://127.0.0.1:{port}"
    with pytest.raises(ConnectionError, match=f"no Ray cluster answers at ray_address='{address}'"):
        covey.simulate(Plus, 2, 1, None, {"w": np.zeros(2)}, backend="ray", ray_address=address)
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ("", "ray_address is empty"),
        ("127.0.0.1:head", "ray_address='127.0.0.1:head' has the port 'head', not a number"),
    ],
)
def test_a_malformed_ray_address_is_refused_naming_it(address: str, error: str) -> None:
    import ray

    with pytest.raises(ValueError, match=error):
        covey.simulate(Plus, 2, 1, None, {"w": np.zeros(2)}, backend="ray", ray_address=address)
    assert not ray.is_initialized()


def test_a_local_ray_ends_with_its_driver_killed_with_sigkill(tmp_path: Any) -> None:
    # Killed with SIGKILL mid-run, a script's simulate(backend="ray") left the Ray
    # it started running: its dashboard and runtime-env agents, a minute or more.
    ready = tmp_path / "fitting"
    script = (
        "import sys, time, pathlib, numpy as np, covey\n"
        "class Stuck(covey.Client):\n"
        "    def fit(self, weights, config):\n"
        f"        pathlib.Path({str(ready)!r}).write_text('fit')\n"
        "        time.sleep(600)\n"
        "covey.simulate(lambda cid: Stuck(), 2, 1, None, {'w': np.zeros(2)}, backend='ray')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    driver = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ray: list[psutil.Process] = []
    try:
        for _ in range(1200):  # the Ray starts and client 0 fits in its actor
            if ready.exists() or driver.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), driver.stderr.read().decode()[-2000:] if driver.stderr else ""
        ray = psutil.Process(driver.pid).children(recursive=True)  # its Ray's, found by PID
        assert ray
        driver.kill()
        driver.wait()
        left = _outliving(ray)
        assert not left, f"the Ray's processes outlived their driver: {[p.pid for p in left]}"
    finally:
        driver.kill()
        driver.wait()
        if driver.stderr:
            driver.stderr.close()
        for process in ray:
            with contextlib.suppress(psutil.Error):
                process.kill()


def test_ctrl_c_while_the_local_ray_starts_stops_it(tmp_path: Any) -> None:
    # Ctrl-C in ray.init, once Ray's processes had started: the driver ended with a
    # segmentation fault, or left Ray's dashboard and runtime-env agents running for
    # a minute or more. Held back until Ray has started, it stops that Ray as usual.
    pids = tmp_path / "pids"
    script = (
        "import os, signal, psutil, numpy as np, ray, covey\n"
        "from ray._private import services\n"
        "get_node = services.get_node\n"
        "def interrupted(*args, **kwargs):\n"
        "    kids = psutil.Process().children(recursive=True)\n"
        f"    open({str(pids)!r}, 'w').write(' '.join(str(p.pid) for p in kids))\n"
        "    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: Ray's processes started, not joined\n"
        "    return get_node(*args, **kwargs)\n"
        "services.get_node = interrupted\n"
        "covey.simulate(lambda cid: None, 2, 1, None, {'w': np.zeros(2)}, backend='ray')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    driver = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    started = pids.read_text().split()  # the Ray's processes, as ray.init was interrupted
    ray: list[psutil.Process] = []
    for pid in started:
        with contextlib.suppress(psutil.Error):
            ray.append(psutil.Process(int(pid)))  # those still running
    try:
        assert started, driver.stderr[-2000:]
        assert driver.stderr.rstrip().endswith("KeyboardInterrupt"), driver.stderr[-2000:]
        assert driver.returncode == -signal.SIGINT, driver.stderr[-2000:]
        left = _outliving(ray)
        assert not left, f"the Ray's processes outlived their driver: {[p.pid for p in left]}"
    finally:
        for process in ray:
            with contextlib.suppress(psutil.Error):
                process.kill()


def _own_sigterm(signum: int, frame: Any) -> None:
    """A SIGTERM handler of the user's own (never called here)."""


SIGTERM_HANDLERS: dict[str, Any] = {"default": signal.SIG_DFL, "own": _own_sigterm}


@pytest.fixture(scope="module")
def after_local_runs() -> dict[str, dict[str, Any]]:
    """What two runs on a local Ray each left behind, by the SIGTERM handler it found.

    The same one-round run each time, with a log handler of the user's own on the
    ``ray`` logger (quietened to WARNING), without ``PYTHONBREAKPOINT``,
    ``RAY_AUTH_MODE`` or ``RAY_USAGE_STATS_ENABLED``; the second run's Ray sees the
    first's token file. Each test below checks its part of what both runs left.
    """
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    ray.cloudpickle.register_pickle_by_value(_raykit)
    seen: dict[str, dict[str, Any]] = {}
    ray_logger = logging.getLogger("ray")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("PYTHONBREAKPOINT", raising=False)
        env.delenv("RAY_AUTH_MODE", raising=False)  # Ray's default: token, once a token exists
        env.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
        before = dict(os.environ)
        for name, handler in SIGTERM_HANDLERS.items():
            assert not ray.is_initialized()
            own = logging.StreamHandler()
            formatter = logging.Formatter("mine: %(message)s")
            own.setFormatter(formatter)
            level = ray_logger.level
            ray_logger.addHandler(own)
            ray_logger.setLevel(logging.WARNING)
            root = {h: h.formatter for h in logging.getLogger().handlers}
            kept = signal.signal(signal.SIGTERM, handler)
            try:
                result = covey.simulate(
                    Plus, 2, 1, None, {"w": np.zeros(2)}, backend="ray", num_workers=1
                )
                seen[name] = {
                    "sigterm": signal.getsignal(signal.SIGTERM),
                    "sigint": signal.getsignal(signal.SIGINT),
                    "weights": result.weights["w"].tolist(),
                    "own formatter kept": own.formatter is formatter,
                    "ray level": ray_logger.level,
                    "root formatters kept": {h: h.formatter for h in logging.getLogger().handlers}
                    == root,
                    "environment": dict(os.environ),
                    "environment before": before,
                }
            finally:
                signal.signal(signal.SIGTERM, kept)
                ray_logger.removeHandler(own)
                ray_logger.setLevel(level)
    return seen


@pytest.mark.parametrize("handler", list(SIGTERM_HANDLERS))
def test_a_run_on_a_local_ray_leaves_the_sigterm_handler_as_it_found_it(
    handler: str, after_local_runs: dict[str, dict[str, Any]]
) -> None:
    # ray.init sets a SIGTERM handler of its own (sys.exit) that ray.shutdown leaves:
    # after one run, SIGTERM no longer ended the process, and a handler of the
    # user's own (or covey run's stop) was gone for good.
    run = after_local_runs[handler]
    assert run["sigterm"] is SIGTERM_HANDLERS[handler]
    assert run["sigint"] is signal.default_int_handler
    assert run["weights"] == [0.5, 0.5]


def test_a_run_on_a_local_ray_leaves_the_users_log_handlers_and_ray_level_as_they_were(
    after_local_runs: dict[str, dict[str, Any]],
) -> None:
    # ray.init gave every handler of the "ray" logger Ray's format (pytest's capture
    # handlers and a user's own there, whose every line then came out in Ray's
    # format, covey's too) and set that logger back to INFO each run.
    for run in after_local_runs.values():
        assert run["own formatter kept"]
        assert run["ray level"] == logging.WARNING
        assert run["root formatters kept"]


def test_a_run_on_a_local_ray_leaves_breakpoint_to_pdb(
    after_local_runs: dict[str, dict[str, Any]],
) -> None:
    # ray.init names Ray's driver hook in PYTHONBREAKPOINT and ray.shutdown left it:
    # breakpoint() after a run waited for a remote debugger (or, without debugpy,
    # did nothing) instead of starting pdb.
    for run in after_local_runs.values():
        assert "PYTHONBREAKPOINT" not in run["environment"]


def test_a_run_on_a_local_ray_leaves_the_environment_as_it_was(
    after_local_runs: dict[str, dict[str, Any]],
) -> None:
    # ray.init set RAY_AUTH_MODE=token and RAY_USAGE_STATS_ENABLED in this process's
    # environment and ray.shutdown left them: every process started after the run
    # (a `ray start`, a script, a notebook's next run) inherited them.
    assert list(after_local_runs) == ["default", "own"]  # the second saw the first's token
    for run in after_local_runs.values():
        assert run["environment"] == run["environment before"]


def test_a_local_run_leaves_no_one_host_setting_to_the_processes_started_after_it() -> None:
    # covey set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for its local Ray and left it:
    # a `ray start --address=...` run from that process afterwards refused to join
    # a cluster ("not supported on Windows and OSX"), on Linux too. Nor does this
    # process's Ray keep it (read at import): a cluster run next registered on 127.0.0.1.
    script = (
        "import os, numpy as np, covey\n"
        "class C(covey.Client):\n"
        "    def fit(self, weights, config):\n"
        "        return covey.FitResult(weights=dict(weights), num_examples=1)\n"
        "for _ in range(2):\n"
        "    covey.simulate(lambda cid: C(), 2, 1, None, {'w': np.zeros(2)}, backend='ray',\n"
        "                   num_workers=1)\n"
        "    print('left:', os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))\n"
        "    from ray._private import ray_constants\n"
        "    print('clusters:', ray_constants.ENABLE_RAY_CLUSTER)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=150, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("left: None") == 2, out.stdout
    clusters = sys.platform not in ("darwin", "win32")  # Ray's default for this platform
    assert out.stdout.count(f"clusters: {clusters}") == 2, out.stdout


def _running(process: psutil.Process) -> bool:
    """Whether ``process`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _outliving(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` still running after at most 30 s (Ray's agents lived a minute)."""
    left = processes
    for _ in range(300):
        left = [p for p in left if _running(p)]
        if not left:
            break
        time.sleep(0.1)
    return left


def test_covey_demo_on_ray_trains_the_model_inline_does(tmp_path: Any) -> None:
    """``covey demo --backend ray`` starts a local Ray, trains, and stops it: the same bits."""
    from safetensors.numpy import load_file

    models = {}
    for backend in ("inline", "ray"):
        flags = ["--backend", backend, "--rounds", "2", "--clients", "10", "--no-plot"]
        out = subprocess.run(
            [sys.executable, "-m", "covey", "demo", *flags, "--run-dir", backend, "--out", "m.st"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"({backend} backend)" in out.stdout
        models[backend] = load_file(str(tmp_path / "m.st"))
    assert models["ray"].keys() == models["inline"].keys()
    for name, array in models["inline"].items():
        np.testing.assert_array_equal(models["ray"][name], array)


def test_covey_run_on_ray_trains_the_project_as_inline_does(tmp_path: Any) -> None:
    """``covey run`` with ``backend = "ray"``: a local Ray's actors import the project's apps.

    Run from another folder and without PYTHONPATH, so the actors can only import
    the project because the run puts its folder on their path.
    """
    from safetensors.numpy import load_file

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def covey_cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "covey", *args],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env=env,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    covey_cli("new", "rayfed", "--dir", str(tmp_path))
    models = {}
    for backend in ("inline", "ray"):
        runs = tmp_path / backend
        flags = ["--set", f"backend={backend}", "--set", "rounds=2", "--set", f"runs-dir={runs}"]
        assert f"({backend} backend)" in covey_cli("run", str(tmp_path / "rayfed"), *flags)
        (folder,) = runs.iterdir()
        models[backend] = load_file(str(folder / "model.safetensors"))
    assert models["ray"].keys() == models["inline"].keys()
    for name, array in models["inline"].items():
        np.testing.assert_array_equal(models["ray"][name], array)


def test_memory_is_asked_for_in_whole_bytes() -> None:
    from covey.sim._rayplan import ray_need

    assert ray_need({"memory": 2 * 1024**3, "num_cpus": 0.5}) == {"memory": 2**31, "CPU": 0.5}
    assert ray_need({"memory": 1e9}) == {"memory": 1e9}  # a whole number written as a float
    assert ray_need({"memory": 0}) == {"memory": 0.0}  # none asked for, as for any resource
    with pytest.raises(ValueError, match=r"'memory' is 0.5: Ray's memory is in bytes"):
        ray_need({"memory": 0.5})
    with pytest.raises(ValueError, match=r"'memory' must be a finite number >= 0, got -1"):
        ray_need({"memory": -1})


def test_numpy_numbers_are_resources_as_the_numbers_they_are() -> None:
    from covey.sim._options import ray_settings
    from covey.sim._rayplan import ray_need

    # np.int64(2**30) was refused as no "finite number >= 0"; np.float32 too
    asked: dict[str, Any] = {"num_cpus": np.float32(0.5), "memory": np.int64(2**30)}
    asked["accel"] = np.uint8(2)
    assert ray_need(asked) == {"CPU": 0.5, "memory": 2.0**30, "accel": 2.0}
    assert ray_settings("ray", asked, None)["client_resources"] == {
        "num_cpus": 0.5,
        "memory": 2**30,
        "accel": 2,
    }
    with pytest.raises(ValueError, match=r"'num_cpus' must be a finite number >= 0, got np.True_"):
        ray_need({"num_cpus": np.bool_(True)})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"'memory' must be a finite number >= 0, got np.float64"):
        ray_need({"memory": np.float64("nan")})


@pytest.mark.parametrize(
    ("resources", "error"),
    [
        # Ray's count wrapped around: an actor asking for 1e16 bytes ran holding none
        ({"memory": 10**16}, r"'memory' is 10000000000000000, more than Ray can count \(at most "),
        ({"memory": 1e30}, r"'memory' is 1e\+30, more than Ray can count .* bytes\)$"),
        ({"memory": 10**400}, r"'memory' is 1000.*, more than Ray can count"),  # no OverflowError
        ({"num_gpus": 1e15}, r"'num_gpus' is 1000000000000000.0, .* \(at most 922337203685477\)$"),
        ({"": 1}, r"client resource names must be non-empty strings .*, got ''"),
        ({2: 1}, r"client resource names must be non-empty strings .*, got 2"),
    ],
)
def test_an_amount_or_a_name_ray_cannot_take_is_refused_naming_it(
    resources: dict[Any, Any], error: str
) -> None:
    from covey.sim._rayplan import ray_need

    with pytest.raises(ValueError, match=error):
        ray_need(resources)
    assert ray_need({"memory": 9 * 10**14, "num_cpus": 1}) == {"memory": 9e14, "CPU": 1.0}


def test_a_group_not_in_client_resources_is_shown_as_client_group_returned_it() -> None:
    # It said "client_group(3) is '1'", as if the group '1' were missing: 1 was returned.
    transport = RayTransport.__new__(RayTransport)  # the lookup alone, without a Ray
    transport._spec = {"1": ({"CPU": 1.0}, 2), "b": ({"CPU": 1.0}, 1)}
    transport._retired = set()
    transport._group_of = lambda cid: 1 if cid == 3 else "c"  # type: ignore[assignment, return-value]
    assert transport._home(3) == ("1", 1)  # a key 1 of client_resources is the group "1"
    with pytest.raises(ValueError, match=r"^client_group\(4\) returned 'c' \(str\), not one of"):
        transport._home(4)
    transport._spec = {"a": ({"CPU": 1.0}, 2)}
    with pytest.raises(
        ValueError,
        match=r"^client_group\(3\) returned 1 \(int\), not one of the groups of "
        r"client_resources \['a'\]$",
    ):
        transport._home(3)


class _OneReply:
    """A streaming call's stub: one reply ready, which Ray then fails."""

    def __init__(self) -> None:
        self.taken = False

    def next_ready(self) -> bool:
        return not self.taken

    def __next__(self) -> str:
        self.taken = True
        return "ref"

    def is_finished(self) -> bool:
        return True


@pytest.mark.parametrize("kind", ["OutOfMemoryError", "NodeDiedError"])
def test_an_actor_killed_for_memory_is_one_that_died_and_is_replaced(kind: str) -> None:
    # Ray's memory monitor killing an actor fails its calls with OutOfMemoryError, not
    # an actor error: the actor was kept, and its clients failed in every later round.
    import types

    import ray

    def get(ref: Any, timeout: float) -> Any:
        raise getattr(ray.exceptions, kind)("4 worker(s) were killed due to low memory")

    transport = RayTransport.__new__(RayTransport)
    transport._ray = types.SimpleNamespace(exceptions=ray.exceptions, get=get)
    transport._actors = {"": ["the actor"]}
    transport._where = {("", 0): (4242, "a node")}
    stream = _OneReply()
    tasks = {cid: Task("fit", 1, {}, None) for cid in (1, 5)}
    pending = {stream: ("", 0, [1, 5])}
    held = {("", 0): [1, 5]}
    replies = list(
        take(
            transport._ray, transport._actors, transport._where, stream, pending, held, tasks, 10.0
        )
    )
    assert [r.cid for r in replies] == [1, 5]
    for reply in replies:
        assert not reply.ok
        assert str(reply.error).startswith("Ray actor 0 (pid 4242) died running one of")
        assert "were killed due to low memory" in str(reply.error)
    assert transport._actors[""][0] is None  # started anew at the next exchange


def test_a_client_fn_that_does_not_pickle_is_refused_before_ray_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It was refused only once a local Ray had started (seconds), or a cluster was joined.
    lock = threading.Lock()

    def client_fn(cid: int) -> Plus:
        with lock:
            return Plus(cid)

    def started(*args: Any, **kwargs: Any) -> bool:
        raise AssertionError("Ray was started for a client_fn that does not pickle")

    monkeypatch.setattr("covey.sim._ray.start_or_join", started)
    with pytest.raises(TypeError, match=r"client_fn \(.*client_fn\) .* does not pickle") as info:
        covey.simulate(client_fn, 2, 1, covey.FedAvg(), {"w": np.zeros(2)}, backend="ray")
    assert "cannot pickle '_thread.lock' object (Serializing 'lock'" in str(info.value)
    assert "backend='process'" in str(info.value)

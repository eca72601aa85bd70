"""The systems ``deploy_vs_flower.py`` compares, each launched as real processes on 127.0.0.1.

One function per system starts its processes through a :class:`_deploy_launch.Run`,
starts the memory sampler with the clock, and waits for the run to end (or
time out, die, or pass the memory limits); see ``deploy_vs_flower.py``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import _proctree as pt
from _deploy_launch import (
    COVEY_BIN,
    HERE,
    QUIET_ENV,
    Run,
    bench_env,
    free_ports,
    read_times,
    wait_for,
    watch,
)
from _deploy_measure import DeploySampler

__all__ = ["RUNNERS"]


def run_covey(run: Run, sampler: DeploySampler, times: Path, deadline: float) -> dict[str, Any]:
    """``covey server`` and one ``covey client`` per client, insecure or with mutual TLS."""
    spec, args = run.spec, run.args
    tls = spec.system == "covey-tls"
    env = bench_env(spec, times)
    covey = str(COVEY_BIN / "covey")
    fed = run.work / "fed"
    if tls:  # set-up, before the clock starts: a CA, a server certificate, one per client
        run.run_tool([covey, "certs", "init", "--dir", str(fed), "--host", "127.0.0.1"], env)
        for k in range(spec.n):
            run.run_tool([covey, "certs", "issue", f"client-{k}", "--dir", str(fed)], env)
    security = ["--certs", str(fed)] if tls else ["--insecure"]
    port_file = run.work / "port"
    run_dir = run.work / "run"
    t0 = time.time()
    sampler.start()
    server = run.launch(
        "server",
        "server",
        [
            covey,
            "server",
            "--app",
            "_deploy_covey_app:server_app",
            "--address",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--run-dir",
            str(run_dir),
            "--wait-timeout",
            str(args.timeout),
            *security,
            *(["--data-port", "0"] if getattr(args, "data_port", False) else []),
        ],
        env,
    )
    if not wait_for(port_file.exists, 120, alive=lambda: server.poll() is None):
        return {"t0": t0, "status": "failed: the server did not listen", "rc": server.poll()}
    port = int(port_file.read_text())
    clients = []
    for k in range(spec.n):
        name = f"client-{k}"
        clients.append(
            run.launch(
                name,
                "client",
                [
                    covey,
                    "client",
                    "--app",
                    "_deploy_covey_app:client_fn",
                    "--cid",
                    str(k),
                    "--server",
                    f"127.0.0.1:{port}",
                    "--name",
                    name,
                    "--max-attempts",
                    "30",
                    *security,
                ],
                env,
            )
        )
    status = watch(
        run,
        sampler,
        deadline,
        done=lambda: server.poll() is not None,
        alive=lambda: True,
    )
    t_end = time.time()
    rc = server.poll()
    if status == "ok" and rc != 0:
        status = f"failed: server exit code {rc}"
    wait_for(lambda: all(c.poll() is not None for c in clients), 30)
    out: dict[str, Any] = {"t0": t0, "t_end": t_end, "status": status, "rc": rc}
    out["client_rcs"] = sorted({str(c.poll()) for c in clients})
    with contextlib.suppress(Exception):
        from covey.server._store import RunStore

        with RunStore.open(run_dir) as store:
            out["durations"] = [r.durations for r in store.history().rounds if r.round > 0]
    return out


def run_covey_sim(run: Run, sampler: DeploySampler, times: Path, deadline: float) -> dict[str, Any]:
    """The same clients and strategy through ``covey.simulate`` in one process."""
    env = bench_env(run.spec, times)
    t0 = time.time()
    sampler.start()
    proc = run.launch(
        "simulate", "server", [sys.executable, str(HERE / "_deploy_covey_app.py"), "simulate"], env
    )
    status = watch(run, sampler, deadline, done=lambda: proc.poll() is not None, alive=lambda: True)
    rc = proc.poll()
    if status == "ok" and rc != 0:
        status = f"failed: exit code {rc}"
    out: dict[str, Any] = {"t0": t0, "t_end": time.time(), "status": status, "rc": rc}
    data = read_times(times)
    out["durations"] = data.get("durations")
    out["simulate_seconds"] = data.get("simulate_seconds")
    return out


FLOWER_PYPROJECT = """\
[project]
name = "coveydeploybench"
version = "1.0.0"
description = "The deployed benchmark of covey's benchmarks/deploy_vs_flower.py"
license = "Apache-2.0"

[tool.flwr.app]
publisher = "coveybench"

[tool.flwr.app.components]
serverapp = "coveydeploybench:server_app"
clientapp = "coveydeploybench:client_app"

[tool.flwr.app.config]
workload = "{workload}"
n = {n}
num-rounds = {rounds}
elements = {elements}
times = "{times}"
"""

FLOWER_SHIM = """\
import sys

sys.path.insert(0, {bench!r})
import _deploy_flower_app as _app  # noqa: E402

server_app = _app.server_app
client_app = _app.client_app
"""

FLOWER_CONFIG = """\
[superlink]
default = "bench"

[superlink.bench]
address = "127.0.0.1:{port}"
insecure = true
"""


def run_flower(run: Run, sampler: DeploySampler, times: Path, deadline: float) -> dict[str, Any]:
    """``flower-superlink``, one ``flower-supernode`` per client, the app run with ``flwr run``."""
    spec, args = run.spec, run.args
    fbin = args.flower_bin
    if not (fbin / "flower-superlink").exists():
        return {"status": f"skipped: no {fbin}/flower-superlink (run `make bench-deploy`)"}
    home, app = run.work / "flwr-home", run.work / "app"
    home.mkdir()
    app.mkdir()
    ports = free_ports(spec.n + 1)
    (home / "config.toml").write_text(FLOWER_CONFIG.format(port=ports[0]))
    (app / "pyproject.toml").write_text(
        FLOWER_PYPROJECT.format(
            workload="digits" if spec.part == "digits" else "big",
            n=spec.n,
            rounds=spec.rounds,
            elements=spec.elements,
            times=times,
        )
    )
    (app / "coveydeploybench.py").write_text(FLOWER_SHIM.format(bench=str(HERE)))
    env = {
        **os.environ,
        **QUIET_ENV,
        "FLWR_HOME": str(home),
        "PATH": os.pathsep.join([str(fbin), os.environ.get("PATH", "")]),
    }
    env.pop("PYTHONPATH", None)
    t0 = time.time()
    sampler.start()
    link = run.launch(
        "superlink",
        "server",
        [
            str(fbin / "flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(ports[0]),
            "--disable-runtime-dependency-installation",
        ],
        env,
    )

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", ports[0])) == 0

    if not wait_for(listening, 120, alive=lambda: link.poll() is None, step=0.25):
        return {"t0": t0, "status": "failed: the SuperLink did not listen", "rc": link.poll()}
    nodes = [
        run.launch(
            f"supernode-{k}",
            "client",
            [
                str(fbin / "flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{ports[0]}",
                "--port",
                str(ports[k + 1]),
                "--node-config",
                f"partition-id={k} num-partitions={spec.n}",
            ],
            env,
        )
        for k in range(spec.n)
    ]
    submit = run.launch("flwr-run", "other", [str(fbin / "flwr"), "run", str(app), "bench"], env)
    seen_serverapp = [False]

    def alive() -> bool:
        if link.poll() is not None or submit.poll() not in (None, 0):
            return False
        running = any(p.comm == "flwr-serverapp" for p in pt.tree(None))
        seen_serverapp[0] = seen_serverapp[0] or running
        return running or not seen_serverapp[0]

    status = watch(
        run, sampler, deadline, done=lambda: bool(read_times(times).get("finished")), alive=alive
    )
    out: dict[str, Any] = {
        "t0": t0,
        "t_end": time.time(),
        "status": status,
        "rc": link.poll(),
        "submit_rc": submit.poll(),
        "nodes_alive": sum(n.poll() is None for n in nodes),
    }
    if status == "died":
        out["status"] = (
            "failed: the ServerApp ended without finishing"
            if seen_serverapp[0]
            else f"failed: flwr run exit code {submit.poll()}"
        )
    return out


def run_sockets(run: Run, sampler: DeploySampler, times: Path, deadline: float) -> dict[str, Any]:
    """A sender and K receivers moving the same bytes over plain TCP."""
    spec = run.spec
    env = {**os.environ, **QUIET_ENV}
    port_file = run.work / "port"
    script = str(HERE / "_deploy_sockets.py")
    t0 = time.time()
    sampler.start()
    sender = run.launch(
        "sender",
        "server",
        [
            sys.executable,
            script,
            "send",
            "--clients",
            str(spec.n),
            "--elements",
            str(spec.elements),
            "--rounds",
            str(spec.rounds),
            "--port-file",
            str(port_file),
            "--times",
            str(times),
        ],
        env,
    )
    if not wait_for(port_file.exists, 120, alive=lambda: sender.poll() is None):
        return {"t0": t0, "status": "failed: the sender did not listen", "rc": sender.poll()}
    port = int(port_file.read_text())
    for k in range(spec.n):
        run.launch(
            f"receiver-{k}",
            "client",
            [sys.executable, script, "receive", "--server", f"127.0.0.1:{port}"],
            env,
        )
    status = watch(
        run, sampler, deadline, done=lambda: sender.poll() is not None, alive=lambda: True
    )
    rc = sender.poll()
    if status == "ok" and rc != 0:
        status = f"failed: exit code {rc}"
    return {"t0": t0, "t_end": time.time(), "status": status, "rc": rc}


RUNNERS = {
    "covey": run_covey,
    "covey-tls": run_covey,
    "covey-inplace": run_covey,
    "covey-sim": run_covey_sim,
    "flower": run_flower,
    "sockets": run_sockets,
}

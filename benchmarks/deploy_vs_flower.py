"""Deployed covey vs deployed Flower 1.42 vs raw loopback sockets, side by side, in one invocation.

Every federation runs as real processes on 127.0.0.1, one system at a time:

* ``covey``: ``covey server`` plus one ``covey client`` process per client,
  insecure (like-for-like with Flower's insecure mode); ``covey-tls`` is the
  same with mutual TLS from ``covey certs init`` / ``covey certs issue`` (the
  default for real deployments); the app is ``_deploy_covey_app.py``.
* ``covey-sim``: the same clients, strategy and evaluation through
  ``covey.simulate`` (inline) in one process, to isolate what deployment costs.
* ``flower``: ``flower-superlink`` plus one ``flower-supernode`` per client
  (insecure; each starts its SuperExec, which starts a fresh ``flwr-clientapp``
  process per round), the ServerApp submitted with ``flwr run`` against a
  SuperLink connection in a private ``FLWR_HOME``; the app is
  ``_deploy_flower_app.py``.
* ``sockets`` (big model only): a sender and K receivers moving the same bytes
  over plain TCP (``_deploy_sockets.py``).

Three parts: the digits workload (``_workload.py``; FedAvg over all N clients,
one local epoch of SGD) at each ``--n`` (Flower: ``--flower-n``); a big float32 model (``--big-mb``,
``_deploy_model.py``) sent to ``--big-clients`` clients that return ``w + 1``;
once, a model over 2 GiB (``--huge``). Memory is the PSS of every process of
the system (``_proctree.py``), summed and per process; each process is tagged
server or client by its ancestry (or name). A run is stopped after
``--timeout``, or when its processes' PSS passes ``--mem-budget-gib`` or the
machine's MemAvailable falls below ``--mem-guard-gib`` (the machine is
shared), and reported with what it had done. Results: tables on stdout, and
JSON plus a markdown section in ``benchmarks/results/`` (gitignored);
``--report-from`` rebuilds them from an earlier invocation's folder.

Examples::

    .venv/bin/python benchmarks/deploy_vs_flower.py
    .venv/bin/python benchmarks/deploy_vs_flower.py --n 10 --rounds 5 --no-huge --systems covey
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _deploy_model as dm  # noqa: E402
import _proctree as pt  # noqa: E402
import vs_flower as vf  # noqa: E402  (idle wait, CPU accounting, CPU model)

SYSTEMS = ("covey", "covey-tls", "covey-sim", "flower", "sockets")
PARTS = ("digits", "big", "huge")
MB = 1e6
COVEY_BIN = Path(sys.executable).parent
QUIET_ENV = vf.RUNNER_ENV


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n", type=int, nargs="+", default=[10, 100], help="digits client counts")
    p.add_argument("--rounds", type=int, default=10, help="rounds of the digits workload")
    p.add_argument("--tls-n", type=int, nargs="*", default=[10], help="N with a covey-tls row")
    p.add_argument("--big-mb", type=float, default=400.0, help="big model size (10**6 bytes)")
    p.add_argument("--big-clients", type=int, default=4)
    p.add_argument("--big-rounds", type=int, default=2)
    p.add_argument(
        "--huge",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also send one model over 2 GiB (--huge-gib) to --huge-clients clients, once",
    )
    p.add_argument("--huge-gib", type=float, default=2.2)
    p.add_argument("--huge-clients", type=int, default=1)
    p.add_argument("--digits", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--big", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)}",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    p.add_argument(
        "--flower-bin",
        type=Path,
        default=ROOT / ".venv-flower" / "bin",
        help="bin folder of the venv with flwr 1.42.0",
    )
    p.add_argument("--interval", type=float, default=0.05, help="memory sampling period (s)")
    p.add_argument("--sampler-duty", type=float, default=0.10)
    p.add_argument(
        "--load-below",
        type=float,
        default=1.5,
        help="at start, wait until the 1-minute load average is below this",
    )
    p.add_argument("--load-max-wait", type=float, default=900.0)
    p.add_argument(
        "--idle-below",
        type=float,
        default=0.25,
        help="before each run, wait until the machine is busy below this share of all CPUs",
    )
    p.add_argument("--idle-max-wait", type=float, default=120.0)
    p.add_argument(
        "--flower-n",
        type=int,
        nargs="*",
        default=[10, 50, 100],
        help="digits client counts for Flower (each bounded by --timeout and the memory limits)",
    )
    p.add_argument(
        "--mem-guard-gib",
        type=float,
        default=4.0,
        help="abort a run when the machine's MemAvailable falls below this",
    )
    p.add_argument(
        "--mem-budget-gib",
        type=float,
        default=16.0,
        help="abort a run when its processes' summed PSS exceeds this",
    )
    p.add_argument("--out-dir", type=Path, default=HERE / "results")
    p.add_argument(
        "--report-from",
        type=Path,
        default=None,
        help="run nothing: rebuild the report from a results/deploy-STAMP folder",
    )
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        p.error(f"unknown systems {unknown}; choose from {SYSTEMS}")
    return args


# --- memory: per process and per role ----------------------------------------------


def _ppid(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(Path(a).name if i < 2 else a for i, a in enumerate(raw.decode().split("\0")))


def mem_available_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


@dataclass
class ProcPeak:
    role: str
    name: str
    cmd: str
    peak_kb: int = 0


class DeploySampler(pt.TreeSampler):
    """:class:`_proctree.TreeSampler` that also keeps each process's and each role's peak.

    A process's role is that of the nearest launched ancestor (``roles``), else
    guessed from its command line, else "other" (looked up again on later ticks,
    since a process can be seen before its launch is recorded).
    A process's PSS at a tick is the tree sampler's exact read, or its estimate
    (last exact PSS plus the change in anonymous memory since).
    """

    def __init__(self, roles: dict[int, str], guard_kb: int, budget_kb: int, **kw: Any) -> None:
        super().__init__(root_sid=None, **kw)
        self.roles = roles
        self.guard_kb = guard_kb
        self.budget_kb = budget_kb
        self.procs: dict[int, ProcPeak] = {}
        self.role_peak_kb: dict[str, int] = {}
        self.series: list[tuple[float, int, int]] = []  # (t, server kB, client kB)
        self.min_available_kb: int | None = None
        self.memory_alarm = ""

    def _role(self, pid: int) -> str:
        cur: int | None = pid
        for _ in range(32):
            if cur is None or cur <= 1:
                break
            if cur in self.roles:
                return self.roles[cur]
            cur = _ppid(cur)
        cmd = _cmdline(pid)
        if any(k in cmd for k in ("superlink", "serverapp", "covey server", " send ")):
            return "server"
        if any(k in cmd for k in ("supernode", "clientapp", "covey client", " receive ")):
            return "client"
        return "other"

    def sample_once(self) -> pt.Sample:
        s = super().sample_once()
        sums: dict[str, int] = {}
        for pid in self._pids:
            entry = self._last_exact_kb.get(pid)
            statm = pt.statm_kb(pid)
            if entry is None or statm is None or statm[0] == 0:
                continue
            pss = max(0, entry[0] + statm[1] - entry[1])
            info = self.procs.get(pid)
            if info is None or info.role == "other":  # a launch may not be recorded yet
                cmd = _cmdline(pid)
                peak = info.peak_kb if info is not None else 0
                info = self.procs[pid] = ProcPeak(
                    self._role(pid), cmd.split(" ")[1] if " " in cmd else cmd, cmd[:200], peak
                )
            info.peak_kb = max(info.peak_kb, pss)
            sums[info.role] = sums.get(info.role, 0) + pss
        for role, kb in sums.items():
            self.role_peak_kb[role] = max(self.role_peak_kb.get(role, 0), kb)
        self.series.append((s.t, sums.get("server", 0), sums.get("client", 0)))
        avail = mem_available_kb()
        if self.min_available_kb is None or avail < self.min_available_kb:
            self.min_available_kb = avail
        if avail < self.guard_kb:
            self.memory_alarm = f"MemAvailable fell below {self.guard_kb / 2**20:g} GiB"
        elif s.pss_kb > self.budget_kb:
            self.memory_alarm = f"its processes' PSS exceeded {self.budget_kb / 2**20:g} GiB"
        return s


# --- one run -----------------------------------------------------------------------


@dataclass
class Spec:
    part: str  # digits | big | huge
    system: str
    n: int
    rounds: int
    elements: int = 0

    @property
    def tag(self) -> str:
        return f"{self.part}-n{self.n}-{self.system}"


@dataclass
class Run:
    spec: Spec
    args: argparse.Namespace
    log_dir: Path
    work: Path
    procs: list[tuple[str, str, subprocess.Popen[bytes]]] = field(default_factory=list)
    roles: dict[int, str] = field(default_factory=dict)
    pgid: int = 0
    logs: list[Any] = field(default_factory=list)

    def launch(
        self, name: str, role: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start one process of this system, in the system's own process group."""
        log = (self.log_dir / f"{name}.log").open("wb")
        self.logs.append(log)
        proc = subprocess.Popen(
            cmd,
            cwd=cwd or self.work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=self.pgid,  # 0 for the first: a new group led by it
        )
        if not self.pgid:
            self.pgid = proc.pid
        self.roles[proc.pid] = role
        self.procs.append((name, role, proc))
        return proc

    def run_tool(self, cmd: list[str], env: dict[str, str], timeout: float = 120.0) -> None:
        """A set-up command (certificates), outside the measured processes."""
        out = subprocess.run(
            cmd,
            cwd=self.work,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(cmd)} failed ({out.returncode}): {out.stderr.decode()[-500:]}"
            )

    def stop_all(self) -> list[str]:
        """SIGTERM the process group and every descendant, SIGKILL what remains."""
        if self.pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGTERM)
        names = pt.kill_tree(None, grace=5.0)
        if self.pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)
        for _, _, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        pt.reap_zombies()
        for log in self.logs:
            log.close()
        return names


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(cond: Any, timeout: float, alive: Any = None, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if alive is not None and not alive():
            return False
        time.sleep(step)
    return bool(cond())


def read_times(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def bench_env(spec: Spec, times: Path) -> dict[str, str]:
    return {
        **os.environ,
        **QUIET_ENV,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        "COVEY_BENCH_WORKLOAD": "digits" if spec.part == "digits" else "big",
        "COVEY_BENCH_N": str(spec.n),
        "COVEY_BENCH_ROUNDS": str(spec.rounds),
        "COVEY_BENCH_ELEMENTS": str(spec.elements),
        "COVEY_BENCH_TIMES": str(times),
    }


def _watch(run: Run, sampler: DeploySampler, deadline: float, done: Any, alive: Any) -> str:
    """Wait until ``done()``; return "ok", "timeout", "memory" or "died".

    ``done`` is polled every 0.1 s, ``alive`` (which may list processes) every 1 s.
    """
    next_alive = time.monotonic() + 1.0
    while True:
        if done():
            return "ok"
        if sampler.memory_alarm:
            return "memory"
        if time.monotonic() >= next_alive:
            next_alive = time.monotonic() + 1.0
            if not alive():
                time.sleep(0.5)  # a last write may be on its way
                return "ok" if done() else "died"
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(0.1)


def run_covey(run: Run, sampler: DeploySampler, times: Path, deadline: float) -> dict[str, Any]:
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
    status = _watch(
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
    env = bench_env(run.spec, times)
    t0 = time.time()
    sampler.start()
    proc = run.launch(
        "simulate", "server", [sys.executable, str(HERE / "_deploy_covey_app.py"), "simulate"], env
    )
    status = _watch(
        run, sampler, deadline, done=lambda: proc.poll() is not None, alive=lambda: True
    )
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

    status = _watch(
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
    status = _watch(
        run, sampler, deadline, done=lambda: sender.poll() is not None, alive=lambda: True
    )
    rc = sender.poll()
    if status == "ok" and rc != 0:
        status = f"failed: exit code {rc}"
    return {"t0": t0, "t_end": time.time(), "status": status, "rc": rc}


RUNNERS = {
    "covey": run_covey,
    "covey-tls": run_covey,
    "covey-sim": run_covey_sim,
    "flower": run_flower,
    "sockets": run_sockets,
}


def run_one(spec: Spec, args: argparse.Namespace, results_dir: Path) -> dict[str, Any]:
    log_dir = results_dir / spec.tag
    log_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"covey-deploy-{spec.tag}-"))
    times = work / "times.json"
    run = Run(spec, args, log_dir, work)
    busy_before, waited = vf.wait_until_idle(args.idle_below, args.idle_max_wait)
    sampler = DeploySampler(
        run.roles,
        guard_kb=int(args.mem_guard_gib * 2**20),
        budget_kb=int(args.mem_budget_gib * 2**20),
        interval=args.interval,
        max_duty=args.sampler_duty,
    )
    out: dict[str, Any] = {
        **vars(spec),
        "tag": spec.tag,
        "busy_before": busy_before,
        "waited_for_idle_seconds": waited,
        "loadavg_before": os.getloadavg()[0],
        "logs": str(log_dir),
    }
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, total0 = vf._cpu_times()
    deadline = time.monotonic() + args.timeout
    try:
        out.update(RUNNERS[spec.system](run, sampler, times, deadline))
    except Exception as exc:
        out["status"] = f"failed: {type(exc).__name__}: {exc}"
    finally:
        t_stop = time.time()
        sampler.stop()
        out["leftover_processes"] = run.stop_all()[:20]
        data = read_times(times)
        shutil.rmtree(work, ignore_errors=True)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, total1 = vf._cpu_times()
    cpu_rusage = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    cpu = max(cpu_rusage, sampler.cpu_seconds_seen)
    hz = os.sysconf("SC_CLK_TCK")
    others = (busy1 - busy0) / hz - cpu - sampler.sample_seconds
    out.update(
        cpu_seconds=cpu,
        others_cpu_share=max(0.0, others / max(1e-9, (total1 - total0) / hz)),
        sampler_cpu_seconds=sampler.sample_seconds,
        peak_pss_mb=sampler.peak_kb * 1024 / MB,
        peak_pss_exact_mb=sampler.peak_exact_kb * 1024 / MB,
        max_processes=sampler.max_nprocs,
        pss_fallbacks=sampler.pss_fallbacks,
        min_mem_available_mb=(sampler.min_available_kb or 0) * 1024 / MB,
        role_peak_mb={r: kb * 1024 / MB for r, kb in sampler.role_peak_kb.items()},
        peak_breakdown_mb=[
            {"pid": pid, "name": name, "pss_mb": kb * 1024 / MB}
            for pid, name, kb in sampler.peak_breakdown[:12]
        ],
    )
    per_role: dict[str, dict[str, Any]] = {}
    for pid, info in sampler.procs.items():
        best = per_role.get(info.role)
        if best is None or info.peak_kb > best["peak_kb"]:
            per_role[info.role] = {"pid": pid, "cmd": info.cmd, "peak_kb": info.peak_kb}
    out["max_process_pss_mb"] = {
        r: {"pss_mb": v["peak_kb"] * 1024 / MB, "cmd": v["cmd"]} for r, v in per_role.items()
    }
    out["process_count_by_role"] = {
        r: sum(1 for i in sampler.procs.values() if i.role == r) for r in per_role
    }
    hz = os.sysconf("SC_CLK_TCK")
    cpu_by_role: dict[str, float] = {}
    for pid, ticks in sampler._cpu_ticks.items():
        info = sampler.procs.get(pid)
        role = info.role if info is not None else "other"
        cpu_by_role[role] = cpu_by_role.get(role, 0.0) + ticks / hz
    out["cpu_seconds_by_role"] = cpu_by_role  # as last sampled: a lower bound
    if out.get("status") == "timeout":
        out["status"] = f"did not complete within {args.timeout:.0f} s"
    elif out.get("status") == "memory":
        out["status"] = (
            f"aborted: {sampler.memory_alarm} "
            f"(peak {out['peak_pss_mb']:.0f} MB over {sampler.max_nprocs} processes)"
        )
    derive(out, data, t_stop)
    memory_phases(out, sampler.series)
    return out


def memory_phases(out: dict[str, Any], series: list[tuple[float, int, int]]) -> None:
    """Server- and client-side PSS before round 1 and at their peak within each round.

    Keeps the series itself, thinned to at most 1500 points, in the JSON.
    """
    t = [e["t"] for e in out.get("evaluations", [])]
    mb = 1024 / MB
    if t:
        before = [p for p in series if p[0] <= t[0]]
        out["server_mb_at_round0"] = before[-1][1] * mb if before else None
    out["round_peak_server_mb"] = []
    out["round_peak_client_mb"] = []
    for a, b in itertools.pairwise(t):
        inside = [p for p in series if a <= p[0] <= b]
        for key, i in (("round_peak_server_mb", 1), ("round_peak_client_mb", 2)):
            out[key].append(max(p[i] for p in inside) * mb if inside else None)
    step = max(1, len(series) // 1500)
    t0 = out.get("t0", series[0][0] if series else 0.0)
    out["memory_series"] = [
        [round(p[0] - t0, 3), round(p[1] * mb), round(p[2] * mb)] for p in series[::step]
    ]


def derive(out: dict[str, Any], data: dict[str, Any], t_stop: float) -> None:
    """Round times, throughput and model copies from the evaluation time stamps."""
    evals = data.get("evaluations") or []
    t = [e["t"] for e in evals]
    out["evaluations"] = evals
    out["rounds_done"] = max(0, len(evals) - 1)
    out["round_seconds"] = [b - a for a, b in itertools.pairwise(t)]
    rs = out["round_seconds"]
    out["round1_seconds"] = rs[0] if rs else None
    steady = rs[1:] if len(rs) > 1 else rs
    out["round_median_seconds"] = statistics.median(steady) if steady else None
    durations = out.get("durations") or []
    totals = [d.get("total") for d in durations if d.get("total") is not None]
    fits = [d.get("fit") for d in durations if d.get("fit") is not None]
    out["history_total_seconds"] = totals
    out["history_fit_seconds"] = fits
    steady_h = totals[1:] if len(totals) > 1 else totals
    out["history_median_seconds"] = statistics.median(steady_h) if steady_h else None
    if "t0" in out:
        end = out.get("t_end", t_stop)
        out["wall_seconds"] = end - out["t0"]
        out["to_first_round_end_seconds"] = t[1] - out["t0"] if len(t) > 1 else None
    last = evals[-1] if evals else {}
    out["final_accuracy"] = last.get("accuracy") if out["rounds_done"] else None
    out["final_max_error"] = last.get("max_error") if out["rounds_done"] else None
    if out["part"] in ("big", "huge"):
        model = out["elements"] * 4
        moved = 2 * out["n"] * model
        out["model_bytes"] = model
        out["bytes_per_round"] = moved
        out["gbps_per_round"] = [moved / s / 1e9 for s in rs if s > 0]
        out["gbps_fit_per_round"] = [moved / s / 1e9 for s in fits if s > 0]
        out["copies"] = {
            r: v["pss_mb"] * MB / model for r, v in out.get("max_process_pss_mb", {}).items()
        }


# --- report ------------------------------------------------------------------------


_f = vf._f


def _status(r: dict[str, Any]) -> str:
    s = str(r.get("status", "?"))
    if s == "ok":
        return "completed"
    done = r.get("rounds_done")
    return f"{s} ({done} of {r['rounds']} rounds done)".replace("|", "/")


def _label(r: dict[str, Any]) -> str:
    return {
        "covey": "covey deployed, insecure",
        "covey-tls": "covey deployed, mutual TLS",
        "covey-sim": "covey.simulate (inline, 1 process)",
        "flower": "Flower 1.42 deployed, insecure",
        "sockets": "raw TCP sockets",
    }[r["system"]]


def digits_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| N | system | status | per-round s (median, rounds 2+) | history s/round "
        "| round 1 s | wall s | final acc | peak PSS MB (all procs) | procs "
        "| largest process MB (server / client) | CPU s | other load |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    order = {s: i for i, s in enumerate(("covey-sim", "covey", "covey-tls", "flower"))}
    for r in sorted(
        (r for r in runs if r["part"] == "digits"), key=lambda r: (r["n"], order[r["system"]])
    ):
        big = r.get("max_process_pss_mb", {})
        lines.append(
            f"| {r['n']} | {_label(r)} | {_status(r)} "
            f"| {_f(r.get('round_median_seconds'), '{:.4f}')} "
            f"| {_f(r.get('history_median_seconds'), '{:.4f}')} "
            f"| {_f(r.get('round1_seconds'))} | {_f(r.get('wall_seconds'), '{:.1f}')} "
            f"| {_f(r.get('final_accuracy'), '{:.4f}')} | {_f(r.get('peak_pss_mb'), '{:.0f}')} "
            f"| {r.get('max_processes', '–')} "
            f"| {_f(big.get('server', {}).get('pss_mb'), '{:.0f}')} / "
            f"{_f(big.get('client', {}).get('pss_mb'), '{:.0f}')} "
            f"| {_f(r.get('cpu_seconds'), '{:.1f}')} "
            f"| {_f(100 * r['others_cpu_share'], '{:.0f}')} % |"
        )
    return lines


def overhead_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| N | simulate s/round | deployed insecure s/round | overhead s/round | ratio "
        "| deployed TLS s/round | overhead s/round | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["system"], r["n"]): r for r in runs if r["part"] == "digits"}
    for n in sorted({r["n"] for r in runs if r["part"] == "digits" and r["system"] != "flower"}):
        sim = (by.get(("covey-sim", n)) or {}).get("round_median_seconds")
        cells = [f"| {n} | {_f(sim, '{:.4f}')}"]
        for system in ("covey", "covey-tls"):
            dep = (by.get((system, n)) or {}).get("round_median_seconds")
            over = dep - sim if dep is not None and sim is not None else None
            ratio = dep / sim if dep is not None and sim else None
            cells.append(f"{_f(dep, '{:.4f}')} | {_f(over, '{:.4f}')} | {_f(ratio, '{:.1f}')}")
        lines.append(" | ".join(cells) + " |")
    return lines


def big_table(runs: list[dict[str, Any]], part: str) -> list[str]:
    lines = [
        "| system | status | per-round s | GB/s per round (wall) | GB/s (covey history fit) "
        "| peak PSS MB (all) | server side MB: before round 1 / peak per round "
        "| largest server process MB (copies) | largest client process MB (copies) "
        "| CPU s: server side / client side | max error |",
        "|---|---|---|---|---|---:|---|---:|---:|---|---:|",
    ]
    for r in runs:
        if r["part"] != part:
            continue
        big = r.get("max_process_pss_mb", {})
        copies = r.get("copies", {})
        lines.append(
            f"| {_label(r)} | {_status(r)} "
            f"| {', '.join(_f(x) for x in r.get('round_seconds', [])) or '–'} "
            f"| {', '.join(_f(x) for x in r.get('gbps_per_round', [])) or '–'} "
            f"| {', '.join(_f(x) for x in r.get('gbps_fit_per_round', [])) or '–'} "
            f"| {_f(r.get('peak_pss_mb'), '{:.0f}')} "
            f"| {_f(r.get('server_mb_at_round0'), '{:.0f}')} / "
            f"{', '.join(_f(x, '{:.0f}') for x in r.get('round_peak_server_mb', [])) or '–'} "
            f"| {_f(big.get('server', {}).get('pss_mb'), '{:.0f}')} "
            f"({_f(copies.get('server'), '{:.2f}')}) "
            f"| {_f(big.get('client', {}).get('pss_mb'), '{:.0f}')} "
            f"({_f(copies.get('client'), '{:.2f}')}) "
            f"| {_f(r.get('cpu_seconds_by_role', {}).get('server'), '{:.1f}')} / "
            f"{_f(r.get('cpu_seconds_by_role', {}).get('client'), '{:.1f}')} "
            f"| {_f(r.get('final_max_error'), '{:.1e}')} |"
        )
    return lines


def _get(runs: list[dict[str, Any]], part: str, system: str, n: int | None = None) -> Any:
    for r in runs:
        if r["part"] == part and r["system"] == system and (n is None or r["n"] == n):
            return r
    return None


def _ok(r: dict[str, Any] | None) -> bool:
    return bool(r) and r.get("status") == "ok"


def ratios(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| comparison | covey | Flower | Flower / covey |", "|---|---:|---:|---:|"]
    for n in sorted({r["n"] for r in runs if r["part"] == "digits"}):
        c, f = _get(runs, "digits", "covey", n), _get(runs, "digits", "flower", n)
        if not (c and f):
            continue
        for key, what, fmt in (
            ("round_median_seconds", "s per round", "{:.4f}"),
            ("peak_pss_mb", "peak PSS MB, all processes", "{:.0f}"),
            ("wall_seconds", "wall s", "{:.1f}"),
        ):
            a, b = c.get(key), f.get(key)
            if key == "wall_seconds" and not _ok(f):
                b = None
            ratio = b / a if a and b is not None else None
            note = "" if _ok(f) else f" (Flower: {f.get('rounds_done')} of {f['rounds']} rounds)"
            lines.append(
                f"| digits N={n}: {what}{note} | {_f(a, fmt)} | {_f(b, fmt)} "
                f"| {_f(ratio, '{:.1f}')} |"
            )
    for part in ("big", "huge"):
        c, f = _get(runs, part, "covey"), _get(runs, part, "flower")
        if not (c and f and _ok(c) and _ok(f)):
            continue
        gc, gf = max(c.get("gbps_per_round") or [0]), max(f.get("gbps_per_round") or [0])
        lines.append(
            f"| {part} model: best GB/s | {gc:.2f} | {gf:.2f} | {_f(gf / gc if gc else None)} |"
        )
        for role in ("server", "client"):
            a, b = c.get("copies", {}).get(role), f.get("copies", {}).get(role)
            lines.append(
                f"| {part} model: largest {role} process, model copies | {_f(a)} | {_f(b)} "
                f"| {_f(b / a if a and b is not None else None)} |"
            )
    return lines


def targets(runs: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    c10 = _get(runs, "digits", "covey", 10)
    if c10 is not None:
        v = c10.get("round_median_seconds")
        hit = _ok(c10) and v is not None and v < 0.1
        lines.append(
            f"| tiny-model round at N=10 in tens of milliseconds (< 100 ms) "
            f"| {_f(v and v * 1000, '{:.1f}')} ms per round (median, rounds 2+; "
            f"history {_f((c10.get('history_median_seconds') or 0) * 1000, '{:.1f}')} ms) "
            f"| {'hit' if hit else 'miss'} |"
        )
    c100 = _get(runs, "digits", "covey", 100)
    if c100 is not None:
        lines.append(
            f"| N=100 client processes run to the end | {_status(c100)}, "
            f"{c100.get('rounds_done')} of {c100['rounds']} rounds, "
            f"{c100.get('max_processes')} processes | {'hit' if _ok(c100) else 'miss'} |"
        )
    big = _get(runs, "big", "covey")
    if big is not None:
        g = max(big.get("gbps_per_round") or [0])
        copies = big.get("copies", {})
        worst = max(copies.values()) if copies else None
        lines.append(
            f"| {args.big_mb:g} MB exchange at >= 0.8 GB/s | best round {g:.2f} GB/s "
            f"(wall between evaluations) | {'hit' if _ok(big) and g >= 0.8 else 'miss'} |"
        )
        lines.append(
            f"| at most 3 model copies in any one process | server "
            f"{_f(copies.get('server'))}, client {_f(copies.get('client'))} copies "
            f"| {'hit' if worst is not None and worst <= 3 else 'miss'} |"
        )
    return lines


def source_digest() -> dict[str, Any]:
    """SHA-256 over covey's source files and the newest modification time (no git here)."""
    import hashlib

    files = sorted((ROOT / "src" / "covey").rglob("*.py"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(ROOT).as_posix().encode())
        digest.update(f.read_bytes())
    newest = max((f.stat().st_mtime for f in files), default=0.0)
    return {
        "sha256": digest.hexdigest()[:16],
        "files": len(files),
        "newest_mtime": dt.datetime.fromtimestamp(newest).isoformat(timespec="seconds"),
    }


def first_touch() -> dict[str, float]:
    """GB/s of writing 1 GB of new memory: after 5 s idle, and again at once.

    On a VM that hands freed guest memory back to the host (free page
    reporting), touching it again is much slower than touching resident memory;
    every system here allocates model-sized buffers, so this sets a floor.
    """
    import numpy as np

    out: dict[str, float] = {}
    time.sleep(5)
    for label in ("after_idle_gbps", "again_gbps"):
        t0 = time.perf_counter()
        a = np.ones(1 << 28, dtype=np.float32)
        out[label] = a.nbytes / (time.perf_counter() - t0) / 1e9
        del a
    return out


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": vf.cpu_model(),
        "nproc": os.cpu_count(),
        "mem_total_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    from importlib.metadata import version

    for pkg in ("covey", "grpcio", "numpy", "protobuf"):
        with contextlib.suppress(Exception):
            info[pkg] = version(pkg)
    info["covey_source"] = source_digest()
    info["memory_first_touch"] = first_touch()
    fpy = args.flower_bin / "python"
    if fpy.exists():
        with contextlib.suppress(Exception):
            info["flwr"] = subprocess.run(
                [str(fpy), "-c", "import flwr; print(flwr.__version__)"],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, **QUIET_ENV},
                check=False,
            ).stdout.strip()
    return info


def markdown(
    command: str, info: dict[str, Any], runs: list[dict[str, Any]], args: argparse.Namespace
) -> str:
    stamp = info["stamp"]
    parts = [
        f"### Run of {stamp}",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Machine: {info['cpu_model']}, nproc {info['nproc']}, "
        f"{info['mem_total_gib']:.0f} GiB RAM, Linux {info['kernel']}, Python {info['python']}; "
        f"covey {info.get('covey')}, grpcio {info.get('grpcio')}, NumPy {info.get('numpy')}; "
        f"flwr {info.get('flwr', '–')}. covey source: {info['covey_source']['files']} files, "
        f"sha256 {info['covey_source']['sha256']}, newest {info['covey_source']['newest_mtime']}. "
        f"Load average before the first run: {info['loadavg_start']:.2f}. Writing 1 GB of new "
        f"memory: {info['memory_first_touch']['after_idle_gbps']:.2f} GB/s after 5 s idle, "
        f"{info['memory_first_touch']['again_gbps']:.2f} GB/s right after (freed memory "
        "goes back to the hypervisor within seconds, and touching it again is slow)."
        + (
            " (Machine figures measured when the report was rebuilt, not during the runs.)"
            if info.get("measured_at_report_time")
            else ""
        ),
        "",
    ]
    if any(r["part"] == "digits" for r in runs):
        parts += [
            f"#### Digits, FedAvg over all N clients, R = {args.rounds}",
            "",
            *digits_table(runs),
            "",
            "##### covey deployed vs covey.simulate, per round",
            "",
            *overhead_table(runs),
            "",
        ]
    for part, title in (
        (
            "big",
            f"{args.big_mb:g} MB model (float32), {args.big_clients} clients, "
            f"{args.big_rounds} round(s)",
        ),
        ("huge", f"{args.huge_gib:g} GiB model (float32), {args.huge_clients} client(s), 1 round"),
    ):
        if any(r["part"] == part for r in runs):
            parts += [f"#### {title}", "", *big_table(runs, part), ""]
    parts += ["#### covey vs Flower", "", *ratios(runs), ""]
    parts += ["#### Targets", "", *targets(runs, args), ""]
    return "\n".join(parts)


def plan(args: argparse.Namespace) -> list[Spec]:
    specs: list[Spec] = []
    want = args.systems
    if args.digits:
        for n in args.n:
            for system in ("covey-sim", "covey", "covey-tls"):
                if system in want and (system != "covey-tls" or n in args.tls_n):
                    specs.append(Spec("digits", system, n, args.rounds))
        if "flower" in want:
            specs += [Spec("digits", "flower", n, args.rounds) for n in args.flower_n]
    if args.big:
        elements = dm.elements_for_mb(args.big_mb)
        for system in ("covey", "covey-tls", "flower", "sockets"):
            if system in want:
                specs.append(Spec("big", system, args.big_clients, args.big_rounds, elements))
    if args.huge:
        elements = int(args.huge_gib * 2**30 / 4)
        for system in ("covey", "flower"):
            if system in want:
                specs.append(Spec("huge", system, args.huge_clients, 1, elements))
    return specs


def wait_for_load(below: float, max_wait: float) -> float:
    t0 = time.monotonic()
    while os.getloadavg()[0] >= below and time.monotonic() - t0 < max_wait:
        time.sleep(10)
    return os.getloadavg()[0]


def write_report(
    command: str,
    info: dict[str, Any],
    runs: list[dict[str, Any]],
    args: argparse.Namespace,
    total_seconds: float | None,
) -> None:
    md = markdown(command, info, runs, args)
    print()
    print(md)
    result = {
        "command": command,
        "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "total_seconds": total_seconds,
        "runs": runs,
    }
    stamp = info["stamp"]
    json_path = args.out_dir / f"deploy_vs_flower-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=2, default=str))
    md_path = args.out_dir / f"deploy_vs_flower-{stamp}.md"
    md_path.write_text(md + "\n")
    print(f"\nwrote {json_path}\nwrote {md_path}")


def report_from(folder: Path, args: argparse.Namespace) -> int:
    """Rebuild the report of an earlier invocation from its ``partial.json`` and ``run.json``."""
    runs = json.loads((folder / "partial.json").read_text())
    meta_path = folder / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    run_args = args
    if "args" in meta:
        saved = {**meta["args"], "out_dir": args.out_dir}
        saved["flower_bin"] = Path(saved["flower_bin"])
        run_args = argparse.Namespace(**saved)
    command = meta.get("command", "(unknown: no run.json)")
    info = meta.get("machine")
    if info is None:  # an invocation that stopped before writing run.json: measure now
        info = machine_info(args)
        info["measured_at_report_time"] = True
        info["stamp"] = folder.name.removeprefix("deploy-")
        info["loadavg_start"] = runs[0].get("loadavg_before", float("nan")) if runs else 0.0
    write_report(command, info, runs, run_args, None)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_from is not None:
        return report_from(args.report_from, args)
    if not pt.become_subreaper():
        print("warning: could not become a child subreaper; daemonized processes may escape")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = args.out_dir / f"deploy-{stamp}"
    results_dir.mkdir(parents=True, exist_ok=True)
    exe = (
        os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else "python"
    )
    command = shlex.join([exe, "benchmarks/deploy_vs_flower.py", *(argv or sys.argv[1:])])
    info = machine_info(args)
    info["stamp"] = stamp
    print(f"waiting for the load average to fall below {args.load_below} ...", flush=True)
    info["loadavg_start"] = wait_for_load(args.load_below, args.load_max_wait)
    (results_dir / "run.json").write_text(
        json.dumps(
            {
                "command": command,
                "machine": info,
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            },
            indent=2,
        )
    )
    runs: list[dict[str, Any]] = []
    t_all = time.time()
    for spec in plan(args):
        print(f"[{time.time() - t_all:7.1f}s] {spec.tag} ...", flush=True)
        r = run_one(spec, args, results_dir)
        runs.append(r)
        print(
            f"    {_status(r)}; per-round {_f(r.get('round_median_seconds'), '{:.4f}')} s; "
            f"wall {_f(r.get('wall_seconds'), '{:.1f}')} s; peak {r['peak_pss_mb']:.0f} MB "
            f"in {r['max_processes']} procs; other load {100 * r['others_cpu_share']:.0f}%",
            flush=True,
        )
        (results_dir / "partial.json").write_text(json.dumps(runs, indent=1, default=str))
    write_report(command, info, runs, args, time.time() - t_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())

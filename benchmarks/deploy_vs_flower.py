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
import datetime as dt
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _deploy_model as dm  # noqa: E402
import _proctree as pt  # noqa: E402
from _deploy_launch import Run, Spec, read_times  # noqa: E402
from _deploy_measure import (  # noqa: E402
    MB,
    DeploySampler,
    derive,
    machine_info,
    memory_phases,
    start_kb,
    wait_for_load,
)
from _deploy_report import report_from, status_text, write_report  # noqa: E402
from _deploy_systems import RUNNERS  # noqa: E402
from _machine import compile_sources, cpu_times, wait_until_idle  # noqa: E402
from _mdtable import fmt  # noqa: E402

from covey.core._files import atomic_write  # noqa: E402

SYSTEMS = ("covey", "covey-tls", "covey-inplace", "covey-sim", "flower", "sockets")
PARTS = ("digits", "big", "huge")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
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
        "--data-port",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="covey servers listen on a data port (covey server --data-port 0): the arrays "
        "go on data connections beside the gRPC streams; --no-data-port: on the streams",
    )
    p.add_argument(
        "--flower-bin",
        type=lambda text: Path(text).absolute(),  # runs start in their own folders
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
    if not args.systems:
        p.error(f"--systems names no system; choose from {SYSTEMS}")
    problem = _bad_numbers(args)
    if problem:
        p.error(problem)
    return args


def _bad_numbers(args: argparse.Namespace) -> str | None:
    """What is wrong with the counts, sizes and times given, or None."""
    for flag, values in (
        ("--n", args.n),
        ("--flower-n", args.flower_n),
        ("--tls-n", args.tls_n),
        ("--rounds", [args.rounds]),
        ("--big-clients", [args.big_clients]),
        ("--big-rounds", [args.big_rounds]),
        ("--huge-clients", [args.huge_clients]),
    ):
        bad = [v for v in values if v < 1]
        if bad:
            return f"{flag} must be at least 1, got {bad[0]}"
    for flag, value in (
        ("--big-mb", args.big_mb),
        ("--huge-gib", args.huge_gib),
        ("--timeout", args.timeout),
        ("--interval", args.interval),
        ("--sampler-duty", args.sampler_duty),
        ("--mem-budget-gib", args.mem_budget_gib),
    ):
        if not value > 0:  # also refuses nan
            return f"{flag} must be greater than 0, got {value}"
    if not 0 <= args.idle_below <= 1:
        return f"--idle-below is a share of all CPUs, from 0 to 1; got {args.idle_below}"
    return None


def run_one(spec: Spec, args: argparse.Namespace, results_dir: Path) -> dict[str, Any]:
    """Run one system once, measured from outside; return everything measured."""
    log_dir = results_dir / spec.tag
    log_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"covey-deploy-{spec.tag}-"))
    times = work / "times.json"
    run = Run(spec, args, log_dir, work)
    busy_before, waited = wait_until_idle(args.idle_below, args.idle_max_wait)
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
    busy0, total0 = cpu_times()
    deadline = time.monotonic() + args.timeout
    try:
        out.update(RUNNERS[spec.system](run, sampler, times, deadline))
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        out["status"] = f"failed: {type(exc).__name__}: {exc}"
    finally:
        t_stop = time.time()
        sampler.stop()
        out["leftover_processes"] = run.stop_all()[:20]
        data = read_times(times)
        shutil.rmtree(work, ignore_errors=True)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, total1 = cpu_times()
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
    for role, v in per_role.items():
        start = start_kb(sampler.procs[v["pid"]].series, spec.elements * 4 / 1024)
        if start is not None:
            out["max_process_pss_mb"][role]["before_round1_mb"] = start * 1024 / MB
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


def plan(args: argparse.Namespace) -> list[Spec]:
    """The runs the flags ask for, in order."""
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
        for system in ("covey", "covey-tls", "covey-inplace", "flower", "sockets"):
            if system in want:
                specs.append(Spec("big", system, args.big_clients, args.big_rounds, elements))
    if args.huge:
        elements = int(args.huge_gib * 2**30 / 4)
        for system in ("covey", "covey-inplace", "flower"):
            if system in want:
                specs.append(Spec("huge", system, args.huge_clients, 1, elements))
    return specs


def main(argv: list[str] | None = None) -> int:
    """Run the plan one run at a time, print the report and write the results."""
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
    info["bytecode"] = compile_sources()
    info["data_port"] = args.data_port
    print(f"waiting for the load average to fall below {args.load_below} ...", flush=True)
    info["loadavg_start"] = wait_for_load(args.load_below, args.load_max_wait)
    atomic_write(
        results_dir / "run.json",
        json.dumps(
            {
                "command": command,
                "machine": info,
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            },
            indent=2,
        ),
    )
    runs: list[dict[str, Any]] = []
    t_all = time.time()
    for spec in plan(args):
        print(f"[{time.time() - t_all:7.1f}s] {spec.tag} ...", flush=True)
        r = run_one(spec, args, results_dir)
        runs.append(r)
        print(
            f"    {status_text(r)}; per-round {fmt(r.get('round_median_seconds'), '{:.4f}')} s; "
            f"wall {fmt(r.get('wall_seconds'), '{:.1f}')} s; peak {r['peak_pss_mb']:.0f} MB "
            f"in {r['max_processes']} procs; other load {100 * r['others_cpu_share']:.0f}%",
            flush=True,
        )
        atomic_write(results_dir / "partial.json", json.dumps(runs, indent=1, default=str))
    write_report(command, info, runs, args, time.time() - t_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())

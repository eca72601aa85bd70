"""covey vs Flower vs a plain NumPy loop, on one workload, in one invocation.

Each system runs in its own fresh interpreter (``run_covey.py``,
``run_flower.py``, ``run_plain.py``), one run at a time. For every run this
script measures, from outside:

* wall time of the whole process (start of the interpreter to its exit);
* peak memory of the whole process tree: the sum of PSS over the process and
  all its descendants, sampled from ``/proc/<pid>/smaps_rollup`` every ~50 ms
  (RSS where PSS cannot be read);

and reads from the runner's report: final test accuracy, per-round times and
the final weights, from which it computes max |difference| between covey and
Flower and between covey and the plain loop.

Results: a table on stdout, JSON and a markdown section in
``benchmarks/results/`` (gitignored). ``make bench`` runs covey and plain;
``make bench-flower`` adds Flower from its own venv (``--flower-python``).

Examples::

    .venv/bin/python benchmarks/vs_flower.py --systems covey,plain --n 10 100
    .venv/bin/python benchmarks/vs_flower.py --flower-python .venv-flower/bin/python
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _proctree as pt  # noqa: E402
import _workload as wl  # noqa: E402

SYSTEMS = ("covey", "covey-process", "covey-ray", "plain", "flower")
MB = 1024 * 1024
RUNNER_ENV = {
    # Nothing is sent off this machine: no telemetry, update checks or usage stats.
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000], help="client counts")
    p.add_argument("--rounds", type=int, default=10, help="rounds of the digits workload")
    p.add_argument(
        "--big-n",
        type=int,
        default=10_000,
        help="from this N on, the digits workload runs --big-rounds rounds",
    )
    p.add_argument("--big-rounds", type=int, default=3, help="rounds at N >= --big-n")
    p.add_argument(
        "--covey-only-n",
        type=int,
        nargs="*",
        default=[],
        help="client counts run by the covey systems only (e.g. 100000)",
    )
    p.add_argument(
        "--large",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the large-model case (10M float32, N=10, R=3)",
    )
    p.add_argument("--large-n", type=int, default=10)
    p.add_argument("--large-rounds", type=int, default=3)
    p.add_argument(
        "--systems",
        default="covey,covey-process,plain,flower",
        help=f"comma-separated subset of {','.join(SYSTEMS)}",
    )
    p.add_argument(
        "--flower-python",
        type=Path,
        default=None,
        help="python of the venv with flwr[simulation]==1.42.0 (default: .venv-flower/bin/python)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per system and configuration")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument("--interval", type=float, default=0.05, help="memory sampling period (s)")
    p.add_argument(
        "--sampler-duty",
        type=float,
        default=0.10,
        help="max share of one core the PSS reads may take (stretches their period)",
    )
    p.add_argument(
        "--idle-below",
        type=float,
        default=0.25,
        help="before each run, wait until the machine is busy below this share of all CPUs",
    )
    p.add_argument(
        "--idle-max-wait", type=float, default=120.0, help="give up waiting after this (s)"
    )
    p.add_argument("--out-dir", type=Path, default=HERE / "results")
    p.add_argument(
        "--keep-weights", action="store_true", help="keep the .npz files of final weights"
    )
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        p.error(f"unknown systems {unknown}; choose from {SYSTEMS}")
    if args.flower_python is None:
        default = ROOT / ".venv-flower" / "bin" / "python"
        args.flower_python = default if default.exists() else None
    return args


# --- one run -------------------------------------------------------------------


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def machine_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs that was busy over the next ``seconds`` (0..1)."""
    b0, t0 = _cpu_times()
    time.sleep(seconds)
    b1, t1 = _cpu_times()
    return (b1 - b0) / max(1, t1 - t0)


def wait_until_idle(threshold: float, max_wait: float) -> tuple[float, float]:
    """Wait (up to ``max_wait`` s) until the machine is busy below ``threshold``.

    Returns ``(busy share last measured, seconds waited)``.
    """
    t0 = time.monotonic()
    busy = machine_busy()
    while busy >= threshold and time.monotonic() - t0 < max_wait:
        busy = machine_busy(2.0)
    return busy, time.monotonic() - t0


def runner_command(
    system: str, args: argparse.Namespace, workload: str, n: int, rounds: int
) -> list[str] | str:
    """The command of one run, or a string saying why it cannot run."""
    if system == "flower":
        if args.flower_python is None:
            return "no --flower-python given and no .venv-flower (run `make bench-flower`)"
        python, script, extra = str(args.flower_python), "run_flower.py", []
    elif system == "plain":
        python, script, extra = sys.executable, "run_plain.py", []
    else:
        backend = "inline" if system == "covey" else system.split("-", 1)[1]
        python, script, extra = sys.executable, "run_covey.py", ["--backend", backend]
    return [
        python,
        str(HERE / script),
        "--workload",
        workload,
        "--n",
        str(n),
        "--rounds",
        str(rounds),
        *extra,
    ]


def run_one(
    system: str,
    workload: str,
    n: int,
    rounds: int,
    rep: int,
    args: argparse.Namespace,
    run_dir: Path,
) -> dict[str, Any]:
    tag = f"{workload}-n{n}-{system}-rep{rep}"
    out: dict[str, Any] = {
        "system": system,
        "workload": workload,
        "n_clients": n,
        "rounds": rounds,
        "repeat": rep,
        "ok": False,
    }
    cmd = runner_command(system, args, workload, n, rounds)
    if isinstance(cmd, str):
        out["error"] = cmd
        return out
    report_path = run_dir / f"{tag}.json"
    weights_path = run_dir / f"{tag}.npz"
    cmd += ["--out", str(report_path), "--weights", str(weights_path)]
    out["command"] = shlex.join(cmd)
    log_path = run_dir / f"{tag}.log"
    env = {**os.environ, **RUNNER_ENV}
    busy_before, waited = wait_until_idle(args.idle_below, args.idle_max_wait)
    out["busy_before"] = busy_before
    out["waited_for_idle_seconds"] = waited
    load_before = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, total0 = _cpu_times()
    with log_path.open("wb") as log:
        t0 = time.time()
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            out["error"] = f"could not start {cmd[0]}: {exc}"
            return out
        sampler = pt.TreeSampler(
            root_sid=proc.pid, interval=args.interval, max_duty=args.sampler_duty
        )
        sampler.start()
        try:
            rc: int | None = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rc = None
        t1 = time.time()
        if rc is None:
            out["error"] = f"timeout after {args.timeout:.0f} s"
            out["killed"] = pt.kill_tree(proc.pid)
            proc.wait()
        # Whatever the runner left behind (e.g. Ray daemons) is measured until gone.
        linger_deadline = time.time() + 15.0
        while pt.tree(proc.pid) and time.time() < linger_deadline:
            time.sleep(0.1)
        t_gone = time.time()
        sampler.stop()
        leftovers = pt.kill_tree(proc.pid)
        pt.reap_zombies()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, total1 = _cpu_times()
    # CPU of the whole tree. Counted two ways: from the kernel's accounting of reaped
    # children (exact, unless some process in the tree does not wait for its own
    # children, e.g. by ignoring SIGCHLD, whose CPU then goes uncounted), and as the
    # sum of each process's utime+stime at its last sample (misses at most one
    # sampling period per process). The larger is reported.
    cpu_rusage = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    cpu_seconds = max(cpu_rusage, sampler.cpu_seconds_seen)
    hz = os.sysconf("SC_CLK_TCK")
    others = (busy1 - busy0) / hz - cpu_seconds - sampler.sample_seconds
    out.update(
        cpu_seconds=cpu_seconds,
        cpu_seconds_rusage=cpu_rusage,
        cpu_seconds_sampled=sampler.cpu_seconds_seen,
        # What the rest of the machine used meanwhile, as a share of all its CPUs.
        others_cpu_share=max(0.0, others / max(1e-9, (total1 - total0) / hz)),
        loadavg_before=load_before,
        loadavg_after=os.getloadavg()[0],
        wall_seconds=t1 - t0,
        children_gone_seconds=t_gone - t1,
        leftover_processes=leftovers,
        returncode=rc,
        log=str(log_path),
        peak_pss_mb=sampler.peak_kb / 1024,
        peak_pss_exact_mb=sampler.peak_exact_kb / 1024,
        exact_samples=sampler.exact_ticks,
        mean_exact_interval_s=(t1 - t0) / max(1, sampler.exact_ticks),
        sampler_cpu_share=sampler.sample_seconds / max(1e-9, t_gone - t0),
        peak_breakdown_mb=[
            {"pid": pid, "name": name, "pss_mb": kb / 1024}
            for pid, name, kb in sampler.peak_breakdown[:12]
        ],
        max_processes=sampler.max_nprocs,
        samples=len(sampler.samples),
        pss_fallbacks=sampler.pss_fallbacks,
        sampler_cpu_seconds=sampler.sample_seconds,
    )
    if rc is not None and rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        out["error"] = f"exit code {rc}: " + " | ".join(tail)
    if rc != 0 or not report_path.exists():
        out.setdefault("error", "runner wrote no report")
        return out
    report = json.loads(report_path.read_text())
    out["report"] = report
    out["ok"] = True
    out["weights_path"] = str(weights_path)
    out["final_accuracy"] = report["final_accuracy"]
    out["sim_seconds"] = report["sim_seconds"]
    out["startup_seconds"] = report["t_sim_start"] - t0
    out["round_seconds"] = report["round_seconds"]
    base = sampler.last_before(report["t_sim_start"])
    out["baseline_pss_mb"] = base.pss_kb / 1024 if base else None
    eval_times = report["eval_times"]
    out["round_peak_pss_mb"] = [
        (v / 1024 if (v := sampler.peak_between(a, b)) is not None else None)
        for a, b in itertools.pairwise(eval_times)
    ]
    if base is not None:
        out["above_baseline_mb"] = (sampler.peak_kb - base.pss_kb) / 1024
        out["above_baseline_model_copies"] = (
            (sampler.peak_kb - base.pss_kb) * 1024 / (wl.LARGE_MODEL_BYTES)
        )
    return out


def max_abs_diff(path_a: str, path_b: str) -> float:
    with np.load(path_a) as a, np.load(path_b) as b:
        if sorted(a.files) != sorted(b.files):
            return float("nan")
        worst = 0.0
        for k in a.files:
            x, y = a[k], b[k]
            if x.shape != y.shape:
                return float("nan")
            worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y))))
        return worst


# --- summary -------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workload, N, system): medians over repeats, diffs vs covey."""
    keys: list[tuple[str, int, str]] = []
    for r in runs:
        key = (r["workload"], r["n_clients"], r["system"])
        if key not in keys:
            keys.append(key)
    rows = []
    for workload, n, system in keys:
        group = [
            r for r in runs if (r["workload"], r["n_clients"], r["system"]) == (workload, n, system)
        ]
        ok = [r for r in group if r["ok"]]
        row: dict[str, Any] = {
            "workload": workload,
            "n_clients": n,
            "system": system,
            "runs": len(group),
            "ok_runs": len(ok),
            "errors": [r["error"] for r in group if not r["ok"]],
        }
        if ok:
            row.update(
                wall_seconds=_median([r["wall_seconds"] for r in ok]),
                wall_seconds_all=[r["wall_seconds"] for r in ok],
                sim_seconds=_median([r["sim_seconds"] for r in ok]),
                cpu_seconds=_median([r["cpu_seconds"] for r in ok]),
                loadavg_before=max(r["loadavg_before"] for r in ok),
                busy_before=max(r["busy_before"] for r in ok),
                others_cpu_share=max(r["others_cpu_share"] for r in ok),
                sampler_cpu_share=max(r["sampler_cpu_share"] for r in ok),
                startup_seconds=_median([r["startup_seconds"] for r in ok]),
                peak_pss_mb=_median([r["peak_pss_mb"] for r in ok]),
                peak_pss_mb_all=[r["peak_pss_mb"] for r in ok],
                max_processes=max(r["max_processes"] for r in ok),
                final_accuracy=ok[0]["final_accuracy"],
                final_accuracy_all=[r["final_accuracy"] for r in ok],
                round_seconds=ok[0]["round_seconds"],
                # Rounds after the first: the first includes starting workers and clients.
                round_median=_median(
                    [_median(r["round_seconds"][1:] or r["round_seconds"]) or 0.0 for r in ok]
                ),
                round_peak_pss_mb=ok[0]["round_peak_pss_mb"],
                baseline_pss_mb=ok[0].get("baseline_pss_mb"),
                above_baseline_mb=ok[0].get("above_baseline_mb"),
                above_baseline_model_copies=ok[0].get("above_baseline_model_copies"),
                weights_path=ok[0]["weights_path"],
            )
        rows.append(row)
    for row in rows:
        ref = next(
            (
                r
                for r in rows
                if r["system"] == "covey"
                and (r["workload"], r["n_clients"]) == (row["workload"], row["n_clients"])
                and r.get("weights_path")
            ),
            None,
        )
        if ref is not None and row.get("weights_path"):
            row["max_abs_diff_vs_covey"] = max_abs_diff(ref["weights_path"], row["weights_path"])
        plain = next(
            (
                r
                for r in rows
                if r["system"] == "plain"
                and (r["workload"], r["n_clients"]) == (row["workload"], row["n_clients"])
                and r.get("weights_path")
            ),
            None,
        )
        if plain is not None and row.get("weights_path"):
            row["max_abs_diff_vs_plain"] = max_abs_diff(plain["weights_path"], row["weights_path"])
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    configs = []
    for r in rows:
        if (r["workload"], r["n_clients"]) not in configs:
            configs.append((r["workload"], r["n_clients"]))
    for workload, n in configs:
        by = {
            r["system"]: r
            for r in rows
            if (r["workload"], r["n_clients"]) == (workload, n) and r.get("ok_runs")
        }

        def ratio(a: str, b: str, key: str, by: dict[str, dict[str, Any]] = by) -> float | None:
            if a in by and b in by and by[b].get(key):
                return float(by[a][key] / by[b][key])
            return None

        out.append(
            {
                "workload": workload,
                "n_clients": n,
                "wall_covey_over_plain": ratio("covey", "plain", "wall_seconds"),
                "wall_flower_over_covey": ratio("flower", "covey", "wall_seconds"),
                "sim_covey_over_plain": ratio("covey", "plain", "sim_seconds"),
                "sim_flower_over_covey": ratio("flower", "covey", "sim_seconds"),
                "cpu_covey_over_plain": ratio("covey", "plain", "cpu_seconds"),
                "cpu_flower_over_covey": ratio("flower", "covey", "cpu_seconds"),
                "mem_covey_over_plain": ratio("covey", "plain", "peak_pss_mb"),
                "mem_flower_over_covey": ratio("flower", "covey", "peak_pss_mb"),
                "round_flower_over_covey_ray": ratio("flower", "covey-ray", "round_median"),
                "sim_flower_over_covey_ray": ratio("flower", "covey-ray", "sim_seconds"),
                "wall_flower_over_covey_ray": ratio("flower", "covey-ray", "wall_seconds"),
                "mem_covey_ray_over_flower": ratio("covey-ray", "flower", "peak_pss_mb"),
            }
        )
    return out


# --- machine -------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(runs: list[dict[str, Any]]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "mem_total_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "orchestrator_python": platform.python_version(),
        "orchestrator_numpy": np.__version__,
        "pss_available": all(r.get("pss_fallbacks", 0) == 0 for r in runs),
    }
    envs: dict[str, dict[str, Any]] = {}
    for r in runs:
        rep = r.get("report")
        if rep and r["system"] not in envs:
            blas = [
                b
                for b in rep.get("blas", [])
                if b.get("internal_api") == "openblas" and "numpy" in str(b.get("filepath"))
            ]
            envs[r["system"]] = {
                "python": rep["python"],
                "numpy": rep["numpy"],
                "versions": rep["versions"],
                "blas": blas[:1],
            }
    info["runners"] = envs
    return info


# --- output --------------------------------------------------------------------


def _f(value: Any, fmt: str = "{:.2f}") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and np.isnan(value):
        return "nan"
    return fmt.format(value)


def digits_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| N | system | wall s | of which setup s | simulate s | CPU s | peak PSS MB | procs "
        "| final acc | max abs diff vs covey | vs plain | other load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["workload"] != "digits":
            continue
        if not r.get("ok_runs"):
            err = "; ".join(r["errors"])[:300].replace("|", "/")
            lines.append(f"| {r['n_clients']} | {r['system']} | FAILED: {err} |||||||||||")
            continue
        lines.append(
            f"| {r['n_clients']} | {r['system']} | {_f(r['wall_seconds'])} "
            f"| {_f(r['startup_seconds'])} | {_f(r['sim_seconds'], '{:.3f}')} "
            f"| {_f(r['cpu_seconds'])} "
            f"| {_f(r['peak_pss_mb'], '{:.0f}')} | {r['max_processes']} "
            f"| {_f(r['final_accuracy'], '{:.4f}')} "
            f"| {_f(r.get('max_abs_diff_vs_covey'), '{:.1e}')} "
            f"| {_f(r.get('max_abs_diff_vs_plain'), '{:.1e}')} "
            f"| {_f(100 * r['others_cpu_share'], '{:.0f}')} % |"
        )
    return lines


def ratio_table(rat: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| workload | N | wall covey/plain | wall flwr/covey | simulate covey/plain "
        "| simulate flwr/covey | CPU covey/plain | CPU flwr/covey | peak mem covey/plain "
        "| peak mem flwr/covey |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rat:
        lines.append(
            f"| {r['workload']} | {r['n_clients']} | {_f(r['wall_covey_over_plain'])} "
            f"| {_f(r['wall_flower_over_covey'])} | {_f(r['sim_covey_over_plain'])} "
            f"| {_f(r['sim_flower_over_covey'])} | {_f(r['cpu_covey_over_plain'])} "
            f"| {_f(r['cpu_flower_over_covey'])} | {_f(r['mem_covey_over_plain'])} "
            f"| {_f(r['mem_flower_over_covey'])} |"
        )
    return lines


def ray_table(rows: list[dict[str, Any]], rat: list[dict[str, Any]]) -> list[str]:
    """Per-round time (median of rounds 2..R) and memory of every system, with Flower's ratios."""
    lines = [
        "| N | R | system | wall s | simulate s | round s (median, rounds 2..R) | round 1 s "
        "| peak PSS MB | procs |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["workload"] != "digits" or not r.get("ok_runs"):
            continue
        lines.append(
            f"| {r['n_clients']} | {len(r['round_seconds'])} | {r['system']} "
            f"| {_f(r['wall_seconds'])} | {_f(r['sim_seconds'])} "
            f"| {_f(r['round_median'], '{:.3f}')} | {_f(r['round_seconds'][0], '{:.2f}')} "
            f"| {_f(r['peak_pss_mb'], '{:.0f}')} | {r['max_processes']} |"
        )
    lines += [
        "",
        "| N | per round flwr/covey-ray | simulate flwr/covey-ray | wall flwr/covey-ray "
        "| peak mem covey-ray/flwr |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rat:
        if r["workload"] == "digits":
            lines.append(
                f"| {r['n_clients']} | {_f(r['round_flower_over_covey_ray'], '{:.1f}')} "
                f"| {_f(r['sim_flower_over_covey_ray'], '{:.1f}')} "
                f"| {_f(r['wall_flower_over_covey_ray'], '{:.1f}')} "
                f"| {_f(r['mem_covey_ray_over_flower'])} |"
            )
    return lines


def large_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| system | wall s | simulate s | CPU s | per-round s | peak PSS MB | baseline MB "
        "| above baseline (model copies) | per-round peak MB | max abs diff vs covey "
        "| vs plain | other load |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        if r["workload"] != "large":
            continue
        if not r.get("ok_runs"):
            err = "; ".join(r["errors"])[:300].replace("|", "/")
            lines.append(f"| {r['system']} | FAILED: {err} |||||||||||")
            continue
        per_round = ", ".join(_f(x) for x in r["round_seconds"])
        per_round_mem = ", ".join(_f(x, "{:.0f}") for x in r["round_peak_pss_mb"])
        lines.append(
            f"| {r['system']} | {_f(r['wall_seconds'])} | {_f(r['sim_seconds'])} "
            f"| {_f(r['cpu_seconds'])} | {per_round} | {_f(r['peak_pss_mb'], '{:.0f}')} "
            f"| {_f(r['baseline_pss_mb'], '{:.0f}')} "
            f"| {_f(r['above_baseline_mb'], '{:.0f}')} MB "
            f"({_f(r['above_baseline_model_copies'], '{:.1f}')}) "
            f"| {per_round_mem} | {_f(r.get('max_abs_diff_vs_covey'), '{:.1e}')} "
            f"| {_f(r.get('max_abs_diff_vs_plain'), '{:.1e}')} "
            f"| {_f(100 * r['others_cpu_share'], '{:.0f}')} % |"
        )
    return lines


def machine_lines(info: dict[str, Any]) -> list[str]:
    lines = [
        f"- CPU: {info['cpu_model']}, nproc {info['nproc']}, "
        f"{info['mem_total_gb']:.0f} GiB RAM, Linux {info['kernel']}",
        f"- OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE'] or '(unset)'}, "
        f"OPENBLAS_L2_SIZE={info['OPENBLAS_L2_SIZE'] or '(unset)'} "
        "(inherited unchanged by every runner)",
    ]
    for system, env in info["runners"].items():
        versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        blas = env["blas"][0] if env["blas"] else {}
        blas_s = (
            f", OpenBLAS {blas.get('version')} ({blas.get('architecture')}, "
            f"{blas.get('num_threads')} threads)"
            if blas
            else ""
        )
        lines.append(
            f"- {system}: Python {env['python']}, NumPy {env['numpy']}"
            + (f", {versions}" if versions else "")
            + blas_s
        )
    if not info["pss_available"]:
        lines.append("- PSS was not readable for some processes; RSS was used for those")
    return lines


def markdown(
    command: str,
    args: argparse.Namespace,
    info: dict[str, Any],
    rows: list[dict[str, Any]],
    rat: list[dict[str, Any]],
    stamp: str,
) -> str:
    parts = [
        f"### Run of {stamp}",
        "",
        "Command:",
        "",
        "```sh",
        command,
        "```",
        "",
        "Machine:",
        "",
        *machine_lines(info),
        "",
    ]
    if any(r["workload"] == "digits" for r in rows):
        parts += [
            f"#### Digits, logistic regression, R = {args.rounds} "
            f"({args.big_rounds} from N = {args.big_n:,})",
            "",
            *digits_table(rows),
            "",
        ]
    parts += ["#### Ratios", "", *ratio_table(rat), ""]
    if any(r["system"] == "covey-ray" for r in rows):
        parts += ["#### Ray backends: covey vs Flower", "", *ray_table(rows, rat), ""]
    if any(r["workload"] == "large" for r in rows):
        parts += [
            f"#### Large model: 10,000,000 float32 (40 MB), N = {args.large_n}, "
            f"R = {args.large_rounds}",
            "",
            *large_table(rows),
            "",
        ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not pt.become_subreaper():
        print("warning: could not become a child subreaper; daemonized processes may escape")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = args.out_dir / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    exe = (
        os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else "python"
    )
    command = shlex.join([exe, "benchmarks/vs_flower.py", *(argv or sys.argv[1:])])

    plan: list[tuple[str, int, int]] = [
        ("digits", n, args.big_rounds if n >= args.big_n else args.rounds)
        for n in [*args.n, *args.covey_only_n]
    ]
    if args.large:
        plan.append(("large", args.large_n, args.large_rounds))
    runs: list[dict[str, Any]] = []
    t_all = time.time()
    for workload, n, rounds in plan:
        for rep in range(args.repeat):
            for system in args.systems:
                if n in args.covey_only_n and not system.startswith("covey"):
                    continue
                print(
                    f"[{time.time() - t_all:7.1f}s] {workload} N={n} {system} #{rep} ...",
                    flush=True,
                )
                r = run_one(system, workload, n, rounds, rep, args, run_dir)
                runs.append(r)
                if r["ok"]:
                    print(
                        f"    wall {r['wall_seconds']:.2f}s  simulate {r['sim_seconds']:.3f}s  "
                        f"cpu {r['cpu_seconds']:.2f}s  peak {r['peak_pss_mb']:.0f} MB  "
                        f"acc {r['final_accuracy']:.4f}  (busy before "
                        f"{100 * r['busy_before']:.0f}%, waited "
                        f"{r['waited_for_idle_seconds']:.0f}s, other load "
                        f"{100 * r['others_cpu_share']:.0f}%)",
                        flush=True,
                    )
                else:
                    print(f"    FAILED: {r.get('error', '')[:500]}", flush=True)

    rows = summarize(runs)
    rat = ratios(rows)
    info = machine_info(runs)
    md = markdown(command, args, info, rows, rat, stamp)
    print()
    print(md)

    result = {
        "command": command,
        "started": stamp,
        "total_seconds": time.time() - t_all,
        "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": rows,
        "ratios": rat,
        "runs": runs,
    }
    json_path = args.out_dir / f"vs_flower-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=2, default=str))
    md_path = args.out_dir / f"vs_flower-{stamp}.md"
    md_path.write_text(md + "\n")
    if not args.keep_weights:
        for r in runs:
            if r.get("weights_path"):
                Path(r["weights_path"]).unlink(missing_ok=True)
    print(f"\nwrote {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}")
    print(f"wrote {md_path.relative_to(ROOT) if md_path.is_relative_to(ROOT) else md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _proctree as pt  # noqa: E402
import _workload as wl  # noqa: E402
from _machine import RUNNER_ENV, compile_sources, cpu_times, wait_until_idle  # noqa: E402
from _mdtable import write_results  # noqa: E402
from _vs_flower_report import machine_info, markdown, ratios, summarize  # noqa: E402

SYSTEMS = ("covey", "covey-process", "covey-ray", "plain", "flower")
MB = 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
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
        "--large-client",
        choices=["standard", "inplace", "fresh"],
        default="standard",
        help="the covey systems' client in the large case: 'inplace' trains in the weights "
        "it receives (writes_weights = True), adding the same noise in chunks; 'fresh' "
        "returns a new array computed in that one array (noise scaled in place, w added)",
    )
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
    if not args.systems:
        p.error(f"--systems names no system; choose from {SYSTEMS}")
    problem = _bad_numbers(args)
    if problem:
        p.error(problem)
    if args.flower_python is None:
        default = ROOT / ".venv-flower" / "bin" / "python"
        args.flower_python = default if default.exists() else None
    elif "flower" in args.systems and not args.flower_python.is_file():
        p.error(f"--flower-python {args.flower_python}: no such file")
    return args


def _bad_numbers(args: argparse.Namespace) -> str | None:
    """What is wrong with the counts, times and shares given, or None."""
    for flag, values in (
        ("--n", args.n),
        ("--covey-only-n", args.covey_only_n),
        ("--rounds", [args.rounds]),
        ("--big-n", [args.big_n]),
        ("--big-rounds", [args.big_rounds]),
        ("--large-n", [args.large_n]),
        ("--large-rounds", [args.large_rounds]),
        ("--repeat", [args.repeat]),
    ):
        bad = [v for v in values if v < 1]
        if bad:
            return f"{flag} must be at least 1, got {bad[0]}"
    for flag, value in (
        ("--timeout", args.timeout),
        ("--interval", args.interval),
        ("--sampler-duty", args.sampler_duty),
    ):
        if not value > 0:  # also refuses nan
            return f"{flag} must be greater than 0, got {value}"
    if not 0 <= args.idle_below <= 1:
        return f"--idle-below is a share of all CPUs, from 0 to 1; got {args.idle_below}"
    if not args.idle_max_wait >= 0:
        return f"--idle-max-wait must be 0 or more, got {args.idle_max_wait}"
    return None


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
        if workload == "large":
            extra += ["--large-client", args.large_client]
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
    """Run one system once in a fresh interpreter, measured from outside."""
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
    busy0, total0 = cpu_times()
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
    busy1, total1 = cpu_times()
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
    # The runner's own reading just before its simulation: exact, and after every
    # import (the sampler's last sample before may be taken during them).
    sampled = sampler.last_before(report["t_sim_start"])
    base_kb = report.get("pss_at_sim_start_kb")
    out["baseline_source"] = "runner" if base_kb is not None else "sampler"
    if base_kb is None and sampled is not None:
        base_kb = sampled.pss_kb
    out["baseline_pss_mb"] = base_kb / 1024 if base_kb is not None else None
    out["sampled_baseline_pss_mb"] = sampled.pss_kb / 1024 if sampled else None
    eval_times = report["eval_times"]
    out["round_peak_pss_mb"] = [
        (v / 1024 if (v := sampler.peak_between(a, b)) is not None else None)
        for a, b in itertools.pairwise(eval_times)
    ]
    if base_kb is not None:
        out["above_baseline_mb"] = (sampler.peak_kb - base_kb) / 1024
        out["above_baseline_model_copies"] = (
            (sampler.peak_kb - base_kb) * 1024 / (wl.LARGE_MODEL_BYTES)
        )
        # Between two exact reads a process's PSS is estimated from its anonymous
        # memory; memory that moves into shared files (the process backend's
        # replies) is then counted twice until the next exact read. The peak of the
        # exact reads alone is reported beside it.
        out["above_baseline_model_copies_exact"] = (
            (sampler.peak_exact_kb - base_kb) * 1024 / (wl.LARGE_MODEL_BYTES)
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Run every system on every configuration, print the report and write the results."""
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
    bytecode = compile_sources()  # every runner starts from cached bytecode
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
    info["bytecode"] = bytecode
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
    json_path, md_path = write_results(args.out_dir, "vs_flower", stamp, result, md)
    if not args.keep_weights:
        for r in runs:
            if r.get("weights_path"):
                Path(r["weights_path"]).unlink(missing_ok=True)
    print(f"\nwrote {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}")
    print(f"wrote {md_path.relative_to(ROOT) if md_path.is_relative_to(ROOT) else md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

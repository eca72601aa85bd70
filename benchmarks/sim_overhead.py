"""covey's simulation overhead over the plain NumPy loop, in instructions and CPU time.

Wall time on a shared machine is noisy; instruction counts under callgrind are
not. This script runs ``run_covey.py`` (inline backend) and ``run_plain.py`` on
the digits workload under ``valgrind --tool=callgrind`` for two round counts
``R0 < R1`` and reports, per system, the instructions of the rounds in between
(``I(R1) - I(R0)``: interpreter start, imports and data loading cancel out),
per client and round, and covey's ratio to the plain loop. With ``--cpu`` it
also reports the CPU time (``time.process_time``) of the same runs without
valgrind, the median of ``--repeats`` runs.

Examples::

    .venv/bin/python benchmarks/sim_overhead.py --n 1000 --rounds 1 3
    .venv/bin/python benchmarks/sim_overhead.py --n 1000 --rounds 1 3 --cpu --no-callgrind
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNNERS = {"covey": HERE / "run_covey.py", "plain": HERE / "run_plain.py"}
COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
# One BLAS thread: idle BLAS threads spin, and spinning adds a load-dependent
# number of instructions that would make the counts vary from run to run.
ENV = {
    **os.environ,
    "PYTHONHASHSEED": "0",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def _command(system: str, n: int, rounds: int, tmp: Path) -> list[str]:
    return [
        sys.executable,
        str(RUNNERS[system]),
        "--workload",
        "digits",
        "--n",
        str(n),
        "--rounds",
        str(rounds),
        "--out",
        str(tmp / f"{system}-{rounds}.json"),
        "--weights",
        str(tmp / f"{system}-{rounds}.npz"),
    ]


def instructions(system: str, n: int, rounds: int, tmp: Path) -> int:
    """Instructions the runner executes, counted by callgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed; use --no-callgrind --cpu")
    cmd = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    out = subprocess.run(
        cmd + _command(system, n, rounds, tmp), capture_output=True, text=True, check=True, env=ENV
    )
    match = COLLECTED.search(out.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{out.stderr[-2000:]}")
    return int(match.group(1))


def cpu_seconds(system: str, n: int, rounds: int, tmp: Path) -> float:
    """CPU seconds (user + system) of one run of the runner, children included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(_command(system, n, rounds, tmp), check=True, capture_output=True, env=ENV)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    """Measure and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rounds", type=int, nargs=2, default=[1, 3], metavar=("R0", "R1"))
    p.add_argument("--callgrind", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--cpu", action="store_true", help="also measure CPU time without valgrind")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    r0, r1 = args.rounds
    per = args.n * (r1 - r0)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.callgrind:
            ins = {
                s: instructions(s, args.n, r1, tmp) - instructions(s, args.n, r0, tmp)
                for s in RUNNERS
            }
            for s, v in ins.items():
                print(
                    f"{s:6s} instructions, rounds {r0}->{r1}: {v:,} "
                    f"({v / per:,.0f} per client-round)"
                )
            print(f"covey/plain instructions: {ins['covey'] / ins['plain']:.3f}")
        if args.cpu:
            cpu = {}
            for s in RUNNERS:
                lo = statistics.median(cpu_seconds(s, args.n, r0, tmp) for _ in range(args.repeats))
                hi = statistics.median(cpu_seconds(s, args.n, r1, tmp) for _ in range(args.repeats))
                cpu[s] = hi - lo
                print(
                    f"{s:6s} CPU s, rounds {r0}->{r1}: {cpu[s]:.3f} "
                    f"({cpu[s] / per * 1e6:.1f} us per client-round)"
                )
            print(f"covey/plain CPU: {cpu['covey'] / cpu['plain']:.3f}")


if __name__ == "__main__":
    main()

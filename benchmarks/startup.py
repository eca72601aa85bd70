"""Start-up time: ``import covey`` and the ``covey`` commands that only read or print.

Runs each command afresh ``--repeat`` times (a new interpreter each time, as a
user, a deployed client or a worker process pays it) and prints the best wall
time, with what the same interpreter takes to start and do nothing.

Usage:
    python benchmarks/startup.py [--repeat 5]

``python -X importtime -c "import covey"`` shows where the time goes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time


def best_of(command: list[str], repeat: int) -> float:
    """The shortest wall time of ``repeat`` runs of ``command``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags; ``--repeat`` under 1 (no run, an infinite best time) is refused."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    return args


def main() -> None:
    args = parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as runs:
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import covey'": [py, "-c", "import covey"],
            "covey --help": [py, "-m", "covey", "--help"],
            "covey runs list --dir EMPTY": [py, "-m", "covey", "runs", "list", "--dir", runs],
            "covey certs --help": [py, "-m", "covey", "certs", "--help"],
        }
        print("| command | best of", args.repeat, "s |\n| --- | ---: |")
        for name, command in commands.items():
            print(f"| `{name}` | {best_of(command, args.repeat):.3f} |")


if __name__ == "__main__":
    main()

"""What watching a run costs: tracker callbacks per round, and the dashboard's reads.

1. Tracker callbacks: seconds per round of covey's TensorBoardLogger and
   MLflowLogger, beside PyTorch's SummaryWriter logging the same scalars (the
   usual way people write TensorBoard files from Python).
2. Dashboard: the time to read and summarize a run's history.json, and the size
   of one live update, for histories of growing length.

Usage:
    python benchmarks/dashboard_cost.py [--rounds 300] [--history-rounds 100,1000,5000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from covey.core import Failure, RoundRecord
from covey.dashboard._app import _delta, _json
from covey.dashboard._runs import detail, read_run
from covey.trackers import MLflowLogger, TensorBoardLogger, round_scalars


def record(r: int, clients: int = 100) -> RoundRecord:
    """A round like the digits workload's with ``clients`` participants and one failure."""
    return RoundRecord(
        round=r,
        fit_participants=list(range(clients)),
        fit_failures=[Failure(cid=clients, stage="fit", error="timed out")],
        fit_metrics={"train_loss": 1.0 / (r + 1), "train_accuracy": 0.9},
        fit_examples=clients * 14,
        aggregated=True,
        evaluate_participants=list(range(clients // 2)),
        evaluate_loss=1.0 / (r + 2),
        evaluate_metrics={"accuracy": 0.8},
        central_loss=1.0 / (r + 3),
        central_metrics={"accuracy": 0.85},
        durations={"fit": 0.05, "evaluate": 0.01, "central": 0.001, "total": 0.061},
    )


def per_round(callback: Any, rounds: int) -> float:
    """Median seconds of one call of ``callback`` over ``rounds`` rounds."""
    times = []
    for r in range(rounds):
        rec = record(r)
        t0 = time.perf_counter()
        callback(rec)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def trackers(rounds: int, tmp: Path) -> None:
    """Print per-round costs of the tracker callbacks."""
    print(f"## tracker callbacks: median seconds per round over {rounds} rounds")
    with TensorBoardLogger(tmp / "tb") as tb:
        print(f"covey TensorBoardLogger      {per_round(tb, rounds) * 1e3:8.3f} ms")
    with MLflowLogger(tmp / "mlruns", run_name="bench") as mlflow:
        print(f"covey MLflowLogger (file)    {per_round(mlflow, rounds) * 1e3:8.3f} ms")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("torch SummaryWriter          (torch not installed)")
        return
    writer = SummaryWriter(str(tmp / "torch-tb"))

    def torch_log(rec: RoundRecord) -> None:
        for tag, value in round_scalars(rec).items():
            writer.add_scalar(tag, value, rec.round)
        writer.flush()

    print(f"torch SummaryWriter + flush  {per_round(torch_log, rounds) * 1e3:8.3f} ms")
    writer.close()


def dashboard(lengths: list[int], tmp: Path) -> None:
    """Print the cost of reading a history and the size of one live update."""
    print("## dashboard: read + summarize a run, and one live update")
    print(f"{'rounds':>7} {'history.json':>13} {'read+detail':>12} {'update':>10}")
    for n in lengths:
        run_dir = tmp / f"h{n}"
        run_dir.mkdir()
        rounds = [json.loads(json.dumps(record(r).__dict__, default=vars)) for r in range(n)]
        (run_dir / "history.json").write_text(json.dumps({"rounds": rounds}))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            run = read_run("h", run_dir)
            _json(detail(run))
            times.append(time.perf_counter() - t0)
        before = read_run("h", run_dir)
        before.rounds = before.rounds[:-1]
        update = _delta(before, run)
        size = (run_dir / "history.json").stat().st_size
        print(
            f"{n:>7} {size / 1e6:>10.1f} MB {statistics.median(times) * 1e3:>9.1f} ms "
            f"{len(_json(update)) / 1e3:>7.1f} kB"
        )


def main() -> None:
    """Run both measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--history-rounds", default="100,1000,5000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trackers(args.rounds, Path(tmp))
        dashboard([int(n) for n in args.history_rounds.split(",")], Path(tmp))


if __name__ == "__main__":
    main()

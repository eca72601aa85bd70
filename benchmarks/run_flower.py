"""Flower runner: the workload on flwr 1.42's simulation engine (Ray backend).

Runs in the Flower venv (``.venv-flower``), never in covey's. It uses the
Message API: a ``ServerApp`` whose ``main`` runs ``flwr.serverapp.strategy.FedAvg``
with a central ``evaluate_fn``, and a ``ClientApp`` with a ``train`` function.
Client ``k`` is the node whose ``node_config["partition-id"]`` is ``k``.
The app is launched with ``flwr.simulation.run_simulation``; in flwr 1.42 that
function logs a deprecation notice (the CLI ``flwr run`` is preferred, which
starts a detached SuperLink daemon), but it runs the same simulation engine
in this process tree. Ray gets at most 2 CPUs, each client 1 CPU.
"""

from __future__ import annotations

import time

T_START = time.time()

import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# No telemetry, update checks or usage stats leave this machine.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import warnings  # noqa: E402

import _runner_common as common  # noqa: E402
import _workload as wl  # noqa: E402
import numpy as np  # noqa: E402

# Deprecation notices are informational here; never let them turn into errors.
warnings.simplefilter("default", DeprecationWarning)

# The flags first, so that --help and a wrong flag are answered without flwr.
ARGS = common.parse_args(__doc__ or "")

try:
    import flwr
except ImportError:
    sys.exit(
        f"run_flower.py: flwr is not installed in {sys.executable}; this runner needs a "
        "venv with 'flwr[simulation]==1.42.0' numpy scikit-learn (`make bench-flower` "
        "creates .venv-flower)"
    )
from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

RECORDER = common.Recorder(ARGS.workload)
FINAL: dict[str, np.ndarray] = {}


def _to_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()})


def _from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


# --- ClientApp ---------------------------------------------------------------

client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    k = int(context.node_config["partition-id"])
    n_clients = int(context.node_config["num-partitions"])
    rnd = int(msg.content["config"]["server-round"])
    weights = _from_record(msg.content["arrays"])
    workload = str(msg.content["config"]["workload"])
    if workload == "digits":
        x, y = wl.client_data(k, n_clients)
        w_k, b_k = wl.local_train(weights["W"], weights["b"], x, y, k, rnd)
        new = {"W": w_k, "b": b_k}
        num_examples = x.shape[0]
    else:
        new = {wl.LARGE_KEY: wl.large_update(weights[wl.LARGE_KEY], k, rnd)}
        num_examples = 1
    content = RecordDict(
        {"arrays": _to_record(new), "metrics": MetricRecord({"num-examples": num_examples})}
    )
    return Message(content=content, reply_to=msg)


# --- ServerApp ---------------------------------------------------------------

server_app = ServerApp()


def _central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    if ARGS.workload == "digits":
        loss, acc = RECORDER.evaluate(server_round, _from_record(arrays))
    else:  # don't deserialize 40 MB only to time-stamp the round
        loss, acc = RECORDER.evaluate(server_round, {})
    return MetricRecord({"loss": loss, "accuracy": acc})


@server_app.main()
def main_fn(grid: Grid, context: Context) -> None:
    n = ARGS.n
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=n,
        min_available_nodes=n,
    )
    initial = wl.initial_weights() if ARGS.workload == "digits" else wl.large_initial()
    result = strategy.start(
        grid=grid,
        initial_arrays=_to_record(initial),
        num_rounds=ARGS.rounds,
        train_config=ConfigRecord({"workload": ARGS.workload}),
        evaluate_fn=_central_evaluate,
    )
    FINAL.update(_from_record(result.arrays))


def main() -> None:
    t_imported = time.time()
    if ARGS.workload == "digits":
        wl.load_data()
    pss_start = common.own_pss_kb()
    t_sim_start = time.time()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=ARGS.n,
        backend_config={
            "init_args": {"num_cpus": 2, "include_dashboard": False},
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        },
    )
    t_sim_end = time.time()
    if not FINAL:
        raise SystemExit("flwr simulation finished without final weights")
    import ray

    common.write_report(
        ARGS,
        system="flower",
        t_start=T_START,
        t_imported=t_imported,
        t_sim_start=t_sim_start,
        pss_at_sim_start_kb=pss_start,
        t_sim_end=t_sim_end,
        recorder=RECORDER,
        weights=FINAL,
        versions={"flwr": flwr.__version__, "ray": ray.__version__},
    )


if __name__ == "__main__":
    main()

"""Flower side of the deployed benchmark: the ServerApp and ClientApp (flwr 1.42 Message API).

Runs in Flower's venv, inside the ``flwr-serverapp`` and ``flwr-clientapp``
processes that the SuperLink's and SuperNodes' SuperExecs start. The Flower
App that ``flwr run`` ships (a generated folder with a ``pyproject.toml`` and
a two-line module) puts ``benchmarks/`` on ``sys.path`` and imports this file.

Run config (``[tool.flwr.app.config]``): ``workload`` (``digits`` or ``big``),
``n`` (nodes, all of which train every round), ``num-rounds``, ``elements``
(float32 entries of the big model) and ``times`` (where the ServerApp writes
the wall-clock time of each central evaluation, as ``_deploy_covey_app.py``
does). Node config: ``partition-id`` and ``num-partitions``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _deploy_model as dm
import _workload as wl
import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg


def _record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()})


# --- ClientApp -------------------------------------------------------------------

client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"]
    config = msg.content["config"]
    if str(config["workload"]) == "digits":
        k = int(context.node_config["partition-id"])
        n = int(context.node_config["num-partitions"])
        rnd = int(config["server-round"])
        x, y = wl.client_data(k, n)
        w_k, b_k = wl.local_train(arrays["W"].numpy(), arrays["b"].numpy(), x, y, k, rnd)
        new, examples = {"W": w_k, "b": b_k}, int(x.shape[0])
    else:
        new, examples = {dm.KEY: dm.client_update(arrays[dm.KEY].numpy())}, 1
    content = RecordDict(
        {"arrays": _record(new), "metrics": MetricRecord({"num-examples": examples})}
    )
    return Message(content=content, reply_to=msg)


# --- ServerApp -------------------------------------------------------------------

server_app = ServerApp()


def _tail(array: Array, count: int) -> np.ndarray:
    """The last ``count`` float32 entries of a serialized array, without copying it."""
    data = array.data
    return np.frombuffer(data, dtype=np.float32, count=count, offset=len(data) - 4 * count)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    workload, n, rounds = str(cfg["workload"]), int(cfg["n"]), int(cfg["num-rounds"])
    elements = int(cfg["elements"])
    times = Path(str(cfg["times"]))
    records: list[dict[str, Any]] = []

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if workload == "digits":
            loss, acc = wl.evaluate(arrays["W"].numpy(), arrays["b"].numpy())
            metrics = {"accuracy": acc}
        else:  # check the last entries only: deserializing would copy the model
            k = min(dm.SAMPLE, elements)
            tail = _tail(arrays[dm.KEY], k)
            want = dm.pattern(elements - k, elements) + np.float32(server_round)
            loss, metrics = 0.0, {"max_error": float(np.abs(tail - want).max())}
        records.append({"round": server_round, "t": time.time(), "loss": loss, **metrics})
        write()
        return MetricRecord({"loss": loss, **metrics})

    def write(**extra: Any) -> None:
        tmp = times.with_name(times.name + ".tmp")
        tmp.write_text(json.dumps({"evaluations": records, **extra}))
        tmp.replace(times)

    if workload == "digits":
        initial_arrays = _record(wl.initial_weights())
    else:  # keep only the serialized copy, as a Flower app would
        initial_arrays = _record({dm.KEY: dm.initial(elements)})
    strategy = FedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n
    )
    strategy.start(
        grid=grid,
        initial_arrays=initial_arrays,
        num_rounds=rounds,
        train_config=ConfigRecord({"workload": workload}),
        evaluate_fn=central,
    )
    write(finished=True)

"""Flower 1.42's SecAgg+ (``SecAggPlusWorkflow`` + ``secaggplus_mod``) on the benchmark's vectors.

Runs in Flower's own venv. One process: a stub grid hands each message to the
destination node's ``secaggplus_mod`` (content deep-copied, as the workflow
reuses one record for every node), whose ``call_next`` returns the node's fit
result. Dropouts vanish after sharing keys (no masked vector). Prints one
JSON line: mean wall, client CPU and server CPU per round after the first, and
the bytes of the message contents in both directions.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.supercore.task_identity import TaskIdentity


def _size(content: RecordDict) -> int:
    total = 0
    for rec in content.array_records.values():
        total += sum(len(a.data) for a in rec.values())
    for rec in content.config_records.values():
        for v in rec.values():
            items = v if isinstance(v, list) else [v]
            total += sum(len(x) if isinstance(x, bytes | str) else 8 for x in items)
    return total


class StubGrid:
    """Delivers messages to in-process nodes running ``secaggplus_mod``."""

    def __init__(self, updates: dict[int, tuple[np.ndarray, int]], drop: set[int]) -> None:
        self.updates = updates
        self.drop = drop
        self.contexts = {
            nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={})
            for nid in updates
        }
        self.client_cpu = 0.0
        self.bytes_down = 0
        self.bytes_up = 0

    def get_node_ids(self) -> list[int]:
        return list(self.updates)

    def _fit(self, msg: Message, ctxt: Context) -> Message:
        vec, n = self.updates[ctxt.node_id]
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vec]), n, {})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        out = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            stage = msg.content.config_records["secaggplus_configs"]["stage"]
            if nid in self.drop and stage in ("collect_masked_vectors", "unmask"):
                continue
            self.bytes_down += _size(msg.content)
            local = Message(
                copy.deepcopy(msg.content),
                dst_node_id=nid,
                message_type=msg.metadata.message_type,
                group_id=msg.metadata.group_id,
            )
            local.metadata.__dict__["_src_node_id"] = 0
            t0 = time.process_time()
            reply = secaggplus_mod(local, self.contexts[nid], self._fit)
            self.client_cpu += time.process_time() - t0
            self.bytes_up += _size(reply.content)
            reply.metadata.__dict__["_src_node_id"] = nid
            out.append(reply)
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--graph", default="auto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-shares", type=int, default=None)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    TaskIdentity.run_id = 1
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = 0
    n = args.clients
    updates = {}
    for cid in range(n):
        rng = np.random.default_rng(cid)
        updates[cid + 1] = (
            rng.uniform(-1, 1, args.size).astype(np.float32),
            int(rng.integers(50, 501)),
        )
    drop = {c + 1 for c in range(0, n, round(1 / args.dropout))} if args.dropout else set()
    shares = n if args.graph == "complete" else (args.num_shares or 11)
    grid = StubGrid(updates, drop)
    manager = SimpleClientManager()
    for nid in updates:
        manager.register(GridClientProxy(nid, grid, 1))  # type: ignore[arg-type]
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n - len(drop),
        min_available_clients=n,
    )
    context = LegacyContext(
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        ServerConfig(num_rounds=args.rounds),
        strategy,
        manager,
    )
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord([np.zeros(args.size, np.float32)])
    workflow = SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=0.5)
    rows = []
    for rnd in range(1, args.rounds + 1):
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {Key.CURRENT_ROUND: rnd, Key.START_TIME: time.time()}
        )
        grid.client_cpu, grid.bytes_up, grid.bytes_down = 0.0, 0, 0
        w0, c0 = time.perf_counter(), time.process_time()
        workflow(grid, context)  # type: ignore[arg-type]
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        rows.append(
            {
                "wall": wall,
                "client_cpu": grid.client_cpu,
                "server_cpu": cpu - grid.client_cpu,
                "bytes_up": grid.bytes_up,
                "bytes_down": grid.bytes_down,
            }
        )
    params = compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], True)
    final = parameters_to_ndarrays(params)[0]
    alive = [u for nid, u in updates.items() if nid not in drop]
    expected = sum(v.astype(np.float64) * k for v, k in alive) / sum(k for _, k in alive)
    later = rows[1:] or rows  # with one round, that round
    out = {k: float(np.mean([r[k] for r in later])) for k in rows[0]}
    out["num_shares"] = shares
    out["max_abs_error"] = float(np.max(np.abs(final - expected)))
    out["weights_dtype"] = str(final.dtype)
    out["first_round_wall"] = rows[0]["wall"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()

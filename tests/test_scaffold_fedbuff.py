"""SCAFFOLD under FedBuff: a client keeps its change of ``c_i`` only if an applied update took it.

FedBuff's loop told clients nothing, and a client kept its new ``c_i`` as soon
as it built its reply: a reply the server dropped (staler than
``max_staleness``, refused for a NaN, lost with its client) left ``c_i`` with
a change ``c`` never took, and ``c`` was no longer the mean of the clients'
``c_i`` for the rest of the run.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

import covey
from covey import clients
from covey.aggregate import chain, scaffold, staleness_weight, weighted_mean

N = 4
MODEL = {"w": np.zeros(3), "b": np.zeros(2)}


class Drifting(covey.Client):
    """Steps towards its own target; one reply fails in the way the test asks."""

    log: ClassVar[list[dict[str, Any]]] = []
    fail: ClassVar[tuple[int, int, str]] = (1, 1, "nan")

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.control = clients.ControlVariate()
        self.tasks = 0

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        correction = self.control.correction(weights, config)
        assert self.control.value is not None
        entry = {
            "cid": self.cid,
            "round": config["round"],
            "c": {k: np.array(v) for k, v in config["extras"]["scaffold_c"].items()},
            "c_i": {k: v.copy() for k, v in self.control.value.items()},
        }
        w = {k: np.array(v) for k, v in weights.items()}
        for _ in range(3):
            for k in w:
                w[k] -= 0.1 * ((w[k] - (self.cid + 1.0)) + correction[k])
        result = self.control.fit_result(w, num_examples=1, steps=3, lr=0.1)
        entry["dc"] = result.extras["scaffold_delta_c"]
        Drifting.log.append(entry)
        self.tasks += 1
        cid, task, how = Drifting.fail
        if (self.cid, self.tasks) == (cid, task):
            if how == "raise":
                raise RuntimeError("lost after building the reply")
            assert result.delta is not None
            result.delta["w"][0] = np.nan  # refused by the server's check of updates
        return result


def _applied_changes(history: covey.History) -> dict[int, list[tuple[int, dict[str, Any]]]]:
    """For each client, ``(update, Delta c_i)`` of each reply an applied update took.

    A participant of update ``u`` had exactly one reply folded into it: the last it
    built for a task sent at or before ``u`` (it gets no task while it waits in the buffer).
    """
    out: dict[int, list[tuple[int, dict[str, Any]]]] = {cid: [] for cid in range(N)}
    for record in history.rounds[1:]:
        if not record.aggregated:
            continue
        for cid in record.fit_participants:
            built = [e for e in Drifting.log if e["cid"] == cid and e["round"] <= record.round]
            out[cid].append((record.round, built[-1]["dc"]))
    return out


@pytest.mark.parametrize(
    ("fail", "max_staleness"), [((1, 2, "nan"), None), ((1, 2, "raise"), None), ((9, 0, ""), 0)]
)
def test_c_stays_the_mean_of_the_clients_c_i_when_fedbuff_drops_a_reply(
    fail: tuple[int, int, str], max_staleness: int | None
) -> None:
    Drifting.log, Drifting.fail = [], fail
    strategy = covey.Strategy(
        aggregator=chain(scaffold(N), staleness_weight(), weighted_mean()),
        buffer_size=2,
        max_staleness=max_staleness,
        fraction_fit=0.0,
        min_fit_clients=3,
        fraction_evaluate=0.0,
    )
    result = covey.simulate(
        Drifting,
        N,
        8,
        strategy,
        MODEL,
        client_durations=[1.0, 2.5, 1.5, 4.0],
    )
    lost = [f.cid for r in result.history.rounds for f in r.fit_failures]
    too_stale = [c for r in result.history.rounds for c in r.aggregate_info.get("too_stale", [])]
    assert lost or too_stale  # the run did drop a reply
    applied = _applied_changes(result.history)
    for entry in Drifting.log:
        rnd = entry["round"]
        # What c_i must be: the changes of this client's replies that updates before
        # this task's applied, and c the mean of every client's such changes.
        for k, zero in MODEL.items():
            mine = sum((dc[k] for u, dc in applied[entry["cid"]] if u < rnd), np.zeros_like(zero))
            np.testing.assert_allclose(
                entry["c_i"][k], mine, atol=1e-12, err_msg=f"client {entry['cid']} {rnd} {k}"
            )
            every = sum(
                (dc[k] for cid in range(N) for u, dc in applied[cid] if u < rnd),
                np.zeros_like(zero),
            )
            np.testing.assert_allclose(entry["c"][k], every / N, atol=1e-12, err_msg=f"c {rnd}")

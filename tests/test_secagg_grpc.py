"""Secure FedAvg deployed: a server and client processes over mTLS on 127.0.0.1, keys signed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from test_deploy import APPS, Federation

sys.path.insert(0, str(APPS))
import digits_app
import secagg_app

from covey.secagg import identities

pytestmark = pytest.mark.slow


class SecAggFederation(Federation):
    """The deployment harness, running the secure app."""

    def _spawn(self, args: list[str], log: str) -> Any:
        args = [a.replace("digits_app:", "secagg_app:") for a in args]
        return super()._spawn(args, log)


def test_three_secure_rounds_over_grpc_equal_plain_fedavg(tmp_path: Path) -> None:
    ids = identities([f"client-{k}" for k in range(digits_app.NUM_CLIENTS)])
    table = {n: {"sk": i.signing_key.hex(), "pk": i.peers[n].hex()} for n, i in ids.items()}
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(table))
    fed = SecAggFederation(tmp_path, COVEY_TEST_SECAGG_IDS=str(ids_file))
    try:
        server = fed.server()
        clients = [fed.client(k) for k in range(digits_app.NUM_CLIENTS)]
        assert fed.wait(server, 180) == 0, fed.log("server.log")[-4000:]
        for k, proc in enumerate(clients):
            assert fed.wait(proc, 30) == 0, fed.log(f"client-{k}.log")
        weights, history = fed.result()
    finally:
        fed.close()
    assert [r.round for r in history.rounds] == [0, 1, 2, 3]
    for record in history.rounds[1:]:
        assert len(record.fit_participants) == digits_app.NUM_CLIENTS
        assert record.aggregate_info["secagg_ring_bits"] > secagg_app.BITS
        # Signed keys: the survivor list was signed and checked over the wire before unmasking.
        assert "consistency" in record.aggregate_info["secagg_seconds"]
    plain = covey.simulate(
        digits_app.client_fn,
        digits_app.NUM_CLIENTS,
        3,
        secagg_app.plain_strategy(),
        digits_app.initial(),
    ).weights
    # Unbiased rounding: error below one quantization step per value and round.
    step = secagg_app.CLIP / (2 ** (secagg_app.BITS - 1) - 1)
    for name in plain:
        assert weights[name].dtype == plain[name].dtype
        np.testing.assert_allclose(weights[name], plain[name], atol=3 * step * 10)
    accuracy = history.rounds[-1].central_metrics["accuracy"]
    assert isinstance(accuracy, float)
    assert accuracy > 0.8


def test_central_dp_on_the_secure_sum_over_grpc(tmp_path: Path) -> None:
    ids = identities([f"client-{k}" for k in range(digits_app.NUM_CLIENTS)])
    table = {n: {"sk": i.signing_key.hex(), "pk": i.peers[n].hex()} for n, i in ids.items()}
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(table))
    fed = SecAggFederation(tmp_path, COVEY_TEST_SECAGG_IDS=str(ids_file), COVEY_TEST_SECAGG_DP="1")
    try:
        server = fed.server()
        clients = [fed.client(k) for k in range(digits_app.NUM_CLIENTS)]
        assert fed.wait(server, 180) == 0, fed.log("server.log")[-4000:]
        for k, proc in enumerate(clients):
            assert fed.wait(proc, 30) == 0, fed.log(f"client-{k}.log")
        weights, history = fed.result()
    finally:
        fed.close()
    assert [r.round for r in history.rounds] == [0, 1, 2]
    for record in history.rounds[1:]:
        assert record.aggregate_info["dp"]["clients"] == digits_app.NUM_CLIENTS
        assert record.privacy == {
            "epsilon": covey.privacy.epsilon(
                secagg_app.DP_Z, 1.0, record.round, secagg_app.DP_DELTA
            ),
            "delta": secagg_app.DP_DELTA,
        }
    # The same central DP run without secure aggregation, same noise seed: the clients'
    # clip (a rounding allowance under DP_CLIP) and rounding are all that differ.
    plain = covey.simulate(
        digits_app.client_fn,
        digits_app.NUM_CLIENTS,
        2,
        secagg_app.dp_strategy(),
        digits_app.initial(),
    ).weights
    size = sum(int(np.size(v)) for v in plain.values())
    step = secagg_app.CLIP / (2 ** (secagg_app.BITS - 1) - 1)
    for name in plain:
        np.testing.assert_allclose(
            weights[name], plain[name], atol=2 * 10 * (step + size**0.5 * step)
        )

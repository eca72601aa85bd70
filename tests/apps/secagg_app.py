"""The digits workload under secure aggregation, as a deployable app for the SecAgg tests.

COVEY_TEST_SECAGG_IDS names a JSON file of Ed25519 identities (hex keys by client
name) that the test writes; each client loads its own and trusts all of them.
COVEY_TEST_SECAGG_DP=1 runs two rounds of central DP on the secure sum instead.
"""

from __future__ import annotations

import json
import os
from typing import Any

from digits_app import NUM_CLIENTS, DigitsClient, central, initial

import covey
import covey.privacy
import covey.secagg
from covey.deploy import ServerApp
from covey.secagg import Identity

CLIP, BITS = 2.0, 20
DP_Z, DP_CLIP, DP_DELTA, DP_SEED = 0.5, 1.0, 1e-5, 1234


def plain_strategy() -> covey.Strategy:
    return covey.FedAvg(
        fraction_fit=1.0,
        min_fit_clients=NUM_CLIENTS,
        fraction_evaluate=0.0,
        min_available_clients=NUM_CLIENTS,
    )


def secure_strategy() -> covey.Strategy:
    return covey.secagg.secure(plain_strategy(), clip_range=CLIP, bits=BITS, signed=True)


def dp_strategy() -> covey.Strategy:
    """Central DP, clients clipping, with a fixed noise seed (so a test can compare runs)."""
    return covey.privacy.central(
        plain_strategy(),
        noise_multiplier=DP_Z,
        clip=DP_CLIP,
        delta=DP_DELTA,
        clipping="client",
        noise_seed=DP_SEED,
    )


def server_app() -> ServerApp:
    if os.environ.get("COVEY_TEST_SECAGG_DP") == "1":
        strategy = covey.secagg.secure(dp_strategy(), clip_range=CLIP, bits=BITS, signed=True)
        return ServerApp(strategy=strategy, initial_weights=initial, rounds=2, evaluate_fn=central)
    return ServerApp(
        strategy=secure_strategy(), initial_weights=initial, rounds=3, evaluate_fn=central
    )


def client_fn(cid: int) -> Any:
    client = DigitsClient(cid)
    path = os.environ["COVEY_TEST_SECAGG_IDS"]
    with open(path) as f:
        table = json.load(f)
    name = f"client-{cid}"
    peers = {n: bytes.fromhex(v["pk"]) for n, v in table.items()}
    client.secagg_identity = Identity(name, bytes.fromhex(table[name]["sk"]), peers)
    return client

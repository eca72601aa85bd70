"""Strategies that need more than one array or asynchrony, run over the real gRPC transport.

Server and clients run in this process (threads) on 127.0.0.1, without TLS:
the transport, not the certificates, is under test here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import covey
from covey.deploy import connect, serve
from covey.models import logistic_init
from test_strategies_scaffold import NUM_CLIENTS, SkewedClient

pytestmark = pytest.mark.slow


def _federate(
    strategy: covey.Strategy,
    rounds: int,
    make_client: Callable[[int], Any],
    clients: int,
    compression: str | None = None,
) -> covey.deploy.ServeResult:
    port: list[int] = []
    listening = threading.Event()
    result: list[Any] = []

    def on_listen(p: int) -> None:
        port.append(p)
        listening.set()

    def server() -> None:
        result.append(
            serve(
                strategy,
                rounds,
                logistic_init(64, 10),
                "127.0.0.1:0",
                insecure=True,
                wait_timeout=60,
                round_timeout=60,
                on_listen=on_listen,
                compression=compression,
            )
        )

    threads = [threading.Thread(target=server)]
    threads[0].start()
    assert listening.wait(30)
    for k in range(clients):
        t = threading.Thread(
            target=connect,
            args=(make_client(k), f"127.0.0.1:{port[0]}"),
            kwargs={"insecure": True, "name": f"site-{k:02d}"},
        )
        t.start()
        threads.append(t)
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    return result[0]


def test_scaffold_over_grpc_equals_simulation() -> None:
    rounds = 3
    deployed = _federate(
        covey.Scaffold(
            num_clients=NUM_CLIENTS, fraction_evaluate=0.0, min_available_clients=NUM_CLIENTS
        ),
        rounds,
        lambda k: SkewedClient(k, True),
        NUM_CLIENTS,
    )
    simulated = covey.simulate(
        lambda cid: SkewedClient(cid, True),
        NUM_CLIENTS,
        rounds,
        covey.Scaffold(num_clients=NUM_CLIENTS, fraction_evaluate=0.0),
        logistic_init(64, 10),
    )
    for name in simulated.weights:
        np.testing.assert_allclose(deployed.weights[name], simulated.weights[name], atol=1e-12)


@pytest.mark.parametrize("spec", [None, "float16", "q8", "topk:0.1"])
def test_fedbuff_over_grpc_with_a_full_buffer_equals_fedavg(spec: str | None) -> None:
    # Before: serve() refused compression for an asynchronous strategy.
    clients, updates = 4, 3
    deployed = _federate(
        covey.FedBuff(buffer_size=clients, concurrency=clients, min_available_clients=clients),
        updates,
        lambda k: SkewedClient(k, False),
        clients,
        compression=spec,
    )
    fedavg = covey.simulate(
        lambda cid: SkewedClient(cid, False),
        clients,
        updates,
        covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=clients),
        logistic_init(64, 10),
        compression=spec,
    )
    assert [r.round for r in deployed.history.rounds] == list(range(updates + 1))
    assert all(not r.fit_failures for r in deployed.history.rounds)
    # Stochastic rounding is seeded by the client's id, which a served client gets in the
    # order it connects: q8's bits differ, within its rounding steps.
    for name in fedavg.weights:
        got, want = deployed.weights[name], fedavg.weights[name]
        if spec == "q8":
            assert np.linalg.norm(got - want) <= 0.05 * np.linalg.norm(want)
        else:
            np.testing.assert_allclose(got, want, atol=1e-12)
    # Each global update records the bytes of its exchanges both ways, as the synchronous
    # rounds do: a model to each client, and its update (encoded) back from each.
    both = [(r.bytes_sent, r.bytes_received) for r in deployed.history.rounds[1:]]
    assert both == [(r.bytes_sent, r.bytes_received) for r in fedavg.history.rounds[1:]]
    model = (64 * 10 + 10) * 8
    if spec is None:
        assert both == [(clients * model, clients * model)] * updates
    else:
        for sent, received in both:
            assert sent == clients * model
            assert received is not None
            assert received < clients * model


def test_a_revoked_client_is_refused_and_the_run_goes_on(tmp_path: Any) -> None:
    from covey.deploy import tls_from_certs
    from covey.deploy.certs import init_federation, issue_client, revoke
    from covey.server._store import RunStore

    certs = tmp_path / "fed"
    init_federation(certs, hosts=("127.0.0.1",))
    for name in ("good-0", "good-1", "revoked"):
        issue_client(certs, name)
    revoke(certs, "revoked")
    port: list[int] = []
    listening = threading.Event()
    result: list[Any] = []

    def on_listen(p: int) -> None:
        port.append(p)
        listening.set()

    server = threading.Thread(
        target=lambda: result.append(
            serve(
                covey.FedAvg(fraction_evaluate=0.0),
                2,
                logistic_init(64, 10),
                "127.0.0.1:0",
                certs=certs,
                run_dir=tmp_path / "run",
                wait_timeout=60,
                on_listen=on_listen,
            )
        )
    )
    server.start()
    assert listening.wait(30)
    address = f"127.0.0.1:{port[0]}"
    with pytest.raises(ConnectionError):
        connect(
            SkewedClient(0, False),
            address,
            tls=tls_from_certs(certs, "revoked"),
            max_attempts=2,
            backoff=0.05,
        )
    good = [
        threading.Thread(
            target=connect,
            args=(SkewedClient(k, False), address),
            kwargs={"tls": tls_from_certs(certs, f"good-{k}")},
        )
        for k in range(2)
    ]
    for t in good:
        t.start()
    for t in [*good, server]:
        t.join(120)
        assert not t.is_alive()
    assert [r.round for r in result[0].history.rounds] == [0, 1, 2]
    with RunStore.open(tmp_path / "run") as store:
        assert set(store.clients()) == {"good-0", "good-1"}
        # A refusal is permanent: the client stops after its first attempt.
        assert [e[2] for e in store.events("revoked")] == ["refused"]

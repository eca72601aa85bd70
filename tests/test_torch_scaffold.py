"""TorchClient under SCAFFOLD, against a NumPy replay of Karimireddy et al.'s option II."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey

torch = pytest.importorskip("torch")
from covey.torch import TorchClient  # noqa: E402

SIZES = (5, 9, 14)  # unequal: 2, 3 and 4 local steps of batches of 4
BATCH, LR, ROUNDS = 4, 0.05, 3


def data(cid: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cid)
    x = rng.normal(size=(SIZES[cid], 3)) + cid  # shifted inputs: drift between clients
    t = x @ np.array([1.0, -2.0, 0.5]) + 3.0 * cid + rng.normal(size=SIZES[cid])
    return x, t[:, None]


def batches(cid: int) -> list[tuple[Any, Any]]:
    x, t = data(cid)
    return [
        (torch.tensor(x[s : s + BATCH]), torch.tensor(t[s : s + BATCH]))
        for s in range(0, len(t), BATCH)
    ]


def initial() -> dict[str, np.ndarray]:
    return {"weight": np.array([[0.1, 0.2, -0.1]]), "bias": np.array([0.3])}


def client(
    cid: int,
    optimizer: Any = None,
    path: Path | None = None,
    momentum: float = 0.0,
    decay: float = 0.0,
) -> TorchClient:
    model = torch.nn.Linear(3, 1, dtype=torch.float64)
    return TorchClient(
        model,
        torch.nn.MSELoss(),
        optimizer or (lambda p: torch.optim.SGD(p, lr=LR, momentum=momentum, weight_decay=decay)),
        batches(cid),
        scaffold_path=path,
    )


def replay(momentum: float = 0.0, decay: float = 0.0) -> dict[str, np.ndarray]:
    """SCAFFOLD, full participation, server_lr = 1, written from the paper.

    Plain SGD uses option II, ``c_i+ = c_i - c + (x - y) / (K lr)``. That is the mean
    of the local gradients, which under heavy-ball momentum ``(x - y) / (K lr)``
    overstates about ``1 / (1 - momentum)`` times: there ``c_i+`` is that mean.
    SGD's weight decay adds ``decay * y`` to every step's gradient, so to the mean too.
    """
    w, b = initial()["weight"][0], initial()["bias"][0]
    cw, cb = np.zeros(3), 0.0
    ciw = [np.zeros(3) for _ in SIZES]
    cib = [0.0 for _ in SIZES]
    for _ in range(ROUNDS):
        dws, dbs, dcws, dcbs = [], [], [], []
        for cid in range(len(SIZES)):
            x, t = data(cid)
            yw, yb, steps = w.copy(), b, 0
            mw, mb = np.zeros(3), 0.0  # momentum buffers (torch.optim.SGD's)
            sum_w, sum_b = np.zeros(3), 0.0
            for s in range(0, len(t), BATCH):
                xb, tb = x[s : s + BATCH], t[s : s + BATCH, 0]
                r = xb @ yw + yb - tb
                gw, gb = 2 * xb.T @ r / len(tb) + decay * yw, 2 * r.mean() + decay * yb
                sum_w, sum_b = sum_w + gw, sum_b + gb
                dw, db = gw + cw - ciw[cid], gb + cb - cib[cid]
                mw, mb = (dw, db) if steps == 0 else (momentum * mw + dw, momentum * mb + db)
                yw, yb = yw - LR * mw, yb - LR * mb
                steps += 1
            if momentum == 0.0:
                new_w = ciw[cid] - cw + (w - yw) / (steps * LR)
                new_b = cib[cid] - cb + (b - yb) / (steps * LR)
            else:
                new_w, new_b = sum_w / steps, sum_b / steps
            dws.append(yw - w)
            dbs.append(yb - b)
            dcws.append(new_w - ciw[cid])
            dcbs.append(new_b - cib[cid])
            ciw[cid], cib[cid] = new_w, new_b
        w, b = w + np.mean(dws, axis=0), b + np.mean(dbs)
        cw, cb = cw + np.sum(dcws, axis=0) / len(SIZES), cb + sum(dcbs) / len(SIZES)
    return {"weight": w[None, :], "bias": np.array([b])}


@pytest.mark.parametrize(("momentum", "decay"), [(0.0, 0.0), (0.9, 0.0), (0.0, 0.3), (0.9, 0.3)])
def test_torch_client_trains_under_scaffold_as_the_paper_does(
    momentum: float, decay: float
) -> None:
    result = covey.simulate(
        lambda cid: client(cid, momentum=momentum, decay=decay),
        num_clients=len(SIZES),
        rounds=ROUNDS,
        strategy=covey.Scaffold(num_clients=len(SIZES), fraction_evaluate=0.0),
        initial_weights=initial(),
    )
    assert all(r.aggregated for r in result.history.rounds[1:])
    expected = replay(momentum, decay)
    for name, value in expected.items():
        np.testing.assert_allclose(result.weights[name], value, rtol=1e-10, atol=1e-12)


def test_torch_client_keeps_its_control_variate_on_disk(tmp_path: Path) -> None:
    zeros = {k: np.zeros_like(v) for k, v in initial().items()}
    config: dict[str, Any] = {"round": 1, "extras": {"scaffold_c": zeros}}
    kept = client(2)  # in memory, across two rounds
    kept.fit(initial(), config)
    expected = kept.fit(initial(), {**config, "round": 2}).extras["scaffold_delta_c"]
    path = tmp_path / "c_i.bin"
    client(2, path=path).fit(initial(), config)
    restarted = client(2, path=path).fit(initial(), {**config, "round": 2})
    for k, v in restarted.extras["scaffold_delta_c"].items():
        np.testing.assert_array_equal(v, expected[k])


def test_an_optimizer_other_than_sgd_is_refused_by_name() -> None:
    with pytest.raises(covey.FederationError, match=r"SCAFFOLD needs.*SGD.*type Adam"):
        covey.simulate(
            lambda cid: client(cid, optimizer=lambda p: torch.optim.Adam(p, lr=LR)),
            num_clients=len(SIZES),
            rounds=1,
            strategy=covey.Scaffold(num_clients=len(SIZES), fraction_evaluate=0.0),
            initial_weights=initial(),
        )

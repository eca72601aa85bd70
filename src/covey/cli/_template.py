"""The files ``covey new NAME`` writes: a small, runnable federated learning project.

Each entry maps a path (with ``$pkg`` for the package folder) to its text;
``$name`` and ``$pkg`` are filled in with :class:`string.Template`.
"""

from __future__ import annotations

PYPROJECT = """\
[project]
name = "$name"
version = "0.1.0"
description = "A federated learning project made with covey"
requires-python = ">=3.11"
dependencies = ["covey"]

# How `covey run` runs this project. Override any setting for one run with
# `covey run --set rounds=10 --set lr=0.1`.
[tool.covey]
server-app = "$pkg.server_app:make_server"  # (config) -> covey.deploy.ServerApp
client-app = "$pkg.client_app:make_client"  # (cid, config) -> covey.Client
clients = 10          # simulated clients
rounds = 5
backend = "inline"    # or "process", or "ray" (pip install 'covey[ray]')
# start-method = "forkserver"  # process backend: "fork", "forkserver" or "spawn"
seed = 0
runs-dir = "runs"     # each run gets its own folder here

# Your app's own settings: passed to make_server and make_client as `config`.
[tool.covey.config]
lr = 0.5
epochs = 2
batch_size = 16
fraction = 0.5        # fraction of clients per round
alpha = 0.5           # Dirichlet label skew of the simulated split

# `covey run --federation local` serves this app for real clients, which join with
#   covey client --app $pkg.client_app:client_fn --cid K --name site-K \\
#       --server 127.0.0.1:9092 --insecure
# For TLS, make a federation folder with `covey certs init --dir federation`
# and replace `insecure = true` with `certs = "federation"`.
[tool.covey.federations.local]
address = "127.0.0.1:9092"
insecure = true

[tool.pytest.ini_options]
pythonpath = ["."]
testpaths = ["tests"]
"""

README = """\
# $name

A federated learning project made with `covey new`: logistic regression on the
8x8 digit images, split across sites with a label skew, trained with FedAvg.

- `$pkg/task.py`: the data each site holds and the model.
- `$pkg/client_app.py`: what a site does each round (`make_client`).
- `$pkg/server_app.py`: the strategy, the initial model and the server's test (`make_server`).
- `pyproject.toml`: the settings, in `[tool.covey]`.

Run it in simulation, and read the results:

    covey run
    covey run --set rounds=10 --set lr=0.1
    covey runs list
    covey runs show RUN

The trained model is in the run's folder: `model.safetensors` after a
simulation, `weights/round-NNNNN.safetensors` (one per round, the newest is
the final model) after a served run; `safetensors.numpy.load_file` reads it.

Serve it for real clients (see `[tool.covey.federations.local]`). Its rounds
start once two clients have joined, so start two or more, each in its own
terminal with its own `--cid` (the site whose data it holds, from 0 to
`clients` - 1) and name:

    covey run --federation local
    covey client --app $pkg.client_app:client_fn --cid 0 --name site-0 \\
        --server 127.0.0.1:9092 --insecure
    covey client --app $pkg.client_app:client_fn --cid 1 --name site-1 \\
        --server 127.0.0.1:9092 --insecure

Test it (pytest is not installed with covey: `pip install pytest`):

    pytest
"""

INIT = '''\
"""$name: a federated learning project made with covey."""
'''

TASK = '''\
"""The data each site holds and the model: logistic regression on 8x8 digit images."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from covey.data import Dataset, dirichlet, load_digits

PROJECT = Path(__file__).resolve().parent.parent


def load_config() -> dict[str, Any]:
    """The settings ``covey run`` passes the app, read from this project's pyproject.toml.

    That is ``[tool.covey.config]`` plus ``clients``, ``rounds`` and ``seed`` of ``[tool.covey]``.
    """
    with open(PROJECT / "pyproject.toml", "rb") as f:
        table: dict[str, Any] = tomllib.load(f)["tool"]["covey"]
    config: dict[str, Any] = {k: table[k] for k in ("clients", "rounds", "seed") if k in table}
    config.update(table.get("config", {}))
    return config


SETTINGS = {
    "lr": ("a number above 0", "0.5"),
    "epochs": ("a whole number above 0", "2"),
    "batch_size": ("a whole number above 0", "16"),
    "fraction": ("a number above 0 and at most 1", "0.5"),
    "alpha": ("a number above 0", "0.5"),
}
"""Each app setting of ``[tool.covey.config]``: what it must be, and an example."""


def check_config(config: dict[str, Any]) -> None:
    """Refuse an app setting of the wrong kind, naming it, before a site trains with it."""
    for key, (what, example) in SETTINGS.items():
        value = config.get(key)
        if value is None:
            continue
        whole = "whole" in what
        kind = int if whole else (int, float)
        fits = isinstance(value, kind) and not isinstance(value, bool) and value > 0
        if not fits or (key == "fraction" and value > 1):
            raise ValueError(
                f"{key} = {value!r} in [tool.covey.config] of pyproject.toml (or --set "
                f"{key}=...) must be {what}, e.g. {key} = {example}"
            )


@cache
def dataset(seed: int = 0) -> Dataset:
    """The whole dataset (a real site would load only its own data)."""
    return load_digits(seed=seed)


@cache
def split(num_sites: int, alpha: float) -> list[Any]:
    """Each site's share of the training data: label skew from a Dirichlet(alpha) draw."""
    data = dataset()
    try:
        return dirichlet(data.y_train, num_sites, alpha, seed=0, min_size=4)
    except ValueError as exc:
        raise ValueError(
            f"the bundled data ({len(data.y_train)} training examples) cannot be split "
            f"into {num_sites} sites of 4 examples or more at alpha = {alpha}: set fewer "
            "clients ([tool.covey] clients) or a larger alpha ([tool.covey.config] alpha, "
            f"more even shares) in pyproject.toml ({exc})"
        ) from None


def site_data(cid: int, num_sites: int, config: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """Site ``cid``'s training and validation data: ``(x, y, x_val, y_val)``."""
    if not 0 <= cid < num_sites:
        raise ValueError(
            f"cid {cid}: the data is split into {num_sites} sites (clients in "
            f"pyproject.toml), so a site's cid is 0 to {num_sites - 1}"
        )
    data = dataset()
    parts = split(num_sites, float(config.get("alpha", 0.5)))
    x, y = data.client(parts[cid])
    n_val = max(1, len(y) // 5)
    return x[n_val:], y[n_val:], x[:n_val], y[:n_val]


def test_set() -> tuple[Any, Any]:
    """The server's held-out test set."""
    data = dataset()
    return data.x_test, data.y_test


def shape() -> tuple[int, int]:
    """``(features, classes)`` of the model."""
    data = dataset()
    return data.num_features, data.num_classes


def accuracy(predicted: Any, y: Any) -> float:
    """The fraction of right answers."""
    return float(np.mean(np.asarray(predicted) == np.asarray(y)))
'''

CLIENT_APP = '''\
"""What a site does each round: train on its data, evaluate on its validation data."""

from __future__ import annotations

from typing import Any

from covey.models import LogisticClient

from $pkg.task import check_config, load_config, site_data

NUM_SITES = 10  # how the bundled data is split when sites are started by hand


def make_client(cid: int, config: dict[str, Any]) -> LogisticClient:
    """The client of site ``cid`` (``covey run`` calls this with the project settings)."""
    check_config(config)
    sites = int(config.get("clients", NUM_SITES))
    x, y, x_val, y_val = site_data(cid, sites, config)
    return LogisticClient(
        cid,
        x,
        y,
        x_val,
        y_val,
        lr=float(config.get("lr", 0.5)),
        epochs=int(config.get("epochs", 1)),
        batch_size=int(config.get("batch_size", 16)),
        seed=int(config.get("seed", 0)),
    )


def client_fn(cid: int) -> LogisticClient:
    """For ``covey client --app $pkg.client_app:client_fn --cid K``."""
    return make_client(cid, load_config())
'''

SERVER_APP = '''\
"""The server side: the strategy, the initial model and the server's own test."""

from __future__ import annotations

from typing import Any

import covey
from covey.deploy import ServerApp
from covey.models import logistic_evaluate, logistic_init

from $pkg.task import check_config, load_config, shape, split, test_set


def evaluate(rnd: int, weights: covey.Weights) -> tuple[float, dict[str, Any]]:
    """Loss and accuracy of the global model on the server's test set."""
    x, y = test_set()
    loss, acc = logistic_evaluate(weights, x, y)
    return loss, {"accuracy": acc}


def make_server(config: dict[str, Any]) -> ServerApp:
    """The server app (``covey run`` calls this with the project settings)."""
    check_config(config)  # a setting of the wrong kind is refused before round 1
    fraction = float(config.get("fraction", 0.5))
    strategy = covey.FedAvg(
        fraction_fit=fraction,
        fraction_evaluate=fraction,
        min_fit_clients=2,
        min_evaluate_clients=2,
        min_available_clients=2,
    )
    features, classes = shape()
    if "clients" in config:  # a split the sites cannot make is refused before round 1
        split(int(config["clients"]), float(config.get("alpha", 0.5)))
    return ServerApp(
        strategy=strategy,
        initial_weights=logistic_init(features, classes),
        rounds=int(config.get("rounds", 5)),
        evaluate_fn=evaluate,
        seed=int(config.get("seed", 0)),
    )


def server_app() -> ServerApp:
    """For ``covey server --app $pkg.server_app:server_app``."""
    return make_server(load_config())
'''

TESTS = '''\
"""The project's own tests: a site trains, and a short simulation learns."""

from __future__ import annotations

import covey

from $pkg.client_app import make_client
from $pkg.server_app import evaluate, make_server
from $pkg.task import load_config


def test_a_site_trains_and_the_loss_falls() -> None:
    config = {**load_config(), "clients": 4}
    server = make_server(config)
    weights = server.weights()
    client = make_client(0, config)
    result = client.fit(weights, {"round": 1})
    assert result.num_examples > 0
    assert result.weights is not None  # the client returns its new weights, not a delta
    assert set(result.weights) == set(weights)
    before = client.evaluate(weights, {"round": 1}).loss
    after = client.evaluate(result.weights, {"round": 1}).loss
    assert after < before


def test_a_short_simulation_beats_the_initial_model() -> None:
    config = {**load_config(), "clients": 4}
    server = make_server(config)
    result = covey.simulate(
        lambda cid: make_client(cid, config),
        4,
        2,
        server.strategy,
        server.weights(),
        evaluate,
    )
    accuracy = [acc for _, acc in result.history.metric("accuracy")]
    assert accuracy[-1] > accuracy[0]
'''

FILES: dict[str, str] = {
    "pyproject.toml": PYPROJECT,
    "README.md": README,
    "$pkg/__init__.py": INIT,
    "$pkg/task.py": TASK,
    "$pkg/client_app.py": CLIENT_APP,
    "$pkg/server_app.py": SERVER_APP,
    "tests/test_$pkg.py": TESTS,
}
"""Every file of a new project, by path."""

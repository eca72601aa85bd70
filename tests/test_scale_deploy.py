"""A deployed federation of many small clients: limits that must agree before a run starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.deploy import serve

pytestmark = pytest.mark.timeout(120)


def _weights() -> dict[str, np.ndarray]:
    return {"w": np.zeros(4)}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"min_available_clients": 5}, "min_available_clients=5"),
        ({"min_fit_clients": 4, "min_available_clients": 2}, "min_fit_clients=4"),
    ],
)
def test_a_strategy_needing_more_clients_than_the_server_takes_is_refused_at_once(
    options: dict[str, Any], named: str
) -> None:
    # It used to wait out wait_timeout (forever with None) while the clients it needed
    # were turned away as "the server is full", then blame the clients for not coming.
    strategy = covey.FedAvg(fraction_evaluate=0.0, **options)
    with pytest.raises(ValueError, match="max_clients=3") as caught:
        serve(strategy, 1, _weights(), "127.0.0.1:0", insecure=True, max_clients=3, wait_timeout=1)
    assert named in str(caught.value)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_max_clients_that_is_no_count_of_clients_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="max_clients"):
        serve(
            covey.FedAvg(min_available_clients=1, min_fit_clients=1),
            1,
            _weights(),
            "127.0.0.1:0",
            insecure=True,
            max_clients=bad,  # type: ignore[arg-type]
            wait_timeout=1.0,
        )


def test_covey_server_takes_max_clients_and_refuses_one_below_the_apps_minimum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("COVEY_TINY_CLIENTS", "3")
    args = ["server", "--app", "tiny_app:server_app", "--insecure", "--address", "127.0.0.1:0"]
    result = CliRunner().invoke(app, [*args, "--max-clients", "2", "--wait-timeout", "1"])
    assert result.exit_code == 1, result.output
    assert "min_available_clients=3" in result.output
    assert "max_clients=2" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    result = CliRunner().invoke(app, [*args, "--max-clients", "0"])
    assert result.exit_code == 2, result.output
    assert "--max-clients must be a whole number above 0" in result.output

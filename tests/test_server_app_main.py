"""``ServerApp(main=...)``: a server loop of the app's own, run by ``covey server --app``.

The deployed federated k-means run by ``covey server --app federated_kmeans:server``
is in ``tests/test_example_kmeans.py``.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from _clirun import (
    covey as run_covey,
)
from _clirun import (
    in_tmp,  # noqa: F401 - the fixture, used by pytestmark
    last_line,
)
from covey.cli import app
from covey.deploy import ServerApp

pytestmark = [
    pytest.mark.usefixtures("in_tmp"),
    pytest.mark.filterwarnings("ignore:serving WITHOUT TLS"),
]


def _loop(transport: object) -> None:
    """A server loop that asks nothing of anyone."""


def _write(name: str, body: str) -> str:
    """Write module ``name`` (in the current folder, which ``--app`` imports from)."""
    Path(f"{name}.py").write_text(textwrap.dedent(body))
    return name


def test_a_server_app_with_main_needs_no_strategy_nor_model() -> None:
    app = ServerApp(main=_loop)
    assert app.main is _loop
    assert app.strategy is None
    assert app.initial_weights is None
    with pytest.raises(ValueError, match="runs its own main: it has no initial_weights"):
        app.weights()


def test_a_main_that_is_not_a_function_is_refused_naming_it() -> None:
    with pytest.raises(TypeError, match=r"ServerApp: main= must be a function .* got int 42"):
        ServerApp(main=42)  # type: ignore[arg-type]


def test_a_main_that_cannot_take_the_transport_is_refused() -> None:
    def two(transport: object, rounds: int) -> None: ...

    with pytest.raises(TypeError, match=r"main= '.*two' cannot be called with one argument"):
        ServerApp(main=two)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"cannot be called with one argument"):
        ServerApp(main=lambda: None)  # type: ignore[arg-type,misc]


def test_main_beside_covey_s_rounds_is_refused_naming_what_it_would_ignore() -> None:
    weights = {"w": np.zeros(2)}
    with pytest.raises(TypeError, match=r"takes no strategy=, initial_weights= \(those"):
        ServerApp(covey.FedAvg(), weights, main=_loop)


def test_a_server_app_with_neither_rounds_nor_main_names_what_to_give() -> None:
    with pytest.raises(TypeError, match=r"give strategy= and initial_weights= .* or main="):
        ServerApp()
    with pytest.raises(TypeError, match="give initial_weights= for covey's rounds, or main="):
        ServerApp(covey.FedAvg())


def test_covey_server_refuses_an_app_whose_main_is_not_a_function() -> None:
    _write(
        "broken_main",
        """
        from covey.deploy import ServerApp

        app = ServerApp(main=print)
        app.main = "kmeans"  # set after it was made
        """,
    )
    code, out = run_covey("server", "--app", "broken_main:app", "--insecure")
    assert code == 2, out
    assert last_line(out) == (
        "error: --app broken_main:app: ServerApp: main= must be a function taking the "
        "server's transport, got str 'kmeans'"
    )
    assert "Traceback" not in out
    assert not Path("runs").exists()


def test_covey_server_refuses_round_flags_for_an_app_s_own_loop() -> None:
    _write("own_loop", "from covey.deploy import ServerApp\n\napp = ServerApp(main=print)\n")
    code, out = run_covey("server", "--app", "own_loop:app", "--insecure", "--rounds", "3")
    assert code == 2, out
    assert last_line(out) == (
        "error: --rounds: --app own_loop:app runs a server loop of its own (ServerApp main=), "
        "which has no rounds and keeps no run folder; leave it out"
    )
    code, out = run_covey("server", "--app", "own_loop:app", "--insecure", "--run-dir", "r")
    assert code == 2, out
    assert last_line(out).startswith("error: --run-dir: --app own_loop:app runs a server loop")
    assert not Path("runs").exists()
    assert not Path("r").exists()


def test_covey_server_runs_the_app_s_main_with_the_listening_transport() -> None:
    _write(
        "seen_loop",
        """
        import json

        from covey.deploy import ServerApp


        def main(transport):
            with open("seen.json", "w") as f:
                json.dump({"type": type(transport).__name__, "port": transport.port}, f)


        def server():
            return ServerApp(main=main)
        """,
    )
    port = Path("port")
    code, out = run_covey(
        "server", "--app", "seen_loop:server", "--insecure", "--address", "127.0.0.1:0",
        "--port-file", str(port),
    )  # fmt: skip
    assert code == 0, out
    seen = json.loads(Path("seen.json").read_text())
    assert seen == {"type": "GrpcServerTransport", "port": int(port.read_text())}
    assert f"covey server listening on port {seen['port']} (the app's own loop)" in out
    assert "run finished: the app's loop returned" in out
    assert not Path("runs").exists()  # no rounds: no run folder


def test_an_error_in_the_app_s_main_stops_the_server_naming_it() -> None:
    _write(
        "failing_loop",
        """
        from covey.deploy import ServerApp


        def main(transport):
            raise RuntimeError("no site holds rows")


        app = ServerApp(main=main)
        """,
    )
    args = ["server", "--app", "failing_loop:app", "--insecure", "--address", "127.0.0.1:0"]
    result = CliRunner().invoke(app, args)  # `covey` itself prints the error's one line
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, RuntimeError), result.output
    assert str(result.exception) == "no site holds rows"
    assert "run finished" not in result.output


def test_covey_run_refuses_a_project_s_app_with_a_loop_of_its_own(tmp_path: Path) -> None:
    assert run_covey("new", "ownfed")[0] == 0
    (module,) = tmp_path.glob("ownfed/**/server_app.py")
    with module.open("a") as f:
        f.write("\n\ndef make_server(config):\n    return ServerApp(main=print)\n")
    code, out = run_covey("run", "ownfed")
    assert code == 2, out
    assert "returned a ServerApp with main=, a server loop of its own" in last_line(out)
    assert "serve it with `covey server --app MODULE:OBJECT`" in last_line(out)

"""Without an optional extra, each feature that needs it says which extra to install.

Each check runs in a fresh interpreter whose import system refuses the extra's
libraries (a meta-path hook raising ``ModuleNotFoundError`` as if they were not
installed), so the test sees what a user sees after ``pip install covey``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

OPTIONAL = {
    "torch": "torch",
    "opacus": "torch",
    "xgboost": "xgboost",
    "ray": "ray",
    "starlette": "dashboard",
    "uvicorn": "dashboard",
    "plotly": "dashboard",
    "duckdb": "analytics",
    "sqlglot": "analytics",
    "pandas": "analytics",
    "pyarrow": "analytics",
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
}
"""Each optional library and the extra of pyproject.toml that installs it."""

BLOCK = """\
import importlib.abc, sys

class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Missing())
"""


def run_without(blocked: set[str], code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where the ``blocked`` libraries cannot be imported."""
    script = f"BLOCKED = {sorted(blocked)!r}\n{BLOCK}\n{textwrap.dedent(code)}"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )


# Each public name that needs an extra, and the extra.
API = [
    ("covey.analytics", "Site", "analytics"),
    ("covey.analytics", "query", "analytics"),
    ("covey.analytics", "Policy", "analytics"),
    ("covey.analytics", "plan", "analytics"),
    ("covey.dashboard", "DashboardServer", "dashboard"),
    ("covey.dashboard", "create_app", "dashboard"),
    ("covey.dashboard", "write_report", "dashboard"),
    ("covey.dashboard", "render_report", "dashboard"),
    ("covey.dashboard", "serve_dashboard", "dashboard"),
    ("covey.trackers", "TensorBoardLogger", "tensorboard"),
    ("covey.trackers", "MLflowLogger", "mlflow"),
    ("covey.torch", "TorchClient", "torch"),
    ("covey.xgboost", "XGBoostBagging", "xgboost"),
]

# One interpreter without any extra tries every name (and the Ray backend) and
# prints what each raised.
API_CODE = """
    import importlib, json
    import numpy as np, covey
    seen = {}
    for module, name, _ in API:
        try:
            getattr(importlib.import_module(module), name)
        except ImportError as exc:
            seen[name] = [type(exc).__name__, str(exc)]

    class C(covey.Client):
        def fit(self, weights, config):
            return covey.FitResult(delta={"w": np.ones(1)}, num_examples=1)

    try:
        covey.simulate(lambda cid: C(), num_clients=2, rounds=1, backend="ray",
                       strategy=covey.FedAvg(), initial_weights={"w": np.zeros(1)})
    except ImportError as exc:
        seen["ray"] = [type(exc).__name__, str(exc)]
    print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def api_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """What importing each name of ``API`` raised, with no extra installed."""
    code = f"API = {API!r}\n{textwrap.dedent(API_CODE)}"
    out = run_without(set(OPTIONAL), code, tmp_path_factory.mktemp("api"))
    assert out.returncode == 0, out.stderr
    errors: dict[str, list[str]] = json.loads(out.stdout)
    return errors


@pytest.mark.parametrize(("module", "name", "extra"), API, ids=[a[1] for a in API])
def test_a_public_name_names_its_missing_extra(
    module: str, name: str, extra: str, api_errors: dict[str, list[str]]
) -> None:
    assert name in api_errors, f"{module}.{name} imported without its extra"
    kind, message = api_errors[name]
    assert kind == "MissingExtraError", message
    assert f"pip install 'covey[{extra}]'" in message
    assert "\n" not in message


def test_the_ray_backend_names_its_extra(api_errors: dict[str, list[str]]) -> None:
    kind, message = api_errors["ray"]
    assert kind == "MissingExtraError"
    assert "pip install 'covey[ray]'" in message


CLI = [
    ("site", "analytics", ["site", "--table", "p=t.csv", "--server", "127.0.0.1:9", "--insecure"]),
    ("query", "analytics", ["query", "SELECT COUNT(*) FROM p", "--server", "127.0.0.1:0"]),
    ("dashboard", "dashboard", ["dashboard", "."]),
    ("report", "dashboard", ["runs", "report", "run"]),
]

# One interpreter without any extra runs each command through the entry point
# and records its exit code and what it wrote to stderr.
CLI_CODE = """
    import contextlib, io, json, sys
    from covey.cli import main
    seen = {}
    for command, _, argv in CLI:
        sys.argv = ["covey", *argv]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code
        seen[command] = [code, err.getvalue()]
    print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def cli_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """Exit code and stderr of each command of ``CLI``, with no extra installed."""
    where = tmp_path_factory.mktemp("cli")
    (where / "t.csv").write_text("age\n30\n")
    out = run_without(set(OPTIONAL), f"CLI = {CLI!r}\n{textwrap.dedent(CLI_CODE)}", where)
    assert out.returncode == 0, out.stderr
    errors: dict[str, list[Any]] = json.loads(out.stdout)
    return errors


@pytest.mark.parametrize(("command", "extra", "argv"), CLI, ids=[c[0] for c in CLI])
def test_a_command_names_its_missing_extra(
    command: str, extra: str, argv: list[str], cli_errors: dict[str, list[Any]]
) -> None:
    code, stderr = cli_errors[command]
    assert code == 1, stderr
    assert "Traceback" not in stderr
    assert "ModuleNotFoundError" not in stderr
    assert f"pip install 'covey[{extra}]'" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_import_covey_loads_no_optional_or_plotting_library(tmp_path: Path) -> None:
    code = """
        import sys
        before = set(sys.modules)
        import covey, covey.analytics, covey.dashboard, covey.trackers, covey.privacy
        heavy = {"matplotlib", "sklearn", "scipy", *OPTIONAL}
        print(sorted({m.split(".")[0] for m in set(sys.modules) - before} & heavy))
    """
    out = run_without(set(), f"OPTIONAL = {sorted(OPTIONAL)!r}\n" + textwrap.dedent(code), tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_core_runs_with_every_extra_missing(tmp_path: Path) -> None:
    code = """
        import numpy as np, covey
        class C(covey.Client):
            def fit(self, weights, config):
                return covey.FitResult(delta={"w": np.ones(2)}, num_examples=5)
        result = covey.simulate(lambda cid: C(), num_clients=4, rounds=2,
                                strategy=covey.FedAvg(fraction_evaluate=0.0),
                                initial_weights={"w": np.zeros(2)})
        print(result.weights["w"].tolist())
    """
    out = run_without(set(OPTIONAL), code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[2.0, 2.0]"


def test_the_dashboard_without_plotly_names_its_extra(tmp_path: Path) -> None:
    # starlette and uvicorn present, plotly missing: the app and a report say so at once.
    code = """
        import numpy as np, covey
        from covey.dashboard import create_app, write_report
        class C(covey.Client):
            def fit(self, weights, config):
                return covey.FitResult(delta={"w": np.ones(1)}, num_examples=1)
        covey.simulate(lambda cid: C(), num_clients=2, rounds=1, strategy=covey.FedAvg(),
                       initial_weights={"w": np.zeros(1)}, run_dir="run")
        for use in (lambda: create_app("."), lambda: write_report("run", "r.html")):
            try:
                use()
                print("no error")
            except ImportError as exc:
                print(type(exc).__name__, "|", exc)
    """
    out = run_without({"plotly"}, code, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout
    for line in lines:
        assert line.startswith("MissingExtraError |"), line
        assert "pip install 'covey[dashboard]'" in line

"""``import covey`` and the ``covey`` command load only what they use.

A plain ``import covey`` (each client, server and worker process starts with it)
and the commands that only read or print (``covey --help``, ``covey runs list``)
never import the optional libraries of the integrations, nor the slow ones that
gRPC, secure aggregation, privacy accounting and the datasets need: those load
when a name that needs them is first read.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = (
    "grpc",
    "google.protobuf",
    "cryptography",
    "dp_accounting",
    "scipy",
    "sklearn",
    "pandas",
    "duckdb",
    "safetensors",
)
"""Libraries slow to import (with what they pull in), none needed to start."""


def _loaded_after(code: str) -> list[str]:
    """The libraries of HEAVY (and NumPy, torch, xgboost) that running ``code`` afresh imports."""
    check = (
        f"{code}\n"
        "import sys\n"
        f"heavy = {(*HEAVY, 'numpy', 'torch', 'xgboost')!r}\n"
        "print('loaded:', *sorted(name for name in heavy if name in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1].split()[1:]


def test_import_covey_does_not_import_torch_or_xgboost() -> None:
    loaded = _loaded_after("import covey, covey.sklearn")
    assert "torch" not in loaded
    assert "xgboost" not in loaded


def test_import_covey_imports_none_of_the_slow_libraries() -> None:
    assert _loaded_after("import covey") == []  # not even NumPy, until a name needs it


def _command(*args: str) -> str:
    """Code that runs ``covey ARGS`` in this process, as the installed command does."""
    return (
        "import sys\n"
        "from covey.cli import main\n"
        f"sys.argv = ['covey', *{args!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
    )


def test_the_command_s_help_and_runs_list_import_none_of_the_slow_libraries(
    tmp_path: Path,
) -> None:
    assert _loaded_after(_command("--help")) == []
    assert _loaded_after(_command("certs", "--help")) == []
    # NumPy comes with the runs' histories.
    assert set(_loaded_after(_command("runs", "list", "--dir", str(tmp_path)))) <= {"numpy"}


def test_a_public_name_still_loads_what_it_needs() -> None:
    assert "grpc" in _loaded_after("import covey\ncovey.serve")
    assert "cryptography" in _loaded_after("from covey.secagg import secure")


def test_subpackages_are_still_attributes_of_covey_after_a_plain_import() -> None:
    # As when `import covey` imported them: loaded when first read.
    _loaded_after(
        "import covey\n"
        "assert covey.compress.Scheme and covey.transport.grpc.WireError\n"
        "assert covey.sim.simulate is covey.simulate\n"
    )

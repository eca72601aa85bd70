"""``import covey`` never needs the optional libraries of the integrations."""

from __future__ import annotations

import subprocess
import sys


def test_import_covey_does_not_import_torch_or_xgboost() -> None:
    code = (
        "import sys, covey, covey.sklearn\n"
        "loaded = sorted({'torch', 'xgboost'} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

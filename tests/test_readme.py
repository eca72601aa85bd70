"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quickstart_is_the_two_make_commands() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\s+```sh\n(.*?)```", text, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]


def test_readme_python_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    source = code.group(1).replace("progress=True", "progress=False")
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(source, "README.md", "exec"), namespace)
    result = namespace["result"]
    accuracy = result.history.metric("accuracy")  # type: ignore[attr-defined]
    assert len(accuracy) == 21
    assert accuracy[-1][1] > 0.8

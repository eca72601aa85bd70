"""Every code block of the README and the docs' pages runs as written.

A fenced ``python`` block runs; the blocks of one page run in order in one
namespace, so a page can build its example step by step. A block that cannot
run in the test suite (a shell command, a deployment that needs a server) is
preceded by ``<!-- skip: the reason -->``; any other block without a marker
fails the test, so nothing goes unexecuted by accident.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "docs/index.md",
    "docs/tutorials/pytorch.md",
    "docs/tutorials/sklearn.md",
    "docs/tutorials/xgboost.md",
]
MAX_SKIPPED = 8  # blocks that cannot run here stay few

_BLOCK = re.compile(
    r"(?:<!--\s*skip:(?P<reason>[^>]*)-->\s*\n)?^```(?P<lang>[\w+-]*)\n(?P<code>.*?)^```",
    re.S | re.M,
)


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    lang: str
    code: str
    line: int
    skip: str | None


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path``, with their skip reasons."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        reason = m.group("reason")
        out.append(
            Block(
                lang=m.group("lang"),
                code=m.group("code"),
                line=text.count("\n", 0, m.start("code")) + 1,
                skip=None if reason is None else reason.strip(),
            )
        )
    return out


def run_page(path: Path) -> dict[str, object]:
    """Run the page's Python blocks in order in one namespace; check the others are marked."""
    namespace: dict[str, object] = {"__name__": path.stem}
    found = blocks(path)
    assert found, f"{path} has no code blocks"
    for block in found:
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{block.line}"
        if block.skip is not None:
            assert block.skip, f"{where}: a skipped block must say why"
            continue
        assert block.lang == "python", (
            f"{where}: a {block.lang or 'plain'} block must run (python) or be marked "
            "<!-- skip: reason -->"
        )
        source = block.code.replace("progress=True", "progress=False")
        exec(compile(source, where, "exec"), namespace)
    return namespace


def test_readme_quickstart_is_the_two_make_commands() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\s+(?:<!--.*?-->\s*)?```sh\n(.*?)```", text, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]


@pytest.mark.slow
def test_readme_blocks_run_and_the_example_learns() -> None:
    namespace = run_page(ROOT / "README.md")
    result = namespace["result"]
    accuracy = result.history.metric("accuracy")  # type: ignore[attr-defined]
    assert len(accuracy) == 21
    assert accuracy[-1][1] > 0.8


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_blocks_run(page: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # anything a page writes lands in a scratch folder
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    try:
        run_page(ROOT / page)
    finally:  # a page may set torch's thread count: give the rest of the suite its own back
        torch = sys.modules.get("torch")
        if torch is not None and threads is not None:
            torch.set_num_threads(threads)


def test_skipped_blocks_are_few_and_say_why() -> None:
    skipped = [
        (page, b.line, b.skip)
        for page in ["README.md", *PAGES]
        for b in blocks(ROOT / page)
        if b.skip is not None
    ]
    assert all(reason for _, _, reason in skipped), skipped
    assert len(skipped) <= MAX_SKIPPED, skipped


def test_the_block_parser_sees_markers_and_languages(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\n<!-- skip: needs a server -->\n```sh\ncovey server\n```\n"
    )
    found = blocks(page)
    assert [(b.lang, b.skip) for b in found] == [("python", None), ("sh", "needs a server")]
    assert found[0].code == "x = 1\n"
    bad = tmp_path / "bad.md"
    bad.write_text("```sh\nls\n```\n")
    with pytest.raises(AssertionError, match="must run \\(python\\) or be marked"):
        run_page(bad)

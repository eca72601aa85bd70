"""Every code block of the README, the tutorials and the guides runs as written.

A fenced ``python`` block runs; the blocks of one page run in order in one
namespace, so a page can build its example step by step, in a scratch folder
(anything a page writes lands there). A ``toml`` or ``json`` block must parse;
a ``text`` block is output or a diagram and is not run. Any other block (a
shell command, a deployment that needs a server on other hosts) is preceded by
``<!-- skip: the reason -->``; a block without a marker fails the test, so
nothing goes unexecuted by accident.

What a page says a statement gives is checked too: a top-level statement whose
line ends in a number (``privacy.epsilon(...)  # 2.10``, ``z = ...  # 2.754``)
must give that number to the digits shown, and a top-level ``print(...)``
followed by a comment must print it (``...`` matches anything; the comment may
also continue on the lines below, one ``#`` line per printed line).
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import io
import json
import re
import sys
import tokenize
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = [
    "docs/index.md",
    "docs/tutorials/pytorch.md",
    "docs/tutorials/sklearn.md",
    "docs/tutorials/xgboost.md",
]
GUIDES = [
    "docs/projects.md",
    "docs/strategies.md",
    "docs/migrating-from-flower.md",
    "docs/simulation.md",
    "docs/deployment.md",
    "docs/privacy.md",
    "docs/secagg.md",
    "docs/analytics.md",
    "docs/custom-tasks.md",
    "docs/dashboard.md",
]
PAGES = TUTORIALS + GUIDES
MAX_SKIPPED_PYTHON = 6  # Python blocks that cannot run here stay few
DATA = {"toml": tomllib.loads, "json": json.loads}
NOT_RUN = {"text"}  # output and diagrams

_BLOCK = re.compile(
    r"(?:^[ ]*<!--\s*skip:(?P<reason>[^>]*)-->\s*\n)?"
    r"^(?P<indent>[ ]*)```(?P<lang>[\w+-]*)\n(?P<code>.*?)^(?P=indent)```",
    re.S | re.M,
)
_NUMBER = re.compile(r"^-?\d+(?:\.(?P<decimals>\d+))?$")
_OUTPUT = doctest.OutputChecker()


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    lang: str
    code: str
    line: int
    skip: str | None


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path`` (dedented), with their skip reasons."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        reason = m.group("reason")
        indent = len(m.group("indent"))
        lines = m.group("code").splitlines(keepends=True)
        out.append(
            Block(
                lang=m.group("lang"),
                code="".join(line[indent:] if line[:indent].isspace() else line for line in lines),
                line=text.count("\n", 0, m.start("code")) + 1,
                skip=None if reason is None else reason.strip(),
            )
        )
    return out


def _comments(code: str) -> dict[int, tuple[str, bool]]:
    """``line -> (comment text, whether code precedes it on that line)``."""
    out: dict[int, tuple[str, bool]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            trailing = bool(tok.line[: tok.start[1]].strip())
            out[tok.start[0]] = (tok.string[1:].strip(), trailing)
    return out


def _said(stmt: ast.stmt, comments: dict[int, tuple[str, bool]]) -> str | None:
    """What the page says ``stmt`` gives, or None.

    That is its trailing comment, and below a ``print`` the comment lines that
    follow it (its output, one line each).
    """
    end = stmt.end_lineno or stmt.lineno
    said = comments.get(end)
    lines = [said[0]] if said is not None and said[1] else []
    line = end + 1
    while _is_print(stmt) and (below := comments.get(line)) is not None and not below[1]:
        lines.append(below[0])
        line += 1
    return "\n".join(lines) if lines else None


def _is_print(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Name)
        and stmt.value.func.id == "print"
    )


def _assigns_a_name(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name)
    )


def _check_number(value: object, said: str, where: str) -> None:
    shown = _NUMBER.match(said)
    assert shown is not None
    decimals = len(shown.group("decimals") or "")
    assert isinstance(value, int | float), f"{where}: says {said}, gives {value!r}"
    assert round(float(value), decimals) == float(said), f"{where}: says {said}, gives {value!r}"


def run_block(block: Block, path: Path, namespace: dict[str, object]) -> None:
    """Run one Python block statement by statement, checking what its comments say."""
    tree = ast.parse(block.code)
    comments = _comments(block.code)
    filename = str(path)
    for stmt in tree.body:
        said = _said(stmt, comments)
        where = f"{path.name}:{block.line + stmt.lineno - 1}"
        ast.increment_lineno(stmt, block.line - 1)  # tracebacks name the page's lines
        if said is not None and _is_print(stmt):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(ast.Module([stmt], []), filename, "exec"), namespace)
            flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
            assert _OUTPUT.check_output(said + "\n", out.getvalue(), flags), (
                f"{where}: says it prints {said!r}, printed {out.getvalue()!r}"
            )
            sys.stdout.write(out.getvalue())
        elif said is not None and _NUMBER.match(said) and isinstance(stmt, ast.Expr):
            expression = compile(ast.Expression(stmt.value), filename, "eval")
            value = eval(expression, namespace)  # noqa: S307 (the page's code, as exec runs it)
            _check_number(value, said, where)
        elif said is not None and _NUMBER.match(said) and _assigns_a_name(stmt):
            exec(compile(ast.Module([stmt], []), filename, "exec"), namespace)
            _check_number(namespace[stmt.targets[0].id], said, where)  # type: ignore[attr-defined]
        else:
            exec(compile(ast.Module([stmt], []), filename, "exec"), namespace)


def run_page(path: Path) -> dict[str, object]:
    """Run the page's Python blocks in order in one namespace; check the others."""
    namespace: dict[str, object] = {"__name__": path.stem}
    found = blocks(path)
    assert found, f"{path} has no code blocks"
    for block in found:
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{block.line}"
        if block.skip is not None:
            assert block.skip, f"{where}: a skipped block must say why"
            continue
        if block.lang in DATA:
            try:
                DATA[block.lang](block.code)
            except ValueError as exc:
                raise AssertionError(
                    f"{where}: the {block.lang} block does not parse: {exc}"
                ) from None
            continue
        if block.lang in NOT_RUN:
            continue
        assert block.lang == "python", (
            f"{where}: a {block.lang or 'plain'} block must run (python), be data (toml, "
            "json) or text, or be marked <!-- skip: reason -->"
        )
        source = block.code.replace("progress=True", "progress=False")
        with warnings.catch_warnings():
            # The secure-aggregation pages say this warning comes in simulation.
            warnings.filterwarnings("ignore", "secure aggregation without signed keys", UserWarning)
            run_block(Block(block.lang, source, block.line, None), path, namespace)
    return namespace


def test_readme_quickstart_is_the_two_make_commands() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\s+(?:<!--.*?-->\s*)?```sh\n(.*?)```", text, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]


@pytest.mark.slow
def test_readme_blocks_run_and_the_example_learns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
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
        namespace = run_page(ROOT / page)
    finally:  # a page may set torch's thread count: give the rest of the suite its own back
        torch = sys.modules.get("torch")
        if torch is not None and threads is not None:
            torch.set_num_threads(threads)
    if page == "docs/privacy.md":  # the round record the page shows is its own run's
        shown = next(b for b in blocks(ROOT / page) if b.lang == "json")
        record = json.loads(shown.code)
        history = namespace["result"].history  # type: ignore[attr-defined]
        assert history[record["round"]].privacy == record["privacy"]
        assert history[record["round"]].aggregate_info == record["aggregate_info"]


def _data_block(page: str, starts: str) -> str:
    return next(b.code for b in blocks(ROOT / page) if b.code.startswith(starts))


def test_the_guides_settings_files_are_what_covey_reads(tmp_path: Path) -> None:
    from covey.analytics._cli import load_policy
    from covey.cli._project import ProjectSettings
    from covey.deploy._cli import SERVER_KEYS
    from covey.deploy._cli_errors import read_settings

    project = tmp_path / "clinic-fed"
    project.mkdir()
    (project / "pyproject.toml").write_text(_data_block("docs/projects.md", "[tool.covey]"))
    settings = ProjectSettings(project, ["rounds=10", "lr=0.1"], "local")
    assert settings.run["rounds"] == 10
    assert settings.config == {"lr": 0.1, "epochs": 2}
    assert settings.federation == {"address": "127.0.0.1:9092", "insecure": True}
    server = tmp_path / "server.toml"
    server.write_text(_data_block("docs/deployment.md", "[server]"))
    assert read_settings(server, "server", SERVER_KEYS)["round_timeout"] == 600
    policy = tmp_path / "policy.toml"
    policy.write_text(_data_block("docs/analytics.md", "[policy]"))
    assert load_policy(policy).bounds == {"age_at_diagnosis": (0.0, 110.0)}
    assert load_policy(policy).max_epsilon == 1.0
    policy.write_text(_data_block("examples/hospitals-analytics/README.md", "[policy]"))
    assert load_policy(policy).min_group_size == 10  # the policy.toml of the example's sites


def test_every_guide_is_run() -> None:
    guides = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    not_guides = {"docs/architecture.md", "docs/benchmarks.md"}  # no runnable examples
    not_guides |= {"docs/changelog.md", "docs/contributing.md"}  # included files
    assert guides - not_guides == set(GUIDES) | {"docs/index.md"}


def test_skipped_blocks_are_few_and_say_why() -> None:
    skipped = [
        (page, b.line, b.lang, b.skip)
        for page in ["README.md", *PAGES]
        for b in blocks(ROOT / page)
        if b.skip is not None
    ]
    assert all(reason for *_, reason in skipped), skipped
    python = [s for s in skipped if s[2] == "python"]
    assert len(python) <= MAX_SKIPPED_PYTHON, python


def test_every_print_a_page_shows_the_output_of_is_checked() -> None:
    """A ``print`` whose output a comment shows is a top-level statement, which is checked.

    One inside a loop or an ``if`` prints some other line first (or none), unchecked.
    """
    unchecked = []
    for page in ["README.md", *PAGES]:
        for block in blocks(ROOT / page):
            if block.lang != "python" or block.skip is not None:
                continue
            tree = ast.parse(block.code)
            comments = _comments(block.code)
            top = {id(stmt) for stmt in tree.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.stmt) and id(node) not in top and _is_print(node):
                    said = comments.get(node.end_lineno or node.lineno)
                    if said is not None and said[1]:
                        unchecked.append(f"{page}:{block.line + node.lineno - 1}: {said[0]}")
    assert not unchecked, unchecked


def test_the_block_parser_sees_markers_languages_and_indented_blocks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\n<!-- skip: needs a server -->\n```sh\ncovey server\n```\n"
        "\n- item:\n\n  <!-- skip: a fragment -->\n  ```python\n  f(...)\n  ```\n"
    )
    found = blocks(page)
    assert [(b.lang, b.skip) for b in found] == [
        ("python", None),
        ("sh", "needs a server"),
        ("python", "a fragment"),
    ]
    assert found[0].code == "x = 1\n"
    assert found[2].code == "f(...)\n"
    bad = tmp_path / "bad.md"
    bad.write_text("```sh\nls\n```\n")
    with pytest.raises(AssertionError, match="must run \\(python\\)"):
        run_page(bad)
    data = tmp_path / "data.md"
    data.write_text('```toml\n[a]\nb = 1\n```\n\n```json\n{"a": 1,}\n```\n')
    with pytest.raises(AssertionError, match="json block does not parse"):
        run_page(data)


def test_what_a_page_says_a_statement_gives_is_checked(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nz = 2 / 3  # 0.667\nz * 3  # 2.0\nprint({'a': z})  # {'a': 0.66...}\n"
        "print('x\\ny')\n# x\n# y\nprint('free')\n# a remark, not output\n```\n"
    )
    with pytest.raises(AssertionError, match="says it prints 'a remark"):
        run_page(page)
    page.write_text("```python\nz = 2 / 3  # 0.667\nprint(z)  # 0.66...\nz  # 0.6\n```\n")
    with pytest.raises(AssertionError, match=r"says 0\.6, gives 0\.666"):
        run_page(page)
    page.write_text("```python\nz = 2 / 3  # 0.667\nprint(z)  # 0.66...\nz  # 0.67\n```\n")
    assert run_page(page)["z"] == 2 / 3

"""What ``pip install covey`` gets: the wheel and sdist built from this tree, and their metadata.

The wheel must hold every file of ``src/covey`` (templates live in Python
modules; the proto, ``py.typed`` and the dashboard's static files are data) and
nothing else; the sdist must leave out run folders, the built site and caches.
Both are built offline by hatchling, the build backend of pyproject.toml
(installed by the ``dev`` extra).
"""

from __future__ import annotations

import email
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.message import Message
from pathlib import Path

import pytest

from covey.core._extras import EXTRAS

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "covey"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
MAX_FILE = 1_000_000
"""No file shipped is larger than this many bytes."""


def _name(requirement: str) -> str:
    """The normalized project name of a requirement string."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel and the sdist built from this tree, as ``pip install .`` would build them."""
    pytest.importorskip("hatchling.build", reason="the dev extra installs hatchling")
    out = tmp_path_factory.mktemp("dist")
    code = (
        "import sys\nfrom hatchling.build import build_sdist, build_wheel\n"
        "print(build_wheel(sys.argv[1]))\nprint(build_sdist(sys.argv[1]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    wheel, sdist = done.stdout.split()
    return out / wheel, out / sdist


def _metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(z.read(name))


def test_the_wheel_holds_exactly_the_package_files(dists: tuple[Path, Path]) -> None:
    with zipfile.ZipFile(dists[0]) as z:
        infos = z.infolist()
    shipped = {i.filename for i in infos if i.filename.startswith("covey/")}
    tree = {
        "covey/" + p.relative_to(SRC).as_posix()
        for p in SRC.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix != ".pyc"
        and not any(part.endswith(".egg-info") for part in p.parts)
    }
    assert shipped == tree
    for needed in (
        "covey/py.typed",
        "covey/transport/grpc/proto/covey.proto",
        "covey/transport/grpc/proto/covey_pb2.py",
        "covey/dashboard/static/index.html",
        "covey/cli/_template.py",
    ):
        assert needed in shipped
    others = {i.filename for i in infos} - shipped
    assert all(".dist-info/" in name for name in others), sorted(others)
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in others)
    assert all(i.file_size < MAX_FILE for i in infos)


def test_the_wheel_metadata_matches_pyproject(dists: tuple[Path, Path]) -> None:
    meta = _metadata(dists[0])
    assert meta["Name"] == "covey"
    assert meta["Version"] == PROJECT["version"]
    assert meta["Requires-Python"] == PROJECT["requires-python"]
    assert meta["License-Expression"] == PROJECT["license"]
    assert set(meta.get_all("Provides-Extra") or []) == set(PROJECT["optional-dependencies"])
    # A license expression replaces the license classifiers (PEP 639): not both.
    assert not [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    with zipfile.ZipFile(dists[0]) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))
        entry_points = z.read(name).decode()
    assert "covey = covey.cli:main" in entry_points


def test_the_sdist_leaves_out_runs_caches_and_builds(dists: tuple[Path, Path]) -> None:
    with tarfile.open(dists[1]) as tar:
        members = tar.getmembers()
    names = {m.name.split("/", 1)[1] for m in members if "/" in m.name}
    for needed in ("pyproject.toml", "LICENSE", "README.md", "src/covey/py.typed"):
        assert needed in names
    banned = ("runs/", "site/", ".venv", "build/", "dist/", "benchmarks/results/")
    assert not [n for n in names if n.startswith(banned)]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert all(m.size < MAX_FILE for m in members)


def test_every_extra_named_anywhere_exists() -> None:
    extras = set(PROJECT["optional-dependencies"])
    texts = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("examples/**/*")]
    texts += list(SRC.rglob("*.py"))
    named: dict[str, set[str]] = {}
    for path in texts:
        if path.is_file() and path.suffix in (".md", ".py"):
            for group in re.findall(r"covey\[([a-z0-9_,-]+)\]", path.read_text(encoding="utf-8")):
                for extra in group.split(","):
                    named.setdefault(extra, set()).add(str(path.relative_to(ROOT)))
    unknown = {extra: sorted(where) for extra, where in named.items() if extra not in extras}
    assert not unknown


def test_each_optional_library_comes_with_the_extra_its_error_names() -> None:
    extras = PROJECT["optional-dependencies"]
    for library, extra in EXTRAS.items():
        names = {_name(r) for r in extras[extra]}
        assert any(name == library or name.startswith(library + "-") for name in names), (
            library,
            extra,
        )


def test_no_extra_restates_a_core_dependency() -> None:
    core = {_name(r) for r in PROJECT["dependencies"]}
    for extra, requirements in PROJECT["optional-dependencies"].items():
        again = core & {_name(r) for r in requirements}
        assert not again, f"[{extra}] repeats core dependencies {sorted(again)}"


def test_an_empty_table_keeps_its_text_columns_text() -> None:
    # DuckDB before 2.0 typed the object columns of a DataFrame without rows as
    # INTEGER; the analytics extra allows duckdb 1.1, so the site says text.
    pd = pytest.importorskip("pandas", reason="the analytics extra installs pandas")
    from covey.analytics._tables import load_tables

    empty = pd.DataFrame({"ward": pd.Series([], dtype=object), "smoker": pd.Series([], dtype=bool)})
    con = load_tables({"t": empty})
    types = {row[0]: row[1] for row in con.execute("DESCRIBE t").fetchall()}
    assert types == {"ward": "VARCHAR", "smoker": "BOOLEAN"}
    assert con.execute("SELECT COUNT(*) FROM t WHERE ward LIKE 'n%' OR smoker").fetchone() == (0,)

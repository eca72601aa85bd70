"""The documentation covers the package: a reference page per subpackage, a docstring per export.

``mkdocs build --strict`` (``make docs``, run by ``make test``) catches broken
links and references; these tests catch what it cannot: a public subpackage
with no page in the API reference (the docs' hook generates one for a layer
without a hand-written page), and an exported name with no docstring.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
from collections.abc import Iterable
from pathlib import Path
from types import FunctionType, ModuleType

import pytest

import covey

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
HOOK = ROOT / "docs" / "hooks" / "reference_pages.py"
# Optional libraries: their subpackages are documented, but imported only if installed.
OPTIONAL = {"torch": "torch", "xgboost": "xgboost"}


def subpackages() -> list[str]:
    """The public top-level subpackages and modules of covey."""
    return sorted(
        m.name
        for m in pkgutil.iter_modules(covey.__path__)
        if not m.name.startswith("_") and m.name not in {"py"}
    )


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reference_pages", HOOK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_subpackage_has_a_reference_page() -> None:
    hook = _hook()
    assert hook.subpackages() == subpackages()
    written = {p.stem for p in REFERENCE.glob("*.md")}
    generated = set(hook.missing_pages())
    assert set(subpackages()) <= written | generated
    for name in generated:  # a layer that has no hand-written page yet gets this one
        assert f"::: covey.{name}" in hook.page(name)


def test_the_reference_index_lists_every_subpackage() -> None:
    # The index's table is where a reader finds a layer's page, generated ones included.
    index = (REFERENCE / "index.md").read_text(encoding="utf-8")
    unlisted = [n for n in subpackages() if f"| [covey.{n}]({n}.md) |" not in index]
    assert not unlisted, f"docs/reference/index.md's table lacks {unlisted}"


def test_every_reference_page_is_in_the_nav_and_names_its_module() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in REFERENCE.glob("*.md"):
        assert f"reference/{page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"
        if page.stem in ("index", "covey"):
            continue
        text = page.read_text(encoding="utf-8")
        assert re.search(rf"^::: covey\.{page.stem}$", text, re.M), page


def _documented(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    missing = []
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not inspect.getdoc(obj):
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(obj):
            fields = getattr(obj, "__dataclass_fields__", {})
            for attr, member in vars(obj).items():
                if attr.startswith("_") or attr in fields or not inspect.isfunction(member):
                    continue
                if not inspect.getdoc(member):
                    missing.append(f"{module_name}.{name}.{attr}")
    return missing


@pytest.mark.parametrize("name", ["covey", *(f"covey.{n}" for n in subpackages())])
def test_every_export_has_a_docstring(name: str) -> None:
    short = name.removeprefix("covey.")
    if short in OPTIONAL:
        pytest.importorskip(OPTIONAL[short])
    assert not _documented(name), f"missing docstrings: {_documented(name)}"


def _hidden_signatures(module_name: str) -> list[str]:
    """Exported classes whose ``inspect.signature`` is a bare ``(*args, **kwargs)``."""
    module = importlib.import_module(module_name)
    hidden = []
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if not inspect.isclass(obj) or issubclass(obj, BaseException):
            continue
        if getattr(obj, "_is_protocol", False):  # a Protocol is not built by its users
            continue
        try:
            params = list(inspect.signature(obj).parameters.values())
        except (TypeError, ValueError):
            continue
        if params and all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            hidden.append(f"{module_name}.{name}")
    return hidden


@pytest.mark.parametrize("name", ["covey", *(f"covey.{n}" for n in subpackages())])
def test_help_of_an_exported_class_shows_its_arguments(name: str) -> None:
    # help(), call tips and editors read inspect.signature: a __new__ that checks the
    # arguments early must not hide them behind (*args, **kwargs).
    short = name.removeprefix("covey.")
    if short in OPTIONAL:
        pytest.importorskip(OPTIONAL[short])
    assert not _hidden_signatures(name), f"signature hidden: {_hidden_signatures(name)}"


def test_help_of_strategy_and_results_names_their_fields() -> None:
    from covey.deploy import ServerApp

    assert "fraction_fit" in inspect.signature(covey.Strategy).parameters
    assert list(inspect.signature(covey.EvaluateResult).parameters) == [
        "loss",
        "num_examples",
        "metrics",
    ]
    assert "initial_weights" in inspect.signature(ServerApp).parameters

    class Tuned(covey.Strategy):  # a subclass with its own __init__ shows its own
        def __init__(self, alpha: float = 1.0) -> None:
            super().__init__()

    assert list(inspect.signature(Tuned).parameters) == ["alpha"]


#: Pages whose text names files of the repository (scripts, tests, modules, examples).
PAGES = [
    "README.md",
    "CONTRIBUTING.md",
    *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").rglob("*.md"))),
    *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "examples").rglob("*.md"))),
    *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "examples").rglob("*.py"))),
]
#: Paths a page names on purpose although they do not exist.
NOT_FILES = {
    "tests/test_NAME.py",  # the test file `covey new NAME` writes
    "src/covey/_weights.py",  # a benchmark's record of where code was before a move
}
_REPO_PATH = re.compile(r"\b(?:tests|benchmarks|examples|src/covey)/[\w./*-]+\.(?:py|md|toml)\b")


@pytest.mark.parametrize("page", PAGES)
def test_every_file_a_page_names_exists(page: str) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    missing = sorted(
        path
        for path in set(_REPO_PATH.findall(text)) - NOT_FILES
        if not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists())
    )
    assert not missing, f"{page} names files that do not exist: {missing}"


_HEADING = re.compile(r"^(Args|Attributes):[ \t]*$")


def _listed(doc: str, heading: str) -> list[str]:
    """The names a Google-style ``Args:`` or ``Attributes:`` section of ``doc`` lists."""
    names: list[str] = []
    inside, indent = False, None
    for line in doc.splitlines():
        match = _HEADING.match(line)
        if match:
            inside, indent = match.group(1) == heading, None
            continue
        if not inside or not line.strip():
            continue
        if not line.startswith(" "):
            inside = False
            continue
        lead = len(line) - len(line.lstrip())
        indent = lead if indent is None else indent
        if lead == indent:
            names.append(re.split(r"[\s(:]", line.strip().lstrip("*"), maxsplit=1)[0])
    return names


def _public_parameters(signature: inspect.Signature) -> list[str]:
    """The parameters a caller passes: not ``self``/``cls``, nor a private ``_name``."""
    return [n for n in signature.parameters if n not in ("self", "cls") and not n.startswith("_")]


def _arguments_problems(where: str, func: object, doc: str) -> list[str]:
    """``func``'s ``Args:`` section names that its signature lacks, or parameters it omits."""
    listed = _listed(doc, "Args")
    if not listed:
        return []
    try:
        signature = inspect.signature(func)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []
    params = _public_parameters(signature)
    problems = [f"{where}: Args names {n!r}, not a parameter" for n in listed if n not in params]
    problems += [f"{where}: Args misses {n!r}" for n in params if n not in listed]
    return problems


def _constructor_doc(cls: type, doc: str) -> str:
    """The class's docstring and its own ``__init__``'s: either may tell its arguments."""
    init = vars(cls).get("__init__")
    init_doc = inspect.getdoc(init) if inspect.isfunction(init) else None
    return doc + "\n" + (init_doc or "")


def _public_methods(cls: type, fields: Iterable[str] = ()) -> list[tuple[str, FunctionType]]:
    """The public functions ``cls`` defines (a static or class method's own function).

    A dataclass field's default is no method: ``fields`` are left out.
    """
    methods = []
    for attr, member in vars(cls).items():
        func = getattr(member, "__func__", member)
        if not attr.startswith("_") and attr not in fields and inspect.isfunction(func):
            methods.append((attr, func))
    return methods


def _unchecked(cls: type) -> bool:
    """An exception or a protocol: its constructor is not its own to document."""
    return issubclass(cls, BaseException) or getattr(cls, "_is_protocol", False)


def _exports(module_name: str) -> list[tuple[str, object]]:
    """The names ``module_name`` exports, with the dotted name each is known by."""
    module = importlib.import_module(module_name)
    return [(f"{module_name}.{n}", getattr(module, n)) for n in getattr(module, "__all__", [])]


def _class_problems(where: str, cls: type) -> list[str]:
    doc = inspect.getdoc(cls) or ""
    fields = getattr(cls, "__dataclass_fields__", None)
    if fields is not None:
        problems = [
            f"{where}: {heading} names {n!r}, not a field"
            for heading in ("Args", "Attributes")
            for n in _listed(doc, heading)
            if n not in fields and not hasattr(cls, n)
        ]
    elif _unchecked(cls):
        problems = []
    else:
        problems = _arguments_problems(where, cls, _constructor_doc(cls, doc))
    for attr, func in _public_methods(cls):
        problems += _arguments_problems(f"{where}.{attr}", func, inspect.getdoc(func) or "")
    return problems


def _stale_arguments(module_name: str) -> list[str]:
    problems: list[str] = []
    for where, obj in _exports(module_name):
        if inspect.isclass(obj):
            problems += _class_problems(where, obj)
        elif inspect.isfunction(obj):
            problems += _arguments_problems(where, obj, inspect.getdoc(obj) or "")
    return problems


@pytest.mark.parametrize("name", ["covey", *(f"covey.{n}" for n in subpackages())])
def test_every_args_section_names_the_parameters(name: str) -> None:
    # An ``Args:`` section lists exactly what the signature takes: a renamed or
    # removed parameter must not stay documented, a new one must not go unmentioned.
    short = name.removeprefix("covey.")
    if short in OPTIONAL:
        pytest.importorskip(OPTIONAL[short])
    assert not _stale_arguments(name), "\n".join(_stale_arguments(name))


def test_the_args_check_sees_a_stale_name() -> None:
    def scale(x: float, factor: float = 2.0) -> float:  # noqa: D417 (on purpose)
        """Scale a number.

        Args:
            x: The number.
            scale: How much (the old name of ``factor``).
        """
        return x * factor

    assert _arguments_problems("scale", scale, inspect.getdoc(scale) or "") == [
        "scale: Args names 'scale', not a parameter",
        "scale: Args misses 'factor'",
    ]


def _takes(func: object) -> list[str]:
    try:
        return _public_parameters(inspect.signature(func))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []


def _unexplained(where: str, func: object, doc: str) -> list[str]:
    return [where] if _takes(func) and not _listed(doc, "Args") else []


def _class_unexplained(where: str, cls: type) -> list[str]:
    doc = inspect.getdoc(cls) or ""
    fields = getattr(cls, "__dataclass_fields__", None)
    taken: list[str] | None = None  # the fields the constructor takes
    if fields is not None:
        taken = [n for n, f in fields.items() if f.init]
    elif issubclass(cls, tuple) and hasattr(cls, "_fields"):  # a NamedTuple
        taken = list(getattr(cls, "_fields"))  # noqa: B009
    if taken is not None:  # each in Args or Attributes
        listed = {*_listed(doc, "Args"), *_listed(doc, "Attributes")}
        missing = [where] if any(n not in listed for n in taken if n[0] != "_") else []
    elif _unchecked(cls):
        missing = []
    else:
        missing = _unexplained(where, cls, _constructor_doc(cls, doc))
    for attr, func in _public_methods(cls, fields or {}):
        missing += _unexplained(f"{where}.{attr}", func, inspect.getdoc(func) or "")
    return missing


def _unexplained_arguments(module_name: str) -> list[str]:
    """Exported callables and public methods that take arguments yet have no ``Args:``.

    A dataclass counts when a field it is built with is in neither its ``Args:``
    nor its ``Attributes:`` section.
    """
    missing: list[str] = []
    for where, obj in _exports(module_name):
        if inspect.isclass(obj):
            missing += _class_unexplained(where, obj)
        elif callable(obj) and not inspect.ismodule(obj):
            missing += _unexplained(where, obj, inspect.getdoc(obj) or "")
    return missing


#: Callables whose ``Args:`` section is still to be written. The list only shrinks:
#: a name documented must leave it (test_args_still_missing_is_up_to_date).
ARGS_STILL_MISSING: frozenset[str] = frozenset()


@pytest.mark.parametrize("name", ["covey", *(f"covey.{n}" for n in subpackages())])
def test_every_callable_explains_its_arguments(name: str) -> None:
    # With the check above (an Args section names exactly the parameters), every
    # argument a public function, method or constructor takes is explained.
    short = name.removeprefix("covey.")
    if short in OPTIONAL:
        pytest.importorskip(OPTIONAL[short])
    missing = [m for m in _unexplained_arguments(name) if m not in ARGS_STILL_MISSING]
    assert not missing, f"no Args section: {missing}"


def test_args_still_missing_is_up_to_date() -> None:
    absent = tuple(
        f"covey.{n}." for n, lib in OPTIONAL.items() if importlib.util.find_spec(lib) is None
    )
    missing: set[str] = set()
    for name in ["covey", *(f"covey.{n}" for n in subpackages())]:
        if not f"{name}.".startswith(absent):
            missing.update(_unexplained_arguments(name))
    written = sorted(m for m in ARGS_STILL_MISSING - missing if not m.startswith(absent))
    assert not written, f"documented now, remove from ARGS_STILL_MISSING: {written}"


def test_the_arguments_check_sees_a_missing_section() -> None:
    def scale(x: float, factor: float = 2.0, _depth: int = 0) -> float:
        """Scale a number."""
        return x * factor

    def ready() -> bool:
        """Whether it is ready."""
        return True

    assert _unexplained("scale", scale, inspect.getdoc(scale) or "") == ["scale"]
    assert _unexplained("ready", ready, inspect.getdoc(ready) or "") == []


def test_every_export_shows_in_the_reference() -> None:
    # mkdocstrings renders what griffe reads from the source: a function or class,
    # or a constant or alias with a docstring. A name bound by calling a decorator
    # (``connect = wrap(_connect)``) is a bare attribute to it, left out of the page.
    griffe = pytest.importorskip("griffe")
    package = griffe.load("covey", search_paths=[str(ROOT / "src")], resolve_aliases=True)
    # The pages leave out names that start with "_" (filters: ["!^_"]): an export such
    # as __version__ shows only where a page names it in a directive of its own.
    pages = "\n".join(p.read_text(encoding="utf-8") for p in REFERENCE.glob("*.md"))
    hidden = []
    for name in ["", *subpackages()]:
        module = package[name] if name else package
        for export in module.exports or []:
            export = str(export)
            target = module[export]
            target = target.final_target if target.is_alias else target
            undocumented = target.kind.value == "attribute" and not target.docstring
            filtered = export.startswith("_") and f"::: {module.path}.{export}\n" not in pages
            if undocumented or filtered:
                hidden.append(f"{module.path}.{export}")
    assert not hidden, f"left out of the API reference: {hidden}"


def test_fedavg_lists_every_option_the_presets_take() -> None:
    # Every preset points to FedAvg's list of its **options: an option added to
    # StrategyOptions must be named there too.
    from covey.strategies._options import StrategyOptions

    listed = set(re.findall(r"``(\w+)``", (covey.FedAvg.__doc__ or "").split("Returns:")[0]))
    assert set(StrategyOptions.__annotations__) == listed


def test_every_preset_says_what_it_returns() -> None:
    from covey.strategies._presets import PRESETS

    silent = [p.__name__ for p in PRESETS if "\nReturns:\n" not in (inspect.getdoc(p) or "")]
    assert not silent, f"no Returns section: {silent}"

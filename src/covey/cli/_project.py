"""``covey new NAME`` writes a project; ``covey run`` runs it from its ``[tool.covey]`` table.

``covey run`` simulates the project, or with ``--federation NAME`` serves it for
real clients with the settings of ``[tool.covey.federations.NAME]``. Any setting
can be overridden for one run with ``--set key=value``.
"""

from __future__ import annotations

import difflib
import inspect
import keyword
import re
import shlex
import string
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from covey.cli._project_files import (
    read_project,
    same_kind,
    toml_key,
    unknown_keys,
)
from covey.cli._template import FILES
from covey.core._files import atomic_write
from covey.deploy._cli_apps import load_object
from covey.deploy._cli_errors import fail, folder_flag
from covey.deploy._cli_tables import output_console
from covey.deploy._cli_trackers import (
    TRACKER_KEYS,
    MLflowExperimentFlag,
    MLflowFlag,
    TensorBoardFlag,
)

__all__ = ["ProjectSettings", "new_command", "read_project", "run_command"]

console = output_console()

RUN_KEYS = {"server_app", "client_app", "clients", "rounds", "backend", "seed", "runs_dir"}
"""Keys of ``[tool.covey]`` besides its ``config`` and ``federations`` tables."""
RUN_KEYS.add("start_method")  # the process backend's, see covey.simulate
RUN_KEYS.add("keep_last")  # the simulated run's; a federation table has its own
RUN_KEYS |= {"client_resources", "ray_address", "ray_start_timeout"}  # the Ray backend's
RUN_KEYS.update(TRACKER_KEYS)  # the simulated run's; a federation table has its own

FEDERATION_KEYS = {
    "address",
    "certs",
    "insecure",
    "run_dir",
    "round_timeout",
    "round_retries",
    "wait_timeout",
    "heartbeat",
    "port_file",
    "plot",
    "compression",
    "keep_last",
    "max_clients",
    "data_port",
    *TRACKER_KEYS,
}
"""Keys of a ``[tool.covey.federations.NAME]`` table (the flags of ``covey server``)."""

_APP_EXAMPLES = {
    "server_app": "myfed.server_app:make_server",
    "client_app": "myfed.client_app:make_client",
}
"""A value of each app setting, shown when one is given wrong."""

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def new_command(
    name: Annotated[str, typer.Argument(help="The project's name (and folder).")],
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to create the project folder.")
    ] = Path(),
) -> None:
    """Create a runnable federated learning project: client, server app, data, tests, settings."""
    if not _NAME.match(name):
        fail(
            f"NAME {name!r}: use a letter then letters, digits, - or _ (at most 64), "
            "e.g. covey new my-federation"
        )
    pkg = name.replace("-", "_").lower()
    if keyword.iskeyword(pkg):
        fail(f"NAME {name!r}: {pkg!r} is a Python keyword, which no package can be named")
    if pkg in sys.stdlib_module_names or pkg == "covey":
        fail(f"NAME {name!r} would shadow the Python module {pkg!r}; choose another name")
    if pkg in ("tests", "runs"):
        fail(f"NAME {name!r}: the project keeps its {pkg}/ folder there; choose another name")
    if _installed(pkg):
        fail(
            f"NAME {name!r} would shadow the installed Python package {pkg!r} (the project "
            "could not import it); choose another name"
        )
    if directory.exists() and not directory.is_dir():
        fail(f"--dir {directory} is a file; give a folder (made if missing)")
    root = directory / name
    if root.exists():
        fail(f"{root} already exists; choose another NAME or --dir")
    for path, text in FILES.items():
        target = root / string.Template(path).substitute(pkg=pkg)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, string.Template(text).substitute(name=name, pkg=pkg))
    # The folder is the user's text: printed as is (``[x]`` is no markup), on one line.
    console.print(f"[green]created[/] {escape(str(root))}: {len(FILES)} files", soft_wrap=True)
    # A command to paste: the folder quoted for the shell when it holds a space or the like,
    # and not read by cd as its options when it starts with a dash (--dir -x: ./-x).
    shown = str(root) if root.is_absolute() or not str(root).startswith("-") else f"./{root}"
    console.print(escape(f"next: cd {shlex.quote(shown)} && covey run && pytest"), soft_wrap=True)


def _installed(pkg: str) -> bool:
    """Whether ``pkg`` is a module installed for this Python (the current folder aside)."""
    import importlib.machinery
    import os

    here = {"", ".", os.getcwd()}
    path = [p for p in sys.path if p not in here]
    spec = importlib.machinery.PathFinder.find_spec(pkg, path)
    if spec is None:
        return False
    if spec.origin not in (None, "namespace"):
        return True
    # A namespace package: the project's own package would hide every module in it (as
    # ``google`` holds protobuf), while a plain folder on the path holds none to hide.
    import pkgutil

    locations = list(spec.submodule_search_locations or ())
    return any(True for _ in pkgutil.iter_modules(locations))


def _check_federations(federations: Any, project: Path) -> None:
    """Refuse a ``[tool.covey.federations]`` that is no table of tables, or an unknown key."""
    where = project / "pyproject.toml"
    if not isinstance(federations, dict):
        fail(f"[tool.covey.federations] in {where} must hold tables, one per federation")
    for name, fed in federations.items():
        if not isinstance(fed, dict):
            fail(f"[tool.covey.federations.{name}] in {where} must be a table of settings")
        keys = {k.replace("-", "_"): v for k, v in fed.items()}
        unknown_keys(keys, FEDERATION_KEYS, f"[tool.covey.federations.{name}]")


class ProjectSettings:
    """A project's ``[tool.covey]`` table, checked, with ``--set`` overrides applied.

    Args:
        project: The project folder (holding ``pyproject.toml``).
        overrides: ``key=value`` strings; the value is read as TOML (``0.1``,
            ``true``, ``"text"``), or taken as text when it is not TOML.
        federation: The federation to serve for, or None to simulate.
    """

    def __init__(self, project: Path, overrides: list[str], federation: str | None) -> None:
        """Read and check the settings."""
        self.project = project
        table = read_project(project)
        config = table.pop("config", {})
        federations = table.pop("federations", {})
        run = {k.replace("-", "_"): v for k, v in table.items()}
        unknown_keys(run, RUN_KEYS, "[tool.covey]", ("config", "federations.NAME"))
        _check_federations(federations, project)  # a typo shows on a simulated run too
        self.federation: dict[str, Any] | None = None
        if federation is not None:
            fed = federations.get(federation) if isinstance(federations, dict) else None
            if not isinstance(fed, dict):
                known = ", ".join(sorted(federations)) if isinstance(federations, dict) else ""
                fail(
                    f"--federation {federation}: no [tool.covey.federations.{federation}] in "
                    f"{project / 'pyproject.toml'}" + (f" (known: {known})" if known else "")
                )
            self.federation = {k.replace("-", "_"): v for k, v in fed.items()}
            unknown_keys(self.federation, FEDERATION_KEYS, f"[tool.covey.federations.{federation}]")
        if not isinstance(config, dict):
            fail(f"[tool.covey.config] in {project / 'pyproject.toml'} must be a table")
        self.run, self.config = run, dict(config)
        self.overrides = list(overrides)
        """The ``--set`` items as given, for a printed command that repeats them."""
        self.given: set[str] = set()
        """The ``[tool.covey]`` keys ``--set`` gave (``rounds``, say)."""
        self.given_config: set[str] = set()
        """The ``[tool.covey.config]`` keys ``--set`` gave."""
        self.trackers: dict[str, Any] = {"experiment": project.name}
        """The trackers the run logs to (see :meth:`take_trackers`)."""
        self.tracker_flags: dict[str, str] = {}
        """The tracker flags given on the command line, for a printed command that repeats them."""
        for item in overrides:
            self._override(item)
        for key in ("server_app", "client_app"):
            if key not in self.run:
                fail(f"{project / 'pyproject.toml'}: [tool.covey] needs {toml_key(key)}")
            if not isinstance(self.run[key], str):
                fail(
                    f"{toml_key(key)} = {self.run[key]!r} ([tool.covey] in "
                    f"{project / 'pyproject.toml'}, or --set): give MODULE:FUNCTION as text, "
                    f'e.g. {toml_key(key)} = "{_APP_EXAMPLES[key]}"'
                )
        self._check_numbers()
        runs = self.run.get("runs_dir", "runs")
        if not isinstance(runs, str) or not runs or (project / runs).is_file():
            fail(
                f"runs-dir = {runs!r} ([tool.covey] in {project / 'pyproject.toml'}, or --set): "
                "give a folder (made if missing) to keep each run's folder in"
            )

    def restore(self, kept: dict[str, Any]) -> None:
        """Take back the app settings a resumed run was started with, but those ``--set`` gives.

        ``kept`` is what the run folder keeps (see
        :func:`covey.cli._project_sim.same_settings`): ``clients``, ``rounds``,
        ``seed`` and ``[tool.covey.config]``, ``--set`` applied. A ``--set`` on the
        resume wins (the resume then refuses it unless it is ``rounds``, which may
        take a stopped run further).
        """
        for key, value in kept.items():
            if key in ("clients", "rounds", "seed") and key not in self.config:
                if key not in self.given:
                    self.run[key] = value
            elif key not in self.given_config:
                self.config[key] = value
        self._check_numbers()

    def _check_numbers(self) -> None:
        from covey.core._messages import MAX_ROUNDS

        project = self.project
        for key, least in (("clients", 1), ("rounds", 0), ("seed", 0)):
            value = self.run.get(key)
            most = MAX_ROUNDS if key == "rounds" else None
            if value is not None and (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < least
                or (most is not None and value > most)
            ):
                size = f"of {least} or more" if most is None else f"from {least} to {most:,}"
                fail(
                    f"{key} = {value!r} ([tool.covey] in {project / 'pyproject.toml'}, or "
                    f"--set): must be a whole number {size}, e.g. --set {key}=10"
                )

    def _override(self, item: str) -> None:
        given, sep, text = item.partition("=")
        given = given.strip()
        key = given.replace("-", "_")
        if not sep or not key:
            fail(f"--set {item!r}: expected KEY=VALUE, e.g. --set rounds=10")
        try:
            value: Any = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        if self.federation is not None and key in FEDERATION_KEYS:  # keep-last: the served run's
            self.federation[key] = value
        elif key in RUN_KEYS:
            self.run[key] = value
            self.given.add(key)
        elif spelled := [k for k in (given, key, toml_key(key)) if k in self.config]:
            same_kind(item, self.config[spelled[0]], value)
            self.config[spelled[0]] = value  # the app's key as its table spells it
            self.given_config.add(spelled[0])
        else:
            self._refuse(item, key)

    def _refuse(self, item: str, key: str) -> None:
        """Fail on ``--set KEY=...`` naming no setting: a typo would otherwise pass unseen."""
        if key in FEDERATION_KEYS:
            fail(
                f"--set {item}: {toml_key(key)} is a setting of a federation; add "
                "--federation NAME to serve for real clients"
            )
        # Settings of covey as pyproject.toml spells them; the app's own as its table does.
        known = {toml_key(k) for k in RUN_KEYS} | set(self.config)
        if self.federation is not None:
            known |= {toml_key(k) for k in FEDERATION_KEYS}
        given = item.partition("=")[0].strip()
        close = difflib.get_close_matches(given, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        fail(
            f"--set {item}: no setting {given} in [tool.covey] or [tool.covey.config] of "
            f"{self.project / 'pyproject.toml'}{hint}; add it to [tool.covey.config] first "
            f"if the app reads it; known: {', '.join(sorted(known))}"
        )

    def app_config(self) -> dict[str, Any]:
        """What the app's functions get: ``clients``, ``rounds``, ``seed`` and the config table."""
        config: dict[str, Any] = {
            k: self.run[k] for k in ("clients", "rounds", "seed") if k in self.run
        }
        config.update(self.config)
        return config

    def path(self, value: Any) -> Path | None:
        """A path setting, relative to the project folder (``~`` is the home folder)."""
        return None if value is None else self.project / Path(str(value)).expanduser()

    def take_trackers(self, flags: tuple[str | None, ...], federation: str | None) -> None:
        """Set :attr:`trackers`: the command line's tracker ``flags``, else the table's.

        ``flags``: ``--tensorboard``, ``--mlflow`` and ``--mlflow-experiment``;
        ``federation``: the federation served for (its table's keys), or None. A
        table's folder (``tensorboard``, an ``mlflow`` that is no URI) is relative to
        the project folder, as its other paths are.
        """
        table = self.run if self.federation is None else self.federation
        where = (
            "[tool.covey]" if self.federation is None else f"[tool.covey.federations.{federation}]"
        )
        given: dict[str, Any] = {}
        names: dict[str, str] = {}
        self.tracker_flags = {
            key: flag for key, flag in zip(TRACKER_KEYS, flags, strict=True) if flag is not None
        }
        for key, flag in zip(TRACKER_KEYS, flags, strict=True):
            value = table.get(key) if flag is None else flag
            names[key] = f"--{toml_key(key)}" if flag is not None else f"{toml_key(key)} ({where})"
            if flag is None and isinstance(value, str) and key != "mlflow_experiment":
                uri = "://" in value or value.lower().startswith("file:")
                value = value if uri else str(self.path(value))
            given[key] = value
        self.trackers |= {"trackers": given, "tracker_names": names}
        self.trackers["tracker_flags"] = self.tracker_flags  # kept in the run folder


def run_command(
    project: Annotated[Path, typer.Argument(help="The project folder.")] = Path(),
    federation: Annotated[
        str | None,
        typer.Option(help="Serve for real clients with \\[tool.covey.federations.NAME]."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting for this run: KEY=VALUE (repeatable)."),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Show an error's traceback; with --federation, log fleet events too.",
        ),
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the stopped run in this folder after its last complete round, "
            "with the settings it was started with (a served run: with --federation).",
            parser=folder_flag("--resume"),
            metavar="PATH",
        ),
    ] = None,
    tensorboard: TensorBoardFlag = None,
    mlflow: MLflowFlag = None,
    mlflow_experiment: MLflowExperimentFlag = None,
) -> None:
    """Run the project in this folder: a simulation, or a server for a real federation."""
    if resume is not None:
        from covey.cli._project_serve import check_served_folder
        from covey.cli._project_sim import check_resume_folder, kept_settings

        if federation is None:
            check_resume_folder(resume, project)
        else:
            check_served_folder(resume)
    settings = ProjectSettings(project.resolve(), overrides or [], federation)
    if resume is not None and (kept := kept_settings(resume)) is not None:
        settings.restore(kept)  # the app gets the settings the run was started with
    settings.take_trackers((tensorboard, mlflow, mlflow_experiment), federation)
    if str(settings.project) not in sys.path:
        sys.path.insert(0, str(settings.project))
    make_server = load_object(
        settings.run["server_app"], "server-app", example=_APP_EXAMPLES["server_app"]
    )
    make_client = _client_maker(settings.run["client_app"])
    try:
        server_app = make_server(settings.app_config())
    except (TypeError, ValueError) as exc:
        fail(f"server-app {settings.run['server_app']}(config) failed: {exc}")
    except Exception as exc:  # the app's own error (a damaged checkpoint it loads): say whose
        exc.add_note(f"raised by server-app {settings.run['server_app']}(config)")
        raise
    from covey.deploy import ServerApp

    if not isinstance(server_app, ServerApp):
        fail(
            f"server-app {settings.run['server_app']}(config) returned "
            f"{type(server_app).__name__}, not a covey.deploy.ServerApp"
        )
    if server_app.main is not None:  # a loop of its own: no rounds to simulate or serve here
        fail(
            f"server-app {settings.run['server_app']}(config) returned a ServerApp with main=, "
            "a server loop of its own, which `covey run` does not run: serve it with "
            "`covey server --app MODULE:OBJECT`"
        )
    if isinstance(server_app.compression, str):
        from covey.compress import scheme_named

        try:
            scheme_named(server_app.compression)
        except ValueError as exc:
            fail(f"server-app {settings.run['server_app']}(config): ServerApp(compression=): {exc}")
    if settings.federation is None:
        from covey.cli._project_sim import simulate_project

        simulate_project(settings, server_app, make_client, resume)
    else:
        from covey.cli._project_serve import serve_project

        serve_project(settings, server_app, federation or "", verbose, resume)


def _client_maker(spec: str) -> Any:
    """The ``client-app`` function, checked: it is called as ``make_client(cid, config=...)``."""
    make_client = load_object(spec, "client-app", example=_APP_EXAMPLES["client_app"])
    try:
        inspect.signature(make_client).bind(0, config={})
    except TypeError:
        fail(
            f"client-app {spec} must be a function of (cid, config) returning a covey.Client, "
            "like make_client in a project made by `covey new`"
        )
    except ValueError:  # no signature to read (a builtin): let the call decide
        pass
    return make_client

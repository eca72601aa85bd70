"""Mistakes on the command line end in one line naming the flag or file and the fix, exit 2."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from covey.core._files import read_given
from covey.deploy._shown import escape

__all__ = [
    "Settings",
    "compression_spec",
    "fail",
    "file_flag",
    "folder_flag",
    "fresh_run_dir",
    "no_empty_folder",
    "number",
    "number_in",
    "output_file",
    "read_settings",
]

console = Console(stderr=True, emoji=False)  # `--app pkg:key` is no :key: emoji

USAGE_EXIT = 2
"""The exit code of a command given wrong flags or files (as for any usage error)."""


def fail(message: str) -> NoReturn:
    """Print ``error: MESSAGE`` on one line and exit with code 2 (no traceback)."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(USAGE_EXIT)


def no_empty_folder(value: Any, flag: str) -> None:
    """Fail if ``value``, the folder of ``flag`` (or of a setting), is empty text.

    ``Path("")`` is the current folder: ``--run-dir ""`` (a shell variable never
    set, say) put the run's files beside whatever the current folder holds.
    """
    if isinstance(value, str | Path) and str(value) == "":
        fail(f'{flag} is empty (""); give a folder, or leave it out')


def folder_flag(flag: str) -> Callable[[str], Path]:
    """A Typer parser of the folder ``flag`` takes, refusing empty text (:func:`no_empty_folder`).

    Typer reads ``""`` as ``Path("")``, which is ``.``: the parser sees the text as given.
    """

    def parse(value: str) -> Path:
        no_empty_folder(value, flag)
        return Path(value)

    return parse


def file_flag(flag: str) -> Callable[[str], Path]:
    """A Typer parser of the file ``flag`` takes, refusing empty text.

    Typer reads ``""`` as ``Path("")``, which is ``.``: ``--config ""`` (a shell
    variable never set) was reported as ``--config .``, a folder never given.
    """

    def parse(value: str) -> Path:
        if value == "":
            fail(f'{flag} is empty (""); give a file, or leave it out')
        return Path(value)

    return parse


def number_in(
    flag: str, what: str, low: float, high: float | None = None
) -> Callable[[Any], float]:
    """A Typer parser of the float ``flag`` takes, ``what`` (its words), ``low`` to ``high``.

    Typer's own range check (``min``, ``max``) compares ``nan`` with each bound, finding
    it neither below nor above: ``--fraction nan`` was refused as a number that "should
    be less than or equal to 1". ``nan``, text that is no number and a number out of the
    range are refused alike here, naming the range. Give Typer the same ``min`` and
    ``max``, which its ``--help`` shows.
    """
    within = f"in [{low:g}, {high:g}]" if high is not None else f"of at least {low:g}"

    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (low <= number and (high is None or number <= high)):  # nan: neither
            fail(f"{flag} {value}: {what} must be a number {within}")
        return number

    return parse


def fresh_run_dir(parent: str | Path, prefix: str, setting: str) -> Path:
    """A new run folder under ``parent``, or fail naming ``setting`` if it cannot be made.

    ``setting`` says where ``parent`` came from (``--run-dir``, ``runs-dir = ...``):
    a folder below ``/proc`` or a read-only one otherwise stopped the command with
    a bare ``FileNotFoundError`` or ``PermissionError`` (exit status 1).
    """
    from covey.server._outputs import new_run_dir

    try:
        return new_run_dir(parent, prefix)
    except OSError as exc:
        fail(f"{setting}: cannot make a run folder in {parent} ({exc.strerror or exc})")


class Settings(dict[str, Any]):
    """The settings of a ``--config`` file, by flag name, knowing the file they came from."""

    def __init__(
        self,
        values: dict[str, Any] | None = None,
        *,
        config: Path | None = None,
        section: str | None = None,
        spelled: dict[str, str] | None = None,
    ) -> None:
        """``values`` read from ``[section]`` of ``config`` (None: the whole file)."""
        super().__init__(values or {})
        self.config = config
        self.section = section
        self.spelled = spelled or {}

    def name(self, given: Any, key: str, flag: str) -> str:
        """Where a value came from, for errors: ``flag``, or the file's key if the file gave it.

        Args:
            given: The command line's value (None: not given there).
            key: The setting's key (``round_timeout``).
            flag: The command line's flag (``--round-timeout``).

        Returns:
            ``flag`` when the command line gave the value, else ``server.round_timeout in
            fed.toml`` (the key as the file spells it), so that one who never typed the flag
            is pointed to the line to fix.
        """
        if given is not None or self.config is None or key not in self:
            return flag
        spelled = self.spelled.get(key, key)
        return f"{self.section + '.' if self.section else ''}{spelled} in {self.config}"


def read_settings(config: Path | None, section: str, known: set[str]) -> Settings:
    """The settings of ``[section]`` (or of the whole file) in the TOML file ``config``.

    Keys may use ``-`` or ``_``; every key must name a flag of the command.

    Args:
        config: The ``--config`` file, or None.
        section: ``"server"`` or ``"client"``.
        known: The flags the file may set (in ``snake_case``).
    """
    if config is None:
        return Settings()
    data = _read_toml(config)
    table = data.get(section, data)
    if not isinstance(table, dict):
        fail(f"--config {config}: [{section}] must be a table of settings")
    others = {"server", "client"} - {section}
    if table is not data:  # a setting or a table beside [server] would be passed over
        beside = {k: v for k, v in data.items() if k not in others | {section}}
        _nothing_beside(config, section, beside)
    settings = {
        k.replace("-", "_"): v
        for k, v in table.items()
        if not (table is data and k in others and isinstance(v, dict))
    }
    unknown = sorted(set(settings) - known)
    tables = [k for k in unknown if isinstance(settings[k], dict)]
    if tables:  # [sever]: a table, not a setting
        fail(
            f"--config {config}: unknown table{'s' if len(tables) > 1 else ''} "
            f"{', '.join(f'[{t}]' for t in tables)}; the settings go under [{section}]"
        )
    if unknown:
        fail(
            f"--config {config}: unknown setting{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)} in [{section}]; known: {', '.join(sorted(known))}"
        )
    for key, value in settings.items():
        # "false" in quotes is text, which Python holds true: insecure = "false" served without TLS.
        if key in _SWITCHES and not isinstance(value, bool):
            fail(
                f"--config {config}: {key} = {_toml_value(value)} in [{section}]: must be "
                f"true or false, without quotes"
            )
        if key not in _TEXTS and key != "compression" and _quoted_number(value):
            fail(
                f"--config {config}: {key} = {_toml_value(value)} in [{section}]: must be a "
                f"number, without quotes: {key} = {value.strip()}"
            )
        if key in _TEXTS and not isinstance(value, str):
            fail(
                f"--config {config}: {key} = {_toml_value(value)} in [{section}]: must be text "
                f'in quotes, e.g. {key} = "{value}"'
            )
    spelled = {k.replace("-", "_"): k for k in table}
    nested = section if table is not data else None
    for key in _PATHS & settings.keys():  # no shell reads the file: ~ is the home folder
        if settings[key] == "" and key in _EMPTY:  # Path("") is the current folder
            where = f"{nested + '.' if nested else ''}{spelled.get(key, key)} in {config}"
            fail(f'{where} is empty (""); give a {_EMPTY[key]}, or leave it out')
        settings[key] = os.path.expanduser(settings[key])
    return Settings(settings, config=config, section=nested, spelled=spelled)


MAX_CONFIG_BYTES = 1 << 20
"""The largest ``--config`` or ``--policy`` file read: a few lines (not ``/dev/zero``)."""


class TomlFileError(ValueError):
    """A file given for TOML settings is unreadable, too large, not text or not TOML."""


def read_toml_file(path: Path, wanted: str) -> dict[str, Any]:
    """The TOML table of the file at ``path``, read up to :data:`MAX_CONFIG_BYTES`.

    Args:
        path: The file (a pipe such as ``<(...)`` is read as a file is; a named pipe
            that no process writes is refused).
        wanted: What the file should be, e.g. ``"the TOML file of the command's settings"``,
            said after a file too large or not text.

    Raises:
        TomlFileError: Naming what is wrong with the file, without its path (the caller
            puts the flag and the path before it).
    """
    try:  # a named pipe no process writes is refused, not waited on
        raw = read_given(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise TomlFileError(f"cannot read it ({exc.strerror or exc})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise TomlFileError(f"larger than {MAX_CONFIG_BYTES:,} bytes; give {wanted}")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TomlFileError(
            f"not a TOML file (byte {exc.start} is not UTF-8 text); give {wanted}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise TomlFileError(f"not valid TOML ({exc})") from None


def _read_toml(config: Path) -> dict[str, Any]:
    """The TOML table of the ``--config`` file, or fail naming what is wrong with the file."""
    try:
        return read_toml_file(config, "the TOML file of the command's settings")
    except TomlFileError as exc:
        fail(f"--config {config}: {exc}")


def _nothing_beside(config: Path, section: str, beside: dict[str, Any]) -> None:
    """Fail naming the settings and tables found beside ``[section]``, if any.

    ``rounds = 5`` above ``[server]`` (or a ``[sevrer]`` table after it) was
    passed over, so that the run went on with the default.
    """
    if not beside:
        return
    tables = [f"[{k}]" for k, v in beside.items() if isinstance(v, dict)]
    keys = [k for k, v in beside.items() if not isinstance(v, dict)]
    said = []
    if keys:
        said.append(f"setting{'s' if len(keys) > 1 else ''} {', '.join(keys)} above [{section}]")
    if tables:
        said.append(f"unknown table{'s' if len(tables) > 1 else ''} {', '.join(tables)}")
    fail(f"--config {config}: {' and '.join(said)}; the settings go under [{section}]")


_SWITCHES = {"insecure", "plot", "resume_if_present", "verbose"}
"""The ``--config`` keys of on/off flags: a TOML ``true`` or ``false``."""

_TEXTS = {"app", "address", "certs", "run_dir", "resume", "port_file", "server", "name"}
_TEXTS |= {"ca", "cert", "key", "server_name", "tensorboard", "mlflow", "mlflow_experiment"}
"""The ``--config`` keys of flags taking text (a path, an address, a name): a TOML string."""

_PATHS = {"certs", "run_dir", "resume", "port_file", "ca", "cert", "key", "tensorboard", "mlflow"}
"""The ``--config`` keys of paths: a leading ``~`` is the home folder, as in a shell (an
``mlflow`` tracking URI is left as it is)."""

_EMPTY = {"certs": "folder", "run_dir": "folder", "resume": "folder"}
_EMPTY |= {"port_file": "file", "ca": "file", "cert": "file", "key": "file"}
"""The ``--config`` keys of paths refused empty (``""`` is the current folder), and their kind."""


def _quoted_number(value: Any) -> bool:
    """Whether ``value`` is text that reads as a number (``rounds = "20"``)."""
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _toml_value(value: Any) -> str:
    """``value`` as TOML writes it (``true``, ``"text"``, ``5``), to quote a setting back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def compression_spec(spec: Any, flag: str = "--compression") -> str | None:
    """The compression spec of ``flag``, checked: an unknown scheme fails with the known ones.

    Args:
        spec: The spec given (text; a settings file's value may be of any type).
        flag: The flag or setting, named in the error (``--compression``, or where a
            settings file gives it).
    """
    from covey.compress import scheme_named

    if spec is None:
        return None
    if not isinstance(spec, str):  # `compression = 3` in a TOML table
        fail(
            f'{flag} must name a compression scheme as text (e.g. compression = "q8"), got {spec!r}'
        )
    try:
        scheme_named(spec)
    except ValueError as exc:
        fail(f"{flag}: {exc}")
    return spec


def number(
    value: Any, flag: str, *, integer: bool = False, zero: bool = False, seconds: bool = False
) -> Any:
    """``value`` of ``flag`` (or of its ``--config`` key), checked; None passes.

    Args:
        value: The value given.
        flag: The flag, named in the error.
        integer: Whether it must be a whole number.
        zero: Whether 0 is allowed (else it must be above 0).
        seconds: Whether it is a time in seconds (named so in the error, which
            says "finite": ``inf`` is a float the command line takes, not "forever").

    Returns:
        ``value``, a finite number of the right kind and range.
    """
    if value is None:
        return None
    kind = int if integer else int | float
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        what = "a whole number" if integer else "a number"
        if seconds:
            what = "a finite number of seconds,"
        fail(f"{flag} must be {what} {'0 or more' if zero else 'above 0'}, got {value!r}")
    return value


def port_number(value: Any, flag: str) -> int | None:
    """``value`` of ``flag``, a port to listen on (0: a free one), checked; None passes."""
    port = number(value, flag, integer=True, zero=True)
    if port is not None and port > 65535:
        fail(f"{flag} must be a port number, 0 to 65535 (0: a free one), got {port}")
    return port  # type: ignore[no-any-return]


def output_file(path: Path | None, flag: str, *, device: bool = True) -> Path | None:
    """``path`` of ``flag``, a file the command will write, checked: its folder exists.

    Checked before anything starts, so that a run is not made and then stopped
    by a file it cannot write. None passes. With ``device=False`` an existing
    device or pipe is refused too (a file that is only ever renamed into place).
    """
    if path is None:
        return None
    folder = path.parent
    if not folder.is_dir():
        fail(f"{flag} {path}: the folder {folder} does not exist")
    if path.is_dir():
        fail(f"{flag} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        if not device:
            fail(f"{flag} {path} is not a regular file (a device, a pipe); give a file name")
        return path  # a device or pipe is written into as it is
    why = _cannot_write_in(folder, path.name)
    if why is not None:
        fail(
            f"{flag} {path}: a file cannot be written in the folder {folder} ({why}); "
            "give a path in a folder you can write to"
        )
    return path


def _cannot_write_in(folder: Path, name: str) -> str | None:
    """Why no file can be made in ``folder`` (tried with a temporary one), or None.

    The file is written as a temporary file renamed into place: this is what the
    folder must allow, whatever the permission bits say (``/proc``, a read-only mount).
    """
    import tempfile

    from covey.core._files import TMP_SUFFIX

    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(probe)
    return None


def address_flag(value: Any, flag: str, *, listen: bool) -> str:
    """``value`` of ``flag``, checked as ``host:port`` before anything starts.

    Args:
        value: The address given, e.g. ``127.0.0.1:9092``.
        flag: The flag or setting it came from, named in the error.
        listen: True for an address to listen on (port 0 allowed), False to dial.
    """
    from covey.transport.grpc._checks import check_address

    try:
        check_address(str(value), listen=listen)
    except ValueError as exc:
        fail(f"{flag} {exc}")
    return str(value)

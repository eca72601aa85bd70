"""The ``covey`` command line: its commands, and the entry point that runs them.

Loaded by :func:`covey.cli.main` (the ``covey`` command), which stays light to load
so that Ctrl-C as this module loads ends the command quietly.
"""

from __future__ import annotations

import codecs
import io
import math
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

import covey
from covey.cli._stdout import StdoutError, checked_stdout, stop_writing
from covey.core._extras import MissingExtraError, extra_for
from covey.core._interrupt import (
    exit_code,
    interrupt_in,
    interrupted_how,
    interrupts_as_such,
    stopping_on_sigterm,
)
from covey.deploy._cli_errors import file_flag, folder_flag, number_in
from covey.deploy._cli_help import HelpCommand
from covey.deploy._cli_tables import output_console

if TYPE_CHECKING:
    from covey.cli._demo import DemoConfig
    from covey.cli._model import RoundModels
    from covey.sim import SimulationResult

app = typer.Typer(
    name="covey",
    help="covey: federated learning and federated analytics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = output_console()


def _version(value: bool) -> None:
    if value:
        console.print(f"covey {covey.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """covey: federated learning and federated analytics."""


@app.command(cls=HelpCommand)
def demo(
    clients: Annotated[int, typer.Option(min=2, help="Simulated clients.")] = 100,
    rounds: Annotated[int, typer.Option(min=0, help="Rounds of FedAvg.")] = 30,
    fraction: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            parser=number_in("--fraction", "the fraction of clients per round", 0.0, 1.0),
            help="Fraction of clients per round.",
        ),
    ] = 0.1,
    alpha: Annotated[
        float,
        typer.Option(
            min=1e-6,
            parser=number_in("--alpha", "the Dirichlet concentration", 1e-6),
            help="Dirichlet concentration of the label skew.",
        ),
    ] = 0.5,
    lr: Annotated[float, typer.Option(help="Clients' learning rate.")] = 0.5,
    epochs: Annotated[int, typer.Option(min=1, help="Local epochs per round.")] = 5,
    seed: Annotated[int, typer.Option(min=0, help="Seed of data split and sampling.")] = 0,
    backend: Annotated[
        str,
        typer.Option(
            help="Simulation backend: inline, process or ray (a local Ray, started and stopped)."
        ),
    ] = "inline",
    start_method: Annotated[
        str | None,
        typer.Option(help="How process workers start: fork, forkserver or spawn (default: auto)."),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where to write history.json and plot.png.",
            parser=folder_flag("--run-dir"),
            metavar="PATH",
        ),
    ] = None,
    plot: Annotated[bool, typer.Option(help="Write plot.png.")] = True,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Also write the final model to this file (safetensors); a run stopped early "
            "(Ctrl-C, an error) writes the model after its last complete round.",
            parser=file_flag("--out"),
            metavar="PATH",
        ),
    ] = None,
) -> None:
    """Train logistic regression on label-skewed digits across simulated clients with FedAvg."""
    from covey.cli._demo import plot_history
    from covey.cli._model import RoundModels, not_saved, save_model
    from covey.cli._rounds import endings, print_rounds

    settings = (clients, rounds, fraction, alpha, lr, epochs, seed, backend, start_method)
    # With --out: the model after the last complete round, whatever stops the run.
    models = None if out is None else RoundModels(None)
    folder: Path | None = None  # the run folder, once made
    try:
        # SIGTERM (`docker stop`, a batch scheduler) as Ctrl-C from the start, as the data
        # loads too; and Ctrl-C that an import made an ImportError, say, as Ctrl-C
        with stopping_on_sigterm(), interrupts_as_such():
            config, run_dir = _demo_setup(*settings, run_dir=run_dir, out=out)
            folder = run_dir
            result = _run_demo(config, run_dir, models, out)
    except KeyboardInterrupt as exc:
        _demo_interrupted(exc, folder, models, out)
    print_rounds(result.history, console, folder=run_dir)
    for line in endings(result.history):
        console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)
    final = result.history.rounds[-1]
    accuracy = float(final.central_metrics.get("accuracy", float("nan")))
    if plot:
        plot_history(result.history, run_dir / "plot.png", title=f"covey demo: {clients} clients")
    console.print(
        f"[bold green]final test accuracy: {accuracy:.4f}[/] after {_rounds(final.round)} "
        f"in {result.seconds:.2f} s"
    )
    console.print(
        f"run folder: {escape(str(run_dir))} (history.json{', plot.png' if plot else ''})",
        soft_wrap=True,
    )
    if out is None:
        return
    if not save_model(run_dir, final.round, result.weights, console, out):
        said = not_saved(run_dir, final.round, out)
        console.print(f"[red]error:[/] {escape(said)}", soft_wrap=True)
        raise typer.Exit(1)
    console.print(escape(f"model: {out} (after round {final.round})"), soft_wrap=True)


def _demo_setup(
    clients: int,
    rounds: int,
    fraction: float,
    alpha: float,
    lr: float,
    epochs: int,
    seed: int,
    backend: str,
    start_method: str | None,
    *,
    run_dir: Path | None,
    out: Path | None,
) -> tuple[DemoConfig, Path]:
    """The demo's settings checked (a mistake ends the command) and its run folder, made."""
    from covey.cli._demo import DemoConfig, SplitError, demo_split
    from covey.core._messages import MAX_ROUNDS
    from covey.data import load_digits
    from covey.deploy._cli_errors import fail, output_file
    from covey.sim._start import start_method_refusal

    if rounds > MAX_ROUNDS:  # refused before the run starts, as a usage error
        fail(f"--rounds {rounds}: at most {MAX_ROUNDS:,} rounds")
    if backend not in ("inline", "process", "ray"):
        fail(f"--backend {backend}: choose inline, process or ray")
    why = start_method_refusal(start_method, backend, "--backend process")
    if why is not None:
        fail(f"--start-method {start_method}: {why}")
    if not (math.isfinite(lr) and lr > 0):
        fail(f"--lr {lr}: the learning rate must be a number above 0")
    if not math.isfinite(alpha):  # the split refused it, said as "raise --alpha"
        fail(f"--alpha {alpha}: the Dirichlet concentration must be a finite number above 0")
    output_file(out, "--out", device=False)
    most = len(load_digits(seed=seed).y_train) // 2
    if clients > most:
        fail(
            f"--clients {clients}: the digits training set gives at most {most} clients "
            f"two examples each; choose --clients {most} or fewer"
        )
    config = DemoConfig(
        clients=clients,
        rounds=rounds,
        fraction=fraction,
        alpha=alpha,
        lr=lr,
        epochs=epochs,
        seed=seed,
        backend=backend,
        start_method=start_method,
    )
    try:  # a split that cannot be drawn is refused before anything starts
        demo_split(config, load_digits(seed=seed))
    except SplitError as exc:
        fail(str(exc))
    run_dir = _demo_run_dir(run_dir)
    console.print(
        f"[bold]covey demo[/]: {clients} clients, Dirichlet({alpha}) label skew on digits, "
        f"NumPy logistic regression, {_rounds(rounds)} of FedAvg with "
        f"{_per_round(clients, fraction)} per round ({backend} backend)"
    )
    return config, run_dir


def _rounds(count: int) -> str:
    """``count`` rounds in words: ``1 round``, ``3 rounds``."""
    return f"{count} round{'' if count == 1 else 's'}"


def _per_round(clients: int, fraction: float) -> str:
    """The demo's clients per round in words: ``10% of clients``, or the two it takes at least."""
    if math.floor(clients * fraction) < 2:  # --fraction 0 trained two clients a round, not 0%
        return f"2 of the {clients} clients (the fewest; --fraction {fraction:g} gives fewer)"
    return f"{fraction:.0%} of clients"


def _demo_run_dir(run_dir: Path | None) -> Path:
    """The demo's run folder: a fresh one under runs/, or the one given if it holds no run."""
    from covey.deploy._cli_errors import fail, fresh_run_dir

    if run_dir is None:
        return fresh_run_dir("runs", "demo", "the run folder (leave out --run-dir: runs/)")
    if run_dir.exists() and not run_dir.is_dir():
        fail(
            f"--run-dir {run_dir} is a file; give a folder (made if missing), or leave "
            "--run-dir out for a fresh folder under runs/"
        )
    if (run_dir / "run.json").exists() or (run_dir / "history.json").exists():
        fail(
            f"--run-dir {run_dir} already holds a run; give a new folder, or leave "
            "--run-dir out for a fresh folder under runs/"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--run-dir {run_dir}: cannot make the folder ({exc.strerror or exc})")
    return run_dir


def _run_demo(
    config: DemoConfig, run_dir: Path, models: RoundModels | None, out: Path | None
) -> SimulationResult:
    """Run the demo; stopped by an error, say what it kept and exit."""
    from covey.cli._demo import run_demo
    from covey.cli._model import keep_model

    try:
        return run_demo(config, run_dir=run_dir, progress=True, models=models)
    except covey.FederationError as exc:
        console.print(f"[red]run stopped:[/] {escape(str(exc))}")
        if models is not None:
            kept = keep_model(run_dir, models, console, exc.history, exc.weights, to=out)
            if kept is not None:
                console.print(escape(kept), soft_wrap=True)
        raise typer.Exit(1) from None


def _demo_interrupted(
    exc: KeyboardInterrupt, run_dir: Path | None, models: RoundModels | None, out: Path | None
) -> NoReturn:
    """Say what the demo stopped by Ctrl-C (SIGTERM, SIGHUP) kept, and exit as the signal says.

    ``run_dir``: None if it stopped before its run folder was made, as its data loaded.
    """
    from covey.cli._model import keep_model

    if run_dir is None:
        console.print(escape(f"{interrupted_how(exc)}: the demo stopped before its first round"))
        raise typer.Exit(exit_code(exc)) from None
    kept = None if models is None else keep_model(run_dir, models, console, to=out)
    console.print(
        escape(
            f"{interrupted_how(exc)}: the demo in {run_dir} stopped; its "
            f"history.json keeps the rounds done: `covey runs show {shlex.quote(str(run_dir))}`"
            + ("" if kept is None else f"; {kept}")
        ),
        soft_wrap=True,
    )
    raise typer.Exit(exit_code(exc)) from None


def _mount() -> None:
    from covey.analytics._cli import query_command, site_command
    from covey.cli._project import new_command, run_command
    from covey.cli._runs import runs_app
    from covey.dashboard._cli import dashboard_command
    from covey.dashboard._cli_report import report_command
    from covey.deploy._cli import server_command
    from covey.deploy._cli_certs import certs_app
    from covey.deploy._cli_client import client_command

    app.command("server", cls=HelpCommand)(server_command)
    app.command("client", cls=HelpCommand)(client_command)
    app.command("new", cls=HelpCommand)(new_command)
    app.command("run", cls=HelpCommand)(run_command)
    app.command("site", cls=HelpCommand)(site_command)
    app.command("query", cls=HelpCommand)(query_command)
    app.add_typer(certs_app, name="certs", help="Make and manage the federation's certificates.")
    app.command("dashboard", cls=HelpCommand)(dashboard_command)
    runs_app.command("report", cls=HelpCommand)(report_command)
    app.add_typer(runs_app, name="runs")


_mount()


def _without_traceback_flag(args: list[str]) -> list[str]:
    """``args`` less ``-v``/``--verbose`` when the command has no such option of its own.

    There the flag only asks :func:`main` for the traceback, as its one-line error
    says; the command would otherwise refuse it as an unknown option.
    """
    command = typer.main.get_command(app)
    for arg in args:
        sub = getattr(command, "commands", {}).get(arg)  # a group's sub-commands
        if sub is None:
            break
        command = sub
    if any(opt in ("-v", "--verbose") for param in command.params for opt in param.opts):
        return args
    return [arg for arg in args if arg not in ("-v", "--verbose")]


def _lenient(error: UnicodeError) -> tuple[str | bytes, int]:
    r"""Encode what an encoding lacks: a file name's stray bytes as they were, else ``\xe9``.

    The ellipsis rich ends a word cut to fit with (``--a…`` in a narrow help) is ``...``.
    """
    if not isinstance(error, UnicodeEncodeError):
        raise error
    chunk = error.object[error.start : error.end]
    if all(0xDC80 <= ord(c) <= 0xDCFF for c in chunk):  # bytes a file name kept (surrogateescape)
        return bytes(ord(c) - 0xDC00 for c in chunk), error.end
    if chunk == "…" * len(chunk):
        return "..." * len(chunk), error.end
    return codecs.backslashreplace_errors(error)


def _tolerant_output() -> None:
    r"""Let standard output and error write any text, whatever the locale's encoding.

    Under ``PYTHONIOENCODING=ascii`` or a Latin-1 locale, a run folder, metric or
    client name the encoding lacks is written as a ``\xe9`` escape rather than
    raising ``UnicodeEncodeError`` once the work is done.
    """
    codecs.register_error("covey.lenient", _lenient)
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "utf-8"
        if isinstance(stream, io.TextIOWrapper) and not codecs.lookup(encoding).name.startswith(
            "utf-"
        ):
            stream.reconfigure(errors="covey.lenient")


def main() -> None:
    """Run the command ``sys.argv`` names (the ``covey`` command, see :func:`covey.cli.main`).

    An unexpected error ends in one line (exit code 1), with the notes covey added
    to it (the function that raised it, its client and round); its traceback is
    shown only with ``-v``/``--verbose``. An optional library that is missing ends in
    one line naming the extra that installs it (``pip install 'covey[analytics]'``).
    Ctrl-C ends it with exit code 130 and no traceback, even before a command runs
    (as the command line is built); a command that has work to keep says what it kept.
    """
    verbose = any(arg in ("-v", "--verbose") for arg in sys.argv[1:])
    _tolerant_output()
    checked_stdout()  # output that cannot be written ends the command with an error
    try:
        code = app(
            args=_without_traceback_flag(sys.argv[1:]) if verbose else None,
            prog_name="covey",  # as the help and errors name commands (not `python -m ...`)
            standalone_mode=False,  # click's mistakes come here, to end in one line
        )
        sys.stdout.flush()  # here, not as Python exits, where its failure would be ignored
    except KeyboardInterrupt:  # outside a command (a command's own ends in typer's Exit(130))
        if verbose:
            raise
        raise SystemExit(130) from None
    except Exception as exc:
        if _from_click(exc):  # the command line itself: a misspelled option, a wrong value
            _usage_error(exc)
        if isinstance(exc, StdoutError):  # `covey runs list > /dev/full`, or with it closed
            _unwritable(exc)
        if verbose:
            raise
        if interrupt_in(exc) is not None:  # Ctrl-C that an import made an ImportError, say
            raise SystemExit(130) from None
        err = Console(stderr=True, highlight=False, emoji=False)
        extra = extra_for(exc)
        if isinstance(exc, MissingExtraError) or extra is not None:
            hint = "" if extra is None else f" (covey's {extra} extra installs it)"
            if extra is not None:
                hint += f": pip install 'covey[{extra}]'"
            # One unwrapped line, so the install command can be copied whole.
            err.print(f"[bold red]error:[/] {escape(str(exc))}{escape(hint)}", soft_wrap=True)
            raise SystemExit(1) from None
        message = str(exc).splitlines()[0] if str(exc) else ""
        # covey's notes say where the error came from (the user's function, its client).
        notes = [n for n in getattr(exc, "__notes__", ()) if isinstance(n, str) and n.strip()]
        message += "".join(f" ({' '.join(note.split())})" for note in notes)
        err.print(
            f"[bold red]error:[/] {type(exc).__name__}: {escape(message)} "
            "(run with -v for the traceback)",
            soft_wrap=True,  # one line, whatever the width: the first line of a log
        )
        raise SystemExit(1) from None
    # A command's own typer.Exit(code) comes back as its code; a finished command's None is 0.
    raise SystemExit(code if isinstance(code, int) else 0)


def _unwritable(exc: StdoutError) -> NoReturn:
    """End a command whose output could not be written: one line on standard error, exit 1."""
    stop_writing()
    err = Console(stderr=True, highlight=False, emoji=False)
    err.print(
        f"[bold red]error:[/] cannot write to standard output: {escape(str(exc.strerror))}",
        soft_wrap=True,
    )
    raise SystemExit(1)


def _from_click(exc: BaseException) -> bool:
    """Whether ``exc`` is click's (typer's) own: a usage error, or an abort at a prompt.

    Told by its module, as typer ships click under its own name in some releases.
    """
    return type(exc).__module__.rpartition(".")[0].endswith("click") or (
        type(exc).__module__ == "typer.exceptions"
    )


def _usage_error(exc: Exception) -> NoReturn:
    """End a command-line mistake click found in one line: what is wrong, and where help is.

    As covey's own mistakes end (``error: ...``, exit 2): one entry a line in a log,
    rather than a usage line, a hint and a framed box. ``covey`` or ``covey runs``
    alone has printed its help already (exit 2); an abort (end of input at a
    prompt) exits 1.
    """
    if type(exc).__name__ == "NoArgsIsHelpError":
        raise SystemExit(2)
    format_message = getattr(exc, "format_message", None)
    if not callable(format_message):  # an abort
        raise SystemExit(1)
    ctx = getattr(exc, "ctx", None)
    hint = "" if ctx is None else f" (`{ctx.command_path} --help` lists what it takes)"
    message = " ".join(str(format_message()).split())
    err = Console(stderr=True, highlight=False, emoji=False)
    err.print(f"[bold red]error:[/] {escape(message)}{escape(hint)}", soft_wrap=True)
    raise SystemExit(getattr(exc, "exit_code", 2))


if __name__ == "__main__":
    main()

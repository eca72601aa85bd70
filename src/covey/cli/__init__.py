"""The ``covey`` command line."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

import covey
from covey.core._history import History

app = typer.Typer(
    name="covey",
    help="covey: federated learning and federated analytics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()


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


#: The table's metric columns, as ``History.metric(name, source)`` names them.
ROUND_COLUMNS: tuple[tuple[str, str], ...] = (
    ("fit", "train_loss"),
    ("evaluate", "loss"),
    ("evaluate", "accuracy"),
    ("central", "loss"),
    ("central", "accuracy"),
)


def _round_table(history: History) -> Table:
    table = Table(title="Rounds", box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for column in ("round", "clients", "failed"):
        table.add_column(column, justify="right", no_wrap=True)
    for source, name in ROUND_COLUMNS:
        table.add_column(f"{source}\n{name}", justify="right", no_wrap=True)
    values = {
        (source, name): dict(history.metric(name, source))  # type: ignore[arg-type]
        for source, name in ROUND_COLUMNS
    }
    for r in history.rounds:
        cells = [
            str(r.round),
            str(len(r.fit_participants)) if r.round else "-",
            str(len(r.failures)) if r.round else "-",
        ]
        for key in ROUND_COLUMNS:
            found = values[key].get(r.round)
            cells.append("-" if found is None else f"{found:.4f}")
        table.add_row(*cells)
    return table


@app.command()
def demo(
    clients: Annotated[int, typer.Option(min=2, help="Simulated clients.")] = 100,
    rounds: Annotated[int, typer.Option(min=0, help="Rounds of FedAvg.")] = 30,
    fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of clients per round.")
    ] = 0.1,
    alpha: Annotated[
        float, typer.Option(min=1e-6, help="Dirichlet concentration of the label skew.")
    ] = 0.5,
    lr: Annotated[float, typer.Option(help="Clients' learning rate.")] = 0.5,
    epochs: Annotated[int, typer.Option(min=1, help="Local epochs per round.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of data split and sampling.")] = 0,
    backend: Annotated[str, typer.Option(help="Simulation backend: inline or process.")] = "inline",
    run_dir: Annotated[
        Path | None, typer.Option(help="Where to write history.json and plot.png.")
    ] = None,
    plot: Annotated[bool, typer.Option(help="Write plot.png.")] = True,
) -> None:
    """Train logistic regression on label-skewed digits across simulated clients with FedAvg."""
    from covey.cli._demo import DemoConfig, plot_history, run_demo

    if backend not in ("inline", "process"):
        raise typer.BadParameter("choose inline or process", param_hint="--backend")
    config = DemoConfig(
        clients=clients,
        rounds=rounds,
        fraction=fraction,
        alpha=alpha,
        lr=lr,
        epochs=epochs,
        seed=seed,
        backend=backend,
    )
    if run_dir is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"demo-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]covey demo[/]: {clients} clients, Dirichlet({alpha}) label skew on digits, "
        f"NumPy logistic regression, {rounds} rounds of FedAvg with {fraction:.0%} of clients "
        f"per round ({backend} backend)"
    )
    try:
        result = run_demo(config, run_dir=run_dir, progress=True)
    except covey.FederationError as exc:
        console.print(f"[red]run stopped:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(_round_table(result.history))
    final = result.history.rounds[-1]
    accuracy = float(final.central_metrics.get("accuracy", float("nan")))
    if plot:
        plot_history(result.history, run_dir / "plot.png", title=f"covey demo: {clients} clients")
    console.print(
        f"[bold green]final test accuracy: {accuracy:.4f}[/] after {final.round} rounds "
        f"in {result.seconds:.2f} s"
    )
    console.print(f"run folder: {run_dir} (history.json{', plot.png' if plot else ''})")


def _mount() -> None:
    from covey.analytics._cli import query_command, site_command
    from covey.dashboard._cli import dashboard_command
    from covey.dashboard._cli_report import report_command
    from covey.deploy._cli import client_command, server_command
    from covey.deploy._cli_certs import certs_app

    app.command("server")(server_command)
    app.command("client")(client_command)
    app.command("site")(site_command)
    app.command("query")(query_command)
    app.add_typer(certs_app, name="certs", help="Make and manage the federation's certificates.")
    app.command("dashboard")(dashboard_command)
    runs_app = typer.Typer(no_args_is_help=True, help="Look at recorded runs.")
    runs_app.command("report")(report_command)
    app.add_typer(runs_app, name="runs", help="Look at recorded runs.")


_mount()


def main() -> None:
    """Entry point of the ``covey`` command."""
    app()


if __name__ == "__main__":
    main()

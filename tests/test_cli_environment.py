"""The command line where it runs: piped output, narrow terminals, text that looks like markup."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

import covey
from _procs import undated
from covey.cli import app
from covey.core import Config, Metrics


class _Step(covey.Client):
    def fit(self, weights: covey.Weights, config: Config) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] + 1.0}, num_examples=1)


class _Trained(covey.Client):
    def fit(self, weights: covey.Weights, config: Config) -> covey.FitResult:
        new = {"w": weights["w"] + 1.0}
        return covey.FitResult(weights=new, num_examples=1, metrics={"train_loss": 0.5})


def _central(rnd: int, weights: covey.Weights) -> tuple[float, Metrics]:
    return 0.5, {"f1[/macro]": 0.25, "[bold]recall": 0.75}


def _with_progress(evaluate_fn: Any) -> Any:
    """One round of two clients through ``simulate(progress=True)``, judged by ``evaluate_fn``."""
    return covey.simulate(
        client_fn=lambda cid: _Step(),
        num_clients=2,
        rounds=1,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights={"w": np.zeros(2)},
        evaluate_fn=evaluate_fn,
        progress=True,
    )


def test_a_metric_named_like_markup_is_shown_as_is_on_the_progress_bar(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = _with_progress(_central)
    assert result.history.metric("f1[/macro]") == [(0, 0.25), (1, 0.25)]
    out = capsys.readouterr().out
    assert "f1[/macro] 0.2500" in out
    assert "[bold]recall 0.7500" in out


def _covey(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_a_project_folder_with_brackets_is_printed_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "40")
    folder = "w[/b]" + "x" * 60
    code, out = _covey("new", "fed", "--dir", folder)
    assert code == 0, out
    # One line each (a path cut over two lines cannot be pasted), shown as typed.
    assert f"created {folder}/fed: " in out
    assert f"next: cd '{folder}/fed' && covey run && pytest" in out  # quoted: [ is a glob
    assert (tmp_path / folder / "fed" / "pyproject.toml").is_file()


def test_a_query_whose_sql_looks_like_markup_is_a_mistake_not_a_crash() -> None:
    pytest.importorskip("sqlglot")
    code, out = _covey("query", 'SELECT "a[/b]" FROM t', "--server", "127.0.0.1:0", "--insecure")
    assert code == 2, out
    assert "MarkupError" not in out
    assert undated(out).startswith("error: ")


def test_an_answer_whose_groups_look_like_markup_is_shown_as_it_is() -> None:
    pd = pytest.importorskip("pandas")
    from covey.analytics._cli import result_table

    df = pd.DataFrame({"g[/x]": ["[/red]", "[bold]b"], "n": [1.0, 2.0]})
    df.attrs = {"sites": ["site[/1]"], "refused": ["[/why]"]}
    out = Console(file=io.StringIO(), width=200, color_system=None)
    out.print(result_table(df, 'SELECT "g[/x]", COUNT(*) FROM t GROUP BY 1'))
    text = out.file.getvalue()  # type: ignore[attr-defined]
    for shown in ('SELECT "g[/x]"', "g[/x]", "[/red]", "[bold]b", "site[/1]", "[/why]"):
        assert shown in text


def test_the_demo_table_keeps_every_figure_when_piped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "60")  # piped output is 80 columns wide unless told
    code, out = _covey("demo", "--clients", "4", "--rounds", "1", "--no-plot", "--run-dir", "r")
    assert code == 0, out
    assert "…" not in out
    header = next(line for line in out.splitlines() if "train_loss" in line)
    assert header.split()[:3] == ["round", "clients", "failed"]


def test_a_dumb_terminal_gets_the_whole_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from covey.cli._runs import print_table, round_table

    monkeypatch.setenv("TERM", "dumb")
    history = covey.simulate(
        client_fn=lambda cid: _Trained(),  # a train_loss: its column is shown
        num_clients=2,
        rounds=1,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights={"w": np.zeros(2)},
        evaluate_fn=_central,
    ).history
    out = Console(file=io.StringIO(), force_terminal=True, width=60)
    assert out.is_dumb_terminal
    print_table(round_table(history), out)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "…" not in text
    assert "\x1b[" not in text
    assert "train_loss" in text


@pytest.mark.parametrize("flag", ["-v", "--verbose"])
def test_the_traceback_flag_is_taken_by_every_command(
    flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from covey.cli import main

    monkeypatch.chdir(tmp_path)

    def failing(*args: object, **kwargs: object) -> None:  # an error of covey's own making
        raise ValueError("the run folder cannot be a folder here")

    monkeypatch.setattr("covey.cli._demo.run_demo", failing)
    args = ["covey", "demo", "--clients", "4", "--rounds", "1"]
    monkeypatch.setattr("sys.argv", args)
    with pytest.raises(SystemExit) as quiet:
        main()
    assert quiet.value.code == 1
    said = capsys.readouterr().err
    assert said.count("\n") == 1, said  # one line, however narrow the console
    assert said.rstrip().endswith("(run with -v for the traceback)"), said
    # `covey demo` has no -v of its own: the flag the error line names still works there.
    monkeypatch.setattr("sys.argv", [*args, flag])
    with pytest.raises(ValueError, match="cannot be a folder"):
        main()


def _ascii_stream() -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict", write_through=True)


def _written(stream: io.TextIOWrapper) -> bytes:
    stream.flush()
    return stream.buffer.getvalue()  # type: ignore[attr-defined]


def test_the_progress_bar_never_fails_a_run_on_an_ascii_stdout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def central(rnd: int, weights: covey.Weights) -> tuple[float, Metrics]:
        return 0.5, {"précision": 0.25}

    stdout = _ascii_stream()
    monkeypatch.setattr("sys.stdout", stdout)
    result = _with_progress(central)
    assert result.history.metric("précision")[-1] == (1, 0.25)
    assert b"pr\\xe9cision 0.2500" in _written(stdout)


def test_the_command_line_writes_any_name_on_an_ascii_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covey.cli import main

    monkeypatch.chdir(tmp_path)
    stdout = _ascii_stream()
    monkeypatch.setattr("sys.stdout", stdout)
    monkeypatch.setattr(
        "sys.argv",
        ["covey", "demo", "--clients", "4", "--rounds", "1", "--no-plot", "--run-dir", "démo"],
    )
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    assert b"run folder: d\\xe9mo (history.json)" in _written(stdout)
    assert (tmp_path / "démo" / "history.json").is_file()


def test_a_project_run_from_another_folder_prints_a_command_that_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "40")
    import shlex

    code, out = _covey("new", "envfed", "--dir", "my work")
    assert code == 0, out
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.syspath_prepend(str(tmp_path / "my work" / "envfed"))
    code, out = _covey("run", "../my work/envfed", "--set", "rounds=1", "--set", "clients=2")
    assert code == 0, out
    shown = shlex.split(out.strip().splitlines()[-1].split("`")[1])
    assert shown[:3] == ["covey", "runs", "show"]
    code, out = _covey(*shown[1:])
    assert code == 0, out
    assert "finished" in out


def test_a_certs_mistake_exits_2_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "40")
    assert _covey("certs", "init", "--dir", "fed")[0] == 0
    assert _covey("certs", "issue", "site-1", "--dir", "fed")[0] == 0
    for args in (
        ("certs", "init", "--dir", "fed"),
        ("certs", "issue", "site-1", "--dir", "fed"),
        ("certs", "revoke", "ghost", "--dir", "fed"),
    ):
        code, out = _covey(*args)
        assert code == 2, out
        assert len(out.strip().splitlines()) == 1, out
        assert out.startswith("error: ")


def test_certs_list_keeps_each_serial_whole_when_piped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography import x509

    from covey.deploy.certs._inspect import serial_hex

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "60")
    assert _covey("certs", "init", "--dir", "fed")[0] == 0
    assert _covey("certs", "issue", "site-1", "--dir", "fed")[0] == 0
    pem = (tmp_path / "fed" / "clients" / "site-1.pem").read_bytes()
    serial = serial_hex(x509.load_pem_x509_certificate(pem).serial_number)
    code, out = _covey("certs", "list", "--dir", "fed")
    assert code == 0, out
    row = next(line for line in out.splitlines() if "site-1" in line)
    assert row.split() == ["site-1", serial, row.split()[2], "no", "valid"]


def test_a_server_writes_whole_lines_to_a_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    run = Path(*(["r" * 60] * 5))  # longer than any console is wide
    args = ["server", "--app", "tiny_app:server_app", "--insecure", "--address", "127.0.0.1:0"]
    code, out = _covey(*args, "--wait-timeout", "0.2", "--run-dir", str(run))
    assert code == 1, out
    lines = undated(out).splitlines()
    listening = next(line for line in lines if "covey server listening on port" in line)
    assert listening.endswith(f"(run folder {run})"), out
    warning = (
        "WARNING serving WITHOUT TLS: anyone who can reach 127.0.0.1 can join and see the model"
    )
    assert any(line.endswith(warning) for line in lines), out
    assert lines[-2].startswith("error: round 1: only 0 of the 2 clients needed"), out
    assert lines[-1] == (
        f"continue the run from its start (no round of it finished) with `covey server "
        f"--resume {run} --app tiny_app:server_app --insecure --wait-timeout 0.2`"
    ), out


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--server", "127.0.0.1"],
            "error: --server '127.0.0.1' has no port",
        ),
        (
            ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--server", "h:99999"],
            "error: --server 'h:99999': the port must be between 1 and 65535",
        ),
        (["server", "--app", "tiny_app:server_app", "--address", "127.0.0.2"], "error: --address"),
    ],
)
def test_an_address_without_a_port_is_a_mistake_naming_its_flag(
    args: list[str], said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    code, out = _covey(*args, "--insecure")
    assert code == 2, out
    assert out.strip().splitlines()[-1].startswith(said), out
    assert not (tmp_path / "runs").exists()  # refused before any run folder is made


def test_a_site_given_a_server_without_a_port_is_told_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("duckdb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    (tmp_path / "t.csv").write_text("v\n1\n2\n")
    code, out = _covey("site", "--table", "t=t.csv", "--server", "127.0.0.1", "--insecure")
    assert code == 2, out
    assert out.strip().splitlines()[-1].startswith("error: --server '127.0.0.1' has no port")
    assert list(tmp_path.iterdir()) == [tmp_path / "t.csv"]  # no budget ledger was made


def test_an_interrupted_demo_says_where_its_rounds_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import covey.cli._demo as demo

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setattr(demo, "run_demo", interrupted)
    code, out = _covey("demo", "--run-dir", "r")
    assert code == 130, out
    assert out.strip().splitlines()[-1] == (
        "interrupted: the demo in r stopped; its history.json keeps the rounds done: "
        "`covey runs show r`"
    )


def test_piped_output_keeps_every_line_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "40")
    code, out = _covey("demo", "--clients", "4", "--rounds", "1", "--no-plot", "--run-dir", "r")
    assert code == 0, out
    assert out.splitlines()[0].endswith("per round (inline backend)"), out
    code, out = _covey("certs", "init", "--dir", "fed")
    assert code == 0, out
    assert "warning: keep fed/ca.key secret, ideally offline: whoever has it can issue " in out


def test_the_next_step_of_a_new_project_pastes_into_a_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shlex

    monkeypatch.chdir(tmp_path)
    code, out = _covey("new", "fed", "--dir", "my projects")
    assert code == 0, out
    step = next(line for line in out.splitlines() if line.startswith("next: "))
    words = shlex.split(step.removeprefix("next: "))
    assert words[:2] == ["cd", "my projects/fed"]
    assert (tmp_path / words[1] / "pyproject.toml").is_file()


class _Unwritable(io.StringIO):
    """A standard output that fails every write as ``error`` does."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error


@pytest.mark.parametrize(
    "stdout",
    [
        None,  # a windowed or embedded interpreter
        _Unwritable(BrokenPipeError(32, "Broken pipe")),  # `python train.py | head -1`
        _Unwritable(ValueError("I/O operation on closed file.")),
    ],
    ids=["none", "broken-pipe", "closed"],
)
def test_a_standard_output_that_cannot_be_written_loses_the_bar_not_the_run(
    stdout: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdout", stdout)
    result = _with_progress(_central)
    assert result.history.metric("f1[/macro]") == [(0, 0.25), (1, 0.25)]
    assert result.weights["w"].tolist() == [1.0, 1.0]


def test_the_progress_bar_shows_in_a_notebook_without_ipywidgets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import builtins
    import sys

    class ZMQInteractiveShell:  # what get_ipython() returns in a Jupyter kernel
        pass

    monkeypatch.setattr(builtins, "get_ipython", ZMQInteractiveShell, raising=False)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not installed
    result = _with_progress(_central)  # warnings are errors here: rich's would fail the run
    assert result.history.metric("f1[/macro]") == [(0, 0.25), (1, 0.25)]
    assert "round 1/1" in capsys.readouterr().out


def test_the_progress_bar_joins_a_live_display_of_the_caller(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A sweep under the caller's own rich progress: one display, not two fighting for a line."""
    from rich.progress import Progress

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with Progress(console=console, auto_refresh=False) as sweep:
        task = sweep.add_task("sweep", total=1)
        result = _with_progress(_central)
        sweep.advance(task)
    assert result.history.metric("f1[/macro]") == [(0, 0.25), (1, 0.25)]
    assert "round 1/1" in re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen.getvalue())
    assert "round" not in capsys.readouterr().out


def test_the_one_line_error_keeps_the_notes_naming_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # covey adds a note naming the user's function (its client and round) to an error
    # it raises; without -v that note is all that says where the error came from.
    import covey.cli as cli
    import covey.cli._app as commands

    def failing(args: Any = None, **kwargs: Any) -> None:
        exc = KeyError("epochs")
        exc.add_note("raised by on_client_fit_config own for client 0 in round 3")
        raise exc

    monkeypatch.setattr(commands, "app", failing)
    monkeypatch.setattr("sys.argv", ["covey", "server"])
    with pytest.raises(SystemExit):
        cli.main()
    said = capsys.readouterr().err
    assert said.count("\n") == 1, said
    assert "KeyError: 'epochs' (raised by on_client_fit_config own for client 0 in round 3)" in said
    assert said.rstrip().endswith("(run with -v for the traceback)"), said


def test_ctrl_c_before_a_command_runs_ends_with_130_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import covey.cli as cli
    import covey.cli._app as commands

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as typer builds the command line from the signatures

    monkeypatch.setattr(commands, "app", interrupted)
    monkeypatch.setattr("sys.argv", ["covey", "runs", "list"])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 130
    assert "Traceback" not in capsys.readouterr().err


def test_ctrl_c_as_python_m_covey_loads_ends_with_130_and_no_traceback() -> None:
    import subprocess
    import sys

    # Ctrl-C lands while `python -m covey` imports the command line.
    script = (
        "import builtins, runpy\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name == 'covey.cli':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "runpy.run_module('covey', run_name='__main__', alter_sys=True)\n"
    )
    src = str(Path(covey.__file__).parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr


def test_a_site_given_a_table_file_that_is_not_there_is_a_mistake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("duckdb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    code, out = _covey(
        "site", "--table", "patients=nowhere.parquet", "--server", "127.0.0.1:9", "--insecure"
    )
    assert code == 2, out  # what it was given, not the work, is wrong
    last = undated(out).strip().splitlines()[-1]
    assert last == "error: table 'patients': no file at nowhere.parquet"


def test_runs_list_takes_the_folder_as_an_argument_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covey.core import RoundRecord

    monkeypatch.setenv("COLUMNS", "250")
    (tmp_path / "study" / "one").mkdir(parents=True)
    covey.History([RoundRecord(0, central_loss=1.0)]).save(
        tmp_path / "study" / "one" / "history.json"
    )
    # As `covey dashboard runs/` and `covey runs report runs/study` take their folder.
    code, out = _covey("runs", "list", str(tmp_path / "study"))
    assert code == 0, out
    assert f"Runs in {tmp_path / 'study'}" in out
    assert " one " in out
    code, out = _covey("runs", "list", str(tmp_path / "study"), "--dir", str(tmp_path / "other"))
    assert code == 2, out
    assert "give the folder once" in out


def test_an_app_whose_own_import_fails_is_not_told_to_change_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr("sys.path", list(sys.path))
    (tmp_path / "needsmore.py").write_text("import covey\nimport not_installed_here\n")
    code, out = _covey("server", "--app", "needsmore:server_app", "--insecure")
    assert code == 2, out
    said = " ".join(out.split())
    assert said.startswith(
        "error: --app needsmore:server_app: 'needsmore' was found, but an import"
    )
    assert f"(at {tmp_path / 'needsmore.py'}:2): No module named 'not_installed_here'" in said
    assert "PYTHONPATH" not in said  # the module is where it should be
    code, out = _covey("server", "--app", "nowhere_module:server_app", "--insecure")
    assert code == 2, out
    assert "run from the folder holding it" in out


def test_a_misspelt_app_object_is_named_with_the_closest_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr("sys.path", list(sys.path))
    (tmp_path / "spelt.py").write_text("def server_app():\n    pass\n")
    code, out = _covey("server", "--app", "spelt:server_ap", "--insecure")
    assert code == 2, out
    assert out.strip() == (
        "error: --app spelt:server_ap: module 'spelt' has no attribute 'server_ap'; "
        "did you mean spelt:server_app?"
    )
    # ":key:" (the object's name and the colon after it) is text, not an emoji code.
    code, out = _covey("server", "--app", "spelt:key", "--insecure")
    assert out.strip() == "error: --app spelt:key: module 'spelt' has no attribute 'key'", out


def test_runs_list_of_a_folder_that_is_not_there_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    for args in (["runs", "list", "rnus"], ["runs", "list", "--dir", "rnus"]):
        code, out = _covey(*args)
        assert code == 2, out  # as `covey dashboard rnus` and `covey runs show rnus`
        assert out.strip() == (
            "error: rnus is not a folder; give the folder holding run folders (default runs/)"
        )
    code, out = _covey("runs", "list")  # no runs/ yet: nothing to list, no mistake
    assert code == 0, out
    assert out.startswith("no runs in runs")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["run", "--sett", "rounds=2"],
            "error: No such option: --sett (Possible options: --set) "
            "(`covey run --help` lists what it takes)",
        ),
        (
            ["demo", "--clients", "1"],
            "error: Invalid value for '--clients': Input should be greater than or equal to 2 "
            "(`covey demo --help` lists what it takes)",
        ),
        (["runz"], "error: No such command 'runz'. Did you mean 'run', 'runs'? "),
        (["runs", "show", "x", "--last", "0"], "error: Invalid value for '--last': "),
    ],
)
def test_a_mistake_the_command_line_parser_finds_ends_in_one_line(
    argv: list[str],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It ended in a usage line, a hint and an error framed in a box: five lines in a log.
    from covey.cli import main

    monkeypatch.setenv("COLUMNS", "40")
    for verbose in ([], ["-v"]):  # no traceback to show: the same line
        monkeypatch.setattr("sys.argv", ["covey", *argv, *verbose])
        with pytest.raises(SystemExit) as stopped:
            main()
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith(said), err


def test_the_command_alone_still_prints_its_help(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from covey.cli import main

    for argv, code in ((["runs"], 2), (["runs", "--help"], 0), (["--version"], 0)):
        monkeypatch.setattr("sys.argv", ["covey", *argv])
        with pytest.raises(SystemExit) as stopped:
            main()
        assert stopped.value.code == code
        out = capsys.readouterr()
        assert ("covey runs" in out.out) if argv[0] == "runs" else out.out.startswith("covey ")
        assert "error" not in out.err


def test_ctrl_c_as_the_covey_command_loads_ends_with_130_and_no_traceback() -> None:
    import subprocess
    import sys

    # The installed `covey` script runs `from covey.cli import main`, then `main()`:
    # Ctrl-C as the commands loaded (a second on a busy machine) printed a traceback.
    script = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def imp(name, globals=None, locals=None, fromlist=(), level=0):\n"
        "    if name == 'covey.cli._app' or (name == 'covey.cli' and '_app' in fromlist):\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, globals, locals, fromlist, level)\n"
        "from covey.cli import main\n"
        "builtins.__import__ = imp\n"
        "sys.argv = ['covey', 'runs', 'list']\n"
        "sys.exit(main())\n"
    )
    src = str(Path(covey.__file__).parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    light = subprocess.run(
        [sys.executable, "-c", "import sys, covey.cli; print('typer' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
    )
    assert light.stdout.strip() == "False", light.stderr  # what the script imports is light


@pytest.mark.parametrize("command", ["run", "server", "client"])
def test_the_help_of_a_command_s_own_verbose_flag_says_it_shows_the_traceback(
    command: str,
) -> None:
    # `covey run -v` was "Log more." though a simulated run logs nothing more: what
    # it does there is show an error's traceback, as every command's -v does.
    result = CliRunner(env={"COLUMNS": "250"}).invoke(app, [command, "--help"])
    assert result.exit_code == 0
    (line,) = [line for line in result.output.splitlines() if "--verbose" in line]
    assert "traceback" in line, line

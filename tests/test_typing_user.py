"""Code written the way the docs show type-checks under ``mypy --strict`` against covey.

covey ships ``py.typed``: a user's type checker reads its annotations, so an
annotation narrower than what covey takes fails a user's correct program. The
checks run mypy (the ``dev`` extra) on a project made by ``covey new``, on
scripts using the public API as the README and the guides do, and on the
guides' own examples.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import covey
from test_readme import PAGES, blocks

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

SCRIPT = """
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import covey
from covey.data import dirichlet, load_digits
from covey.models import LogisticClient, logistic_init
from covey.secagg import Identity, new_signing_key, secure

data = load_digits()
parts = dirichlet(data.y_train, num_clients=4, alpha=0.5, seed=0)


class Shift(covey.Client):
    def fit(self, weights: covey.Weights, config: covey.Config) -> covey.FitResult:
        metrics: dict[str, float] = {"train_loss": 0.5}
        delta = {"w": np.ones(2)}
        return covey.FitResult(delta=delta, num_examples=10, metrics=metrics)

    def evaluate(self, weights: covey.Weights, config: covey.Config) -> covey.EvaluateResult:
        metrics: dict[str, float] = {"accuracy": 0.5}
        return covey.EvaluateResult(loss=0.1, num_examples=10, metrics=metrics)


def mean_loss(results: Sequence[tuple[int, covey.Metrics]]) -> dict[str, float]:
    return {"clients": float(len(results))}


strategy = covey.FedAvg(
    fit_metrics=mean_loss,
    evaluate_metrics=lambda results: {"epochs": sorted(m["epochs"] for _, m in results)},
)
result = covey.simulate(lambda cid: Shift(), 4, 1, strategy, {"w": np.zeros(2)})

keys = {name: new_signing_key() for name in ["site-1", "site-7"]}
directory = {name: public for name, (_, public) in keys.items()}
client = LogisticClient(7, *data.client(parts[3]))
client.secagg_identity = Identity("site-7", keys["site-7"][0], directory)
signed = secure(covey.FedAvg(), clip_range=0.5, signed=True, directory=directory)
weights = logistic_init(64, 10)
"""


@pytest.mark.slow
def test_a_new_project_and_documented_usage_type_check_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="the dev extra installs mypy")
    made = subprocess.run(
        [sys.executable, "-m", "covey", "new", "clinic"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    project = tmp_path / "clinic"
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(SCRIPT), encoding="utf-8")
    # covey's own modules are checked by the project's mypy run; here only the user's
    # code is, against covey's annotations.
    paths = [project / "clinic", project / "tests" / "test_clinic.py", script]
    done = _mypy_over(tmp_path, STRICT.format(path=f"{SRC}, {project}"), paths)
    assert done.returncode == 0, done.stdout + done.stderr


def test_results_take_metrics_as_any_mapping_or_none() -> None:
    from types import MappingProxyType

    fit = covey.FitResult(delta={}, num_examples=1, metrics=MappingProxyType({"a": 1.0}))
    assert fit.metrics == {"a": 1.0}
    assert type(fit.metrics) is dict
    evaluated = covey.EvaluateResult(loss=0.5, num_examples=1, metrics=MappingProxyType({"b": 2}))
    assert evaluated.metrics == {"b": 2}
    assert type(evaluated.metrics) is dict
    assert covey.FitResult(delta={}, num_examples=1, metrics=None).metrics == {}
    assert covey.EvaluateResult(loss=0.5, num_examples=1, metrics=None).metrics == {}


NUMPY_NUMBERS = """
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import covey
from covey import privacy
from covey.analytics import Policy, Site, query
from covey.deploy import connect
from covey.secagg import Noise, secure

f32, i64 = np.float32, np.int64


class Client(covey.Client):
    def fit(self, weights: covey.Weights, config: covey.Config) -> covey.FitResult:
        return covey.FitResult(
            delta={"w": np.ones(2)},
            num_examples=i64(5),
            metrics={
                "train_loss": f32(0.5), "steps": i64(3), "ok": np.bool_(True), "h": np.ones(2)
            },
        )

    def evaluate(self, weights: covey.Weights, config: covey.Config) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=f32(0.25), num_examples=i64(5), metrics={"a": f32(1)})


def central(rnd: int, weights: covey.Weights) -> tuple[np.float32, dict[str, np.float32]]:
    return f32(0.5), {"accuracy": f32(0.75)}


def own_central(rnd: int, weights: covey.Weights) -> tuple[float, covey.Metrics]:
    return 0.5, {"accuracy": 0.75}


def histograms(results: Sequence[tuple[int, covey.Metrics]]) -> dict[str, list[float]]:
    kept: list[covey.Metrics] = [m for _, m in results]
    return {"h": [float(np.sum(m["h"])) for m in kept]}


strategy = covey.FedAvg(
    fraction_fit=f32(0.5), min_fit_clients=i64(2), min_available_clients=i64(2),
    min_evaluate_clients=i64(2), evaluate_every=i64(1), fit_metrics=histograms,
)
result = covey.simulate(
    lambda cid: Client(), i64(4), i64(2), strategy, {"w": np.zeros(2)}, central,
    seed=i64(1), num_workers=i64(1), client_cache=i64(4), round_timeout=f32(30.0),
)
assert result.history.metric("accuracy") == [(0, 0.75), (1, 0.75), (2, 0.75)]
assert result.history[2].fit_metrics["h"] == [2.0, 2.0]
own = covey.Strategy(
    fraction_fit=f32(0.5), min_fit_clients=i64(2), fraction_evaluate=np.float64(0.5),
    min_evaluate_clients=i64(2), evaluate_every=i64(2), min_available_clients=i64(2),
)
assert type(own.fraction_fit) is float and type(own.min_fit_clients) is int
covey.simulate(lambda cid: Client(), 2, i64(1), own, {"w": np.zeros(2)}, own_central,
               round_timeout=i64(30))
noise = Noise("gaussian", sigma=f32(2000), clip=f32(1), delta=1e-5, target_epsilon=i64(8))
assert noise.settings()["sigma"] == 2000.0

z = privacy.calibrate(target_epsilon=3.0, delta=1e-5, sampling_rate=0.5, rounds=i64(3))
assert privacy.epsilon(z, 0.5, i64(3), 1e-5) <= 3.0
dp = privacy.central(covey.FedAvg(), noise_multiplier=z, clip=f32(0.5), delta=1e-5)
secured = secure(covey.FedAvg(), clip_range=f32(0.5), max_examples=i64(1000))


def deployed() -> Any:
    return covey.serve(covey.FedAvg(), i64(3), None, seed=i64(0), max_clients=i64(10),
                       round_retries=i64(1), round_timeout=f32(30), wait_timeout=f32(60),
                       heartbeat=i64(5))


def joined(client: covey.Client) -> Any:
    return connect(client, "127.0.0.1:1", insecure=True, max_attempts=i64(1),
                   retry_for=f32(5), backoff=f32(0.5), max_backoff=f32(2), heartbeat=f32(5))


policy = Policy(bounds={"age": (f32(0), i64(100))}, min_group_size=i64(2), epsilon=f32(5),
                delta=f32(1e-6), max_epsilon=i64(1))
assert type(policy.min_group_size) is int and type(policy.epsilon) is float


def asked(sites: list[Site]) -> Any:
    return query(sites, "SELECT AVG(age) FROM p", epsilon=f32(1), delta=f32(1e-6),
                 precision=f32(0.1), timeout=i64(30))
"""


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` of ``source`` as a user's script, against covey's annotations."""
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(source), encoding="utf-8")
    return _mypy_over(tmp_path, STRICT.format(path=SRC), [script])


#: mypy's settings for a user's code: strict, covey's own modules not reported.
STRICT = "[mypy]\nstrict = True\nignore_missing_imports = True\nmypy_path = {path}\n" + (
    "[mypy-covey.*]\nignore_errors = True\n"
)


def _mypy_over(tmp_path: Path, config: str, paths: list[Path]) -> subprocess.CompletedProcess[str]:
    """Run mypy with the settings ``config`` over ``paths``, its cache under ``tmp_path``."""
    ini = tmp_path / "mypy.ini"
    ini.write_text(config, encoding="utf-8")
    return subprocess.run(
        [
            *(sys.executable, "-m", "mypy", "--config-file", str(ini)),
            *("--cache-dir", str(tmp_path / "cache"), *map(str, paths)),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "MYPYPATH": ""},
    )


@pytest.mark.slow
def test_numpy_numbers_covey_takes_type_check_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="the dev extra installs mypy")
    done = _mypy(tmp_path, NUMPY_NUMBERS)
    assert done.returncode == 0, done.stdout + done.stderr
    code = compile(textwrap.dedent(NUMPY_NUMBERS), "user_script.py", "exec")
    with pytest.warns(UserWarning, match="without signed keys"):
        exec(code, {})  # and covey takes them as the script gives them


@pytest.mark.slow
def test_a_misspelt_name_of_a_lazy_package_is_a_type_error(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="the dev extra installs mypy")
    source = """
    import covey.cli
    import covey.dashboard
    import covey.trackers
    from covey.analytics import Polcy

    print(Polcy, covey.trackers.TensorBoardLoger, covey.dashboard.read_runn, covey.cli.ap)
    """
    done = _mypy(tmp_path, source)
    assert done.returncode == 1, done.stdout + done.stderr
    for name in ["Polcy", "TensorBoardLoger", "read_runn", "ap"]:
        assert f'has no attribute "{name}"' in done.stdout, done.stdout


QUERY_AND_CONNECT = """
from __future__ import annotations

from typing import Any

import covey
from covey.analytics import Policy, Site, query
from covey.deploy import connect
from covey.secagg import ThreatModel
from covey.transport import Transport


def ask(sites: list[Site], server: Transport, tables: dict[str, Any]) -> None:
    threat = ThreatModel(corrupt_rate=0.1)
    query(sites, "SELECT COUNT(*) FROM p", threat=threat)
    query(server, "SELECT COUNT(*) FROM p", timeout=30.0)
    query(Site(tables, Policy()), "SELECT COUNT(*) FROM p", secure=False)
    query({"p": 1}, "SELECT COUNT(*) FROM p")
    query(sites, "SELECT COUNT(*) FROM p", threat=0.1)


def join(client: covey.Client) -> None:
    connect(client, "127.0.0.1:1", insecure=True)
    connect(Site({}, Policy()), "127.0.0.1:1", insecure=True)
    connect(lambda cid: client, "127.0.0.1:1", insecure=True)
"""


@pytest.mark.slow
def test_what_query_and_connect_cannot_take_is_a_type_error(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="the dev extra installs mypy")
    done = _mypy(tmp_path, QUERY_AND_CONNECT)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 3, done.stdout
    assert 'Argument 1 to "query" has incompatible type "dict[str, int]"' in errors[0]
    assert 'Argument "threat" to "query" has incompatible type "float"' in errors[1]
    assert '"Callable[[Any], Client]"; expected "ClientLike"' in errors[2]


_FRAGMENT = re.compile(r"^\s*<!--\s*fragment:\s*\S[^>]*-->\s*$")
DOCS_CONFIG = (
    "[mypy]\nstrict = True\nignore_missing_imports = True\nmypy_path = {src}\n"
    # The examples read like scripts, unannotated; their bodies are checked all the same.
    "allow_untyped_defs = True\nallow_incomplete_defs = True\nallow_untyped_calls = True\n"
    "check_untyped_defs = True\n[mypy-covey.*]\nignore_errors = True\n"
)


def page_scripts(folder: Path) -> dict[Path, tuple[str, list[tuple[int, str]]]]:
    """Each page's Python blocks as one script in ``folder``: its page, and each block's line.

    A page's blocks run in one namespace (``tests/test_readme.py``), so they are
    checked as one script. Left out: a block marked ``<!-- skip: ... -->`` (it
    does not run either) and one marked ``<!-- fragment: what is missing -->``,
    which runs but uses names the reader supplies (``batches``, ``lr``).
    """
    scripts: dict[Path, tuple[str, list[tuple[int, str]]]] = {}
    for page in ["README.md", *PAGES]:
        lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
        kept = [
            (b.line, b.code)
            for b in blocks(ROOT / page)
            if b.lang == "python" and b.skip is None and not _FRAGMENT.match(lines[b.line - 3])
        ]
        if kept:
            scripts[folder / (re.sub(r"\W", "_", page.removesuffix(".md")) + ".py")] = page, kept
    return scripts


def _page_line(blocks_of: list[tuple[int, str]], line: int) -> int:
    """The line of the page that line ``line`` of its script (blocks joined) comes from."""
    for start, code in blocks_of:
        count = code.count("\n")
        if line <= count:
            return start + line - 1
        line -= count
    return -1


@pytest.mark.slow
def test_the_documentation_examples_type_check_against_covey(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="the dev extra installs mypy")
    scripts = page_scripts(tmp_path)
    assert len(scripts) >= 10, sorted(scripts)
    for script, (_, kept) in scripts.items():
        script.write_text("".join(code for _, code in kept), encoding="utf-8")
    done = _mypy_over(tmp_path, DOCS_CONFIG.format(src=SRC), list(scripts))
    where = {script.name: page for script, page in scripts.items()}
    said = []
    for line in done.stdout.splitlines():  # errors named by page and line
        name, _, rest = line.partition(":")
        number, _, message = rest.partition(":")
        if name in where and number.isdigit():
            page, kept = where[name]
            said.append(f"{page}:{_page_line(kept, int(number))}:{message}")
    assert done.returncode == 0, "\n".join(said) or done.stdout + done.stderr

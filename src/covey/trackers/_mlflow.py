"""Log each round to MLflow: one MLflow run per federated run, one step per round."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from covey.core import RoundRecord
from covey.trackers._scalars import log_folder, round_scalars

_MAX_PARAMS = 100  # MLflow's limit per log_batch call
_MAX_NAME = 250  # MLflow's longest metric or param name
_REFUSED = re.compile(r"[^\w\-. :/]")
"""Characters MLflow refuses in metric and param names (it keeps the rest)."""


def mlflow_name(name: str) -> str:
    """``name`` as MLflow can store it: each character it refuses becomes ``_``.

    MLflow also refuses a name that is not a normalized path (``a//b``, ``x/``,
    ``../x``): empty parts are dropped, and ``.`` or ``..`` parts become ``_``.
    A name longer than MLflow's 250 characters is cut, and ends with ``-`` and
    8 hex digits of a hash of the whole name, so that names alike at the
    start stay apart.

    Example:
        >>> mlflow_name("central/recall@5")
        'central/recall_5'
    """
    parts = _REFUSED.sub("_", name).split("/")
    out = "/".join("_" if p in (".", "..") else p for p in parts if p) or "_"
    return out if len(out) <= _MAX_NAME else _tagged(out[: _MAX_NAME - 9], name)


def _tagged(stem: str, name: str) -> str:
    """``stem-`` and 8 hex digits of a hash of ``name``."""
    return f"{stem}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def mlflow_names(names: Iterable[str]) -> dict[str, str]:
    """Each of ``names`` as :func:`mlflow_name` gives it, kept apart from the others.

    Two names MLflow would store as one (``recall@5`` and ``recall_5``) would
    mix their values in one metric: each name that :func:`mlflow_name`
    changed and that meets another is given ``-`` and 8 hex digits of a
    hash of its own name instead.
    """
    wanted = {name: mlflow_name(name) for name in names}
    taken: dict[str, int] = {}
    for stored in wanted.values():
        taken[stored] = taken.get(stored, 0) + 1
    return {
        name: stored
        if taken[stored] == 1 or stored == name
        else _tagged(stored[: _MAX_NAME - 9], name)
        for name, stored in wanted.items()
    }


def _tracking_uri(store: str | Path) -> str:
    """A tracking URI: a folder becomes a local file store (``file:`` URI)."""
    text = str(store)
    if "://" in text or text.startswith("file:"):
        uri = text
    else:
        uri = log_folder(text, "MLflowLogger").resolve().as_uri()
    if uri.startswith("file:"):
        # MLflow 3 keeps the file store in maintenance mode behind this documented
        # opt-in; a local folder is what this logger is for.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def _unsupported(uri: str, exc: Exception) -> str:
    """Why MLflow refused ``uri``, and what to install when it is a database."""
    text = str(exc).strip()
    first = text.splitlines()[0].split(". ")[0].strip() if text else type(exc).__name__
    database = uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql")
    return f"MLflow cannot use the tracking URI {uri!r}: {first}" + (
        "; a database store needs the full MLflow package (pip install mlflow), as "
        "covey[mlflow] installs mlflow-skinny, which logs to a folder or a tracking server"
        if database
        else ""
    )


class MLflowLogger:
    """A round callback logging every round's numbers as MLflow metrics (step = round).

    Args:
        store: A folder for a local MLflow file store (``mlflow ui --backend-store-uri
            DIR`` shows it), or any MLflow tracking URI.
        experiment: The experiment's name (created if missing).
        run_name: The MLflow run's name.
        params: Settings to record with the run (strategy, clients, ...).
        run_id: Continue this MLflow run instead of starting one, e.g. when a
            deployed run is resumed (``serve(..., resume=True)``): the rounds
            after the checkpoint are logged to the same run. Its params stay;
            ``params`` adds new ones and must not change a logged value.

    Raises:
        ValueError: MLflow cannot use ``store`` (e.g. a database URI without the
            full ``mlflow`` package), ``run_id`` names no run of ``experiment`` in ``store``, or
            ``params`` changes a value the run already holds.

    Attributes:
        run_id: The MLflow run's id.

    Example:
        >>> import tempfile
        >>> from covey.core import RoundRecord
        >>> with MLflowLogger(tempfile.mkdtemp(), run_name="demo") as log:
        ...     log(RoundRecord(round=1, central_loss=0.25))
    """

    def __init__(
        self,
        store: str | Path,
        *,
        experiment: str = "covey",
        run_name: str | None = None,
        params: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> None:
        """Create (or reuse) the experiment and start a run in it, or continue ``run_id``."""
        uri = _tracking_uri(store)
        try:
            self.client = MlflowClient(tracking_uri=uri)
        except MlflowException as exc:
            raise ValueError(_unsupported(uri, exc)) from exc
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id if found is not None else self.client.create_experiment(experiment)
        )
        given = {str(k): str(v) for k, v in (params or {}).items()}
        names = mlflow_names(given)
        wanted = {names[k]: v for k, v in given.items()}
        if run_id is None:
            self.run_id: str = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        else:
            wanted = self._continue(run_id, experiment_id, experiment, wanted)
        items = [Param(k, v) for k, v in wanted.items()]
        for i in range(0, len(items), _MAX_PARAMS):
            self.client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS])
        self._closed = False
        self._names: dict[str, str] = {}  # each tag's MLflow name, kept for the run

    def _continue(
        self, run_id: str, experiment_id: str, experiment: str, wanted: dict[str, str]
    ) -> dict[str, str]:
        """Reopen ``run_id``; return the params of ``wanted`` it does not hold yet."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            run = None
        if run is None or run.info.experiment_id != experiment_id:
            raise ValueError(f"run_id {run_id!r}: no such MLflow run in experiment {experiment!r}")
        held = run.data.params
        changed = sorted(k for k, v in wanted.items() if k in held and not _same(held[k], v))
        if changed:
            raise ValueError(
                f"run_id {run_id!r}: MLflow keeps a run's params; "
                + ", ".join(f"{k} is {held[k]!r}, not {wanted[k]!r}" for k in changed)
            )
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        return {k: v for k, v in wanted.items() if k not in held}

    def __call__(self, record: RoundRecord) -> None:
        """Log the round's scalars at step ``record.round``.

        A character MLflow refuses in a name (``@``, ``(``, ...) is logged as ``_``:
        ``recall@5`` becomes ``central/recall_5`` (see :func:`mlflow_names` for
        names that would then meet, and names over MLflow's 250 characters).
        The tags are those of :func:`round_scalars`: a metric named ``loss`` is
        logged as ``central/loss_metric`` (``federated/``, ``fit/``), never over
        the round's ``central/loss``.
        """
        stamp = int(time.time() * 1000)
        scalars = round_scalars(record)
        names = self._names_of(scalars)
        metrics = [Metric(names[tag], value, stamp, record.round) for tag, value in scalars.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def _names_of(self, tags: Iterable[str]) -> dict[str, str]:
        """The MLflow name of each tag: the one it was first logged under, for the whole run.

        Tags new in this round are named by :func:`mlflow_names`; one whose name
        an earlier tag holds (``recall@5`` logged first, ``recall_5`` from a later
        round) ends with ``-`` and 8 hex digits of a hash of its own name instead.
        """
        new = [tag for tag in tags if tag not in self._names]
        if new:
            taken = set(self._names.values())
            for tag, stored in mlflow_names(new).items():
                if stored in taken:
                    stored = _tagged(stored[: _MAX_NAME - 9], tag)
                self._names[tag] = stored
                taken.add(stored)
        return self._names

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow run (``"FINISHED"``, ``"FAILED"`` or ``"KILLED"``)."""
        if not self._closed:
            self.client.set_terminated(self.run_id, status=status)
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close("FINISHED" if exc_type is None else "FAILED")


def _same(held: str, given: str) -> bool:
    """Whether a param MLflow holds is ``given``, as MLflow stored it (cut to its limit)."""
    if held == given:
        return True
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as most
    except ImportError:  # pragma: no cover - an MLflow without it
        most = 6000
    return len(held) >= most and len(given) > len(held) and given.startswith(held)

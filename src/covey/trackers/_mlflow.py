"""Log each round to MLflow: one MLflow run per federated run, one step per round."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import time
import unicodedata
from collections.abc import Collection, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from covey.core import RoundRecord
from covey.trackers._scalars import log_folder, name_hash, refuse_another_run, round_scalars

_MAX_PARAMS = 100  # MLflow's limit per log_batch call
_MAX_PART = 200
"""The most UTF-8 bytes of a name's last part: a local store keeps it as a file
name (at most 255 bytes), and a name with its group stays within MLflow's 250
characters."""
_MAX_GROUP = 40  # the most characters of a group kept as a folder
_REFUSED = re.compile(r"[^\w\-. :]")
"""Characters MLflow refuses in a name's part, and ``/`` (which would make a folder)."""
_TAGGED = re.compile(r"-[0-9a-f]{8}")

logger = logging.getLogger("covey")


def mlflow_name(name: str, *, group: bool = True, apart: bool = False) -> str:
    """``name`` as MLflow can store it, the same in every process and run.

    A name MLflow stores as it is stays as it is: ``central/accuracy``. Any
    other is changed, and ends with ``-`` and 8 hex digits of a hash of the
    whole name, so that no two names meet (``recall@5`` and ``recall_5``) and a
    resumed run finds each metric under its name: each character MLflow refuses
    becomes ``_``, as does a ``/`` after the group's (a local store makes
    ``acc/top5`` a folder, which ``acc`` cannot be beside it), a leading ``.``
    becomes ``_``, and a name over 200 bytes in UTF-8 is cut to fit.
    A name already ending with ``-`` and 8 hex digits is changed too, so that
    none is taken for another's.

    Args:
        name: A tag of :func:`round_scalars` (``group/metric``), or a param's name.
        group: Keep the part before the first ``/`` as a folder (the tag's group,
            e.g. ``central``); ``False`` for params, whose names have no group.
        apart: Add the hash even to a name MLflow would store as it is
            (:func:`mlflow_names` sets it apart from one that differs only in case).

    Example:
        >>> mlflow_name("central/accuracy")
        'central/accuracy'
        >>> mlflow_name("central/recall@5")
        'central/recall_5-cf682a9a'
    """
    head, slash, rest = name.partition("/") if group else ("", "", name)
    if not slash or not _kept(head) or len(head) > _MAX_GROUP:
        head, slash, rest = "", "", name  # no group, or one MLflow cannot keep as it is
    if _kept(rest) and not apart:
        return head + slash + rest
    stem = _REFUSED.sub("_", rest)
    stem = ("_" + stem[1:]) if stem.startswith(".") else stem or "_"
    stem = stem.encode()[: _MAX_PART - 9].decode(errors="ignore")
    return f"{head}{slash}{stem}-{name_hash(name)}"


def _kept(part: str) -> bool:
    """Whether MLflow (and a local store) keeps ``part`` of a name as it is."""
    return (
        bool(part)
        and _REFUSED.search(part) is None
        and not part.startswith(".")
        and len(part.encode(errors="surrogatepass")) <= _MAX_PART
        and _TAGGED.fullmatch(part[-9:]) is None
    )


def folded(name: str) -> str:
    """``name`` as a case-insensitive file system (macOS, Windows) compares it."""
    return unicodedata.normalize("NFC", name).casefold()


def mlflow_names(
    names: Iterable[str],
    *,
    group: bool = True,
    taken: Collection[str] = (),
    held: Collection[str] = (),
) -> dict[str, str]:
    """Each of ``names`` as :func:`mlflow_name` gives it; no two meet, case aside.

    A local MLflow store keeps each name as a file, and a case-insensitive file
    system (macOS, Windows) takes ``central/Acc`` and ``central/acc`` for one
    file, mixing their values. So a name that differs from an earlier one (of
    ``names`` or ``taken``) only in case ends with ``-`` and 8 hex digits of a
    hash of it, as a name MLflow cannot keep does: ``central/acc`` stays, and
    ``central/Acc`` becomes ``central/Acc-…``. Two hashes that meet (1 in 4
    billion) give the later name 16 hex digits instead.

    Args:
        names: Tags of :func:`round_scalars`, or params' names.
        group: As for :func:`mlflow_name`.
        taken: MLflow names already given to other names, in this process.
        held: MLflow names the run already holds (a resumed run): a name whose
            MLflow name is one of them keeps it.

    Example:
        >>> mlflow_names(["central/acc", "central/Acc"])
        {'central/acc': 'central/acc', 'central/Acc': 'central/Acc-49a40d58'}
    """
    used = set(taken)
    seen = {folded(n) for n in (*used, *held)}
    out: dict[str, str] = {}
    for name in names:
        stored = mlflow_name(name, group=group)
        if stored not in used and stored not in held and folded(stored) in seen:
            stored = mlflow_name(name, group=group, apart=True)  # Acc beside acc
        if stored in used or (stored not in held and folded(stored) in seen):
            digest = hashlib.sha256(name.encode(errors="surrogatepass")).hexdigest()
            stored = f"{stored[:-9]}-{digest[:16]}"
        out[name] = stored
        used.add(stored)
        seen.add(folded(stored))
    return out


def _tracking_uri(store: str | Path) -> str:
    """A tracking URI: a folder becomes a local file store (``file:`` URI)."""
    text = str(store)
    if "://" in text or text.startswith("file:"):
        uri = text
    else:
        uri = log_folder(text, "MLflowLogger").resolve().as_uri()
    if uri.lower().startswith("file:"):
        uri = "file:" + uri[5:]  # MLflow takes only a lower-case FILE: for a file store
        # MLflow 3 keeps the file store in maintenance mode behind this documented
        # opt-in; a local folder is what this logger is for.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
_SAID_SCHEMES = ("", "file", "http", "https")  # named first in the message, as what they are


def _scheme_refusal(uri: str, exc: MlflowException) -> str | None:
    """Why ``uri`` names a store this MLflow cannot log to (its scheme is unknown), or None.

    MLflow refuses a URI of a scheme no store (built in, or of a plugin) is
    registered for with an error about its model registry; that error lists the
    schemes it knows (``supported_uri_schemes``). Any other error: None.
    """
    schemes = getattr(exc, "supported_uri_schemes", None)
    if not isinstance(schemes, Collection) or isinstance(schemes, str):
        return None
    scheme = uri.split(":", 1)[0].lower() if "://" in uri else ""
    others = sorted({str(s) for s in schemes}.difference(_SAID_SCHEMES))
    more = f", or a {', '.join(f'{s}://' for s in others)} URI" if others else ""
    return (
        f"MLflow cannot use the tracking URI {uri!r}: this MLflow knows no {scheme!r} "
        "store; give a folder (a local file store), a file: URI, or an http:// or "
        f"https:// tracking server{more}"
    )


def _unsupported(uri: str, exc: MlflowException) -> str:
    """Why MLflow refused ``uri`` (its scheme, or ``exc``); what to install for a database."""
    said = _scheme_refusal(uri, exc)
    if said is None:
        text = str(exc).strip()
        first = text.splitlines()[0].split(". ")[0].strip() if text else type(exc).__name__
        said = f"MLflow cannot use the tracking URI {uri!r}: {first}"
    database = uri.split(":", 1)[0].split("+", 1)[0] in _DATABASES
    return said + (
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
            ``params`` adds new ones and must not change a logged value. A point
            the run already holds (a metric's value at a round) is not logged
            again (a resumed run calls its callbacks again with the round whose
            callbacks had not all returned); a round run again with other values is.

    Raises:
        ValueError: MLflow cannot use ``store`` (e.g. a database URI without the
            full ``mlflow`` package), MLflow refuses ``experiment`` as a name (empty,
            over 500 characters), ``experiment`` or ``run_id`` was deleted (MLflow
            takes no run into a deleted experiment until it is restored), ``run_id``
            names no run of ``experiment`` in ``store``, or ``params`` changes a value
            the run already holds.

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
        experiment_id = self._experiment(experiment)
        given = {str(k): str(v) for k, v in (params or {}).items()}
        names = mlflow_names(given, group=False)
        self._held: set[str] = set()
        self._before: dict[str, dict[int, list[float]]] = {}  # the held points, read once
        wanted = {names[k]: v for k, v in given.items()}
        if run_id is None:
            self.run_id: str = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        else:
            wanted = self._continue(run_id, experiment_id, experiment, wanted)
        items = [Param(k, v) for k, v in wanted.items()]
        for i in range(0, len(items), _MAX_PARAMS):
            self.client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS])
        self._closed = False
        self._last: int | None = None  # the round logged last
        self._names: dict[str, str] = {}  # each tag's MLflow name, kept for the run
        self._warned = False
        self._refused: set[str] = set()  # tags whose non-finite values the store refused

    def _experiment(self, experiment: str) -> str:
        """The id of the active experiment named ``experiment``, created if missing.

        Raises:
            ValueError: MLflow refuses the name (empty, too long), or the experiment
                was deleted (MLflow keeps a deleted experiment's name, and takes no
                run into it, until it is restored or removed for good).
        """
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            try:
                return self.client.create_experiment(experiment)
            except MlflowException as exc:
                said = str(exc).strip().splitlines()[0] if str(exc).strip() else "refused"
                raise ValueError(
                    f"MLflowLogger: experiment {experiment!r} cannot be created: {said}"
                ) from exc
        if found.lifecycle_stage != "active":
            raise ValueError(
                f"MLflowLogger: experiment {experiment!r} (id {found.experiment_id}) is "
                "deleted, and MLflow takes no run into it: restore it "
                f"(MlflowClient.restore_experiment({found.experiment_id!r})), remove it for "
                "good (mlflow gc), or give another experiment name"
            )
        return str(found.experiment_id)

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
        if run.info.lifecycle_stage != "active":
            raise ValueError(
                f"run_id {run_id!r}: that MLflow run was deleted, and MLflow logs nothing "
                f"more to it: restore it (MlflowClient.restore_run({run_id!r})), or start a "
                "new run (no run_id)"
            )
        self._held = set(run.data.metrics)  # the names of the metrics logged before
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

        A name MLflow cannot store as it is (``recall@5``, ``acc/top5``, a name
        over 200 bytes) is logged under a name of its own, the same in every
        process: ``central/recall@5`` becomes ``central/recall_5-cf682a9a`` (see
        :func:`mlflow_name`), so a resumed run (``run_id``) logs each metric
        under the name it had. The tags are those of :func:`round_scalars`: a
        metric named ``loss`` is logged as ``central/loss_metric``
        (``federated/``, ``fit/``), never over the round's ``central/loss``.
        A NaN or infinite value (a diverging run) is logged as it is; a tracking
        store that refuses it has the round's other values logged and a warning,
        once per metric, naming the metric and the round.

        Raises:
            ValueError: the logger is closed (its MLflow run ended), or the round
                is before the last one it logged: a second run would mix its rounds
                into the first's.
        """
        if self._closed:
            raise ValueError(
                f"MLflowLogger: MLflow run {self.run_id} is closed (its logger left its `with` "
                "block or was closed): make a new MLflowLogger for another run, or give it "
                f"run_id={self.run_id!r} to log more rounds to this one"
            )
        refuse_another_run(
            "MLflowLogger",
            self._last,
            record.round,
            "make a new MLflowLogger (a new MLflow run) for each run",
        )
        self._last = record.round
        stamp = int(time.time() * 1000)
        scalars = round_scalars(record, nonfinite=True)
        names = self._names_of(scalars)
        metrics = [
            Metric(names[tag], value, stamp, record.round)
            for tag, value in scalars.items()
            if not self._logged_before(names[tag], record.round, value)
        ]
        if not metrics:
            return
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except MlflowException:
            kept = [m for m in metrics if math.isfinite(m.value)]
            if len(kept) == len(metrics):
                raise  # refused for another reason than a NaN or infinity
            self.client.log_batch(self.run_id, metrics=kept)  # raises if refused anyway
            for tag, value in scalars.items():
                if not math.isfinite(value):
                    self._warn_nonfinite(tag, value, record.round)

    def _logged_before(self, name: str, step: int, value: float) -> bool:
        """Whether the continued run (``run_id``) holds ``value`` for ``name`` at ``step``.

        A resumed run calls its callbacks again with the saved round whose callbacks
        had not all returned when it stopped: a point MLflow already holds is not
        logged twice. A round run again (its values differ) is logged. Each metric
        the run held is read once, the first time it is logged.
        """
        if name not in self._held:
            return False
        if name not in self._before:
            points: dict[int, list[float]] = {}
            for metric in self.client.get_metric_history(self.run_id, name):
                points.setdefault(int(metric.step), []).append(float(metric.value))
            self._before[name] = points
        return any(_same_value(v, value) for v in self._before[name].get(step, ()))

    def _warn_nonfinite(self, tag: str, value: float, round: int) -> None:
        """Say, once per metric, that this store refused ``tag``'s non-finite value."""
        if tag in self._refused:
            return
        self._refused.add(tag)
        logger.warning(
            "MLflow: the tracking store refused %s = %s of round %d (not a finite number), "
            "so it is not logged; later non-finite values of %s are left out without this "
            "warning",
            tag,
            value,
            round,
            tag,
        )

    def _names_of(self, tags: Iterable[str]) -> dict[str, str]:
        """The MLflow name of each tag (:func:`mlflow_names`), kept for the run.

        A tag that differs from another only in case is logged under a name of
        its own, with one warning naming the first such pair.
        """
        new = [tag for tag in tags if tag not in self._names]
        if new:
            given = mlflow_names(new, taken=set(self._names.values()), held=self._held)
            for tag, stored in given.items():
                if stored != mlflow_name(tag) and not self._warned:
                    self._warn_apart(tag, stored)
                self._names[tag] = stored
        return self._names

    def _warn_apart(self, tag: str, stored: str) -> None:
        """Say once that ``tag`` is logged as ``stored``, apart from a name of another case."""
        key = folded(mlflow_name(tag))
        other = next((t for t, n in self._names.items() if folded(n) == key), None)
        if other is None:  # two hashes that met, not names of another case
            return
        self._warned = True
        logger.warning(
            "MLflow: %r is logged as %r, since a case-insensitive file system would store it "
            "and %r as one file; name the metrics apart by more than case to keep their names",
            tag,
            stored,
            other,
        )

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow run (``"FINISHED"``, ``"FAILED"`` or ``"KILLED"``).

        A second call does nothing.

        Args:
            status: The run's end status in MLflow, as MLflow names it.
        """
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


def _same_value(held: float, given: float) -> bool:
    """Whether a metric's value MLflow holds is ``given`` (a NaN is the same as a NaN)."""
    return held == given or (math.isnan(held) and math.isnan(given))


def _same(held: str, given: str) -> bool:
    """Whether a param MLflow holds is ``given``, as MLflow stored it (cut to its limit)."""
    if held == given:
        return True
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as most
    except ImportError:  # pragma: no cover - an MLflow without it
        most = 6000
    return len(held) >= most and len(given) > len(held) and given.startswith(held)

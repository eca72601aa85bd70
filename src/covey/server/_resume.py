"""Where a resumed run starts: after its last good round, or at step 0.

A server killed after it created its run folder but before round 0's
checkpoint committed leaves the run's settings and its clients' ids and no
round. Such a run starts again from the app's initial weights, which must have
the layout the run recorded; any other run continues after its newest round
whose weights and aggregation state verify. The saved model is the run's: an
app whose initial weights have another layout (its model changed since the run
started) is refused before the server listens, naming the arrays that differ,
since its clients would only fail in the first round.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from covey.aggregate._order import python_number
from covey.core._history import History
from covey.core._hooks import RESUMED_AFTER_CRASH
from covey.core._log import ON_CONSOLE
from covey.core._weights import Weights, WeightsSpec, made
from covey.server._room import check_room
from covey.server._rundb import DB_NAME
from covey.server._state import check_state
from covey.server._store import RunStore
from covey.strategies._recorded import formerly_described, unrecorded_before
from covey.strategies._strategy import Strategy
from covey.strategies._subclass import OVERRIDABLE, former_record, own_attributes

__all__ = [
    "UNRECORDED",
    "ResumePoint",
    "resume_point",
    "same_settings",
    "same_strategy",
    "strategy_changes",
    "warn_of_unrecorded",
]

logger = logging.getLogger("covey")


class ResumePoint(NamedTuple):
    """What a resumed run starts from."""

    weights: Weights
    config: dict[str, Any]
    start: int
    history: History | None
    state: bytes | None
    uncounted: int = 0  # servers that died since the last saved round (see RunRecords)


def resume_point(
    opened: RunStore,
    initial_weights: Weights | Callable[[], Weights] | None,
    rounds: int | None = None,
) -> ResumePoint:
    """Where the run in ``opened`` goes on: rounds whose files did not survive are dropped.

    Args:
        opened: The run's store, held by this server.
        initial_weights: The app's step-0 model (or a function returning it): the
            model if the run saved no round, else only checked to have the
            layout of the saved model (None skips that check).
        rounds: The round the resumed run runs to: if it trains a round, its disk
            must have room for that round's file (None: not checked).

    Raises:
        ValueError: The folder lost rounds its weights files still hold, no
            saved round verifies, a run without a round is given no initial
            weights, or the initial weights have another layout than the run's model.
        RunRefusedError: The disk has no room for the next round's file.
    """
    try:
        if opened.check_lost_rounds() is None:
            return _from_step_zero(opened, initial_weights)
        # the app's layout only: its step-0 arrays go before the saved model is read
        app = None if initial_weights is None else _layout(initial_weights)
        last, weights, _, blob = opened.load_latest_valid(check_state)
        if app is not None:
            _same_layout(opened, last, WeightsSpec.of(weights), app)
        opened.discard_after(last)  # rounds whose files did not survive are redone
        if rounds is not None and last < rounds:
            check_room(opened, last)  # refused now, not once a round has trained
        history = opened.history()
    except sqlite3.Error as exc:  # a damaged page or text SQLite itself cannot read
        raise ValueError(
            f"{opened.run_dir / DB_NAME} is damaged ({type(exc).__name__}: {exc}); "
            "the run cannot be resumed from it"
        ) from None
    history.rounds = [r for r in history.rounds if r.round <= last]
    history.config = dict(opened.config)
    # A status still "running" means no server ended the run: it died (SIGKILL, power),
    # perhaps after sending a round it had not saved. Deaths before it whose resumes
    # saved no round are still counted in the store (RunRecords.take_over).
    uncounted = opened.uncounted_releases + (opened.info()["status"] == "running")
    if uncounted:
        # Run hooks read it (a privacy ledger charges each round that may have left the
        # server unsaved); the store's settings keep no such key, so each resume decides.
        history.config[RESUMED_AFTER_CRASH] = uncounted
    said = (opened.run_dir, opened.step, last, rounds)
    logger.info("resuming run %s after %s %d (of %s)", *said, extra=ON_CONSOLE)
    return ResumePoint(weights, history.config, last + 1, history, blob, uncounted)


def _from_step_zero(
    opened: RunStore, initial_weights: Weights | Callable[[], Weights] | None
) -> ResumePoint:
    """A run whose server stopped before round 0 was saved, started again at step 0."""
    where = f"the run in {opened.run_dir} stopped before {opened.step} 0 was saved"
    initial_weights = made(initial_weights)
    if initial_weights is None:
        raise ValueError(
            f"{where}: give the app's initial weights to start it again from step 0 "
            "(serve(initial_weights=...))"
        )
    config = opened.config
    spec = WeightsSpec.of(initial_weights)
    given = spec.describe()
    recorded = config.get("model")
    if recorded is not None and recorded not in (given, _in_order_of(recorded, spec)):
        raise ValueError(
            f"{where}, with a model of layout {recorded}; the initial weights given are "
            f"{given}: resume it with the app it was started with"
        )
    logger.info("%s: starting it again from step 0", where)
    return ResumePoint(initial_weights, config, 1, None, None)


def _layout(initial_weights: Weights | Callable[[], Weights]) -> WeightsSpec:
    """The layout of the app's initial weights (calling them if a function)."""
    return WeightsSpec.of(made(initial_weights))


def _same_layout(opened: RunStore, last: int, saved: WeightsSpec, app: WeightsSpec) -> None:
    """Refuse an app whose model is not the one the run saved, naming what differs."""
    if saved == app or _arrays(saved) == _arrays(app):  # the same arrays in another order
        return
    ours, theirs = _arrays(saved), _arrays(app)
    changes = [f"{n!r} is only in the run's model ({ours[n]})" for n in ours if n not in theirs]
    changes += [f"{n!r} is only in the app's ({theirs[n]})" for n in theirs if n not in ours]
    changes += [
        f"{n!r} is {ours[n]} in the run's model but {theirs[n]} in the app's"
        for n in ours
        if n in theirs and ours[n] != theirs[n]
    ]
    shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
    raise ValueError(
        f"the app's initial weights do not have the layout of the model the run in "
        f"{opened.run_dir} continues from ({opened.step} {last}): {shown}. The saved model is "
        f"the run's, and clients built for another model would fail in its next {opened.step}: "
        "resume it with the app it was started with, or start a new run in another folder"
    )


def _in_order_of(recorded: object, spec: WeightsSpec) -> str | None:
    """``spec`` described with its arrays in the order the layout text ``recorded`` has them.

    The same arrays in another order (a dict built in another order, a file's own
    order) are the same model, as a run that saved rounds takes them.
    """
    if not isinstance(recorded, str):
        return None
    entries = [f"{n}: {layout}" for n, layout in _arrays(spec).items()]
    return ", ".join(sorted(entries, key=recorded.find))


def _arrays(spec: WeightsSpec) -> dict[str, str]:
    """``{name: "dtype[shape]"}`` of a layout."""
    return {
        n: f"{d.name}[{', '.join(map(str, s))}]"
        for n, s, d in zip(spec.names, spec.shapes, spec.dtypes, strict=True)
    }


def same_strategy(opened: RunStore | None, strategy: Strategy) -> None:
    """Refuse to resume a run with another strategy than it was started with.

    The saved aggregator state is the started strategy's: another one cannot
    take it up (FedAdam cannot continue FedAvg's state).
    """
    if opened is None:
        return
    stored = opened.config.get("strategy")
    started = stored.get("name") if isinstance(stored, dict) else None
    name = strategy.describe().get("name")
    if started is not None and started != name:
        raise ValueError(
            f"the run in {opened.run_dir} was started with {started}; it cannot be resumed "
            f"with {name}: resume it with {started}, or start a new run in another folder"
        )


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """``value``'s leaves by dotted path (``{"secagg": {"bits": 16}}`` -> ``secagg.bits``)."""
    if not isinstance(value, dict) or (prefix and not value):
        return {prefix[:-1]: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flat(item, f"{prefix}{key}."))
    return out


_UNRECORDED = {"evaluate_every": 1}
"""Options a strategy records only when they differ from their default, with that default."""


def strategy_changes(
    stored: Any,
    strategy: Strategy,
    parts: tuple[str, ...],
    keys: Callable[[str], bool] | None = None,
) -> list[str]:
    """Each of ``parts`` of ``strategy.describe()`` that differs from the ``stored`` one.

    Both are compared as JSON gives them back (tuples as lists). A setting the
    stored run does not record (written by an older covey) counts as unchanged
    when the strategy leaves it unset (None), or when the preset declares it
    recorded only since (``covey.strategies._recorded``: the run's own value is
    not known; :func:`warn_of_unrecorded` names it). A subclass's attribute an
    older covey recorded by its type's name (a tuple as ``"tuple"``) counts as
    unchanged while it holds a value of that type. ``keys``, if given, says
    which of the flattened keys (``base_lr``, ``where.site``) to compare.

    Returns:
        One phrase per difference, e.g. ``"secagg.bits 16 (the run's) is 12 now"``.
    """
    if not isinstance(stored, dict):  # a run that recorded no strategy: nothing to compare
        return []
    given = json.loads(json.dumps(strategy.describe(), default=str))
    later = unrecorded_before(strategy.name)
    changes = []
    for part in parts:
        if isinstance(stored.get(part), str):  # the aggregator (None: an older covey's run)
            same = _numpy_free(stored[part]) == _numpy_free(given.get(part))
            if not same and not _formerly(stored[part], strategy, given):
                changes.append(f"{part} {stored[part]!r} (the run's) is {given.get(part)!r} now")
            continue
        if not isinstance(stored.get(part), dict):
            continue
        unrecorded = _UNRECORDED if part == "options" else {}
        old = {**unrecorded, **_flat(stored[part])}
        new = {**unrecorded, **_flat(given.get(part) or {})}
        if part == "options":
            _drop_formerly_recorded(old, new, strategy)
        for key in sorted(set(old) | set(new)):
            if keys is not None and not keys(key):
                continue
            unknown = part == "hyperparameters" and key in later
            if key not in old and (new.get(key) is None or unknown):
                continue
            if old.get(key) != new.get(key) and not (
                part == "options" and _formerly_field(strategy, key, old.get(key))
            ):
                changes.append(
                    f"{key} {old.get(key)!r} (the run's) is {new.get(key)!r} now"
                    + _type_only(old.get(key))
                )
    return changes


_NUMPY_NOT_FINITE = re.compile(r"np\.float(?:16|32|64)\((-?(?:nan|inf))\)")
"""A subclass field's NaN or infinity as an older covey wrote it: ``np.float64(nan)``."""


def _numpy_type(text: Any) -> bool:
    """Whether ``text`` names a NumPy number type (``"float32"``, ``"int64"``)."""
    kind = getattr(np, text, None) if isinstance(text, str) and text.isidentifier() else None
    return isinstance(kind, type) and issubclass(kind, np.number)


def _formerly_field(strategy: Strategy, key: str, stored: Any) -> bool:
    """Whether ``stored`` is how an older covey recorded the subclass field ``key`` it has now.

    Such a covey wrote a NumPy NaN or infinity by its repr (``'np.float64(nan)'``:
    the ``'nan'`` covey writes now) and a NumPy number other than a float64 by its
    type's name alone (``'float32'``): a field holding a number of that type now
    resumes as it did then, with a warning that the run's value is not known.
    """
    now = getattr(strategy, key, None) if "." not in key else None
    if isinstance(stored, str) and (match := _NUMPY_NOT_FINITE.fullmatch(stored)):
        return isinstance(now, float | np.floating) and repr(float(now)) == match.group(1)
    if not (_numpy_type(stored) and isinstance(now, np.number) and type(now).__name__ == stored):
        return False
    logger.warning(
        "the run recorded the strategy's %s only as a NumPy %s (an older covey did not record "
        "its value), so it cannot tell whether %r is the run's: resuming with it",
        key,
        stored,
        now,
    )
    return True


def _type_only(stored: Any) -> str:
    """A note for a refused subclass field an older covey recorded by its NumPy type alone."""
    if not _numpy_type(stored):
        return ""
    return (
        f" (an older covey recorded only the type of the run's NumPy {stored}: give the "
        f"field as a {stored} again to resume)"
    )


def _drop_formerly_recorded(old: dict[str, Any], new: dict[str, Any], strategy: Strategy) -> None:
    """Leave out of ``old`` and ``new`` the subclass attributes ``old`` has by type name.

    An older covey recorded a subclass's tuple, list, dict or array attribute by its
    type's name alone (``"tuple"``): its value then is not known, and one of that
    type is taken as the run's, as that covey took it.
    """
    if type(strategy) is Strategy:
        return
    for name in own_attributes(strategy, Strategy):
        value = getattr(strategy, name)
        former = former_record(value)
        if old.get(name) != former or not isinstance(former, str) or former == value:
            continue
        del old[name]
        for key in [k for k in new if k == name or k.startswith(f"{name}.")]:
            del new[key]


def subclass_key(strategy: Strategy, stored: Any) -> Callable[[str], bool]:
    """Whether an option key describes a subclass: its class, an override, an attribute of its own.

    The keys the started run recorded count too (a resume with a plain
    ``Strategy`` differs in ``class``). A run that recorded no ``class`` (an older
    covey's, or one started with a plain ``Strategy``) has none.
    """
    options = stored.get("options") if isinstance(stored, dict) else None
    if not isinstance(options, dict) or "class" not in options:
        return lambda key: False
    own = {"class", *OVERRIDABLE}
    if type(strategy) is not Strategy:
        own |= own_attributes(strategy, Strategy)
    return lambda key: key.split(".", 1)[0] in own


_NUMPY_NUMBER = re.compile(
    r"(?<![\w.])np\.(?:u?int(?:8|16|32|64)|float(?:16|32|64))\(([-+.\w]+)\)|(?<![\w.])np\.(True|False)_"
    r"|(?<![\w.])np\.(complex(?:64|128)|longdouble|clongdouble)\('?([-+.\w]+)'?\)"
)
"""A NumPy number as an older covey wrote it in an aggregator's text: ``np.float64(0.1)``,
``np.complex128(1+2j)``, ``np.longdouble('0.5')``."""

_NUMPY_TYPES = {
    "complex64": np.complex64,
    "complex128": np.complex128,
    "longdouble": np.longdouble,
    "clongdouble": np.clongdouble,
}


def _as_python(match: re.Match[str]) -> str:
    """The text of the Python number a :data:`_NUMPY_NUMBER` match equals, as covey writes it."""
    if match.group(3) is None:
        return match.group(1) or match.group(2)
    kind, digits = _NUMPY_TYPES[match.group(3)], match.group(4)
    try:
        long = kind in (np.longdouble, np.clongdouble)  # read as NumPy reads its own repr
        number = kind(digits) if long else kind(complex(digits))
    except ValueError:  # not a number after all: compared as written
        return match.group(0)
    return repr(python_number(number))


def _numpy_free(text: Any) -> Any:
    """``text`` with each NumPy number in it as the Python one it equals.

    An older covey wrote an aggregator's NumPy arguments by their repr
    (``np.float64(0.1)``, ``np.complex128(1+2j)``), covey writes them as the number
    (``0.1``, ``(1+2j)``) now; a long double that no Python float equals keeps its repr.
    """
    if not isinstance(text, str):
        return text
    return _NUMPY_NUMBER.sub(_as_python, text)


def _formerly(stored: str, strategy: Strategy, given: dict[str, Any]) -> bool:
    """Whether ``stored`` is how an older covey recorded the aggregator ``given`` names now."""
    step = formerly_described(strategy.name).get(stored)
    now = given.get("aggregator")
    return step is not None and isinstance(now, str) and now.startswith(f"{step}(")


def same_settings(opened: RunStore | None, strategy: Strategy) -> None:
    """Refuse a deployed resume with other strategy hyperparameters; warn of other options.

    Hyperparameters (a server optimizer's rates, the secure-aggregation range,
    bits and graph, DP's noise, clip and sampling) decide what the saved state
    and privacy ledger mean, so they must stay, and so must a subclass's class,
    overrides and attributes of its own (its ``base_lr``); options (fraction and
    minimums of clients) may change between a run's servers and are logged.
    """
    if opened is None:
        return
    stored = opened.config.get("strategy")
    own = subclass_key(strategy, stored)
    changed = strategy_changes(stored, strategy, ("hyperparameters", "aggregator"))
    changed += strategy_changes(stored, strategy, ("options",), keys=own)
    if changed:
        raise ValueError(
            f"the run in {opened.run_dir} cannot be resumed with other strategy settings "
            f"than it was started with: {'; '.join(changed)}. Resume it with the settings "
            "it was started with, or start a new run in another folder"
        )
    for change in strategy_changes(stored, strategy, ("options",), keys=lambda k: not own(k)):
        logger.warning("resuming %s with another option: %s", opened.run_dir, change)
    warn_of_unrecorded(opened, strategy)


UNRECORDED = "resumed_unrecorded"
"""The run settings' key of the hyperparameters its run did not record and a resume warned
of, each with the value it resumed with (a later resume with the same says nothing)."""


def warn_of_unrecorded(opened: RunStore, strategy: Strategy) -> None:
    """Warn, naming each, of the hyperparameters the run did not record and resumes with now.

    A run of an older covey did not record some settings its preset records now
    (``covey.strategies._recorded``); its own value is not known, so the resume
    goes on with the strategy's and says so, with what such a run did. Said once
    per run and value: the value is noted in the run's settings (:data:`UNRECORDED`),
    and a later resume with the same one says nothing, one with another warns again.
    The run's own record stays as it was: its value is still not known, and a
    resume with another (the one the warning advises) is not refused.
    """
    stored = opened.config.get("strategy")
    kept = stored.get("hyperparameters") if isinstance(stored, dict) else None
    if not isinstance(kept, dict):  # a run that recorded no strategy: nothing to compare
        return
    said = opened.config.get(UNRECORDED)
    said = dict(said) if isinstance(said, dict) else {}
    now = {}
    for key, before in unrecorded_before(strategy.name).items():
        if key in kept or key not in strategy.hyperparameters:
            continue
        now[key] = json.loads(json.dumps(strategy.hyperparameters[key], default=str))
        if key in said and said[key] == now[key]:
            continue  # an earlier resume of the run said it
        logger.warning(
            "resuming %s, whose run recorded no %s (it was started by an older covey), with "
            "%s=%r: %s",
            opened.run_dir,
            key,
            key,
            strategy.hyperparameters[key],
            before,
        )
    if any(key not in said or said[key] != value for key, value in now.items()):
        with contextlib.suppress(OSError):  # a run that cannot be written is refused later
            opened.update_config({UNRECORDED: {**said, **now}})


def resumed_seed(opened: RunStore | None, seed: int) -> int:
    """The seed a run samples clients with: a resumed run's own, recorded when it started.

    The same clients are then sampled in each round as if the run had never
    stopped, whatever seed the app gives now; a different one is logged.
    """
    kept = None if opened is None else opened.config.get("seed")
    if opened is None or type(kept) is not int:
        return seed
    if kept != seed:
        logger.warning(
            "resuming %s with its own seed %d, not %d: the rounds sample clients as if it "
            "had never stopped",
            opened.run_dir,
            kept,
            seed,
        )
    return kept

"""What code of one's own writes into a round's record, kept as ``history.json`` reads it back.

The round loop records what the aggregation steps report, and the metrics, as
:func:`~covey.core._jsonvalues.read_back` gives them. A run hook's ``after_round``
and an ``on_round`` callback are handed the record itself and may write into it:
:func:`written` takes note of its entries before such a call and :func:`settle`
converts, after it, only the entries the call added or replaced (a few dict
look-ups a round, nothing per client), or refuses one naming who wrote it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from covey.core._jsonvalues import from_jsonable, jsonable, tag_in, tagged
from covey.core._roundrecord import RoundRecord

__all__ = ["Written", "changed", "record_json", "recorded_info", "settle", "written"]

_DICTS = ("fit_metrics", "aggregate_info", "evaluate_metrics", "central_metrics", "durations")
_NUMBERS = (
    "evaluate_loss",
    "central_loss",
    "fit_examples",
    "evaluate_examples",
    "bytes_sent",
    "bytes_received",
)

Written = tuple[dict[str, Any], dict[str, dict[Any, Any]], Any, dict[Any, Any] | None]
"""A record's fields before a call: the objects its fields held, and each dict's entries."""


def written(record: RoundRecord) -> Written:
    """Note what ``record`` holds, for :func:`settle` to find what a call wrote after it."""
    fields = {name: getattr(record, name) for name in (*_DICTS, *_NUMBERS)}
    entries = {name: dict(fields[name]) for name in _DICTS}
    privacy = record.privacy
    return fields, entries, privacy, None if privacy is None else dict(privacy)


def _differs(now: Any, then: dict[Any, Any]) -> bool:
    """Whether dict ``now`` gained, lost or replaced an entry since it held ``then``'s."""
    return len(now) != len(then) or any(k not in then or then[k] is not v for k, v in now.items())


def changed(record: RoundRecord, before: Written) -> bool:
    """Whether a call wrote into ``record`` since :func:`written` gave ``before``.

    An entry of its dicts added, removed or replaced, a field given another
    object: what :func:`settle` converts, found as cheaply (nothing per client).
    """
    fields, entries, privacy, privacy_entries = before
    if record.privacy is not privacy or any(getattr(record, n) is not v for n, v in fields.items()):
        return True
    if any(_differs(getattr(record, name), entries[name]) for name in _DICTS):
        return True
    return privacy_entries is not None and _differs(privacy, privacy_entries)


def _kept(value: Any, where: str, who: str) -> Any:
    """``value`` as history.json gives it back; TypeError naming ``where`` and ``who``."""
    try:
        text = jsonable(value)
        tag = tag_in(value, where)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"{who} {where}, which the history cannot keep: {exc}") from None
    if tag is not None:
        raise TypeError(f"{who} {where}: {tagged(*tag)}")
    return from_jsonable(text)


def _settled(new: Any, old: Any, entries: dict[Any, Any] | None, name: str, who: str) -> Any:
    """The dict field ``name`` with the entries added or replaced since ``entries`` converted."""
    if not isinstance(new, dict):
        raise TypeError(
            f"{who} set record.{name} to {type(new).__name__}; it must be a dict of names to values"
        )
    if new is not old or entries is None:
        entries = {}
    changed = [k for k, v in new.items() if k not in entries or entries[k] is not v]
    if not changed:
        return new
    if all(isinstance(k, str) for k in changed):  # in place: the field keeps its identity
        for key in changed:
            new[key] = _kept(new[key], f"record.{name}[{key!r}]", f"{who} wrote")
        return new
    again = set(changed)  # a key that is no string: the dict is made anew, in its order
    return {
        str(k): _kept(v, f"record.{name}[{k!r}]", f"{who} wrote") if k in again else v
        for k, v in new.items()
    }


def settle(record: RoundRecord, before: Written, who: str) -> None:
    """Convert what a call wrote into ``record`` since :func:`written` gave ``before``.

    Each entry it added or replaced in the record's dicts (``aggregate_info``, the
    metrics, ``privacy``), and each number it set, becomes what ``history.json``
    reads back (string keys, lists, Python numbers), so the live record is the
    saved one. Entries it changed in place (a list it appended to) are not looked
    into; the history names them when it is written.

    Raises:
        TypeError: naming ``who`` and the entry, if one cannot be written to the
            history or would be read back as another value; the record is then put
            back as it was before the call.
    """
    try:
        _settle(record, before, who)
    except TypeError:
        _restore(record, before)  # the history stays writable: the run's error is this one
        raise


def _restore(record: RoundRecord, before: Written) -> None:
    """Put back what ``record`` held when :func:`written` gave ``before``."""
    fields, entries, privacy, privacy_entries = before
    for name in _DICTS:
        fields[name].clear()
        fields[name].update(entries[name])
    for name, value in fields.items():
        setattr(record, name, value)
    if privacy is not None and privacy_entries is not None:
        privacy.clear()
        privacy.update(privacy_entries)
    record.privacy = privacy


def _settle(record: RoundRecord, before: Written, who: str) -> None:
    """:func:`settle`, the record left as far as it got if it raises."""
    fields, entries, privacy, privacy_entries = before
    for name in _DICTS:
        setattr(
            record, name, _settled(getattr(record, name), fields[name], entries[name], name, who)
        )
    if record.privacy is not None:
        record.privacy = _settled(record.privacy, privacy, privacy_entries, "privacy", who)
    for name in _NUMBERS:
        value = getattr(record, name)
        if value is not fields[name] and value is not None and type(value) not in (int, float):
            setattr(record, name, _kept(value, f"record.{name}", f"{who} wrote"))


def recorded_info(info: Any, event: str, round: int) -> dict[str, Any]:
    """An event's ``info`` as the round's ``aggregate_info`` keeps it, as history.json reads it.

    The event checked its ``info`` when it was made (:func:`~covey.core._jsonvalues.check_info`),
    but the dict is the step's own: one changed after, into what the history cannot
    keep, is refused here naming the event, not when the run is saved.

    Raises:
        TypeError: naming the event, its round and the entry.
    """
    kept: dict[str, Any] = {}
    for key, value in info.items():
        where = f"{event}(round={round}).info[{key!r}]"
        said = f"{where} after making the {event}"
        kept[str(key)] = _kept(value, said, "an aggregation step changed")
    return kept


def record_json(record: RoundRecord) -> dict[str, Any]:
    """``record`` as the JSON-ready dict ``history.json`` holds.

    Raises:
        TypeError: naming the round and its field, for a value the history cannot
            keep (one written into the record after it was recorded, in place).
    """
    raw = asdict(record)
    try:
        out: dict[str, Any] = jsonable(raw)
    except (TypeError, ValueError, RecursionError):
        for name, value in raw.items():
            try:
                jsonable(value)
            except (TypeError, ValueError, RecursionError) as exc:
                raise TypeError(
                    f"round {record.round}'s {name} cannot be written to the history: {exc}"
                ) from None
        raise
    return out

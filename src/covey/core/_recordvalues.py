"""What code of one's own writes into a round's record, kept as ``history.json`` reads it back.

The round loop records what the aggregation steps report, and the metrics, as
:func:`~covey.core._jsonvalues.read_back` gives them. A run hook's ``after_round``
and an ``on_round`` callback are handed the record itself and may write into it:
:func:`written` takes note of its entries before such a call and :func:`settle`
converts, after it, only the entries the call added, replaced or changed in place
(a few dict look-ups a round, and the text of each entry that is a list or a
dict: nothing per client), or refuses one naming who wrote it.
"""

from __future__ import annotations

import json
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

Texts = dict[Any, tuple[str | None, str | None]]
"""Each entry of a dict that is a list, tuple or dict: its ``repr``, to tell whether it was
changed in place, and its JSON text, to put it back; None where it has none."""

Written = tuple[
    dict[str, Any], dict[str, dict[Any, Any]], Any, dict[Any, Any] | None, dict[str, Texts]
]
"""A record's fields before a call: the objects its fields held, each dict's entries, and
the texts of each entry that a call may change in place (see :func:`written`)."""

_CONTAINERS = (list, tuple, dict)


def _text(value: Any) -> str | None:
    """``value``'s text, to tell whether it was changed in place; None if it has none."""
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - too deep, or an object's own repr failed: not told
        return None


def _texts(entries: dict[Any, Any] | None) -> Texts:
    """The texts of each entry of ``entries`` that is a list, tuple or dict."""
    if not entries:
        return {}
    texts: Texts = {}
    for key, value in entries.items():
        if isinstance(value, _CONTAINERS):
            try:
                saved: str | None = json.dumps(value)
            except (TypeError, ValueError, RecursionError):  # bytes, say: not put back
                saved = None
            texts[key] = _text(value), saved
    return texts


def written(record: RoundRecord) -> Written:
    """Note what ``record`` holds, for :func:`settle` to find what a call wrote after it.

    Besides the objects its fields and dicts hold, the text of each entry that is a
    list or a dict (metrics and infos: one round's, not one per client), so that one
    changed in place (a list appended to) is found too.
    """
    fields = {name: getattr(record, name) for name in (*_DICTS, *_NUMBERS)}
    entries = {name: dict(fields[name]) for name in _DICTS}
    privacy = record.privacy
    texts = {name: _texts(entries[name]) for name in _DICTS}
    texts["privacy"] = _texts(privacy)
    return fields, entries, privacy, None if privacy is None else dict(privacy), texts


def _moved(value: Any, text: str | None) -> bool:
    """Whether ``value``, an entry whose text was ``text``, was changed in place since."""
    return text is None or _text(value) != text


def _differs(now: Any, then: dict[Any, Any], texts: Texts) -> bool:
    """Whether dict ``now`` gained, lost, replaced or changed an entry since it held ``then``'s."""
    if len(now) != len(then) or any(k not in then or then[k] is not v for k, v in now.items()):
        return True
    return any(_moved(now[k], text) for k, (text, _) in texts.items())


def changed(record: RoundRecord, before: Written) -> bool:
    """Whether a call wrote into ``record`` since :func:`written` gave ``before``.

    An entry of its dicts added, removed, replaced or changed in place (a list
    appended to), a field given another object: what :func:`settle` converts,
    found as cheaply (nothing per client).
    """
    fields, entries, privacy, privacy_entries, texts = before
    if record.privacy is not privacy or any(getattr(record, n) is not v for n, v in fields.items()):
        return True
    if any(_differs(getattr(record, name), entries[name], texts[name]) for name in _DICTS):
        return True
    return privacy_entries is not None and _differs(privacy, privacy_entries, texts["privacy"])


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


def _converted(value: Any, in_place: bool, where: str, who: str) -> Any:
    """``value`` as history.json gives it back; a list or dict changed ``in_place`` stays itself.

    What holds one changed in place (not added) then holds the converted one.
    """
    kept = _kept(value, where, who)
    if not in_place:  # added: a copy of its own (a list the caller keeps adding to is not)
        return kept
    if isinstance(value, list) and isinstance(kept, list):
        value[:] = kept
        return value
    if isinstance(value, dict) and isinstance(kept, dict):
        value.clear()
        value.update(kept)
        return value
    return kept


def _settled(
    new: Any, old: Any, entries: dict[Any, Any] | None, texts: Texts, name: str, who: str
) -> Any:
    """The dict field ``name`` with the entries added, replaced or changed since ``entries``."""
    if not isinstance(new, dict):
        raise TypeError(
            f"{who} set record.{name} to {type(new).__name__}; it must be a dict of names to values"
        )
    if new is not old or entries is None:
        entries = {}
    changed = [
        k
        for k, v in new.items()
        if k not in entries or entries[k] is not v or (k in texts and _moved(v, texts[k][0]))
    ]
    if not changed:
        return new
    if all(isinstance(k, str) for k in changed):  # in place: the field keeps its identity
        for key in changed:
            value = new[key]
            in_place = key in entries and entries[key] is value
            new[key] = _converted(value, in_place, f"record.{name}[{key!r}]", f"{who} wrote")
        return new
    again = set(changed)  # a key that is no string: the dict is made anew, in its order
    return {
        str(k): _kept(v, f"record.{name}[{k!r}]", f"{who} wrote") if k in again else v
        for k, v in new.items()
    }


def settle(record: RoundRecord, before: Written, who: str) -> None:
    """Convert what a call wrote into ``record`` since :func:`written` gave ``before``.

    Each entry it added or replaced in the record's dicts (``aggregate_info``, the
    metrics, ``privacy``), or changed in place (a list or dict it wrote into),
    and each number it set, becomes what ``history.json`` reads back (string keys,
    lists, Python numbers), so the live record is the saved one.

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
    fields, entries, privacy, privacy_entries, texts = before
    for name in _DICTS:
        fields[name].clear()
        fields[name].update(entries[name])
        _put_back(entries[name], texts[name])
    for name, value in fields.items():
        setattr(record, name, value)
    if privacy is not None and privacy_entries is not None:
        privacy.clear()
        privacy.update(privacy_entries)
        _put_back(privacy_entries, texts["privacy"])
    record.privacy = privacy


def _put_back(entries: dict[Any, Any], texts: Texts) -> None:
    """Put back, in place, what ``entries``'s lists and dicts held when ``texts`` were taken."""
    for key, (text, saved) in texts.items():
        value = entries.get(key)
        if saved is None or not _moved(value, text):
            continue
        then = json.loads(saved)
        if isinstance(value, list) and isinstance(then, list):
            value[:] = then
        elif isinstance(value, dict) and isinstance(then, dict):
            value.clear()
            value.update(then)


def _settle(record: RoundRecord, before: Written, who: str) -> None:
    """:func:`settle`, the record left as far as it got if it raises."""
    fields, entries, privacy, privacy_entries, texts = before
    for name in _DICTS:
        now = getattr(record, name)
        setattr(record, name, _settled(now, fields[name], entries[name], texts[name], name, who))
    if record.privacy is not None:
        record.privacy = _settled(
            record.privacy, privacy, privacy_entries, texts["privacy"], "privacy", who
        )
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

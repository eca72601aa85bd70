"""A live run's history.json rewritten, and its clients changed: read and sent only in part."""

from __future__ import annotations

import json
import os
import random
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the dashboard extra is needed")

from _sse import next_event
from covey.core import RoundRecord
from covey.dashboard import DashboardServer, RunReadError, read_run
from covey.dashboard._app import RunCache
from covey.dashboard._historycache import HistoryCache, parse_history
from covey.dashboard._runs import clients_table, detail, summary
from covey.server import RunStore


def _record(rng: random.Random, k: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "round": k,
        "central_loss": rng.choice([0.5, 1.0, -0.0, 0.0, float("nan"), float("inf"), 7]),
        "fit_participants": [rng.randrange(5) for _ in range(rng.randrange(3))],
    }
    if rng.random() < 0.3:
        name = rng.choice(["accuracy", "précision", "精度", "f1"])
        record["central_metrics"] = {name: rng.choice([True, 1, 0.25, "text", "日本"])}
    if rng.random() < 0.1:
        record["note"] = rng.choice(_NOTES)
    return record


_NOTES = ["site-é", "a \\ b", 'quote "x"', "東京-1", "🦊 fox", "\u2028", "\ud800 alone"]
"""Texts a round may hold: non-ASCII of 2, 3 and 4 bytes, a line separator, a lone surrogate."""


class _File:
    """A history.json written again and again, each version a file of its own to the cache."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp = 1_000_000_000_000_000_000

    def write(self, text: str) -> None:
        # a lone surrogate as json.loads reads it back from bytes (it decodes "surrogatepass")
        self.path.write_bytes(text.encode("utf-8", "surrogatepass"))
        self.stamp += 1_000_000  # a time of its own, whatever the clock's resolution
        os.utime(self.path, ns=(self.stamp, self.stamp))


def _parsed(cache: HistoryCache, path: Path) -> str:
    """What ``cache`` reads of ``path``, said exactly (True is no 1, -0.0 no 0.0), or why not."""
    try:
        return repr(cache.read(path))
    except RunReadError as exc:
        return f"error: {exc}"


def _whole(path: Path) -> str:
    try:
        return repr(parse_history(path))
    except RunReadError as exc:
        return f"error: {exc}"


def _text(rng: random.Random, rounds: list[dict[str, Any]], head: int) -> str:
    """A history holding ``rounds``, written one of the ways a run's file may be."""
    body: dict[str, Any] = {"config": {"rounds": 99, "head": head}, "rounds": rounds}
    if rng.random() < 0.2:  # the rounds before another key
        body = {"rounds": rounds, "stopped_reason": None, "clients": {"0": "site-0", "1": "日本"}}
    indent = rng.choice([2, 2, 2, None, 0])
    text = json.dumps(body, indent=indent, ensure_ascii=rng.random() < 0.5)
    damage = rng.random()
    if damage < 0.04:
        text = text[: rng.randrange(len(text))]  # cut short by a kill
    elif damage < 0.06:
        text = text.replace('"round": 1,', '"round": "one",', 1)
    elif damage < 0.08:
        text = text.replace('"fit_participants": [', '"fit_participants": ["x", ', 1)
    elif damage < 0.1:
        text = text[:-1] + ', "rounds": []}'  # the rounds given twice: the last counts
    elif damage < 0.12:
        text += " x"
    return text


@pytest.mark.parametrize("seed", range(4))
def test_a_history_rewritten_at_random_reads_as_a_whole_parse(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    file = _File(tmp_path / "history.json")
    cache = HistoryCache()
    rounds: list[dict[str, Any]] = []
    head = 0
    for _ in range(150):
        pick = rng.random()
        if pick < 0.5 or not rounds:  # new rounds after the old ones
            rounds = rounds + [_record(rng, len(rounds) + i) for i in range(rng.randrange(3))]
        elif pick < 0.65:  # the newest round written again
            rounds = [*rounds[:-1], _record(rng, len(rounds) - 1)]
        elif pick < 0.8:  # a resumed run redid its last rounds
            at = rng.randrange(len(rounds))
            rounds = rounds[:at] + [_record(rng, k) for k in range(at, len(rounds))]
        elif pick < 0.9:  # a history cut short
            rounds = rounds[: rng.randrange(len(rounds))]
        else:  # the settings changed (a resume's new round count), the rounds kept
            head += 1
        file.write(_text(rng, rounds, head))
        assert _parsed(cache, file.path) == _whole(file.path)


def test_a_run_whose_history_is_rewritten_at_random_shows_what_a_fresh_read_does(
    tmp_path: Path,
) -> None:
    rng = random.Random(11)
    run = tmp_path / "run"
    run.mkdir()
    file = _File(run / "history.json")
    cache = RunCache(tmp_path)
    rounds: list[dict[str, Any]] = []
    for _ in range(120):
        pick = rng.random()
        if pick < 0.5 or not rounds:
            rounds = rounds + [_record(rng, len(rounds) + i) for i in range(rng.randrange(3))]
        elif pick < 0.75:
            at = rng.randrange(len(rounds))
            rounds = rounds[:at] + [_record(rng, k) for k in range(at, len(rounds))]
        else:
            rounds = rounds[: rng.randrange(len(rounds))]
        file.write(json.dumps({"config": {"rounds": 99}, "rounds": rounds}, indent=2))
        shown, fresh = cache.read("run", run), read_run("run", run)
        assert repr(cache.summary(shown)) == repr(summary(fresh))
        assert repr(clients_table(shown)) == repr(clients_table(fresh))
        assert repr(detail(shown)) == repr(detail(fresh))


def test_a_rewritten_historys_unchanged_rounds_are_not_parsed_again(tmp_path: Path) -> None:
    # A history.json is written anew (a new file) at each write: parsing all of it again
    # took seconds at 20,000 rounds, though mostly only its newest rounds had changed.
    rng = random.Random(3)
    rounds = [_record(rng, k) for k in range(20)]
    file = _File(tmp_path / "history.json")
    cache = HistoryCache()
    file.write(json.dumps({"config": {}, "rounds": rounds}, indent=2))
    cache.read(file.path)  # a first read parses whole: a file written again is taken apart
    file.write(json.dumps({"config": {}, "rounds": rounds}, indent=2))
    _, first = cache.read(file.path)

    resumed = [*rounds[:15], *(_record(rng, k) for k in range(15, 22))]
    file.write(json.dumps({"config": {"rounds": 30}, "rounds": resumed}, indent=2))
    data, again = cache.read(file.path)
    assert all(a is b for a, b in zip(again[:15], first[:15], strict=True))
    assert repr((data, again)) == repr(parse_history(file.path))

    changed = json.loads(file.path.read_text())
    changed["rounds"][3]["fit_participants"] = [4]  # an older round changed: parsed from it
    file.write(json.dumps(changed, indent=2))
    _, third = cache.read(file.path)
    assert all(a is b for a, b in zip(third[:3], again[:3], strict=True))
    assert third[3] is not again[3]
    assert third[3]["fit_participants"] == [4]
    assert repr(third) == repr(parse_history(file.path)[1])


@pytest.mark.parametrize("indent", [2, None])
def test_a_rewritten_non_ascii_historys_unchanged_rounds_are_not_parsed_again(
    tmp_path: Path, indent: int | None
) -> None:
    # A history.json holding any non-ASCII text (a client named "東京-1", a metric
    # "précision") was parsed whole at every write: only ASCII files were taken apart.
    def record(k: int) -> dict[str, Any]:
        return {"round": k, "central_metrics": {"précision": 0.5}, "note": _NOTES[k % 7]}

    file = _File(tmp_path / "history.json")
    cache = HistoryCache()
    head = {"config": {"name": "étude 日本"}, "clients": {"0": "🦊"}}
    file.write(
        json.dumps(
            {**head, "rounds": [record(k) for k in range(10)]}, indent=indent, ensure_ascii=False
        )
    )
    cache.read(file.path)  # parsed whole
    file.write(file.path.read_bytes().decode("utf-8", "surrogatepass"))
    _, first = cache.read(file.path)
    rounds = [record(k) for k in range(13)]
    rounds[11]["note"] = "ç" * 5  # of other lengths in bytes than in characters
    head["config"]["name"] = "étude 日本 encore"  # the text before the rounds grew
    file.write(json.dumps({**head, "rounds": rounds}, indent=indent, ensure_ascii=False))
    data, again = cache.read(file.path)
    assert all(a is b for a, b in zip(again[:10], first, strict=True))
    assert repr((data, again)) == repr(parse_history(file.path))
    changed = json.loads(file.path.read_bytes())
    changed["rounds"][4]["note"] = "東京-2"  # an older round changed: parsed from it
    file.write(json.dumps(changed, indent=indent, ensure_ascii=False))
    _, third = cache.read(file.path)
    assert all(a is b for a, b in zip(third[:4], again[:4], strict=True))
    assert third[4] is not again[4]
    assert repr(third) == repr(parse_history(file.path)[1])


def test_a_history_read_for_the_first_time_is_parsed_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Taking a file apart round by round (for the next version to reuse) costs more than
    # json.loads: the first read of a run of 20,000 rounds took 0.15 s longer for it,
    # though most files (finished runs') are never written again.
    from covey.dashboard import _historycache

    walked: list[Any] = []
    parse = _historycache.parse_reusing

    def counted(raw: bytes, old: Any) -> Any:
        walked.append(old)
        return parse(raw, old)

    monkeypatch.setattr(_historycache, "parse_reusing", counted)
    rng = random.Random(5)
    rounds = [_record(rng, k) for k in range(5)]
    file = _File(tmp_path / "history.json")
    cache = HistoryCache()
    file.write(json.dumps({"config": {}, "rounds": rounds}))
    assert repr(cache.read(file.path)) == repr(parse_history(file.path))
    assert walked == []
    file.write(json.dumps({"config": {}, "rounds": [*rounds, _record(rng, 5)]}))
    _, again = cache.read(file.path)  # written again: taken apart for the next version
    assert walked == [None]
    file.write(json.dumps({"config": {}, "rounds": [*rounds, _record(rng, 5), _record(rng, 6)]}))
    _, third = cache.read(file.path)
    assert walked[1] is not None
    assert all(a is b for a, b in zip(third[:5], again[:5], strict=True))


def _stream_events(stream: Any, kinds: set[str]) -> Any:
    while True:
        kind, data = next_event(stream, within=30)
        if kind in kinds:
            return kind, data


def _merged(clients: list[dict[str, Any]], change: dict[str, Any]) -> list[dict[str, Any]]:
    """The clients a page holds after an update, merged as its script merges them."""
    if "clients" in change:
        return list(change["clients"])
    clients = list(clients)
    for i, row in change["client_rows"]:
        clients[i] = row
    return clients


def test_a_live_update_sends_only_the_clients_whose_rows_changed(tmp_path: Path) -> None:
    # Each update sent every client's row (800 KB a round for 1,000 clients), though
    # only the round's participants had changed.
    run = tmp_path / "fed"
    store = RunStore.create(run, config={"rounds": 9, "strategy": "FedAvg"})
    try:
        ids = [store.client_id(f"site-{i}") for i in range(30)]
        for i in range(30):
            store.log_event(f"site-{i}", "join", "ipv4:127.0.0.1:5000")
        store.save_round(0, {"w": np.ones(2)}, RoundRecord(round=0, fit_participants=ids[:10]))
        with (
            DashboardServer(tmp_path, poll=0.05) as server,
            urllib.request.urlopen(server.url + "api/stream?id=fed", timeout=30) as stream,  # noqa: S310
        ):
            kind, first = next_event(stream, within=30)
            assert kind == "run"
            clients, names = first["clients"], first["client_names"]
            assert len(clients) == 30

            record = RoundRecord(round=1, fit_participants=[ids[3], ids[12]])
            store.save_round(1, {"w": np.ones(2)}, record)
            kind, change = _stream_events(stream, {"update", "run"})
            assert kind == "update"
            assert [r["round"] for r in change["new_rounds"]] == [1]
            assert "clients" not in change
            assert "client_names" not in change
            assert sorted(row["name"] for _, row in change["client_rows"]) == ["site-12", "site-3"]
            clients = _merged(clients, change)

            store.log_event("site-5", "leave", "heartbeat lost")  # a row changed, no round
            kind, change = _stream_events(stream, {"update", "run"})
            assert [row["name"] for _, row in change["client_rows"]] == ["site-5"]
            clients = _merged(clients, change)

            store.client_id("site-new")  # a client came: the whole table, and the names
            store.log_event("site-new", "join", "ipv4:127.0.0.1:5001")
            kind, change = _stream_events(stream, {"update", "run"})
            assert len(change["clients"]) == 31
            assert change["client_names"] != names
            clients = _merged(clients, change)

            with urllib.request.urlopen(server.url + "api/run?id=fed&view=first") as page:  # noqa: S310
                whole = json.loads(page.read())
            assert clients == whole["clients"]
    finally:
        store.close()

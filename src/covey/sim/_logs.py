"""Log records of the process backend's workers, handed to this process's logging.

A worker's clients log as they would anywhere (``logging.getLogger(...)``),
but a worker is another process: the handlers it inherited by ``fork`` are
copies (a ``QueueHandler`` fills a copy of its queue, a handler that keeps
records keeps them in the worker), and a worker started by ``spawn`` or
``forkserver`` has no handler at all. So each worker replaces its handlers
with one :class:`WorkerLogs` that keeps records as plain data (logger name,
level, message, where, the traceback as text, the client and round they were
logged in) and sends them over its pipe as JSON; this process checks them and
hands them to its own loggers (:func:`dispatch`), so its handlers see them as
if the client had run here. Nothing is pickled either way.

The records wait in a bounded buffer: a client logging faster than this
process reads drops the newest records, and the next batch says how many.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from covey.transport.grpc._wire import WireError

logger = logging.getLogger("covey")

#: Most records a worker keeps waiting to be sent; more are dropped (and counted).
MAX_RECORDS = 1000
#: Most bytes of records a worker keeps waiting (a batch stays far below the pipe's cap).
MAX_BYTES = 8 * 1024 * 1024
#: Most characters of a record's message, traceback or any other text sent on.
MAX_TEXT = 16 * 1024
_MAX_EXTRA = 32  # most ``extra`` fields of one record
_PREFIX = b'{"logs":'
_PLAIN = (str, int, float, bool, type(None))
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "cid",
    "round",
}


class Output(Protocol):
    """Where a worker writes its messages (its end of the pipe)."""

    def send_bytes(self, buf: bytes, /) -> None:
        """Send one message."""


def levels() -> tuple[dict[str, int], int]:
    """This process's logger levels (``""`` is the root), and ``logging.disable``'s level."""
    out = {"": logging.getLogger().level}
    for name, item in logging.Logger.manager.loggerDict.items():
        if isinstance(item, logging.Logger) and item.level != logging.NOTSET:
            out[name] = item.level
    return out, logging.root.manager.disable


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + " ... (cut)"


class WorkerLogs(logging.Handler):
    """The one log handler of a worker: records wait here, then go to the parent as JSON.

    Args:
        conn: The worker's end of its pipe; every message to the parent goes through
            :meth:`send_bytes`, so that records logged before a reply arrive before it.
    """

    def __init__(self, conn: Output) -> None:
        super().__init__(logging.NOTSET)
        self._conn = conn
        self._send_lock = threading.Lock()
        self._buffer_lock = threading.Lock()
        self._records: list[str] = []  # each one record's JSON
        self._bytes = 0
        self._dropped = 0
        self._wake = threading.Event()
        #: The client id and round being run, set by the worker around each task.
        self.context: tuple[int, int] | None = None

    def install(self, given: tuple[Mapping[str, int], int]) -> None:
        """Make this the worker's only handler and take the parent's logger levels."""
        manager = logging.Logger.manager
        for item in [logging.getLogger(), *list(manager.loggerDict.values())]:
            if isinstance(item, logging.Logger):
                had = bool(item.handlers)
                item.handlers = []  # copies of the parent's: dropped unclosed, not flushed here
                if had and not item.propagate and item is not logging.getLogger():
                    item.addHandler(self)
        logging.getLogger().addHandler(self)
        named, disable = given
        for name, level in named.items():
            logging.getLogger(name or None).setLevel(level)
        logging.disable(disable)
        threading.Thread(target=self._pump, name="covey-worker-logs", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        """Keep ``record`` as plain data, or count it dropped if too many wait."""
        with self._buffer_lock:
            if len(self._records) >= MAX_RECORDS:
                self._dropped += 1
                return
        try:
            text = json.dumps(self._plain(record), separators=(",", ":"))
        except Exception:  # noqa: BLE001 - a message that cannot be formatted, as logging does
            self.handleError(record)
            return
        with self._buffer_lock:
            if len(self._records) >= MAX_RECORDS or self._bytes + len(text) > MAX_BYTES:
                self._dropped += 1
                return
            self._records.append(text)
            self._bytes += len(text)
        self._wake.set()

    def _plain(self, record: logging.LogRecord) -> dict[str, Any]:
        item: dict[str, Any] = {
            "name": _clip(record.name),
            "level": record.levelno,
            "msg": _clip(record.getMessage()),
            "created": record.created,
            "path": _clip(str(record.pathname)),
            "line": record.lineno,
            "func": _clip(str(record.funcName)),
            "thread": _clip(str(record.threadName)),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            item["exc"] = _clip(record.exc_text)
        if record.stack_info:
            item["stack"] = _clip(record.stack_info)
        extra = {
            _clip(key): _clip(value) if isinstance(value, str) else value
            for key, value in record.__dict__.items()
            if key not in _STANDARD and isinstance(value, _PLAIN)
        }
        if extra:
            item["extra"] = dict(list(extra.items())[:_MAX_EXTRA])
        if self.context is not None:
            item["cid"], item["round"] = self.context
        return item

    def send_bytes(self, buf: bytes, /) -> None:
        """Send the records waiting, then ``buf`` (a reply)."""
        with self._send_lock:
            self._push()
            self._conn.send_bytes(buf)

    def push(self, timeout: float = -1) -> None:
        """Send the records waiting (give up after ``timeout`` s if the pipe is busy)."""
        if self._send_lock.acquire(timeout=timeout):
            try:
                self._push()
            finally:
                self._send_lock.release()

    def _push(self) -> None:
        with self._buffer_lock:
            records, dropped = self._records, self._dropped
            self._records, self._bytes, self._dropped = [], 0, 0
        if records or dropped:
            text = f'{{"logs":[{",".join(records)}],"dropped":{dropped}}}'
            self._conn.send_bytes(text.encode())

    def _pump(self) -> None:
        """Send records as they come while a client runs (a long fit's progress shows live)."""
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                self.push()
            except OSError:  # the parent is gone: the worker exits on its own
                return
            time.sleep(0.05)  # a client logging in a loop: batches, not one per record


def is_logs(data: bytes) -> bool:
    """Whether a worker's message is a batch of log records (not a reply)."""
    return data[: len(_PREFIX)] == _PREFIX


def _record(item: object, worker: str, pid: int) -> logging.LogRecord | None:
    """The parent's record of one sent item, or None if its logger does not want it."""
    if not isinstance(item, dict):
        raise WireError("a worker's log record is not a JSON object")
    name, level, msg = item.get("name"), item.get("level"), item.get("msg")
    if not isinstance(name, str) or type(level) is not int or not isinstance(msg, str):
        raise WireError("a worker's log record lacks its logger name, level or message")
    target = logging.getLogger(name if name != "root" else None)
    if not target.isEnabledFor(level):
        return None

    def field(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = item.get(key, default)
        return value if isinstance(value, kind) else default

    extra = field("extra", dict, {})
    extra = {k: v for k, v in extra.items() if k not in _STANDARD and isinstance(v, _PLAIN)}
    for key in ("cid", "round"):
        if type(item.get(key)) is int:
            extra[key] = item[key]
    record = target.makeRecord(
        target.name,
        level,
        field("path", str, "(worker)"),
        field("line", int, 0),
        msg,
        (),
        None,
        field("func", str, None),
        extra,
        field("stack", str, None),
    )
    created = field("created", (int, float), record.created)
    record.created, record.msecs = created, (created - int(created)) * 1000
    record.relativeCreated = (created - getattr(logging, "_startTime", created)) * 1000
    record.threadName = field("thread", str, record.threadName)
    record.processName, record.process = worker, pid
    record.exc_text = field("exc", str, None)
    return record


def dispatch(data: bytes, worker: str, pid: int) -> None:
    """Hand a batch of a worker's log records to this process's loggers.

    Raises:
        covey.transport.grpc.WireError: the batch is not what a worker sends.
    """
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"malformed log records from a worker: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("logs"), list):
        raise WireError("a worker's log records are not a list")
    records = [_record(item, worker, pid) for item in message["logs"]]
    for record in records:
        if record is not None:
            logging.getLogger(record.name if record.name != "root" else None).handle(record)
    dropped = message.get("dropped")
    if type(dropped) is int and dropped > 0:
        logger.warning(
            "%s dropped %d log records: its clients logged faster than this process took "
            "them (at most %d wait to be sent)",
            worker,
            dropped,
            MAX_RECORDS,
        )

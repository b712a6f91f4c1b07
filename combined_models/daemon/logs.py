"""The daemon's log: human-readable lines or JSON lines, in a private file rotated by size.

Structured lines (one per request, failover and health change) carry their fields in
`extra={"event": {...}}`: the JSON format puts them beside `ts`, `level`, `logger` and
`msg`; the text format appends them as `key=value`.

Records are written by a thread of their own (`BackgroundHandler`): a slow or stalled disk
never holds up the trio loop that serves every client.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ..config import LoggingConfig
from ..paths import DAEMON_LOG, open_private_log

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def event_of(record: logging.LogRecord) -> dict[str, Any]:
    event = getattr(record, "event", None)
    return event if isinstance(event, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `ts`, `level`, `logger`, `msg`, then the record's event fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in event_of(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(_text_value(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or any(c.isspace() for c in text) else text


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...` (the event's fields, in order)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in event_of(record).items())
        return f"{line} {fields}" if fields else line


def _private_opener(path: str, flags: int) -> int:
    """Files the handler opens (the log, and the new one after a rollover) are born 0600."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Size-based rotation; every file stays 0600 (a rollover renames, so modes are kept)."""

    def _open(self) -> io.TextIOWrapper:
        return open(
            self.baseFilename, "a", encoding=self.encoding, errors=self.errors, opener=_private_opener
        )


class BackgroundHandler(logging.Handler):
    """Hands each record to a writer thread that passes it to `target`.

    At most `limit` records wait; past that (the disk stalls) records are dropped, counted, and
    the count is written after the next record that gets through: logging never blocks the
    caller, and never grows without bound.
    """

    def __init__(self, target: logging.Handler, limit: int = 10_000) -> None:
        super().__init__()
        self.target = target
        self.dropped = 0
        self._reported = 0
        self._queue: queue.Queue[logging.LogRecord | None] = queue.Queue(limit)
        # A daemon thread: a disk that never answers must not keep the process from exiting.
        self._writer = threading.Thread(target=self._write, name="log writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        # The message is merged now: its arguments may change once this call returns.
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _write(self) -> None:
        while (record := self._queue.get()) is not None:
            try:
                self.target.handle(record)
                if self.dropped > self._reported:
                    lost, self._reported = self.dropped - self._reported, self.dropped
                    note = logging.makeLogRecord(
                        {"name": "combined_models.daemon", "levelno": logging.WARNING, "levelname": "WARNING"}
                    )
                    note.msg = f"{lost} log records dropped: the log could not be written fast enough"
                    self.target.handle(note)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (`timeout` seconds at most) until every record handed over so far is written."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks and (left := deadline - time.monotonic()) > 0:
                self._queue.all_tasks_done.wait(left)
        self.target.flush()

    def close(self) -> None:
        """Write what waits (a few seconds at most), then close the target."""
        if self._writer.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=5.0)
            self._writer.join(timeout=5.0)
        self.target.close()
        super().close()


def setup_logging(cfg: LoggingConfig, log_dir: Path, *, stream: IO[str] | None = None) -> logging.Handler:
    """Send the root logger (INFO) to `log_dir/daemon.log` (or `stream`, stderr, when `file` is off),
    through a writer thread; returns the handler the root logger got."""
    formatter: logging.Formatter = JsonFormatter() if cfg.format == "json" else TextFormatter()
    handler: logging.Handler
    if cfg.file:
        path = log_dir / DAEMON_LOG
        open_private_log(path).close()  # a 0700 dir of ours, no link planted where the log goes
        handler = PrivateRotatingFileHandler(
            path, maxBytes=cfg.max_bytes, backupCount=cfg.backup_count, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    background = BackgroundHandler(handler)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(background)
    root.setLevel(logging.INFO)
    # httpx logs every request at INFO, between the headers and the first body byte: on the
    # first-token path. Its warnings still come through.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return background

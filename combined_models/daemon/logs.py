"""The daemon's log: human-readable lines or JSON lines, in a private file rotated by size.

Structured lines (one per request, failover and health change) carry their fields in
`extra={"event": {...}}`: the JSON format puts them beside `ts`, `level`, `logger` and
`msg`; the text format appends them as `key=value`.
"""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
import sys
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


def setup_logging(cfg: LoggingConfig, log_dir: Path, *, stream: IO[str] | None = None) -> logging.Handler:
    """Send the root logger (INFO) to `log_dir/daemon.log` (or `stream`, stderr, when `file` is off)."""
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
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # httpx logs every request at INFO, between the headers and the first body byte: on the
    # first-token path. Its warnings still come through.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler

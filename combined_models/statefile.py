"""Files we wrote earlier and read back: load them, or move a bad one aside and start fresh.

A state file is input like any other: a crash, a full disk, another version
or a hand edit can leave anything in it. `load_or_quarantine` reads a bounded
number of bytes and hands them to a strict decoder; whatever the decoder
refuses (or a directory, a fifo, a file too large) is renamed to
`<name>.bad-<UTC timestamp>` beside it with one warning naming it, so the
daemon starts fresh and the evidence is kept.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from .limits import decode_bounded
from .paths import write_private

T = TypeVar("T")

MAX_STATE_BYTES = 8 * 1024 * 1024  # far above any file we write; the metadata cache passes its own bound

log = logging.getLogger("combined_models.state")


class Unusable(Exception):
    """A path that holds no readable state file (a directory, a fifo, too large)."""


def quarantine_name(path: Path, when: datetime) -> Path:
    """Where a bad file goes: beside it, named for when it was found. Pure."""
    return path.with_name(f"{path.name}.bad-{when.astimezone(UTC):%Y%m%dT%H%M%SZ}")


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of regular file `path`, at most `max_bytes` (Unusable beyond, or for anything but a file)."""
    # O_NONBLOCK: opening a fifo someone left here must not hang the daemon.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Unusable("not a regular file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Unusable(f"larger than {max_bytes} bytes")
    return data


def move_aside(path: Path) -> Path:
    """Rename `path` to a free `<name>.bad-<timestamp>[-n]` beside it; returns the new path."""
    first = quarantine_name(path, datetime.now(UTC))
    target, n = first, 1
    while os.path.lexists(target):
        n += 1
        target = first.with_name(f"{first.name}-{n}")
    os.rename(path, target)
    return target


def load_or_quarantine(
    path: Path,
    decode: Callable[[bytes], T],
    *,
    what: str,
    max_bytes: int = MAX_STATE_BYTES,
    logger: logging.Logger = log,
) -> T | None:
    """`decode` of the file at `path`; None when there is none or it was bad (then moved aside).

    `decode` must be strict: exact types, bounded numbers and sizes. Any exception it
    raises means the content is unusable. A file we may not read is left where it is.
    """
    try:
        data = read_bounded(path, max_bytes)
    except FileNotFoundError:
        return None
    except IsADirectoryError:  # (some systems refuse to open a directory for reading)
        why = "a directory, not a file"
    except Unusable as e:
        why = str(e)
    except OSError as e:
        logger.warning("cannot read the %s %s (%s); starting without it", what, path, e.strerror or e)
        return None
    else:
        try:
            return decode_bounded(decode, data)
        except Exception as e:
            why = f"invalid content: {_first_line(e)}"
    try:
        moved = move_aside(path)
    except OSError as e:
        logger.warning(
            "ignoring the %s %s (%s); it could not be moved aside: %s", what, path, why, e.strerror or e
        )
        return None
    logger.warning("the %s %s was unusable (%s); moved it to %s and starting fresh", what, path, why, moved)
    return None


def load_or_create_token(
    path: Path,
    decode: Callable[[bytes], str],
    *,
    what: str,
    max_bytes: int,
    logger: logging.Logger = log,
) -> str:
    """The secret token kept at `path`: read it, or generate one (0600) the first time.

    A damaged file is moved aside (`load_or_quarantine`) and replaced.
    """
    if token := load_or_quarantine(path, decode, what=what, max_bytes=max_bytes, logger=logger):
        return token
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    write_private(tmp, (token + "\n").encode())
    try:
        # link() fails if the file appeared meanwhile: two daemons starting at once agree on one token.
        os.link(tmp, path)
    except FileExistsError:
        return load_or_quarantine(path, decode, what=what, max_bytes=max_bytes, logger=logger) or token
    finally:
        tmp.unlink(missing_ok=True)
    return token


def _first_line(e: Exception) -> str:
    # Decoder messages name a place (`$.providers.x`), never the content; keep them short anyway.
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]

"""A sans-IO Server-Sent Events decoder, per the WHATWG "event stream interpretation".

Lines end only at CR, LF or CRLF (never at U+2028 and friends, which may sit
unescaped inside JSON strings), a CR at the end of one chunk followed by an LF
at the start of the next is one line end, `:` lines are comments.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str
    id: str | None = None


class SSEDecoder:
    """Feed bytes, get whole events. An event not closed by a blank line at EOF is dropped."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""  # text of the current, unfinished line
        self._skip_lf = False  # last chunk ended with CR: a leading LF belongs to it
        self._started = False  # BOM only at the very start
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._utf8.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        out: list[SSEEvent] = []
        pos, n = 0, len(text)
        if self._skip_lf and n:
            self._skip_lf = False
            if text[0] == "\n":
                pos = 1
        # The next CR and LF at or after pos, searched again only once passed (-1: none left),
        # so a chunk of many lines is not rescanned to its end for every line.
        cr, lf = text.find("\r", pos), text.find("\n", pos)
        while pos < n:
            if 0 <= cr < pos:
                cr = text.find("\r", pos)
            if 0 <= lf < pos:
                lf = text.find("\n", pos)
            ends = [i for i in (cr, lf) if i >= 0]
            if not ends:
                self._partial += text[pos:]
                break
            end = min(ends)
            line = self._partial + text[pos:end]
            self._partial = ""
            if text[end] == "\r":
                if end + 1 < n:
                    pos = end + 2 if text[end + 1] == "\n" else end + 1
                else:
                    self._skip_lf = True
                    pos = end + 1
            else:
                pos = end + 1
            event = self._line(line)
            if event is not None:
                out.append(event)
        return out

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._id = value
        return None

    @property
    def has_pending(self) -> bool:
        """True when bytes of an unfinished event are buffered (what EOF would drop)."""
        return bool(self._partial or self._data)

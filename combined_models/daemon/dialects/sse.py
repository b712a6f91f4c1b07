"""A sans-IO Server-Sent Events decoder, per the WHATWG "event stream interpretation".

Lines end only at CR, LF or CRLF (never at U+2028 and friends, which may sit
unescaped inside JSON strings), a CR at the end of one chunk followed by an LF
at the start of the next is one line end, `:` lines are comments.

A line or an event longer than its limit raises `SSETooLong`: a provider that never
ends a line must not make us buffer without end.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

# Far beyond any real event (a token, a whole tool call's arguments), far below what hurts.
MAX_LINE = 8 * 1024 * 1024  # characters
MAX_EVENT = 8 * 1024 * 1024  # characters of data in one event


class SSETooLong(ValueError):
    """A line or an event past its limit."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str
    id: str | None = None


class SSEDecoder:
    """Feed bytes, get whole events. An event not closed by a blank line at EOF is dropped."""

    def __init__(self, max_line: int = MAX_LINE, max_event: int = MAX_EVENT) -> None:
        self._max_line = max_line
        self._max_event = max_event
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Text of the current, unfinished line, in pieces: joined once the line ends (a str
        # attribute grown with += is copied whole on every chunk).
        self._partial: list[str] = []
        self._partial_len = 0
        self._skip_lf = False  # last chunk ended with CR: a leading LF belongs to it
        self._started = False  # BOM only at the very start
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0  # characters in _data, newlines included
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
                self._partial_len += n - pos
                self._check_line(self._partial_len)
                self._partial.append(text[pos:])
                break
            end = min(ends)
            self._check_line(self._partial_len + end - pos)
            if self._partial:
                line = "".join(self._partial) + text[pos:end]
                self._partial, self._partial_len = [], 0
            else:
                line = text[pos:end]
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
            self._event, self._data, self._data_size = "", [], 0
            return event
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data_size += len(value) + 1
            if self._data_size > self._max_event:
                raise SSETooLong(f"an event longer than {self._max_event} characters")
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._id = value
        return None

    def _check_line(self, length: int) -> None:
        if length > self._max_line:
            raise SSETooLong(f"a line longer than {self._max_line} characters")

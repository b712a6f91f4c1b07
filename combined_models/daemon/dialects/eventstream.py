"""AWS binary event-stream codec (``application/vnd.amazon.eventstream``), sans-IO.

Bedrock's ConverseStream answers with this framing. Each message is::

    total_len u32 | headers_len u32 | prelude_crc u32 | headers | payload | message_crc u32

with every integer big-endian, ``prelude_crc = crc32(bytes[0:8])`` and
``message_crc = crc32(bytes[0:total_len-4])``. The decoder takes bytes in
arbitrary chunks and returns complete messages; it never does I/O.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import ClassVar, TypeAlias

__all__ = [
    "MAX_HEADERS_LENGTH",
    "MAX_MESSAGE_LENGTH",
    "MAX_PAYLOAD_LENGTH",
    "EventStreamDecoder",
    "EventStreamError",
    "EventStreamMessage",
    "HeaderType",
    "HeaderValue",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "encode_message",
]

# Limits copied from botocore so a corrupt length can't make us buffer forever.
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024
# What the decoder buffers for one message: a streamed event is a token or a tool call's input,
# kilobytes; this refuses a hostile length before waiting for (and holding) its bytes.
MAX_MESSAGE_LENGTH = 16 * 1024 * 1024

_PRELUDE = struct.Struct("!III")
_PRELUDE_LEN = _PRELUDE.size  # 12
_CRC_LEN = 4
_MIN_MESSAGE_LEN = _PRELUDE_LEN + _CRC_LEN  # an empty message: no headers, no payload

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: A decoded header value. Integers of every width decode to ``int``, byte
#: arrays to ``bytes``, timestamps to an aware UTC ``datetime`` (millisecond
#: precision) and UUIDs to ``uuid.UUID``.
HeaderValue: TypeAlias = bool | int | bytes | str | datetime | uuid.UUID


class EventStreamError(ValueError):
    """The byte stream is not valid event-stream framing (corrupt, oversize or truncated)."""


class HeaderType(IntEnum):
    """Header value type tags from the wire format."""

    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    SHORT = 3
    INTEGER = 4
    LONG = 5
    BYTE_ARRAY = 6
    STRING = 7
    TIMESTAMP = 8
    UUID = 9


@dataclass(frozen=True, slots=True)
class _SizedInt:
    """An integer header value with an explicit wire width (a plain ``int`` picks int32/int64)."""

    value: int
    TYPE: ClassVar[HeaderType]
    FORMAT: ClassVar[struct.Struct]


@dataclass(frozen=True, slots=True)
class Int8(_SizedInt):
    TYPE = HeaderType.BYTE
    FORMAT = struct.Struct("!b")


@dataclass(frozen=True, slots=True)
class Int16(_SizedInt):
    TYPE = HeaderType.SHORT
    FORMAT = struct.Struct("!h")


@dataclass(frozen=True, slots=True)
class Int32(_SizedInt):
    TYPE = HeaderType.INTEGER
    FORMAT = struct.Struct("!i")


@dataclass(frozen=True, slots=True)
class Int64(_SizedInt):
    TYPE = HeaderType.LONG
    FORMAT = struct.Struct("!q")


_FIXED_WIDTH: dict[int, struct.Struct] = {
    HeaderType.BYTE: Int8.FORMAT,
    HeaderType.SHORT: Int16.FORMAT,
    HeaderType.INTEGER: Int32.FORMAT,
    HeaderType.LONG: Int64.FORMAT,
}


@dataclass(frozen=True, slots=True)
class EventStreamMessage:
    """One decoded event-stream message."""

    headers: dict[str, HeaderValue]
    payload: bytes

    def _str_header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value if isinstance(value, str) else None

    @property
    def message_type(self) -> str | None:
        """``:message-type``: ``event``, ``exception`` or ``error``."""
        return self._str_header(":message-type")

    @property
    def event_type(self) -> str | None:
        """``:event-type``, e.g. ``contentBlockDelta`` (set on ``event`` messages)."""
        return self._str_header(":event-type")

    @property
    def exception_type(self) -> str | None:
        """``:exception-type``, e.g. ``throttlingException`` (set on ``exception`` messages)."""
        return self._str_header(":exception-type")


# --------------------------------------------------------------------------- decoding


def _crc(data: bytes | bytearray) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _decode_headers(data: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise EventStreamError(f"header block truncated: needed {n} bytes at offset {pos} of {len(data)}")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    try:
        while pos < len(data):
            name = take(_U8.unpack(take(1))[0]).decode("utf-8")
            tag = _U8.unpack(take(1))[0]
            value: HeaderValue
            if tag == HeaderType.BOOL_TRUE:
                value = True
            elif tag == HeaderType.BOOL_FALSE:
                value = False
            elif tag == HeaderType.TIMESTAMP:
                millis = Int64.FORMAT.unpack(take(8))[0]
                value = _EPOCH + timedelta(milliseconds=millis)
            elif tag in _FIXED_WIDTH:
                fmt = _FIXED_WIDTH[tag]
                value = fmt.unpack(take(fmt.size))[0]
            elif tag == HeaderType.BYTE_ARRAY:
                value = take(_U16.unpack(take(2))[0])
            elif tag == HeaderType.STRING:
                value = take(_U16.unpack(take(2))[0]).decode("utf-8")
            elif tag == HeaderType.UUID:
                value = uuid.UUID(bytes=take(16))
            else:
                raise EventStreamError(f"unknown header value type {tag} for header {name!r}")
            # botocore rejects duplicates too; silently keeping one would hide corruption.
            if name in headers:
                raise EventStreamError(f"duplicate header {name!r}")
            headers[name] = value
    except UnicodeDecodeError as exc:
        raise EventStreamError(f"header is not valid UTF-8: {exc}") from exc
    except OverflowError as exc:  # a timestamp outside datetime's range
        raise EventStreamError(f"header timestamp out of range: {exc}") from exc
    return headers


class EventStreamDecoder:
    """Incremental decoder: ``feed`` it bytes as they arrive, get back complete messages.

    Both CRCs are checked and the header/payload sizes are bounded before
    waiting for a message body, so a corrupt length fails fast instead of
    buffering up to 4 GiB. Once an error is raised the stream cannot be
    resynchronised and every later call raises it again.
    """

    def __init__(self, max_message_length: int = MAX_MESSAGE_LENGTH) -> None:
        self._max_message_length = max_message_length
        self._buf = bytearray()
        # total_len of the message at the head of the buffer, once its prelude is validated
        self._total_len: int | None = None
        self._error: EventStreamError | None = None

    def feed(self, data: bytes) -> list[EventStreamMessage]:
        """Buffer ``data`` and return every message it completes (possibly none).

        If the data holds good messages followed by corruption, the good ones
        are returned and the error is raised by the next ``feed``/``eof`` call,
        so nothing that arrived intact is lost.
        """
        self._raise_if_failed()
        self._buf += data
        messages: list[EventStreamMessage] = []
        pos = 0
        try:
            while (total_len := self._message_length(pos)) is not None:
                if len(self._buf) - pos < total_len:
                    break
                messages.append(self._decode_message(pos, total_len))
                pos += total_len
                self._total_len = None
        except EventStreamError as exc:
            self._error = exc
            if not messages:
                raise
        finally:
            # One slice per feed rather than per message keeps byte-by-byte feeding linear.
            del self._buf[:pos]
        return messages

    def eof(self) -> None:
        """Signal the end of the stream; raises ``EventStreamError`` if a partial message is left."""
        self._raise_if_failed()
        if self._buf:
            what = f"{self._total_len}-byte message" if self._total_len is not None else "12-byte prelude"
            raise EventStreamError(
                f"stream truncated: {len(self._buf)} bytes of an incomplete {what} left over"
            )

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise EventStreamError(f"event stream already failed: {self._error}") from self._error

    def _message_length(self, pos: int) -> int | None:
        """Validate the prelude at ``pos`` and return the message's total length (None: need more bytes)."""
        if self._total_len is not None:
            return self._total_len
        if len(self._buf) - pos < _PRELUDE_LEN:
            return None
        total_len: int
        headers_len: int
        prelude_crc: int
        total_len, headers_len, prelude_crc = _PRELUDE.unpack_from(self._buf, pos)
        actual = _crc(self._buf[pos : pos + 8])
        if actual != prelude_crc:
            raise EventStreamError(f"prelude CRC mismatch: expected 0x{prelude_crc:08x}, got 0x{actual:08x}")
        if headers_len > MAX_HEADERS_LENGTH:
            raise EventStreamError(
                f"headers length {headers_len} exceeds the maximum of {MAX_HEADERS_LENGTH}"
            )
        if total_len > self._max_message_length:
            raise EventStreamError(
                f"message length {total_len} exceeds the maximum of {self._max_message_length}"
            )
        if total_len < _MIN_MESSAGE_LEN + headers_len:
            raise EventStreamError(f"total length {total_len} too small for headers length {headers_len}")
        payload_len = total_len - _MIN_MESSAGE_LEN - headers_len
        if payload_len > MAX_PAYLOAD_LENGTH:
            raise EventStreamError(
                f"payload length {payload_len} exceeds the maximum of {MAX_PAYLOAD_LENGTH}"
            )
        self._total_len = total_len
        return total_len

    def _decode_message(self, pos: int, total_len: int) -> EventStreamMessage:
        frame = self._buf[pos : pos + total_len]
        (expected,) = _U32.unpack_from(frame, total_len - _CRC_LEN)
        actual = _crc(frame[: total_len - _CRC_LEN])
        if actual != expected:
            raise EventStreamError(f"message CRC mismatch: expected 0x{expected:08x}, got 0x{actual:08x}")
        (headers_len,) = _U32.unpack_from(frame, 4)
        headers_end = _PRELUDE_LEN + headers_len
        return EventStreamMessage(
            headers=_decode_headers(bytes(frame[_PRELUDE_LEN:headers_end])),
            payload=bytes(frame[headers_end : total_len - _CRC_LEN]),
        )


# --------------------------------------------------------------------------- encoding

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _encode_value(name: str, value: HeaderValue | _SizedInt) -> bytes:
    # bool before int: bool is an int subclass.
    if isinstance(value, bool):
        return _U8.pack(HeaderType.BOOL_TRUE if value else HeaderType.BOOL_FALSE)
    if isinstance(value, int):
        value = Int32(value) if _INT32_MIN <= value <= _INT32_MAX else Int64(value)
    try:
        if isinstance(value, _SizedInt):
            return _U8.pack(value.TYPE) + value.FORMAT.pack(value.value)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError(f"header {name!r}: timestamp must be timezone-aware")
            millis = (value - _EPOCH) // timedelta(milliseconds=1)
            return _U8.pack(HeaderType.TIMESTAMP) + Int64.FORMAT.pack(millis)
        if isinstance(value, uuid.UUID):
            return _U8.pack(HeaderType.UUID) + value.bytes
        if isinstance(value, str):
            return _U8.pack(HeaderType.STRING) + _with_u16_len(value.encode("utf-8"))
        if isinstance(value, bytes):
            return _U8.pack(HeaderType.BYTE_ARRAY) + _with_u16_len(value)
    except struct.error as exc:
        raise ValueError(f"header {name!r}: value out of range: {exc}") from exc
    raise TypeError(f"header {name!r}: unsupported value type {type(value).__name__}")


def _with_u16_len(data: bytes) -> bytes:
    return _U16.pack(len(data)) + data  # struct.error (→ ValueError) past 65535 bytes


def encode_message(headers: Mapping[str, HeaderValue | _SizedInt], payload: bytes) -> bytes:
    """Encode one event-stream message.

    Header values map to wire types by Python type: ``bool``, ``int`` (int32,
    or int64 if it doesn't fit), ``Int8``/``Int16``/``Int32``/``Int64`` for an
    explicit width, ``bytes``, ``str``, aware ``datetime`` (timestamp, ms) and
    ``uuid.UUID``. Raises ``ValueError`` for values the format can't carry.
    """
    parts = []
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        if not 0 < len(raw_name) <= 255:
            raise ValueError(f"header name {name!r} must be 1 to 255 UTF-8 bytes")
        parts.append(_U8.pack(len(raw_name)) + raw_name + _encode_value(name, value))
    header_bytes = b"".join(parts)
    if len(header_bytes) > MAX_HEADERS_LENGTH:
        raise ValueError(f"headers length {len(header_bytes)} exceeds the maximum of {MAX_HEADERS_LENGTH}")
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise ValueError(f"payload length {len(payload)} exceeds the maximum of {MAX_PAYLOAD_LENGTH}")
    total_len = _MIN_MESSAGE_LEN + len(header_bytes) + len(payload)
    prelude = struct.pack("!II", total_len, len(header_bytes))
    body = prelude + _U32.pack(_crc(prelude)) + header_bytes + payload
    return body + _U32.pack(_crc(body))

"""AWS event-stream framing, the encoding side (provider-protocols.md §3.4; no I/O).

    total_len u32 | headers_len u32 | prelude_crc u32 | headers | payload | message_crc u32

Every integer is big-endian; the CRCs are zlib's CRC32, the prelude one over the first
8 bytes and the message one over everything before it. Header values here are all
strings (type 7): `name_len u8 | name | 7 | value_len u16 | value`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

_STRING = 7
PRELUDE_LEN = 12  # two lengths and the prelude CRC
CRC_LEN = 4


def encode_headers(headers: Sequence[tuple[str, str]]) -> bytes:
    out = bytearray()
    for name, value in headers:
        raw_name, raw_value = name.encode(), value.encode()
        out += struct.pack(">B", len(raw_name)) + raw_name
        out += struct.pack(">BH", _STRING, len(raw_value)) + raw_value
    return bytes(out)


def encode_message(headers: Sequence[tuple[str, str]], payload: bytes) -> bytes:
    """One complete frame with both CRCs."""
    raw_headers = encode_headers(headers)
    total = PRELUDE_LEN + len(raw_headers) + len(payload) + CRC_LEN
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    body = prelude + raw_headers + payload
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def corrupt_crc(frame: bytes) -> bytes:
    """The same frame with its message CRC flipped, so a checking decoder must reject it."""
    (crc,) = struct.unpack(">I", frame[-CRC_LEN:])
    return frame[:-CRC_LEN] + struct.pack(">I", crc ^ 0xFFFFFFFF)


def event(event_type: str, payload: bytes) -> bytes:
    """An `event` frame as Bedrock sends them (header order as in the doc's test vector)."""
    headers = [(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")]
    return encode_message(headers, payload)


def exception(exception_type: str, payload: bytes) -> bytes:
    """An `exception` frame: an error after the HTTP 200."""
    headers = [
        (":exception-type", exception_type),
        (":content-type", "application/json"),
        (":message-type", "exception"),
    ]
    return encode_message(headers, payload)

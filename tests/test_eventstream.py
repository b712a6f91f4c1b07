"""The AWS event-stream codec, checked against the doc's test vector and botocore's parser."""

from __future__ import annotations

import itertools
import struct
import uuid
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from combined_models.daemon.dialects.eventstream import (
    MAX_HEADERS_LENGTH,
    MAX_MESSAGE_LENGTH,
    MAX_PAYLOAD_LENGTH,
    EventStreamDecoder,
    EventStreamError,
    EventStreamMessage,
    HeaderValue,
    Int8,
    Int16,
    Int32,
    Int64,
    encode_message,
)

# provider-protocols.md §3.4, spelled out byte by byte.
VECTOR_PAYLOAD = b'{"contentBlockIndex":0,"delta":{"text":"Hi"}}'
VECTOR = (
    bytes.fromhex("00000094 00000057 b4ab9aee")
    + b"\x0b:event-type\x07\x00\x11contentBlockDelta"
    + b"\x0d:content-type\x07\x00\x10application/json"
    + b"\x0d:message-type\x07\x00\x05event"
    + VECTOR_PAYLOAD
    + bytes.fromhex("1f944657")
)
VECTOR_HEADERS = {
    ":event-type": "contentBlockDelta",
    ":content-type": "application/json",
    ":message-type": "event",
}

ALL_TYPES: dict[str, HeaderValue | Int8 | Int16 | Int32 | Int64] = {
    "t": True,
    "f": False,
    "i8": Int8(-128),
    "i16": Int16(32767),
    "i32": -(2**31),
    "i64": 2**40,
    "raw": b"\x00\xff\x10",
    "s": "héllo",
    "ts": datetime(2025, 5, 14, 12, 30, 1, 123000, tzinfo=UTC),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
}


def event(event_type: str, payload: bytes) -> bytes:
    return encode_message(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}, payload
    )


STREAM_MESSAGES = [
    event("messageStart", b'{"role":"assistant"}'),
    event("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"Hel"}}'),
    encode_message({}, b""),  # the smallest legal frame: 16 bytes
    encode_message(ALL_TYPES, b"\x00binary\xff"),
    event("metadata", b'{"usage":{"inputTokens":3,"outputTokens":2,"totalTokens":5}}'),
]
STREAM = b"".join(STREAM_MESSAGES)


def decode_all(data: bytes) -> list[EventStreamMessage]:
    decoder = EventStreamDecoder()
    messages = decoder.feed(data)
    decoder.eof()
    return messages


def botocore_parse(data: bytes) -> list[tuple[dict[str, object], bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(m.headers, m.payload) for m in buffer]


def as_botocore(message: EventStreamMessage) -> tuple[dict[str, object], bytes]:
    """Our decoded values in botocore's representation (timestamps as ms, UUIDs as bytes)."""
    headers: dict[str, object] = {}
    for name, value in message.headers.items():
        if isinstance(value, datetime):
            headers[name] = (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
        elif isinstance(value, uuid.UUID):
            headers[name] = value.bytes
        else:
            headers[name] = value
    return headers, message.payload


def frame(headers: bytes, payload: bytes) -> bytes:
    """An independent encoder: struct + zlib straight from the doc's layout."""
    prelude = struct.pack("!II", 16 + len(headers) + len(payload), len(headers))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    body = prelude + headers + payload
    return body + struct.pack("!I", zlib.crc32(body))


# --------------------------------------------------------------------------- known answers


def test_doc_vector_decodes_exactly() -> None:
    [message] = decode_all(VECTOR)
    assert message.headers == VECTOR_HEADERS
    assert list(message.headers) == list(VECTOR_HEADERS)  # wire order kept
    assert message.payload == VECTOR_PAYLOAD
    assert message.message_type == "event"
    assert message.event_type == "contentBlockDelta"
    assert message.exception_type is None


def test_doc_vector_encodes_exactly() -> None:
    assert encode_message(VECTOR_HEADERS, VECTOR_PAYLOAD) == VECTOR


def test_exception_frame_properties() -> None:
    data = encode_message(
        {
            ":exception-type": "throttlingException",
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        b'{"message":"slow down"}',
    )
    [message] = decode_all(data)
    assert message.message_type == "exception"
    assert message.exception_type == "throttlingException"
    assert message.event_type is None


def test_all_header_types_round_trip() -> None:
    [message] = decode_all(encode_message(ALL_TYPES, b"x"))
    expected = {
        name: value.value if isinstance(value, Int8 | Int16 | Int32 | Int64) else value
        for name, value in ALL_TYPES.items()
    }
    assert message.headers == expected
    assert isinstance(message.headers["t"], bool)


# --------------------------------------------------------------------------- botocore as reference


def test_botocore_parses_our_frames_identically() -> None:
    ours = [as_botocore(m) for m in decode_all(STREAM)]
    assert botocore_parse(STREAM) == ours
    assert len(ours) == len(STREAM_MESSAGES)


def test_botocore_agrees_on_doc_vector() -> None:
    assert botocore_parse(VECTOR) == [(VECTOR_HEADERS, VECTOR_PAYLOAD)]


def test_hand_built_frames_match_botocore() -> None:
    headers = (
        b"\x04byte\x02\xff"  # int8 -1
        + b"\x05short\x03\x80\x00"  # int16 -32768
        + b"\x03int\x04\x00\x00\x01\x00"  # int32 256
        + b"\x04long\x05"
        + struct.pack("!q", -(2**63))
        + b"\x02ts\x08"
        + struct.pack("!q", -1500)  # before the epoch
        + b"\x04uuid\x09"
        + bytes(range(16))
        + b"\x04blob\x06\x00\x00"  # empty byte array
        + b"\x03yes\x00"
        + b"\x02no\x01"
    )
    data = frame(headers, b"payload") + frame(b"", b"")
    [first, second] = decode_all(data)
    assert first.headers == {
        "byte": -1,
        "short": -32768,
        "int": 256,
        "long": -(2**63),
        "ts": datetime(1969, 12, 31, 23, 59, 58, 500000, tzinfo=UTC),
        "uuid": uuid.UUID(bytes=bytes(range(16))),
        "blob": b"",
        "yes": True,
        "no": False,
    }
    assert second == EventStreamMessage(headers={}, payload=b"")
    assert botocore_parse(data) == [as_botocore(first), as_botocore(second)]


@settings(max_examples=60, deadline=None)
@given(
    headers=st.dictionaries(
        st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 255),
        st.one_of(
            st.booleans(),
            st.integers(-(2**63), 2**63 - 1),
            st.binary(max_size=50),
            st.text(max_size=50),
            st.uuids(),
            st.datetimes(timezones=st.just(UTC)).map(
                lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
            ),
        ),
        max_size=8,
    ),
    payload=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 2000), max_size=5),
)
def test_random_messages_round_trip_in_random_chunks(
    headers: dict[str, HeaderValue], payload: bytes, cuts: list[int]
) -> None:
    data = encode_message(headers, payload) * 2
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    decoder = EventStreamDecoder()
    messages = [m for a, b in itertools.pairwise(bounds) for m in decoder.feed(data[a:b])]
    decoder.eof()
    expected = EventStreamMessage(headers=headers, payload=payload)
    assert messages == [expected, expected]
    assert botocore_parse(data) == [as_botocore(expected)] * 2


# --------------------------------------------------------------------------- chunk boundaries


def test_byte_by_byte_emits_each_message_on_its_last_byte() -> None:
    decoder = EventStreamDecoder()
    emitted_at = []
    messages = []
    for i in range(len(STREAM)):
        got = decoder.feed(STREAM[i : i + 1])
        messages += got
        emitted_at += [i + 1] * len(got)
    decoder.eof()
    ends = [sum(map(len, STREAM_MESSAGES[: k + 1])) for k in range(len(STREAM_MESSAGES))]
    assert emitted_at == ends
    assert messages == decode_all(STREAM)


def test_every_two_way_split() -> None:
    expected = decode_all(STREAM)
    ends = [sum(map(len, STREAM_MESSAGES[: k + 1])) for k in range(len(STREAM_MESSAGES))]
    for cut in range(len(STREAM) + 1):
        decoder = EventStreamDecoder()
        first = decoder.feed(STREAM[:cut])
        assert len(first) == sum(1 for end in ends if end <= cut), cut  # each as soon as it is whole
        rest = decoder.feed(STREAM[cut:])
        decoder.eof()
        assert first + rest == expected, cut


def test_empty_feed_and_a_message_across_feeds() -> None:
    decoder = EventStreamDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(VECTOR[:20]) == []
    assert len(decoder.feed(VECTOR[20:] + VECTOR[:5])) == 1
    assert len(decoder.feed(VECTOR[5:])) == 1
    decoder.eof()


# --------------------------------------------------------------------------- corruption and truncation


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_corrupt_prelude_crc() -> None:
    with pytest.raises(
        EventStreamError, match=r"^prelude CRC mismatch: expected 0xb4ab9aef, got 0xb4ab9aee$"
    ):
        EventStreamDecoder().feed(flip(VECTOR, 11))


def test_corrupt_length_is_caught_by_prelude_crc_before_buffering() -> None:
    # A flipped length bit must fail at once, not wait for 2**24 more bytes.
    with pytest.raises(EventStreamError, match="prelude CRC mismatch"):
        EventStreamDecoder().feed(flip(VECTOR, 1)[:12])


def test_corrupt_message_crc() -> None:
    with pytest.raises(
        EventStreamError, match=r"^message CRC mismatch: expected 0x1f944656, got 0x1f944657$"
    ):
        EventStreamDecoder().feed(flip(VECTOR, len(VECTOR) - 1))


def test_corrupt_payload_byte() -> None:
    with pytest.raises(EventStreamError, match="message CRC mismatch"):
        EventStreamDecoder().feed(flip(VECTOR, 120))


def prelude(total_len: int, headers_len: int) -> bytes:
    head = struct.pack("!II", total_len, headers_len)
    return head + struct.pack("!I", zlib.crc32(head))


def test_oversize_headers_length_fails_on_the_prelude() -> None:
    with pytest.raises(
        EventStreamError, match=f"headers length {MAX_HEADERS_LENGTH + 1} exceeds the maximum"
    ):
        EventStreamDecoder().feed(prelude(2**31, MAX_HEADERS_LENGTH + 1))


def test_oversize_payload_length_fails_on_the_prelude() -> None:
    with pytest.raises(
        EventStreamError, match=f"payload length {MAX_PAYLOAD_LENGTH + 1} exceeds the maximum"
    ):
        EventStreamDecoder(max_message_length=2**32).feed(prelude(16 + MAX_PAYLOAD_LENGTH + 1, 0))


def test_a_message_longer_than_the_limit_fails_on_its_prelude_before_its_bytes_arrive() -> None:
    with pytest.raises(
        EventStreamError, match=f"message length {MAX_MESSAGE_LENGTH + 1} exceeds the maximum"
    ):
        EventStreamDecoder().feed(prelude(MAX_MESSAGE_LENGTH + 1, 0))
    # Exactly at the limit is waited for (nothing raised, nothing decoded yet).
    decoder = EventStreamDecoder(max_message_length=64)
    assert decoder.feed(prelude(64, 0) + b"x" * 10) == []
    with pytest.raises(EventStreamError, match="message length 65 exceeds the maximum of 64"):
        EventStreamDecoder(max_message_length=64).feed(prelude(65, 0))


def test_total_length_smaller_than_headers() -> None:
    with pytest.raises(EventStreamError, match="total length 20 too small for headers length 10"):
        EventStreamDecoder().feed(prelude(20, 10))


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        (b"\x01a\x0a", "unknown header value type 10 for header 'a'"),
        (b"\x01a\x07\x00\x05ab", "header block truncated"),
        (b"\x01a\x00\x01a\x01", "duplicate header 'a'"),
        (b"\x01\xff\x00", "not valid UTF-8"),
        (b"\x01a\x08" + struct.pack("!q", 2**62), "timestamp out of range"),
    ],
)
def test_bad_header_block(headers: bytes, match: str) -> None:
    with pytest.raises(EventStreamError, match=match):
        EventStreamDecoder().feed(frame(headers, b""))


def test_truncated_stream_reported_at_eof() -> None:
    decoder = EventStreamDecoder()
    assert len(decoder.feed(VECTOR + VECTOR[:100])) == 1
    with pytest.raises(
        EventStreamError, match="stream truncated: 100 bytes of an incomplete 148-byte message"
    ):
        decoder.eof()


def test_truncated_prelude_reported_at_eof() -> None:
    decoder = EventStreamDecoder()
    decoder.feed(VECTOR[:5])
    with pytest.raises(EventStreamError, match="5 bytes of an incomplete 12-byte prelude"):
        decoder.eof()


def test_good_messages_before_corruption_are_delivered_then_error_sticks() -> None:
    decoder = EventStreamDecoder()
    assert len(decoder.feed(VECTOR + flip(VECTOR, 11))) == 1
    with pytest.raises(EventStreamError, match="already failed: prelude CRC mismatch"):
        decoder.feed(VECTOR)
    with pytest.raises(EventStreamError, match="already failed"):
        decoder.eof()


def test_error_is_a_value_error() -> None:
    assert issubclass(EventStreamError, ValueError)


# --------------------------------------------------------------------------- encoder limits


@pytest.mark.parametrize(
    ("headers", "payload", "error", "match"),
    [
        ({"ts": datetime(2025, 1, 1)}, b"", ValueError, "timezone-aware"),
        ({"s": "x" * 65536}, b"", ValueError, "out of range"),
        ({"n": Int8(128)}, b"", ValueError, "out of range"),
        ({"x" * 256: 1}, b"", ValueError, "1 to 255 UTF-8 bytes"),
        ({"": 1}, b"", ValueError, "1 to 255 UTF-8 bytes"),
        ({"f": 1.5}, b"", TypeError, "unsupported value type float"),
        ({}, b"x" * (MAX_PAYLOAD_LENGTH + 1), ValueError, "payload length"),
        ({f"h{i}": "x" * 60000 for i in range(3)}, b"", ValueError, "headers length"),
    ],
)
def test_encoder_rejects(
    headers: dict[str, object], payload: bytes, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        encode_message(headers, payload)  # type: ignore[arg-type]

"""The SSE decoder against the WHATWG event-stream rules (provider-protocols.md §7.1)."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from combined_models.daemon.dialects.sse import SSEDecoder, SSEEvent


def feed_all(*chunks: bytes) -> tuple[list[SSEEvent], SSEDecoder]:
    dec = SSEDecoder()
    out: list[SSEEvent] = []
    for c in chunks:
        out += dec.feed(c)
    return out, dec


def data_of(events: list[SSEEvent]) -> list[str]:
    return [e.data for e in events]


def nothing_pending(dec: SSEDecoder) -> bool:
    """Whether the decoder holds no unfinished event: ending one now dispatches nothing."""
    return dec.feed(b"\n\n") == []


def bytewise(raw: bytes) -> list[bytes]:
    return [raw[i : i + 1] for i in range(len(raw))]


# ---------------------------------------------------------------- line ends


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_ends(eol: bytes) -> None:
    raw = b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    events, dec = feed_all(raw)
    assert data_of(events) == ["a\nb", "c"]
    assert nothing_pending(dec)


def test_mixed_line_ends_in_one_stream() -> None:
    events, _ = feed_all(b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r")
    assert data_of(events) == ["a\nb\nc", "d"]


def test_cr_then_lf_in_the_next_chunk_is_one_line_end() -> None:
    # Were CR and LF two line ends, the LF would be a blank line and dispatch "a" alone.
    events, dec = feed_all(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n")
    assert data_of(events) == ["a\nb"]
    assert nothing_pending(dec)


def test_cr_at_chunk_end_survives_an_empty_chunk() -> None:
    events, _ = feed_all(b"data: a\r", b"", b"\ndata: b\r\n\r\n")
    assert data_of(events) == ["a\nb"]


def test_cr_cr_across_chunks_is_two_line_ends() -> None:
    events, _ = feed_all(b"data: a\r", b"\r")
    assert data_of(events) == ["a"]


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"])
def test_unicode_line_separators_inside_data_are_not_line_breaks(char: str) -> None:
    payload = '{"content":"one' + char + 'two"}'
    events, _ = feed_all(f"data: {payload}\n\n".encode())
    assert data_of(events) == [payload]


# ---------------------------------------------------------------- fields


def test_comments_are_skipped() -> None:
    raw = b": OPENROUTER PROCESSING\n\n: OPENROUTER PROCESSING\n\ndata: a\n:mid-event comment\ndata: b\n\n"
    events, _ = feed_all(raw)
    assert data_of(events) == ["a\nb"]


def test_comment_only_stream_dispatches_nothing_and_leaves_nothing_pending() -> None:
    events, dec = feed_all(b": OPENROUTER PROCESSING\n\n")
    assert events == []
    assert nothing_pending(dec)


def test_event_field_and_default_type() -> None:
    raw = b"event: message_start\ndata: {}\n\ndata: plain\n\nevent: content_block_delta\ndata: x\n\n"
    events, _ = feed_all(raw)
    assert [(e.event, e.data) for e in events] == [
        ("message_start", "{}"),
        ("message", "plain"),
        ("content_block_delta", "x"),
    ]


def test_multi_line_data_is_joined_with_newlines() -> None:
    events, _ = feed_all(b"data: a\ndata:\ndata: c\n\n")
    assert data_of(events) == ["a\n\nc"]


@pytest.mark.parametrize(
    ("line", "value"),
    [
        (b"data: x", "x"),
        (b"data:x", "x"),
        (b"data:  x", " x"),  # only one space is stripped
        (b"data: x ", "x "),  # trailing space kept
        (b"data:\tx", "\tx"),  # only a space, not other whitespace
        (b"data: a: b", "a: b"),  # split at the first colon only
        (b"data", ""),  # no colon: the whole line is the field name
    ],
)
def test_value_parsing(line: bytes, value: str) -> None:
    events, _ = feed_all(line + b"\n\n")
    assert data_of(events) == [value]


def test_event_without_data_is_not_dispatched_and_its_type_is_forgotten() -> None:
    events, dec = feed_all(b"event: ping\n\n", b"data: x\n\n")
    assert [(e.event, e.data) for e in events] == [("message", "x")]
    assert nothing_pending(dec)


def test_unknown_fields_and_retry_are_ignored() -> None:
    events, _ = feed_all(b"retry: 100\nfoo: bar\ndata: x\nDATA: y\n\n")
    assert [(e.event, e.data) for e in events] == [("message", "x")]


def test_id_field_is_kept_and_one_with_nul_ignored() -> None:
    events, _ = feed_all(b"id: 7\ndata: a\n\n", b"data: b\n\n", b"id: 8\x00\ndata: c\n\n")
    assert [(e.data, e.id) for e in events] == [("a", "7"), ("b", "7"), ("c", "7")]


# ---------------------------------------------------------------- BOM, UTF-8, EOF


def test_bom_at_start_is_dropped() -> None:
    events, _ = feed_all(b"\xef\xbb\xbfdata: x\n\n")
    assert data_of(events) == ["x"]


def test_bom_split_across_chunks_is_dropped() -> None:
    events, _ = feed_all(*bytewise(b"\xef\xbb\xbfdata: x\n\n"))
    assert data_of(events) == ["x"]


def test_bom_later_in_the_stream_is_not_dropped() -> None:
    # A second BOM is part of the line: the field name becomes "\ufeffdata", an unknown field.
    events, _ = feed_all(b"data: a\n\n", b"\xef\xbb\xbfdata: b\n\n", b"data: \xef\xbb\xbfc\n\n")
    assert data_of(events) == ["a", "\ufeffc"]


def test_multibyte_utf8_split_across_chunks() -> None:
    text = "héllo 日本語 🎉 \u2028"
    raw = f"data: {text}\n\n".encode()
    events, _ = feed_all(*bytewise(raw))
    assert data_of(events) == [text]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    events, _ = feed_all(b"data: a\xffb\n\n")
    assert data_of(events) == ["a\ufffdb"]


def test_trailing_event_without_blank_line_is_pending_not_emitted() -> None:
    dec = SSEDecoder()
    assert data_of(dec.feed(b"data: a\n\ndata: b\n")) == ["a"]
    assert data_of(dec.feed(b"\n")) == ["b"]
    assert nothing_pending(dec)


def test_unfinished_line_is_pending() -> None:
    dec = SSEDecoder()
    assert dec.feed(b'data: {"partial') == []
    assert data_of(dec.feed(b'"}\n\n')) == ['{"partial"}']


# ---------------------------------------------------------------- every split point

OPENAI_STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    + 'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Héllo \u2028 wörld 🎉"},"finish_reason":null}]}\n\n'.encode()
    + b'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
    b"data: [DONE]\n\n"
)


def _variant(eol: bytes) -> bytes:
    return OPENAI_STREAM.replace(b"\n", eol)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_split_point_gives_identical_events(eol: bytes) -> None:
    raw = _variant(eol)
    expected, dec = feed_all(raw)
    assert len(expected) == 5
    assert expected[-1].data == "[DONE]"
    assert "\u2028" in expected[1].data
    assert nothing_pending(dec)
    for i in range(len(raw) + 1):
        got, dec = feed_all(raw[:i], raw[i:])
        assert got == expected, f"split at {i}"
        assert nothing_pending(dec)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_one_byte_at_a_time_emits_nothing_early(eol: bytes) -> None:
    raw = _variant(eol)
    expected, _ = feed_all(raw)
    dec = SSEDecoder()
    got: list[SSEEvent] = []
    for i, b in enumerate(bytewise(raw)):
        out = dec.feed(b)
        if out:
            # An event is complete only at the end of its blank line.
            assert raw[: i + 1].endswith(eol + eol) or raw[: i + 1].endswith(eol + eol[:1]), i
        got += out
    assert got == expected


# ---------------------------------------------------------------- against a reference, on random streams


def reference(raw: bytes) -> list[tuple[str, str]]:
    """The WHATWG algorithm, written the slow and obvious way."""
    text = raw.decode("utf-8", "replace").removeprefix("\ufeff")
    lines = re.split(r"\r\n|\r|\n", text)[:-1]  # the last piece has no line end yet
    out: list[tuple[str, str]] = []
    event = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                out.append((event or "message", "\n".join(data)))
            event, data = "", []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
    return out


PIECES = ["data", "event", ":", " ", "x", "é", "\u2028", "\r", "\n", "\r\n", "\ufeff"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(PIECES), max_size=40).map(lambda p: "".join(p).encode()),
    st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_random_streams_match_the_reference_at_any_chunking(raw: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(raw), *(min(c, len(raw)) for c in cuts)})
    chunks = [raw[a:b] for a, b in itertools.pairwise(bounds)]
    events, _ = feed_all(*chunks)
    assert [(e.event, e.data) for e in events] == reference(raw)

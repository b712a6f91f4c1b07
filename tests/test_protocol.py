"""The native frame codec: msgpack round-trips and the sans-IO length-prefixed decoder."""

from __future__ import annotations

import struct
from typing import Any

import msgspec
import pytest

from combined_models.chat import (
    Attempt,
    ChatRequest,
    DoneEvent,
    ErrorEvent,
    FailoverEvent,
    ImagePart,
    Message,
    ProviderEvent,
    TextEvent,
    TextPart,
    ThinkingEvent,
    ThinkingPart,
    Tool,
    ToolCallEvent,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from combined_models.protocol import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    Cancel,
    Chat,
    CombinedModel,
    DaemonInfo,
    Error,
    Event,
    FrameDecoder,
    FrameTooLarge,
    Hello,
    Member,
    ModelHealth,
    ModelsInfo,
    ModelsQuery,
    ModelsReply,
    Ok,
    ProviderStatus,
    Shutdown,
    StatusInfo,
    StatusQuery,
    StatusReply,
    Welcome,
    client_decoder,
    encode_frame,
    server_decoder,
)

FULL_REQUEST = ChatRequest(
    system="be brief",
    messages=[
        Message("user", "What's the weather in Paris? ünïcödé 日本"),
        Message(
            "assistant",
            [
                ThinkingPart(text="let me look", signature="sig", provider="anthropic"),
                TextPart("Checking."),
                ToolCallPart("call_1", "get_weather", {"city": "Paris", "days": [1, 2]}),
            ],
        ),
        Message(
            "user",
            [
                ToolResultPart(tool_call_id="call_1", content="sunny", is_error=False),
                ImagePart(media_type="image/jpeg", data="AAAA"),
                ImagePart(url="https://example.com/a.png"),
                TextPart("thanks"),
            ],
        ),
    ],
    max_tokens=100,
    temperature=0.5,
    top_p=0.9,
    stop=["\n\n"],
    tools=[Tool(name="get_weather", description="weather", parameters={"type": "object"})],
    tool_choice="auto",
)

CLIENT_FRAMES: list[tuple[str, Any]] = [
    ("hello", Hello(version=PROTOCOL_VERSION, client="test/1")),
    ("chat", Chat(id=1, model="claude-sonnet-4", request=FULL_REQUEST)),
    ("cancel", Cancel(id=1)),
    ("status", StatusQuery(id=2)),
    ("models", ModelsQuery(id=3)),
    ("shutdown", Shutdown(id=4)),
]

STATUS = StatusInfo(
    daemon=DaemonInfo(pid=42, version="0.1.0", uptime_s=1.5, socket="/run/cm.sock", config="/etc/cm.toml"),
    providers=[
        ProviderStatus(
            id="anthropic",
            state="cooldown",
            cooldown_remaining_s=12.5,
            in_flight=1,
            requests=10,
            failures=2,
            last_error="HTTP 429: slow down",
            api="anthropic",
            last_error_kind="rate_limited",
            success_rate=0.8,
            failovers_saved=3,
            key_source="env ANTHROPIC_API_KEY",
            models=[ModelHealth(model="claude-sonnet-4", state="cooldown", cooldown_remaining_s=12.5)],
        ),
        ProviderStatus(
            id="openrouter",
            state="ready",
            cooldown_remaining_s=0.0,
            in_flight=0,
            requests=0,
            failures=0,
            last_error=None,
        ),
    ],
)

SERVER_FRAMES: list[tuple[str, Any]] = [
    ("welcome", Welcome(version=PROTOCOL_VERSION, server="combined-models/0.1.0", pid=42)),
    ("event", Event(id=1, event=ProviderEvent("anthropic", "claude-sonnet-4-20250514"))),
    ("event", Event(id=1, event=TextEvent("Hello \u2028 wörld"))),
    ("event", Event(id=1, event=ThinkingEvent("hmm", signature="s"))),
    ("event", Event(id=1, event=ToolCallEvent("call_1", "get_weather", {"city": "Paris"}))),
    (
        "event",
        Event(
            id=1,
            event=FailoverEvent(
                from_="anthropic", to="openrouter", reason="rate_limited", after_output=True, message="429"
            ),
        ),
    ),
    (
        "event",
        Event(
            id=1,
            event=DoneEvent(
                provider="openrouter",
                model="anthropic/claude-sonnet-4",
                finish_reason="stop",
                usage=Usage(input_tokens=1, output_tokens=2, cache_read_tokens=3, cache_write_tokens=4),
            ),
        ),
    ),
    (
        "event",
        Event(
            id=1,
            event=ErrorEvent(
                kind="all_providers_failed",
                message="nope",
                attempts=[Attempt(provider="anthropic", error="429", model="m", kind="rate_limited")],
                retry_after_s=3.0,
            ),
        ),
    ),
    ("status_reply", StatusReply(id=2, status=STATUS)),
    (
        "models_reply",
        ModelsReply(
            id=3,
            models=ModelsInfo(
                models=[
                    CombinedModel(
                        id="claude-sonnet-4",
                        members=[Member(provider="anthropic", model="claude-sonnet-4-20250514")],
                        explicit=True,
                    )
                ]
            ),
        ),
    ),
    ("ok", Ok(id=4)),
    (
        "error",
        Error(
            id=5,
            kind="all_providers_cooling",
            message="everything cools",
            attempts=[Attempt(provider="openai", error="HTTP 503")],
            retry_after_s=2.5,
        ),
    ),
]


def body_of(frame: bytes) -> bytes:
    (size,) = struct.unpack(">I", frame[:4])
    assert size == len(frame) - 4
    return frame[4:]


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(("tag", "frame"), CLIENT_FRAMES, ids=[t for t, _ in CLIENT_FRAMES])
def test_client_frame_round_trip(tag: str, frame: Any) -> None:
    body = body_of(encode_frame(frame))
    assert msgspec.msgpack.decode(body)["type"] == tag
    assert client_decoder.decode(body) == frame


@pytest.mark.parametrize(
    ("tag", "frame"), SERVER_FRAMES, ids=[f"{t}-{i}" for i, (t, _) in enumerate(SERVER_FRAMES)]
)
def test_server_frame_round_trip(tag: str, frame: Any) -> None:
    body = body_of(encode_frame(frame))
    assert msgspec.msgpack.decode(body)["type"] == tag
    assert server_decoder.decode(body) == frame


def test_event_wire_names_follow_the_contract() -> None:
    """The failover event's `from` is a Python keyword; on the wire it must be spelled `from`."""
    frame = Event(id=9, event=FailoverEvent(from_="a", to="b", reason="transient", after_output=False))
    raw = msgspec.msgpack.decode(body_of(encode_frame(frame)))
    assert raw["id"] == 9
    assert raw["event"] == {
        "type": "failover",
        "from": "a",
        "to": "b",
        "reason": "transient",
        "after_output": False,
        "message": "",
    }


# ---------------------------------------------------------------- decoder at every split

FRAMES = [encode_frame(f) for _, f in CLIENT_FRAMES[:1] + CLIENT_FRAMES[2:]] + [
    encode_frame(Error(id=0, kind="protocol_error", message="bye"))
]
STREAM = b"".join(FRAMES)
BODIES = [body_of(f) for f in FRAMES]
ENDS = {sum(len(f) for f in FRAMES[: i + 1]) for i in range(len(FRAMES))}


def test_whole_stream_at_once() -> None:
    dec = FrameDecoder()
    assert dec.feed(STREAM) == BODIES
    assert dec.pending == 0
    assert dec.feed(b"") == []


def test_one_byte_at_a_time_emits_each_frame_exactly_when_complete() -> None:
    dec = FrameDecoder()
    got: list[bytes] = []
    for i in range(len(STREAM)):
        out = dec.feed(STREAM[i : i + 1])
        if i + 1 in ENDS:
            assert len(out) == 1, f"a frame should complete at byte {i + 1}"
        else:
            assert out == [], f"emitted early at byte {i + 1}"
        got += out
    assert got == BODIES
    assert dec.pending == 0


def test_every_two_way_split() -> None:
    for i in range(len(STREAM) + 1):
        dec = FrameDecoder()
        got = dec.feed(STREAM[:i]) + dec.feed(STREAM[i:])
        assert got == BODIES, f"split at {i}"
        assert dec.pending == 0


@pytest.mark.parametrize("extra", [1, 3, 4, 5, len(FRAMES[0]) - 1])
def test_trailing_partial_frame_stays_pending(extra: int) -> None:
    tail = FRAMES[0][:extra]
    dec = FrameDecoder()
    assert dec.feed(STREAM + tail) == BODIES
    assert dec.pending == extra
    assert dec.feed(FRAMES[0][extra:]) == [BODIES[0]]
    assert dec.pending == 0


def test_empty_frame_body() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\x00\x00\x00\x00" + FRAMES[0]) == [b"", BODIES[0]]


# ---------------------------------------------------------------- size limits


def test_oversized_length_raises_before_the_body_arrives() -> None:
    dec = FrameDecoder()
    header = struct.pack(">I", MAX_FRAME + 1)
    assert dec.feed(header[:3]) == []  # not knowable yet
    with pytest.raises(FrameTooLarge):
        dec.feed(header[3:])


def test_custom_limit_is_inclusive() -> None:
    dec = FrameDecoder(max_frame=10)
    assert dec.feed(struct.pack(">I", 10) + b"0123456789") == [b"0123456789"]
    with pytest.raises(FrameTooLarge, match="11"):
        dec.feed(struct.pack(">I", 11))


def test_oversized_length_after_a_valid_frame_in_the_same_chunk() -> None:
    dec = FrameDecoder(max_frame=64)
    with pytest.raises(FrameTooLarge):
        dec.feed(FRAMES[0] + struct.pack(">I", 2**32 - 1))


def _error_with_body_size(size: int) -> Error:
    probe = Error(id=1, kind="k", message="x" * 70_000)  # same str32 header as the real one
    overhead = len(msgspec.msgpack.encode(probe)) - 70_000
    return Error(id=1, kind="k", message="x" * (size - overhead))


def test_encode_frame_accepts_exactly_max_and_refuses_one_more() -> None:
    frame = encode_frame(_error_with_body_size(MAX_FRAME))
    assert len(frame) == 4 + MAX_FRAME
    with pytest.raises(FrameTooLarge):
        encode_frame(_error_with_body_size(MAX_FRAME + 1))


# ---------------------------------------------------------------- decoding errors and evolution


def test_client_decoder_rejects_a_server_frame() -> None:
    body = body_of(encode_frame(Welcome(version=1, server="s", pid=1)))
    with pytest.raises(msgspec.ValidationError):
        client_decoder.decode(body)


def test_server_decoder_rejects_a_client_frame() -> None:
    with pytest.raises(msgspec.ValidationError):
        server_decoder.decode(body_of(encode_frame(Cancel(id=1))))


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "cancel", "id": "one"},  # wrong field type
        {"type": "cancel"},  # missing id
        {"type": "hello"},  # missing version
        {"type": "nope", "id": 1},  # unknown tag
        {"id": 1},  # no tag
        [1, 2, 3],  # not a map
        {"type": "chat", "id": 1, "model": "m", "request": {"messages": [{"role": "system", "content": ""}]}},
    ],
)
def test_client_decoder_rejects_wrong_typed_frames(raw: Any) -> None:
    with pytest.raises(msgspec.ValidationError):
        client_decoder.decode(msgspec.msgpack.encode(raw))


@pytest.mark.parametrize("garbage", [b"\xc1", b"\x81", b"", b"\xda\x00\x10ab"])
def test_client_decoder_rejects_garbage_as_decode_error(garbage: bytes) -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        client_decoder.decode(garbage)
    # ValidationError subclasses DecodeError; garbage must not look like a schema problem.
    assert not isinstance(info.value, msgspec.ValidationError)


def test_unknown_extra_fields_are_accepted() -> None:
    raw = {"type": "cancel", "id": 7, "added_in_v2": {"x": [1, 2]}}
    assert client_decoder.decode(msgspec.msgpack.encode(raw)) == Cancel(id=7)
    hello = {"type": "hello", "version": 2, "client": "c", "features": ["zstd"]}
    assert client_decoder.decode(msgspec.msgpack.encode(hello)) == Hello(version=2, client="c")


def test_fields_added_with_defaults_are_optional_for_old_peers() -> None:
    """An old daemon's status (before api, key_source, models, …) still decodes on a new client."""
    old = {
        "type": "status_reply",
        "id": 1,
        "status": {
            "daemon": {"pid": 1, "version": "0.0.1", "uptime_s": 0.0, "future": True},
            "providers": [
                {
                    "id": "p",
                    "state": "ready",
                    "cooldown_remaining_s": 0.0,
                    "in_flight": 0,
                    "requests": 0,
                    "failures": 0,
                    "last_error": None,
                    "future": 1,
                }
            ],
        },
    }
    reply = server_decoder.decode(msgspec.msgpack.encode(old))
    assert isinstance(reply, StatusReply)
    p = reply.status.providers[0]
    assert (p.api, p.key_source, p.models, p.success_rate) == ("", "", [], None)

"""The Anthropic Messages dialect: request building, stream decoding, error classification, model paging."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from combined_models.chat import (
    ChatRequest,
    DecodedItem,
    DocumentPart,
    Finished,
    ImagePart,
    Message,
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
from combined_models.daemon.dialects.anthropic import AnthropicDialect, AnthropicStreamDecoder
from combined_models.daemon.dialects.base import Endpoint, StreamDecoder
from combined_models.daemon.errors import Failure, UpstreamError

NOW = datetime(2025, 8, 21, 12, 40, 29, tzinfo=UTC)
D = AnthropicDialect()
EP = Endpoint(base_url="https://api.anthropic.com", api_key="sk-ant-test")
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name"}},
    "required": ["city"],
}
WEATHER = Tool(name="get_weather", description="Current weather for a city", parameters=WEATHER_PARAMS)


def build(
    request: ChatRequest, endpoint: Endpoint = EP, model: str = "claude-sonnet-4-20250514"
) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(D.build_chat(request, model, endpoint).body)
    return body


# ---------------------------------------------------------------- build_chat


def test_request_line_headers_and_minimal_body() -> None:
    req = D.build_chat(ChatRequest(messages=[Message("user", "hi")]), "claude-sonnet-4-20250514", EP)
    assert (req.method, req.url) == ("POST", "https://api.anthropic.com/v1/messages")
    assert req.headers == {
        "content-type": "application/json",
        "accept": "text/event-stream",
        "anthropic-version": "2023-06-01",
        "x-api-key": "sk-ant-test",
    }
    assert json.loads(req.body) == {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }


@pytest.mark.parametrize(
    "base", ["https://api.anthropic.com", "https://api.anthropic.com/", "https://api.anthropic.com/v1/"]
)
def test_base_url_with_or_without_v1(base: str) -> None:
    assert D.build_chat(ChatRequest(messages=[]), "m", Endpoint(base_url=base)).url == (
        "https://api.anthropic.com/v1/messages"
    )


def test_bearer_auth_option_and_endpoint_headers() -> None:
    ep = Endpoint(
        base_url="https://api.anthropic.com",
        api_key="oauth-token",
        headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
        options={"auth": "bearer"},
    )
    headers = D.build_chat(ChatRequest(messages=[]), "m", ep).headers
    assert headers["authorization"] == "Bearer oauth-token"
    assert "x-api-key" not in headers
    assert headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert (
        "x-api-key" not in D.build_chat(ChatRequest(messages=[]), "m", Endpoint(base_url="http://x")).headers
    )


def test_full_conversation_exact_shape() -> None:
    request = ChatRequest(
        system="Be terse.",
        messages=[
            Message(
                "user",
                [TextPart("What's the weather here?"), ImagePart(media_type="image/jpeg", data="QUJD")],
            ),
            Message(
                "assistant",
                [
                    ThinkingPart(
                        text="The photo shows Paris.", signature="EqQBCkYIBxgC", provider="anthropic"
                    ),
                    TextPart("Let me check."),
                    ToolCallPart("toolu_01A", "get_weather", {"city": "Paris"}),
                ],
            ),
            Message("user", [ToolResultPart(tool_call_id="toolu_01A", content="18°C, sunny")]),
            Message("user", "Thanks! And tomorrow?"),
        ],
        tools=[WEATHER],
        tool_choice="auto",
        thinking_budget=2048,
        temperature=0.5,  # not sent: thinking needs the default
        stop=["\n\nHuman:"],
    )
    assert build(request) == {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 2048 + 4096,
        "stream": True,
        "system": "Be terse.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What's the weather here?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "The photo shows Paris.", "signature": "EqQBCkYIBxgC"},
                    {"type": "text", "text": "Let me check."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01A",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18°C, sunny"},
                    {"type": "text", "text": "Thanks! And tomorrow?"},
                ],
            },
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather for a city",
                "input_schema": WEATHER_PARAMS,
            }
        ],
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "stop_sequences": ["\n\nHuman:"],
    }


def test_unsigned_thinking_is_dropped_and_tool_loop_without_thinking_turns_thinking_off() -> None:
    # History from another vendor: its reasoning has no signature, and the tool loop's
    # assistant turn then has no thinking block, which Anthropic requires with thinking on.
    request = ChatRequest(
        messages=[
            Message("user", "Weather?"),
            Message(
                "assistant",
                [
                    ThinkingPart(text="o3 reasoning", provider="openai"),
                    ToolCallPart("call_1", "get_weather", {}),
                ],
            ),
            Message("user", [ToolResultPart(tool_call_id="call_1", content="rain", is_error=True)]),
        ],
        tools=[WEATHER],
        thinking_budget=4000,
        temperature=0.3,
    )
    body = build(request)
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}],
    }
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "rain", "is_error": True}
    ]
    assert "thinking" not in body
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 4096


def test_finished_tool_loop_allows_thinking_again() -> None:
    request = ChatRequest(
        messages=[
            Message("user", "Weather?"),
            Message("assistant", [ToolCallPart("call_1", "get_weather", {})]),
            Message("user", [ToolResultPart(tool_call_id="call_1", content="rain")]),
            Message("assistant", "It rains."),
            Message("user", "Why?"),
        ],
        thinking_budget=2000,
    )
    assert build(request)["thinking"] == {"type": "enabled", "budget_tokens": 2000}


@pytest.mark.parametrize(
    ("given", "sent"), [(0.0, 0.0), (0.7, 0.7), (1.0, 1.0), (1.5, 1.0), (2.0, 1.0), (-0.5, 0.0)]
)
def test_temperature_is_clamped_to_anthropics_range(given: float, sent: float) -> None:
    body = build(ChatRequest(messages=[Message("user", "x")], temperature=given, top_p=0.5))
    assert body["temperature"] == sent
    assert body["top_p"] == 0.5


def test_thinking_drops_temperature_clamps_top_p_and_unforces_tool_choice() -> None:
    for choice in ("required", "any", "get_weather"):
        body = build(
            ChatRequest(
                messages=[Message("user", "x")],
                tools=[WEATHER],
                tool_choice=choice,
                thinking_budget=1024,
                temperature=0.2,
                top_p=0.5,
            )
        )
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
        assert body["tool_choice"] == {"type": "auto"}
        assert "temperature" not in body
        assert body["top_p"] == 0.95
    body = build(
        ChatRequest(
            messages=[Message("user", "x")], tools=[WEATHER], tool_choice="none", thinking_budget=1024
        )
    )
    assert body["tool_choice"] == {"type": "none"}


@pytest.mark.parametrize(
    ("max_tokens", "budget", "options", "sent_max", "sent_budget"),
    [
        (None, 2048, {}, 2048 + 4096, 2048),
        (None, 2048, {"default_max_tokens": 1000}, 3048, 2048),
        (None, 100, {}, 1024 + 4096, 1024),  # below the API's floor: raised to 1024
        (8000, 2048, {}, 8000, 2048),
        (3000, 5000, {}, 3000, 2999),  # explicit max_tokens is a cap: the budget shrinks under it
        (1024, 2048, {}, 1024, None),  # no room left to think above the floor: no thinking
        (500, None, {}, 500, None),
        (None, None, {"default_max_tokens": 1000}, 1000, None),
        (None, 0, {}, 4096, None),
    ],
)
def test_max_tokens_always_sent_and_above_the_budget(
    max_tokens: int | None,
    budget: int | None,
    options: dict[str, Any],
    sent_max: int,
    sent_budget: int | None,
) -> None:
    ep = Endpoint(base_url="https://api.anthropic.com", options=options)
    body = build(
        ChatRequest(messages=[Message("user", "x")], max_tokens=max_tokens, thinking_budget=budget), ep
    )
    assert body["max_tokens"] == sent_max
    if sent_budget is None:
        assert "thinking" not in body
    else:
        assert body["thinking"] == {"type": "enabled", "budget_tokens": sent_budget}
        assert body["max_tokens"] > sent_budget


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("any", {"type": "any"}),
        ("none", {"type": "none"}),
        ("get_weather", {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice_mapping(choice: str, sent: dict[str, str]) -> None:
    assert build(ChatRequest(messages=[], tools=[WEATHER], tool_choice=choice))["tool_choice"] == sent


def test_no_tools_no_tool_choice_and_tool_without_description() -> None:
    assert "tool_choice" not in build(ChatRequest(messages=[], tool_choice="required"))
    body = build(ChatRequest(messages=[], tools=[Tool(name="now")]))
    assert body["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    assert "tool_choice" not in body


def test_final_assistant_message_is_a_prefill_without_trailing_whitespace() -> None:
    body = build(
        ChatRequest(
            messages=[Message("user", "Count to five."), Message("assistant", "One, two, three, \n")],
            thinking_budget=2048,  # not with a prefill
        )
    )
    assert body["messages"][-1] == {"role": "assistant", "content": "One, two, three,"}
    assert "thinking" not in body
    assert body["max_tokens"] == 4096


def test_prefill_strips_only_the_final_text_block() -> None:
    body = build(
        ChatRequest(
            messages=[
                Message("assistant", "Earlier answer.  "),
                Message("user", "go on"),
                Message("assistant", [TextPart("Part one. "), TextPart("Part two \t")]),
            ]
        )
    )
    assert body["messages"][0]["content"] == "Earlier answer.  "
    assert body["messages"][2]["content"] == [
        {"type": "text", "text": "Part one. "},
        {"type": "text", "text": "Part two"},
    ]


def test_same_role_messages_merge_and_empty_ones_vanish() -> None:
    body = build(
        ChatRequest(
            messages=[
                Message("user", "a"),
                Message("user", "   "),
                Message("user", [TextPart("b"), TextPart("")]),
                Message("assistant", [ThinkingPart(text="unsigned")]),  # nothing left: dropped
                Message("user", "c"),
            ]
        )
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b"},
                {"type": "text", "text": "c"},
            ],
        }
    ]


def test_tool_results_open_the_user_turn() -> None:
    body = build(
        ChatRequest(
            messages=[
                Message("assistant", [ToolCallPart("t1", "f", {}), ToolCallPart("t2", "f", {})]),
                Message("user", [TextPart("here:"), ToolResultPart(tool_call_id="t1", content="")]),
                Message("user", [ToolResultPart(tool_call_id="t2", content="two")]),
            ]
        )
    )
    assert body["messages"][1]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1"},
        {"type": "tool_result", "tool_use_id": "t2", "content": "two"},
        {"type": "text", "text": "here:"},
    ]


def test_image_url_and_document_blocks() -> None:
    body = build(
        ChatRequest(
            messages=[
                Message(
                    "user",
                    [
                        ImagePart(url="https://example.com/cat.png"),
                        DocumentPart(data="JVBERi0x", title="Spec"),
                        DocumentPart(media_type="application/pdf", data="JVBERi0y"),
                    ],
                )
            ]
        )
    )
    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
            "title": "Spec",
        },
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0y"},
        },
    ]


# ---------------------------------------------------------------- models


def test_list_models_request_and_paging() -> None:
    first = D.build_list_models(EP)
    assert (first.method, first.url) == ("GET", "https://api.anthropic.com/v1/models?limit=1000")
    assert first.headers["x-api-key"] == "sk-ant-test"
    assert first.headers["anthropic-version"] == "2023-06-01"
    assert "content-type" not in first.headers
    nxt = D.build_list_models(EP, NOW, "claude-3-5-haiku-20241022")
    assert nxt.url == "https://api.anthropic.com/v1/models?limit=1000&after_id=claude-3-5-haiku-20241022"

    page1 = {
        "data": [
            {
                "type": "model",
                "id": "claude-opus-4-1-20250805",
                "display_name": "Claude Opus 4.1",
                "created_at": "2025-08-05T00:00:00Z",
            },
            {
                "type": "model",
                "id": "claude-sonnet-4-20250514",
                "display_name": "Claude Sonnet 4",
                "created_at": "2025-05-22T00:00:00Z",
            },
        ],
        "has_more": True,
        "first_id": "claude-opus-4-1-20250805",
        "last_id": "claude-sonnet-4-20250514",
    }
    assert D.parse_models(json.dumps(page1).encode()) == (
        ["claude-opus-4-1-20250805", "claude-sonnet-4-20250514"],
        "claude-sonnet-4-20250514",
    )
    page2 = {
        "data": [{"type": "model", "id": "claude-3-haiku-20240307"}],
        "has_more": False,
        "first_id": "claude-3-haiku-20240307",
        "last_id": "claude-3-haiku-20240307",
    }
    assert D.parse_models(json.dumps(page2).encode(), "claude-sonnet-4-20250514") == (
        ["claude-3-haiku-20240307"],
        None,
    )


def test_parse_models_stops_on_a_repeated_cursor_and_rejects_garbage() -> None:
    page = {"data": [], "has_more": True, "last_id": "x"}
    assert D.parse_models(json.dumps(page).encode(), "x") == ([], None)
    assert D.parse_models(b'{"data":[{"id":"a"},{"x":1},"s"],"has_more":true,"last_id":null}') == (
        ["a"],
        None,
    )
    with pytest.raises(ValueError):
        D.parse_models(b"[]")
    with pytest.raises(ValueError):
        D.parse_models(b"<html>")


# ---------------------------------------------------------------- stream helpers


def sse(*events: tuple[str, Any]) -> bytes:
    return "".join(
        f"event: {name}\ndata: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
        for name, payload in events
    ).encode()


def decode_with(new: Callable[[], StreamDecoder], *chunks: bytes, close: bool = True) -> list[DecodedItem]:
    dec = new()
    out: list[DecodedItem] = []
    for c in chunks:
        out += dec.feed(c)
    if close:
        out += dec.close()
    return out


def event_ends(raw: bytes) -> set[int]:
    """Byte offsets at which an SSE event is complete (its blank line seen), LF or CRLF."""
    return {i for i in range(len(raw)) if raw[: i + 1].endswith((b"\n\n", b"\r\n\r"))}


def check_every_split(new: Callable[[], StreamDecoder], raw: bytes, expected: list[DecodedItem]) -> None:
    """Whole, one byte at a time (items only when an event completes), and at every 2-way split."""
    assert decode_with(new, raw) == expected
    dec, got, ends = new(), [], event_ends(raw)
    for i in range(len(raw)):
        items = dec.feed(raw[i : i + 1])
        assert not items or i in ends, f"items before their event was complete, at byte {i}"
        got += items
    got += dec.close()
    assert got == expected
    for i in range(len(raw) + 1):
        assert decode_with(new, raw[:i], raw[i:]) == expected, f"split at {i}"


def decode(*chunks: bytes, close: bool = True) -> list[DecodedItem]:
    return decode_with(AnthropicStreamDecoder, *chunks, close=close)


# ---------------------------------------------------------------- streams

# provider-protocols.md §2.2 (SDK fixture tool_use_response.txt), the "…" filled in.
TOOL_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message",'
    b'"role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,'
    b'"stop_sequence":null,"usage":{"input_tokens":377,"cache_creation_input_tokens":0,'
    b'"cache_read_input_tokens":0,"output_tokens":1}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    b"event: ping\n"
    b'data: {"type": "ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"I\'ll check the weather."}}\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":0}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
    b'"id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"locati"}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"on\\": \\"Paris\\"}"}}\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":1}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":64}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)
TOOL_EVENTS = [e + b"\n\n" for e in TOOL_STREAM.split(b"\n\n")[:-1]]
TOOL_FINISH = Finished(
    finish_reason="tool_calls",
    usage=Usage(input_tokens=377, output_tokens=64),
    model="claude-sonnet-4-20250514",
)
TOOL_ITEMS: list[DecodedItem] = [
    TextEvent("I'll check the weather."),
    ToolCallEvent("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", {"location": "Paris"}),
    TOOL_FINISH,
]

# The extended-thinking stream of Anthropic's streaming docs, with usage (and cache use) added.
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"
THINKING_STREAM = sse(
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-3-7-sonnet-20250219",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 20,
                    "cache_creation_input_tokens": 100,
                    "cache_read_input_tokens": 2000,
                    "output_tokens": 3,
                },
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {
                "type": "thinking_delta",
                "thinking": "Let me solve this step by step:\n\n1. First break down 27 * 453",
            },
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "\n2. 453 = 400 + 50 + 3"},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": SIGNATURE},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "text_delta", "text": "27 * 453 = 12,231"},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 187},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
)
THINKING_ITEMS: list[DecodedItem] = [
    ThinkingEvent("Let me solve this step by step:\n\n1. First break down 27 * 453"),
    ThinkingEvent("\n2. 453 = 400 + 50 + 3"),
    ThinkingEvent("", signature=SIGNATURE),
    TextEvent("27 * 453 = 12,231"),
    Finished(
        finish_reason="stop",
        usage=Usage(input_tokens=2120, output_tokens=187, cache_read_tokens=2000, cache_write_tokens=100),
        model="claude-3-7-sonnet-20250219",
    ),
]


def test_tool_use_stream_from_the_doc_at_every_split() -> None:
    check_every_split(AnthropicStreamDecoder, TOOL_STREAM, TOOL_ITEMS)


def test_thinking_stream_with_signature_at_every_split() -> None:
    check_every_split(AnthropicStreamDecoder, THINKING_STREAM, THINKING_ITEMS)


def test_each_item_comes_with_its_own_event_and_nothing_early() -> None:
    dec = AnthropicStreamDecoder()
    per_event = [dec.feed(e) for e in TOOL_EVENTS]
    assert per_event == [
        [],  # message_start
        [],  # content_block_start (text)
        [],  # ping
        [TextEvent("I'll check the weather.")],
        [],
        [],  # content_block_start (tool_use)
        [],
        [],
        [],  # the input's fragments are held...
        [TOOL_ITEMS[1]],  # ...and the call is whole at content_block_stop
        [],  # message_delta
        [TOOL_FINISH],  # message_stop
    ]
    assert dec.close() == []


def test_thinking_text_is_not_held_for_the_signature() -> None:
    dec = AnthropicStreamDecoder()
    events = [e + b"\n\n" for e in THINKING_STREAM.split(b"\n\n")[:-1]]
    assert dec.feed(b"".join(events[:3])) == [THINKING_ITEMS[0]]
    assert dec.feed(events[3]) == [THINKING_ITEMS[1]]
    assert dec.feed(events[4]) == [ThinkingEvent("", signature=SIGNATURE)]


def test_non_empty_text_and_thinking_in_block_start_are_relayed() -> None:
    raw = sse(
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "pre"},
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": "Hi"}},
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "redacted_thinking", "data": "EmwKAhgBEgy3"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 2}),
        ("message_stop", {"type": "message_stop"}),
    )
    assert decode(raw) == [ThinkingEvent("pre"), TextEvent("Hi"), Finished(finish_reason="stop")]


@pytest.mark.parametrize(
    ("wire", "ours"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons(wire: str, ours: str) -> None:
    raw = sse(
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": wire}, "usage": {"output_tokens": 5}},
        ),
        ("message_stop", {"type": "message_stop"}),
    )
    assert decode(raw) == [Finished(finish_reason=ours, usage=Usage(output_tokens=5))]


def test_usage_is_replaced_not_added() -> None:
    raw = sse(
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "model": "m",
                    "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1},
                },
            },
        ),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 30}},
        ),
        # Cumulative again, with the input restated and a null the proxy left in.
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 42, "input_tokens": 12, "cache_read_input_tokens": None},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    )
    assert decode(raw) == [
        Finished(
            finish_reason="stop",
            usage=Usage(input_tokens=17, output_tokens=42, cache_read_tokens=5),
            model="m",
        )
    ]


def test_eof_after_message_delta_with_stop_reason_is_complete() -> None:
    raw = b"".join(TOOL_EVENTS[:-1])  # everything but message_stop
    dec = AnthropicStreamDecoder()
    assert dec.feed(raw) == TOOL_ITEMS[:2]
    assert dec.close() == [TOOL_FINISH]
    assert dec.close() == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"".join(TOOL_EVENTS[:4]),  # mid-text
        b"".join(TOOL_EVENTS[:8]),  # mid-tool-call
        b"".join(TOOL_EVENTS[:10]),  # after the last block, before message_delta
        b"".join(TOOL_EVENTS[:10]) + TOOL_EVENTS[10][:-2],  # message_delta cut before its blank line
        sse(("message_delta", {"type": "message_delta", "delta": {"stop_reason": None}})),
    ],
    ids=["empty", "mid-text", "mid-tool", "no-message-delta", "cut-message-delta", "null-stop-reason"],
)
def test_eof_without_message_stop_is_a_truncation(raw: bytes) -> None:
    dec = AnthropicStreamDecoder()
    items = dec.feed(raw)
    assert not any(isinstance(i, Finished) for i in items)
    with pytest.raises(UpstreamError) as info:
        dec.close()
    assert info.value.kind is Failure.TRANSIENT
    assert "truncated" in info.value.message


def test_partial_tool_call_is_never_emitted() -> None:
    assert decode(b"".join(TOOL_EVENTS[:9]), close=False) == [TextEvent("I'll check the weather.")]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"type": "overloaded_error", "message": "Overloaded"}, Failure.OVERLOADED),
        ({"type": "rate_limit_error", "message": "Rate limited"}, Failure.RATE_LIMITED),
        ({"type": "api_error", "message": "Internal server error"}, Failure.TRANSIENT),
        ({"type": "invalid_request_error", "message": "late complaint"}, Failure.TRANSIENT),
        ({"type": "authentication_error", "message": "key revoked"}, Failure.TRANSIENT),
        ({"type": "billing_error", "message": "no credit"}, Failure.TRANSIENT),
        ("a plain string", Failure.TRANSIENT),
    ],
)
def test_error_event_mid_stream(error: Any, kind: Failure) -> None:
    raw = b"".join(TOOL_EVENTS[:4]) + sse(("error", {"type": "error", "error": error}))
    dec = AnthropicStreamDecoder()
    with pytest.raises(UpstreamError) as info:
        dec.feed(raw)
    assert info.value.kind is kind
    assert info.value.message.startswith("error in stream: ")
    assert info.value.status is None


def test_error_event_message_names_type_and_text() -> None:
    raw = sse(("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    with pytest.raises(UpstreamError) as info:
        decode(raw, close=False)
    assert info.value.message == "error in stream: overloaded_error: Overloaded"


def test_ping_unknown_events_and_unknown_deltas_are_ignored() -> None:
    raw = sse(
        ("ping", {"type": "ping"}),
        ("future_event", {"type": "future_event", "whatever": [1, 2]}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {
                    "type": "citations_delta",
                    "citation": {"type": "char_location", "cited_text": "x"},
                },
            },
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
        ("message_stop", {"type": "message_stop"}),
    )
    assert decode(raw) == [TextEvent("ok"), Finished(finish_reason="stop")]


def test_event_name_stands_in_for_a_missing_data_type() -> None:
    raw = b'event: content_block_delta\ndata: {"index":0,"delta":{"type":"text_delta","text":"a"}}\n\n'
    raw += b"event: message_stop\ndata: {}\n\n"
    assert decode(raw) == [TextEvent("a"), Finished(finish_reason="stop")]


def test_unknown_stop_reason_passes_through() -> None:
    raw = sse(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "new_reason"}}))
    assert decode(raw) == [Finished(finish_reason="new_reason")]


def test_events_after_message_stop_are_ignored() -> None:
    raw = TOOL_STREAM + sse(("content_block_delta", "not json"))
    assert decode(raw) == TOOL_ITEMS


@pytest.mark.parametrize("fragments", [[], [""], ["", " \n"]])
def test_tool_call_without_input_fragments_keeps_its_start_input(fragments: list[str]) -> None:
    raw = sse(
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {"tz": "UTC"}},
            },
        ),
        *[
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": f},
                },
            )
            for f in fragments
        ],
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    )
    assert decode(raw, close=False) == [ToolCallEvent("toolu_1", "now", {"tz": "UTC"})]


@pytest.mark.parametrize("fragments", [['{"a":'], ['{"a": 1}', "x"], ["[1, 2]"], ['"str"']])
def test_invalid_tool_input_json_raises_at_block_stop(fragments: list[str]) -> None:
    raw = sse(
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
            },
        ),
        *[
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": f},
                },
            )
            for f in fragments
        ],
    )
    dec = AnthropicStreamDecoder()
    assert dec.feed(raw) == []
    with pytest.raises(UpstreamError) as info:
        dec.feed(sse(("content_block_stop", {"type": "content_block_stop", "index": 0})))
    assert info.value.kind is Failure.TRANSIENT
    assert "'get_weather'" in info.value.message


@pytest.mark.parametrize(
    "data",
    [
        "{not json",
        "[1, 2]",
        '"message_stop"',
        '{"type":"message_start"}',
        '{"type":"message_start","message":[]}',
        '{"type":"content_block_start","index":0}',
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":5}}',
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}',
        '{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{}"}}',
        '{"type":"content_block_delta","index":"x","delta":{"type":"text_delta","text":"a"}}',
        '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":"many"}}',
        '{"type":"message_delta","delta":"end","usage":{}}',
    ],
)
def test_malformed_events_fail_the_stream(data: str) -> None:
    raw = sse(
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}},
        )
    ) + sse(("x", data))
    with pytest.raises(UpstreamError) as info:
        decode(raw, close=False)
    assert info.value.kind is Failure.TRANSIENT
    assert "malformed" in info.value.message


# ---------------------------------------------------------------- classify_error


def classify(status: int, body: Any, headers: dict[str, str] | None = None) -> UpstreamError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return D.classify_error(status, headers or {}, raw, NOW)


def ant_error(type_: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": type_, "message": message},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }


# What every Anthropic response carries; on a 429 one bucket is empty.
RATELIMIT_HEADERS = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": "2025-08-21T12:40:30Z",
    "anthropic-ratelimit-input-tokens-limit": "30000",
    "anthropic-ratelimit-input-tokens-remaining": "0",
    "anthropic-ratelimit-input-tokens-reset": "2025-08-21T12:40:59Z",
    "anthropic-ratelimit-output-tokens-limit": "8000",
    "anthropic-ratelimit-output-tokens-remaining": "8000",
    "anthropic-ratelimit-output-tokens-reset": "2025-08-21T12:40:30Z",
    "request-id": "req_011CSHoEeqs5C35K2UUqR7Fy",
}
RATE_LIMIT = ant_error(
    "rate_limit_error",
    "This request would exceed the rate limit for your organization (…) of 30,000 input tokens per minute.",
)


def test_529_overloaded() -> None:
    e = classify(529, ant_error("overloaded_error", "Overloaded"))
    assert (e.kind, e.status, e.retry_after) == (Failure.OVERLOADED, 529, None)
    assert e.message == "HTTP 529: overloaded_error: Overloaded"


def test_overloaded_takes_only_an_explicit_wait() -> None:
    assert classify(529, ant_error("overloaded_error", "Overloaded"), RATELIMIT_HEADERS).retry_after is None
    assert classify(529, ant_error("overloaded_error", "Overloaded"), {"retry-after": "3"}).retry_after == 3.0
    assert classify(500, ant_error("overloaded_error", "Overloaded")).kind is Failure.OVERLOADED  # body first


def test_429_waits_for_the_exhausted_bucket() -> None:
    e = classify(429, RATE_LIMIT, RATELIMIT_HEADERS)
    assert e.kind is Failure.RATE_LIMITED
    assert e.retry_after == 30.0  # input tokens: 12:40:59 - 12:40:29
    assert e.message.startswith("HTTP 429: rate_limit_error: This request would exceed")


def test_429_retry_after_wins() -> None:
    assert classify(429, RATE_LIMIT, {**RATELIMIT_HEADERS, "retry-after": "7"}).retry_after == 7.0


def test_429_without_hints() -> None:
    e = classify(429, RATE_LIMIT)
    assert (e.kind, e.retry_after) == (Failure.RATE_LIMITED, None)


def test_400_credit_balance_is_quota_without_a_wait() -> None:
    body = ant_error(
        "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade "
        "or purchase credits.",
    )
    e = classify(400, body, RATELIMIT_HEADERS)
    assert (e.kind, e.retry_after) == (Failure.QUOTA_EXHAUSTED, None)
    assert "credit balance is too low" in e.message


def test_402_billing_error_is_quota() -> None:
    assert classify(402, ant_error("billing_error", "Billing issue")).kind is Failure.QUOTA_EXHAUSTED
    assert classify(402, b"").kind is Failure.QUOTA_EXHAUSTED


@pytest.mark.parametrize(
    "message",
    [
        "prompt is too long: 205351 tokens > 200000 maximum",
        "input length and `max_tokens` exceed context limit: 197908 + 8192 > 200000, decrease input length or "
        "`max_tokens` and try again",
    ],
)
def test_400_context_too_long(message: str) -> None:
    assert classify(400, ant_error("invalid_request_error", message)).kind is Failure.CONTEXT_TOO_LONG


@pytest.mark.parametrize(
    "message",
    [
        "This model does not support assistant message prefill. The conversation must end with a user message.",
        "The conversation must end with a user message.",
        "messages: final assistant content cannot end with trailing whitespace",
    ],
)
def test_400_prefill_rejected(message: str) -> None:
    assert classify(400, ant_error("invalid_request_error", message)).kind is Failure.PREFILL_REJECTED


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            400,
            ant_error("invalid_request_error", "messages.1.content.0.tool_result: unexpected `tool_use_id`"),
            Failure.BAD_REQUEST,
        ),
        (
            413,
            ant_error("request_too_large", "Request exceeds the maximum allowed number of bytes."),
            Failure.BAD_REQUEST,
        ),
        (413, b"<html><head><title>413 Request Entity Too Large</title></head></html>", Failure.BAD_REQUEST),
        (422, b"", Failure.BAD_REQUEST),
        (401, ant_error("authentication_error", "invalid x-api-key"), Failure.AUTH),
        (
            403,
            ant_error(
                "permission_error", "Your API key does not have permission to use the specified resource."
            ),
            Failure.AUTH,
        ),
        (404, ant_error("not_found_error", "model: claude-3-5-sonnet-20240620"), Failure.NOT_FOUND),
        (500, ant_error("api_error", "Internal server error"), Failure.TRANSIENT),
        (504, ant_error("timeout_error", "Request timeout"), Failure.TRANSIENT),
        (503, b"upstream connect error", Failure.OVERLOADED),
        (503, ant_error("api_error", "Service unavailable"), Failure.OVERLOADED),
        (529, b"", Failure.OVERLOADED),
        (409, ant_error("invalid_request_error", "conflict"), Failure.TRANSIENT),  # the SDK retries 409
    ],
)
def test_status_and_type_table(status: int, body: Any, kind: Failure) -> None:
    e = classify(status, body)
    assert (e.kind, e.status) == (kind, status)
    assert e.message.startswith(f"HTTP {status}: ")


def test_non_json_and_empty_bodies_are_named() -> None:
    assert classify(502, b"<html>\n<h1>502 Bad Gateway</h1>\n</html>").message == (
        "HTTP 502: <html> <h1>502 Bad Gateway</h1> </html>"
    )
    assert classify(529, b"").message == "HTTP 529: (empty body)"


def test_long_message_is_shortened() -> None:
    e = classify(400, ant_error("invalid_request_error", "x" * 5000))
    assert len(e.message) < 600
    assert e.message.endswith("…")

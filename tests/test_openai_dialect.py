"""The OpenAI Chat Completions dialect: request building, stream decoding, error classification."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from combined_models.chat import (
    ChatRequest,
    DecodedItem,
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
from combined_models.daemon.dialects.base import Endpoint
from combined_models.daemon.dialects.openai import OpenAIDialect, OpenAIStreamDecoder
from combined_models.daemon.errors import Failure, UpstreamError

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
D = OpenAIDialect()
EP = Endpoint(base_url="https://api.openai.com/v1", api_key="sk-test")


def build(request: ChatRequest, endpoint: Endpoint = EP, model: str = "gpt-4o") -> dict[str, Any]:
    req = D.build_chat(request, model, endpoint)
    body: dict[str, Any] = json.loads(req.body)
    return body


# ---------------------------------------------------------------- build_chat


def test_request_line_headers_and_stream_options() -> None:
    req = D.build_chat(ChatRequest(messages=[Message("user", "hi")]), "gpt-4o", EP)
    assert req.method == "POST"
    assert req.url == "https://api.openai.com/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["accept"] == "text/event-stream"
    body = json.loads(req.body)
    assert body == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    "base",
    ["https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1/", "https://openrouter.ai/api/v1//"],
)
def test_url_joining_with_and_without_trailing_slash(base: str) -> None:
    req = D.build_chat(ChatRequest(messages=[]), "m", Endpoint(base_url=base))
    assert req.url == "https://openrouter.ai/api/v1/chat/completions"
    models = D.build_list_models(Endpoint(base_url=base))
    assert (models.method, models.url) == ("GET", "https://openrouter.ai/api/v1/models")


def test_no_key_no_authorization_and_endpoint_headers_added() -> None:
    ep = Endpoint(base_url="http://127.0.0.1:9000/v1", headers={"x-openrouter-title": "cm"})
    req = D.build_chat(ChatRequest(messages=[]), "m", ep)
    assert "authorization" not in req.headers
    assert req.headers["x-openrouter-title"] == "cm"


def test_system_message_comes_first() -> None:
    body = build(ChatRequest(system="be brief", messages=[Message("user", "hi")]))
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


def test_tool_round_trip_messages() -> None:
    request = ChatRequest(
        messages=[
            Message("user", "Weather in Paris and Rome?"),
            Message(
                "assistant",
                [
                    ThinkingPart(text="private", signature="sig", provider="anthropic"),
                    ToolCallPart("call_A", "get_weather", {"city": "Paris"}),
                    ToolCallPart("call_B", "get_weather", {"city": "Rome", "unit": "C"}),
                ],
            ),
            Message(
                "user",
                [
                    ToolResultPart(tool_call_id="call_A", content="sunny"),
                    ToolResultPart(tool_call_id="call_B", content="rain", is_error=True),
                    TextPart("thanks"),
                ],
            ),
        ]
    )
    msgs = build(request)["messages"]
    assert msgs[0] == {"role": "user", "content": "Weather in Paris and Rome?"}
    assistant = msgs[1]
    assert assistant["role"] == "assistant"
    assert assistant["content"] is None  # null with tool_calls; the thinking part is dropped
    calls = assistant["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"]) for c in calls] == [
        ("call_A", "function", "get_weather"),
        ("call_B", "function", "get_weather"),
    ]
    # arguments travel as a JSON *string*
    assert all(isinstance(c["function"]["arguments"], str) for c in calls)
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Rome", "unit": "C"}
    # tool results are role=tool messages, before the user's own words
    assert msgs[2:] == [
        {"role": "tool", "tool_call_id": "call_A", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_B", "content": "rain"},
        {"role": "user", "content": "thanks"},
    ]


def test_assistant_text_with_tool_call_and_plain_assistant() -> None:
    msgs = build(
        ChatRequest(
            messages=[
                Message("assistant", "plain"),
                Message("assistant", [TextPart("Let me "), TextPart("check."), ToolCallPart("c", "f", {})]),
                Message("assistant", [ThinkingPart(text="only thinking")]),
            ]
        )
    )["messages"]
    assert msgs[0] == {"role": "assistant", "content": "plain"}
    assert msgs[1]["content"] == "Let me check."
    assert json.loads(msgs[1]["tool_calls"][0]["function"]["arguments"]) == {}
    assert msgs[2] == {"role": "assistant", "content": ""}


def test_only_tool_results_make_no_empty_user_message() -> None:
    msgs = build(ChatRequest(messages=[Message("user", [ToolResultPart(tool_call_id="c", content="r")])]))[
        "messages"
    ]
    assert msgs == [{"role": "tool", "tool_call_id": "c", "content": "r"}]


def test_images_become_image_url_parts() -> None:
    msgs = build(
        ChatRequest(
            messages=[
                Message(
                    "user",
                    [
                        TextPart("what is this?"),
                        ImagePart(media_type="image/jpeg", data="QUJD"),
                        ImagePart(url="https://example.com/cat.png"),
                    ],
                )
            ]
        )
    )["messages"]
    assert msgs == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        }
    ]


def test_text_parts_only_are_flattened_to_a_string() -> None:
    msgs = build(ChatRequest(messages=[Message("user", [TextPart("a"), TextPart("b")])]))["messages"]
    assert msgs == [{"role": "user", "content": "ab"}]


def test_max_tokens_field_default_and_option() -> None:
    request = ChatRequest(messages=[], max_tokens=123)
    assert build(request)["max_tokens"] == 123
    ep = Endpoint(base_url="https://api.openai.com/v1", options={"max_tokens_field": "max_completion_tokens"})
    body = build(request, ep)
    assert body["max_completion_tokens"] == 123
    assert "max_tokens" not in body
    assert "max_tokens" not in build(ChatRequest(messages=[]))


def test_sampling_stop_and_tools() -> None:
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    request = ChatRequest(
        messages=[],
        temperature=1.5,
        top_p=0.5,
        stop=["a", "b", "c", "d", "e"],
        tools=[Tool(name="get_weather", description="Weather", parameters=params)],
        tool_choice="get_weather",
    )
    body = build(request)
    assert body["temperature"] == 1.5
    assert body["top_p"] == 0.5
    assert body["stop"] == ["a", "b", "c", "d"]  # OpenAI allows at most 4
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather", "parameters": params},
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("auto", "none", "required"):
        assert (
            build(ChatRequest(messages=[], tools=request.tools, tool_choice=choice))["tool_choice"] == choice
        )
    # no tools: no tool_choice, even when asked
    assert "tool_choice" not in build(ChatRequest(messages=[], tool_choice="auto"))


def test_body_is_compact_utf8() -> None:
    req = D.build_chat(ChatRequest(messages=[Message("user", "日本 \u2028")]), "m", EP)
    assert "日本 \u2028".encode() in req.body
    assert b": " not in req.body


def test_parse_models() -> None:
    body = b'{"object":"list","data":[{"id":"gpt-4o","object":"model"},{"object":"model"},"x",{"id":"o3"}]}'
    assert D.parse_models(body) == (["gpt-4o", "o3"], None)  # not paginated


# ---------------------------------------------------------------- stream decoding

# provider-protocols.md §1.2, the "…" filled in.
_HEAD = '"id":"chatcmpl-1","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-2024-08-06"'
TOOL_STREAM = "".join(
    f"data: {line}\n\n"
    for line in [
        "{"
        + _HEAD
        + ',"choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}],"usage":null}',
        "{"
        + _HEAD
        + ',"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_A","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}],"usage":null}',
        "{"
        + _HEAD
        + ',"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\":\\"Pa"}}]},"finish_reason":null}],"usage":null}',
        "{"
        + _HEAD
        + ',"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ris\\"}"}}]},"finish_reason":null}],"usage":null}',
        "{" + _HEAD + ',"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"usage":null}',
        "{"
        + _HEAD
        + ',"choices":[],"usage":{"prompt_tokens":80,"completion_tokens":17,"total_tokens":97,"prompt_tokens_details":{"cached_tokens":64}}}',
        "[DONE]",
    ]
).encode()
TOOL_EVENTS = TOOL_STREAM.split(b"\n\n")[:-1]

TOOL_ITEMS: list[DecodedItem] = [
    ToolCallEvent("call_A", "get_weather", {"city": "Paris"}),
    Finished(
        finish_reason="tool_calls",
        usage=Usage(input_tokens=80, output_tokens=17, cache_read_tokens=64),
        model="gpt-4o-2024-08-06",
    ),
]


def decode(*chunks: bytes, close: bool = True) -> list[DecodedItem]:
    dec = OpenAIStreamDecoder()
    out: list[DecodedItem] = []
    for c in chunks:
        out += dec.feed(c)
    if close:
        out += dec.close()
    return out


def sse(*payloads: str) -> bytes:
    return "".join(f"data: {p}\n\n" for p in payloads).encode()


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    return json.dumps(
        {
            "id": "c",
            "model": "m-1",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
    )


def test_tool_call_stream_from_the_doc() -> None:
    assert decode(TOOL_STREAM) == TOOL_ITEMS


def test_tool_call_is_emitted_whole_only_at_the_finish_chunk() -> None:
    dec = OpenAIStreamDecoder()
    per_event = [dec.feed(e + b"\n\n") for e in TOOL_EVENTS]
    assert per_event[:4] == [[], [], [], []]
    assert per_event[4] == [ToolCallEvent("call_A", "get_weather", {"city": "Paris"})]
    assert per_event[5] == []  # the usage chunk
    assert per_event[6] == [TOOL_ITEMS[1]]  # Finished at [DONE], with the usage
    assert dec.close() == []


def test_tool_call_stream_at_every_split_point() -> None:
    for i in range(0, len(TOOL_STREAM) + 1):
        assert decode(TOOL_STREAM[:i], TOOL_STREAM[i:]) == TOOL_ITEMS, f"split at {i}"


def test_parallel_tool_calls_are_accumulated_by_index() -> None:
    raw = sse(
        chunk({"tool_calls": [{"index": 1, "id": "call_B", "type": "function", "function": {"name": "b"}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "call_A", "type": "function", "function": {"name": "a"}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"x":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"y":2}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "1}"}}]}),
        chunk({}, "tool_calls"),
        "[DONE]",
    )
    assert decode(raw) == [
        ToolCallEvent("call_A", "a", {"y": 2}),
        ToolCallEvent("call_B", "b", {"x": 1}),
        Finished(finish_reason="tool_calls", model="m-1"),
    ]


def test_tool_call_without_arguments_or_id() -> None:
    raw = sse(chunk({"tool_calls": [{"index": 0, "function": {"name": "now"}}]}), chunk({}, "tool_calls"))
    assert decode(raw)[0] == ToolCallEvent("call_0", "now", {})


def test_text_deltas() -> None:
    raw = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo \u2028 wörld"}),
        chunk({}, "stop"),
        "[DONE]",
    )
    assert decode(raw) == [
        TextEvent("Hel"),
        TextEvent("lo \u2028 wörld"),
        Finished(finish_reason="stop", model="m-1"),
    ]


@pytest.mark.parametrize(
    ("wire", "ours"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("function_call", "tool_calls"),
        ("content_filter", "content_filter"),
    ],
)
def test_finish_reasons(wire: str, ours: str) -> None:
    assert decode(sse(chunk({}, wire), "[DONE]")) == [Finished(finish_reason=ours, model="m-1")]


def test_missing_done_after_finish_reason_is_not_a_failure() -> None:
    raw = b"".join(e + b"\n\n" for e in TOOL_EVENTS[:-1])  # everything but [DONE]
    dec = OpenAIStreamDecoder()
    assert dec.feed(raw) == [TOOL_ITEMS[0]]
    assert dec.close() == [TOOL_ITEMS[1]]


def test_stream_cut_after_finish_in_an_unterminated_event() -> None:
    raw = sse(chunk({"content": "hi"}), chunk({}, "stop")) + b"data: [DO"
    assert decode(raw) == [TextEvent("hi"), Finished(finish_reason="stop", model="m-1")]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        sse(chunk({"content": "partial"})),
        sse(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"a"'}}]})),
        sse(chunk({"content": "partial"})) + b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"st',
    ],
    ids=["empty", "text", "half-tool-call", "cut-finish-chunk"],
)
def test_body_ending_without_finish_reason_is_a_truncation(raw: bytes) -> None:
    dec = OpenAIStreamDecoder()
    dec.feed(raw)
    with pytest.raises(UpstreamError) as info:
        dec.close()
    assert info.value.kind is Failure.TRANSIENT
    assert "truncated" in info.value.message


def test_partial_tool_call_is_never_emitted_on_truncation() -> None:
    dec = OpenAIStreamDecoder()
    assert dec.feed(b"".join(e + b"\n\n" for e in TOOL_EVENTS[:4])) == []
    with pytest.raises(UpstreamError):
        dec.close()


def test_done_without_finish_reason_raises() -> None:
    with pytest.raises(UpstreamError) as info:
        decode(sse(chunk({"content": "x"}), "[DONE]"), close=False)
    assert info.value.kind is Failure.TRANSIENT


def test_events_after_done_are_ignored() -> None:
    raw = sse(chunk({}, "stop"), "[DONE]", chunk({"content": "late"}), "not json")
    assert decode(raw) == [Finished(finish_reason="stop", model="m-1")]


@pytest.mark.parametrize("data", ["{not json", '{"choices":[', "[1, 2]", '"a string"', "42"])
def test_malformed_json_raises(data: str) -> None:
    with pytest.raises(UpstreamError) as info:
        decode(sse(chunk({"content": "ok"}), data), close=False)
    assert info.value.kind is Failure.TRANSIENT
    assert "malformed" in info.value.message


@pytest.mark.parametrize(
    "payload",
    [
        '{"choices":[{"index":0,"delta":"text"}]}',
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":null}]}}]}',
        '{"choices":[{"index":0,"delta":{"tool_calls":["x"]}}]}',
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":5}}]}}]}',
        '{"choices":5}',
        '{"choices":[],"usage":{"prompt_tokens":"many"}}',
    ],
)
def test_wrongly_shaped_chunk_is_a_stream_failure_not_a_crash(payload: str) -> None:
    """A malformed event fails the stream (design: never silently skipped), as an UpstreamError."""
    with pytest.raises(UpstreamError) as info:
        decode(sse(payload, chunk({}, "tool_calls")), close=False)
    assert info.value.kind is Failure.TRANSIENT


def test_invalid_tool_arguments_at_finish_raise() -> None:
    raw = sse(
        chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"a":'}}]}),
        chunk({}, "tool_calls"),
    )
    with pytest.raises(UpstreamError) as info:
        decode(raw, close=False)
    assert info.value.kind is Failure.TRANSIENT
    assert "'f'" in info.value.message


def test_in_band_error_chunk_raises() -> None:
    raw = sse(
        chunk({"content": "partial"}),
        '{"error":{"message":"The server had an error processing your request.","type":"server_error"}}',
    )
    dec = OpenAIStreamDecoder()
    with pytest.raises(UpstreamError) as info:
        dec.feed(raw)
    assert info.value.kind is Failure.TRANSIENT
    assert "The server had an error" in info.value.message


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        ({"code": 429, "message": "Rate limit exceeded"}, Failure.RATE_LIMITED),
        ({"type": "overloaded_error", "message": "Overloaded"}, Failure.OVERLOADED),
        ({"code": 400, "message": "bad"}, Failure.TRANSIENT),  # mid-stream: never the caller's fault
        ({"code": 401, "message": "key revoked"}, Failure.TRANSIENT),
        ("plain string error", Failure.TRANSIENT),
    ],
)
def test_in_band_error_classes(err: Any, kind: Failure) -> None:
    with pytest.raises(UpstreamError) as info:
        decode(sse(json.dumps({"error": err})), close=False)
    assert info.value.kind is kind


def test_openrouter_in_band_error_with_finish_reason_error() -> None:
    # openrouter.ai/docs/api-reference/streaming, "Handling errors during streaming"
    payload = (
        '{"id":"cmpl-abc123","object":"chat.completion.chunk","created":1234567890,'
        '"model":"gpt-3.5-turbo","provider":"openai",'
        '"error":{"code":"server_error","message":"Provider disconnected unexpectedly"},'
        '"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}'
    )
    with pytest.raises(UpstreamError) as info:
        decode(sse(chunk({"content": "Hi"}), payload), close=False)
    assert info.value.kind is Failure.TRANSIENT
    assert "Provider disconnected unexpectedly" in info.value.message
    assert info.value.status is None  # a string code is not an HTTP status


def test_finish_reason_error_alone_raises() -> None:
    with pytest.raises(UpstreamError) as info:
        decode(sse(chunk({"content": "Hi"}), chunk({}, "error")), close=False)
    assert info.value.kind is Failure.TRANSIENT


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_deltas_become_thinking(field: str) -> None:
    raw = sse(
        chunk({field: "Let me think"}), chunk({field: "", "content": "Answer"}), chunk({}, "stop"), "[DONE]"
    )
    assert decode(raw) == [
        ThinkingEvent("Let me think"),
        TextEvent("Answer"),
        Finished(finish_reason="stop", model="m-1"),
    ]


def test_choices_other_than_the_first_are_ignored() -> None:
    raw = sse(
        json.dumps({"choices": [{"index": 1, "delta": {"content": "other"}, "finish_reason": None}]}),
        chunk({"content": "mine"}, "stop"),
        "[DONE]",
    )
    assert decode(raw) == [TextEvent("mine"), Finished(finish_reason="stop", model="m-1")]


def test_comments_between_chunks_are_harmless() -> None:
    raw = b": OPENROUTER PROCESSING\n\n" + sse(chunk({"content": "x"}, "stop"), "[DONE]")
    assert decode(raw) == [TextEvent("x"), Finished(finish_reason="stop", model="m-1")]


# ---------------------------------------------------------------- classify_error


def classify(status: int, body: Any, headers: dict[str, str] | None = None) -> UpstreamError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return D.classify_error(status, headers or {}, raw, NOW)


def oai_error(message: str, type_: str | None = None, code: Any = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


RATE_LIMIT = oai_error(
    "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 30000, Requested 100.",
    "tokens",
    "rate_limit_exceeded",
)


def test_429_rate_limit_with_retry_after() -> None:
    e = classify(429, RATE_LIMIT, {"retry-after": "20"})
    assert e.kind is Failure.RATE_LIMITED
    assert e.status == 429
    assert e.retry_after == 20.0
    assert e.message.startswith("HTTP 429: Rate limit reached")


def test_429_rate_limit_with_retry_after_ms_wins() -> None:
    e = classify(429, RATE_LIMIT, {"Retry-After-Ms": "1500", "retry-after": "20"})
    assert e.retry_after == 1.5


def test_429_rate_limit_with_reset_headers_prefers_the_exhausted_bucket() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert classify(429, RATE_LIMIT, headers).retry_after == 360.0


def test_429_rate_limit_hint_from_the_message_when_no_header() -> None:
    body = oai_error("Rate limit reached. Please try again in 20ms.", "requests", "rate_limit_exceeded")
    e = classify(429, body)
    assert e.kind is Failure.RATE_LIMITED
    assert e.retry_after == pytest.approx(0.02)


def test_429_without_hint_has_none() -> None:
    assert classify(429, RATE_LIMIT).retry_after is None


@pytest.mark.parametrize(
    "body",
    [
        oai_error(
            "You exceeded your current quota, please check your plan.",
            "insufficient_quota",
            "insufficient_quota",
        ),
        oai_error("Your credit balance is exhausted.", "invalid_request_error", "credit_balance_exhausted"),
    ],
)
def test_429_insufficient_quota(body: Any) -> None:
    e = classify(429, body)
    assert e.kind is Failure.QUOTA_EXHAUSTED
    assert e.status == 429


def test_402_is_quota() -> None:
    body = {
        "error": {
            "code": 402,
            "message": "Insufficient credits. Add more using https://openrouter.ai/credits",
        }
    }
    assert classify(402, body).kind is Failure.QUOTA_EXHAUSTED


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, oai_error("Incorrect API key provided: sk-xxx.", "invalid_request_error", "invalid_api_key")),
        (
            403,
            oai_error(
                "Country, region, or territory not supported",
                "request_forbidden",
                "unsupported_country_region_territory",
            ),
        ),
        (401, b""),
    ],
)
def test_auth(status: int, body: Any) -> None:
    assert classify(status, body).kind is Failure.AUTH


def test_404_model_not_found() -> None:
    body = oai_error(
        "The model `gpt-9` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    )
    assert classify(404, body).kind is Failure.NOT_FOUND
    assert classify(404, b"Not Found").kind is Failure.NOT_FOUND


def test_400_context_length() -> None:
    body = oai_error(
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.",
        "invalid_request_error",
        "context_length_exceeded",
    )
    assert classify(400, body).kind is Failure.CONTEXT_TOO_LONG
    assert (
        classify(400, oai_error("prompt is too long: 210000 tokens > 200000 maximum")).kind
        is Failure.CONTEXT_TOO_LONG
    )


@pytest.mark.parametrize(
    "message",
    [
        "This model does not support assistant message prefill. The conversation must end with a user message.",
        "The conversation must end with a user message.",
    ],
)
def test_400_prefill_rejection(message: str) -> None:
    assert classify(400, oai_error(message, "invalid_request_error")).kind is Failure.PREFILL_REJECTED


def test_400_other_is_bad_request() -> None:
    body = oai_error("Invalid type for 'messages[0].content'", "invalid_request_error", "invalid_type")
    e = classify(400, body)
    assert e.kind is Failure.BAD_REQUEST
    assert "Invalid type" in e.message


def test_400_rate_limit_code_is_still_bad_request() -> None:
    assert (
        classify(400, oai_error("x", "invalid_request_error", "rate_limit_exceeded")).kind
        is Failure.BAD_REQUEST
    )


def test_400_invalid_prompt_is_content_filter() -> None:
    body = oai_error("Invalid prompt: your prompt was flagged", "invalid_request_error", "invalid_prompt")
    assert classify(400, body).kind is Failure.CONTENT_FILTER


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, Failure.TRANSIENT),
        (502, Failure.TRANSIENT),
        (504, Failure.TRANSIENT),
        (408, Failure.TRANSIENT),
        (409, Failure.TRANSIENT),
        (503, Failure.OVERLOADED),
        (529, Failure.OVERLOADED),
        (422, Failure.BAD_REQUEST),
        (413, Failure.BAD_REQUEST),
    ],
)
def test_status_classes(status: int, kind: Failure) -> None:
    body = oai_error("The server had an error while processing your request.", "server_error")
    assert classify(status, body).kind is kind


def test_overloaded_body_type_wins_over_status() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert classify(500, body).kind is Failure.OVERLOADED


def test_non_json_body() -> None:
    e = classify(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>\n")
    assert e.kind is Failure.TRANSIENT
    assert e.status == 502
    assert "502 Bad Gateway" in e.message


def test_empty_body_names_the_status() -> None:
    e = classify(503, b"")
    assert e.kind is Failure.OVERLOADED
    assert "HTTP 503" in e.message


def test_array_wrapped_and_string_errors() -> None:
    assert classify(429, [RATE_LIMIT]).kind is Failure.RATE_LIMITED
    e = classify(400, {"error": "something odd"})
    assert (e.kind, "something odd" in e.message) == (Failure.BAD_REQUEST, True)


def test_long_message_is_shortened() -> None:
    e = classify(400, oai_error("x" * 5000))
    assert len(e.message) < 600
    assert e.message.endswith("…")

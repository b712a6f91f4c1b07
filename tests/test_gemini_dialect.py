"""The Gemini dialect: request building, stream decoding, error classification, model paging."""

from __future__ import annotations

import json
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
from combined_models.daemon.dialects.base import Endpoint
from combined_models.daemon.dialects.gemini import GeminiDialect, GeminiStreamDecoder, gemini_schema
from combined_models.daemon.errors import Failure, UpstreamError
from tests.test_anthropic_dialect import check_every_split, decode_with

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
D = GeminiDialect()
BASE = "https://generativelanguage.googleapis.com/v1beta"
EP = Endpoint(base_url=BASE, api_key="AIza-test")
WEATHER_PARAMS = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = Tool(name="get_weather", description="Current weather for a city", parameters=WEATHER_PARAMS)


def build(request: ChatRequest, model: str = "gemini-2.5-flash") -> dict[str, Any]:
    body: dict[str, Any] = json.loads(D.build_chat(request, model, EP).body)
    return body


# ---------------------------------------------------------------- build_chat


def test_request_line_headers_and_minimal_body() -> None:
    req = D.build_chat(ChatRequest(messages=[Message("user", "hi")]), "gemini-2.5-flash", EP)
    assert req.method == "POST"
    assert req.url == f"{BASE}/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert req.headers == {
        "content-type": "application/json",
        "accept": "text/event-stream",
        "x-goog-api-key": "AIza-test",
    }
    assert json.loads(req.body) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_url_with_trailing_slash_and_models_prefix() -> None:
    req = D.build_chat(ChatRequest(messages=[]), "models/gemini-2.5-pro", Endpoint(base_url=BASE + "/"))
    assert req.url == f"{BASE}/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert "x-goog-api-key" not in req.headers


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
            Message("user", "Thanks!"),
            Message("assistant", "You're welcome"),  # no prefill: only history
        ],
        tools=[WEATHER],
        tool_choice="auto",
        max_tokens=1024,
        temperature=1.5,
        top_p=0.9,
        stop=["END"],
        thinking_budget=2048,
    )
    assert build(request) == {
        "systemInstruction": {"parts": [{"text": "Be terse."}]},
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What's the weather here?"},
                    {"inlineData": {"mimeType": "image/jpeg", "data": "QUJD"}},
                ],
            },
            {
                "role": "model",
                "parts": [
                    {"text": "Let me check."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"content": "18°C, sunny"}}},
                    {"text": "Thanks!"},
                ],
            },
            {"role": "model", "parts": [{"text": "You're welcome"}]},
        ],
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Current weather for a city",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string", "description": "City name"}},
                            "required": ["city"],
                        },
                    }
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        "generationConfig": {
            "maxOutputTokens": 1024,
            "temperature": 1.5,
            "topP": 0.9,
            "stopSequences": ["END"],
            "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True},
        },
    }


def test_tool_results_find_their_function_name_and_errors_use_the_error_key() -> None:
    contents = build(
        ChatRequest(
            messages=[
                Message(
                    "assistant", [ToolCallPart("c1", "search", {"q": "a"}), ToolCallPart("c2", "fetch", {})]
                ),
                Message(
                    "user",
                    [
                        ToolResultPart(tool_call_id="c2", content="404", is_error=True),
                        ToolResultPart(tool_call_id="c1", content="found"),
                    ],
                ),
                # Gemini ids repeat across responses: the latest call with that id counts.
                Message("assistant", [ToolCallPart("c1", "summarize", {})]),
                Message("user", [ToolResultPart(tool_call_id="c1", content="done")]),
            ]
        )
    )["contents"]
    assert contents[1]["parts"] == [
        {"functionResponse": {"name": "fetch", "response": {"error": "404"}}},
        {"functionResponse": {"name": "search", "response": {"content": "found"}}},
    ]
    assert contents[3]["parts"] == [
        {"functionResponse": {"name": "summarize", "response": {"content": "done"}}}
    ]


def test_tool_result_without_its_call_is_a_bad_request() -> None:
    with pytest.raises(UpstreamError) as info:
        build(ChatRequest(messages=[Message("user", [ToolResultPart(tool_call_id="nope", content="x")])]))
    assert info.value.kind is Failure.BAD_REQUEST
    assert "'nope'" in info.value.message


def test_thinking_parts_and_empty_messages_are_dropped_and_neighbours_merged() -> None:
    contents = build(
        ChatRequest(
            messages=[
                Message("user", "a"),
                Message("assistant", [ThinkingPart(text="hmm", signature="sig")]),
                Message("user", [TextPart(""), TextPart("b")]),
                Message("assistant", ""),
            ]
        )
    )["contents"]
    assert contents == [{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]}]


def test_image_url_and_document_parts() -> None:
    parts = build(
        ChatRequest(
            messages=[
                Message(
                    "user",
                    [
                        ImagePart(
                            media_type="image/png",
                            url="https://generativelanguage.googleapis.com/v1beta/files/abc",
                        ),
                        DocumentPart(data="JVBERi0x", title="Spec"),
                    ],
                )
            ]
        )
    )["contents"][0]["parts"]
    assert parts == [
        {
            "fileData": {
                "mimeType": "image/png",
                "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc",
            }
        },
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0x"}},
    ]


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ("any", {"mode": "ANY"}),
        ("get_weather", {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
    ],
)
def test_tool_choice_mapping(choice: str, config: dict[str, Any]) -> None:
    body = build(ChatRequest(messages=[], tools=[WEATHER], tool_choice=choice))
    assert body["toolConfig"] == {"functionCallingConfig": config}


def test_no_tools_no_tool_config_and_parameterless_tool() -> None:
    assert "toolConfig" not in build(ChatRequest(messages=[], tool_choice="required"))
    body = build(ChatRequest(messages=[], tools=[Tool(name="now")]))
    assert body["tools"] == [{"functionDeclarations": [{"name": "now"}]}]  # no empty OBJECT
    assert "toolConfig" not in body
    assert "generationConfig" not in body


def test_schema_is_cut_to_what_gemini_accepts() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$defs": {"Unit": {"enum": ["C", "F"]}},
        "title": "Args",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "city": {"type": "string", "minLength": 1, "examples": ["Paris"]},
            "unit": {"anyOf": [{"type": "string", "enum": ["C", "F"]}, {"type": "null"}], "default": None},
            "days": {"type": ["integer", "null"], "minimum": 1, "exclusiveMaximum": 15},
            "when": {"type": ["string", "integer"]},
            "tags": {
                "type": "array",
                "items": {"type": "string", "const": "x", "additionalProperties": True},
            },
            "where": {"oneOf": [{"type": "string", "format": "uri"}, {"type": "number"}]},
            "note": {
                "description": "outer",
                "anyOf": [{"type": "string", "description": "inner"}, {"type": "null"}],
            },
        },
        "required": ["city"],
    }
    assert gemini_schema(schema) == {
        "title": "Args",
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 1},
            "unit": {"nullable": True, "type": "string", "enum": ["C", "F"], "default": None},
            "days": {"nullable": True, "type": "integer", "minimum": 1},
            "when": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["x"]}},
            "where": {"anyOf": [{"type": "string", "format": "uri"}, {"type": "number"}]},
            "note": {"description": "outer", "nullable": True, "type": "string"},
        },
        "required": ["city"],
    }
    # property *names* are never filtered, even when they look like schema keywords
    assert gemini_schema({"type": "object", "properties": {"$ref": {"type": "string"}}}) == {
        "type": "object",
        "properties": {"$ref": {"type": "string"}},
    }


def test_generation_config_limits_and_thinking_off() -> None:
    config = build(ChatRequest(messages=[], stop=list("abcdefg"), thinking_budget=0))["generationConfig"]
    assert config == {
        "stopSequences": ["a", "b", "c", "d", "e"],  # Gemini allows at most 5
        "thinkingConfig": {"thinkingBudget": 0, "includeThoughts": False},
    }


def test_gemini_3_function_calls_get_the_stand_in_thought_signature() -> None:
    request = ChatRequest(
        messages=[
            Message("user", "Weather in Paris and Rome?"),
            Message(
                "assistant",
                [
                    TextPart("Checking."),
                    ToolCallPart("a", "get_weather", {"city": "Paris"}),
                    ToolCallPart("b", "get_weather", {"city": "Rome"}),
                ],
            ),
            Message(
                "user",
                [
                    ToolResultPart(tool_call_id="a", content="sun"),
                    ToolResultPart(tool_call_id="b", content="rain"),
                ],
            ),
            Message("assistant", [ToolCallPart("c", "get_weather", {"city": "Oslo"})]),
            Message("user", [ToolResultPart(tool_call_id="c", content="snow")]),
        ]
    )
    for model in ("gemini-3-pro-preview", "models/gemini-3-flash", "gemini-4-argon"):
        contents = build(request, model)["contents"]
        assert contents[1]["parts"] == [
            {"text": "Checking."},
            # only the first call of a step carries it, as Gemini does with parallel calls
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": "skip_thought_signature_validator",
            },
            {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
        ]
        assert contents[3]["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"
    for model in ("gemini-2.5-flash", "gemini-1.5-pro", "gemma-3-27b-it", "learnlm-2.0-flash"):
        assert "thoughtSignature" not in json.dumps(build(request, model)), model


# ---------------------------------------------------------------- models


def test_list_models_request_and_paging() -> None:
    first = D.build_list_models(EP)
    assert (first.method, first.url) == ("GET", f"{BASE}/models?pageSize=1000")
    assert first.headers["x-goog-api-key"] == "AIza-test"
    assert "content-type" not in first.headers
    assert (
        D.build_list_models(EP, NOW, "Chxtb2RlbHMv+/=").url
        == f"{BASE}/models?pageSize=1000&pageToken=Chxtb2RlbHMv%2B%2F%3D"
    )
    page = {
        "models": [
            {
                "name": "models/gemini-2.5-flash",
                "version": "001",
                "displayName": "Gemini 2.5 Flash",
                "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent"],
            },
            {"name": "models/text-embedding-004", "supportedGenerationMethods": ["embedContent"]},
            {"name": "models/gemini-2.0-flash"},  # no methods listed: kept
            {"displayName": "nameless"},
        ],
        "nextPageToken": "Chxtb2RlbHMvZ2VtaW5p",
    }
    assert D.parse_models(json.dumps(page).encode()) == (
        ["gemini-2.5-flash", "gemini-2.0-flash"],
        "Chxtb2RlbHMvZ2VtaW5p",
    )
    assert D.parse_models(b'{"models":[{"name":"models/gemini-pro"}]}', "Chxtb2RlbHMvZ2VtaW5p") == (
        ["gemini-pro"],
        None,
    )
    assert D.parse_models(b'{"models":[],"nextPageToken":"same"}', "same") == ([], None)
    with pytest.raises(ValueError):
        D.parse_models(b"[]")


# ---------------------------------------------------------------- streams


def sse(*chunks: Any) -> bytes:
    # Gemini separates its events with CRLF.
    return b"".join(f"data: {c if isinstance(c, str) else json.dumps(c)}\r\n\r\n".encode() for c in chunks)


def decode(*chunks: bytes, close: bool = True) -> list[DecodedItem]:
    return decode_with(GeminiStreamDecoder, *chunks, close=close)


RID = "mQ9XaOqzLsP3gLUPx4PtgQE"


def chunk(
    parts: list[dict[str, Any]] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts or [], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "modelVersion": "gemini-2.5-flash", "responseId": RID, **extra}


TOOL_STREAM = sse(
    chunk(
        [{"text": "**Checking the forecast**\n\nThe user wants Paris weather.", "thought": True}],
        usageMetadata={"promptTokenCount": 58, "totalTokenCount": 58},
    ),
    chunk(
        [{"text": "I'll look that up \u2028 for you."}],
        usageMetadata={
            "promptTokenCount": 58,
            "candidatesTokenCount": 9,
            "totalTokenCount": 110,
            "thoughtsTokenCount": 43,
        },
    ),
    chunk(
        [
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": "CiQBcsjafA==",
            }
        ],
        "STOP",
        usageMetadata={
            "promptTokenCount": 58,
            "candidatesTokenCount": 21,
            "totalTokenCount": 131,
            "thoughtsTokenCount": 52,
            "cachedContentTokenCount": 32,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 58}],
        },
    ),
)
TOOL_FINISH = Finished(
    finish_reason="tool_calls",
    usage=Usage(input_tokens=58, output_tokens=73, cache_read_tokens=32),
    model="gemini-2.5-flash",
)
TOOL_ITEMS: list[DecodedItem] = [
    ThinkingEvent("**Checking the forecast**\n\nThe user wants Paris weather."),
    TextEvent("I'll look that up \u2028 for you."),
    ToolCallEvent(f"call_{RID}_0", "get_weather", {"city": "Paris"}),
    TOOL_FINISH,
]


def test_text_and_function_call_stream_at_every_split() -> None:
    check_every_split(GeminiStreamDecoder, TOOL_STREAM, TOOL_ITEMS)


def test_finished_comes_only_at_eof() -> None:
    dec = GeminiStreamDecoder()
    events = [e + b"\r\n\r\n" for e in TOOL_STREAM.split(b"\r\n\r\n")[:-1]]
    assert [dec.feed(e) for e in events] == [[TOOL_ITEMS[0]], [TOOL_ITEMS[1]], [TOOL_ITEMS[2]]]
    assert dec.close() == [TOOL_FINISH]
    assert dec.close() == []


def test_usage_only_chunk_after_the_finish_updates_usage() -> None:
    raw = sse(
        chunk([{"text": "Hi"}], "STOP"),
        {
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1},
            "modelVersion": "gemini-2.5-flash",
        },
    )
    assert decode(raw) == [
        TextEvent("Hi"),
        Finished(
            finish_reason="stop", usage=Usage(input_tokens=4, output_tokens=1), model="gemini-2.5-flash"
        ),
    ]


def test_parallel_calls_and_gemini_ids() -> None:
    raw = sse(
        chunk(
            [
                {"functionCall": {"name": "a", "args": {"x": 1}}},
                {"functionCall": {"id": "fc_given", "name": "b"}},
                {"functionCall": {"name": "c", "args": {}}},
            ],
            "STOP",
        )
    )
    assert decode(raw)[:3] == [
        ToolCallEvent(f"call_{RID}_0", "a", {"x": 1}),
        ToolCallEvent("fc_given", "b", {}),
        ToolCallEvent(f"call_{RID}_2", "c", {}),
    ]


def test_ids_without_a_response_id() -> None:
    raw = sse(
        {"candidates": [{"content": {"parts": [{"functionCall": {"name": "a"}}]}, "finishReason": "STOP"}]}
    )
    assert decode(raw) == [ToolCallEvent("call_0", "a", {}), Finished(finish_reason="tool_calls")]


@pytest.mark.parametrize(
    ("wire", "ours"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("OTHER", "stop"),
        ("LANGUAGE", "language"),
    ],
)
def test_finish_reasons(wire: str, ours: str) -> None:
    assert decode(sse(chunk([{"text": "x"}], wire))) == [
        TextEvent("x"),
        Finished(finish_reason=ours, model="gemini-2.5-flash"),
    ]


def test_max_tokens_after_a_function_call_stays_length() -> None:
    raw = sse(chunk([{"functionCall": {"name": "a"}}], "MAX_TOKENS"))
    assert decode(raw)[-1] == Finished(finish_reason="length", model="gemini-2.5-flash")


def test_malformed_function_call_finish_is_transient() -> None:
    with pytest.raises(UpstreamError) as info:
        decode(sse(chunk([{"text": "x"}]), chunk([], "MALFORMED_FUNCTION_CALL")), close=False)
    assert info.value.kind is Failure.TRANSIENT


def test_blocked_prompt_is_a_content_filter() -> None:
    raw = sse(
        {
            "promptFeedback": {
                "blockReason": "PROHIBITED_CONTENT",
                "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}],
            },
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        }
    )
    with pytest.raises(UpstreamError) as info:
        decode(raw, close=False)
    assert info.value.kind is Failure.CONTENT_FILTER
    assert "PROHIBITED_CONTENT" in info.value.message


@pytest.mark.parametrize(
    ("error", "kind", "retry"),
    [
        (
            {
                "code": 503,
                "message": "The model is overloaded. Please try again later.",
                "status": "UNAVAILABLE",
            },
            Failure.OVERLOADED,
            None,
        ),
        (
            {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"},
            Failure.TRANSIENT,
            None,
        ),
        (
            {
                "code": 429,
                "message": "Resource has been exhausted",
                "status": "RESOURCE_EXHAUSTED",
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}],
            },
            Failure.RATE_LIMITED,
            3.0,
        ),
        (
            {"code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"},
            Failure.TRANSIENT,
            None,
        ),
        ("stream broke", Failure.TRANSIENT, None),
    ],
)
def test_error_object_in_a_chunk(error: Any, kind: Failure, retry: float | None) -> None:
    dec = GeminiStreamDecoder()
    with pytest.raises(UpstreamError) as info:
        dec.feed(sse(chunk([{"text": "partial"}]), {"error": error}))
    assert (info.value.kind, info.value.retry_after) == (kind, retry)
    assert info.value.message.startswith("error in stream: ")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        sse(chunk([{"text": "partial"}])),
        sse(chunk([{"functionCall": {"name": "a"}}])),
        sse(chunk([{"text": "partial"}]))
        + b'data: {"candidates":[{"finishReason":"STOP"}]}',  # no blank line
    ],
    ids=["empty", "text", "call", "cut-finish-chunk"],
)
def test_eof_without_finish_reason_is_a_truncation(raw: bytes) -> None:
    dec = GeminiStreamDecoder()
    dec.feed(raw)
    with pytest.raises(UpstreamError) as info:
        dec.close()
    assert info.value.kind is Failure.TRANSIENT
    assert "truncated" in info.value.message


def test_unspecified_finish_reason_is_no_finish() -> None:
    dec = GeminiStreamDecoder()
    dec.feed(sse(chunk([{"text": "x"}], "FINISH_REASON_UNSPECIFIED")))
    with pytest.raises(UpstreamError):
        dec.close()


def test_parts_without_text_and_empty_text_are_skipped() -> None:
    raw = sse(
        chunk(
            [
                {"thoughtSignature": "Q2lR"},
                {"text": ""},
                {"inlineData": {"mimeType": "image/png", "data": "QUJD"}},
            ]
        ),
        chunk([{"text": "ok"}], "STOP"),
    )
    assert decode(raw) == [TextEvent("ok"), Finished(finish_reason="stop", model="gemini-2.5-flash")]


def test_no_candidates_chunk_is_fine() -> None:
    raw = sse({"usageMetadata": {"promptTokenCount": 3}}, chunk([{"text": "a"}], "STOP"))
    assert decode(raw)[0] == TextEvent("a")


@pytest.mark.parametrize(
    "data",
    [
        "{not json",
        "[1]",
        "7",
        '{"candidates":"x"}',
        '{"candidates":[{"content":{"parts":[{"text":5}]}}]}',
        '{"candidates":[{"content":{"parts":[{"functionCall":{"args":{}}}]}}]}',
        '{"candidates":[{"content":{"parts":[{"functionCall":{"name":"a","args":"{}"}}]}}]}',
        '{"candidates":[{"content":{"parts":["text"]}}]}',
        '{"usageMetadata":{"promptTokenCount":"many"}}',
        '{"promptFeedback":"blocked"}',
    ],
)
def test_malformed_chunks_fail_the_stream(data: str) -> None:
    with pytest.raises(UpstreamError) as info:
        decode(sse(chunk([{"text": "ok"}]), data), close=False)
    assert info.value.kind is Failure.TRANSIENT
    assert "malformed" in info.value.message


# ---------------------------------------------------------------- classify_error


def classify(status: int, body: Any, headers: dict[str, str] | None = None) -> UpstreamError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return D.classify_error(status, headers or {}, raw, NOW)


def quota_429(quota_id: str, delay: str = "42s") -> dict[str, Any]:
    return {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details. "
            "* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, "
            "limit: 20, model: gemini-2.5-flash\nPlease retry in 42.87s.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Learn more",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                            "quotaId": quota_id,
                            "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                            "quotaValue": "20",
                        }
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
            ],
        }
    }


def test_429_per_minute_waits_for_retry_info() -> None:
    e = classify(429, quota_429("GenerateRequestsPerMinutePerProjectPerModel-FreeTier"))
    assert (e.kind, e.retry_after, e.status) == (Failure.RATE_LIMITED, 42.0, 429)
    assert e.message.startswith("HTTP 429: RESOURCE_EXHAUSTED: You exceeded your current quota")


def test_429_per_day_is_exhausted_despite_its_short_retry_info() -> None:
    e = classify(429, quota_429("GenerateRequestsPerDayPerProjectPerModel-FreeTier"))
    assert (e.kind, e.retry_after) == (Failure.QUOTA_EXHAUSTED, None)


def test_429_wait_from_the_message_then_headers() -> None:
    body = quota_429("GenerateRequestsPerMinutePerProjectPerModel-FreeTier")
    body["error"]["details"] = body["error"]["details"][:2]  # no RetryInfo
    assert classify(429, body).retry_after == pytest.approx(42.87)
    bare = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
        }
    }
    assert classify(429, bare).retry_after is None
    assert classify(429, bare, {"Retry-After": "12"}).retry_after == 12.0


def test_array_wrapped_error() -> None:
    e = classify(429, [quota_429("GenerateRequestsPerDayPerProjectPerModel-FreeTier")])
    assert e.kind is Failure.QUOTA_EXHAUSTED


def g_error(code: int, status: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        err["details"] = details
    return {"error": err}


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            400,
            g_error(400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
            Failure.QUOTA_EXHAUSTED,
        ),
        (
            400,
            g_error(
                400, "INVALID_ARGUMENT", 'Invalid JSON payload received. Unknown name "additionalProperties"'
            ),
            Failure.BAD_REQUEST,
        ),
        (
            400,
            g_error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            ),
            Failure.CONTEXT_TOO_LONG,
        ),
        (
            400,
            g_error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    },
                ],
            ),
            Failure.AUTH,
        ),
        (
            400,
            g_error(
                400,
                "INVALID_ARGUMENT",
                "API key expired. Please renew the API key.",
                [
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_EXPIRED"},
                ],
            ),
            Failure.AUTH,
        ),
        (403, g_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."), Failure.AUTH),
        (
            401,
            g_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
            Failure.AUTH,
        ),
        (
            404,
            g_error(
                404,
                "NOT_FOUND",
                "models/gemini-9 is not found for API version v1beta, or is not supported "
                "for generateContent.",
            ),
            Failure.NOT_FOUND,
        ),
        (
            500,
            g_error(
                500,
                "INTERNAL",
                "An internal error has occurred. Please retry or report in "
                "https://developers.generativeai.google/guide/troubleshooting",
            ),
            Failure.TRANSIENT,
        ),
        (
            500,
            g_error(500, "INTERNAL", "Internal error: the input context is too long."),
            Failure.CONTEXT_TOO_LONG,
        ),
        (
            503,
            g_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
            Failure.OVERLOADED,
        ),
        (
            504,
            g_error(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
            Failure.TRANSIENT,
        ),
        (499, g_error(499, "CANCELLED", "The operation was cancelled."), Failure.TRANSIENT),
        (502, b"<html><title>Error 502 (Server Error)!!1</title></html>", Failure.TRANSIENT),
        (503, b"", Failure.OVERLOADED),
        (413, b"", Failure.BAD_REQUEST),
    ],
)
def test_status_table(status: int, body: Any, kind: Failure) -> None:
    e = classify(status, body)
    assert (e.kind, e.status) == (kind, status)
    assert e.message.startswith(f"HTTP {status}: ")


def test_overloaded_wait_from_retry_info_or_retry_after() -> None:
    body = g_error(
        503,
        "UNAVAILABLE",
        "The model is overloaded.",
        [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}],
    )
    assert classify(503, body).retry_after == 1.5
    assert classify(503, g_error(503, "UNAVAILABLE", "x"), {"retry-after": "4"}).retry_after == 4.0
    assert classify(400, g_error(400, "INVALID_ARGUMENT", "x"), {"retry-after": "4"}).retry_after is None


def test_message_shape() -> None:
    e = classify(503, g_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."))
    assert e.message == "HTTP 503: UNAVAILABLE: The model is overloaded. Please try again later."
    assert classify(503, b"").message == "HTTP 503: (empty body)"

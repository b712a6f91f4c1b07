"""The Bedrock ConverseStream dialect: request body, SigV4 (against botocore), stream decoding, errors, model lists."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

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
from combined_models.daemon.dialects.aws_credentials import AwsCredentials
from combined_models.daemon.dialects.base import Endpoint, HttpRequest
from combined_models.daemon.dialects.bedrock import BedrockDialect, BedrockStreamDecoder, converse_body
from combined_models.daemon.dialects.eventstream import encode_message
from combined_models.daemon.errors import Failure, UpstreamError

NOW = datetime(2025, 5, 14, 9, 30, 5, tzinfo=UTC)
D = BedrockDialect()
CREDS = AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
TEMP_CREDS = AwsCredentials("ASIAEXAMPLE", "secret/with+chars", "FwoGZXIvYXdzEJr//////////token==")
SIGNED = Endpoint(base_url="", credentials=CREDS, region="us-east-1")
BEARER = Endpoint(base_url="", api_key="bedrock-api-key-123", region="us-west-2")
CLAUDE = "us.anthropic.claude-sonnet-4-20250514-v1:0"
WEATHER = Tool(
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.fixture(autouse=True)
def _frozen_botocore_clock() -> Iterator[None]:
    # As in test_sigv4.py: botocore's SigV4Auth reads the time through get_current_datetime (naive UTC).
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        yield


def botocore_authorization(req: HttpRequest, creds: AwsCredentials, region: str) -> str:
    unsigned = {k: v for k, v in req.headers.items() if k not in ("authorization", "x-amz-date")}
    unsigned.pop("x-amz-security-token", None)
    aws = AWSRequest(method=req.method, url=req.url, headers=unsigned, data=req.body)
    SigV4Auth(
        Credentials(creds.access_key_id, creds.secret_access_key, creds.session_token), "bedrock", region
    ).add_auth(aws)
    return str(aws.headers["Authorization"])


# ---------------------------------------------------------------- request body


def test_full_conversation_exact_json() -> None:
    request = ChatRequest(
        system="You are terse.",
        messages=[
            Message(
                "user",
                [
                    TextPart("What is in this picture, and the weather in Paris?"),
                    ImagePart(media_type="image/png", data="iVBORw0KGgo="),
                ],
            ),
            Message(
                "assistant",
                [
                    ThinkingPart(text="The user wants the weather.", signature="sig-abc"),
                    ThinkingPart(text="unsigned musing"),  # dropped: no signature
                    TextPart("A cat. Checking the weather."),
                    ToolCallPart("tooluse_1", "get_weather", {"city": "Paris"}),
                ],
            ),
            Message("user", "And tomorrow?"),  # merged with the next user turn, after its tool result
            Message("user", [ToolResultPart(tool_call_id="tooluse_1", content='{"temp_c": 21}')]),
        ],
        max_tokens=8000,
        temperature=1.5,  # ignored: thinking is on
        stop=["</end>"],
        tools=[WEATHER],
        tool_choice="auto",
        thinking_budget=2048,
    )
    req = D.build_chat(request, CLAUDE, SIGNED, NOW)
    assert json.loads(req.body) == {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"text": "What is in this picture, and the weather in Paris?"},
                    {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {
                        "reasoningContent": {
                            "reasoningText": {"text": "The user wants the weather.", "signature": "sig-abc"}
                        }
                    },
                    {"text": "A cat. Checking the weather."},
                    {
                        "toolUse": {
                            "toolUseId": "tooluse_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        }
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "toolResult": {
                            "toolUseId": "tooluse_1",
                            "content": [{"text": '{"temp_c": 21}'}],
                            "status": "success",
                        }
                    },
                    {"text": "And tomorrow?"},
                ],
            },
        ],
        "system": [{"text": "You are terse."}],
        "inferenceConfig": {"maxTokens": 8000, "stopSequences": ["</end>"]},
        "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 2048}},
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": "get_weather",
                        "description": "Current weather for a city.",
                        "inputSchema": {"json": WEATHER.parameters},
                    }
                }
            ],
            "toolChoice": {"auto": {}},
        },
    }


def test_request_line_and_headers() -> None:
    req = D.build_chat(ChatRequest(messages=[Message("user", "hi")]), CLAUDE, SIGNED, NOW)
    assert req.method == "POST"
    assert req.url == (
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-sonnet-4-20250514-v1:0/converse-stream"
    )
    assert req.headers["content-type"] == "application/json"
    assert req.headers["accept"] == "application/vnd.amazon.eventstream"
    assert req.headers["x-amz-date"] == "20250514T093005Z"
    assert json.loads(req.body) == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}


def test_arn_model_id_is_one_path_segment_and_httpx_keeps_it() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3"
    req = D.build_chat(ChatRequest(messages=[Message("user", "hi")]), arn, SIGNED, NOW)
    path = (
        "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fa1b2c3/converse-stream"
    )
    assert req.url.endswith(path)
    assert httpx.Request(req.method, req.url).url.raw_path == path.encode()


def test_base_url_overrides_the_regional_host() -> None:
    ep = Endpoint(base_url="https://vpce-1.bedrock-runtime.example.com/", api_key="k", region="eu-west-1")
    req = D.build_chat(ChatRequest(messages=[Message("user", "hi")]), "m:1", ep)
    assert req.url == "https://vpce-1.bedrock-runtime.example.com/model/m:1/converse-stream"


@pytest.mark.parametrize(
    ("temperature", "sent"), [(1.5, 1.0), (-0.2, 0.0), (0.3, 0.3), (None, None)], ids=str
)
def test_temperature_clamped_to_bedrock_range(temperature: float | None, sent: float | None) -> None:
    body = converse_body(
        ChatRequest(messages=[Message("user", "x")], temperature=temperature, top_p=0.9), CLAUDE
    )
    assert body["inferenceConfig"].get("temperature") == sent
    assert body["inferenceConfig"]["topP"] == 0.9


@pytest.mark.parametrize(
    ("model", "max_tokens", "budget", "choice", "expected_budget", "expected_max"),
    [
        (CLAUDE, None, 2000, None, 2000, 2000 + 4096),  # room left for the answer
        (CLAUDE, None, 100, None, 1024, 1024 + 4096),  # raised to Claude's minimum
        (CLAUDE, 3000, 5000, None, 2999, 3000),  # kept below max_tokens
        (CLAUDE, 1000, 5000, None, None, 1000),  # no room for a minimal budget: no thinking
        (CLAUDE, 8000, 2000, "required", None, 8000),  # forced tool use excludes thinking
        ("amazon.nova-pro-v1:0", 8000, 2000, None, None, 8000),  # not Claude
    ],
)
def test_thinking_budget(
    model: str,
    max_tokens: int | None,
    budget: int,
    choice: str | None,
    expected_budget: int | None,
    expected_max: int,
) -> None:
    request = ChatRequest(
        messages=[Message("user", "x")],
        max_tokens=max_tokens,
        thinking_budget=budget,
        temperature=0.5,
        tools=[WEATHER],
        tool_choice=choice,
    )
    body = converse_body(request, model)
    assert body["inferenceConfig"]["maxTokens"] == expected_max
    if expected_budget is None:
        assert "additionalModelRequestFields" not in body
        assert body["inferenceConfig"]["temperature"] == 0.5
    else:
        assert body["additionalModelRequestFields"]["thinking"] == {
            "type": "enabled",
            "budget_tokens": expected_budget,
        }
        assert "temperature" not in body["inferenceConfig"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ("get_weather", {"tool": {"name": "get_weather"}}),
        (None, None),
    ],
)
def test_tool_choice(choice: str | None, expected: dict[str, Any] | None) -> None:
    body = converse_body(
        ChatRequest(messages=[Message("user", "x")], tools=[WEATHER], tool_choice=choice), "m"
    )
    assert body["toolConfig"].get("toolChoice") == expected
    assert [t["toolSpec"]["name"] for t in body["toolConfig"]["tools"]] == ["get_weather"]


def test_tool_choice_none() -> None:
    plain = ChatRequest(messages=[Message("user", "x")], tools=[WEATHER], tool_choice="none")
    assert "toolConfig" not in converse_body(plain, "m")  # no tools: truly none
    history = [
        Message("user", "x"),
        Message("assistant", [ToolCallPart("t1", "get_weather", {})]),
        Message("user", [ToolResultPart(tool_call_id="t1", content="sunny")]),
    ]
    with_calls = ChatRequest(messages=history, tools=[WEATHER], tool_choice="none")
    # Bedrock rejects tool blocks without a toolConfig: the tools go, with no choice.
    assert (
        converse_body(with_calls, "m")["toolConfig"]
        == converse_body(ChatRequest(messages=history, tools=[WEATHER]), "m")["toolConfig"]
    )


def test_tools_in_history_but_not_declared_get_a_stub_spec() -> None:
    history = [
        Message("user", "x"),
        Message("assistant", [ToolCallPart("t1", "lookup", {"q": 1})]),
        Message("user", [ToolResultPart(tool_call_id="t1", content="", is_error=True)]),
    ]
    body = converse_body(ChatRequest(messages=history), "m")
    assert body["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "lookup",
                    "description": "A tool used earlier in this conversation.",
                    "inputSchema": {"json": {"type": "object"}},
                }
            }
        ]
    }
    result = body["messages"][2]["content"][0]["toolResult"]
    assert result == {"toolUseId": "t1", "content": [], "status": "error"}


def test_foreign_tool_ids_are_mapped_alike_for_call_and_result() -> None:
    weird = "call#1/ü" + "x" * 80
    history = [
        Message("user", "x"),
        Message("assistant", [ToolCallPart(weird, "get_weather", {})]),
        Message("user", [ToolResultPart(tool_call_id=weird, content="ok")]),
    ]
    msgs = converse_body(ChatRequest(messages=history, tools=[WEATHER]), "m")["messages"]
    call_id = msgs[1]["content"][0]["toolUse"]["toolUseId"]
    assert call_id == msgs[2]["content"][0]["toolResult"]["toolUseId"]
    assert len(call_id) <= 64 and call_id.startswith("call_1__x")
    assert all(c.isalnum() or c in "_.:-" for c in call_id)


def test_prefill_strips_trailing_whitespace_and_roles_alternate() -> None:
    request = ChatRequest(
        messages=[
            Message("user", "Count to five."),
            Message("user", "   "),  # blank: dropped
            Message("assistant", "One, two, "),
            Message("assistant", [TextPart("three,"), TextPart(" ")]),
        ]
    )
    assert converse_body(request, CLAUDE)["messages"] == [
        {"role": "user", "content": [{"text": "Count to five."}]},
        {"role": "assistant", "content": [{"text": "One, two, "}, {"text": "three,"}]},
    ]


def test_whitespace_only_prefill_is_dropped() -> None:
    request = ChatRequest(messages=[Message("user", "Hi"), Message("assistant", "  \n")])
    assert converse_body(request, CLAUDE)["messages"] == [{"role": "user", "content": [{"text": "Hi"}]}]


def test_images_and_documents() -> None:
    request = ChatRequest(
        messages=[
            Message(
                "user",
                [
                    ImagePart(url="data:image/jpeg;base64,/9j/4AAQ"),
                    DocumentPart(media_type="application/pdf", data="JVBERi0=", title="Q3 report.pdf"),
                    DocumentPart(media_type="text/plain", data="aGk="),
                ],
            )
        ]
    )
    content = converse_body(request, "m")["messages"][0]["content"]
    assert content[0] == {"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQ"}}}
    assert content[1] == {
        "document": {"format": "pdf", "name": "Q3 report pdf", "source": {"bytes": "JVBERi0="}}
    }
    assert content[2]["document"]["format"] == "txt"
    assert content[2]["document"]["name"].startswith("document-")


@pytest.mark.parametrize(
    "part",
    [
        ImagePart(url="https://example.com/cat.png"),
        ImagePart(media_type="image/bmp", data="Qk0="),
        DocumentPart(media_type="application/zip", data="UEs="),
    ],
    ids=["image-url", "bmp", "zip"],
)
def test_unsupported_content_is_refused_not_dropped(part: ImagePart | DocumentPart) -> None:
    with pytest.raises(UpstreamError) as info:
        D.build_chat(ChatRequest(messages=[Message("user", [part])]), "m", BEARER)
    assert info.value.kind is Failure.UNSUPPORTED


# ---------------------------------------------------------------- auth


@pytest.mark.parametrize("creds", [CREDS, TEMP_CREDS], ids=["static", "session"])
def test_signed_chat_request_verifies_with_botocore(creds: AwsCredentials) -> None:
    ep = Endpoint(base_url="", credentials=creds, region="eu-central-1", headers={"X-Custom": "a  b"})
    request = ChatRequest(messages=[Message("user", "Grüße, ünïcode ✓")], tools=[WEATHER])
    req = D.build_chat(request, CLAUDE, ep, NOW)
    assert req.headers["authorization"] == botocore_authorization(req, creds, "eu-central-1")
    assert req.headers["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={creds.access_key_id}/20250514/eu-central-1/bedrock/aws4_request, "
    )
    assert req.headers.get("x-amz-security-token") == creds.session_token


def test_region_taken_from_base_url_host_when_not_configured() -> None:
    ep = Endpoint(base_url="https://bedrock-runtime.ap-south-1.amazonaws.com", credentials=CREDS)
    req = D.build_chat(ChatRequest(messages=[Message("user", "hi")]), "m", ep, NOW)
    assert "/20250514/ap-south-1/bedrock/aws4_request" in req.headers["authorization"]
    assert req.headers["authorization"] == botocore_authorization(req, CREDS, "ap-south-1")


def test_bedrock_api_key_is_a_bearer_and_nothing_is_signed() -> None:
    req = D.build_chat(ChatRequest(messages=[Message("user", "hi")]), CLAUDE, BEARER)
    assert req.headers["authorization"] == "Bearer bedrock-api-key-123"
    assert "x-amz-date" not in req.headers
    assert req.url.startswith("https://bedrock-runtime.us-west-2.amazonaws.com/")


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        (Endpoint(base_url="", region="us-east-1"), "no AWS credentials"),
        (Endpoint(base_url="", credentials=CREDS), "no AWS region"),
        (Endpoint(base_url="https://proxy.example.com", credentials=CREDS), "no AWS region"),
    ],
)
def test_missing_credentials_or_region_is_auth(endpoint: Endpoint, message: str) -> None:
    with pytest.raises(UpstreamError) as info:
        D.build_chat(ChatRequest(messages=[Message("user", "hi")]), "m", endpoint, NOW)
    assert info.value.kind is Failure.AUTH
    assert message in info.value.message


# ---------------------------------------------------------------- stream


def frame(event_type: str, payload: dict[str, Any]) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, json.dumps(payload).encode())


def exception_frame(name: str, payload: dict[str, Any]) -> bytes:
    headers = {":exception-type": name, ":content-type": "application/json", ":message-type": "exception"}
    return encode_message(headers, json.dumps(payload).encode())


PAD = "abcdefghijklmnopqrstuvwxyzABCDEF"
START = frame("messageStart", {"role": "assistant", "p": PAD})
THINKING = [
    frame(
        "contentBlockDelta",
        {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Paris, "}}, "p": "ab"},
    ),
    frame(
        "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "so weather."}}}
    ),
    frame(
        "contentBlockDelta",
        {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "EqQBCkgIAR"}}},
    ),
    frame("contentBlockStop", {"contentBlockIndex": 0}),
]
# A text block starts with a delta: there is no text contentBlockStart.
TEXT_EMPTY = frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": ""}})
TEXT_1 = frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Let me "}, "p": PAD})
TEXT_2 = frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "check. ✓"}})
TEXT_STOP = frame("contentBlockStop", {"contentBlockIndex": 1})
TOOL_START = frame(
    "contentBlockStart",
    {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "tooluse_Xy1", "name": "get_weather"}}},
)
TOOL_INPUT = [
    frame("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": ""}}}),
    frame("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": '{"city": "Pa'}}}),
    frame("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": 'ris"}'}}}),
]
TOOL_STOP = frame("contentBlockStop", {"contentBlockIndex": 2, "p": PAD})
MESSAGE_STOP = frame("messageStop", {"stopReason": "tool_use", "p": PAD})
METADATA = frame(
    "metadata",
    {
        "usage": {
            "inputTokens": 412,
            "outputTokens": 57,
            "totalTokens": 469,
            "cacheReadInputTokens": 300,
            "cacheWriteInputTokens": 12,
        },
        "metrics": {"latencyMs": 1234},
        "p": PAD,
    },
)
FRAMES = [
    START,
    *THINKING,
    TEXT_EMPTY,
    TEXT_1,
    TEXT_2,
    TEXT_STOP,
    TOOL_START,
    *TOOL_INPUT,
    TOOL_STOP,
    MESSAGE_STOP,
    METADATA,
]
BEFORE_STOP = b"".join(FRAMES[: FRAMES.index(MESSAGE_STOP)])
STREAM = b"".join(FRAMES)
EXPECTED: list[DecodedItem] = [
    ThinkingEvent("Paris, "),
    ThinkingEvent("so weather."),
    ThinkingEvent("", signature="EqQBCkgIAR"),
    TextEvent("Let me "),
    TextEvent("check. ✓"),
    ToolCallEvent("tooluse_Xy1", "get_weather", {"city": "Paris"}),
    Finished(
        finish_reason="tool_calls",
        usage=Usage(input_tokens=412, output_tokens=57, cache_read_tokens=300, cache_write_tokens=12),
    ),
]


def decode(chunks: list[bytes]) -> list[DecodedItem]:
    dec = BedrockStreamDecoder()
    out: list[DecodedItem] = []
    for chunk in chunks:
        out.extend(dec.feed(chunk))
    out.extend(dec.close())
    return out


def test_stream_whole() -> None:
    assert decode([STREAM]) == EXPECTED


def test_stream_byte_by_byte_emits_nothing_early() -> None:
    dec = BedrockStreamDecoder()
    seen: list[DecodedItem] = []
    for f in FRAMES:
        for i in range(len(f) - 1):
            assert dec.feed(f[i : i + 1]) == [], "an item before its frame was complete"
        seen.extend(dec.feed(f[-1:]))
    assert seen + dec.close() == EXPECTED


def test_stream_every_split_point() -> None:
    for i in range(len(STREAM) + 1):
        assert decode([STREAM[:i], STREAM[i:]]) == EXPECTED, f"split at {i}"


def test_trailing_bytes_after_the_finish_are_ignored() -> None:
    dec = BedrockStreamDecoder()
    items = dec.feed(STREAM + TEXT_1[:7])
    assert items == EXPECTED
    assert dec.feed(b"garbage") == []
    assert dec.close() == []


def test_eof_after_message_stop_without_metadata_is_complete() -> None:
    stream = BEFORE_STOP + MESSAGE_STOP
    items = decode([stream])
    assert items[-1] == Finished(finish_reason="tool_calls", usage=Usage())
    assert items[:-1] == EXPECTED[:-1]


@pytest.mark.parametrize("tail", [b"\x00\x00\x01", b"\xff" * 16], ids=["partial frame", "corrupt prelude"])
def test_breakage_after_message_stop_is_still_complete(tail: bytes) -> None:
    items = decode([BEFORE_STOP + MESSAGE_STOP + tail])
    assert isinstance(items[-1], Finished)


def test_exception_after_message_stop_is_still_complete() -> None:
    stream = BEFORE_STOP + MESSAGE_STOP + exception_frame("internalServerException", {"message": "late"})
    assert decode([stream])[-1] == Finished(finish_reason="tool_calls")


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ],
)
def test_stop_reasons(reason: str, finish: str) -> None:
    items = decode(
        [
            frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}}),
            frame("messageStop", {"stopReason": reason}),
        ]
    )
    assert items == [TextEvent("x"), Finished(finish_reason=finish)]


@pytest.mark.parametrize("reason", ["malformed_model_output", "malformed_tool_use"])
def test_malformed_stop_reasons_are_transient(reason: str) -> None:
    with pytest.raises(UpstreamError) as info:
        decode([frame("messageStop", {"stopReason": reason})])
    assert info.value.kind is Failure.TRANSIENT
    assert reason in info.value.message


@pytest.mark.parametrize(
    ("name", "message", "kind"),
    [
        ("throttlingException", "Too many tokens, please wait before trying again.", Failure.RATE_LIMITED),
        (
            "throttlingException",
            "Too many tokens per day, please wait before trying again.",
            Failure.QUOTA_EXHAUSTED,
        ),
        ("serviceUnavailableException", "Bedrock is unable to process your request.", Failure.OVERLOADED),
        ("modelStreamErrorException", "Model stream error", Failure.TRANSIENT),
        ("internalServerException", "Internal error", Failure.TRANSIENT),
        ("validationException", "Something about the output", Failure.TRANSIENT),
        ("validationException", "Input is too long for requested model.", Failure.CONTEXT_TOO_LONG),
        ("someFutureException", "?", Failure.TRANSIENT),
    ],
)
def test_exception_frames(name: str, message: str, kind: Failure) -> None:
    dec = BedrockStreamDecoder()
    assert dec.feed(START + TEXT_1) == [TextEvent("Let me ")]
    with pytest.raises(UpstreamError) as info:
        dec.feed(exception_frame(name, {"message": message, "originalStatusCode": 500}))
    assert info.value.kind is kind
    assert name in info.value.message and message[:20] in info.value.message


def test_error_message_frame_is_transient() -> None:
    error = encode_message(
        {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "boom"}, b""
    )
    with pytest.raises(UpstreamError) as info:
        decode([START, error])
    assert info.value.kind is Failure.TRANSIENT
    assert "InternalFailure" in info.value.message


def test_corrupted_crc_is_a_malformed_stream() -> None:
    bad = bytearray(TEXT_1)
    bad[-6] ^= 0x01  # a payload byte: the message CRC no longer matches
    dec = BedrockStreamDecoder()
    assert dec.feed(START) == []
    with pytest.raises(UpstreamError) as info:
        dec.feed(bytes(bad))
    assert info.value.kind is Failure.TRANSIENT
    assert "malformed stream" in info.value.message


def test_good_frames_before_corruption_are_kept() -> None:
    bad = bytearray(TEXT_2)
    bad[20] ^= 0xFF
    dec = BedrockStreamDecoder()
    assert dec.feed(TEXT_1 + bytes(bad)) == [TextEvent("Let me ")]
    with pytest.raises(UpstreamError, match="malformed stream"):
        dec.close()


@pytest.mark.parametrize(
    "cut",
    [
        STREAM.index(TEXT_STOP),
        STREAM.index(TEXT_STOP) + 5,
        len(BEFORE_STOP) + len(MESSAGE_STOP) - 1,
    ],
    ids=["between frames", "mid frame", "inside messageStop"],
)
def test_truncated_before_message_stop(cut: int) -> None:
    with pytest.raises(UpstreamError) as info:
        decode([STREAM[:cut]])
    assert info.value.kind is Failure.TRANSIENT
    assert "truncated" in info.value.message


@pytest.mark.parametrize(
    "bad",
    [
        encode_message({":event-type": "contentBlockDelta", ":message-type": "event"}, b"{not json"),
        encode_message({":event-type": "contentBlockDelta", ":message-type": "event"}, b"[1, 2]"),
        frame("contentBlockDelta", {"delta": {"text": "no index"}}),
        frame("contentBlockDelta", {"contentBlockIndex": 3, "delta": {"toolUse": {"input": "{}"}}}),
        frame("messageStop", {}),
    ],
    ids=["not json", "not an object", "no index", "tool input without start", "stop without reason"],
)
def test_malformed_events_are_transient(bad: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        decode([START, bad])
    assert info.value.kind is Failure.TRANSIENT


def test_invalid_tool_json_is_transient() -> None:
    frames = [TOOL_START, TOOL_INPUT[1], TOOL_STOP]
    with pytest.raises(UpstreamError, match="invalid JSON"):
        decode(frames)


def test_tool_block_without_stop_is_flushed_at_message_stop() -> None:
    frames = [TOOL_START, *TOOL_INPUT, MESSAGE_STOP]
    assert decode(frames) == [
        ToolCallEvent("tooluse_Xy1", "get_weather", {"city": "Paris"}),
        Finished(finish_reason="tool_calls"),
    ]


def test_tool_call_without_input_has_empty_arguments() -> None:
    frames = [
        TOOL_START,
        TOOL_STOP,
        frame("messageStop", {"stopReason": "tool_use"}),
    ]
    assert decode(frames)[0] == ToolCallEvent("tooluse_Xy1", "get_weather", {})


def test_unknown_events_and_blocks_are_ignored() -> None:
    frames = [
        frame("someNewEvent", {"x": 1}),
        frame("contentBlockStart", {"contentBlockIndex": 0, "start": {"image": {"format": "png"}}}),
        frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"citation": {"title": "t"}}}),
        frame(
            "contentBlockDelta",
            {"contentBlockIndex": 1, "delta": {"reasoningContent": {"redactedContent": "AAAA"}}},
        ),
        encode_message({":message-type": "future"}, b"whatever"),
        frame("messageStop", {"stopReason": "brand_new_reason"}),
    ]
    assert decode(frames) == [Finished(finish_reason="brand_new_reason")]


# ---------------------------------------------------------------- classify_error


def err(code: str | None, message: str = "boom", *, in_body: bool = False) -> tuple[dict[str, str], bytes]:
    if code is None:
        return {}, json.dumps({"message": message}).encode()
    if in_body:
        return {}, json.dumps({"__type": f"com.amazon.coral.service#{code}", "Message": message}).encode()
    return {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/"}, json.dumps(
        {"message": message}
    ).encode()


ON_DEMAND = (
    "Invocation of model ID anthropic.claude-sonnet-4-20250514-v1:0 with on-demand throughput isn’t supported. "
    "Retry your request with the ID or ARN of an inference profile that contains this model."
)
CLASSIFY = {
    "throttling": (
        429,
        *err("ThrottlingException", "Too many tokens, please wait before trying again."),
        Failure.RATE_LIMITED,
    ),
    "daily tokens": (
        429,
        *err("ThrottlingException", "Too many tokens per day, please wait before trying again."),
        Failure.QUOTA_EXHAUSTED,
    ),
    "model not ready": (429, *err("ModelNotReadyException"), Failure.OVERLOADED),
    "service quota (400)": (400, *err("ServiceQuotaExceededException"), Failure.QUOTA_EXHAUSTED),
    "access denied": (
        403,
        *err("AccessDeniedException", "User is not authorized to perform bedrock:InvokeModel"),
        Failure.AUTH,
    ),
    "model access not enabled": (
        403,
        *err("AccessDeniedException", "You don't have access to the model with the specified model ID."),
        Failure.NOT_FOUND,
    ),
    "unrecognized client": (
        403,
        *err("UnrecognizedClientException", "The security token included in the request is invalid."),
        Failure.AUTH,
    ),
    "invalid signature": (403, *err("InvalidSignatureException"), Failure.AUTH),
    "expired token": (403, *err("ExpiredTokenException"), Failure.AUTH),
    "not found": (404, *err("ResourceNotFoundException", "Model not found"), Failure.NOT_FOUND),
    "too long": (
        400,
        *err("ValidationException", "Input is too long for requested model."),
        Failure.CONTEXT_TOO_LONG,
    ),
    "too many input tokens": (
        400,
        *err("ValidationException", "too many input tokens: 250000 > 200000"),
        Failure.CONTEXT_TOO_LONG,
    ),
    "on-demand": (400, *err("ValidationException", ON_DEMAND), Failure.NOT_FOUND),
    "invalid model id": (
        400,
        *err("ValidationException", "The provided model identifier is invalid."),
        Failure.NOT_FOUND,
    ),
    "prefill": (
        400,
        *err(
            "ValidationException",
            "This model does not support assistant message prefill. The conversation must end with a user message.",
        ),
        Failure.PREFILL_REJECTED,
    ),
    "validation": (
        400,
        *err("ValidationException", "messages.0.content: field required"),
        Failure.BAD_REQUEST,
    ),
    "model timeout": (408, *err("ModelTimeoutException"), Failure.TRANSIENT),
    "internal": (500, *err("InternalServerException"), Failure.TRANSIENT),
    "model error": (424, *err("ModelErrorException"), Failure.TRANSIENT),
    "unavailable": (503, *err("ServiceUnavailableException"), Failure.OVERLOADED),
    "code in body __type": (429, *err("ThrottlingException", in_body=True), Failure.RATE_LIMITED),
    "no code, status decides": (502, *err(None), Failure.TRANSIENT),
    "not json": (503, {}, b"<html>Service Unavailable</html>", Failure.OVERLOADED),
}


@pytest.mark.parametrize("case", CLASSIFY.values(), ids=CLASSIFY.keys())
def test_classify_error(case: tuple[int, dict[str, str], bytes, Failure]) -> None:
    status, headers, body, kind = case
    e = D.classify_error(status, headers, body, NOW)
    assert e.kind is kind
    assert e.status == status
    assert e.retry_after is None  # Bedrock sends no wait hints


def test_classify_error_message_names_code_and_text() -> None:
    headers, body = err("ThrottlingException", "Too many requests")
    e = D.classify_error(429, {"X-Amzn-ErrorType": headers["x-amzn-ErrorType"]}, body, NOW)
    assert e.message == "HTTP 429 ThrottlingException: Too many requests"


def test_classify_error_keeps_a_gateway_retry_after() -> None:
    headers, body = err("ThrottlingException")
    assert D.classify_error(429, {**headers, "retry-after": "7"}, body, NOW).retry_after == 7.0


# ---------------------------------------------------------------- models


FOUNDATION = {
    "modelSummaries": [
        {
            "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
            "inferenceTypesSupported": ["ON_DEMAND"],
            "responseStreamingSupported": True,
        },
        {
            "modelId": "anthropic.claude-sonnet-4-20250514-v1:0",
            "inferenceTypesSupported": ["INFERENCE_PROFILE"],
        },
        {"modelId": "amazon.titan-text-express-v1:0:8k", "inferenceTypesSupported": ["PROVISIONED"]},
        {
            "modelId": "cohere.command-r-v1:0",
            "inferenceTypesSupported": ["ON_DEMAND"],
            "responseStreamingSupported": False,
        },
        {"modelId": "meta.llama3-8b-instruct-v1:0"},  # no inference types listed: kept
    ]
}


def test_models_first_page_foundation_models() -> None:
    req = D.build_list_models(BEARER, NOW)
    assert req.method == "GET"
    assert req.url == "https://bedrock.us-west-2.amazonaws.com/foundation-models?byOutputModality=TEXT"
    assert req.headers["authorization"] == "Bearer bedrock-api-key-123"
    ids, cursor = D.parse_models(json.dumps(FOUNDATION).encode())
    assert ids == ["anthropic.claude-3-haiku-20240307-v1:0", "meta.llama3-8b-instruct-v1:0"]
    assert cursor == "profiles"


def test_models_profile_pages() -> None:
    first = D.build_list_models(BEARER, NOW, "profiles")
    assert first.url == (
        "https://bedrock.us-west-2.amazonaws.com/inference-profiles?type=SYSTEM_DEFINED&maxResults=1000"
    )
    page1 = {
        "inferenceProfileSummaries": [
            {
                "inferenceProfileId": "us.anthropic.claude-sonnet-4-20250514-v1:0",
                "status": "ACTIVE",
                "type": "SYSTEM_DEFINED",
            },
            {"inferenceProfileId": "us.old.model-v1:0", "status": "INACTIVE"},
        ],
        "nextToken": "eyJhIjoxfQ==/+x",
    }
    ids, cursor = D.parse_models(json.dumps(page1).encode(), "profiles")
    assert ids == ["us.anthropic.claude-sonnet-4-20250514-v1:0"]
    assert cursor == "profiles:eyJhIjoxfQ==/+x"
    second = D.build_list_models(BEARER, NOW, cursor)
    assert second.url.endswith("?type=SYSTEM_DEFINED&maxResults=1000&nextToken=eyJhIjoxfQ%3D%3D%2F%2Bx")
    assert httpx.URL(second.url).params["nextToken"] == "eyJhIjoxfQ==/+x"
    page2 = {
        "inferenceProfileSummaries": [
            {"inferenceProfileId": "global.anthropic.claude-haiku-4-5-20251001-v1:0"}
        ]
    }
    assert D.parse_models(json.dumps(page2).encode(), cursor) == (
        ["global.anthropic.claude-haiku-4-5-20251001-v1:0"],
        None,
    )


@pytest.mark.parametrize("cursor", [None, "profiles", "profiles:tok/en=="])
def test_signed_model_listing_verifies_with_botocore(cursor: str | None) -> None:
    ep = Endpoint(base_url="", credentials=TEMP_CREDS, region="us-west-2")
    req = D.build_list_models(ep, NOW, cursor)
    assert req.body == b""
    assert req.headers["authorization"] == botocore_authorization(req, TEMP_CREDS, "us-west-2")


def test_control_url_option() -> None:
    ep = Endpoint(base_url="", api_key="k", options={"control_url": "http://127.0.0.1:9999/"})
    assert D.build_list_models(ep).url == "http://127.0.0.1:9999/foundation-models?byOutputModality=TEXT"


def test_unknown_cursor_is_a_bug() -> None:
    with pytest.raises(ValueError):
        D.build_list_models(BEARER, NOW, "bogus")

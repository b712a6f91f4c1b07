"""The simulator's pure codecs: the AWS event-stream encoder, the SigV4 verifier, the dialect
parsers' neutral conversation view. Checked against botocore where it has the other side."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from hypothesis import given
from hypothesis import strategies as st

from combined_models.simulator import eventstream
from combined_models.simulator.answer import plan_answer
from combined_models.simulator.dialects import BadRequest, Route, get_dialect
from combined_models.simulator.sigv4 import SigV4Error, canonical_query, parse_authorization, verify

# provider-protocols.md §3.4
VECTOR_HEADERS = [
    (":event-type", "contentBlockDelta"),
    (":content-type", "application/json"),
    (":message-type", "event"),
]
VECTOR_PAYLOAD = b'{"contentBlockIndex":0,"delta":{"text":"Hi"}}'


def frames(data: bytes, step: int | None = None) -> list[tuple[dict[str, Any], bytes]]:
    """Decode with botocore, feeding `step` bytes at a time (all at once when None)."""
    buf = EventStreamBuffer()
    out = []
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        buf.add_data(data[i : i + step])
        out += [(m.headers, m.payload) for m in buf]
    return out


# Event-stream framing


def test_encoder_reproduces_the_doc_test_vector() -> None:
    frame = eventstream.encode_message(VECTOR_HEADERS, VECTOR_PAYLOAD)
    assert len(frame) == 0x94
    assert frame[:12] == bytes.fromhex("00000094 00000057 b4ab9aee")
    assert frame[12 : 12 + 0x57].startswith(b"\x0b:event-type\x07\x00\x11contentBlockDelta")
    assert frame[-4:] == bytes.fromhex("1f944657")
    assert eventstream.event("contentBlockDelta", VECTOR_PAYLOAD) == frame


@pytest.mark.parametrize("step", [None, 1, 7])
def test_botocore_decodes_frames_at_every_split(step: int | None) -> None:
    data = eventstream.event("messageStart", b'{"role":"assistant"}') + eventstream.exception(
        "throttlingException", b'{"message":"slow down"}'
    )
    got = frames(data, step)
    assert [h[":message-type"] for h, _ in got] == ["event", "exception"]
    assert got[0] == (
        {":event-type": "messageStart", ":content-type": "application/json", ":message-type": "event"},
        b'{"role":"assistant"}',
    )
    assert got[1][0][":exception-type"] == "throttlingException"


def test_a_partial_frame_yields_nothing_until_complete() -> None:
    frame = eventstream.event("messageStart", b"{}")
    buf = EventStreamBuffer()
    buf.add_data(frame[:-1])
    assert list(buf) == []
    buf.add_data(frame[-1:])
    assert len(list(buf)) == 1


def test_corrupted_crc_is_rejected_by_botocore() -> None:
    bad = eventstream.corrupt_crc(eventstream.event("contentBlockDelta", VECTOR_PAYLOAD))
    with pytest.raises(ChecksumMismatch):
        frames(bad)


@given(st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=5), st.binary())
def test_encoder_round_trips_through_botocore(headers: dict[str, str], payload: bytes) -> None:
    ((decoded_headers, decoded_payload),) = frames(eventstream.encode_message(list(headers.items()), payload))
    assert decoded_headers == headers
    assert decoded_payload == payload


# SigV4


def signed(
    secret: str = "SECRET",
    service: str = "bedrock",
    body: bytes = b'{"messages":[]}',
    path: str = "/model/us.anthropic.claude-x-v1%3A0/converse-stream",
    query: str = "",
) -> tuple[str, dict[str, str], bytes]:
    """A request signed by botocore's SigV4Auth: (target, lower-cased headers, body)."""
    target = path + (f"?{query}" if query else "")
    request = AWSRequest(
        method="POST",
        url=f"http://127.0.0.1:8080{target}",
        data=body,
        headers={"content-type": "application/json"},
    )
    SigV4Auth(Credentials("AKID", secret), service, "us-east-1").add_auth(request)
    headers = {k.lower(): v for k, v in request.headers.items()} | {"host": "127.0.0.1:8080"}
    return target, headers, body


def other_second(amz_date: str) -> str:
    return amz_date[:-3] + ("01Z" if amz_date.endswith("00Z") else "00Z")


def check(target: str, headers: dict[str, str], body: bytes, secret: str | None = "SECRET") -> None:
    verify(
        method="POST",
        target=target,
        headers=headers,
        body=body,
        service="bedrock",
        secret=secret,
        now=time.time(),
    )


@pytest.mark.parametrize("query", ["", "maxResults=2&nextToken=abc%3D%3D", "b=2&a=1"])
def test_botocore_signatures_verify(query: str) -> None:
    check(*signed(query=query))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t, h, b: (t, h, b + b" "),  # body changed after signing
        lambda t, h, b: (t.replace("%3A", ":"), h, b),  # path sent differently from how it was signed
        lambda t, h, b: (t, h | {"x-amz-date": other_second(h["x-amz-date"])}, b),
        lambda t, h, b: (t, h | {"content-type": "text/plain"}, b),
    ],
)
def test_tampered_requests_fail_verification(tamper: Any) -> None:
    with pytest.raises(SigV4Error, match="does not match") as info:
        check(*tamper(*signed()))
    assert info.value.code == "InvalidSignatureException"


def test_wrong_secret_fails_but_passes_a_form_only_check() -> None:
    target, headers, body = signed(secret="OTHER")
    with pytest.raises(SigV4Error, match="does not match"):
        check(target, headers, body)
    check(target, headers, body, secret=None)


def test_the_scope_must_name_the_bedrock_service() -> None:
    with pytest.raises(SigV4Error, match="correct service: 'bedrock'"):
        check(*signed(service="bedrock-runtime"), secret=None)


@pytest.mark.parametrize(
    "auth",
    [
        "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=host",
        "AWS4-HMAC-SHA256 Credential=AKID/2025/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature="
        + "0" * 64,
        "AWS4-HMAC-SHA1 Credential=AKID/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature="
        + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=x;host, "
        "Signature=" + "0" * 64,
    ],
)
def test_malformed_authorization_headers_are_incomplete(auth: str) -> None:
    with pytest.raises(SigV4Error) as info:
        parse_authorization(auth)
    assert info.value.code == "IncompleteSignatureException"


def test_a_stale_signature_is_expired() -> None:
    target, headers, body = signed()
    with pytest.raises(SigV4Error, match="Signature expired"):
        verify(
            method="POST",
            target=target,
            headers=headers,
            body=body,
            service="bedrock",
            secret="SECRET",
            now=time.time() + 3600,
        )


def test_canonical_query_sorts_and_normalizes_encoding() -> None:
    assert canonical_query("b=x y&a=%7e&c=a:b") == "a=~&b=x%20y&c=a%3Ab"


# Parsers: the neutral conversation view

PNG = "iVBORw0KGgo="  # 8 bytes once decoded
ARGS = {"city": "Paris"}

# One conversation, as each dialect encodes it. Ids ride along where the dialect has them.
BODIES: dict[str, tuple[Route, dict[str, Any]]] = {
    "openai": (
        Route("chat"),
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Weather?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "w", "arguments": json.dumps(ARGS)},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
                {"role": "user", "content": "Thanks."},
            ],
        },
    ),
    "anthropic": (
        Route("chat"),
        {
            "model": "m",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "Be terse."}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Weather?"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "t1", "name": "w", "input": ARGS},
                    ],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}],
                },
                {"role": "user", "content": "Thanks."},
            ],
        },
    ),
    "bedrock": (
        Route("chat", "m", stream=True),
        {
            "system": [{"text": "Be terse."}],
            "toolConfig": {"tools": [{"toolSpec": {"name": "w", "inputSchema": {"json": {}}}}]},
            "messages": [
                {
                    "role": "user",
                    "content": [{"text": "Weather?"}, {"image": {"format": "png", "source": {"bytes": PNG}}}],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"text": "Checking."},
                        {"toolUse": {"toolUseId": "t1", "name": "w", "input": ARGS}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"toolResult": {"toolUseId": "t1", "content": [{"text": "sunny"}]}},
                        {"text": "Thanks."},
                    ],
                },
            ],
        },
    ),
    "gemini": (
        Route("chat", "m", stream=True, name="sse"),
        {
            "systemInstruction": {"parts": [{"text": "Be terse."}]},
            "contents": [
                {
                    "role": "user",
                    "parts": [{"text": "Weather?"}, {"inlineData": {"mimeType": "image/png", "data": PNG}}],
                },
                {
                    "role": "model",
                    "parts": [
                        {"text": "Checking."},
                        {"functionCall": {"id": "t1", "name": "w", "args": ARGS}},
                    ],
                },
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"id": "t1", "name": "w", "response": "sunny"}}],
                },
                {"role": "user", "parts": [{"text": "Thanks."}]},
            ],
        },
    ),
}
BODIES["copilot"] = BODIES["openrouter"] = BODIES["openai"]

EXPECTED_VIEW = {
    "system": "Be terse.",
    "messages": [
        {
            "role": "user",
            "parts": [
                {"type": "text", "text": "Weather?"},
                {"type": "image", "media_type": "image/png", "data_length": 8},
            ],
        },
        {
            "role": "assistant",
            "parts": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_call", "id": "t1", "name": "w", "arguments": ARGS},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"type": "tool_result", "id": "t1", "content": "sunny"},
                {"type": "text", "text": "Thanks."},
            ],
        },
    ],
}


@pytest.mark.parametrize("dialect", sorted(BODIES))
def test_every_dialect_parses_the_same_conversation_to_the_same_view(dialect: str) -> None:
    route, body = BODIES[dialect]
    req = get_dialect(dialect).parse_chat(route, json.dumps(body).encode())
    assert req.conversation == EXPECTED_VIEW
    # What the answer planner sees: the tool result and the new question are one user turn.
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "user"]


@pytest.mark.parametrize(
    ("dialect", "route", "body", "signature"),
    [
        (
            "anthropic",
            Route("chat"),
            {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
            "sig",
        ),
        (
            "bedrock",
            Route("chat", "m"),
            {"reasoningContent": {"reasoningText": {"text": "Hmm.", "signature": "sig"}}},
            "sig",
        ),
        ("gemini", Route("chat", "m"), {"text": "Hmm.", "thought": True, "thoughtSignature": "sig"}, "sig"),
        ("openai", Route("chat"), None, None),
    ],
)
def test_thinking_sent_back_is_in_the_view(
    dialect: str, route: Route, body: Any, signature: str | None
) -> None:
    bodies: dict[str, dict[str, Any]] = {
        "anthropic": {
            "model": "m",
            "max_tokens": 9,
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [body]}],
        },
        "bedrock": {
            "messages": [
                {"role": "user", "content": [{"text": "q"}]},
                {"role": "assistant", "content": [body]},
            ]
        },
        "gemini": {
            "contents": [{"role": "user", "parts": [{"text": "q"}]}, {"role": "model", "parts": [body]}]
        },
        "openai": {
            "model": "m",
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "reasoning_content": "Hmm."},
            ],
        },
    }
    encoded = bodies[dialect]
    req = get_dialect(dialect).parse_chat(route, json.dumps(encoded).encode())
    assert req.conversation is not None
    assert req.conversation["messages"][-1]["parts"] == [
        {"type": "thinking", "text": "Hmm.", "signature": signature}
    ]


@pytest.mark.parametrize(
    ("dialect", "route", "body", "match"),
    [
        (
            "anthropic",
            Route("chat"),
            {"model": "m", "messages": [{"role": "user", "content": "x"}]},
            "max_tokens",
        ),
        (
            "anthropic",
            Route("chat"),
            {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "top-level `system`",
        ),
        (
            "anthropic",
            Route("chat"),
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "Hi "}],
            },
            "final assistant content cannot end with trailing whitespace",
        ),
        ("bedrock", Route("chat", "m"), {"messages": []}, "must start with a user message"),
        (
            "bedrock",
            Route("chat", "m"),
            {
                "messages": [
                    {"role": "user", "content": [{"text": "x"}]},
                    {
                        "role": "assistant",
                        "content": [{"toolUse": {"toolUseId": "t", "name": "w", "input": {}}}],
                    },
                ]
            },
            "toolConfig field must be defined",
        ),
        (
            "bedrock",
            Route("chat", "m"),
            {
                "messages": [
                    {"role": "user", "content": [{"text": "x"}]},
                    {"role": "assistant", "content": [{"text": "a\n"}]},
                ]
            },
            "trailing whitespace",
        ),
        ("gemini", Route("chat", "m"), {"contents": []}, "contents is not specified"),
        (
            "gemini",
            Route("chat", "m"),
            {"contents": [{"role": "bot", "parts": [{"text": "x"}]}]},
            "valid role",
        ),
    ],
)
def test_parsers_reject_what_the_real_api_rejects(dialect: str, route: Route, body: Any, match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        get_dialect(dialect).parse_chat(route, json.dumps(body).encode())


def test_thinking_precedes_the_answer_and_is_signed_from_its_text() -> None:
    req = get_dialect("openai").parse_chat(
        Route("chat"), b'{"model":"m","messages":[{"role":"user","content":"x"}]}'
    )
    answer = plan_answer(req, text="Yes.", thinking="Let me see.")
    assert answer.thinking == "Let me see." and answer.text == "Yes."
    assert answer.thinking_tokens == 3 and answer.completion_tokens == 4
    assert plan_answer(req, text="No.", thinking="Let me see.").signature == answer.signature
    assert plan_answer(req, text="Yes.", thinking="Something else.").signature != answer.signature

"""The HTTP front door: request translation and response encoding (pure), then the official SDKs end to end."""

from __future__ import annotations

import json
import logging
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import msgspec
import openai
import pytest
import trio
import trio.testing

from combined_models.chat import (
    ChatRequest,
    DocumentPart,
    DoneEvent,
    ErrorEvent,
    FailoverEvent,
    ImagePart,
    Message,
    ProviderEvent,
    StreamEvent,
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
from combined_models.client.cli import main as cmctl_main
from combined_models.config import ConfigError, HttpConfig, parse_config
from combined_models.daemon.gateway import anthropic as ant
from combined_models.daemon.gateway import load_token, token_path
from combined_models.daemon.gateway import openai as oai
from combined_models.daemon.gateway.common import BadRequest, Head, Out, Responder
from combined_models.simulator import Fault

from .conftest import ANSWER, MODEL, Stack, open_stack

T = TypeVar("T")
HTTP = '[http]\nlisten = "127.0.0.1:0"\n'  # any free port: daemons in tests never collide
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
PNG = "iVBORw0KGgo="


# ================================================================ requests in (pure)


def test_openai_request_becomes_the_neutral_request() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                    {
                        "type": "file",
                        "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "They want weather.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "w", "arguments": '{"city":"Paris"}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "w", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rainy"}]},
            {"role": "assistant", "content": "Sunny in Paris."},
        ],
        "max_completion_tokens": 300,
        "max_tokens": 99,
        "temperature": 1.5,
        "top_p": 0.9,
        "stop": "END",
        "tools": [
            {"type": "function", "function": {"name": "w", "description": "weather", "parameters": WEATHER}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "w"}},
        "reasoning_effort": "low",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    parsed = oai.parse_chat_request(json.dumps(body).encode())
    assert (parsed.model, parsed.stream, parsed.include_usage) == ("m", True, True)
    assert parsed.request == ChatRequest(
        messages=[
            Message(
                "user",
                [
                    TextPart("Weather here?"),
                    ImagePart(media_type="image/png", data=PNG),
                    ImagePart(url="https://example.com/a.jpg"),
                    DocumentPart(media_type="application/pdf", data="JVBE", title="a.pdf"),
                ],
            ),
            Message(
                "assistant",
                [
                    ThinkingPart(text="They want weather."),
                    ToolCallPart("call_1", "w", {"city": "Paris"}),
                    ToolCallPart("call_2", "w", {}),
                ],
            ),
            Message(
                "user",
                [
                    ToolResultPart(tool_call_id="call_1", content="sunny"),
                    ToolResultPart(tool_call_id="call_2", content="rainy"),
                ],
            ),
            Message("assistant", "Sunny in Paris."),
        ],
        system="Be brief.\n\nUse tools.",
        max_tokens=300,  # max_completion_tokens wins over the deprecated max_tokens
        temperature=1.5,
        top_p=0.9,
        stop=["END"],
        tools=[Tool(name="w", description="weather", parameters=WEATHER)],
        tool_choice="w",
        thinking_budget=oai.THINKING_BUDGETS["low"],
    )


def test_openai_plain_request_defaults() -> None:
    parsed = oai.parse_chat_request(
        b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}'
    )
    assert (parsed.stream, parsed.include_usage) == (False, False)
    assert parsed.request == ChatRequest(messages=[Message("user", "hi")], max_tokens=5)


def _user(content: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role"),
        (_user(5), "messages[0].content"),
        (_user([{"type": "input_audio", "input_audio": {}}]), "messages[0].content[0].type"),
        (
            _user([{"type": "image_url", "image_url": {"url": "ftp://x"}}]),
            "messages[0].content[0].image_url.url",
        ),
        (_user([{"type": "file", "file": {"file_id": "file-1"}}]), "messages[0].content[0].file.file_data"),
        ({**_user("x"), "temperature": 3}, "temperature"),
        ({**_user("x"), "max_tokens": 0}, "max_tokens"),
        ({**_user("x"), "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**_user("x"), "n": 2}, "n"),
        ({**_user("x"), "tool_choice": "sometimes"}, "tool_choice"),
        (
            {**_user("x"), "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
        ({**_user("x"), "stream_options": {"include_usage": True}}, "stream_options"),
        (
            {**_user("x"), "tools": [{"type": "function", "function": {"description": "d"}}]},
            "tools[0].function.name",
        ),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}],
                    }
                ],
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"model": "m", "messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
    ],
)
def test_openai_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        oai.parse_chat_request(json.dumps(body).encode())
    assert info.value.param == param
    head, payload = _reply(oai.bad_request(info.value))
    assert head.status == 400
    assert payload["error"]["param"] == param and payload["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]"])
def test_undecodable_bodies_are_400s(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        oai.parse_chat_request(raw)
    with pytest.raises(BadRequest):
        ant.parse_messages_request(raw)


def test_anthropic_request_becomes_the_neutral_request() -> None:
    body = {
        "model": "claude",
        "max_tokens": 4096,
        "system": [
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Use tools."},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                        "title": "a",
                    },
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "They want weather.", "signature": "sig1"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [
                            {"type": "text", "text": "sunny"},
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                            },
                        ],
                        "is_error": False,
                    },
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": True},
                ],
            },
            {"role": "assistant", "content": "Sunny"},
        ],
        "temperature": 0.5,
        "stop_sequences": ["END"],
        "tools": [{"name": "w", "description": "weather", "input_schema": WEATHER}],
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "metadata": {"user_id": "u"},
    }
    parsed = ant.parse_messages_request(json.dumps(body).encode())
    assert (parsed.model, parsed.stream) == ("claude", False)
    assert parsed.request == ChatRequest(
        messages=[
            Message(
                "user",
                [
                    TextPart("Weather here?"),
                    ImagePart(media_type="image/png", data=PNG),
                    ImagePart(url="https://example.com/a.jpg"),
                    DocumentPart(media_type="application/pdf", data="JVBE", title="a"),
                    TextPart("notes"),
                ],
            ),
            Message(
                "assistant",
                [
                    ThinkingPart(text="They want weather.", signature="sig1"),
                    TextPart("Checking."),
                    ToolCallPart("toolu_1", "w", {"city": "Paris"}),
                ],
            ),
            Message(
                "user",
                [
                    ToolResultPart(  # its blocks kept, the image inside the result
                        tool_call_id="toolu_1",
                        content=[TextPart("sunny"), ImagePart(media_type="image/png", data=PNG)],
                    ),
                    ToolResultPart(tool_call_id="toolu_2", content="boom", is_error=True),
                ],
            ),
            Message("assistant", "Sunny"),  # a final assistant turn: the client's prefill
        ],
        system=[TextPart("Be brief.", cache="5m"), TextPart("Use tools.")],  # blocks: one has a breakpoint
        max_tokens=4096,
        temperature=0.5,
        stop=["END"],
        tools=[Tool(name="w", description="weather", parameters=WEATHER)],
        tool_choice="auto",
        thinking_budget=2048,
        session="u",  # metadata.user_id names the conversation, for session affinity
        metadata={"user_id": "u"},  # and travels on to Anthropic members
    )


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "any"}, "required"), ({"type": "none"}, "none"), ({"type": "tool", "name": "w"}, "w")],
)
def test_anthropic_tool_choice(choice: dict[str, Any], expected: str) -> None:
    body = {**_claude("x"), "tools": [{"name": "w", "input_schema": WEATHER}], "tool_choice": choice}
    assert ant.parse_messages_request(json.dumps(body).encode()).request.tool_choice == expected


def _claude(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": content}], **extra}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (_claude("x", max_tokens=0), "max_tokens"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].role",
        ),
        (_claude([{"type": "audio", "data": "x"}]), "messages[0].content[0].type"),
        (
            _claude([{"type": "image", "source": {"type": "file", "file_id": "f"}}]),
            "messages[0].content[0].source.type",
        ),
        (_claude([{"type": "tool_use", "id": "t", "name": "n", "input": {}}]), "messages[0].content[0].type"),
        (_claude([{"type": "tool_result"}]), "messages[0].content[0].tool_use_id"),
        (_claude("x", temperature=1.5), "temperature"),
        (_claude("x", tools=[{"type": "web_search_20250305"}]), "tools[0].name"),  # a server tool
        (_claude("x", tools=[{"name": "w"}]), "tools[0].input_schema"),
        (_claude("x", tools=[{"name": "w", "input_schema": []}]), "tools[0].input_schema"),
        (_claude("x", tool_choice={"type": "tool"}), "tool_choice.name"),
        (_claude("x", thinking={"type": "enabled"}), "thinking.budget_tokens"),
        (_claude("x", thinking={"type": "enabled", "budget_tokens": 100}), "thinking.budget_tokens"),
        (_claude("x", thinking={"type": "enabled", "budget_tokens": 2048}), "thinking.budget_tokens"),
    ],
)
def test_anthropic_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        ant.parse_messages_request(json.dumps(body).encode())
    assert info.value.param == param
    head, payload = _reply(ant.bad_request(info.value))
    assert head.status == 400 and payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error" and param in payload["error"]["message"]


# ================================================================ responses out (pure)


def _reply(out: list[Out]) -> tuple[Head, Any]:
    head, body = out
    assert isinstance(head, Head) and isinstance(body, bytes)
    assert dict(head.headers)["content-length"] == str(len(body))
    return head, json.loads(body)


def _feed(responder: Responder, events: list[StreamEvent]) -> tuple[Head | None, bytes]:
    head: Head | None = None
    body = b""
    for e in events:
        for item in responder.feed(e):
            if isinstance(item, Head):
                assert head is None, "two heads"
                head = item
            else:
                body += item
    return head, body


def _sse(body: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) per SSE event; comments come out as ("#", text)."""
    out: list[tuple[str | None, str]] = []
    for block in body.decode().split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith(": "):
                out.append(("#", line[2:]))
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            out.append((name, "\n".join(data)))
    return out


PROVIDER = ProviderEvent(provider="first", model="sim-1")
CALL = ToolCallEvent("call_9", "w", {"city": "Paris"})
DONE = DoneEvent(
    provider="second", model="sim-2", finish_reason="tool_calls", usage=Usage(input_tokens=7, output_tokens=5)
)
CUT = ErrorEvent(kind="truncated", message="cut and nobody could continue")


def test_openai_stream_holds_its_head_until_a_provider_serves() -> None:
    r = oai.ChunkResponder("chatcmpl-1", 1700000000, include_usage=True)
    assert r.feed(FailoverEvent(from_="first", to="second", reason="rate_limited", after_output=False)) == []
    assert not r.started
    head, body = _feed(
        r,
        [
            PROVIDER,
            ThinkingEvent("hmm"),
            TextEvent("Hel"),
            TextEvent("lo"),
            FailoverEvent(from_="first", to="second", reason="transient", after_output=True),
            ProviderEvent(provider="second", model="sim-2"),
            CALL,
            DONE,
        ],
    )
    assert head is not None and head.status == 200
    headers = dict(head.headers)
    assert headers["x-combined-models-provider"] == "first"
    assert headers["content-type"].startswith("text/event-stream") and "content-length" not in headers
    events = _sse(body)
    assert events[0] == ("#", "failover from first to second (rate_limited)")
    assert ("#", "failover from first to second (transient)") in events
    chunks = [json.loads(d) for name, d in events if name is None and d != "[DONE]"]
    assert events[-1] == (None, "[DONE]")
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert {"reasoning_content": "hmm"} in deltas
    assert "".join(d.get("content") or "" for d in deltas) == "Hello"
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert calls == [
        [
            {
                "index": 0,
                "id": "call_9",
                "type": "function",
                "function": {"name": "w", "arguments": '{"city": "Paris"}'},
            }
        ]
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 12
    assert chunks[0]["model"] == "sim-1" and chunks[-1]["model"] == "sim-2"  # who served, as it changed
    assert r.finished and r.feed(TextEvent("late")) == []


@pytest.mark.parametrize(
    ("event", "status", "retry_after"),
    [
        (ErrorEvent(kind="unknown_model", message="no"), 404, None),
        (ErrorEvent(kind="bad_request", message="first: bad temperature"), 400, None),
        (ErrorEvent(kind="all_providers_cooling", message="wait", retry_after_s=12.2), 429, "13"),
        (ErrorEvent(kind="all_providers_failed", message="all failed"), 502, None),
        (ErrorEvent(kind="truncated", message="cut"), 502, None),
    ],
)
def test_errors_before_output_are_http_errors_in_each_dialect(
    event: ErrorEvent, status: int, retry_after: str | None
) -> None:
    for responder in (
        oai.ChunkResponder("c", 1),
        oai.CompletionResponder("c", 1),
        ant.MessageStreamResponder("m"),
        ant.MessageResponder("m"),
    ):
        head, body = _reply(responder.feed(event))
        assert head.status == status
        assert dict(head.headers).get("retry-after") == retry_after
        assert responder.finished
        if isinstance(responder, oai.ChunkResponder | oai.CompletionResponder):
            assert body["error"]["message"] == event.message
        else:
            assert body["type"] == "error" and body["error"]["message"] == event.message


def test_a_cut_stream_ends_with_the_in_band_error_never_the_normal_end() -> None:
    _, body = _feed(oai.ChunkResponder("c", 1), [PROVIDER, TextEvent("Hel"), CUT])
    events = _sse(body)
    assert json.loads(events[-1][1]) == {
        "error": {"message": CUT.message, "type": "truncated", "param": None, "code": "truncated"}
    }
    assert b"[DONE]" not in body and b'finish_reason":"stop' not in body

    _, body = _feed(ant.MessageStreamResponder("m"), [PROVIDER, TextEvent("Hel"), CUT])
    name, data = _sse(body)[-1]
    assert name == "error" and json.loads(data)["error"] == {"type": "api_error", "message": CUT.message}
    assert b"message_stop" not in body and b"message_delta" not in body


def test_anthropic_stream_blocks() -> None:
    r = ant.MessageStreamResponder("msg_1")
    head, body = _feed(
        r,
        [
            PROVIDER,
            ThinkingEvent("Let me"),
            ThinkingEvent(" think.", signature="sig=="),
            TextEvent("Hel"),
            TextEvent("lo"),
            CALL,
            DONE,
        ],
    )
    assert head is not None and dict(head.headers)["x-combined-models-provider"] == "first"
    events = [(n, json.loads(d)) for n, d in _sse(body)]
    assert all(n == d["type"] for n, d in events)  # `event:` repeats the data's type
    names = [n for n, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0][1]["message"]["model"] == "sim-1" and events[0][1]["message"]["id"] == "msg_1"
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert deltas[2] == {"type": "signature_delta", "signature": "sig=="}
    assert [d["index"] for n, d in events if n == "content_block_start"] == [0, 1, 2]
    assert events[10][1]["content_block"] == {"type": "tool_use", "id": "call_9", "name": "w", "input": {}}
    assert json.loads(deltas[-1]["partial_json"]) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"]["output_tokens"] == 5


def test_whole_answers_in_each_dialect() -> None:
    events: list[StreamEvent] = [
        PROVIDER,
        ThinkingEvent("hmm", signature="s"),
        TextEvent("Hi "),
        TextEvent("there"),
        CALL,
        DONE,
    ]
    head, body = _reply(_feed_all(oai.CompletionResponder("chatcmpl-1", 5), events))
    assert dict(head.headers)["x-combined-models-provider"] == "second"  # the one that finished
    assert body["model"] == "sim-2" and body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Hi there" and choice["message"]["reasoning_content"] == "hmm"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "w", "arguments": '{"city": "Paris"}'}
    assert body["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 5,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 0},
    }

    head, body = _reply(_feed_all(ant.MessageResponder("msg_1"), events))
    assert body["model"] == "sim-2" and body["stop_reason"] == "tool_use"
    assert body["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "Hi there"},
        {"type": "tool_use", "id": "call_9", "name": "w", "input": {"city": "Paris"}},
    ]
    assert body["usage"]["input_tokens"] == 7 and body["usage"]["output_tokens"] == 5


def _feed_all(responder: Responder, events: list[StreamEvent]) -> list[Out]:
    out: list[Out] = []
    for e in events:
        out += responder.feed(e)
    return out


def test_a_cut_whole_answer_is_an_error_not_a_partial_answer() -> None:
    head, body = _reply(_feed_all(oai.CompletionResponder("c", 1), [PROVIDER, TextEvent("Hel"), CUT]))
    assert head.status == 502 and body["error"]["code"] == "truncated"


# ================================================================ config and token


def test_remote_listening_needs_an_explicit_opt_in() -> None:
    assert HttpConfig().listen.startswith("127.0.0.1:")
    with pytest.raises(ConfigError, match="allow_remote"):
        parse_config('[http]\nlisten = "0.0.0.0:4141"\n')
    with pytest.raises(ConfigError, match="allow_remote"):
        parse_config('[http]\nlisten = "192.168.1.5:4141"\n')
    assert parse_config('[http]\nlisten = "0.0.0.0:4141"\nallow_remote = true\n').http.allow_remote
    assert parse_config('[http]\nlisten = "[::1]:4141"\n').http.listen == "[::1]:4141"
    assert parse_config('[http]\nlisten = "localhost:4141"\n').http.listen == "localhost:4141"
    with pytest.raises(ConfigError, match="token"):
        parse_config('[http]\ntoken = ""\n')


def test_the_token_is_generated_once_kept_private_and_not_printed_without_a_daemon(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert not token_path().exists()
    token = load_token(HttpConfig())
    assert len(token) >= 40
    assert stat.S_IMODE(token_path().stat().st_mode) == 0o600
    assert load_token(HttpConfig()) == token  # kept, not regenerated
    assert load_token(HttpConfig(token="from-config")) == "from-config"
    with pytest.raises(SystemExit) as info:  # no daemon holds the port: no token handed out
        cmctl_main(["http-token", "--socket", str(token_path().with_name("none.sock"))])
    assert info.value.code == 3
    assert capsys.readouterr().out == ""


# ================================================================ end to end


@dataclass
class Front:
    stack: Stack
    url: str  # http://127.0.0.1:PORT
    token: str

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.token, max_retries=0, timeout=10)

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=self.token, max_retries=0, timeout=10)

    def http(self, **kw: Any) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {self.token}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10, trust_env=False, **kw)


@asynccontextmanager
async def open_front(short_dir: Path, extra: str = "", **options: Any) -> AsyncIterator[Front]:
    async with open_stack(short_dir, extra=HTTP + extra, **options) as st:
        gw = st.server.gateway
        assert gw is not None and gw.address
        yield Front(st, f"http://{gw.address}", gw.token)


async def in_thread(fn: Callable[[], T]) -> T:
    with trio.fail_after(15):
        return await trio.to_thread.run_sync(fn)


TOOLS_OAI: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
TOOLS_ANT: Any = [{"name": "get_weather", "description": "weather", "input_schema": WEATHER}]
HI: Any = [{"role": "user", "content": "hi"}]


async def test_openai_sdk_whole_streamed_and_tool_call(short_dir: Path) -> None:
    async with open_front(short_dir) as front:

        def run() -> dict[str, Any]:
            with front.openai() as client:
                raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HI)
                whole = raw.parse()
                with client.chat.completions.create(
                    model=MODEL, messages=HI, stream=True, stream_options={"include_usage": True}
                ) as stream:
                    chunks = list(stream)
                call = client.chat.completions.create(model=MODEL, messages=HI, tools=TOOLS_OAI)
                with client.chat.completions.stream(model=MODEL, messages=HI, tools=TOOLS_OAI) as s:
                    streamed_call = s.get_final_completion()
            return {
                "raw": raw,
                "whole": whole,
                "chunks": chunks,
                "call": call,
                "streamed_call": streamed_call,
            }

        got = await in_thread(run)
        assert got["raw"].headers["x-combined-models-provider"] == "first"
        whole = got["whole"]
        assert whole.model == MODEL and whole.choices[0].message.content == ANSWER
        assert whole.choices[0].finish_reason == "stop"
        assert whole.usage.completion_tokens == len(ANSWER.split())  # the serving provider's own count
        chunks = got["chunks"]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(ANSWER.split())
        for completion in (got["call"], got["streamed_call"]):
            choice = completion.choices[0]
            assert choice.finish_reason == "tool_calls"
            (tc,) = choice.message.tool_calls
            assert tc.function.name == "get_weather" and json.loads(tc.function.arguments) == {
                "city": "Paris"
            }


async def test_anthropic_sdk_whole_streamed_and_tool_call(short_dir: Path) -> None:
    async with open_front(short_dir) as front:

        def run() -> dict[str, Any]:
            with front.anthropic() as client:
                raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=200, messages=HI)
                whole = raw.parse()
                with client.messages.stream(model=MODEL, max_tokens=200, messages=HI) as s:
                    text = "".join(s.text_stream)
                    streamed = s.get_final_message()
                call = client.messages.create(model=MODEL, max_tokens=200, messages=HI, tools=TOOLS_ANT)
                with client.messages.stream(model=MODEL, max_tokens=200, messages=HI, tools=TOOLS_ANT) as s:
                    streamed_call = s.get_final_message()
                models = client.models.list()
            return locals()

        got = await in_thread(run)
        assert got["raw"].headers["x-combined-models-provider"] == "first"
        whole = got["whole"]
        assert whole.model == MODEL and whole.stop_reason == "end_turn"
        assert [b.text for b in whole.content if b.type == "text"] == [ANSWER]
        assert got["text"] == ANSWER and got["streamed"].usage.output_tokens == len(ANSWER.split())
        for message in (got["call"], got["streamed_call"]):
            assert message.stop_reason == "tool_use"
            (block,) = message.content
            assert (
                block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
            )
        assert [m.id for m in got["models"].data] == [MODEL]


async def test_a_reset_mid_stream_still_gives_each_sdk_one_complete_answer(short_dir: Path) -> None:
    async with open_front(short_dir) as front:
        first = front.stack.sims["first"]

        def run() -> tuple[str, str, str]:
            first.push_fault(Fault(kind="reset_after", after_chunks=3))
            with (
                front.openai() as client,
                client.chat.completions.create(model=MODEL, messages=HI, stream=True) as s,
            ):
                via_openai = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
            first.push_fault(Fault(kind="reset_after", after_chunks=3))
            with (
                front.anthropic() as client,
                client.messages.stream(model=MODEL, max_tokens=500, messages=HI) as s,
            ):
                via_anthropic = "".join(s.text_stream)
                final = s.get_final_message()
            return via_openai, via_anthropic, final.model

        via_openai, via_anthropic, model = await in_thread(run)
        assert via_openai == ANSWER and via_anthropic == ANSWER
        assert model == MODEL
        assert [r.outcome for r in first.requests] == ["reset", "reset"]
        assert front.stack.sims["second"].statistics().completed == 2

        # The raw stream notes the switch in an SSE comment, and still ends normally.
        first.push_fault(Fault(kind="reset_after", after_chunks=3))
        async with front.http() as http:
            body = {"model": MODEL, "messages": HI, "stream": True}
            r = await http.post("/v1/chat/completions", json=body)
        assert r.headers["x-combined-models-provider"] == "first"
        assert ": failover from first to second (transient)" in r.text
        assert r.text.endswith("data: [DONE]\n\n")


async def test_when_nothing_can_continue_the_stream_ends_with_the_dialects_error(short_dir: Path) -> None:
    async with open_front(short_dir) as front:
        front.stack.sims["second"].push_fault(Fault(kind="status", status=500, times=-1))
        async with front.http() as http:
            front.stack.sims["first"].push_fault(Fault(kind="reset_after", after_chunks=3))
            r = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "stream": True})
            assert r.status_code == 200
            events = _sse(r.content)
            assert json.loads(events[-1][1])["error"]["code"] == "truncated"
            assert "[DONE]" not in r.text

            front.stack.sims["first"].push_fault(Fault(kind="reset_after", after_chunks=3))
            body = {"model": MODEL, "max_tokens": 500, "messages": HI, "stream": True}
            r = await http.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
            name, data = _sse(r.content)[-1]
            assert name == "error" and json.loads(data)["type"] == "error"
            assert "message_stop" not in r.text


async def test_errors_before_output_have_meaningful_statuses(short_dir: Path) -> None:
    async with open_front(short_dir) as front, front.http() as http:
        r = await http.post("/v1/chat/completions", json={"model": "no-such", "messages": HI})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = await http.post(
            "/v1/messages", json={"model": "no-such", "max_tokens": 5, "messages": HI, "stream": True}
        )
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        r = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"
        r = await http.post("/v1/messages", json={"model": MODEL, "messages": HI})
        assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]

        for sim in front.stack.sims.values():
            sim.push_fault(Fault(kind="status", status=429, headers={"retry-after": "30"}))
        r = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "stream": True})
        assert r.status_code == 502 and r.json()["error"]["code"] == "all_providers_failed"
        r = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "stream": True})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert 28 <= int(r.headers["retry-after"]) <= 30


async def test_requests_need_the_token(short_dir: Path) -> None:
    async with open_front(short_dir) as front:
        async with httpx.AsyncClient(base_url=front.url, trust_env=False) as anon:
            r = await anon.post("/v1/chat/completions", json={"model": MODEL, "messages": HI})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
            r = await anon.get("/v1/models", headers={"authorization": "Bearer wrong"})
            assert r.status_code == 401
            r = await anon.post("/v1/messages", json={}, headers={"x-api-key": "wrong"})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            r = await anon.get("/v1/models", headers={"x-api-key": front.token})
            assert r.status_code == 200
            health = await anon.get("/health")  # a liveness probe needs no token, and shows no details
            assert health.status_code == 200 and health.json()["status"] == "ok"
            assert "status_info" not in health.json()
        assert front.stack.sims["first"].statistics().chat_requests == 0
        async with front.http() as http:
            health = await http.get("/health")
            assert health.json()["status_info"]["daemon"]["http"] == front.url.removeprefix("http://")


async def test_models_answer_in_the_callers_shape(short_dir: Path) -> None:
    async with open_front(short_dir) as front, front.http() as http:
        r = await http.get("/v1/models")
        assert r.json() == {
            "object": "list",
            "data": [
                {
                    "id": MODEL,
                    "object": "model",
                    "created": r.json()["data"][0]["created"],
                    "owned_by": "combined-models",
                }
            ],
        }
        r = await http.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
        body = r.json()
        assert body["data"][0]["type"] == "model" and body["data"][0]["id"] == MODEL
        assert (body["has_more"], body["first_id"], body["last_id"]) == (False, MODEL, MODEL)
        assert (await http.get(f"/v1/models/{MODEL}")).json()["id"] == MODEL
        assert (await http.get("/v1/models/nope")).status_code == 404
        assert (await http.delete("/v1/models")).status_code == 405
        assert (await http.get("/v2/everything")).status_code == 404


async def test_images_reach_the_upstream(short_dir: Path) -> None:
    async with open_front(short_dir) as front, front.http() as http:
        image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}],
        }
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
        body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": [block]}]}
        assert (await http.post("/v1/messages", json=body)).status_code == 200
        for recorded in front.stack.sims["first"].requests:
            parts = recorded.body["messages"][-1]["content"]
            assert {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}} in parts


async def test_keep_alive_serves_several_requests_on_one_connection(short_dir: Path) -> None:
    async with open_front(short_dir) as front:
        host, port = front.url.removeprefix("http://").rsplit(":", 1)

        def two_requests() -> list[bytes]:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                bodies = []
                for _ in range(2):
                    s.sendall(
                        f"GET /v1/models HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {front.token}\r\n\r\n".encode()
                    )
                    bodies.append(_read_response(s))
                return bodies

        bodies = await in_thread(two_requests)
        assert [json.loads(b)["data"][0]["id"] for b in bodies] == [MODEL, MODEL]


def _read_response(s: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(rest) < length:
        rest += s.recv(65536)
    return rest


async def test_two_hundred_concurrent_streams_complete(short_dir: Path) -> None:
    async with open_front(short_dir) as front:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        texts: list[str] = []
        async with front.http(limits=limits) as http:

            async def one() -> None:
                body = {"model": MODEL, "messages": HI, "stream": True}
                async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                    raw = b"".join([chunk async for chunk in r.aiter_bytes()])
                assert raw.endswith(b"data: [DONE]\n\n")
                chunks = [json.loads(d) for _, d in _sse(raw) if d != "[DONE]"]
                texts.append("".join(c["choices"][0]["delta"].get("content") or "" for c in chunks))

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    for _ in range(200):
                        nursery.start_soon(one)
        assert texts == [ANSWER] * 200
        assert front.stack.server.active == 0


async def test_a_client_dropping_its_connection_cancels_the_upstream_request(short_dir: Path) -> None:
    async with open_front(short_dir) as front:
        first = front.stack.sims["first"]
        # The upstream goes quiet mid-answer, so no write can notice the dead client: the reader must.
        first.push_fault(Fault(kind="stall_after", after_chunks=3, seconds=0))
        host, port = front.url.removeprefix("http://").rsplit(":", 1)

        def read_a_little_then_vanish() -> bytes:
            body = json.dumps({"model": MODEL, "messages": HI, "stream": True}).encode()
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                    + f"authorization: Bearer {front.token}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                seen = b""
                while seen.count(b"data: ") < 3:
                    seen += s.recv(65536)
                return seen

        seen = await in_thread(read_a_little_then_vanish)
        assert seen.startswith(b"HTTP/1.1 200")
        with trio.fail_after(2):
            await first.wait_disconnect(1)
        assert first.requests[-1].outcome == "disconnected"
        await trio.testing.wait_all_tasks_blocked(0.01)
        assert front.stack.server.active == 0
        async with front.stack.client() as c:
            status = {p.id: p for p in (await c.status()).providers}
        assert status["first"].in_flight == 0 and status["first"].failures == 0


async def test_a_taken_port_leaves_the_socket_serving(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        caplog.set_level(logging.WARNING, "combined_models.gateway")
        async with open_stack(short_dir, extra=f'[http]\nlisten = "127.0.0.1:{port}"\n') as st:
            assert st.server.http_address == ""
            assert any("cannot listen" in r.getMessage() for r in caplog.records)
            async with st.client() as c:
                assert (await c.status()).daemon.http == ""
            events = await st.ask()
            assert isinstance(events[-1], DoneEvent)


async def test_status_and_opencode_config_show_the_front_door(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with open_front(short_dir) as front:
        async with front.stack.client() as c:
            assert (await c.status()).daemon.http == front.url.removeprefix("http://")

        def opencode() -> int | str | None:
            try:
                cmctl_main(["opencode-config", "--socket", str(front.stack.socket)])
            except SystemExit as e:
                return e.code
            return None

        assert await in_thread(opencode) == 0
        block = json.loads(capsys.readouterr().out)["provider"]["combined-models"]

        def http_token() -> int | str | None:
            try:
                cmctl_main(["http-token", "--socket", str(front.stack.socket)])
            except SystemExit as e:
                return e.code
            return None

        assert await in_thread(http_token) == 0
        assert capsys.readouterr().out.strip() == front.token
        assert block["npm"] == "@ai-sdk/openai-compatible"
        assert block["options"] == {"baseURL": f"{front.url}/v1", "apiKey": front.token}
        assert block["models"] == {MODEL: {"name": MODEL}}


async def test_the_front_door_can_be_turned_off(short_dir: Path) -> None:
    async with open_stack(short_dir, extra="[http]\nenabled = false\n") as st:
        assert st.server.gateway is None and st.server.http_address == ""
        assert not token_path().exists()  # nothing generated for a door that stays shut
        assert msgspec.to_builtins((await _status(st)).daemon)["http"] == ""


async def _status(st: Stack) -> Any:
    async with st.client() as c:
        return await c.status()


async def test_a_stream_under_way_finishes_when_the_daemon_stops(short_dir: Path) -> None:
    async with open_front(short_dir, chunk_delay=0.01) as front, front.http() as http:
        body = {"model": MODEL, "messages": HI, "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            chunks = r.aiter_bytes()
            raw = await chunks.__anext__()
            front.stack.server.request_stop()  # in-flight answers get the grace period
            raw += b"".join([c async for c in chunks])
        assert raw.endswith(b"data: [DONE]\n\n")
        assert (
            "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for _, d in _sse(raw)[:-1])
            == ANSWER
        )


async def test_an_oversized_body_is_refused_before_it_is_read(short_dir: Path) -> None:
    async with open_front(short_dir) as front:
        host, port = front.url.removeprefix("http://").rsplit(":", 1)

        def send_huge_header() -> bytes:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 99999999999\r\n\r\n"
                )
                return s.recv(65536)

        reply = await in_thread(send_huge_header)
        assert reply.startswith(b"HTTP/1.1 413 ")

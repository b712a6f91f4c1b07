"""Every dialect over real loopback sockets: the same fault scripts in each dialect's own bytes,
checked with httpx, the official anthropic and openai SDKs, and botocore's own client and parsers.

Real clock on purpose: waits on real sockets under MockClock would jump the clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anthropic
import botocore.config
import botocore.exceptions
import botocore.session
import httpx
import openai
import pytest
import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from combined_models.simulator import Fault, Simulator, open_simulator

T = TypeVar("T")

TEXT = "Alpha beta gamma delta epsilon zeta."
WORDS = ["Alpha", " beta", " gamma", " delta", " epsilon", " zeta."]
THINK = "Weigh it up."
DIALECTS = ["openai", "openrouter", "anthropic", "bedrock", "gemini", "copilot"]
# Building a TLS context costs ~50 ms per client; these are plain-HTTP loopback clients, so share one.
TLS = httpx.create_ssl_context()


def http(**kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=TLS, timeout=kw.pop("timeout", 5.0), **kw)


@dataclass
class Parsed:
    """What a client would make of a stream, whatever the dialect."""

    texts: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    signature: str | None = None
    order: list[str] = field(default_factory=list)  # kinds of content in arrival order, repeats folded
    tool_name: str | None = None
    tool_args: str = ""
    stopped: bool = False  # the finish signal (finish_reason, stop_reason, messageStop, finishReason)
    done: bool = False  # the end marker ([DONE], message_stop, metadata; EOF for gemini)
    error: str | None = None  # the in-band error's type
    malformed: bool = False
    events: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.stopped and self.done

    def saw(self, kind: str) -> None:
        if not self.order or self.order[-1] != kind:
            self.order.append(kind)


def sse_events(raw: bytes) -> list[list[tuple[str, str]]]:
    """Complete SSE events as (field, value) lines; comments dropped, a partial tail ignored."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n")[:-1]:
        lines = [line.decode() for line in block.split(b"\n") if line and not line.startswith(b":")]
        out.append([(f, v.removeprefix(" ")) for f, _, v in (line.partition(":") for line in lines)])
    return [e for e in out if e]


def data_of(event: list[tuple[str, str]], parsed: Parsed) -> Any:
    data = "\n".join(v for f, v in event if f == "data")
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        parsed.malformed = True
        return None


class Wire:
    """How one dialect asks for a chat and how its answers read."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def prepare(self, client: httpx.AsyncClient) -> None:
        pass

    def path(self, stream: bool) -> str:
        return "/chat/completions"

    def headers(self) -> dict[str, str]:
        return {"authorization": "Bearer key"}

    def body(self, messages: list[tuple[str, str]], stream: bool, tools: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": "sim-model",
            "messages": [{"role": r, "content": t} for r, t in messages],
            "stream": stream,
        }
        if tools:
            body["tools"] = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
        return body

    def parse(self, raw: bytes) -> Parsed:
        p = Parsed()
        for event in sse_events(raw):
            data = "\n".join(v for f, v in event if f == "data")
            if data == "[DONE]":
                p.done = True
                continue
            chunk = data_of(event, p)
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                p.error = chunk["error"].get("type") or chunk["error"].get("code")
            for choice in chunk.get("choices", []):
                delta = choice.get("delta", {})
                if delta.get("reasoning_content"):
                    p.thinking.append(delta["reasoning_content"])
                    p.saw("thinking")
                if delta.get("content"):
                    p.texts.append(delta["content"])
                    p.saw("text")
                for call in delta.get("tool_calls", []):
                    p.saw("tool")
                    p.tool_name = p.tool_name or call["function"].get("name")
                    p.tool_args += call["function"].get("arguments", "")
                p.stopped |= choice.get("finish_reason") not in (None, "error")
        return p

    def completion_text(self, body: Any) -> str:
        return str(body["choices"][0]["message"]["content"])

    def error_type(self, r: httpx.Response) -> str:
        return str(r.json()["error"]["type"])

    def error_message(self, r: httpx.Response) -> str:
        return str(r.json()["error"]["message"])


class OpenRouterWire(Wire):
    def error_type(self, r: httpx.Response) -> str:
        return str(r.json()["error"]["code"])


class CopilotWire(Wire):
    token = ""

    async def prepare(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/copilot_internal/v2/token", headers={"authorization": "token gho_test"})
        self.token = r.json()["token"]

    def headers(self) -> dict[str, str]:
        return {
            "authorization": f"Bearer {self.token}",
            "editor-version": "vscode/1.95.0",
            "copilot-integration-id": "vscode-chat",
        }

    def error_type(self, r: httpx.Response) -> str:
        return str(r.json()["error"]["code"])


class AnthropicWire(Wire):
    def path(self, stream: bool) -> str:
        return "/v1/messages"

    def headers(self) -> dict[str, str]:
        return {"x-api-key": "key", "anthropic-version": "2023-06-01"}

    def body(self, messages: list[tuple[str, str]], stream: bool, tools: bool = False) -> dict[str, Any]:
        body = super().body(messages, stream) | {"max_tokens": 1000}
        if tools:
            body["tools"] = [{"name": "get_weather", "input_schema": {"type": "object"}}]
        return body

    def parse(self, raw: bytes) -> Parsed:
        p = Parsed()
        for event in sse_events(raw):
            name = next((v for f, v in event if f == "event"), "")
            p.events.append(name)
            data = data_of(event, p)
            if not isinstance(data, dict):
                continue
            assert data["type"] == name  # the event line repeats the payload's type
            delta = data.get("delta", {})
            match name, delta.get("type"):
                case "error", _:
                    p.error = data["error"]["type"]
                case "content_block_start", _ if data["content_block"]["type"] == "tool_use":
                    p.tool_name = data["content_block"]["name"]
                    p.saw("tool")
                case "content_block_delta", "text_delta":
                    p.texts.append(delta["text"])
                    p.saw("text")
                case "content_block_delta", "thinking_delta":
                    p.thinking.append(delta["thinking"])
                    p.saw("thinking")
                case "content_block_delta", "signature_delta":
                    p.signature = delta["signature"]
                case "content_block_delta", "input_json_delta":
                    p.tool_args += delta["partial_json"]
                case "message_delta", _:
                    p.stopped = delta.get("stop_reason") is not None
                case "message_stop", _:
                    p.done = True
        return p

    def completion_text(self, body: Any) -> str:
        return "".join(b["text"] for b in body["content"] if b["type"] == "text")

    def error_type(self, r: httpx.Response) -> str:
        body = r.json()
        assert body["type"] == "error" and body["request_id"] == r.headers["request-id"]
        return str(body["error"]["type"])


class BedrockWire(Wire):
    model = "sim-model"

    def path(self, stream: bool) -> str:
        return f"/model/{self.model}/{'converse-stream' if stream else 'converse'}"

    def body(self, messages: list[tuple[str, str]], stream: bool, tools: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": [{"role": r, "content": [{"text": t}]} for r, t in messages]}
        if tools:
            spec = {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}
            body["toolConfig"] = {"tools": [{"toolSpec": spec}]}
        return body

    def parse(self, raw: bytes) -> Parsed:
        p = Parsed()
        buf = EventStreamBuffer()
        buf.add_data(raw)
        try:
            for message in buf:
                headers = message.headers
                if headers[":message-type"] == "exception":
                    p.error = headers[":exception-type"]
                    continue
                name, payload = headers[":event-type"], json.loads(message.payload)
                p.events.append(name)
                assert "p" in payload  # padding, as in real traffic
                delta = payload.get("delta", {})
                if name == "contentBlockStart":
                    p.tool_name = payload["start"]["toolUse"]["name"]
                    p.saw("tool")
                elif "text" in delta:
                    p.texts.append(delta["text"])
                    p.saw("text")
                elif "reasoningContent" in delta and "text" in delta["reasoningContent"]:
                    p.thinking.append(delta["reasoningContent"]["text"])
                    p.saw("thinking")
                elif "reasoningContent" in delta:
                    p.signature = delta["reasoningContent"]["signature"]
                elif "toolUse" in delta:
                    p.tool_args += delta["toolUse"]["input"]
                p.stopped |= name == "messageStop"
                p.done |= name == "metadata" and p.stopped
        except ChecksumMismatch:
            p.malformed = True
        return p

    def completion_text(self, body: Any) -> str:
        return "".join(b.get("text", "") for b in body["output"]["message"]["content"])

    def error_type(self, r: httpx.Response) -> str:
        return r.headers["x-amzn-errortype"].split(":")[0]

    def error_message(self, r: httpx.Response) -> str:
        return str(r.json()["message"])


class GeminiWire(Wire):
    def path(self, stream: bool) -> str:
        return "/models/sim-model:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")

    def headers(self) -> dict[str, str]:
        return {"x-goog-api-key": "key"}

    def body(self, messages: list[tuple[str, str]], stream: bool, tools: bool = False) -> dict[str, Any]:
        contents = [{"role": "model" if r == "assistant" else r, "parts": [{"text": t}]} for r, t in messages]
        body: dict[str, Any] = {"contents": contents}
        if tools:
            body["tools"] = [{"functionDeclarations": [{"name": "get_weather"}]}]
        return body

    def parse(self, raw: bytes) -> Parsed:
        p = Parsed(done=True)  # no end marker: EOF after the finishReason chunk is the end
        for event in sse_events(raw):
            chunk = data_of(event, p)
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                p.error = chunk["error"]["status"]
                continue
            candidate = chunk["candidates"][0]
            for part in candidate["content"]["parts"]:
                if part.get("thought"):
                    p.thinking.append(part["text"])
                    p.saw("thinking")
                elif part.get("text"):
                    p.texts.append(part["text"])
                    p.saw("text")
                elif "functionCall" in part:
                    p.tool_name = part["functionCall"]["name"]
                    p.tool_args = json.dumps(part["functionCall"]["args"])
                    p.saw("tool")
            p.stopped |= "finishReason" in candidate
        return p

    def completion_text(self, body: Any) -> str:
        parts = body["candidates"][0]["content"]["parts"]
        return "".join(p["text"] for p in parts if not p.get("thought"))

    def error_type(self, r: httpx.Response) -> str:
        return str(r.json()["error"]["status"])


WIRES: dict[str, Callable[[Simulator], Wire]] = {
    "openai": Wire,
    "openrouter": OpenRouterWire,
    "copilot": CopilotWire,
    "anthropic": AnthropicWire,
    "bedrock": BedrockWire,
    "gemini": GeminiWire,
}


@dataclass
class Streamed:
    status: int = 0
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    raw: bytes = b""
    error: Exception | None = None
    headers_at: float = 0.0
    text_at: list[float] = field(default_factory=list)  # arrival time of each text piece
    parsed: Parsed = field(default_factory=Parsed)


class Conn:
    """A simulator of one dialect with an httpx client pointed at its base_url."""

    def __init__(self, sim: Simulator, client: httpx.AsyncClient, wire: Wire) -> None:
        self.sim, self.client, self.wire = sim, client, wire

    async def stream(self, messages: list[tuple[str, str]] | None = None, *, tools: bool = False) -> Streamed:
        """Stream a chat answer to the end, recording a transport error instead of raising."""
        wire, out = self.wire, Streamed()
        body = wire.body(messages or [("user", "hi there")], stream=True, tools=tools)
        t0 = trio.current_time()
        try:
            async with self.client.stream("POST", wire.path(True), json=body, headers=wire.headers()) as r:
                out.status, out.headers, out.headers_at = r.status_code, r.headers, trio.current_time() - t0
                async for data in r.aiter_raw():
                    out.raw += data
                    seen = len(wire.parse(out.raw).texts)
                    out.text_at += [trio.current_time() - t0] * (seen - len(out.text_at))
        except httpx.TransportError as e:
            out.error = e
        out.parsed = wire.parse(out.raw)
        return out

    async def post(
        self, messages: list[tuple[str, str]] | None = None, *, stream: bool = False
    ) -> httpx.Response:
        wire = self.wire
        body = wire.body(messages or [("user", "hi there")], stream=stream)
        return await self.client.post(wire.path(stream), json=body, headers=wire.headers())


@asynccontextmanager
async def connect(dialect: str, **options: Any) -> AsyncIterator[Conn]:
    async with (
        open_simulator(dialect=dialect, text=TEXT, **options) as sim,
        http(base_url=sim.base_url) as client,
    ):
        wire = WIRES[dialect](sim)
        await wire.prepare(client)
        yield Conn(sim, client, wire)


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


# Every dialect: normal answers


def test_base_urls_follow_each_sdk_convention() -> None:
    paths = {d: Simulator(dialect=d).base_url.removeprefix("http://127.0.0.1:0") for d in DIALECTS}
    assert paths == {
        "openai": "/v1",
        "openrouter": "/api/v1",
        "anthropic": "",
        "bedrock": "",
        "gemini": "/v1beta",
        "copilot": "",
    }


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_stream_completes_word_by_word(dialect: str) -> None:
    async with connect(dialect) as c:
        s = await c.stream()
    assert (s.status, s.error) == (200, None)
    assert s.parsed.texts == WORDS
    assert s.parsed.finished and s.parsed.error is None and not s.parsed.malformed
    assert c.sim.requests[0].outcome == "completed"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_non_streaming_answer(dialect: str) -> None:
    async with connect(dialect) as c:
        r = await c.post()
    assert r.status_code == 200
    assert c.wire.completion_text(r.json()) == TEXT


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_thinking_comes_first_in_each_dialects_form(dialect: str) -> None:
    async with connect(dialect, thinking=THINK) as c:
        s = await c.stream()
        tool = await c.stream(tools=True)
    assert "".join(s.parsed.thinking) == THINK
    assert s.parsed.order == ["thinking", "text"] and s.parsed.texts == WORDS and s.parsed.finished
    assert tool.parsed.order == ["thinking", "tool"]
    if dialect in ("anthropic", "bedrock"):  # the dialects that sign their thinking
        assert s.parsed.signature


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_tool_call_in_each_dialects_form(dialect: str) -> None:
    async with connect(dialect) as c:
        s = await c.stream(tools=True)
    assert s.parsed.tool_name == "get_weather"
    assert json.loads(s.parsed.tool_args) == {"city": "Paris"}
    assert s.parsed.texts == [] and s.parsed.finished


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        ("anthropic", WORDS[2:]),
        ("bedrock", WORDS[2:]),
        ("openai", WORDS[2:]),
        ("gemini", WORDS),  # no prefill: the trailing model turn is history
    ],
)
async def test_trailing_assistant_message(dialect: str, expected: list[str]) -> None:
    async with connect(dialect) as c:
        s = await c.stream([("user", "go"), ("assistant", "Alpha beta")])
    assert s.parsed.texts == expected


@pytest.mark.parametrize("dialect", ["anthropic", "bedrock"])
async def test_prefill_ending_in_whitespace_is_rejected_like_claude(dialect: str) -> None:
    async with connect(dialect) as c:
        r = await c.post([("user", "go"), ("assistant", "Alpha beta ")])
    assert r.status_code == 400
    assert c.wire.error_type(r) in ("invalid_request_error", "ValidationException")
    assert "final assistant content cannot end with trailing whitespace" in c.wire.error_message(r)


# Every dialect: every fault kind, in the dialect's own bytes

STATUS_TYPES = {
    (429, "openai"): "rate_limit_error",
    (429, "openrouter"): "429",
    (429, "anthropic"): "rate_limit_error",
    (429, "bedrock"): "ThrottlingException",
    (429, "gemini"): "RESOURCE_EXHAUSTED",
    (429, "copilot"): "rate_limited",
    (500, "openai"): "server_error",
    (500, "openrouter"): "500",
    (500, "anthropic"): "api_error",
    (500, "bedrock"): "InternalServerException",
    (500, "gemini"): "INTERNAL",
    (500, "copilot"): "server_error",
    (503, "bedrock"): "ServiceUnavailableException",
    (503, "gemini"): "UNAVAILABLE",
    (529, "anthropic"): "overloaded_error",
    (400, "anthropic"): "invalid_request_error",
    (400, "bedrock"): "ValidationException",
    (403, "bedrock"): "AccessDeniedException",
}


@pytest.mark.parametrize(("status", "dialect"), sorted(STATUS_TYPES))
async def test_status_fault_uses_the_dialects_envelope(status: int, dialect: str) -> None:
    async with connect(dialect) as c:
        c.sim.push_fault(Fault(kind="status", status=status))
        r = await c.post(stream=True)
    assert r.status_code == status
    assert c.wire.error_type(r) == STATUS_TYPES[status, dialect]
    assert c.sim.requests[0].outcome == "error"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_reset_before_headers(dialect: str) -> None:
    async with connect(dialect) as c:
        c.sim.push_fault(Fault(kind="reset_before_headers"))
        s = await c.stream()
    assert isinstance(s.error, httpx.TransportError) and s.status == 0
    assert c.sim.requests[0].outcome == "reset"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_reset_after_two_pieces(dialect: str) -> None:
    async with connect(dialect) as c:
        c.sim.push_fault(Fault(kind="reset_after", after_chunks=2))
        s = await c.stream()
    assert isinstance(s.error, httpx.ReadError)
    assert s.parsed.texts == WORDS[:2] and not s.parsed.stopped


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_stall_before_delays_the_headers(dialect: str) -> None:
    async with connect(dialect) as c:
        c.sim.push_fault(Fault(kind="stall_before", seconds=0.1))
        s = await c.stream()
    assert s.headers_at >= 0.1
    assert s.parsed.texts == WORDS and s.parsed.finished


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_stall_after_goes_silent_mid_stream(dialect: str) -> None:
    async with connect(dialect) as c:
        c.sim.push_fault(Fault(kind="stall_after", after_chunks=2, seconds=0.1))
        s = await c.stream()
    gaps = [later - earlier for earlier, later in zip(s.text_at, s.text_at[1:], strict=False)]
    assert gaps[1] >= 0.09 and gaps[1] == max(gaps)  # the silence falls after the second piece
    assert s.parsed.texts == WORDS and s.parsed.finished


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_slow_first_token_sends_headers_at_once(dialect: str) -> None:
    async with connect(dialect) as c:
        c.sim.push_fault(Fault(kind="slow_first_token", seconds=0.12))
        s = await c.stream()
    assert s.text_at[0] >= 0.12 and s.text_at[0] - s.headers_at >= 0.1
    assert s.parsed.texts == WORDS and s.parsed.finished


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_malformed_after_two_pieces(dialect: str) -> None:
    async with connect(dialect) as c:
        c.sim.push_fault(Fault(kind="malformed_after", after_chunks=2))
        s = await c.stream()
    assert s.error is None and s.headers["connection"] == "close"
    assert s.parsed.malformed and s.parsed.texts == WORDS[:2] and not s.parsed.stopped
    assert c.sim.requests[0].outcome == "malformed"


INBAND_TYPES = {
    "openai": "server_error",
    "openrouter": "server_error",
    "copilot": "server_error",
    "anthropic": "overloaded_error",
    "bedrock": "throttlingException",
    "gemini": "UNAVAILABLE",
}


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_inband_error_after_two_pieces(dialect: str) -> None:
    async with connect(dialect) as c:
        c.sim.push_fault(Fault(kind="inband_error_after", after_chunks=2))
        s = await c.stream()
    assert s.status == 200 and s.error is None
    assert s.parsed.error == INBAND_TYPES[dialect]
    assert s.parsed.texts == WORDS[:2] and not s.parsed.finished
    assert c.sim.requests[0].outcome == "inband_error"


@pytest.mark.parametrize(
    ("dialect", "code"),
    [("bedrock", "modelStreamErrorException"), ("anthropic", "api_error"), ("gemini", "INTERNAL")],
)
async def test_inband_error_code_picks_the_type(dialect: str, code: str) -> None:
    async with connect(dialect) as c:
        c.sim.push_fault(Fault(kind="inband_error_after", after_chunks=1, code=code))
        s = await c.stream()
    assert s.parsed.error == code


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_no_terminator_ends_cleanly_without_the_finish_signal(dialect: str) -> None:
    async with connect(dialect) as c:
        c.sim.push_fault(Fault(kind="no_terminator", after_chunks=3))
        s = await c.stream()
        again = await c.stream()  # the connection stays usable
    assert s.error is None and s.parsed.error is None and not s.parsed.malformed
    assert s.parsed.texts == WORDS[:3] and not s.parsed.stopped and not s.parsed.finished
    assert again.parsed.finished
    assert [r.outcome for r in c.sim.requests] == ["truncated", "completed"]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_reject_prefill_in_the_dialects_envelope(dialect: str) -> None:
    async with connect(dialect) as c:
        c.sim.push_fault(Fault(kind="reject_prefill", times=-1))
        rejected = await c.post([("user", "go"), ("assistant", "Alpha")])
        plain = await c.post()
    assert rejected.status_code == 400
    assert "does not support assistant message prefill" in c.wire.error_message(rejected)
    assert plain.status_code == 200


@pytest.mark.parametrize("dialect", ["anthropic", "bedrock", "gemini"])
async def test_stream_fault_on_a_one_shot_request_resets(dialect: str) -> None:
    async with connect(dialect) as c:
        c.sim.push_fault(Fault(kind="no_terminator", after_chunks=1))
        with pytest.raises(httpx.TransportError):
            await c.post()


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_conversation_is_recorded(dialect: str) -> None:
    async with connect(dialect) as c:
        await c.post([("user", "one"), ("assistant", "two"), ("user", "three")])
    assert c.sim.requests[0].conversation == {
        "system": None,
        "messages": [
            {"role": "user", "parts": [{"type": "text", "text": "one"}]},
            {"role": "assistant", "parts": [{"type": "text", "text": "two"}]},
            {"role": "user", "parts": [{"type": "text", "text": "three"}]},
        ],
    }


# Anthropic, through the official SDK


def anthropic_client(sim: Simulator, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=sim.base_url, api_key=kw.pop("api_key", "key"), max_retries=0, timeout=5.0
    )


async def test_anthropic_sdk_streams_thinking_then_text() -> None:
    async with open_simulator(dialect="anthropic", models=["claude-x"], text=TEXT, thinking=THINK) as sim:

        def go() -> tuple[anthropic.types.Message, list[str]]:
            with (
                anthropic_client(sim) as client,
                client.messages.stream(
                    model="claude-x", max_tokens=1000, messages=[{"role": "user", "content": "hi"}]
                ) as stream,
            ):
                kinds: list[str] = [e.type for e in stream]
                return stream.get_final_message(), kinds

        message, kinds = await in_thread(go)
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == THINK and thinking.signature
    assert text.type == "text" and text.text == TEXT
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == len(WORDS) + 3  # cumulative, thinking included
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"


async def test_anthropic_sdk_sees_a_tool_call_then_text_after_the_result() -> None:
    tools: list[Any] = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    async with open_simulator(dialect="anthropic", text=TEXT) as sim:

        def go() -> tuple[anthropic.types.Message, anthropic.types.Message]:
            messages: list[Any] = [{"role": "user", "content": "weather?"}]
            with anthropic_client(sim) as client:
                with client.messages.stream(
                    model="sim-model", max_tokens=99, messages=messages, tools=tools
                ) as s:
                    first = s.get_final_message()
                call = first.content[0]
                assert call.type == "tool_use"
                messages += [
                    {
                        "role": "assistant",
                        "content": [call.model_dump(include={"type", "id", "name", "input"})],
                    },
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
                    },
                ]
                return first, client.messages.create(
                    model="sim-model", max_tokens=99, messages=messages, tools=tools
                )

        first, after = await in_thread(go)
    call = first.content[0]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    assert call.id.startswith("toolu_") and first.stop_reason == "tool_use"
    assert after.content[0].type == "text" and after.content[0].text == TEXT
    assert sim.requests[1].conversation is not None
    assert sim.requests[1].conversation["messages"][-1]["parts"] == [
        {"type": "tool_result", "id": call.id, "content": "sunny"}
    ]


async def test_anthropic_sdk_prefill_gets_only_the_continuation() -> None:
    async with open_simulator(dialect="anthropic", text=TEXT) as sim:

        def go() -> anthropic.types.Message:
            with anthropic_client(sim) as client:
                return client.messages.create(
                    model="sim-model",
                    max_tokens=99,
                    messages=[
                        {"role": "user", "content": "go"},
                        {"role": "assistant", "content": "Alpha beta"},
                    ],
                )

        message = await in_thread(go)
    assert message.content[0].type == "text" and message.content[0].text == " gamma delta epsilon zeta."


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        (Fault(kind="status", status=529), anthropic.OverloadedError),
        (Fault(kind="status", status=500), anthropic.InternalServerError),
        (
            Fault(kind="status", status=400, code="billing_error", message="credit balance is too low"),
            anthropic.BadRequestError,
        ),
    ],
)
async def test_anthropic_sdk_error_classes(fault: Fault, error_class: type[anthropic.APIStatusError]) -> None:
    async with open_simulator(dialect="anthropic") as sim:
        sim.push_fault(fault)

        def go() -> anthropic.APIStatusError:
            with anthropic_client(sim) as client, pytest.raises(anthropic.APIStatusError) as info:
                client.messages.create(
                    model="sim-model", max_tokens=9, messages=[{"role": "user", "content": "x"}]
                )
            return info.value

        err = await in_thread(go)
    assert type(err) is error_class
    assert err.request_id == sim.requests[0].request_id
    if fault.code:
        assert err.body == {
            "type": "error",
            "error": {"type": "billing_error", "message": "credit balance is too low"},
            "request_id": sim.requests[0].request_id,
        }


async def test_anthropic_sdk_rate_limit_error_carries_the_faults_headers() -> None:
    headers = {"retry-after": "7", "anthropic-ratelimit-requests-reset": "2025-08-21T12:40:59Z"}
    async with open_simulator(dialect="anthropic") as sim:
        sim.push_fault(Fault(kind="status", status=429, headers=headers))

        def go() -> anthropic.RateLimitError:
            with anthropic_client(sim) as client, pytest.raises(anthropic.RateLimitError) as info:
                client.messages.create(
                    model="sim-model", max_tokens=9, messages=[{"role": "user", "content": "x"}]
                )
            return info.value

        err = await in_thread(go)
    assert err.response.headers["retry-after"] == "7"
    assert err.response.headers["anthropic-ratelimit-requests-reset"] == "2025-08-21T12:40:59Z"
    assert isinstance(err.body, dict) and err.body["error"]["type"] == "rate_limit_error"


async def test_anthropic_sdk_raises_a_generic_status_error_on_an_inband_error() -> None:
    async with open_simulator(dialect="anthropic", text=TEXT) as sim:
        sim.push_fault(Fault(kind="inband_error_after", after_chunks=2))

        def go() -> tuple[list[str], anthropic.APIStatusError]:
            got: list[str] = []
            messages: list[Any] = [{"role": "user", "content": "x"}]
            with (
                anthropic_client(sim) as client,
                pytest.raises(anthropic.APIStatusError) as info,
                client.messages.stream(model="sim-model", max_tokens=99, messages=messages) as stream,
            ):
                got.extend(stream.text_stream)
            return got, info.value

        got, err = await in_thread(go)
    assert got == WORDS[:2]
    # The SDK picks the class by HTTP status, which is 200: not OverloadedError.
    assert not isinstance(err, anthropic.OverloadedError) and err.status_code == 200
    assert isinstance(err.body, dict) and err.body["error"] == {
        "type": "overloaded_error",
        "message": "Overloaded",
    }


async def test_anthropic_sdk_lists_models_across_pages() -> None:
    models = ["m1", "m2", "m3", "m4", "m5"]
    async with open_simulator(dialect="anthropic", models=models) as sim:

        def go() -> list[str]:
            with anthropic_client(sim) as client:
                return [m.id for m in client.models.list(limit=2)]

        ids = await in_thread(go)
        async with http(base_url=sim.base_url, headers=AnthropicWire(sim).headers()) as c:
            first = (await c.get("/v1/models", params={"limit": 2})).json()
            last = (await c.get("/v1/models", params={"limit": 2, "after_id": "m4"})).json()
            back = (await c.get("/v1/models", params={"limit": 2, "before_id": "m3"})).json()
    assert ids == models
    assert (first["first_id"], first["last_id"], first["has_more"]) == ("m1", "m2", True)
    assert ([m["id"] for m in last["data"]], last["has_more"]) == (["m5"], False)
    assert [m["id"] for m in back["data"]] == ["m1", "m2"]
    assert first["data"][0]["type"] == "model" and first["data"][0]["created_at"].endswith("Z")
    assert sim.statistics().endpoint_requests == {"models": 6}


@pytest.mark.parametrize(
    ("headers", "status", "etype"),
    [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": "wrong", "anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": "right"}, 400, "invalid_request_error"),
        ({"x-api-key": "right", "anthropic-version": "2023-06-01"}, 200, None),
    ],
)
async def test_anthropic_requires_key_and_version(
    headers: dict[str, str], status: int, etype: str | None
) -> None:
    async with (
        open_simulator(dialect="anthropic", api_key="right") as sim,
        http(base_url=sim.base_url) as c,
    ):
        body = {"model": "sim-model", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]}
        r = await c.post("/v1/messages", json=body, headers=headers)
        models = await c.get("/v1/models", headers=headers)
    assert (r.status_code, models.status_code) == (status, status)
    if etype:
        assert r.json()["error"]["type"] == etype


async def test_anthropic_stream_pings_while_the_first_token_is_slow() -> None:
    async with connect("anthropic") as c:
        c.sim.push_fault(Fault(kind="slow_first_token", seconds=0.6))
        s = await c.stream()
    events = s.parsed.events
    assert events[0] == "message_start"
    assert events[: events.index("content_block_start")].count("ping") >= 2
    assert events[-2:] == ["message_delta", "message_stop"]


# Bedrock, through botocore's own client (SigV4, event-stream parsing, errors)

MODEL = "anthropic.claude-x-v1:0"
USER = [{"role": "user", "content": [{"text": "weather?"}]}]
TOOLS = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]}


@contextmanager
def boto_client(sim: Simulator, service: str = "bedrock-runtime", secret: str = "SECRET") -> Iterator[Any]:
    """botocore's own client for `service`, pointed at the simulator, closed on exit."""
    client = botocore.session.get_session().create_client(
        service,
        region_name="us-east-1",
        endpoint_url=sim.base_url,
        aws_access_key_id="AKID",
        aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )
    with closing(client):
        yield client


def events(client: Any, model: str = MODEL, **kw: Any) -> Iterator[dict[str, Any]]:
    """ConverseStream events; the stream is closed even when parsing it fails."""
    with closing(client.converse_stream(modelId=model, messages=USER, **kw)["stream"]) as stream:
        yield from stream


async def test_botocore_client_streams_through_a_verified_signature() -> None:
    async with open_simulator(
        dialect="bedrock", models=[MODEL], text=TEXT, thinking=THINK, aws_secret="SECRET"
    ) as sim:

        def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            with boto_client(sim) as client:
                return list(events(client, f"us.{MODEL}")), list(
                    events(client, f"global.{MODEL}", toolConfig=TOOLS)
                )

        text_events, tool_events = await in_thread(go)
    assert [next(iter(e)) for e in text_events[:1] + text_events[-2:]] == [
        "messageStart",
        "messageStop",
        "metadata",
    ]
    deltas = [e["contentBlockDelta"]["delta"] for e in text_events if "contentBlockDelta" in e]
    assert "".join(d["reasoningContent"].get("text", "") for d in deltas if "reasoningContent" in d) == THINK
    assert deltas[3] == {"reasoningContent": {"signature": deltas[3]["reasoningContent"]["signature"]}}
    assert "".join(d.get("text", "") for d in deltas) == TEXT
    assert text_events[-1]["metadata"]["usage"]["outputTokens"] == len(WORDS) + 3
    start = next(e["contentBlockStart"] for e in tool_events if "contentBlockStart" in e)
    assert start["start"]["toolUse"]["name"] == "get_weather"
    fragments = [
        e["contentBlockDelta"]["delta"]["toolUse"]["input"]
        for e in tool_events
        if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {})
    ]
    assert len(fragments) == 2 and json.loads("".join(fragments)) == {"city": "Paris"}
    assert tool_events[-2] == {"messageStop": {"stopReason": "tool_use"}}
    # The model id was percent-encoded in the path and decoded by the simulator.
    assert sim.requests[0].path == f"/model/us.{MODEL.replace(':', '%3A')}/converse-stream"


async def test_botocore_converse_and_a_wrong_secret() -> None:
    async with open_simulator(dialect="bedrock", models=[MODEL], text=TEXT, aws_secret="SECRET") as sim:

        def go() -> tuple[dict[str, Any], botocore.exceptions.ClientError]:
            with boto_client(sim) as client, boto_client(sim, secret="WRONG") as wrong:
                answer = client.converse(modelId=MODEL, messages=USER)
                with pytest.raises(botocore.exceptions.ClientError) as info:
                    wrong.converse(modelId=MODEL, messages=USER)
            return answer, info.value

        answer, err = await in_thread(go)
    assert answer["output"]["message"]["content"] == [{"text": TEXT}]
    assert answer["stopReason"] == "end_turn" and answer["usage"]["inputTokens"] == 1
    assert err.response["Error"]["Code"] == "InvalidSignatureException"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 403


@pytest.mark.parametrize(
    ("code", "expected"),
    [("", "throttlingException"), ("modelStreamErrorException", "modelStreamErrorException")],
)
async def test_botocore_raises_the_exception_frame(code: str, expected: str) -> None:
    async with open_simulator(dialect="bedrock", models=[MODEL], text=TEXT) as sim:
        sim.push_fault(Fault(kind="inband_error_after", after_chunks=2, code=code, message="capacity"))

        def go() -> tuple[list[str], botocore.exceptions.EventStreamError]:
            got: list[str] = []
            with boto_client(sim) as client, pytest.raises(botocore.exceptions.EventStreamError) as info:
                for event in events(client):
                    got.append(event.get("contentBlockDelta", {}).get("delta", {}).get("text", ""))
            return got, info.value

        got, err = await in_thread(go)
    assert "".join(got) == "".join(WORDS[:2])
    assert err.response["Error"] == {"Code": expected, "Message": "capacity"}


async def test_botocore_rejects_the_malformed_frame() -> None:
    async with open_simulator(dialect="bedrock", models=[MODEL], text=TEXT) as sim:
        sim.push_fault(Fault(kind="malformed_after", after_chunks=1))

        def go() -> None:
            with boto_client(sim) as client:
                list(events(client))

        with pytest.raises(ChecksumMismatch):
            await in_thread(go)


async def test_botocore_reads_http_errors_by_x_amzn_errortype() -> None:
    async with open_simulator(dialect="bedrock", models=[MODEL]) as sim:
        sim.push_fault(Fault(kind="status", status=429, code="ModelNotReadyException", message="warming up"))

        def go() -> list[botocore.exceptions.ClientError]:
            errors = []
            with boto_client(sim) as client:
                for model in (MODEL, "anthropic.unknown-v1:0"):
                    with pytest.raises(botocore.exceptions.ClientError) as info:
                        client.converse(modelId=model, messages=USER)
                    errors.append(info.value)
            return errors

        not_ready, unknown = await in_thread(go)
    assert not_ready.response["Error"] == {"Code": "ModelNotReadyException", "Message": "warming up"}
    assert unknown.response["Error"]["Code"] == "ResourceNotFoundException"


async def test_sigv4_signed_by_botocore_is_accepted_and_a_tampered_one_gets_403() -> None:
    async with (
        open_simulator(dialect="bedrock", text=TEXT, aws_secret="SECRET") as sim,
        http() as c,
    ):
        url = f"{sim.base_url}/model/sim-model/converse"
        body = json.dumps({"messages": USER}).encode()
        request = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
        SigV4Auth(Credentials("AKID", "SECRET"), "bedrock", "us-east-1").add_auth(request)
        headers = dict(request.headers.items())
        ok = await c.post(url, content=body, headers=headers)
        tampered = await c.post(url, content=body.replace(b"weather", b"WEATHER"), headers=headers)
    assert ok.status_code == 200
    assert tampered.status_code == 403
    assert tampered.headers["x-amzn-errortype"].startswith("InvalidSignatureException:")
    assert "signature we calculated does not match" in tampered.json()["message"]


@pytest.mark.parametrize(
    ("auth", "status", "error_type"),
    [
        (None, 403, "MissingAuthenticationTokenException"),
        ("Bearer wrong", 403, "UnrecognizedClientException"),
        ("Basic abc", 403, "IncompleteSignatureException"),
        ("Bearer right", 200, None),
    ],
)
async def test_bedrock_authorization_forms(auth: str | None, status: int, error_type: str | None) -> None:
    async with (
        open_simulator(dialect="bedrock", api_key="right") as sim,
        http(base_url=sim.base_url) as c,
    ):
        headers = {"authorization": auth} if auth else {}
        r = await c.post("/model/sim-model/converse", json={"messages": USER}, headers=headers)
        listing = await c.get("/foundation-models", headers=headers)
    assert (r.status_code, listing.status_code) == (status, status)
    if error_type:
        assert r.headers["x-amzn-errortype"].split(":")[0] == error_type and "message" in r.json()


async def test_bedrock_control_plane_lists_models_and_pages_profiles() -> None:
    async with open_simulator(dialect="bedrock", models=[MODEL, "amazon.nova-pro-v1:0"]) as sim:

        def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
            with boto_client(sim, service="bedrock") as client:
                pages = client.get_paginator("list_inference_profiles").paginate(
                    PaginationConfig={"PageSize": 4}
                )
                return client.list_foundation_models(), list(pages)

        models, pages = await in_thread(go)
    assert [m["modelId"] for m in models["modelSummaries"]] == [MODEL, "amazon.nova-pro-v1:0"]
    assert [len(p["inferenceProfileSummaries"]) for p in pages] == [4, 2]
    assert "nextToken" in pages[0] and "nextToken" not in pages[1]
    profile = pages[0]["inferenceProfileSummaries"][0]
    assert profile["inferenceProfileId"] == f"us.{MODEL}" and profile["type"] == "SYSTEM_DEFINED"
    assert profile["models"] == [{"modelArn": f"arn:aws:bedrock:us-east-1::foundation-model/{MODEL}"}]


async def test_bedrock_stream_parses_at_every_split() -> None:
    async with connect("bedrock", thinking=THINK) as c:
        s = await c.stream(tools=True)
    one_at_a_time = EventStreamBuffer()
    decoded = []
    for i in range(len(s.raw)):
        one_at_a_time.add_data(s.raw[i : i + 1])
        decoded += [m.headers[":event-type"] for m in one_at_a_time]
    assert decoded == s.parsed.events
    assert s.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert s.headers["x-amzn-requestid"] == c.sim.requests[0].request_id


# Gemini


async def test_gemini_sse_is_data_only_and_ends_at_eof() -> None:
    async with connect("gemini", thinking=THINK) as c:
        s = await c.stream()
    lines = [line for line in s.raw.decode().split("\r\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    last = json.loads(lines[-1][len("data: ") :])
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"] == {
        "promptTokenCount": 2,
        "candidatesTokenCount": len(WORDS),
        "totalTokenCount": 2 + len(WORDS) + 3,
        "thoughtsTokenCount": 3,
    }
    assert all("finishReason" not in json.loads(line[6:])["candidates"][0] for line in lines[:-1])


async def test_gemini_without_alt_sse_streams_one_json_array() -> None:
    async with connect("gemini") as c:
        r = await c.client.post(
            "/models/sim-model:streamGenerateContent",
            json=c.wire.body([("user", "x")], True),
            headers=c.wire.headers(),
        )
    chunks = r.json()
    assert isinstance(chunks, list) and r.headers["content-type"].startswith("application/json")
    assert (
        "".join(p.get("text", "") for ch in chunks for p in ch["candidates"][0]["content"]["parts"]) == TEXT
    )


@pytest.mark.parametrize(
    ("message", "period"),
    [("", "PerMinute"), ("Quota exceeded for GenerateRequestsPerDayPerProjectPerModel-FreeTier", "PerDay")],
)
async def test_gemini_429_carries_retry_info_and_quota_failure(message: str, period: str) -> None:
    async with connect("gemini") as c:
        c.sim.push_fault(Fault(kind="status", status=429, seconds=7, message=message))
        r = await c.post()
    error = r.json()["error"]
    assert (r.status_code, error["code"], error["status"]) == (429, 429, "RESOURCE_EXHAUSTED")
    details = {d["@type"].rsplit(".", 1)[1]: d for d in error["details"]}
    assert details["RetryInfo"]["retryDelay"] == "7s"
    assert period in details["QuotaFailure"]["violations"][0]["quotaId"]


@pytest.mark.parametrize(
    ("headers", "query", "status", "rpc_status"),
    [
        ({}, "", 403, "PERMISSION_DENIED"),
        ({"x-goog-api-key": "wrong"}, "", 400, "INVALID_ARGUMENT"),
        ({}, "?key=right", 200, None),
        ({"x-goog-api-key": "right"}, "", 200, None),
    ],
)
async def test_gemini_api_key_in_header_or_query(
    headers: dict[str, str], query: str, status: int, rpc_status: str | None
) -> None:
    async with (
        open_simulator(dialect="gemini", api_key="right") as sim,
        http(base_url=sim.base_url) as c,
    ):
        r = await c.post(
            f"/models/sim-model:generateContent{query}",
            json={"contents": [{"parts": [{"text": "x"}]}]},
            headers=headers,
        )
    assert r.status_code == status
    if rpc_status:
        assert r.json()["error"]["status"] == rpc_status


async def test_gemini_lists_models_with_page_tokens() -> None:
    async with (
        open_simulator(dialect="gemini", models=["g1", "g2", "g3"]) as sim,
        http(base_url=sim.base_url, headers={"x-goog-api-key": "k"}) as c,
    ):
        first = (await c.get("/models", params={"pageSize": 2})).json()
        rest = (await c.get("/models", params={"pageSize": 2, "pageToken": first["nextPageToken"]})).json()
        unknown = await c.post(
            "/models/nope:generateContent", json={"contents": [{"parts": [{"text": "x"}]}]}
        )
    assert [m["name"] for m in first["models"]] == ["models/g1", "models/g2"]
    assert [m["name"] for m in rest["models"]] == ["models/g3"] and "nextPageToken" not in rest
    assert unknown.status_code == 404 and unknown.json()["error"]["status"] == "NOT_FOUND"


# Copilot: device flow, token exchange, expiry, the chat API


async def test_device_flow_answers_as_github_does() -> None:
    async with (
        open_simulator(dialect="copilot", copilot_poll_interval=1) as sim,
        http(base_url=sim.base_url, headers={"accept": "application/json"}) as c,
    ):
        code = (
            await c.post(
                "/login/device/code", json={"client_id": "Iv1.b507a08c87ecfe98", "scope": "read:user"}
            )
        ).json()
        poll = {"client_id": "Iv1.b507a08c87ecfe98", "device_code": code["device_code"]}
        poll["grant_type"] = "urn:ietf:params:oauth:grant-type:device_code"
        pending = (await c.post("/login/oauth/access_token", json=poll)).json()
        granted = (await c.post("/login/oauth/access_token", json=poll)).json()
        form = await c.post("/login/oauth/access_token", data=poll, headers={"accept": "*/*"})
        wrong = (await c.post("/login/oauth/access_token", json=poll | {"device_code": "nope"})).json()
        exchanged = await c.get(
            "/copilot_internal/v2/token", headers={"authorization": f"token {granted['access_token']}"}
        )
    assert {"device_code", "user_code", "verification_uri", "expires_in"} <= code.keys() and code[
        "interval"
    ] == 1
    assert pending["error"] == "authorization_pending"
    assert granted["token_type"] == "bearer" and granted["access_token"].startswith("gho_")
    assert form.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert "access_token=gho_" in form.text
    assert wrong["error"] == "incorrect_device_code"
    assert exchanged.status_code == 200


async def test_copilot_token_exchange_shape_and_github_auth_errors() -> None:
    async with (
        open_simulator(dialect="copilot", api_key="gho_right") as sim,
        http(base_url=sim.base_url) as c,
    ):
        missing = await c.get("/copilot_internal/v2/token")
        wrong = await c.get("/copilot_internal/v2/token", headers={"authorization": "token gho_wrong"})
        ok = await c.get("/copilot_internal/v2/token", headers={"authorization": "token gho_right"})
    assert (missing.status_code, missing.json()["message"]) == (401, "Requires authentication")
    assert (wrong.status_code, wrong.json()["message"]) == (401, "Bad credentials")
    token = ok.json()
    assert token["endpoints"]["api"] == sim.base_url
    assert abs(token["expires_at"] - time.time() - 1500) < 5
    assert 0 < token["refresh_in"] < 1500 and token["token"].startswith("tid=")
    assert sim.statistics().endpoint_requests == {"token": 3}


async def test_copilot_token_expiry_means_401_until_exchanged_again() -> None:
    async with connect("copilot", copilot_token_ttl=0.3) as c:
        assert isinstance(c.wire, CopilotWire)
        fresh = await c.post()
        await trio.sleep(0.35)
        expired = await c.post()
        await c.wire.prepare(c.client)
        renewed = await c.post()
        c.wire.token = "tid=forged"
        unknown = await c.post()
    assert fresh.status_code == 200
    assert (expired.status_code, expired.text) == (401, "unauthorized: token expired\n")
    assert renewed.status_code == 200
    assert (unknown.status_code, unknown.text) == (401, "unauthorized: token invalid\n")
    assert [r.outcome for r in c.sim.requests] == ["completed", "error", "completed", "error"]


@pytest.mark.parametrize(
    ("missing", "name"),
    [("editor-version", "Editor-Version"), ("copilot-integration-id", "Copilot-Integration-Id")],
)
async def test_copilot_requires_the_editor_headers(missing: str, name: str) -> None:
    async with connect("copilot") as c:
        headers = {k: v for k, v in c.wire.headers().items() if k != missing}
        r = await c.client.post(
            "/chat/completions", json=c.wire.body([("user", "x")], False), headers=headers
        )
        models = await c.client.get("/models", headers=headers)
    assert (r.status_code, models.status_code) == (400, 400)
    assert r.text.startswith(f"bad request: missing {name} header")


async def test_copilot_models_shape_and_openai_sdk_chat() -> None:
    async with connect("copilot", models=["claude-sonnet-4", "gpt-4.1"]) as c:
        assert isinstance(c.wire, CopilotWire)
        wire = c.wire
        models = (await c.client.get("/models", headers=c.wire.headers())).json()["data"]

        def go() -> str:
            headers = {k: v for k, v in c.wire.headers().items() if k != "authorization"}
            with openai.OpenAI(
                base_url=c.sim.base_url,
                api_key=wire.token,
                default_headers=headers,
                max_retries=0,
                timeout=5.0,
            ) as client:
                chunks = client.chat.completions.create(
                    model="gpt-4.1", messages=[{"role": "user", "content": "x"}], stream=True
                )
                return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

        text = await in_thread(go)
    chat = [m["id"] for m in models if m["capabilities"]["type"] == "chat" and m["model_picker_enabled"]]
    assert chat == ["claude-sonnet-4", "gpt-4.1"]
    assert len(models) == 3 and all(m["policy"]["state"] == "enabled" for m in models)
    assert text == TEXT


@pytest.mark.parametrize(
    ("fault", "code", "wait_text"),
    [
        (Fault(kind="status", status=429), "rate_limited", "Please wait 42 seconds before retrying"),
        (
            Fault(kind="status", status=429, seconds=7),
            "rate_limited",
            "Please wait 7 seconds before retrying",
        ),
        (
            Fault(kind="status", status=429, code="user_weekly_rate_limited"),
            "user_weekly_rate_limited",
            "51 hours",
        ),
    ],
)
async def test_copilot_rate_limits_put_the_wait_in_the_message(
    fault: Fault, code: str, wait_text: str
) -> None:
    async with connect("copilot") as c:
        c.sim.push_fault(fault)
        r = await c.post()
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert r.json()["error"]["code"] == code and wait_text in r.json()["error"]["message"]


# The command line


@pytest.mark.parametrize("dialect", DIALECTS)
def test_command_line_accepts_every_dialect(dialect: str) -> None:
    from combined_models.simulator.__main__ import build_parser

    args = build_parser().parse_args(["--dialect", dialect, "--thinking", "t", "--copilot-token-ttl", "2"])
    assert (args.dialect, args.thinking, args.copilot_token_ttl) == (dialect, "t", 2.0)


async def test_command_line_serves_bedrock_with_signature_checks() -> None:
    cmd = [sys.executable, "-m", "combined_models.simulator", "--dialect", "bedrock", "--aws-secret", "S"]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with trio.fail_after(20):
            line = b""
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive_some()
            info = json.loads(line)
            async with http(base_url=info["base_url"]) as c:
                r = await c.post(
                    "/model/sim-model/converse",
                    json={"messages": USER},
                    headers={"authorization": "Bearer k"},
                )
    finally:
        proc.terminate()
        await proc.wait()
        assert proc.stdout is not None
        await proc.stdout.aclose()
    assert info["base_url"] == f"http://127.0.0.1:{info['port']}"
    assert r.status_code == 200 and r.json()["output"]["message"]["content"][0]["text"]

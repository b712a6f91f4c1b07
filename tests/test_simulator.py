"""The simulator over real loopback sockets, checked with httpx and the official openai SDK.

Real clock on purpose: waits on real sockets under MockClock would jump the clock.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import openai
import pytest
import trio
from openai.types.chat import ChatCompletionToolParam

from combined_models.simulator import Fault, Simulator, open_simulator

T = TypeVar("T")

TEXT = "Alpha beta gamma delta epsilon zeta."
WORDS = ["Alpha", " beta", " gamma", " delta", " epsilon", " zeta."]
CHAT = "/chat/completions"
TOOLS: list[ChatCompletionToolParam] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]


def chat(stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "hi there"}],
        "stream": stream,
        **extra,
    }


@dataclass
class Streamed:
    status: int = 0
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    raw: bytes = b""
    error: Exception | None = None
    headers_at: float = 0.0  # seconds from the request to the headers
    first_content_at: float | None = None

    @property
    def lines(self) -> list[str]:
        return [line for line in self.raw.decode().split("\n") if line]

    @property
    def payloads(self) -> list[str]:
        return [line[len("data: ") :] for line in self.lines if line.startswith("data: ")]

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads if p != "[DONE]"]

    @property
    def contents(self) -> list[str]:
        return [
            c["delta"]["content"]
            for chunk in self.chunks
            for c in chunk.get("choices", [])
            if c["delta"].get("content")
        ]

    @property
    def finish_reasons(self) -> list[str]:
        return [c["finish_reason"] for ch in self.chunks for c in ch.get("choices", []) if c["finish_reason"]]


_CONTENT = re.compile(rb'"content":"[^"]')  # a delta with non-empty content


async def stream(client: httpx.AsyncClient, body: dict[str, Any]) -> Streamed:
    """POST a chat request and read the whole body, recording a transport error instead of raising."""
    out = Streamed()
    t0 = trio.current_time()
    try:
        async with client.stream("POST", CHAT, json=body) as r:
            out.status, out.headers, out.headers_at = r.status_code, r.headers, trio.current_time() - t0
            async for data in r.aiter_raw():
                out.raw += data
                if out.first_content_at is None and _CONTENT.search(out.raw):
                    out.first_content_at = trio.current_time() - t0
    except httpx.TransportError as e:
        out.error = e
    return out


# Building a TLS context costs ~50 ms per client; these are plain-HTTP loopback clients, so share one.
TLS = httpx.create_ssl_context()


def client_for(sim: Simulator, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=sim.base_url, timeout=kw.pop("timeout", 5.0), verify=TLS, **kw)


async def with_sdk(sim: Simulator, fn: Callable[[openai.OpenAI], T], api_key: str = "sk-test") -> T:
    """Run `fn` with the official (sync) SDK client in a worker thread."""

    def run() -> T:
        with openai.OpenAI(base_url=sim.base_url, api_key=api_key, max_retries=0, timeout=5.0) as client:
            return fn(client)

    return await trio.to_thread.run_sync(run)


# Normal answers


async def test_stream_is_openai_sse_word_by_word() -> None:
    async with open_simulator(models=["a", "b"], text=TEXT) as sim, client_for(sim) as c:
        s = await stream(c, chat(model="b"))
    assert s.status == 200
    assert s.headers["content-type"].startswith("text/event-stream")
    assert s.headers["transfer-encoding"] == "chunked"
    assert s.chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert s.contents == WORDS
    assert s.finish_reasons == ["stop"]
    assert s.payloads[-1] == "[DONE]"
    assert {ch["model"] for ch in s.chunks} == {"b"}
    assert all(ch["object"] == "chat.completion.chunk" for ch in s.chunks)
    assert "usage" not in s.chunks[-1]  # not asked for


async def test_include_usage_sends_usage_chunk_after_finish() -> None:
    async with open_simulator(text=TEXT) as sim, client_for(sim) as c:
        s = await stream(c, chat(stream_options={"include_usage": True}))
    finish = next(i for i, ch in enumerate(s.chunks) if ch["choices"] and ch["choices"][0]["finish_reason"])
    usage_chunk = s.chunks[finish + 1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8}
    assert s.payloads[-1] == "[DONE]"


async def test_max_tokens_stops_with_length() -> None:
    async with open_simulator(text=TEXT) as sim, client_for(sim) as c:
        s = await stream(c, chat(max_completion_tokens=2))
    assert s.contents == WORDS[:2]
    assert s.finish_reasons == ["length"]


async def test_non_streaming_completion() -> None:
    async with open_simulator(text=TEXT) as sim, client_for(sim) as c:
        r = await c.post(CHAT, json=chat(stream=False))
    body = r.json()
    assert r.status_code == 200
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == TEXT
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 2
    assert r.headers["x-request-id"] == sim.requests[0].request_id


async def test_prefill_and_echo_over_http() -> None:
    messages = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "Alpha beta gamma "}]
    async with open_simulator(text=TEXT, echo_words=1) as sim, client_for(sim) as c:
        s = await stream(c, chat(messages=messages))
    assert s.contents == [" gamma", " delta", " epsilon", " zeta."]


async def test_chunk_delay_spaces_the_pieces() -> None:
    async with open_simulator(text="a b c", chunk_delay=0.05) as sim, client_for(sim) as c:
        t0 = trio.current_time()
        s = await stream(c, chat())
    assert s.contents == ["a", " b", " c"]
    assert trio.current_time() - t0 >= 0.1


# Through the official SDK


async def test_sdk_streaming_reassembles_text() -> None:
    def go(client: openai.OpenAI) -> tuple[str, set[str], str | None]:
        chunks = list(
            client.chat.completions.create(
                model="b", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, {c.model for c in chunks}, chunks[-1].choices[0].finish_reason

    async with open_simulator(models=["a", "b"], text=TEXT) as sim:
        assert await with_sdk(sim, go) == (TEXT, {"b"}, "stop")


async def test_sdk_non_streaming() -> None:
    def go(client: openai.OpenAI) -> tuple[str | None, int]:
        r = client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "one two"}]
        )
        assert r.usage is not None
        return r.choices[0].message.content, r.usage.prompt_tokens

    async with open_simulator(text=TEXT) as sim:
        assert await with_sdk(sim, go) == (TEXT, 2)


async def test_sdk_sees_tool_call_then_text_after_tool_result() -> None:
    def go(client: openai.OpenAI) -> tuple[str, dict[str, Any], str | None, str | None]:
        messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
        with client.chat.completions.stream(model="sim-model", messages=messages, tools=TOOLS) as s:
            final = s.get_final_completion()
        calls = final.choices[0].message.tool_calls
        assert calls is not None
        call = calls[0]
        messages += [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [call.model_dump(include={"id", "type", "function"})],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ]
        after = client.chat.completions.create(model="sim-model", messages=messages, tools=TOOLS)
        return (
            call.function.name,
            json.loads(call.function.arguments),
            final.choices[0].finish_reason,
            after.choices[0].message.content,
        )

    async with open_simulator(text=TEXT) as sim:
        assert await with_sdk(sim, go) == ("get_weather", {"city": "Paris"}, "tool_calls", TEXT)


async def test_tool_call_arguments_stream_in_fragments() -> None:
    async with open_simulator(text=TEXT) as sim, client_for(sim) as c:
        s = await stream(c, chat(tools=TOOLS))
    calls = [tc for ch in s.chunks for c in ch["choices"] for tc in c["delta"].get("tool_calls", [])]
    assert calls[0]["id"] and calls[0]["function"]["name"] == "get_weather"
    fragments = [tc["function"]["arguments"] for tc in calls[1:]]
    assert len(fragments) >= 2 and all("id" not in tc for tc in calls[1:])
    assert json.loads("".join(fragments)) == {"city": "Paris"}
    assert s.finish_reasons == ["tool_calls"]


async def test_sdk_raises_rate_limit_error_on_scripted_429() -> None:
    def go(client: openai.OpenAI) -> openai.RateLimitError:
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "x"}])
        return info.value

    async with open_simulator() as sim:
        sim.push_fault(Fault(kind="status", status=429, headers={"retry-after": "7"}))
        err = await with_sdk(sim, go)
    assert err.code == "rate_limit_exceeded"
    assert err.type == "rate_limit_error"
    assert err.response.headers["retry-after"] == "7"


@pytest.mark.parametrize("dialect", ["openai", "openrouter"])
async def test_sdk_raises_api_error_on_inband_error(dialect: str) -> None:
    def go(client: openai.OpenAI) -> tuple[list[str], openai.APIError]:
        got: list[str] = []
        with pytest.raises(openai.APIError) as info:
            for c in client.chat.completions.create(
                model="sim-model", messages=[{"role": "user", "content": "x"}], stream=True
            ):
                if c.choices and c.choices[0].delta.content:
                    got.append(c.choices[0].delta.content)
        return got, info.value

    async with open_simulator(dialect=dialect, text=TEXT) as sim:
        sim.push_fault(Fault(kind="inband_error_after", after_chunks=2, message="upstream fell over"))
        got, err = await with_sdk(sim, go)
    assert got == WORDS[:2]
    assert err.message == "upstream fell over"
    assert not isinstance(err, openai.APIStatusError)  # under HTTP 200


async def test_sdk_streams_openrouter_despite_comments() -> None:
    def go(client: openai.OpenAI) -> str:
        chunks = client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "x"}], stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    async with open_simulator(dialect="openrouter", text=TEXT) as sim:
        assert sim.base_url.endswith("/api/v1")
        assert await with_sdk(sim, go) == TEXT


# Validation


async def test_models_list() -> None:
    async with open_simulator(models=["a", "b"]) as sim, client_for(sim) as c:
        r = await c.get("/models")
        one = await c.get("/models/b")
    assert r.json()["object"] == "list"
    assert [(m["id"], m["object"]) for m in r.json()["data"]] == [("a", "model"), ("b", "model")]
    assert all({"created", "owned_by"} <= m.keys() for m in r.json()["data"])
    assert one.json()["id"] == "b"


async def test_unknown_model_is_404_model_not_found() -> None:
    async with open_simulator(models=["a"]) as sim, client_for(sim) as c:
        r = await c.post(CHAT, json=chat(model="nope"))
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and set(err) == {"message", "type", "param", "code"}
    assert sim.requests[0].outcome == "error"


@pytest.mark.parametrize("auth", [None, "Bearer wrong"])
async def test_api_key_is_enforced(auth: str | None) -> None:
    headers = {"authorization": auth} if auth else {}
    async with open_simulator(api_key="sk-right") as sim, client_for(sim) as c:
        chat_r = await c.post(CHAT, json=chat(), headers=headers)
        models_r = await c.get("/models", headers=headers)
        ok = await c.post(CHAT, json=chat(stream=False), headers={"authorization": "Bearer sk-right"})
    assert (chat_r.status_code, models_r.status_code, ok.status_code) == (401, 401, 200)
    assert chat_r.json()["error"]["type"] == "invalid_request_error"


async def test_malformed_body_is_400() -> None:
    async with open_simulator() as sim, client_for(sim) as c:
        r = await c.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


# HTTP behaviour


async def test_keep_alive_serves_requests_on_one_connection() -> None:
    async with open_simulator(text=TEXT) as sim, client_for(sim) as c:
        await stream(c, chat())
        await c.post(CHAT, json=chat(stream=False))
        assert sim.statistics().open_connections == 1
        assert sim.statistics().completed == 2


async def test_http_1_0_gets_a_close_delimited_stream() -> None:
    async with open_simulator(text=TEXT) as sim:
        body = json.dumps(chat()).encode()
        s = await trio.open_tcp_stream("127.0.0.1", sim.port)
        async with s:
            head = f"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n"
            await s.send_all(head.encode() + body)
            raw = b""
            with trio.fail_after(5):
                while data := await s.receive_some():
                    raw += data
    headers, _, payload = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in headers.lower()
    assert payload.endswith(b"data: [DONE]\n\n")


async def test_connections_are_closed_when_the_simulator_stops() -> None:
    async with httpx.AsyncClient(timeout=5.0) as c:
        async with open_simulator() as sim:
            await c.get(sim.base_url + "/models")
            assert sim.statistics().open_connections == 1
        assert sim.statistics().open_connections == 0
        with pytest.raises(httpx.ConnectError):  # the pooled connection is gone, and so is the listener
            await c.get(sim.base_url + "/models")


# Faults


async def test_status_fault_default_envelope_and_custom_body() -> None:
    async with open_simulator() as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="status", status=503))
        sim.push_fault(Fault(kind="status", status=418, body='{"teapot": true}', headers={"x-extra": "1"}))
        first = await c.post(CHAT, json=chat())
        second = await c.post(CHAT, json=chat())
        third = await c.post(CHAT, json=chat(stream=False))
    assert first.status_code == 503 and first.json()["error"]["type"] == "server_error"
    assert (second.status_code, second.json(), second.headers["x-extra"]) == (418, {"teapot": True}, "1")
    assert third.status_code == 200
    assert [r.fault for r in sim.requests] == ["status", "status", None]


async def test_reset_before_headers() -> None:
    async with open_simulator() as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="reset_before_headers"))
        with pytest.raises(httpx.ReadError):
            await c.post(CHAT, json=chat())
    assert (sim.requests[0].outcome, sim.requests[0].status) == ("reset", 0)


@pytest.mark.parametrize("n", [0, 3])
async def test_reset_after_n_pieces(n: int) -> None:
    async with open_simulator(text=TEXT) as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="reset_after", after_chunks=n))
        s = await stream(c, chat())
    assert s.contents == WORDS[:n]
    assert isinstance(s.error, httpx.ReadError)  # RST, not a clean close
    assert (sim.requests[0].pieces, sim.requests[0].outcome) == (n, "reset")


async def test_stream_fault_on_non_streaming_request_resets() -> None:
    async with open_simulator() as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="no_terminator", after_chunks=1))
        with pytest.raises(httpx.ReadError):
            await c.post(CHAT, json=chat(stream=False))


async def test_stall_before_forever_counts_a_disconnect_when_the_client_gives_up() -> None:
    async with open_simulator() as sim, client_for(sim, timeout=httpx.Timeout(5.0, read=0.2)) as c:
        sim.push_fault(Fault(kind="stall_before", seconds=0))
        with pytest.raises(httpx.ReadTimeout):
            await c.post(CHAT, json=chat())
        with trio.fail_after(2):
            await sim.wait_disconnect(1)
    assert sim.statistics().disconnects == 1
    assert (sim.requests[0].disconnected, sim.requests[0].outcome, sim.requests[0].status) == (
        True,
        "disconnected",
        0,
    )


async def test_stall_before_then_answers_normally() -> None:
    async with open_simulator(text=TEXT) as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="stall_before", seconds=0.2))
        s = await stream(c, chat())
    assert s.headers_at >= 0.2
    assert s.contents == WORDS and s.payloads[-1] == "[DONE]"


async def test_stall_after_goes_silent_then_continues() -> None:
    async with open_simulator(text=TEXT) as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="stall_after", after_chunks=2, seconds=0.2))
        t0 = trio.current_time()
        async with c.stream("POST", CHAT, json=chat()) as r:
            arrivals = []
            async for line in r.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    arrivals.append(trio.current_time() - t0)
    assert len(arrivals) == 6
    assert arrivals[1] < 0.15 and arrivals[2] - arrivals[1] >= 0.15
    assert sim.statistics().completed == 1


async def test_client_leaving_mid_stall_is_noticed_promptly() -> None:
    async with open_simulator(text=TEXT) as sim:
        sim.push_fault(Fault(kind="stall_after", after_chunks=2, seconds=0))
        body = json.dumps(chat()).encode()
        s = await trio.open_tcp_stream("127.0.0.1", sim.port)
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        await s.send_all(head.encode() + body)
        raw = b""
        with trio.fail_after(5):
            while len(_CONTENT.findall(raw)) < 2:
                raw += await s.receive_some()
        await s.aclose()
        left = trio.current_time()
        with trio.fail_after(2):
            await sim.wait_disconnect(1)
        noticed = trio.current_time() - left
    assert noticed < 0.1
    assert (sim.requests[0].pieces, sim.requests[0].outcome) == (2, "disconnected")
    assert sim.statistics().disconnects == 1


async def test_slow_first_token_sends_headers_at_once() -> None:
    async with open_simulator(text=TEXT) as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="slow_first_token", seconds=0.3))
        s = await stream(c, chat())
    assert s.headers_at < 0.15
    assert s.first_content_at is not None and s.first_content_at >= 0.3
    assert s.contents == WORDS


async def test_openrouter_sends_processing_comments_while_waiting() -> None:
    async with open_simulator(dialect="openrouter", text=TEXT) as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="slow_first_token", seconds=0.6))
        s = await stream(c, chat())
    first_content = next(i for i, line in enumerate(s.lines) if '"content":"A' in line)
    comments = [line for line in s.lines[:first_content] if line.startswith(":")]
    assert len(comments) >= 2 and set(comments) == {": OPENROUTER PROCESSING"}
    assert s.contents == WORDS


async def test_malformed_after_sends_a_non_json_line_and_closes() -> None:
    async with open_simulator(text=TEXT) as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="malformed_after", after_chunks=2))
        s = await stream(c, chat())
    assert s.error is None and s.headers["connection"] == "close"
    payloads = s.payloads
    assert len(payloads) == 4  # role chunk, two pieces, the broken one
    with pytest.raises(json.JSONDecodeError):
        json.loads(payloads[-1])
    assert [json.loads(p)["choices"][0]["delta"].get("content") for p in payloads[1:3]] == WORDS[:2]
    assert sim.requests[0].outcome == "malformed"


async def test_openai_inband_error_shape() -> None:
    async with open_simulator(text=TEXT) as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="inband_error_after", after_chunks=1))
        s = await stream(c, chat())
    assert s.status == 200 and s.contents == WORDS[:1]
    last = s.chunks[-1]
    assert set(last) == {"error"} and set(last["error"]) == {"message", "type", "param", "code"}
    assert "[DONE]" not in s.payloads


async def test_openrouter_inband_error_shape() -> None:
    async with open_simulator(dialect="openrouter", text=TEXT) as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="inband_error_after", after_chunks=1, message="Provider disconnected"))
        s = await stream(c, chat())
    last = s.chunks[-1]
    assert last["error"] == {"code": "server_error", "message": "Provider disconnected"}
    assert last["choices"][0]["finish_reason"] == "error"
    assert s.payloads[-1] != "[DONE]"


async def test_no_terminator_ends_cleanly_without_finish_or_done() -> None:
    async with open_simulator(text=TEXT) as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="no_terminator", after_chunks=3))
        s = await stream(c, chat())
        again = await stream(c, chat())  # the connection stays usable
    assert s.error is None and s.contents == WORDS[:3]
    assert s.finish_reasons == [] and "[DONE]" not in s.payloads
    assert again.contents == WORDS
    assert sim.statistics().open_connections == 0
    assert [r.outcome for r in sim.requests] == ["truncated", "completed"]


async def test_reject_prefill_only_when_the_request_ends_with_assistant() -> None:
    prefill = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "Alpha"}]
    async with open_simulator(text=TEXT) as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="reject_prefill", times=-1))
        rejected = await c.post(CHAT, json=chat(messages=prefill))
        plain = await stream(c, chat())
    assert rejected.status_code == 400
    assert "does not support assistant message prefill" in rejected.json()["error"]["message"]
    assert plain.contents == WORDS


async def test_times_and_clear() -> None:
    async with open_simulator() as sim, client_for(sim) as c:
        sim.push_fault(Fault(kind="status", status=500, times=-1))
        codes = [(await c.post(CHAT, json=chat(stream=False))).status_code for _ in range(3)]
        sim.clear_faults()
        codes.append((await c.post(CHAT, json=chat(stream=False))).status_code)
    assert codes == [500, 500, 500, 200]


# Control over HTTP and the command line


async def test_control_endpoints() -> None:
    async with (
        open_simulator(text=TEXT) as sim,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{sim.port}") as c,
    ):
        pushed = await c.post("/_sim/faults", json={"push": [{"kind": "status", "status": 429}]})
        bad = await c.post("/_sim/faults", json={"push": [{"kind": "explode"}]})
        limited = await c.post("/v1/chat/completions", json=chat(stream=False))
        await c.post("/_sim/faults", json={"push": [{"kind": "status", "status": 500, "times": -1}]})
        await c.post("/_sim/faults", json={"clear": True})
        fine = await c.post("/v1/chat/completions", json=chat(stream=False))
        stats = (await c.get("/_sim/stats")).json()
        recorded = (await c.get("/_sim/requests")).json()
    assert (pushed.status_code, pushed.json()) == (200, {"queued": 1})
    assert bad.status_code == 400
    assert (limited.status_code, fine.status_code) == (429, 200)
    assert stats == {
        "chat_requests": 2,
        "completed": 1,
        "disconnects": 0,
        "open_connections": 1,
        "endpoint_requests": {},
    }
    assert [(r["fault"], r["status"], r["outcome"]) for r in recorded] == [
        ("status", 429, "error"),
        (None, 200, "completed"),
    ]
    assert recorded[0]["body"]["model"] == "sim-model"
    assert recorded[0]["headers"]["content-type"] == "application/json"


async def _read_line(proc: trio.Process) -> bytes:
    assert proc.stdout is not None
    buf = b""
    while b"\n" not in buf:
        data = await proc.stdout.receive_some()
        if not data:
            break
        buf += data
    return buf


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_command_line_serves_until_signalled(sig: signal.Signals) -> None:
    cmd = [
        sys.executable,
        "-m",
        "combined_models.simulator",
        "--port",
        "0",
        "--models",
        "a,b",
        "--text",
        "Hi there.",
    ]
    cmd += ["--api-key", "k", "--fault", '{"kind": "status", "status": 503}']
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE)
    try:
        with trio.fail_after(20):
            info = json.loads(await _read_line(proc))
            assert info["base_url"] == f"http://127.0.0.1:{info['port']}/v1"
            async with httpx.AsyncClient(
                base_url=info["base_url"], headers={"authorization": "Bearer k"}
            ) as c:
                first = await c.post(CHAT, json=chat(model="b", stream=False))
                second = await c.post(CHAT, json=chat(model="b", stream=False))
            proc.send_signal(sig)
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        assert proc.stdout is not None
        await proc.stdout.aclose()
    assert first.status_code == 503
    assert second.json()["choices"][0]["message"]["content"] == "Hi there."
    assert code == 0


async def test_command_line_help_explains_every_option() -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "combined_models.simulator", "--help"], capture_stdout=True
    )
    out = result.stdout.decode()
    for option in ("--dialect", "--host", "--port", "--models", "--text", "--api-key", "--chunk-delay"):
        assert option in out
    for option in ("--prefill", "--echo-words", "--name", "--fault", "reset_after", "/_sim/faults"):
        assert option in out

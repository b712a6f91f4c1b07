"""The OpenAI Responses API: the front door (pure, then the official SDK end to end against every
other dialect with mid-stream faults) and the upstream dialect (tables, then the simulator)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import msgspec
import openai
import pytest
import trio

from combined_models.chat import (
    ChatRequest,
    DecodedItem,
    DocumentPart,
    DoneEvent,
    ErrorEvent,
    ErrorKind,
    FailoverEvent,
    Finished,
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
from combined_models.config import PRESETS, parse_config, resolve_provider
from combined_models.daemon import Server, open_daemon
from combined_models.daemon.dialects import Endpoint, dialect_for
from combined_models.daemon.dialects.openai_responses import OpenAIResponsesDialect, encode_input
from combined_models.daemon.errors import Failure, UpstreamError
from combined_models.daemon.gateway import responses as rsp
from combined_models.daemon.gateway.common import BadRequest, Head, Out, Responder
from combined_models.simulator import Fault, Simulator, open_simulator
from combined_models.simulator.answer import signature_of

from .conftest import ANSWER, MODEL

T = TypeVar("T")
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
PNG = "iVBORw0KGgo="
FAST = "[failover]\nfirst_token_timeout = 5.0\nidle_timeout = 5.0\nretry_backoff = 0.01\n"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bedrock members sign with these (the simulator checks the form of the signature only)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATEST0123456789")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test/secret/0123456789")
    for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_BEARER_TOKEN_BEDROCK", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)


# ================================================================ requests in (pure)


def _parse(body: dict[str, Any], store: rsp.ResponseStore | None = None) -> rsp.ParsedResponses:
    return rsp.parse_responses_request(
        json.dumps(body).encode(), store if store is not None else rsp.ResponseStore()
    )


def test_a_responses_request_becomes_the_neutral_request() -> None:
    body = {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": "Use tools."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather here?"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "auto"},
                    {"type": "input_image", "image_url": "https://example.com/a.jpg"},
                    {
                        "type": "input_file",
                        "file_data": "data:application/pdf;base64,JVBE",
                        "filename": "a.pdf",
                    },
                ],
            },
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "They want weather."}]},
            {"type": "function_call", "call_id": "call_1", "name": "w", "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "call_2", "name": "w", "arguments": ""},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "call_2",
                "output": [{"type": "input_text", "text": "rainy"}],
            },
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},  # skipped
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [
            {
                "type": "function",
                "name": "w",
                "description": "weather",
                "parameters": WEATHER,
                "strict": True,
            },
            {"type": "web_search"},  # run by OpenAI itself: left out
        ],
        "tool_choice": {"type": "function", "name": "w"},
        "max_output_tokens": 300,
        "temperature": 1.5,
        "top_p": 0.9,
        "reasoning": {"effort": "low", "summary": "auto"},
        "prompt_cache_key": "thread-7",
        "stream": True,
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "text": {"format": {"type": "text"}, "verbosity": "low"},
        "parallel_tool_calls": False,
        "service_tier": "auto",  # harmless: ignored
    }
    parsed = _parse(body)
    assert (parsed.model, parsed.stream, parsed.store, parsed.encrypted_reasoning) == ("m", True, False, True)
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
            Message("assistant", "Sunny."),
            Message("user", "Thanks"),
        ],
        system="Be brief.\n\nUse tools.",
        max_tokens=300,
        temperature=1.5,
        top_p=0.9,
        tools=[Tool(name="w", description="weather", parameters=WEATHER)],
        tool_choice="w",
        thinking_budget=rsp.THINKING_BUDGETS["low"],
        session="thread-7",
        cache_key="thread-7",
    )
    assert parsed.echo["parallel_tool_calls"] is False and parsed.echo["store"] is False


def test_a_plain_string_input_and_its_defaults() -> None:
    parsed = _parse({"model": "m", "input": "hi"})
    assert (parsed.stream, parsed.store, parsed.encrypted_reasoning) == (False, True, False)
    assert parsed.request == ChatRequest(messages=[Message("user", "hi")])


def test_custom_and_namespace_tools_become_functions_and_come_back_as_they_were() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "patch it"},
            {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "*** Begin"},
            {"type": "custom_tool_call_output", "call_id": "c1", "output": "done"},
            {"type": "function_call", "call_id": "c2", "name": "read", "namespace": "fs", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c2", "output": "text"},
        ],
        "tools": [
            {
                "type": "custom",
                "name": "apply_patch",
                "description": "Patch files.",
                "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"},
            },
            {
                "type": "namespace",
                "name": "fs",
                "description": "Files",
                "tools": [{"type": "function", "name": "read", "parameters": WEATHER}],
            },
            {"type": "local_shell"},
        ],
        "tool_choice": {
            "type": "allowed_tools",
            "mode": "required",
            "tools": [{"type": "custom", "name": "apply_patch"}],
        },
    }
    parsed = _parse(body)
    request = parsed.request
    assert [t.name for t in request.tools] == ["apply_patch"]  # allowed_tools narrows them
    assert request.tool_choice == "required"
    assert request.tools[0].parameters == rsp.CUSTOM_PARAMETERS
    assert "lark grammar" in request.tools[0].description and "start: /.+/" in request.tools[0].description
    assert request.messages[1] == Message(
        "assistant",
        [ToolCallPart("c1", "apply_patch", {"input": "*** Begin"})],
    )
    assert request.messages[3].content == [ToolCallPart("c2", "fs__read", {})]
    # The calls go back as the client's own kinds of item.
    assert parsed.names["apply_patch"] == rsp.ToolName("custom_tool_call", "apply_patch")
    call = rsp.ResponseCall("m", _parse({**body, "tool_choice": "auto"}), None)
    events: list[StreamEvent] = [
        PROVIDER,
        ToolCallEvent("c3", "apply_patch", {"input": "*** End"}),
        ToolCallEvent("c4", "fs__read", {"path": "a"}),
        DONE,
    ]
    _, raw = _feed(rsp.ResponsesStreamResponder(call), events)
    done = [d for n, d in _events(raw) if n == "response.output_item.done"]
    assert done[0]["item"] == {
        "type": "custom_tool_call",
        "id": done[0]["item"]["id"],
        "call_id": "c3",
        "name": "apply_patch",
        "input": "*** End",
        "status": "completed",
    }
    assert (done[1]["item"]["name"], done[1]["item"]["namespace"]) == ("read", "fs")
    assert [n for n, _ in _events(raw)][2:5] == [
        "response.output_item.added",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
    ]


def _input(*items: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "input": list(items), **extra}


USER = {"role": "user", "content": "x"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        (_input(), "input"),
        (_input({"role": "tool", "content": "x"}), "input[0].role"),
        (_input({"role": "user", "content": 5}), "input[0].content"),
        (_input({"role": "user", "content": [{"type": "input_audio"}]}), "input[0].content[0].type"),
        (_input({"type": "item_reference", "id": "msg_1"}), "input[0].type"),
        (_input({"type": "local_shell_call", "call_id": "c"}), "input[0].type"),
        (_input({"type": "function_call", "name": "f", "arguments": "{}"}), "input[0].call_id"),
        (
            _input({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"}),
            "input[0].arguments",
        ),
        (_input({"type": "function_call_output", "call_id": "nope", "output": "x"}), "input[0].call_id"),
        (
            _input({"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}),
            "input[0].content[0].file_id",
        ),
        (
            _input({"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x"}]}),
            "input[0].content[0].image_url",
        ),
        (
            _input({"role": "user", "content": [{"type": "input_file", "file_url": "https://x/a.pdf"}]}),
            "input[0].content[0].file_data",
        ),
        (_input(USER, temperature=3), "temperature"),
        (_input(USER, max_output_tokens=0), "max_output_tokens"),
        (_input(USER, tool_choice="sometimes"), "tool_choice"),
        (_input(USER, tool_choice={"type": "function", "name": "nope"}), "tool_choice.name"),
        (_input(USER, tool_choice={"type": "web_search_preview"}), "tool_choice.type"),
        (_input(USER, tools=[{"type": "function", "description": "d"}]), "tools[0].name"),
        (_input(USER, tools=[{"type": "hologram"}]), "tools[0].type"),
        (_input(USER, tools=[{"name": "f"}]), "tools[0].type"),
        (_input(USER, reasoning={"effort": "enormous"}), "reasoning.effort"),
        (_input(USER, conversation="conv_1"), "conversation"),
        (_input(USER, background=True), "background"),
        (_input(USER, prompt={"id": "pmpt_1"}), "prompt"),
        (
            _input(USER, text={"format": {"type": "json_schema", "name": "x", "schema": {}}}),
            "text.format.type",
        ),
        (_input(USER, previous_response_id="resp_unknown"), "previous_response_id"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        _parse(body)
    assert info.value.param == param, info.value.message


def test_an_unknown_previous_response_says_what_is_kept() -> None:
    with pytest.raises(BadRequest) as info:
        _parse(_input(USER, previous_response_id="resp_gone"))
    message = info.value.message
    assert "'resp_gone' not found" in message and "1 hour" in message and "store: false" in message


# ================================================================ the store (pure)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_store_is_bounded_in_count_bytes_and_time_least_recently_used_out() -> None:
    clock = Clock()
    store = rsp.ResponseStore(max_entries=3, max_bytes=10_000, ttl=60, clock=clock)
    for i in range(3):
        store.put(f"r{i}", [Message("user", f"turn {i}")])
    assert store.get("r0") == [Message("user", "turn 0")]  # r0 is now the most recently used
    store.put("r3", [Message("user", "turn 3")])
    assert store.get("r1") is None and store.count == 3  # the least recently used went
    assert {r for r in ("r0", "r2", "r3") if store.get(r) is not None} == {"r0", "r2", "r3"}
    # Bytes: a big entry pushes out the oldest until the rest fits.
    store.put("big", [Message("user", "x" * 9_000)])
    assert store.size <= 10_000 and store.get("big") is not None
    assert store.count < 4
    # Larger than the whole store: never kept.
    store.put("huge", [Message("user", "x" * 20_000)])
    assert store.get("huge") is None
    # Time: an hour from when it was made, however often it is read.
    clock.now = 59.0
    assert store.get("big") is not None
    clock.now = 60.0
    assert store.get("big") is None
    store.put("fresh", [Message("user", "new")])
    assert store.count == 1  # the expired ones went as the new one came


def test_a_stored_conversation_comes_back_fresh_every_time() -> None:
    store = rsp.ResponseStore()
    store.put("r", [Message("user", [TextPart("a")])])
    first = store.get("r")
    assert first is not None and isinstance(first[0].content, list)
    first[0].content.append(TextPart("changed"))
    assert store.get("r") == [Message("user", [TextPart("a")])]


# ================================================================ responses out (pure)


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


def _events(body: bytes) -> list[tuple[str, Any]]:
    """(event name, data) per SSE event, comments left out; checks `event:` repeats the type."""
    out: list[tuple[str, Any]] = []
    for block in body.decode().split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        name = next((line[7:] for line in lines if line.startswith("event: ")), None)
        data = "\n".join(line[6:] for line in lines if line.startswith("data: "))
        if data:
            obj = json.loads(data)
            assert name is not None and obj["type"] == name
            out.append((name, obj))
    return out


PROVIDER = ProviderEvent(provider="first", model="sim-1")
CALL = ToolCallEvent("call_9", "w", {"city": "Paris"})
DONE = DoneEvent(
    provider="second",
    model="sim-2",
    finish_reason="tool_calls",
    usage=Usage(input_tokens=70, output_tokens=5, cache_read_tokens=64),
)


def _call(body: dict[str, Any] | None = None, store: rsp.ResponseStore | None = None) -> rsp.ResponseCall:
    parsed = _parse(
        body or {"model": "combined", "input": "hi", "tools": [{"type": "function", "name": "w"}]}
    )
    return rsp.ResponseCall(parsed.model, parsed, store)


def test_the_stream_has_every_event_the_sdk_and_codex_read_in_order() -> None:
    store = rsp.ResponseStore()
    call = _call(store=store)
    r = rsp.ResponsesStreamResponder(call)
    assert r.feed(FailoverEvent(from_="zero", to="first", reason="rate_limited", after_output=False)) == []
    head, body = _feed(
        r,
        [
            PROVIDER,
            ThinkingEvent("Let me"),
            ThinkingEvent(" think."),
            ThinkingEvent("", signature="sig=="),
            TextEvent("Hel"),
            FailoverEvent(from_="first", to="second", reason="transient", after_output=True),
            ProviderEvent(provider="second", model="sim-2"),
            TextEvent("lo"),
            CALL,
            DONE,
        ],
    )
    assert head is not None and head.status == 200
    assert dict(head.headers)["x-combined-models-provider"] == "first"
    assert b": failover from first to second (transient)" in body
    events = _events(body)
    assert [n for n, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert {d["response"]["id"] for n, d in events if "response" in d} == {call.id}
    created = events[0][1]["response"]
    assert (created["status"], created["output"], created["model"]) == ("in_progress", [], "combined")
    added = [d for n, d in events if n == "response.output_item.added"]
    assert [(d["output_index"], d["item"]["type"]) for d in added] == [
        (0, "reasoning"),
        (1, "message"),
        (2, "function_call"),
    ]
    assert added[1]["item"]["content"] == [] and added[2]["item"]["arguments"] == ""
    text_done = next(d for n, d in events if n == "response.output_text.done")
    assert (text_done["text"], text_done["output_index"], text_done["content_index"]) == ("Hello", 1, 0)
    args_done = next(d for n, d in events if n == "response.function_call_arguments.done")
    assert (args_done["name"], json.loads(args_done["arguments"])) == ("w", {"city": "Paris"})
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed" and completed["error"] is None
    assert [i["type"] for i in completed["output"]] == ["reasoning", "message", "function_call"]
    assert completed["output"][0]["summary"] == [{"type": "summary_text", "text": "Let me think."}]
    assert "encrypted_content" not in completed["output"][0]  # not asked for
    assert completed["output"][2]["call_id"] == "call_9" and completed["output"][2]["status"] == "completed"
    assert completed["usage"] == {
        "input_tokens": 70,
        "input_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 75,
    }
    # Kept for the next turn: the request's messages and everything produced.
    assert store.get(call.id) == [
        Message("user", "hi"),
        Message(
            "assistant",
            [
                ThinkingPart(text="Let me think.", signature="sig=="),
                TextPart("Hello"),
                ToolCallPart("call_9", "w", {"city": "Paris"}),
            ],
        ),
    ]
    assert r.finished and r.feed(TextEvent("late")) == []


def test_a_cut_stream_ends_with_response_failed_never_completed() -> None:
    store = rsp.ResponseStore()
    call = _call(store=store)
    cut = ErrorEvent(kind=ErrorKind.TRUNCATED, message="cut and nobody could continue")
    _, body = _feed(rsp.ResponsesStreamResponder(call), [PROVIDER, TextEvent("Hel"), cut])
    events = _events(body)
    name, data = events[-1]
    assert name == "response.failed"
    assert data["response"]["status"] == "failed"
    assert data["response"]["error"] == {"code": "server_error", "message": cut.message}
    assert data["response"]["output"][0]["status"] == "incomplete"  # the cut item, never `done`
    assert "response.completed" not in [n for n, _ in events]
    assert "response.output_item.done" not in [n for n, _ in events]
    assert store.get(call.id) is None  # a failed response is not kept

    cooling = ErrorEvent(kind=ErrorKind.ALL_PROVIDERS_COOLING, message="all cooling.", retry_after_s=19.2)
    _, body = _feed(rsp.ResponsesStreamResponder(_call()), [PROVIDER, TextEvent("a"), cooling])
    error = _events(body)[-1][1]["response"]["error"]
    assert error == {"code": "rate_limit_exceeded", "message": "all cooling. Please try again in 20s."}


def test_errors_before_output_are_http_errors() -> None:
    for responder in (rsp.ResponsesStreamResponder(_call()), rsp.ResponseResponder(_call())):
        out = responder.feed(
            ErrorEvent(kind=ErrorKind.ALL_PROVIDERS_COOLING, message="wait", retry_after_s=3)
        )
        head, body = out
        assert isinstance(head, Head) and isinstance(body, bytes)
        assert head.status == 429 and dict(head.headers)["retry-after"] == "3"
        assert json.loads(body)["error"] == {
            "message": "wait",
            "type": "rate_limit_error",
            "param": None,
            "code": "all_providers_cooling",
        }


def test_a_length_finish_is_an_incomplete_response() -> None:
    done = DoneEvent(provider="first", model="sim-1", finish_reason="length")
    _, body = _feed(rsp.ResponsesStreamResponder(_call()), [PROVIDER, TextEvent("Hel"), done])
    name, data = _events(body)[-1]
    assert name == "response.incomplete"
    assert data["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    whole = _whole(rsp.ResponseResponder(_call()), [PROVIDER, TextEvent("Hel"), done])
    assert (whole["status"], whole["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})


def _whole(responder: Responder, events: list[StreamEvent]) -> Any:
    out: list[Out] = [o for e in events for o in responder.feed(e)]
    head, body = out
    assert isinstance(head, Head) and head.status == 200 and isinstance(body, bytes)
    return json.loads(body)


def test_the_whole_response_object() -> None:
    store = rsp.ResponseStore()
    call = _call(
        {
            "model": "combined",
            "input": "hi",
            "include": ["reasoning.encrypted_content"],
            "instructions": "Be.",
        },
        store,
    )
    body = _whole(
        rsp.ResponseResponder(call),
        [
            PROVIDER,
            ThinkingEvent("Hmm."),
            ThinkingEvent("", signature="sig=="),
            TextEvent("Hel"),
            TextEvent("lo"),
            CALL,
            DONE,
        ],
    )
    assert body["id"] == call.id and body["object"] == "response" and body["status"] == "completed"
    assert body["model"] == "combined" and body["instructions"] == "Be."
    reasoning, message, fc = body["output"]
    assert reasoning["encrypted_content"] == rsp.SIGNATURE_PREFIX + "sig=="
    assert message["content"] == [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}]
    assert (fc["type"], fc["call_id"], json.loads(fc["arguments"])) == (
        "function_call",
        "call_9",
        {"city": "Paris"},
    )
    assert body["usage"]["input_tokens_details"]["cached_tokens"] == 64
    # The client replays the reasoning item: the signature comes back with its thinking.
    again = _parse({"model": "m", "input": [{"role": "user", "content": "hi"}, reasoning, fc]})
    assert again.request.messages[1].content == [
        ThinkingPart(text="Hmm.", signature="sig=="),
        ToolCallPart("call_9", "w", {"city": "Paris"}),
    ]
    # Another vendor's encrypted content is not taken for a signature.
    foreign = {**reasoning, "encrypted_content": "gAAAA-openai"}
    assert _parse({"model": "m", "input": [foreign, USER]}).request.messages[0].content == [
        ThinkingPart(text="Hmm.")
    ]


def test_previous_response_id_continues_the_kept_conversation() -> None:
    store = rsp.ResponseStore()
    call = _call(store=store)
    _whole(rsp.ResponseResponder(call), [PROVIDER, CALL, DONE])
    body = {
        "model": "m",
        "previous_response_id": call.id,
        "instructions": "New rules.",
        "input": [{"type": "function_call_output", "call_id": "call_9", "output": "sunny"}],
    }
    parsed = _parse(body, store)
    assert parsed.request.system == "New rules."  # instructions are not carried over
    assert parsed.request.messages == [
        Message("user", "hi"),
        Message("assistant", [ToolCallPart("call_9", "w", {"city": "Paris"})]),
        Message("user", [ToolResultPart(tool_call_id="call_9", content="sunny")]),
    ]
    # `store: false`: answered, never kept.
    unkept = _call({"model": "m", "input": "hi", "store": False}, store)
    _whole(rsp.ResponseResponder(unkept), [PROVIDER, TextEvent("a"), DONE])
    assert store.get(unkept.id) is None


# ================================================================ the upstream dialect (tables)

ENDPOINT = Endpoint(base_url="https://api.openai.com/v1", api_key="sk-test")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
CONVERSATION = ChatRequest(
    system="You are terse.",
    messages=[
        Message("user", [TextPart("Weather here?"), ImagePart(media_type="image/png", data=PNG)]),
        Message(
            "assistant",
            [
                ThinkingPart(text="They want weather.", signature="claude-sig"),
                TextPart("Let me look."),
                ToolCallPart("call_1", "get_weather", {"city": "Paris"}),
            ],
        ),
        Message("user", [ToolResultPart(tool_call_id="call_1", content="21 C"), TextPart("And?")]),
    ],
    tools=[Tool(name="get_weather", description="weather", parameters=WEATHER)],
    tool_choice="get_weather",
    max_tokens=5,
    temperature=0.5,
    thinking_budget=16384,
    cache_key="thread-7",
)


def test_the_request_the_upstream_dialect_builds() -> None:
    dialect = dialect_for("openai-responses")
    assert isinstance(dialect, OpenAIResponsesDialect)
    req = dialect.build_chat(CONVERSATION, "gpt-5", ENDPOINT, NOW)
    assert (req.method, req.url) == ("POST", "https://api.openai.com/v1/responses")
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.headers["accept"] == "text/event-stream"
    body = json.loads(req.body)
    assert body == {
        "model": "gpt-5",
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather here?"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "auto"},
                ],
            },
            # Claude's signed thinking is not OpenAI's to replay: left out.
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Let me look."}],
            },
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "21 C"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And?"}]},
        ],
        "stream": True,
        "store": False,
        "instructions": "You are terse.",
        "max_output_tokens": 16,  # the API's minimum
        "temperature": 0.5,
        "tools": [
            {
                "type": "function",
                "name": "get_weather",
                "description": "weather",
                "parameters": WEATHER,
                "strict": False,
            }
        ],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "reasoning": {"effort": "high", "summary": "auto"},
        "prompt_cache_key": "thread-7",
    }
    with pytest.raises(UpstreamError) as info:
        dialect.build_chat(ChatRequest(messages=[Message("user", "x")], stop=["END"]), "gpt-5", ENDPOINT)
    assert info.value.kind is Failure.UNSUPPORTED


def test_a_whole_conversation_encodes_into_items_the_front_door_reads_back() -> None:
    """The dialect's `input` is a Responses request the front door turns into the same conversation."""
    parsed = _parse({"model": "m", "input": encode_input(CONVERSATION.messages)})
    user, answer, results = CONVERSATION.messages
    assert isinstance(answer.content, list)
    assert parsed.request.messages == [
        user,
        Message("assistant", answer.content[1:]),  # Claude's signed thinking stays behind
        results,
    ]


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n" for e in events
    )


def _resp(status: str = "completed", **extra: Any) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "status": status,
        "model": "gpt-5-2025",
        "output": [],
        **extra,
    }


USAGE = {
    "input_tokens": 1200,
    "input_tokens_details": {"cached_tokens": 1024},
    "output_tokens": 80,
    "output_tokens_details": {"reasoning_tokens": 64},
    "total_tokens": 1280,
}
FC = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": ""}
STREAM = (
    _sse(
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": _resp("in_progress", model="gpt-5-2025"),
        },
        {"type": "response.in_progress", "sequence_number": 1, "response": _resp("in_progress")},
        {
            "type": "response.output_item.added",
            "sequence_number": 2,
            "output_index": 0,
            "item": {"type": "reasoning", "id": "rs_1", "summary": []},
        },
        {
            "type": "response.reasoning_summary_part.added",
            "sequence_number": 3,
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "part": {"type": "summary_text", "text": ""},
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "sequence_number": 4,
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "delta": "First.",
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "sequence_number": 5,
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 1,
            "delta": "Second \u2028 line.",
        },
        {
            "type": "response.output_item.done",
            "sequence_number": 6,
            "output_index": 0,
            "item": {"type": "reasoning", "id": "rs_1", "summary": []},
        },
        {
            "type": "response.output_item.added",
            "sequence_number": 7,
            "output_index": 1,
            "item": {"type": "message", "id": "msg_1", "role": "assistant", "content": []},
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 8,
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "delta": "Hi",
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 9,
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "delta": " there.",
        },
        {
            "type": "response.output_text.done",
            "sequence_number": 10,
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "text": "Hi there.",
        },
        {"type": "response.output_item.added", "sequence_number": 11, "output_index": 2, "item": FC},
        {
            "type": "response.function_call_arguments.delta",
            "sequence_number": 12,
            "item_id": "fc_1",
            "output_index": 2,
            "delta": '{"city":',
        },
        {
            "type": "response.output_item.done",
            "sequence_number": 13,
            "output_index": 2,
            "item": {**FC, "arguments": '{"city": "Paris"}'},
        },
        {"type": "response.completed", "sequence_number": 14, "response": _resp(usage=USAGE)},
    )
    + b"data: [DONE]\n\n"
)
EXPECTED: list[DecodedItem] = [
    ThinkingEvent("First."),
    ThinkingEvent("\n\n"),
    ThinkingEvent("Second \u2028 line."),
    TextEvent("Hi"),
    TextEvent(" there."),
    ToolCallEvent("call_1", "get_weather", {"city": "Paris"}),
    Finished(
        finish_reason="tool_calls",
        usage=Usage(input_tokens=1200, output_tokens=80, cache_read_tokens=1024),
        model="gpt-5-2025",
    ),
]


def _decode(data: bytes, step: int | None = None) -> list[DecodedItem]:
    decoder = OpenAIResponsesDialect().stream_decoder()
    step = step or len(data) or 1
    items: list[DecodedItem] = []
    for i in range(0, len(data), step):
        items += decoder.feed(data[i : i + step])
    return items + decoder.close()


@pytest.mark.parametrize("step", [None, 1, 7])
def test_the_stream_decodes_at_every_split(step: int | None) -> None:
    assert _decode(STREAM, step) == EXPECTED


def test_nothing_is_emitted_before_its_event_is_whole() -> None:
    decoder = OpenAIResponsesDialect().stream_decoder()
    delta = _sse({"type": "response.output_text.delta", "delta": "Hi", "item_id": "m", "output_index": 0})
    assert decoder.feed(delta[:-1]) == []
    assert decoder.feed(delta[-1:]) == [TextEvent("Hi")]


@pytest.mark.parametrize(
    ("reason", "finish"), [("max_output_tokens", "length"), ("content_filter", "content_filter")]
)
def test_an_incomplete_response_finishes_with_its_reason(reason: str, finish: str) -> None:
    data = _sse(
        {"type": "response.output_text.delta", "delta": "Hi"},
        {
            "type": "response.incomplete",
            "response": _resp("incomplete", incomplete_details={"reason": reason}),
        },
    )
    items = _decode(data)
    assert isinstance(items[-1], Finished) and items[-1].finish_reason == finish


@pytest.mark.parametrize(
    ("event", "kind", "retry_after"),
    [
        (
            {
                "type": "response.failed",
                "response": _resp("failed", error={"code": "server_error", "message": "boom"}),
            },
            Failure.TRANSIENT,
            None,
        ),
        (
            {
                "type": "response.failed",
                "response": _resp(
                    "failed",
                    error={
                        "code": "rate_limit_exceeded",
                        "message": "Rate limit reached. Please try again in 20s.",
                    },
                ),
            },
            Failure.RATE_LIMITED,
            20.0,
        ),
        (
            {
                "type": "response.failed",
                "response": _resp("failed", error={"code": "insufficient_quota", "message": "no"}),
            },
            Failure.QUOTA_EXHAUSTED,
            None,
        ),
        (
            {
                "type": "response.failed",
                "response": _resp("failed", error={"code": "invalid_prompt", "message": "no"}),
            },
            Failure.CONTENT_FILTER,
            None,
        ),
        (
            {
                "type": "response.failed",
                "response": _resp("failed", error={"code": "context_length_exceeded", "message": "long"}),
            },
            Failure.CONTEXT_TOO_LONG,
            None,
        ),
        (
            {"type": "error", "code": "server_error", "message": "flat", "param": None},
            Failure.TRANSIENT,
            None,
        ),
        (
            {
                "type": "error",
                "sequence_number": 2,
                "error": {
                    "type": "too_many_requests",
                    "code": "too_many_requests",
                    "message": "Too Many Requests",
                },
            },
            Failure.RATE_LIMITED,
            None,
        ),
        (
            {"type": "error", "code": "invalid_request_error", "message": "bad", "param": "input"},
            Failure.TRANSIENT,  # inside a stream the request was accepted: the answer broke
            None,
        ),
    ],
)
def test_failures_inside_the_stream(event: dict[str, Any], kind: Failure, retry_after: float | None) -> None:
    decoder = OpenAIResponsesDialect().stream_decoder()
    assert decoder.feed(_sse({"type": "response.output_text.delta", "delta": "Hi"})) == [TextEvent("Hi")]
    with pytest.raises(UpstreamError) as info:
        decoder.feed(_sse(event))
    assert (info.value.kind, info.value.retry_after) == (kind, retry_after)


@pytest.mark.parametrize(
    "data",
    [
        _sse({"type": "response.output_text.delta", "delta": "Hi"}),  # EOF without a terminal event
        b"",
        _sse({"type": "response.created", "response": _resp("in_progress")}) + b"data: [DONE]\n\n",
    ],
)
def test_a_stream_without_its_terminal_event_is_truncated(data: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        _decode(data)
    assert info.value.kind is Failure.TRANSIENT and "truncated" in info.value.message


@pytest.mark.parametrize(
    "data",
    [
        b'event: response.output_text.delta\ndata: {"type":"response.output_te\n\n',
        b"data: [1, 2]\n\n",
        _sse({"type": "response.completed"}),  # no response
        _sse({"type": "response.output_item.done", "item": {**FC, "arguments": "{oops"}}),
    ],
)
def test_malformed_events_fail_the_stream(data: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        _decode(data)
    assert info.value.kind is Failure.TRANSIENT


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "retry_after"),
    [
        (
            429,
            {"error": {"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "slow"}},
            {"retry-after": "7"},
            Failure.RATE_LIMITED,
            7.0,
        ),
        (
            429,
            {"error": {"type": "insufficient_quota", "code": "insufficient_quota", "message": "pay"}},
            {},
            Failure.QUOTA_EXHAUSTED,
            None,
        ),
        (
            400,
            {
                "error": {
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                    "message": "long",
                }
            },
            {},
            Failure.CONTEXT_TOO_LONG,
            None,
        ),
        (
            400,
            {"error": {"type": "invalid_request_error", "code": None, "message": "bad"}},
            {},
            Failure.BAD_REQUEST,
            None,
        ),
        (
            404,
            {"error": {"type": "invalid_request_error", "code": "model_not_found", "message": "no"}},
            {},
            Failure.NOT_FOUND,
            None,
        ),
        (
            401,
            {"error": {"type": "invalid_request_error", "code": "invalid_api_key", "message": "key"}},
            {},
            Failure.AUTH,
            None,
        ),
        (503, {"error": {"type": "server_error", "message": "overloaded"}}, {}, Failure.OVERLOADED, None),
        (500, {"error": {"type": "server_error", "message": "oops"}}, {}, Failure.TRANSIENT, None),
    ],
)
def test_http_errors_are_classified(
    status: int, body: dict[str, Any], headers: dict[str, str], kind: Failure, retry_after: float | None
) -> None:
    err = OpenAIResponsesDialect().classify_error(status, headers, json.dumps(body).encode(), NOW)
    assert (err.kind, err.retry_after, err.status) == (kind, retry_after, status)


def test_the_api_and_its_preset_are_configured() -> None:
    cfg = parse_config(
        '[providers.openai-responses]\n[providers.mine]\napi = "openai-responses"\nbase_url = "http://127.0.0.1:9/v1"'
    )
    r = resolve_provider(cfg, "openai-responses", {"OPENAI_API_KEY": "k"})
    assert (r.api, r.base_url, r.key_source) == (
        "openai-responses",
        "https://api.openai.com/v1",
        "env OPENAI_API_KEY",
    )
    assert PRESETS["openai-responses"].api == "openai-responses"
    unkeyed = resolve_provider(cfg, "openai-responses", {})
    assert unkeyed.disabled_reason == "no API key (set OPENAI_API_KEY)"
    assert resolve_provider(cfg, "mine", {}).disabled_reason == ""  # loopback: no key needed


# ================================================================ the upstream dialect against the simulator


async def _round_trip(sim: Simulator, request: ChatRequest) -> list[DecodedItem]:
    dialect = OpenAIResponsesDialect()
    req = dialect.build_chat(request, "sim-model", Endpoint(base_url=sim.base_url, api_key="k"), NOW)
    decoder = dialect.stream_decoder()
    items: list[DecodedItem] = []
    async with (
        httpx.AsyncClient(timeout=5, trust_env=False) as client,
        client.stream(req.method, req.url, headers=req.headers, content=req.body) as resp,
    ):
        assert resp.status_code == 200, await resp.aread()
        async for chunk in resp.aiter_bytes():
            items += decoder.feed(chunk)
    return items + decoder.close()


async def test_a_whole_conversation_round_trips_through_the_simulator() -> None:
    async with open_simulator(dialect="openai-responses", text=ANSWER, thinking="Let me think.") as sim:
        # (Without tools: with them, the simulator answers a user's last words with a call.)
        items = await _round_trip(
            sim, msgspec.structs.replace(CONVERSATION, tools=[], tool_choice=None, max_tokens=None)
        )
        seen = sim.requests[-1].conversation
        assert seen is not None and seen["system"] == "You are terse."
        assert [m["role"] for m in seen["messages"]] == ["user", "assistant", "user"]
        kinds = [[p["type"] for p in m["parts"]] for m in seen["messages"]]
        assert kinds == [["text", "image"], ["text", "tool_call"], ["tool_result", "text"]]
        call = seen["messages"][1]["parts"][1]
        assert (call["id"], call["arguments"]) == ("call_1", {"city": "Paris"})
        assert "".join(i.text for i in items if isinstance(i, ThinkingEvent)) == "Let me think."
        assert "".join(i.text for i in items if isinstance(i, TextEvent)) == ANSWER
        finished = items[-1]
        assert isinstance(finished, Finished) and finished.finish_reason == "stop"
        assert finished.usage.output_tokens == len(ANSWER.split()) + 3

        tools = await _round_trip(
            sim, ChatRequest(messages=[Message("user", "Weather?")], tools=CONVERSATION.tools)
        )
        assert [i for i in tools if isinstance(i, ToolCallEvent)] == [
            ToolCallEvent("call_sim_2", "get_weather", {"city": "Paris"})
        ]
        assert isinstance(tools[-1], Finished) and tools[-1].finish_reason == "tool_calls"

        sim.push_fault(Fault(kind="inband_error_after", after_chunks=2, code="rate_limit_exceeded"))
        with pytest.raises(UpstreamError) as info:
            await _round_trip(sim, ChatRequest(messages=[Message("user", "hi")]))
        assert info.value.kind is Failure.RATE_LIMITED
        sim.push_fault(Fault(kind="malformed_after", after_chunks=2))
        with pytest.raises(UpstreamError):
            await _round_trip(sim, ChatRequest(messages=[Message("user", "hi")]))


# ================================================================ end to end: the official SDK through the front door

# (simulator dialect, the member's api)
DIALECTS = [
    ("openai", "openai"),
    ("anthropic", "anthropic"),
    ("bedrock", "bedrock"),
    ("gemini", "gemini"),
    ("openai-responses", "openai-responses"),
]


def door_config(sims: dict[str, Simulator], api: str) -> str:
    lines = [f"provider_priority = {list(sims)!r}".replace("'", '"'), FAST]
    for pid, sim in sims.items():
        lines += [
            f"[providers.{pid}]",
            f'api = "{api}"',
            f'base_url = "{sim.base_url}"',
            f'models = ["{MODEL}"]',
        ]
        lines.append('region = "us-east-1"' if api == "bedrock" else f'api_key = "sk-test-{pid}-0123456789"')
    return "\n".join(lines) + '\n[http]\nlisten = "127.0.0.1:0"\n'


@dataclass
class Door:
    sims: dict[str, Simulator]
    server: Server
    url: str
    token: str

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.token, max_retries=0, timeout=10)

    def http(self) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {self.token}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10, trust_env=False)


@asynccontextmanager
async def open_door(
    short_dir: Path, dialect: str = "openai", api: str = "openai", thinking: str = ""
) -> AsyncIterator[Door]:
    async with trio.open_nursery() as nursery:
        sims: dict[str, Simulator] = {}
        for name in ("first", "second"):
            sims[name] = Simulator(dialect=dialect, models=[MODEL], text=ANSWER, name=name, thinking=thinking)
            await nursery.start(sims[name].run)
        server = await open_daemon(parse_config(door_config(sims, api)), short_dir / "d.sock", nursery)
        gw = server.gateway
        assert gw is not None and gw.address
        yield Door(sims, server, f"http://{gw.address}", gw.token)
        nursery.cancel_scope.cancel()


async def in_thread(fn: Callable[[], T]) -> T:
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(fn)


TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}]


@pytest.mark.parametrize(("dialect", "api"), DIALECTS, ids=[d for d, _ in DIALECTS])
async def test_the_sdk_survives_a_mid_stream_fault_on_every_dialect(
    short_dir: Path, dialect: str, api: str
) -> None:
    async with open_door(short_dir, dialect, api) as door:
        first, second = door.sims["first"], door.sims["second"]

        def cut(sim: Simulator = first) -> None:
            sim.push_fault(Fault(kind="reset_after", after_chunks=3))

        def run() -> dict[str, Any]:
            got: dict[str, Any] = {}
            with door.client() as client:
                cut()
                raw = client.responses.with_raw_response.create(model=MODEL, input="hi")
                got["whole"], got["raw"] = raw.parse(), raw
                cut()
                with client.responses.stream(model=MODEL, input="hi") as s:
                    got["events"] = list(s)
                    got["streamed"] = s.get_final_response()
                # A function call, then its output in a second (streamed, cut) request.
                call = client.responses.create(model=MODEL, input="Weather in Paris?", tools=TOOLS)
                got["call"] = call
                fc = next(o for o in call.output if o.type == "function_call")
                cut()
                with client.responses.stream(
                    model=MODEL,
                    tools=TOOLS,
                    input=[
                        {"role": "user", "content": "Weather in Paris?"},
                        {
                            "type": "function_call",
                            "call_id": fc.call_id,
                            "name": fc.name,
                            "arguments": fc.arguments,
                        },
                        {"type": "function_call_output", "call_id": fc.call_id, "output": "21 C and sunny"},
                    ],
                ) as s:
                    got["after_call"] = s.get_final_response()
                # The same turn through previous_response_id: only the output is sent. It goes
                # back to the member that finished the conversation's last turn (session
                # affinity): the second, so that is where it is cut this time.
                cut(second)
                got["previous"] = client.responses.create(
                    model=MODEL,
                    tools=TOOLS,
                    previous_response_id=call.id,
                    input=[
                        {"type": "function_call_output", "call_id": fc.call_id, "output": "21 C and sunny"}
                    ],
                    stream=False,
                )
            return got

        got = await in_thread(run)
        whole = got["whole"]
        assert whole.output_text == ANSWER and whole.status == "completed"
        assert got["raw"].headers["x-combined-models-provider"] == "second"  # who finished it
        assert whole.usage.output_tokens > 0
        events = got["events"]
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
        assert got["streamed"].output_text == ANSWER
        (fc,) = [o for o in got["call"].output if o.type == "function_call"]
        assert fc.name == "get_weather" and json.loads(fc.arguments) == {"city": "Paris"}
        assert got["after_call"].output_text == ANSWER
        assert got["previous"].output_text == ANSWER
        assert got["previous"].previous_response_id == got["call"].id
        # Every cut struck, and the other member finished each of those answers.
        assert [r.outcome for r in first.requests if r.fault] == ["reset"] * 3
        assert [r.outcome for r in second.requests if r.fault] == ["reset"]
        # The member that finished the last answer saw the whole conversation behind previous_response_id.
        seen = first.requests[-1].conversation
        assert seen is not None
        parts = [p["type"] for m in seen["messages"] for p in m["parts"]]
        assert parts[:3] == ["text", "tool_call", "tool_result"]


async def test_a_codex_shaped_turn_keeps_claudes_signed_thinking(short_dir: Path) -> None:
    """What Codex sends (store false, the whole history each turn, reasoning replayed with its
    encrypted content, tools it runs itself among them), against Claude with thinking."""
    think = "The user wants the weather."
    async with open_door(short_dir, "anthropic", "anthropic", thinking=think) as door, door.http() as http:
        headers = {"originator": "codex_cli_rs", "session_id": "thread-1", "accept": "text/event-stream"}
        base: dict[str, Any] = {
            "model": MODEL,
            "instructions": "You are a coding agent.",
            "tools": [
                {"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": False},
                {"type": "web_search", "external_web_access": False},
            ],
            "tool_choice": "auto",
            "parallel_tool_calls": False,
            "reasoning": {"effort": "medium", "summary": "auto"},
            "store": False,
            "stream": True,
            "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "thread-1",
            "text": {"verbosity": "low"},
        }
        user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]}
        r = await http.post("/v1/responses", json={**base, "input": [user]}, headers=headers)
        done = [d["item"] for n, d in _events(r.content) if n == "response.output_item.done"]
        assert [i["type"] for i in done] == ["reasoning", "function_call"]
        reasoning, call = done
        assert reasoning["summary"] == [{"type": "summary_text", "text": think}]
        assert reasoning["encrypted_content"].startswith(rsp.SIGNATURE_PREFIX)
        # Codex replays the items without their ids, then the tool's output.
        replay = [
            user,
            {k: v for k, v in reasoning.items() if k not in ("id", "status")},
            {k: v for k, v in call.items() if k not in ("id", "status")},
            {"type": "function_call_output", "call_id": call["call_id"], "output": "21 C"},
        ]
        r = await http.post("/v1/responses", json={**base, "input": replay}, headers=headers)
        events = _events(r.content)
        assert events[-1][0] == "response.completed"
        assert "".join(d["delta"] for n, d in events if n == "response.output_text.delta") == ANSWER
        seen = door.sims["first"].requests[-1].conversation
        assert seen is not None and seen["system"] == "You are a coding agent."
        thinking = seen["messages"][1]["parts"][0]
        assert thinking == {"type": "thinking", "text": think, "signature": signature_of(think)}
        assert door.sims["second"].statistics().chat_requests == 0


async def test_an_unknown_previous_response_id_is_a_clear_400(short_dir: Path) -> None:
    async with open_door(short_dir) as door:

        def run() -> tuple[openai.BadRequestError, openai.BadRequestError]:
            with door.client() as client:
                with pytest.raises(openai.BadRequestError) as unknown:
                    client.responses.create(model=MODEL, input="hi", previous_response_id="resp_nope")
                unkept = client.responses.create(model=MODEL, input="hi", store=False)
                with pytest.raises(openai.BadRequestError) as not_stored:
                    client.responses.create(model=MODEL, input="more", previous_response_id=unkept.id)
            return unknown.value, not_stored.value

        unknown, not_stored = await in_thread(run)
        for err in (unknown, not_stored):
            assert err.status_code == 400
            body: Any = err.body
            assert body["type"] == "invalid_request_error" and body["param"] == "previous_response_id"
            assert "not found" in body["message"]
        assert door.sims["first"].statistics().chat_requests == 1  # neither went upstream


async def test_when_every_member_cuts_the_stream_ends_with_response_failed(short_dir: Path) -> None:
    async with open_door(short_dir) as door:
        door.sims["second"].push_fault(Fault(kind="status", status=500, times=-1))
        door.sims["first"].push_fault(Fault(kind="reset_after", after_chunks=3))
        async with door.http() as http:
            r = await http.post("/v1/responses", json={"model": MODEL, "input": "hi", "stream": True})
        assert r.status_code == 200
        events = _events(r.content)
        name, data = events[-1]
        assert name == "response.failed" and data["response"]["status"] == "failed"
        assert data["response"]["error"]["code"] == "server_error"
        assert "response.completed" not in [n for n, _ in events]

        door.sims["first"].push_fault(Fault(kind="reset_after", after_chunks=3))

        def run() -> list[Any]:
            with door.client() as client, client.responses.create(model=MODEL, input="hi", stream=True) as s:
                return list(s)

        sdk_events = await in_thread(run)
        assert sdk_events[-1].type == "response.failed"
        assert sdk_events[-1].response.error.code == "server_error"


async def test_the_paths_answer_head_and_options_like_the_others(short_dir: Path) -> None:
    async with open_door(short_dir) as door, door.http() as http:
        for path in ("/v1/responses", "/responses"):
            r = await http.options(path)
            assert (r.status_code, r.headers["allow"]) == (204, "POST, OPTIONS")
            r = await http.head(path)
            assert (r.status_code, r.headers["allow"]) == (405, "POST, OPTIONS")
            r = await http.get(path)
            assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
        r = await http.post("/responses", json={"model": MODEL, "input": "hi"})
        assert r.status_code == 200 and r.json()["output"][0]["content"][0]["text"] == ANSWER
        r = await http.post("/v1/responses", content=b"{")
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = await http.post("/v1/responses", json={"model": "no-such-model", "input": "hi"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = await httpx.AsyncClient(trust_env=False).post(f"{door.url}/v1/responses", json={})
        assert r.status_code == 401


async def test_openai_responses_members_serve_the_other_front_doors(short_dir: Path) -> None:
    """Members speaking the Responses API behind the Chat Completions and Messages doors, with a cut."""
    async with open_door(short_dir, "openai-responses", "openai-responses") as door:
        first = door.sims["first"]

        def run() -> tuple[str, str]:
            first.push_fault(Fault(kind="reset_after", after_chunks=3))
            with (
                door.client() as client,
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
                ) as s,
            ):
                chat = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
            first.push_fault(Fault(kind="reset_after", after_chunks=3))
            with anthropic.Anthropic(
                base_url=door.url, api_key=door.token, max_retries=0, timeout=10
            ) as claude:
                message = claude.messages.create(
                    model=MODEL, max_tokens=300, messages=[{"role": "user", "content": "hi"}]
                )
            return chat, "".join(b.text for b in message.content if b.type == "text")

        chat, messages = await in_thread(run)
        assert chat == ANSWER and messages == ANSWER
        assert [r.outcome for r in first.requests] == ["reset", "reset"]
        body = door.sims["second"].requests[-1].body
        assert body["store"] is False and body["stream"] is True


async def test_the_official_sdk_reads_the_simulator_directly() -> None:
    """The simulator speaks the Responses API well enough for the SDK itself (its own check)."""
    async with open_simulator(dialect="openai-responses", text=ANSWER, thinking="Hmm.") as sim:

        def run() -> Any:
            with openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0, timeout=10) as client:
                with client.responses.stream(model="sim-model", input="hi", tools=TOOLS) as s:
                    call = s.get_final_response()
                return call, client.responses.create(model="sim-model", input="hi")

        call, whole = await in_thread(run)
        assert [o.type for o in call.output] == ["reasoning", "function_call"]
        assert call.output[1].parsed_arguments == {"city": "Paris"}  # strict tools are parsed
        assert whole.output_text == ANSWER and whole.usage.output_tokens_details.reasoning_tokens == 1


def test_msgspec_keeps_what_the_store_keeps() -> None:
    """The store's encoding round-trips every kind of part."""
    messages = [*CONVERSATION.messages, Message("user", [DocumentPart(data="JVBE", title="a.pdf")])]
    assert msgspec.json.decode(msgspec.json.encode(messages), type=list[Message]) == messages

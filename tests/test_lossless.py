"""What real clients send reaches the members that can take it (issue 12, point 5).

Tables first: one Anthropic front-door body -> the neutral request -> each dialect's wire
body, and the capability check that skips a member which cannot honour a required feature.
Then the official SDK through the front door against simulated providers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import pytest
import trio

from combined_models.capabilities import Capabilities, default_capabilities
from combined_models.chat import (
    ChatRequest,
    FailoverEvent,
    Finished,
    ImagePart,
    Message,
    TextEvent,
    TextPart,
    ToolCallPart,
    ToolResultPart,
)
from combined_models.client.aio import open_client
from combined_models.config import parse_config
from combined_models.daemon import open_daemon
from combined_models.daemon.continuation import unsupported
from combined_models.daemon.dialects.anthropic import AnthropicDialect
from combined_models.daemon.dialects.base import Endpoint
from combined_models.daemon.dialects.bedrock import converse_body
from combined_models.daemon.dialects.copilot import wants_vision
from combined_models.daemon.dialects.gemini import GeminiDialect
from combined_models.daemon.dialects.openai import OpenAIDialect
from combined_models.daemon.dialects.openai_responses import OpenAIResponsesDialect
from combined_models.daemon.errors import Failure
from combined_models.daemon.gateway import anthropic as ant
from combined_models.daemon.gateway import openai as oai
from combined_models.daemon.gateway.common import BadRequest
from combined_models.limits import MAX_DEPTH, TooDeep, check_request
from combined_models.simulator import Fault, Simulator

from .conftest import FrontDoor

T = TypeVar("T")

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
CLAUDE = "claude-sonnet-4-5-20250929"
CLAUDE_ON_BEDROCK = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
WEB_SEARCH = {
    "type": "web_search_20250305",
    "name": "web_search",
    "max_uses": 5,
    "allowed_domains": ["a.org"],
}
CONTEXT_MANAGEMENT = {
    "edits": [
        {
            "type": "clear_tool_uses_20250919",
            "trigger": {"type": "input_tokens", "value": 100000},
            "keep": {"type": "tool_uses", "value": 3},
        }
    ]
}
SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}}
EP = Endpoint(base_url="https://upstream.example", api_key="k")


def _body(**extra: Any) -> dict[str, Any]:
    """What Claude Code sends after a tool answered with a screenshot."""
    return {
        "model": "m",
        "max_tokens": 1000,
        "messages": [
            {"role": "user", "content": "What is on screen?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {"path": "/"}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [
                            {"type": "text", "text": "Screenshot taken."},
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                            },
                        ],
                        "cache_control": {"type": "ephemeral"},
                    },
                    {"type": "text", "text": "Describe it."},
                ],
            },
        ],
        "tools": [{"name": "shot", "input_schema": SCHEMA}],
        **extra,
    }


FULL = _body(
    temperature=0.3,
    top_p=0.9,
    top_k=40,
    stop_sequences=["END"],
    tool_choice={"type": "auto"},
    metadata={"user_id": "user_abc_session_1"},
)


def _parse(body: dict[str, Any]) -> ChatRequest:
    return ant.parse_messages_request(json.dumps(body).encode()).request


def _wire(dialect: Any, request: ChatRequest, model: str = "m") -> dict[str, Any]:
    out: dict[str, Any] = json.loads(dialect.build_chat(request, model, EP).body)
    return out


# ================================================================ the front door


def test_the_anthropic_front_door_keeps_every_field() -> None:
    request = _parse(
        {**FULL, "tools": [*FULL["tools"], WEB_SEARCH], "context_management": CONTEXT_MANAGEMENT}
    )
    result = request.messages[2].content[0]
    assert result == ToolResultPart(
        tool_call_id="toolu_1",
        content=[TextPart("Screenshot taken."), ImagePart(media_type="image/png", data=PNG)],
        cache="5m",
    )
    assert (request.temperature, request.top_p, request.top_k, request.stop) == (0.3, 0.9, 40, ["END"])
    assert request.tool_choice == "auto"
    assert [t.name for t in request.tools] == ["shot"]
    assert request.server_tools == [WEB_SEARCH]  # as the client wrote it
    assert request.context_management == CONTEXT_MANAGEMENT
    assert request.metadata == {"user_id": "user_abc_session_1"}
    assert request.session == "user_abc_session_1"


@pytest.mark.parametrize(
    ("content", "neutral"),
    [
        ("plain", "plain"),
        ([{"type": "text", "text": "one"}], "one"),  # one text block is plain text
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], [TextPart("a"), TextPart("b")]),
        ([], ""),
    ],
)
def test_tool_result_content_shapes(content: Any, neutral: Any) -> None:
    body = _body()
    body["messages"][2]["content"][0]["content"] = content
    assert _parse(body).messages[2].content[0] == ToolResultPart(
        tool_call_id="toolu_1", content=neutral, cache="5m"
    )


def test_a_replayed_server_tool_turn_is_accepted_and_its_blocks_dropped() -> None:
    body = _body(tools=[WEB_SEARCH])
    body["messages"] = [
        {"role": "user", "content": "News?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "server_tool_use",
                    "id": "srvtoolu_1",
                    "name": "web_search",
                    "input": {"query": "news"},
                },
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                {"type": "text", "text": "Here is the news."},
            ],
        },
        {"role": "user", "content": "More?"},
    ]
    assert _parse(body).messages[1] == Message("assistant", [TextPart("Here is the news.")])


def test_tool_choice_may_name_a_server_tool() -> None:
    request = _parse(_body(tools=[WEB_SEARCH], tool_choice={"type": "tool", "name": "web_search"}))
    assert request.tool_choice == "web_search"
    with pytest.raises(BadRequest) as info:
        _parse(_body(tool_choice={"type": "tool", "name": "web_search"}))
    assert info.value.param == "tool_choice.name"


def test_opaque_fields_are_depth_checked() -> None:
    deep: Any = {}
    for _ in range(MAX_DEPTH + 2):
        deep = {"x": deep}
    with pytest.raises(BadRequest) as info:
        _parse(_body(context_management=deep))
    assert info.value.param == "context_management"
    with pytest.raises(BadRequest) as info:
        _parse(_body(tools=[{**WEB_SEARCH, "user_location": deep}]))
    assert info.value.param == "server_tools[0]"
    with pytest.raises(TooDeep):
        check_request(ChatRequest(messages=[], server_tools=[deep]))


def test_the_openai_front_door_maps_tool_content_arrays_to_blocks() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "c1",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ],
    }
    request = oai.parse_chat_request(json.dumps(body).encode()).request
    assert request.messages[2].content == [
        ToolResultPart(tool_call_id="c1", content=[TextPart("a"), TextPart("b")])
    ]


# ================================================================ each dialect's wire body

REQUEST = _parse(FULL)


def test_anthropic_members_get_everything() -> None:
    request = msgspec.structs.replace(
        REQUEST,
        server_tools=[WEB_SEARCH],
        context_management=CONTEXT_MANAGEMENT,
        anthropic_beta=["context-management-2025-06-27", "web-search-2025-03-05"],
    )
    built = AnthropicDialect().build_chat(request, "m", EP)
    body = json.loads(built.body)
    assert body["messages"][2]["content"] == [
        {
            "type": "tool_result",
            "tool_use_id": "toolu_1",
            "content": [
                {"type": "text", "text": "Screenshot taken."},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            ],
            "cache_control": {"type": "ephemeral"},
        },
        {"type": "text", "text": "Describe it."},
    ]
    assert (body["temperature"], body["top_p"], body["top_k"], body["stop_sequences"]) == (
        0.3,
        0.9,
        40,
        ["END"],
    )
    assert body["tool_choice"] == {"type": "auto"}
    assert body["tools"] == [{"name": "shot", "input_schema": SCHEMA}, WEB_SEARCH]
    assert body["context_management"] == CONTEXT_MANAGEMENT
    assert body["metadata"] == {"user_id": "user_abc_session_1"}
    assert built.headers["anthropic-beta"] == "context-management-2025-06-27,web-search-2025-03-05"


def test_anthropic_beta_flags_join_the_providers_own() -> None:
    ep = Endpoint(base_url="https://x", headers={"anthropic-beta": "oauth-2025-04-20"})
    request = ChatRequest(messages=[Message("user", "hi")], anthropic_beta=["oauth-2025-04-20", "b"])
    assert AnthropicDialect().build_chat(request, "m", ep).headers["anthropic-beta"] == "oauth-2025-04-20,b"
    plain = AnthropicDialect().build_chat(ChatRequest(messages=[Message("user", "hi")]), "m", EP)
    assert "anthropic-beta" not in plain.headers


def test_thinking_leaves_top_k_out_for_claude() -> None:
    request = ChatRequest(messages=[Message("user", "hi")], top_k=40, thinking_budget=2048, max_tokens=8000)
    assert "top_k" not in _wire(AnthropicDialect(), request)
    assert "top_k" not in converse_body(request, CLAUDE_ON_BEDROCK).get("additionalModelRequestFields", {})


def test_bedrock_members_get_result_blocks_and_top_k_for_claude() -> None:
    body = converse_body(REQUEST, CLAUDE_ON_BEDROCK)
    result, point, text = body["messages"][2]["content"]
    assert result == {
        "toolResult": {
            "toolUseId": "toolu_1",
            "content": [
                {"text": "Screenshot taken."},
                {"image": {"format": "png", "source": {"bytes": PNG}}},
            ],
            "status": "success",
        }
    }
    assert point == {"cachePoint": {"type": "default"}}  # after the result, never inside it
    assert text == {"text": "Describe it."}
    assert body["inferenceConfig"] == {
        "maxTokens": 1000,
        "temperature": 0.3,
        "topP": 0.9,
        "stopSequences": ["END"],
    }
    assert body["toolConfig"]["toolChoice"] == {"auto": {}}
    assert body["additionalModelRequestFields"] == {"top_k": 40}
    assert "context_management" not in json.dumps(body) and "user_abc" not in json.dumps(body)
    # Another vendor's model on Bedrock names it differently or not at all: left out.
    assert "additionalModelRequestFields" not in converse_body(REQUEST, "amazon.nova-pro-v1:0")


def test_openai_members_get_the_text_in_the_tool_message_and_the_image_after() -> None:
    body = _wire(OpenAIDialect(), REQUEST)
    assert body["messages"][2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Screenshot taken."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "text", "text": "Describe it."},
            ],
        },
    ]
    assert (body["temperature"], body["top_p"], body["stop"], body["tool_choice"]) == (
        0.3,
        0.9,
        ["END"],
        "auto",
    )
    assert "top_k" not in body and "metadata" not in body
    assert wants_vision(REQUEST)  # Copilot's vision header, for an image inside a result too


def test_gemini_members_get_the_image_as_a_part_after_the_function_response() -> None:
    body = _wire(GeminiDialect(), REQUEST)
    assert body["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "shot", "response": {"content": "Screenshot taken."}}},
            {"inlineData": {"mimeType": "image/png", "data": PNG}},
            {"text": "Describe it."},
        ],
    }
    assert body["generationConfig"] == {
        "maxOutputTokens": 1000,
        "temperature": 0.3,
        "topP": 0.9,
        "topK": 40,
        "stopSequences": ["END"],
    }
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


def test_responses_members_get_the_text_as_output_and_the_image_after() -> None:
    body = _wire(OpenAIResponsesDialect(), msgspec.structs.replace(REQUEST, stop=None))
    assert body["input"][2:] == [
        {"type": "function_call_output", "call_id": "toolu_1", "output": "Screenshot taken."},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "auto"},
                {"type": "input_text", "text": "Describe it."},
            ],
        },
    ]
    assert (body["temperature"], body["top_p"], body["tool_choice"]) == (0.3, 0.9, "auto")
    assert "top_k" not in body


# ================================================================ who can serve what


@pytest.mark.parametrize(
    ("api", "model", "skipped"),
    [
        ("anthropic", CLAUDE, False),
        ("bedrock", CLAUDE_ON_BEDROCK, True),
        ("openai", "gpt-4.1", True),
        ("gemini", "gemini-2.5-pro", True),
        ("openai-responses", "gpt-5", True),
        ("copilot", "claude-sonnet-4.5", True),
    ],
)
def test_server_tools_skip_every_member_but_anthropic(api: str, model: str, skipped: bool) -> None:
    request = ChatRequest(messages=[Message("user", "news?")], server_tools=[WEB_SEARCH])
    expected = (Failure.UNSUPPORTED, "server tools (web_search) run only at Anthropic") if skipped else None
    assert unsupported(request, default_capabilities(api, model)) == expected


def test_hints_never_skip_a_member() -> None:
    request = ChatRequest(
        messages=[Message("user", "hi")],
        context_management=CONTEXT_MANAGEMENT,
        anthropic_beta=["context-1m-2025-08-07"],
        metadata={"user_id": "u"},
        top_k=5,
    )
    assert unsupported(request, Capabilities()) is None


def test_an_image_inside_a_tool_result_needs_a_member_that_takes_images() -> None:
    request = ChatRequest(
        messages=[
            Message("assistant", [ToolCallPart("t", "shot", {})]),
            Message("user", [ToolResultPart(tool_call_id="t", content=[ImagePart(data=PNG)])]),
        ]
    )
    assert unsupported(request, Capabilities(images=False)) == (
        Failure.UNSUPPORTED,
        "this model does not accept images",
    )
    big = msgspec.structs.replace(request, messages=[request.messages[0], _with_image("A" * 40_000)])
    assert unsupported(big, Capabilities(context_window=5000)) is None  # an image is not its base64 text


def _with_image(data: str) -> Message:
    return Message("user", [ToolResultPart(tool_call_id="t", content=[ImagePart(data=data)])])


# ================================================================ Anthropic streams with a server tool


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def test_a_web_search_stream_gives_its_text_and_pause_turn_is_no_error() -> None:
    raw = _sse(
        {"type": "message_start", "message": {"model": CLAUDE, "usage": {"input_tokens": 10}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {
                "type": "server_tool_use",
                "id": "srvtoolu_1",
                "name": "web_search",
                "input": {},
            },
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": '{"query"'},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": ':"x"}'},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "web_search_tool_result",
                "tool_use_id": "srvtoolu_1",
                "content": [{"type": "web_search_result", "url": "https://a.org", "title": "A"}],
            },
        },
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "A says hi."}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "pause_turn"}, "usage": {"output_tokens": 5}},
        {"type": "message_stop"},
    )
    dec = AnthropicDialect().stream_decoder()
    items = dec.feed(raw) + dec.close()
    assert [i for i in items if not isinstance(i, Finished)] == [TextEvent("A says hi.")]
    finished = items[-1]
    assert isinstance(finished, Finished) and finished.finish_reason == "stop"


# ================================================================ end to end, with the official SDK


@asynccontextmanager
async def stack(
    short_dir: Path, sims: dict[str, Simulator], config: Callable[[dict[str, Simulator]], str]
) -> AsyncIterator[FrontDoor]:
    async with trio.open_nursery() as nursery:
        for sim in sims.values():
            await nursery.start(sim.run)
        server = await open_daemon(parse_config(config(sims), "test config"), short_dir / "d.sock", nursery)
        gw = server.gateway
        assert gw is not None and gw.address
        yield FrontDoor(sims, server, f"http://{gw.address}", gw.token)
        nursery.cancel_scope.cancel()


FAILOVER = """
[failover]
first_token_timeout = 5.0
idle_timeout = 5.0
retry_backoff = 0.01
[http]
listen = "127.0.0.1:0"
"""


async def in_thread(fn: Callable[[], T]) -> T:
    with trio.fail_after(20):
        return await trio.to_thread.run_sync(fn)


def _claude_config(sims: dict[str, Simulator]) -> str:
    return f"""
provider_priority = ["anthropic", "bedrock"]
[providers.anthropic]
api = "anthropic"
base_url = "{sims["anthropic"].base_url}"
api_key = "sk-ant-test-0123456789"
[providers.bedrock]
api = "bedrock"
base_url = "{sims["bedrock"].base_url}"
api_key = "bedrock-test-key"
region = "us-east-1"
[combined.claude]
members = ["anthropic/{CLAUDE}", "bedrock/{CLAUDE_ON_BEDROCK}"]
{FAILOVER}"""


async def test_a_tool_result_with_an_image_reaches_anthropic_and_bedrock_intact(short_dir: Path) -> None:
    sims = {
        "anthropic": Simulator(dialect="anthropic", models=[CLAUDE], name="anthropic", text="A cat."),
        "bedrock": Simulator(dialect="bedrock", models=[CLAUDE_ON_BEDROCK], name="bedrock", text="A cat."),
    }
    body = _body(model="claude")
    body["messages"][2]["content"].pop()  # a turn of tool results only: the simulator answers it in text
    kwargs: Any = {k: body[k] for k in ("model", "max_tokens", "messages", "tools")}
    expected_view = [
        {"type": "text", "text": "Screenshot taken."},
        {"type": "image", "media_type": "image/png", "data_length": 70},
    ]
    async with stack(short_dir, sims, _claude_config) as c:
        first = await in_thread(lambda: c.anthropic().messages.create(**kwargs))
        assert first.content[0].type == "text" and first.content[0].text == "A cat."
        got = sims["anthropic"].requests[0]
        assert got.body["messages"][2]["content"] == body["messages"][2]["content"]  # as the client sent it
        assert got.conversation is not None
        assert got.conversation["messages"][2]["parts"][0]["content"] == expected_view

        sims["anthropic"].push_fault(Fault(kind="status", status=529, times=-1))
        second = await in_thread(lambda: c.anthropic().messages.create(**kwargs))
        assert second.content[0].type == "text" and second.content[0].text == "A cat."
        bedrock = sims["bedrock"].requests[0]
        assert bedrock.outcome == "completed"
        assert bedrock.body["messages"][2]["content"][0]["toolResult"]["content"] == [
            {"text": "Screenshot taken."},
            {"image": {"format": "png", "source": {"bytes": PNG}}},
        ]
        assert bedrock.conversation is not None
        assert bedrock.conversation["messages"][2]["parts"][0]["content"] == expected_view


def _smart_config(sims: dict[str, Simulator]) -> str:
    return f"""
provider_priority = ["oai", "anthropic"]
[providers.oai]
api = "openai"
base_url = "{sims["oai"].base_url}"
api_key = "sk-test"
[providers.anthropic]
api = "anthropic"
base_url = "{sims["anthropic"].base_url}"
api_key = "sk-ant-test-0123456789"
[combined.smart]
members = ["oai/gpt-4.1", "anthropic/{CLAUDE}"]
{FAILOVER}"""


async def test_web_search_skips_an_openai_member_and_reaches_anthropic(short_dir: Path) -> None:
    sims = {
        "oai": Simulator(dialect="openai", models=["gpt-4.1"], name="oai", text="Guessing."),
        "anthropic": Simulator(dialect="anthropic", models=[CLAUDE], name="anthropic", text="Found it."),
    }
    betas = "claude-code-20250219, context-management-2025-06-27"
    kwargs: Any = {
        "model": "smart",
        "max_tokens": 500,
        "messages": [{"role": "user", "content": "What is new today?"}],
        "tools": [WEB_SEARCH],
        "extra_body": {"context_management": CONTEXT_MANAGEMENT},
        "extra_headers": {"anthropic-beta": betas},
    }
    async with stack(short_dir, sims, _smart_config) as c:
        answer = await in_thread(lambda: c.anthropic().messages.create(**kwargs))
        assert answer.content[0].type == "text" and answer.content[0].text == "Found it."
        assert sims["oai"].requests == []  # skipped, never asked
        got = sims["anthropic"].requests[0]
        assert got.body["tools"] == [WEB_SEARCH]
        assert got.body["context_management"] == CONTEXT_MANAGEMENT
        assert got.headers["anthropic-beta"] == "claude-code-20250219,context-management-2025-06-27"

        # A stream notes the skip in a comment; the daemon's own events give the reason.
        async with httpx.AsyncClient(base_url=c.url, timeout=10, trust_env=False) as http:
            r = await http.post(
                "/v1/messages",
                headers={"x-api-key": c.token, "anthropic-version": "2023-06-01"},
                json={**{k: kwargs[k] for k in ("model", "max_tokens", "messages", "tools")}, "stream": True},
            )
        assert ": failover from oai to anthropic (unsupported)" in r.text
        assert '"stop_reason":"end_turn"' in r.text and "Found" in r.text
        request = ChatRequest(messages=[Message("user", "What is new today?")], server_tools=[WEB_SEARCH])
        async with open_client(c.server.socket_path) as client:
            events = [e async for e in client.chat("smart", request)]
        notes = [e for e in events if isinstance(e, FailoverEvent)]
        assert [(e.from_, e.to, e.reason, e.message) for e in notes] == [
            ("oai", "anthropic", "unsupported", "server tools (web_search) run only at Anthropic")
        ]
        assert sims["oai"].requests == []

"""Prompt caching end to end: breakpoints from the client reach each member in its own spelling,
and the cache reads and writes come back in each API's own usage shape.

Tables for the pure parts (the neutral model, the dialect builders, usage decoding and
rendering, the simulator's cache), then real clients through the front door against
simulated providers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import msgspec
import openai
import pytest
import trio

from combined_models.chat import (
    ChatRequest,
    DecodedItem,
    DocumentPart,
    Finished,
    ImagePart,
    Message,
    TextPart,
    ThinkingPart,
    Tool,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from combined_models.client.aio import open_client
from combined_models.client.render import render_status
from combined_models.config import parse_config
from combined_models.daemon import open_daemon
from combined_models.daemon.dialects.anthropic import AnthropicDialect
from combined_models.daemon.dialects.base import Endpoint, StreamDecoder
from combined_models.daemon.dialects.bedrock import BedrockDialect, converse_body
from combined_models.daemon.dialects.claude_family import cache_control, keep_last_breakpoints
from combined_models.daemon.dialects.copilot import CopilotDialect
from combined_models.daemon.dialects.gemini import GeminiDialect
from combined_models.daemon.dialects.openai import OpenAIDialect
from combined_models.daemon.gateway import anthropic as ant
from combined_models.daemon.gateway import openai as oai
from combined_models.daemon.gateway.common import BadRequest
from combined_models.protocol import DaemonInfo, ProviderStatus, StatusInfo
from combined_models.simulator import Fault, Simulator, eventstream
from combined_models.simulator.answer import ChatRequest as SimRequest
from combined_models.simulator.conversation import CacheUse, PromptCache, Turn, build_request, text_part
from combined_models.simulator.dialects import get_dialect
from combined_models.simulator.dialects.base import BadRequest as SimBadRequest
from combined_models.simulator.dialects.base import Route

from .conftest import MODEL, FrontDoor, open_stack

T = TypeVar("T")

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
CLAUDE_ON_BEDROCK = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

# Three breakpoints: after the tool, after the second system block (an hour), after the tool result.
CACHED = ChatRequest(
    system=[TextPart("You are terse."), TextPart("Use the tools.", cache="1h")],
    tools=[Tool(name="get_weather", parameters=SCHEMA, cache="5m")],
    messages=[
        Message("user", "Weather in Paris?"),
        Message("assistant", [ToolCallPart("toolu_1", "get_weather", {"city": "Paris"})]),
        Message(
            "user",
            [ToolResultPart(tool_call_id="toolu_1", content="sunny", cache="5m"), TextPart("And tomorrow?")],
        ),
    ],
)
UNMARKED = ChatRequest(
    system="You are terse.\n\nUse the tools.",
    tools=[Tool(name="get_weather", parameters=SCHEMA)],
    messages=[
        Message("user", "Weather in Paris?"),
        Message("assistant", [ToolCallPart("toolu_1", "get_weather", {"city": "Paris"})]),
        Message("user", [ToolResultPart(tool_call_id="toolu_1", content="sunny"), TextPart("And tomorrow?")]),
    ],
)
EPHEMERAL = {"type": "ephemeral"}
DEFAULT_POINT = {"cachePoint": {"type": "default"}}


def body_of(dialect: Any, request: ChatRequest, model: str, endpoint: Endpoint | None = None) -> Any:
    ep = endpoint or Endpoint(base_url="https://example.test", api_key="k", region="us-east-1")
    return json.loads(dialect.build_chat(request, model, ep).body)


# ================================================================ the neutral model


def test_system_text_and_old_constructions() -> None:
    assert ChatRequest(messages=[], system="Be brief.").system_text() == "Be brief."
    assert ChatRequest(messages=[]).system_text() == ""
    assert CACHED.system_text() == "You are terse.\n\nUse the tools."
    assert TextPart("x") == TextPart("x", None)  # positional construction still works


def test_breakpoints_travel_over_the_socket_protocol() -> None:
    request = msgspec.structs.replace(CACHED, cache_key="conversation-1")
    encoded = msgspec.msgpack.encode(request)
    assert msgspec.msgpack.decode(encoded, type=ChatRequest) == request
    # A request from a client that knows nothing of caching still decodes.
    old = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "system": "s"}
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=ChatRequest) == ChatRequest(
        messages=[Message("user", [TextPart("hi")])], system="s"
    )


# ================================================================ Claude's shared rules


@pytest.mark.parametrize(
    ("marked", "kept"),
    [
        ([0, 1, 2], [0, 1, 2]),
        ([0, 1, 2, 3], [0, 1, 2, 3]),
        ([0, 1, 2, 3, 4, 5], [2, 3, 4, 5]),  # the earliest go: the last ones cache the most
        ([], []),
    ],
)
def test_at_most_four_breakpoints_the_last_ones_kept(marked: list[int], kept: list[int]) -> None:
    blocks: list[dict[str, Any]] = [{"n": i} | ({"mark": 1} if i in marked else {}) for i in range(6)]
    keep_last_breakpoints(blocks, "mark")
    assert [b["n"] for b in blocks if "mark" in b] == kept


def test_the_marker_spells_the_ttl_only_when_it_is_not_the_default() -> None:
    assert cache_control("5m") == EPHEMERAL
    assert cache_control("1h") == {"type": "ephemeral", "ttl": "1h"}


# ================================================================ builders: breakpoints -> wire


def test_anthropic_member_gets_cache_control_at_the_same_positions() -> None:
    body = body_of(AnthropicDialect(), CACHED, "claude-sonnet-4-5")
    assert body["tools"] == [{"name": "get_weather", "input_schema": SCHEMA, "cache_control": EPHEMERAL}]
    assert body["system"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Use the tools.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "sunny",
                    "cache_control": EPHEMERAL,
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    # Without markers, nothing changes from before: a plain system string.
    plain = body_of(AnthropicDialect(), UNMARKED, "claude-sonnet-4-5")
    assert plain["system"] == "You are terse.\n\nUse the tools."
    assert "cache_control" not in json.dumps(plain)


@pytest.mark.parametrize(
    ("part", "block"),
    [
        (TextPart("Hi", cache="5m"), {"type": "text", "text": "Hi", "cache_control": EPHEMERAL}),
        (
            ImagePart(media_type="image/png", data="QUJD", cache="1h"),
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"},
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            },
        ),
        (
            DocumentPart(data="JVBE", cache="5m"),
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                "cache_control": EPHEMERAL,
            },
        ),
    ],
)
def test_anthropic_marks_each_kind_of_user_block(part: Any, block: dict[str, Any]) -> None:
    body = body_of(AnthropicDialect(), ChatRequest(messages=[Message("user", [part])]), "claude")
    assert body["messages"] == [{"role": "user", "content": [block]}]  # a marked lone text stays a block


def test_anthropic_keeps_the_last_four_of_more_breakpoints() -> None:
    request = msgspec.structs.replace(
        CACHED,
        messages=[
            *CACHED.messages,
            Message("assistant", [TextPart("Rain.", cache="5m")]),
            Message("user", [TextPart("Sure?", cache="5m")]),
        ],
    )
    body = body_of(AnthropicDialect(), request, "claude")
    assert "cache_control" not in body["tools"][0]  # the earliest of five went
    text = json.dumps(body)
    assert text.count('"cache_control"') == 4


def test_bedrock_member_gets_a_cache_point_after_each_marked_block() -> None:
    body = converse_body(CACHED, CLAUDE_ON_BEDROCK)
    assert body["system"] == [
        {"text": "You are terse."},
        {"text": "Use the tools."},
        {"cachePoint": {"type": "default", "ttl": "1h"}},
    ]
    assert body["toolConfig"]["tools"] == [
        {"toolSpec": {"name": "get_weather", "inputSchema": {"json": SCHEMA}}},
        DEFAULT_POINT,
    ]
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            # Never inside the result's content: after the block.
            {"toolResult": {"toolUseId": "toolu_1", "content": [{"text": "sunny"}], "status": "success"}},
            DEFAULT_POINT,
            {"text": "And tomorrow?"},
        ],
    }
    assert json.dumps(body).count('"cachePoint"') == 3


def test_bedrock_splits_neighbouring_text_at_a_breakpoint() -> None:
    request = ChatRequest(
        messages=[Message("user", [TextPart("a "), TextPart("b", cache="5m"), TextPart(" c")])]
    )
    assert converse_body(request, CLAUDE_ON_BEDROCK)["messages"][0]["content"] == [
        {"text": "a b"},
        DEFAULT_POINT,
        {"text": " c"},
    ]


@pytest.mark.parametrize(
    ("model", "points"),
    [
        (CLAUDE_ON_BEDROCK, 3),
        ("anthropic.claude-3-7-sonnet-20250219-v1:0", 3),
        ("us.amazon.nova-pro-v1:0", 2),  # Nova caches no tools
        ("meta.llama3-3-70b-instruct-v1:0", 0),  # no explicit caching: the markers go
    ],
)
def test_bedrock_cache_points_only_where_the_model_takes_them(model: str, points: int) -> None:
    body = converse_body(CACHED, model)
    assert json.dumps(body).count('"cachePoint"') == points
    assert '"cache"' not in json.dumps(body)  # the working marker never leaks


def test_bedrock_keeps_the_last_four_cache_points() -> None:
    request = msgspec.structs.replace(
        CACHED,
        messages=[*CACHED.messages, Message("user", [TextPart("x", cache="5m"), TextPart("y", cache="5m")])],
    )
    body = converse_body(request, CLAUDE_ON_BEDROCK)
    assert body["toolConfig"]["tools"][-1] != DEFAULT_POINT  # the earliest went
    assert json.dumps(body).count('"cachePoint"') == 4


def test_openai_gets_the_cache_key_and_no_markers() -> None:
    request = msgspec.structs.replace(CACHED, cache_key="conv-7")
    body = body_of(OpenAIDialect(), request, "gpt-5")
    assert body["prompt_cache_key"] == "conv-7"
    assert body["messages"][0] == {"role": "system", "content": "You are terse.\n\nUse the tools."}
    assert "cache_control" not in json.dumps(body)
    assert "prompt_cache_key" not in body_of(OpenAIDialect(), CACHED, "gpt-5")


@pytest.mark.parametrize(
    ("dialect", "options"),
    [(OpenAIDialect(), {"flavour": "openrouter"}), (CopilotDialect(request_id=lambda: "r"), {})],
)
def test_flavours_that_do_not_document_the_cache_key_do_not_get_it(
    dialect: Any, options: dict[str, str]
) -> None:
    request = msgspec.structs.replace(CACHED, cache_key="conv-7")
    body = body_of(
        dialect, request, "openai/gpt-5", Endpoint(base_url="https://x.test", api_key="k", options=options)
    )
    assert "prompt_cache_key" not in body
    assert "cache_control" not in json.dumps(body)  # not a Claude model


def test_openrouter_claude_gets_cache_control_on_content_parts() -> None:
    ep = Endpoint(base_url="https://openrouter.ai/api/v1", api_key="k", options={"flavour": "openrouter"})
    body = body_of(OpenAIDialect(), CACHED, "anthropic/claude-sonnet-4.5", ep)
    assert body["messages"][0] == {
        "role": "system",
        "content": [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Use the tools.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
    }
    assert body["messages"][3] == {
        "role": "tool",
        "tool_call_id": "toolu_1",
        "content": [{"type": "text", "text": "sunny", "cache_control": EPHEMERAL}],
    }
    assert body["messages"][4] == {"role": "user", "content": "And tomorrow?"}
    assert "cache_control" not in json.dumps(body["tools"])  # not documented for tools there


def test_gemini_leaves_the_markers_out() -> None:
    marked = body_of(GeminiDialect(), CACHED, "gemini-2.5-pro")
    assert marked == body_of(GeminiDialect(), UNMARKED, "gemini-2.5-pro")
    assert marked["systemInstruction"] == {"parts": [{"text": "You are terse.\n\nUse the tools."}]}


# ================================================================ usage: decoding and rendering


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def _finished(decoder: StreamDecoder, data: bytes) -> Usage:
    items: list[DecodedItem] = decoder.feed(data) + decoder.close()
    (finished,) = [i for i in items if isinstance(i, Finished)]
    return finished.usage


ANTHROPIC_STREAM = _sse(
    {
        "type": "message_start",
        "message": {
            "model": "claude",
            "usage": {
                "input_tokens": 10,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 20,
                "output_tokens": 1,
            },
        },
    },
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}},
    {"type": "message_stop"},
)


def _bedrock_stream(usage: dict[str, int]) -> bytes:
    return eventstream.event(
        "messageStop", json.dumps({"stopReason": "end_turn"}).encode()
    ) + eventstream.event("metadata", json.dumps({"usage": usage}).encode())


def _openai_stream(usage: dict[str, Any]) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    return f"data: {json.dumps(chunk)}\n\ndata: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode()


WHOLE = Usage(input_tokens=130, output_tokens=5, cache_read_tokens=100, cache_write_tokens=20)


@pytest.mark.parametrize(
    ("decoder", "stream", "usage"),
    [
        # Anthropic and Bedrock count their input without the cached tokens: added.
        (AnthropicDialect().stream_decoder, ANTHROPIC_STREAM, WHOLE),
        (
            BedrockDialect().stream_decoder,
            _bedrock_stream(
                {
                    "inputTokens": 10,
                    "outputTokens": 5,
                    "totalTokens": 135,
                    "cacheReadInputTokens": 100,
                    "cacheWriteInputTokens": 20,
                }
            ),
            WHOLE,
        ),
        (  # a total of input plus output only: the input already held the cached tokens
            BedrockDialect().stream_decoder,
            _bedrock_stream(
                {
                    "inputTokens": 130,
                    "outputTokens": 5,
                    "totalTokens": 135,
                    "cacheReadInputTokens": 100,
                    "cacheWriteInputTokens": 20,
                }
            ),
            WHOLE,
        ),
        # OpenAI (and OpenRouter's writes) and Gemini include them already.
        (
            OpenAIDialect().stream_decoder,
            _openai_stream(
                {
                    "prompt_tokens": 130,
                    "completion_tokens": 5,
                    "total_tokens": 135,
                    "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20},
                }
            ),
            WHOLE,
        ),
        (
            GeminiDialect().stream_decoder,
            b"data: "
            + json.dumps(
                {
                    "candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}],
                    "usageMetadata": {
                        "promptTokenCount": 130,
                        "candidatesTokenCount": 5,
                        "cachedContentTokenCount": 100,
                    },
                }
            ).encode()
            + b"\n\n",
            Usage(input_tokens=130, output_tokens=5, cache_read_tokens=100),
        ),
    ],
)
def test_every_decoder_gives_the_whole_prompt_as_input(
    decoder: Callable[[], StreamDecoder], stream: bytes, usage: Usage
) -> None:
    assert _finished(decoder(), stream) == usage


def test_front_doors_render_cache_usage_in_their_own_shape() -> None:
    assert ant.usage_object(WHOLE) == {
        "input_tokens": 10,  # Anthropic's input leaves the cached tokens out again
        "output_tokens": 5,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
    }
    assert oai.usage_object(WHOLE) == {
        "prompt_tokens": 130,
        "completion_tokens": 5,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20},
    }
    # What an Anthropic member reported reaches an Anthropic client unchanged.
    assert ant.usage_object(_finished(AnthropicDialect().stream_decoder(), ANTHROPIC_STREAM)) == {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
    }


# ================================================================ front doors: parsing


def _anthropic(**body: Any) -> ChatRequest:
    base: dict[str, Any] = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    return ant.parse_messages_request(json.dumps(base | body).encode()).request


def test_anthropic_front_door_reads_every_breakpoint() -> None:
    c5, c1 = {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}
    image = {"type": "base64", "media_type": "image/png", "data": "QUJD"}
    request = _anthropic(
        tools=[{"name": "w", "input_schema": SCHEMA, "cache_control": c5}],
        system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B", "cache_control": c1}],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "q", "cache_control": c5},
                    {"type": "image", "source": image, "cache_control": c5},
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                        "cache_control": c1,
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "t", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "w", "input": {}, "cache_control": c5},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "r1", "cache_control": c5},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        # a breakpoint inside the result marks the result
                        "content": [
                            {"type": "text", "text": "r2", "cache_control": c1},
                            {"type": "image", "source": image},
                        ],
                    },
                ],
            },
        ],
    )
    assert request.tools[0].cache == "5m"
    assert request.system == [TextPart("A"), TextPart("B", cache="1h")]
    assert request.messages == [
        Message(
            "user",
            [
                TextPart("q", cache="5m"),
                ImagePart(media_type="image/png", data="QUJD", cache="5m"),
                DocumentPart(data="JVBE", cache="1h"),
            ],
        ),
        Message(
            "assistant", [ThinkingPart(text="t", signature="s"), ToolCallPart("t1", "w", {}, cache="5m")]
        ),
        Message(
            "user",
            [
                ToolResultPart(tool_call_id="t1", content="r1", cache="5m"),
                # The image was inside the second result: it stays there, under the result's breakpoint.
                ToolResultPart(
                    tool_call_id="t2",
                    content=[TextPart("r2"), ImagePart(media_type="image/png", data="QUJD")],
                    cache="1h",
                ),
            ],
        ),
    ]


def test_anthropic_top_level_cache_control_marks_the_last_block() -> None:
    request = _anthropic(cache_control={"type": "ephemeral"})
    assert request.messages == [Message("user", [TextPart("hi", cache="5m")])]
    assert (
        _anthropic(system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]).system == "A\n\nB"
    )


@pytest.mark.parametrize(
    "marker", [{"type": "ephemeral", "ttl": "2h"}, {"type": "persistent"}, {"ttl": "5m"}]
)
def test_anthropic_front_door_refuses_a_bad_marker(marker: dict[str, str]) -> None:
    with pytest.raises(BadRequest):
        _anthropic(system=[{"type": "text", "text": "A", "cache_control": marker}])


def test_openai_front_door_reads_the_cache_key_and_part_markers() -> None:
    c5 = {"type": "ephemeral"}
    body = {
        "model": "m",
        "prompt_cache_key": "conv-7",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "S", "cache_control": c5}]},
            {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": c5}]},
            {
                "role": "assistant",
                "content": "a",
                "tool_calls": [{"id": "c1", "function": {"name": "w", "arguments": "{}"}}],
            },
            {
                "role": "tool",
                "tool_call_id": "c1",
                "content": [{"type": "text", "text": "r", "cache_control": c5}],
            },
        ],
    }
    request = oai.parse_chat_request(json.dumps(body).encode()).request
    assert request.cache_key == "conv-7"
    assert request.system == [TextPart("S", cache="5m")]
    assert request.messages[0] == Message("user", [TextPart("q", cache="5m")])
    assert request.messages[2] == Message(
        "user", [ToolResultPart(tool_call_id="c1", content="r", cache="5m")]
    )
    plain = oai.parse_chat_request(
        json.dumps(
            {"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]}
        ).encode()
    )
    assert (plain.request.system, plain.request.cache_key) == ("S", None)


# ================================================================ the simulator's prompt cache


def _sim_request(system: list[str], texts: list[str], marks: dict[int, str]) -> SimRequest:
    parts = [text_part(t) | ({"cache": marks[i]} if i in marks else {}) for i, t in enumerate(texts)]
    return build_request(model="m", system=system, turns=[Turn("user", parts)], stream=False)


def test_the_prompt_cache_writes_then_reads_the_longest_prefix_it_saw() -> None:
    cache = PromptCache()
    first = _sim_request(["one two"], ["three four five", "six"], {0: "5m"})
    assert first.conversation is not None
    assert first.conversation["cache"] == [{"after": "messages[0].parts[0]", "ttl": "5m"}]
    assert cache.use(first) == CacheUse(read=0, written=5, marked=True)
    assert cache.use(first) == CacheUse(read=5, written=0, marked=True)
    # The conversation grows and its breakpoint moves on: the old prefix is read, the rest written.
    longer = _sim_request(["one two"], ["three four five", "six", "seven eight"], {2: "5m"})
    assert cache.use(longer) == CacheUse(read=5, written=3, marked=True)
    # Another prompt shares nothing.
    assert cache.use(_sim_request(["other"], ["x"], {0: "5m"})) == CacheUse(read=0, written=2, marked=True)
    # No breakpoint, no caching (unless automatic, for prompts long enough).
    unmarked = _sim_request(["one two"], ["three four five", "six"], {})
    assert cache.use(unmarked) == CacheUse()
    assert cache.use(unmarked, automatic=1024) == CacheUse(marked=True)  # too short: nothing counted
    long = _sim_request(["w " * 1100], ["q"], {})
    assert cache.use(long, automatic=1024) == CacheUse(read=0, written=1101, marked=True)
    assert cache.use(long, automatic=1024) == CacheUse(read=1101, written=0, marked=True)


def _parse(dialect: str, body: dict[str, Any], route: Route | None = None) -> SimRequest:
    return get_dialect(dialect).parse_chat(route or Route("chat"), json.dumps(body).encode())


def test_the_anthropic_simulator_refuses_what_claude_refuses() -> None:
    mark = {"type": "ephemeral"}
    five = [{"type": "text", "text": f"t{i}", "cache_control": mark} for i in range(5)]
    base = {"model": "m", "max_tokens": 10}
    with pytest.raises(
        SimBadRequest, match=r"A maximum of 4 blocks with cache_control may be provided\. Found 5\."
    ):
        _parse("anthropic", base | {"messages": [{"role": "user", "content": five}]})
    thinking = {"type": "thinking", "thinking": "t", "signature": "s", "cache_control": mark}
    with pytest.raises(SimBadRequest, match=r"thinking\.cache_control"):
        _parse(
            "anthropic",
            base
            | {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [thinking]}]},
        )


def test_the_bedrock_simulator_refuses_a_cache_point_inside_a_tool_result() -> None:
    result = {"toolUseId": "t1", "content": [{"text": "r"}, DEFAULT_POINT], "status": "success"}
    body = {
        "messages": [
            {"role": "user", "content": [{"text": "q"}]},
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "w", "input": {}}}]},
            {"role": "user", "content": [{"toolResult": result}]},
        ],
        "toolConfig": {"tools": [{"toolSpec": {"name": "w", "inputSchema": {"json": {}}}}]},
    }
    with pytest.raises(SimBadRequest, match="cachePoint"):
        _parse("bedrock", body, Route("chat", "m", stream=True))


def test_the_openai_simulator_refuses_markers_and_openrouter_takes_them() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": EPHEMERAL}]}
        ],
    }
    with pytest.raises(SimBadRequest, match="cache_control"):
        _parse("openai", body)
    parsed = _parse("openrouter", body)
    assert parsed.conversation is not None
    assert parsed.conversation["cache"] == [{"after": "messages[0].parts[0]", "ttl": "5m"}]


# ================================================================ end to end

CLAUDE = "claude-sonnet-4-5-20250929"
COMBINED = "claude-sonnet-4-5"
SYSTEM_A = "You are a careful assistant for travellers."
SYSTEM_B = "Always check the weather tool before answering questions about the weather."
QUESTION = "What is the weather in Paris today?"
RESULT = "Sunny and warm, twenty two degrees, light wind from the west."
# Every word of the prompt sits before the last breakpoint: the simulators count words as tokens.
PREFIX_WORDS = len(f"{SYSTEM_A} {SYSTEM_B} {QUESTION} {RESULT}".split())
BREAKPOINTS = [
    {"after": "tools[0]", "ttl": "5m"},
    {"after": "system[1]", "ttl": "1h"},
    {"after": "messages[2].parts[0]", "ttl": "5m"},
]


@asynccontextmanager
async def claude_stack(short_dir: Path) -> AsyncIterator[FrontDoor]:
    """Claude from Anthropic and from Bedrock (each simulated in its own wire format), behind the front door."""
    async with trio.open_nursery() as nursery:
        sims = {
            "anthropic": Simulator(
                dialect="anthropic", models=[CLAUDE], name="anthropic", text="It is sunny."
            ),
            "bedrock": Simulator(
                dialect="bedrock", models=[CLAUDE_ON_BEDROCK], name="bedrock", text="It is sunny."
            ),
        }
        for sim in sims.values():
            await nursery.start(sim.run)
        config = f"""
provider_priority = ["anthropic", "bedrock"]
[failover]
first_token_timeout = 5.0
idle_timeout = 5.0
retry_backoff = 0.01
[providers.anthropic]
api = "anthropic"
base_url = "{sims["anthropic"].base_url}"
api_key = "sk-ant-test-0123456789"
[providers.bedrock]
api = "bedrock"
base_url = "{sims["bedrock"].base_url}"
api_key = "bedrock-test-key"
region = "us-east-1"
[http]
listen = "127.0.0.1:0"
"""
        server = await open_daemon(parse_config(config, "test config"), short_dir / "d.sock", nursery)
        gw = server.gateway
        assert gw is not None and gw.address
        yield FrontDoor(sims, server, f"http://{gw.address}", gw.token)
        nursery.cancel_scope.cancel()


async def in_thread(fn: Callable[[], T]) -> T:
    with trio.fail_after(20):
        return await trio.to_thread.run_sync(fn)


def ask_with_three_breakpoints(client: anthropic.Anthropic, *, stream: bool = False) -> Any:
    """What an agent sends mid tool loop: breakpoints after its tools, its system prompt and the newest turn."""
    kwargs: Any = {
        "model": COMBINED,
        "max_tokens": 200,
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather",
                "input_schema": SCHEMA,
                "cache_control": {"type": "ephemeral"},
            }
        ],
        "system": [
            {"type": "text", "text": SYSTEM_A},
            {"type": "text", "text": SYSTEM_B, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        "messages": [
            {"role": "user", "content": QUESTION},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": RESULT,
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            },
        ],
    }
    if stream:
        with client.messages.stream(**kwargs) as s:
            return s.get_final_message()
    return client.messages.create(**kwargs)


async def test_the_anthropic_sdk_breakpoints_reach_anthropic_and_bedrock_and_reads_come_back(
    short_dir: Path,
) -> None:
    async with claude_stack(short_dir) as c:
        first, second = await in_thread(
            lambda: (
                ask_with_three_breakpoints(c.anthropic()),
                ask_with_three_breakpoints(c.anthropic(), stream=True),
            )
        )
        # The Anthropic member got the three breakpoints where the client put them.
        sim = c.sims["anthropic"]
        got = sim.requests[0].body
        assert got["tools"][0]["cache_control"] == {"type": "ephemeral"}
        assert [b.get("cache_control") for b in got["system"]] == [None, {"type": "ephemeral", "ttl": "1h"}]
        assert got["messages"][2]["content"][0]["cache_control"] == {"type": "ephemeral"}
        assert json.dumps(got).count('"cache_control"') == 3
        assert sim.requests[0].conversation is not None
        assert sim.requests[0].conversation["cache"] == BREAKPOINTS
        # The first answer wrote the cache, the second read it, and the SDK sees both.
        assert first.usage.cache_creation_input_tokens == PREFIX_WORDS
        assert first.usage.cache_read_input_tokens == 0
        assert second.usage.cache_read_input_tokens == PREFIX_WORDS
        assert second.usage.cache_creation_input_tokens == 0
        assert second.usage.input_tokens == 0  # nothing after the last breakpoint

        # Anthropic breaks: Bedrock takes over, with a cachePoint after each marked block.
        sim.push_fault(Fault(kind="status", status=529, times=-1))
        third, fourth = await in_thread(
            lambda: (ask_with_three_breakpoints(c.anthropic()), ask_with_three_breakpoints(c.anthropic()))
        )
        bedrock = c.sims["bedrock"]
        assert [r.outcome for r in bedrock.requests] == ["completed", "completed"]
        body = bedrock.requests[0].body
        assert json.dumps(body).count('"cachePoint"') == 3
        assert body["toolConfig"]["tools"][1] == DEFAULT_POINT
        assert body["system"][2] == {"cachePoint": {"type": "default", "ttl": "1h"}}
        assert (
            "toolResult" in body["messages"][2]["content"][0]
            and body["messages"][2]["content"][1] == DEFAULT_POINT
        )
        assert bedrock.requests[0].conversation is not None
        assert bedrock.requests[0].conversation["cache"] == BREAKPOINTS  # the same positions
        assert third.usage.cache_creation_input_tokens == PREFIX_WORDS  # a cold cache there
        assert fourth.usage.cache_read_input_tokens == PREFIX_WORDS

        # Each provider's cache-read ratio: half its prompt tokens came from its cache.
        async with open_client(c.server.socket_path) as client:
            status = await client.status()
        ratios = {p.id: p.cache_read_ratio for p in status.providers}
        assert ratios == {"anthropic": 0.5, "bedrock": 0.5}
        assert "CACHED%" in render_status(status) and "50%" in render_status(status)


async def test_openai_clients_get_their_cache_key_through_and_cached_tokens_back(short_dir: Path) -> None:
    long_system = "Answer briefly. " * 600  # automatic caching needs at least 1024 tokens
    async with open_stack(short_dir) as st:
        gw = st.server.gateway
        assert gw is not None and gw.address
        client = openai.OpenAI(
            base_url=f"http://{gw.address}/v1", api_key=gw.token, max_retries=0, timeout=10
        )

        def ask() -> Any:
            return client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "system", "content": long_system}, {"role": "user", "content": "hi"}],
                prompt_cache_key="conversation-42",
            )

        first, second = await in_thread(lambda: (ask(), ask()))
        sim = st.sims["first"]
        assert [r.body["prompt_cache_key"] for r in sim.requests] == ["conversation-42"] * 2
        prompt = len(long_system.split()) + 1
        assert first.usage.prompt_tokens == prompt
        assert (
            first.usage.prompt_tokens_details is None or first.usage.prompt_tokens_details.cached_tokens == 0
        )
        assert second.usage.prompt_tokens == prompt  # the cached tokens are part of it
        assert second.usage.prompt_tokens_details is not None
        assert second.usage.prompt_tokens_details.cached_tokens == prompt
        async with st.client() as c:
            ratios = {p.id: p.cache_read_ratio for p in (await c.status()).providers}
        assert ratios == {"first": 0.5, "second": None}  # `-` in the table: nothing served there


async def test_an_openai_client_reading_an_anthropic_cache_sees_it_in_openai_terms(short_dir: Path) -> None:
    async with claude_stack(short_dir) as c:
        client = openai.OpenAI(base_url=f"{c.url}/v1", api_key=c.token, max_retries=0, timeout=10)
        messages: Any = [
            {
                "role": "system",
                "content": [{"type": "text", "text": SYSTEM_A, "cache_control": {"type": "ephemeral"}}],
            },
            {"role": "user", "content": QUESTION},
        ]

        def ask() -> Any:
            return client.chat.completions.create(model=COMBINED, messages=messages)

        first, second = await in_thread(lambda: (ask(), ask()))
        assert c.sims["anthropic"].requests[0].body["system"] == [
            {"type": "text", "text": SYSTEM_A, "cache_control": {"type": "ephemeral"}}
        ]
        whole = len(f"{SYSTEM_A} {QUESTION}".split())
        assert first.usage.prompt_tokens == whole and second.usage.prompt_tokens == whole
        assert second.usage.prompt_tokens_details.cached_tokens == len(SYSTEM_A.split())


def test_the_status_table_shows_each_providers_cache_read_ratio() -> None:
    def provider(pid: str, ratio: float | None) -> ProviderStatus:
        return ProviderStatus(
            id=pid,
            state="ready",
            cooldown_remaining_s=0,
            in_flight=0,
            requests=3,
            failures=0,
            last_error=None,
            cache_read_ratio=ratio,
        )

    status = StatusInfo(
        daemon=DaemonInfo(pid=1, version="v", uptime_s=1.0),
        providers=[provider("warm", 0.834), provider("cold", None)],
    )
    header, warm, cold = render_status(status).splitlines()[1:]
    column = header.index("CACHED%")
    assert warm[column:].startswith("83%") and cold[column:].startswith("-")
    # A status from an older daemon, without the field, still decodes.
    old = msgspec.json.encode(provider("x", None))
    raw = json.loads(old)
    del raw["cache_read_ratio"]
    assert msgspec.json.decode(json.dumps(raw), type=ProviderStatus).cache_read_ratio is None

"""Claude's rules, shared by the Anthropic and Bedrock dialects, in both dialects' spellings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from combined_models.chat import ThinkingPart, ToolCallEvent
from combined_models.daemon.dialects.claude_family import (
    ANSWER_TOKENS,
    MIN_THINKING_BUDGET,
    StreamedToolUse,
    claude_turns,
    replayable,
    thinking_limits,
    unit_temperature,
)
from combined_models.daemon.errors import Failure, UpstreamError

# ---------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    ("max_tokens", "requested", "expected"),
    [
        (None, None, (None, None)),  # nothing asked: nothing added
        (3000, None, (3000, None)),
        (None, 0, (None, None)),  # 0 or less asks for no thinking
        (None, -1, (None, None)),
        (None, 2000, (2000 + ANSWER_TOKENS, 2000)),  # room for the answer on top
        (None, 100, (MIN_THINKING_BUDGET + ANSWER_TOKENS, MIN_THINKING_BUDGET)),  # raised to the floor
        (8000, 2000, (8000, 2000)),
        (3000, 5000, (3000, 2999)),  # an explicit max_tokens caps thinking too: the budget shrinks
        (2000, 2000, (2000, 1999)),
        (1025, 5000, (1025, MIN_THINKING_BUDGET)),  # just room for the floor
        (1024, 5000, (1024, None)),  # not even the floor fits: no thinking
        (1000, 5000, (1000, None)),
    ],
)
def test_thinking_limits(
    max_tokens: int | None, requested: int | None, expected: tuple[int | None, int | None]
) -> None:
    assert thinking_limits(max_tokens, requested) == expected


def test_thinking_limits_answer_room_is_the_callers() -> None:
    assert thinking_limits(None, 2000, answer_tokens=500) == (2500, 2000)
    assert thinking_limits(3000, 2000, answer_tokens=500) == (3000, 2000)


@pytest.mark.parametrize(
    ("neutral", "sent"), [(0.0, 0.0), (0.7, 0.7), (1.0, 1.0), (1.5, 1.0), (2.0, 1.0), (-0.2, 0.0)]
)
def test_unit_temperature_clamps(neutral: float, sent: float) -> None:
    assert unit_temperature(neutral) == sent


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        (ThinkingPart(text="hm", signature="EqQB"), True),
        (ThinkingPart(text="hm", signature="EqQB", provider="bedrock"), True),
        (ThinkingPart(text="hm"), False),
        (ThinkingPart(text="hm", signature=""), False),
        (ThinkingPart(text="hm", provider="anthropic"), False),  # the provider name decides nothing
    ],
)
def test_replayable_thinking_is_signed_thinking(part: ThinkingPart, expected: bool) -> None:
    assert replayable(part) is expected


# ---------------------------------------------------------------- conversation


@dataclass(frozen=True)
class Spelling:
    """One dialect's blocks, written in the tables as `T:text`, `R:id` (a tool result) or `C` (a tool call)."""

    text: Callable[[str], dict[str, Any]]
    result: Callable[[str], dict[str, Any]]
    call: dict[str, Any]
    is_text: Callable[[dict[str, Any]], bool]
    is_tool_result: Callable[[dict[str, Any]], bool]

    def block(self, short: str) -> dict[str, Any]:
        kind, _, value = short.partition(":")
        if kind == "T":
            return self.text(value)
        if kind == "R":
            return self.result(value)
        return dict(self.call)

    def turns(self, table: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
        return [{"role": role, "content": [self.block(b) for b in blocks]} for role, blocks in table]


ANTHROPIC = Spelling(
    text=lambda t: {"type": "text", "text": t},
    result=lambda i: {"type": "tool_result", "tool_use_id": i},
    call={"type": "tool_use", "id": "t", "name": "f", "input": {}},
    is_text=lambda b: b["type"] == "text",
    is_tool_result=lambda b: b["type"] == "tool_result",
)
BEDROCK = Spelling(
    text=lambda t: {"text": t},
    result=lambda i: {"toolResult": {"toolUseId": i, "content": [], "status": "success"}},
    call={"toolUse": {"toolUseId": "t", "name": "f", "input": {}}},
    is_text=lambda b: "text" in b,
    is_tool_result=lambda b: "toolResult" in b,
)

Table = list[tuple[str, list[str]]]

TURN_CASES: list[tuple[str, Table, Table]] = [
    ("nothing", [], []),
    ("blank text dropped", [("user", ["T: ", "T:hi", "T:\n"])], [("user", ["T:hi"])]),
    (
        "empty messages dropped",
        [("user", ["T:a"]), ("assistant", []), ("user", ["T:b"])],
        [("user", ["T:a", "T:b"])],
    ),
    (
        "a blank message vanishes and its neighbours merge",
        [("user", ["T:a"]), ("assistant", ["T:  "]), ("user", ["T:b"])],
        [("user", ["T:a", "T:b"])],
    ),
    (
        "same-role neighbours merged, roles alternate",
        [
            ("user", ["T:a"]),
            ("user", ["T:b"]),
            ("assistant", ["T:c"]),
            ("assistant", ["C"]),
            ("user", ["T:d"]),
        ],
        [("user", ["T:a", "T:b"]), ("assistant", ["T:c", "C"]), ("user", ["T:d"])],
    ),
    (
        "tool results open the user turn, both groups in order",
        [("user", ["T:here", "R:1", "T:and", "R:2"])],
        [("user", ["R:1", "R:2", "T:here", "T:and"])],
    ),
    (
        "tool results first after a merge too",
        [("assistant", ["C"]), ("user", ["T:x", "R:1"]), ("user", ["R:2"])],
        [("assistant", ["C"]), ("user", ["R:1", "R:2", "T:x"])],
    ),
    (
        "a prefill loses its trailing whitespace",
        [("user", ["T:q"]), ("assistant", ["T: Sure: \n\t"])],
        [("user", ["T:q"]), ("assistant", ["T: Sure:"])],
    ),
    (
        "only the prefill's last block is trimmed",
        [("user", ["T:q"]), ("assistant", ["T:one ", "T:two "])],
        [("user", ["T:q"]), ("assistant", ["T:one ", "T:two"])],
    ),
    (
        "a prefill ending in a tool call is left alone",
        [("user", ["T:q"]), ("assistant", ["T:a ", "C"])],
        [("user", ["T:q"]), ("assistant", ["T:a ", "C"])],
    ),
    (
        "earlier assistant turns and a final user turn keep their whitespace",
        [("assistant", ["T:a "]), ("user", ["T:q "])],
        [("assistant", ["T:a "]), ("user", ["T:q "])],
    ),
]


@pytest.mark.parametrize("spelling", [ANTHROPIC, BEDROCK], ids=["anthropic", "bedrock"])
@pytest.mark.parametrize(("case", "messages", "expected"), TURN_CASES, ids=[c[0] for c in TURN_CASES])
def test_claude_turns(spelling: Spelling, case: str, messages: Table, expected: Table) -> None:
    given = spelling.turns(messages)
    turns = claude_turns(
        ((t["role"], t["content"]) for t in given),
        is_text=spelling.is_text,
        is_tool_result=spelling.is_tool_result,
    )
    assert turns == spelling.turns(expected)
    assert given == spelling.turns(messages)  # the messages it was given are left as they were


# ---------------------------------------------------------------- stream


@pytest.mark.parametrize(
    ("fragments", "start", "arguments"),
    [
        ([], {"tz": "UTC"}, {"tz": "UTC"}),  # no fragments: the input stays as the block started it
        ([""], {"tz": "UTC"}, {"tz": "UTC"}),
        (["", " \n"], None, {}),
        (['{"city": ', '"Paris"}'], {}, {"city": "Paris"}),
        (["", '{"a": [1, 2]}'], {"tz": "UTC"}, {"a": [1, 2]}),  # fragments replace the start
    ],
)
def test_streamed_tool_use_joins_its_fragments(
    fragments: list[str], start: dict[str, Any] | None, arguments: dict[str, Any]
) -> None:
    block = (
        StreamedToolUse("toolu_1", "get_weather")
        if start is None
        else StreamedToolUse("toolu_1", "get_weather", start)
    )
    block.fragments.extend(fragments)
    assert block.call() == ToolCallEvent("toolu_1", "get_weather", arguments)


@pytest.mark.parametrize(
    ("fragments", "message"),
    [
        (['{"a":'], "tool call 'get_weather' has invalid JSON input"),
        (['{"a": 1}', "x"], "tool call 'get_weather' has invalid JSON input"),
        (["[" * 100_000], "tool call 'get_weather' has invalid JSON input"),  # too deep to parse
        (["[1, 2]"], "tool call 'get_weather' input is not an object"),
        (['"str"'], "tool call 'get_weather' input is not an object"),
    ],
)
def test_streamed_tool_use_with_bad_input_breaks_the_stream(fragments: list[str], message: str) -> None:
    block = StreamedToolUse("toolu_1", "get_weather", {}, list(fragments))
    with pytest.raises(UpstreamError) as info:
        block.call()
    assert (info.value.kind, info.value.message) == (Failure.TRANSIENT, message)

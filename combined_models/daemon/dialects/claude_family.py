"""What the Claude-family dialects share: Claude's rules, reached through Anthropic or Bedrock.

Pure. Each dialect spells its content blocks its own way (`{"type": "text", "text": ...}`,
`{"text": ...}`), so the rules below take predicates that tell a text block or a tool
result in that spelling; a text block keeps its text under `"text"` in both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ...chat import ThinkingPart, ToolCallEvent
from ..errors import Failure, UpstreamError
from .base import loads_json

__all__ = [
    "ANSWER_TOKENS",
    "MAX_BREAKPOINTS",
    "MIN_THINKING_BUDGET",
    "StreamedToolUse",
    "cache_control",
    "claude_turns",
    "keep_last_breakpoints",
    "merge_turns",
    "replayable",
    "thinking_limits",
    "tool_results_first",
    "trim_prefill",
    "unit_temperature",
]

MIN_THINKING_BUDGET = 1024  # Claude's floor for `budget_tokens`
ANSWER_TOKENS = 4096  # room for the answer when the caller named no max_tokens
MAX_BREAKPOINTS = 4  # cache breakpoints per request; a 5th is a 400

Block = dict[str, Any]
Turn = dict[str, Any]  # {"role": "user" | "assistant", "content": [Block, ...]}
BlockTest = Callable[[Block], bool]


# ---------------------------------------------------------------- sampling


def thinking_limits(
    max_tokens: int | None, requested: int | None, answer_tokens: int = ANSWER_TOKENS
) -> tuple[int | None, int | None]:
    """`max_tokens` to send (None: none named, no thinking) and the thinking budget (None: no thinking).

    Claude wants a budget of at least MIN_THINKING_BUDGET and below max_tokens, which caps
    everything generated, thinking included (the daemon lowers it for continuations). So an
    explicit max_tokens shrinks the budget to fit under it (no thinking when not even the
    minimum fits); without one, the answer gets `answer_tokens` on top of the budget. A
    budget of 0 or less asks for no thinking.
    """
    if requested is None or requested <= 0:
        return max_tokens, None
    budget = max(requested, MIN_THINKING_BUDGET)
    if max_tokens is None:
        return budget + answer_tokens, budget
    if budget >= max_tokens:
        budget = max_tokens - 1
        if budget < MIN_THINKING_BUDGET:
            return max_tokens, None  # too little room to think: answer without
    return max_tokens, budget


def unit_temperature(temperature: float) -> float:
    """The neutral temperature (OpenAI's 0-2) in Claude's 0-1.

    Clamped, not rescaled: 0.7 means the same everywhere, and above 1 is "as random as it gets".
    """
    return min(1.0, max(0.0, temperature))


def replayable(part: ThinkingPart) -> bool:
    """Whether a thinking part can be sent back to Claude.

    Claude verifies the signature of every thinking block it is sent and rejects one
    without. Only Claude (on any platform) signs its thinking, so a signed part is taken
    to be Claude's; unsigned reasoning from other vendors is dropped. (`provider` names a
    configured provider, not a vendor, so it cannot decide this.)
    """
    return bool(part.signature)


# ---------------------------------------------------------------- prompt caching


def cache_control(ttl: str) -> dict[str, str]:
    """Claude's breakpoint marker for a neutral `cache` value (Anthropic, and OpenRouter's Claude).

    The usual five minutes goes without a `ttl`, as clients send it, so the marker means
    the same on every API version.
    """
    return {"type": "ephemeral"} if ttl == "5m" else {"type": "ephemeral", "ttl": ttl}


def keep_last_breakpoints(blocks: Iterable[Block], key: str, limit: int = MAX_BREAKPOINTS) -> None:
    """Take the breakpoint marker `key` off all but the last `limit` marked blocks.

    `blocks` come in prefix order (tools, system, messages). Claude refuses a request with
    more than four breakpoints, so extra ones go, and the earliest go first: a breakpoint
    caches everything before it, and a lookup at one also finds an entry written at an
    earlier block (within about 20 blocks), so the last ones keep the longest cached
    prefix, and the client's moving breakpoint on its newest turn survives.
    """
    marked = [b for b in blocks if key in b]
    for block in marked[: max(0, len(marked) - limit)]:
        del block[key]


# ---------------------------------------------------------------- conversation


def claude_turns(
    messages: Iterable[tuple[str, list[Block]]], *, is_text: BlockTest, is_tool_result: BlockTest
) -> list[Turn]:
    """Each message's role and blocks -> the turns Claude accepts.

    Claude rejects blank text blocks and empty messages (dropped), wants the roles to
    alternate (same-role neighbours merged) and the tool results first in a user turn,
    and reads a final assistant turn as a prefill that must not end in whitespace.
    """
    turns = merge_turns(
        (role, [b for b in blocks if not (is_text(b) and not b["text"].strip())]) for role, blocks in messages
    )
    for turn in turns:
        if turn["role"] == "user":
            turn["content"] = tool_results_first(turn["content"], is_tool_result)
    if turns and turns[-1]["role"] == "assistant":
        turns[-1]["content"] = trim_prefill(turns[-1]["content"], is_text)
    return turns


def merge_turns(messages: Iterable[tuple[str, list[Block]]]) -> list[Turn]:
    """Messages as turns: empty ones dropped, a message of the previous turn's role appended to it."""
    turns: list[Turn] = []
    for role, blocks in messages:
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": list(blocks)})
    return turns


def tool_results_first(blocks: list[Block], is_tool_result: BlockTest) -> list[Block]:
    """A user turn's blocks with its tool results first, which must open the turn after a tool use.

    Stable: the results stay in the order of the calls, and the rest in theirs.
    """
    return sorted(blocks, key=lambda b: not is_tool_result(b))


def trim_prefill(blocks: list[Block], is_text: BlockTest) -> list[Block]:
    """A prefill's blocks with the trailing whitespace of a final text block trimmed.

    The text is not blank (blank blocks are dropped first), so some of it stays.
    """
    if not blocks or not is_text(blocks[-1]):
        return blocks
    last = blocks[-1]
    return [*blocks[:-1], {**last, "text": last["text"].rstrip()}]


# ---------------------------------------------------------------- stream


@dataclass(slots=True)
class StreamedToolUse:
    """A tool use being streamed: its input arrives as JSON fragments, and is whole at the block's end."""

    id: str
    name: str
    start: dict[str, Any] = field(default_factory=dict)  # the input the block started with
    fragments: list[str] = field(default_factory=list)

    def call(self) -> ToolCallEvent:
        """The finished call. Input that is not a JSON object breaks the stream: UpstreamError."""
        raw = "".join(self.fragments)
        if not raw.strip():
            # No fragments (or only the usual empty first one): the input stays as it started.
            return ToolCallEvent(self.id, self.name, self.start)
        try:
            args = loads_json(raw)
        except ValueError:
            raise UpstreamError(
                Failure.TRANSIENT, f"tool call {self.name!r} has invalid JSON input"
            ) from None
        if not isinstance(args, dict):
            raise UpstreamError(Failure.TRANSIENT, f"tool call {self.name!r} input is not an object")
        return ToolCallEvent(self.id, self.name, args)
